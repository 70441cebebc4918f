"""Management server push benchmark (a script, not a timed test): N simulated peers on WebSocket streams, time from
a policy change to every peer holding its new map, and the server's memory.

    PYTHONPATH=. python benchmarks/bench_management.py --peers 1000 [--peers 10000] [--changes 3]

The server runs as a subprocess (``wgpy management serve``, SQLite in a temporary state directory); the peers are
enrolled through the API with one reusable setup key and then connected from this process. A "change" alternates the
policy between an all-to-all rule (every map lists every peer: the worst case, N maps of N peers) and a grouped one
(20 groups, each reaching one "servers" group of N/10 peers). With ``--teams`` it alternates the ports of 100 teams
that each reach only themselves (maps of N/100 peers). A peer "holds its new map" when a map frame with a serial above the
one it held before the change has arrived (read from the frame's head, so the clients' own JSON parsing is not
measured). Prints one JSON object per change and a summary with the machine (``nproc``, CPU model).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wgpy.keys import PrivateKey, PublicKey  # noqa: E402
from wgpy.management.proof import proof_headers  # noqa: E402

_SERIAL = re.compile(r'^\{"type":"map","serial":(\d+)')
ALL = "acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
GROUPED = "acls:\n" + "".join(
    f"  - {{name: g{i}-to-servers, src: [g{i}], dst: [servers], proto: tcp, ports: ['22', '443'], action: accept}}\n"
    for i in range(20)
)

# --teams: 100 teams of N/100 peers, each team reaching only itself (small maps, shared by a team's peers).
TEAMS = "acls:\n" + "".join(
    f"  - {{name: t{i}, src: [t{i}], dst: [t{i}], proto: tcp, ports: ['22', '443'], action: accept}}\n"
    for i in range(100)
)
TEAMS_B = TEAMS.replace("'443'", "'8443'")


class Peer:
    def __init__(self, index: int) -> None:
        self.index = index
        self.private = PrivateKey.generate()
        self.access: str = ""
        self.peer_id: str = ""
        self.serial = 0
        self.received_at = 0.0
        self.changed = asyncio.Event()
        self.target = 0


def _rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _enrol(http: aiohttp.ClientSession, url: str, proof_key: PublicKey, key: str, peer: Peer) -> None:
    body = json.dumps({"setup_key": key, "public_key": peer.private.public_key().to_base64()}).encode()
    headers = proof_headers(
        peer.private, proof_key, "POST", "/api/v1/enrol", body, now=time.time(), nonce=os.urandom(16)
    )
    async with http.post(
        url + "/api/v1/enrol", data=body, headers={**headers, "Content-Type": "application/json"}
    ) as r:
        answer = await r.json()
        if r.status != 201:
            raise RuntimeError(f"enrolment failed: {answer}")
    peer.access = answer["access_token"]
    peer.peer_id = answer["peer"]["id"]


async def _stream(
    http: aiohttp.ClientSession, url: str, proof_key: PublicKey, peer: Peer, ready: asyncio.Event
) -> None:
    headers = proof_headers(
        peer.private, proof_key, "GET", "/api/v1/peer/stream", b"", now=time.time(), nonce=os.urandom(16)
    )
    headers["Authorization"] = f"Bearer {peer.access}"
    async with http.ws_connect(url + "/api/v1/peer/stream", headers=headers, max_msg_size=64 * 1024 * 1024) as ws:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            match = _SERIAL.match(message.data[:64])
            if match is None:
                continue
            peer.serial = int(match.group(1))
            peer.received_at = time.perf_counter()
            ready.set()
            if peer.serial >= peer.target:
                peer.changed.set()


async def _admin(
    http: aiohttp.ClientSession, url: str, token: str, method: str, path: str, data: bytes | None = None
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url + path, data=data, headers=headers) as response:
        text = await response.text()
        if response.status >= 300:
            raise RuntimeError(text)
        return json.loads(text) if text and text[0] in "{[" else text


async def run(count: int, changes: int, state: pathlib.Path, teams: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    init = subprocess.run(
        [sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    token = init.stdout.strip()
    port = 20000 + os.getpid() % 20000
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wgpy",
            "management",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "error",
        ],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    try:
        assert server.stdout is not None
        server.stdout.readline()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
            info = await (await http.get(url + "/api/v1/info")).json()
            proof_key = PublicKey.from_base64(info["proof_key"])
            await _admin(http, url, token, "PUT", "/api/v1/policy", (TEAMS_B if teams else ALL).encode())
            setup_keys: dict[str, str] = {}
            for group in [f"t{i}" for i in range(100)] if teams else ["servers"] + [f"g{i}" for i in range(20)]:
                body = {"name": group, "reusable": True, "usage_limit": count, "auto_groups": [group]}
                created = await _admin(http, url, token, "POST", "/api/v1/setup-keys", json.dumps(body).encode())
                setup_keys[group] = created["key"]
            peers = [Peer(i) for i in range(count)]
            started = time.perf_counter()
            semaphore = asyncio.Semaphore(16)

            async def enrol(peer: Peer) -> None:
                if teams:
                    group = f"t{peer.index % 100}"
                else:
                    group = "servers" if peer.index % 10 == 0 else f"g{peer.index % 20}"  # every 10th peer is a server
                async with semaphore:
                    await _enrol(http, url, proof_key, setup_keys[group], peer)

            await asyncio.gather(*(enrol(peer) for peer in peers))
            enrol_seconds = time.perf_counter() - started
            readies = [asyncio.Event() for _ in peers]
            started = time.perf_counter()
            tasks = []
            for peer, ready in zip(peers, readies, strict=True):
                tasks.append(asyncio.create_task(_stream(http, url, proof_key, peer, ready)))
                if len(tasks) % 200 == 0:
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 600)
            connect_seconds = time.perf_counter() - started
            await asyncio.sleep(2.0)  # let the connect bursts settle
            rss_connected = _rss_kib(server.pid)
            for change in range(changes):
                if teams:
                    text = TEAMS if change % 2 == 0 else TEAMS_B
                else:
                    text = GROUPED if change % 2 == 0 else ALL
                for peer in peers:
                    peer.target = peer.serial + 1
                    peer.changed.clear()
                t0 = time.perf_counter()
                await _admin(http, url, token, "PUT", "/api/v1/policy", text.encode())
                await asyncio.wait_for(asyncio.gather(*(peer.changed.wait() for peer in peers)), 600)
                last = max(peer.received_at for peer in peers) - t0
                median = sorted(peer.received_at - t0 for peer in peers)[len(peers) // 2]
                results.append(
                    {
                        "change": change,
                        "policy": {GROUPED: "grouped", ALL: "all-to-all", TEAMS: "teams", TEAMS_B: "teams-b"}[text],
                        "all_peers_s": round(last, 3),
                        "median_s": round(median, 3),
                        "server_rss_mib": round(_rss_kib(server.pid) / 1024, 1),
                    }
                )
                print(json.dumps({"peers": count, **results[-1]}), flush=True)
                await asyncio.sleep(1.0)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "peers": count,
        "enrol_s": round(enrol_seconds, 2),
        "connect_s": round(connect_seconds, 2),
        "server_rss_connected_mib": round(rss_connected / 1024, 1),
        "changes": results,
    }


def _machine() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": sys.version.split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, action="append")
    parser.add_argument("--changes", type=int, default=2)
    parser.add_argument(
        "--teams",
        action="store_true",
        help="100 teams reaching only themselves (all-to-all at 10,000 peers: 13 GB a change)",
    )
    args = parser.parse_args()
    summary = []
    for count in args.peers or [1000]:
        with tempfile.TemporaryDirectory() as directory:
            summary.append(asyncio.run(run(count, args.changes, pathlib.Path(directory) / "state", args.teams)))
    print(json.dumps({"machine": _machine(), "runs": summary}, indent=2))


if __name__ == "__main__":
    main()
