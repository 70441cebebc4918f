"""Management server push benchmark (a script, not a timed test): N simulated peers on WebSocket streams, time from
a policy change to every peer holding its new map, and the server's memory.

    PYTHONPATH=. python benchmarks/bench_management.py --peers 1000 --policies all,grouped,all,teams,teams-b
    PYTHONPATH=. python benchmarks/bench_management.py --peers 10000 --policies teams-b,teams,grouped,teams-b
    PYTHONPATH=. python benchmarks/bench_management.py --candidates 2000 --peers 1000 --tree /work/main --tree .

    PYTHONPATH=. python benchmarks/bench_management.py --enrol 50 --peers 10000 --tree /work/main --tree .

The last two forms measure the server's CPU per NAT ``candidates`` frame (``run_candidates``) and per enrolment
(``run_enrol``), the server running from each ``--tree`` in turn (the seeding and the clients from this one).

What is seeded and what goes through the real server:

* ``wgpy management init`` (the real command) creates the state directory: keys, migrated SQLite database, admin token.
* Seeded, straight into that database before ``wgpy management serve`` starts (enrolling through the API loads every
  active peer per enrolment for the map in its answer, ~110 ms each at 10,000: ``--enrol``): 100 setup keys (one per team; ``auto_groups`` = the peer's
  "servers"/``g*`` group and its team ``t*``; fields as ``POST /api/v1/setup-keys`` writes them, ``used`` set to the
  peers seeded with each) and, per peer, exactly the rows ``ManagementServer._enrol_once`` writes: a ``peers`` row
  (address from ``enrolment.allocate_address`` over the default pool with the addresses taken so far, groups the
  sorted ``auto_groups``, approved), a ``refresh_tokens`` row (token from ``tokens.issue_token``, stored as
  ``store.secret_hash``) and an ``enrol`` audit row (``audit.record``), plus one ``setup_key_created`` audit row per
  key. Each peer's access token is minted with ``tokens.issue_token`` and the signing key read from the state
  directory (``server.load_keys``), as ``ManagementServer._token_pair`` does.
* Real: the server subprocess (``wgpy management serve``, SQLite), the policy (``PUT /api/v1/policy`` with the
  admin token), every WebSocket stream (``GET /api/v1/peer/stream`` with the access token and a proof of possession
  per peer, ``proof.proof_headers``), the push worker's recompute/serial bump/audit/sign/send, and the frames on the
  wire. The peers are simulated clients in this process; a peer "holds its new map" when a map frame with a serial
  above the one it held before the change has arrived (read from the frame's head, so the clients' own JSON parsing
  is not measured; client and server share the machine's cores).

``--policies`` is the initial policy (set before the streams connect) followed by the changes. Policies: ``all``
(all-to-all: every map lists every peer, N maps of N peers), ``grouped`` (20 groups each reaching a "servers" group
of N/10 peers), ``teams`` / ``teams-b`` (100 teams of N/100 peers each reaching only itself; ``teams-b`` differs in a
port, so a change between them gives every peer a new small map). Every peer is in one ``g*``/"servers" group and
one team, so any sequence works on one population. Prints one JSON object per change and a summary with the machine.
Bounded: each change waits at most ``--change-timeout`` seconds, the whole run ``--timeout``; the server subprocess
is stopped by PID; everything listens on 127.0.0.1. ``RLIMIT_NOFILE`` is raised to its hard limit here before the
server is started, so the server subprocess inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import pathlib
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wgpy.keys import PrivateKey, PublicKey  # noqa: E402
from wgpy.management import audit, enrolment, store, tokens  # noqa: E402
from wgpy.management.api import SETUP_KEY_PREFIX, new_secret  # noqa: E402
from wgpy.management.proof import proof_headers  # noqa: E402
from wgpy.management.server import free_port, load_keys  # noqa: E402

_SERIAL = re.compile(r'^\{"type":"map","serial":(\d+)')
TEAMS_COUNT = 100
ALL = "acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
GROUPED = "acls:\n" + "".join(
    f"  - {{name: g{i}-to-servers, src: [g{i}], dst: [servers], proto: tcp, ports: ['22', '443'], action: accept}}\n"
    for i in range(20)
)
# 100 teams of N/100 peers, each team reaching only itself (small maps, shared by a team's peers).
TEAMS = "acls:\n" + "".join(
    f"  - {{name: t{i}, src: [t{i}], dst: [t{i}], proto: tcp, ports: ['22', '443'], action: accept}}\n"
    for i in range(TEAMS_COUNT)
)
TEAMS_B = TEAMS.replace("'443'", "'8443'")
POLICIES = {"all": ALL, "grouped": GROUPED, "teams": TEAMS, "teams-b": TEAMS_B}


def groups_of(index: int) -> list[str]:
    """A peer's groups: every 10th peer is a server, the others in g0..g19; and team t0..t99 (by ``index % 100``)."""
    main = "servers" if index % 10 == 0 else f"g{index % 20}"
    return sorted([main, f"t{index % TEAMS_COUNT}"])


