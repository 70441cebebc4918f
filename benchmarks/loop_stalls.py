"""How long the daemon's event loop stops during large configuration requests (issue #11 items 3 and 5).

Usage: ``python benchmarks/loop_stalls.py [--peers 100000] [--map-peers 65535] [--out benchmarks/results]``

One process serves a ``Tunnel`` (UDP on 127.0.0.1) with its ``UapiServer`` and a ``MeshAgent``, as the daemon does
in mesh mode, and a callback re-arms itself every 2 ms: the gaps between its runs are how long a packet would wait
for the loop. Client processes, started before anything large is allocated (forking a 300 MB process stops the loop
by itself), send over the UAPI socket a ``set=1`` of ``--peers`` peers (random keys, one /32 each), a ``get=1``, a
``set=1`` removing them, and a ``mesh_apply=1`` of a signed map of ``--map-peers`` peers (65,535 is the largest a
map may list, about 13 MB). Printed and written to ``<out>/loop-stalls-<date>.json``: per request its time, the
largest gap, the 99th percentile and the gaps over 50 ms. No root or namespaces needed; the numbers vary with what
else the machine runs (its load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from harness import RESULTS, write_result

TICK = 0.002  # seconds between two runs of the probe callback
SAMPLE = 0.01  # seconds between two looks of the --stacks sampler

_CLIENT = r"""
import socket, sys, time
path, file = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
sys.stdin.readline()
start = time.perf_counter()
sock.sendall(open(file, "rb").read())
reply = b""
while not (reply.endswith(b"\n\n") and b"errno=" in reply[-40:]):
    chunk = sock.recv(1 << 20)
    if not chunk:
        break
    reply += chunk
print(f"{time.perf_counter() - start:.3f} {reply[-40:].decode(errors='replace').strip().splitlines()[-1]}")
"""


def _map_document(own_key: str, count: int) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from wgpy.mesh import sign_network_map

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    now = int(time.time())
    peers: list[dict[str, Any]] = [
        {"public_key": own_key, "allowed_ips": ["10.255.0.1/32"], "endpoint": None, "groups": ["g"], "relay": False}
    ]
    for i in range(1, count):
        peers.append(
            {
                "public_key": base64.b64encode(os.urandom(32)).decode(),
                "allowed_ips": [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32", f"fd00::{i:x}/128"],
                "endpoint": {"host": f"192.0.2.{i & 255}", "port": 51820},
                "groups": [f"team-{i % 50}", "everyone"],
                "relay": False,
            }
        )
    body = {"version": 1, "serial": 1, "issued_at": now - 5, "expires_at": now + 3600, "peers": peers, "acl": []}
    document = json.dumps(sign_network_map(body, key), separators=(",", ":")).encode()
    return b"mesh_apply=1\n" + document + b"\n\n"


class _Sampler:
    """``--stacks``: a thread that, while the loop is more than 50 ms late, counts where the loop thread is."""

    def __init__(self, last: list[float]) -> None:
        self.last = last
        self.where: Counter[str] = Counter()
        self.stop = threading.Event()
        self.loop_thread = threading.get_ident()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE):
            if time.perf_counter() - self.last[0] > 0.05:
                frame = sys._current_frames().get(self.loop_thread)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-5:]
                    self.where[" < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stack))] += 1


async def _measure(peers: int, map_peers: int, tmp: Path, stacks: bool) -> list[dict[str, Any]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from wgpy.device import Device
    from wgpy.drivers.asyncio_udp import Tunnel
    from wgpy.drivers.uapi_server import UapiServer, bind_uapi_socket, socket_path
    from wgpy.keys import PrivateKey
    from wgpy.mesh.agent import MeshAgent

    private = PrivateKey.generate()
    management = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()
    keys = [os.urandom(32).hex() for _ in range(peers)]
    requests = {
        "set": f"set=1\nprivate_key={private.to_hex()}\n".encode()
        + "".join(
            f"public_key={key}\nallowed_ip=172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32\n"
            for i, key in enumerate(keys)
        ).encode()
        + b"\n",
        "get": b"get=1\n\n",
        "remove": b"set=1\n" + "".join(f"public_key={key}\nremove=true\n" for key in keys).encode() + b"\n",
        "mesh_apply": _map_document(private.public_key().to_base64(), map_peers),
    }
    files = {}
    for name, data in requests.items():
        files[name] = tmp / name
        files[name].write_bytes(data)
    del requests, keys
    tunnel = Tunnel(Device(), bind_address="127.0.0.1")
    await tunnel.start()
    agent = MeshAgent.create(tunnel, management)
    agent.start()
    server = UapiServer(tunnel, bind_uapi_socket("stall0", tmp), mesh=agent)
    await server.start()
    path = str(socket_path("stall0", tmp))
    clients = {
        name: await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            path,
            str(file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for name, file in files.items()
    }
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        loop.call_later(TICK, tick)

    tick()
    sampler = _Sampler(last) if stacks else None
    await asyncio.sleep(1.0)
    phases = []
    try:
        for name, client in clients.items():
            gaps.clear()
            if sampler is not None:
                sampler.where.clear()
            out, _ = await client.communicate(b"go\n")
            if sampler is not None:
                for where, count in sampler.where.most_common(5):
                    print(f"  {name}: {count * SAMPLE * 1000:.0f} ms late at {where}")
            seconds, _, answer = out.decode().strip().partition(" ")
            ordered = sorted(gaps)
            phases.append(
                {
                    "request": name,
                    "seconds": float(seconds or "nan"),
                    "answer": answer,
                    "ticks": len(ordered),
                    "max_gap_ms": round(ordered[-1] * 1000, 1),
                    "p99_gap_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
                    "gaps_over_50ms": sum(gap > 0.05 for gap in ordered),
                }
            )
    finally:
        if sampler is not None:
            sampler.stop.set()
        server.close()
        agent.close()
        tunnel.close()
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--map-peers", type=int, default=65_535)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stacks", action="store_true", help="print where the loop was while it was late")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wgpy-loop-stalls-") as tmp:
        phases = asyncio.run(_measure(args.peers, args.map_peers, Path(tmp), args.stacks))
    print(f"{'request':<11} {'seconds':>8} {'max gap ms':>11} {'p99 ms':>7} {'>50 ms':>7}  answer")
    for phase in phases:
        print(
            f"{phase['request']:<11} {phase['seconds']:>8.2f} {phase['max_gap_ms']:>11.1f} {phase['p99_gap_ms']:>7.1f} "
            f"{phase['gaps_over_50ms']:>7}  {phase['answer']}"
        )
    write_result(args.out, "loop-stalls", {"peers": args.peers, "map_peers": args.map_peers, "phases": phases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
