"""Replicas benchmark (issue #14; a script, not a timed test): N simulated peers across two ``wgpy management serve``
replicas sharing one PostgreSQL database; time from a policy change made through replica B to every peer (on A
and on B) holding its new map, and CPU seconds and memory per replica.

    PYTHONPATH=. python benchmarks/bench_replicas.py --peers 1000 --peers 3000 --peers 10000 [--changes 3]

A throwaway PostgreSQL cluster is started in a temporary folder (``initdb``, a private Unix socket, as the
``postgres`` user when run as root) and removed afterwards. The peers are enrolled through both replicas (half
each) and each one streams from the replica it enrolled with. The policy puts them in teams of ``--team-size``
(100 by default) that reach only their own team, so that a map lists a constant number of peers whatever N: the
work the policy demands grows linearly with N, and so should the time. A change alternates the ports of every
team's rule (every peer's map changes). A peer "holds its new map" when a map frame with a serial above the one it
held before the change has arrived (read from the frame's head). Prints one JSON line per change and a summary with
the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wgpy.keys import PrivateKey, PublicKey  # noqa: E402
from wgpy.management.proof import proof_headers  # noqa: E402

_SERIAL = re.compile(r'^\{"type":"map","serial":(\d+)')
_TICKS = os.sysconf("SC_CLK_TCK")


def teams_policy(teams: int, port: int) -> str:
    return "acls:\n" + "".join(
        f"  - {{name: t{i}, src: [t{i}], dst: [t{i}], proto: tcp, ports: ['22', '{port}'], action: accept}}\n"
        for i in range(teams)
    )


class Peer:
    def __init__(self, index: int, replica: int) -> None:
        self.index = index
        self.replica = replica
        self.private = PrivateKey.generate()
        self.access = ""
        self.serial = 0
        self.received_at = 0.0
        self.changed = asyncio.Event()
        self.target = 0


def _proc(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user + system), RSS and peak RSS in KiB of a process."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    rss = hwm = 0
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return cpu, rss, hwm


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        (p for p in pathlib.Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.parts[-3].isdigit()),
        key=lambda p: int(p.parts[-3]),
    )
    if not candidates:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    return str(candidates[-1])


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway cluster; yields its SQLAlchemy URL."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="wgpy-bench-pg-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (base, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    pg_ctl = _pg_tool("pg_ctl")
    subprocess.run(
        [*prefix, _pg_tool("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"], check=True, capture_output=True
    )
    options = f"-k {sockets} -p 54331 -c listen_addresses='' -c fsync=off -c max_connections=200"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(base / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+asyncpg://postgres@/postgres?host={sockets}&port=54331"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


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
    async with http.request(method, url + path, data=data, headers={"Authorization": f"Bearer {token}"}) as response:
        text = await response.text()
        if response.status >= 300:
            raise RuntimeError(text)
        return json.loads(text) if text and text[0] in "{[" else text


async def run(count: int, changes: int, team_size: int, db_url: str, state: pathlib.Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    init = subprocess.run(
        [sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(state), "--db", db_url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    token = init.stdout.strip().splitlines()[-1]
    servers = []
    urls = []
    for offset in (0, 1):
        port = 20000 + (os.getpid() * 2 + offset) % 20000
        servers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wgpy",
                    "management",
                    "serve",
                    "--state-dir",
                    str(state),
                    "--db",
                    db_url,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--log-level",
                    "error",
                    "--rate-limit",  # every simulated peer connects from 127.0.0.1: one source
                    "peer=0",
                ],
                stdout=subprocess.PIPE,
                env=env,
                text=True,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    teams = max(1, count // team_size)
    results: list[dict[str, Any]] = []
    try:
        for server in servers:
            assert server.stdout is not None
            server.stdout.readline()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
            info = await (await http.get(urls[0] + "/api/v1/info")).json()
            proof_key = PublicKey.from_base64(info["proof_key"])
            await _admin(http, urls[0], token, "PUT", "/api/v1/policy", teams_policy(teams, 443).encode())
            keys = {}
            for team in range(teams):
                body = {"name": f"t{team}", "reusable": True, "usage_limit": count, "auto_groups": [f"t{team}"]}
                keys[team] = (
                    await _admin(http, urls[0], token, "POST", "/api/v1/setup-keys", json.dumps(body).encode())
                )["key"]
            peers = [Peer(i, i % 2) for i in range(count)]
            semaphore = asyncio.Semaphore(32)

            async def enrol(peer: Peer) -> None:
                async with semaphore:
                    await _enrol(http, urls[peer.replica], proof_key, keys[peer.index % teams], peer)

            started = time.perf_counter()
            await asyncio.gather(*(enrol(peer) for peer in peers))
            enrol_seconds = time.perf_counter() - started
            readies = [asyncio.Event() for _ in peers]
            started = time.perf_counter()
            tasks = []
            for peer, ready in zip(peers, readies, strict=True):
                tasks.append(asyncio.create_task(_stream(http, urls[peer.replica], proof_key, peer, ready)))
                if len(tasks) % 200 == 0:
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 1200)
            connect_seconds = time.perf_counter() - started
            await asyncio.sleep(3.0)  # let the connect bursts settle
            connected = [_proc(server.pid) for server in servers]
            for change in range(changes):
                for peer in peers:
                    peer.target = peer.serial + 1
                    peer.changed.clear()
                before = [_proc(server.pid) for server in servers]
                t0 = time.perf_counter()
                policy = teams_policy(teams, 8443 if change % 2 == 0 else 443)
                await _admin(http, urls[1], token, "PUT", "/api/v1/policy", policy.encode())  # through B
                await asyncio.wait_for(asyncio.gather(*(peer.changed.wait() for peer in peers)), 1200)
                after = [_proc(server.pid) for server in servers]
                delays = sorted(peer.received_at - t0 for peer in peers)
                on = {
                    name: round(max(peer.received_at - t0 for peer in peers if peer.replica == index), 3)
                    for index, name in ((0, "a"), (1, "b"))
                }
                results.append(
                    {
                        "change": change,
                        "all_peers_s": round(delays[-1], 3),
                        "median_s": round(delays[len(delays) // 2], 3),
                        "last_on_replica_s": on,
                        "cpu_s": {"a": round(after[0][0] - before[0][0], 2), "b": round(after[1][0] - before[1][0], 2)},
                        "rss_mib": {"a": round(after[0][1] / 1024, 1), "b": round(after[1][1] / 1024, 1)},
                    }
                )
                print(json.dumps({"peers": count, **results[-1]}), flush=True)
                await asyncio.sleep(2.0)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            peak = [_proc(server.pid)[2] for server in servers]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:  # closing thousands of streams one by one can take that long
                server.kill()
                server.wait()
    return {
        "peers": count,
        "teams": teams,
        "team_size": team_size,
        "enrol_s": round(enrol_seconds, 2),
        "connect_s": round(connect_seconds, 2),
        "rss_connected_mib": {"a": round(connected[0][1] / 1024, 1), "b": round(connected[1][1] / 1024, 1)},
        "peak_rss_mib": {"a": round(peak[0] / 1024, 1), "b": round(peak[1] / 1024, 1)},
        "changes": results,
    }


def _machine() -> dict[str, Any]:
    import machineinfo  # sibling module in benchmarks/

    info = machineinfo.describe()
    info["loadavg_at_end"] = info.pop("load_average")  # called once the runs are over
    return info


def compile_curve(counts: list[int], team_size: int) -> list[dict[str, Any]]:
    """The pure part alone, in this process: compile every view and build every map body (no signing, no I/O)."""
    from wgpy.management.policy import PeerEntry, canonical_body, compile_views, parse_policy

    rows = []
    for count in counts:
        teams = max(1, count // team_size)
        policy = parse_policy(teams_policy(teams, 443))
        peers = [
            PeerEntry(
                f"{i:032x}",
                PrivateKey.generate().public_key().to_base64(),
                f"100.64.{i // 250}.{i % 250 + 1}",
                frozenset({f"t{i % teams}"}),
            )
            for i in range(count)
        ]
        # The fastest of three (a shared machine adds noise, never speed); fresh entries each time (no JSON cache).
        compiled = bodies = float("inf")
        for _ in range(3):
            fresh = [PeerEntry(p.id, p.public_key, p.address, p.groups) for p in peers]
            started = time.perf_counter()
            views = compile_views(policy, fresh)
            compiled = min(compiled, time.perf_counter() - started)
            started = time.perf_counter()
            for view in {id(v): v for v in views.values()}.values():
                canonical_body(view, serial=1, issued_at=1, expires_at=2)
            bodies = min(bodies, time.perf_counter() - started)
        rows.append({"peers": count, "compile_views_s": round(compiled, 4), "bodies_s": round(bodies, 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, action="append")
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--team-size", type=int, default=100)
    parser.add_argument("--compile-only", action="store_true", help="time the pure map compilation alone")
    args = parser.parse_args()
    if args.compile_only:
        counts = args.peers or [1000, 2000, 5000, 10000]
        print(json.dumps({"machine": _machine(), "compile": compile_curve(counts, args.team_size)}, indent=2))
        return
    summary = []
    for count in args.peers or [1000]:
        with postgres() as db_url, tempfile.TemporaryDirectory() as directory:
            summary.append(
                asyncio.run(run(count, args.changes, args.team_size, db_url, pathlib.Path(directory) / "state"))
            )
    print(json.dumps({"machine": _machine(), "runs": summary}, indent=2))


if __name__ == "__main__":
    main()