class Peer:
    def __init__(self, index: int) -> None:
        self.index = index
        self.private = PrivateKey.generate()
        self.public = self.private.public_key().to_base64()
        self.access: str = ""
        self.peer_id: str = uuid.uuid4().hex
        self.serial = 0
        self.received_at = 0.0
        self.changed = asyncio.Event()
        self.target = 0
        self.frames = 0
        self.bytes = 0
        self.largest = 0
        self.lost = False


def _status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def raise_nofile() -> tuple[int, int]:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit (10,000 streams: 10,000 sockets on each side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def seed(state: pathlib.Path, peers: list[Peer]) -> None:
    """Write what enrolling ``peers`` through the API would have written (see the module docstring)."""
    keys = load_keys(state)
    network = enrolment.parse_network(enrolment.DEFAULT_NETWORK)
    engine = store.create_engine(store.default_url(state))
    sessions = store.sessionmaker(engine)
    now = time.time()
    try:
        async with sessions() as session:
            async with session.begin():
                setup_keys: dict[int, store.SetupKeyRow] = {}
                for slot in range(TEAMS_COUNT):
                    key = store.SetupKeyRow(
                        id=uuid.uuid4().hex,
                        name=f"bench-{slot}",
                        key_hash=store.secret_hash(new_secret(SETUP_KEY_PREFIX)),
                        reusable=True,
                        usage_limit=len(peers),
                        used=sum(1 for peer in peers if peer.index % TEAMS_COUNT == slot),
                        created_at=now,
                        expires_at=now + enrolment.DEFAULT_SETUP_KEY_LIFETIME,
                        revoked=False,
                        auto_groups=groups_of(slot),
                        approval_required=False,
                        ephemeral=False,
                        ephemeral_timeout=enrolment.DEFAULT_EPHEMERAL_TIMEOUT,
                        last_used_at=now,
                    )
                    setup_keys[slot] = key
                    session.add(key)
                    audit.record(
                        session,
                        now=now,
                        kind="setup_key_created",
                        actor="admin:bench",
                        detail={"id": key.id, "name": key.name, "reusable": True, "usage_limit": key.usage_limit},
                    )
                await session.flush()
                taken: set[int] = set()
                rows = []
                for peer in peers:
                    key_row = setup_keys[peer.index % TEAMS_COUNT]
                    address = enrolment.allocate_address(network, taken)
                    taken.add(int(ipaddress.IPv4Address(address)))
                    enrolled_at = now - (len(peers) - peer.index) * 1e-3  # one after another, in index order
                    row = store.PeerRow(
                        id=peer.peer_id,
                        name=f"peer-{peer.peer_id[:8]}",
                        public_key=peer.public,
                        address=address,
                        groups=sorted(key_row.auto_groups),
                        approved=not key_row.approval_required,
                        revoked=False,
                        deleted=False,
                        released_at=None,
                        ephemeral=False,
                        ephemeral_timeout=0,
                        setup_key_id=key_row.id,
                        endpoint_host=None,
                        endpoint_port=None,
                        created_at=enrolled_at,
                        last_seen=enrolled_at,
                        map_serial=0,
                        acked_serial=0,
                    )
                    rows.append(row)
                    audit.record(
                        session,
                        now=enrolled_at,
                        kind="enrol",
                        actor=f"setup_key:{key_row.id[:8]}",
                        peer=row.id,
                        detail={
                            "name": row.name,
                            "public_key": row.public_key,
                            "address": address,
                            "groups": row.groups,
                            "approved": row.approved,
                            "setup_key": key_row.id,
                        },
                    )
                session.add_all(rows)
                await session.flush()
                for peer in peers:
                    refresh, claims = tokens.issue_token(
                        keys.signing,
                        peer_id=peer.peer_id,
                        public_key=peer.public,
                        typ="refresh",
                        now=now,
                        jti=uuid.uuid4().hex,
                        family=uuid.uuid4().hex,
                    )
                    assert claims.fam is not None  # a refresh token has a family
                    session.add(
                        store.RefreshTokenRow(
                            jti=claims.jti,
                            token_hash=store.secret_hash(refresh),
                            family=claims.fam,
                            peer_id=peer.peer_id,
                            issued_at=now,
                            expires_at=float(claims.exp),
                            used_at=None,
                            revoked=False,
                        )
                    )
            audit.emit_pending(session)
    finally:
        await engine.dispose()
    for peer in peers:  # the access token the enrolment answer would have carried
        peer.access, _ = tokens.issue_token(
            keys.signing, peer_id=peer.peer_id, public_key=peer.public, typ="access", now=now, jti=uuid.uuid4().hex
        )


async def _stream(
    http: aiohttp.ClientSession,
    url: str,
    proof_key: PublicKey,
    peer: Peer,
    ready: asyncio.Event,
    gate: asyncio.Semaphore,
) -> None:
    try:
        async with gate:  # bounded connects: each proof is made just before its request (60 s window)
            headers = proof_headers(
                peer.private, proof_key, "GET", "/api/v1/peer/stream", b"", now=time.time(), nonce=os.urandom(16)
            )
            headers["Authorization"] = f"Bearer {peer.access}"
            ws = await http.ws_connect(url + "/api/v1/peer/stream", headers=headers, max_msg_size=256 * 1024 * 1024)
        async with ws:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                match = _SERIAL.match(message.data[:64])
                if match is None:
                    continue
                peer.serial = int(match.group(1))
                peer.received_at = time.perf_counter()
                peer.frames += 1
                peer.bytes += len(message.data)
                peer.largest = max(peer.largest, len(message.data))
                ready.set()
                if peer.serial >= peer.target:
                    peer.changed.set()
    finally:
        peer.lost = True


async def _admin(
    http: aiohttp.ClientSession, url: str, token: str, method: str, path: str, data: bytes | None = None
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url + path, data=data, headers=headers) as response:
        text = await response.text()
        if response.status >= 300:
            raise RuntimeError(text)
        return json.loads(text) if text and text[0] in "{[" else text


async def run(count: int, policies: list[str], state: pathlib.Path, change_timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    init = subprocess.run(
        [sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    token = init.stdout.strip()
    started = time.perf_counter()
    peers = [Peer(i) for i in range(count)]
    await seed(state, peers)
    seed_seconds = time.perf_counter() - started
    port = free_port()
    server = subprocess.Popen(  # inherits the raised RLIMIT_NOFILE
        [
            *(sys.executable, "-m", "wgpy", "management", "serve", "--state-dir", str(state)),
            *("--listen", f"127.0.0.1:{port}", "--log-level", "error"),
            # every simulated peer connects from 127.0.0.1: one source, far over the per-source default
            *("--rate-limit", "peer=0"),
        ],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        assert server.stdout is not None  # stdout=PIPE
        await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
            info = await (await http.get(url + "/api/v1/info")).json()
            proof_key = PublicKey.from_base64(info["proof_key"])
            await _admin(http, url, token, "PUT", "/api/v1/policy", POLICIES[policies[0]].encode())
            readies = [asyncio.Event() for _ in peers]
            gate = asyncio.Semaphore(200)
            started = time.perf_counter()
            for peer, ready in zip(peers, readies, strict=True):
                tasks.append(asyncio.create_task(_stream(http, url, proof_key, peer, ready, gate)))
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), change_timeout)
            connect_seconds = time.perf_counter() - started
            await asyncio.sleep(2.0)  # let the connect bursts settle
            rss_connected = _status_kib(server.pid, "VmRSS")
            for change, name in enumerate(policies[1:]):
                for peer in peers:
                    peer.target = peer.serial + 1
                    peer.changed.clear()
                    peer.bytes = peer.frames = peer.largest = 0
                load = os.getloadavg()
                t0 = time.perf_counter()
                await _admin(http, url, token, "PUT", "/api/v1/policy", POLICIES[name].encode())
                put_seconds = time.perf_counter() - t0
                waiting = asyncio.gather(*(peer.changed.wait() for peer in peers))
                timed_out = False
                try:
                    await asyncio.wait_for(waiting, change_timeout)
                except TimeoutError:
                    timed_out = True
                done = sorted(peer.received_at - t0 for peer in peers if peer.changed.is_set())
                results.append(
                    {
                        "change": change,
                        "policy": name,
                        "updated": len(done),
                        "timed_out": timed_out,
                        "all_peers_s": round(done[-1], 3) if done and not timed_out else None,
                        "median_s": round(done[len(done) // 2], 3) if len(done) > count // 2 else None,
                        "put_policy_s": round(put_seconds, 3),
                        "frame_bytes_max": max(peer.largest for peer in peers),
                        "frame_bytes_total": sum(peer.bytes for peer in peers),
                        "server_rss_mib": round(_status_kib(server.pid, "VmRSS") / 1024, 1),
                        "server_peak_rss_mib": round(_status_kib(server.pid, "VmHWM") / 1024, 1),
                        "streams_lost": sum(peer.lost for peer in peers),
                        "loadavg_before": [round(value, 2) for value in load],
                    }
                )
                print(json.dumps({"peers": count, **results[-1]}), flush=True)
                if timed_out:
                    break
                await asyncio.sleep(2.0)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    return {
        "peers": count,
        "policies": policies,
        "seed_s": round(seed_seconds, 2),
        "connect_s": round(connect_seconds, 2),
        "server_rss_connected_mib": round(rss_connected / 1024, 1),
        "changes": results,
    }


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (proc(5) fields 14, 15)


@contextlib.asynccontextmanager
async def _seeded_server(
    count: int, state: pathlib.Path, tree: pathlib.Path
) -> AsyncIterator[tuple[str, str, subprocess.Popen[str], list[Peer]]]:
    """``count`` seeded peers and ``wgpy management serve`` running from ``tree``: (url, admin token, process, peers)."""
    tree = tree.resolve()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    init = subprocess.run(
        [sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,  # `python -m` puts the working directory first on sys.path, before PYTHONPATH
        check=True,
        timeout=120,
    )
    peers = [Peer(i) for i in range(count)]
    await seed(state, peers)
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "wgpy", "management", "serve", "--state-dir", str(state)),
            *("--listen", f"127.0.0.1:{port}", "--log-level", "error"),
        ],
        stdout=subprocess.PIPE,
        env=env,
        cwd=tree,
        text=True,
    )
    try:
        assert server.stdout is not None  # stdout=PIPE
        await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 60)
        yield f"http://127.0.0.1:{port}", init.stdout.strip(), server, peers
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


async def run_candidates(count: int, frames: int, state: pathlib.Path, tree: pathlib.Path) -> dict[str, Any]:
    """The server's cost of ``candidates`` frames: ``count`` peers seeded, an all-to-all policy, two streams; one
    peer sends ``frames`` frames for the other, then a ping. Measured: the wall time from the first frame to the
    pong (the server reads a stream's frames in order) and the server process's CPU time over it, per frame."""
    async with (
        _seeded_server(count, state, tree) as (url, token, server, peers),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
    ):
        info = await (await http.get(url + "/api/v1/info")).json()
        proof_key = PublicKey.from_base64(info["proof_key"])
        await _admin(http, url, token, "PUT", "/api/v1/policy", ALL.encode())
        sockets = []
        for peer in peers[:2]:
            headers = proof_headers(
                peer.private, proof_key, "GET", "/api/v1/peer/stream", b"", now=time.time(), nonce=os.urandom(16)
            )
            headers["Authorization"] = f"Bearer {peer.access}"
            ws = await http.ws_connect(url + "/api/v1/peer/stream", headers=headers, max_msg_size=1 << 28)
            first = await ws.receive(120)
            assert first.type == aiohttp.WSMsgType.TEXT and _SERIAL.match(first.data[:64]), first
            sockets.append(ws)
        sender, target = sockets
        received = 0

        async def drain() -> None:
            nonlocal received
            async for message in target:
                if message.type == aiohttp.WSMsgType.TEXT and message.data.startswith('{"type": "candidates"'):
                    received += 1

        reader = asyncio.create_task(drain())
        await asyncio.sleep(1.0)  # let the connect pushes settle
        cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
        for n in range(frames):
            candidates = [{"kind": "host", "host": "192.168.1.2", "port": 1 + n % 60000}]
            await sender.send_json({"type": "candidates", "peer": peers[1].public, "candidates": candidates})
        await sender.send_json({"type": "ping"})
        while True:
            message = await sender.receive(600)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"the sender's stream ended: {message.type.name} {message.data}")
            if '"pong"' in message.data:
                break
        wall, cpu = time.perf_counter() - t0, _cpu_seconds(server.pid) - cpu0
        await asyncio.sleep(0.5)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        for ws in sockets:
            await ws.close()
    return {
        "mode": "candidates",
        "tree": str(tree),
        "peers": count,
        "frames": frames,
        "wall_s": round(wall, 3),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_frame": round(cpu / frames * 1e6, 1),
        "frames_forwarded_received": received,
    }


async def run_enrol(count: int, enrolments: int, state: pathlib.Path, tree: pathlib.Path) -> dict[str, Any]:
    """The server's cost of an enrolment with ``count`` peers enrolled already (a "teams" policy: small maps, so
    the address allocation is not hidden behind a large map): ``enrolments`` new peers enrol one after another."""
    async with (
        _seeded_server(count, state, tree) as (url, token, server, _peers),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
    ):
        info = await (await http.get(url + "/api/v1/info")).json()
        proof_key = PublicKey.from_base64(info["proof_key"])
        await _admin(http, url, token, "PUT", "/api/v1/policy", TEAMS.encode())
        body = json.dumps({"name": "bench", "reusable": True, "usage_limit": enrolments, "auto_groups": ["t0"]})
        key = (await _admin(http, url, token, "POST", "/api/v1/setup-keys", body.encode()))["key"]
        cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
        for _ in range(enrolments):
            private = PrivateKey.generate()
            raw = json.dumps({"setup_key": key, "public_key": private.public_key().to_base64()}).encode()
            headers = proof_headers(
                private, proof_key, "POST", "/api/v1/enrol", raw, now=time.time(), nonce=os.urandom(16)
            )
            headers["Content-Type"] = "application/json"
            async with http.post(url + "/api/v1/enrol", data=raw, headers=headers) as response:
                assert response.status == 201, await response.text()
                await response.read()
        wall, cpu = time.perf_counter() - t0, _cpu_seconds(server.pid) - cpu0
    return {
        "mode": "enrol",
        "tree": str(tree),
        "peers": count,
        "enrolments": enrolments,
        "wall_ms_per_enrolment": round(wall / enrolments * 1e3, 2),
        "server_cpu_ms_per_enrolment": round(cpu / enrolments * 1e3, 2),
    }


def _versions() -> dict[str, str]:
    import sqlalchemy

    return {"python": platform.python_version(), "aiohttp": aiohttp.__version__, "sqlalchemy": sqlalchemy.__version__}


def _machine() -> dict[str, Any]:
    import machineinfo  # sibling module in benchmarks/

    return {**machineinfo.describe(), **_versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, action="append")
    parser.add_argument(
        "--policies",
        default="all,grouped,all",
        help="initial policy, then the changes: all, grouped, teams, teams-b (all-to-all at 10,000: ~15 GB a change)",
    )
    parser.add_argument("--teams", action="store_true", help="shorthand for --policies teams-b,teams,teams-b")
    parser.add_argument("--change-timeout", type=float, default=300.0, help="seconds one change (or connect) may take")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the whole run may take")
    parser.add_argument("--output", type=pathlib.Path, help="also write the summary JSON here")
    parser.add_argument(
        "--candidates", type=int, metavar="FRAMES", help="measure FRAMES candidates frames instead of map pushes"
    )
    parser.add_argument("--enrol", type=int, metavar="N", help="measure N enrolments instead of map pushes")
    parser.add_argument(
        "--tree",
        type=pathlib.Path,
        action="append",
        help="with --candidates: the wgpy tree the server runs from (repeat to compare, e.g. main and a branch)",
    )
    args = parser.parse_args()
    if args.candidates is not None or args.enrol is not None:
        machine = _machine()
        runs = []
        for count in args.peers or [1000]:
            for tree in [t.resolve() for t in args.tree or [ROOT]]:
                with tempfile.TemporaryDirectory() as directory:
                    state = pathlib.Path(directory) / "state"
                    if args.candidates is not None:
                        coroutine = run_candidates(count, args.candidates, state, tree)
                    else:
                        coroutine = run_enrol(count, args.enrol, state, tree)
                    runs.append(asyncio.run(asyncio.wait_for(coroutine, args.timeout)))
                    print(json.dumps(runs[-1]), flush=True)
        text = json.dumps({"machine": machine, "runs": runs}, indent=2)
        print(text)
        if args.output is not None:
            args.output.write_text(text + "\n")
        return
    policies = ["teams-b", "teams", "teams-b"] if args.teams else args.policies.split(",")
    if len(policies) < 2 or any(name not in POLICIES for name in policies):
        parser.error(f"--policies: an initial policy and at least one change, of {', '.join(POLICIES)}")
    nofile = raise_nofile()
    machine = _machine()
    summary = []
    for count in args.peers or [1000]:
        with tempfile.TemporaryDirectory() as directory:
            coroutine = run(count, policies, pathlib.Path(directory) / "state", args.change_timeout)
            summary.append(asyncio.run(asyncio.wait_for(coroutine, args.timeout)))
    result = {"machine": {**machine, "rlimit_nofile": list(nofile)}, "runs": summary}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
