"""Old engine against new, in ONE process, timed in alternating short slices: an A/B of the transport hot path
that a shared, noisy machine cannot skew towards either side (separate pytest-benchmark runs, even interleaved,
drift by more than the difference being measured).

Usage::

    git worktree add /tmp/old <commit>
    python benchmarks/ab_transport.py /tmp/old            # compares /tmp/old/wgpy with this tree's wgpy

The old tree's ``wgpy`` package is copied to a temporary directory under the name ``wgpy_old`` (the package imports
itself relatively, so it runs unchanged beside the new one). For each case, 300 slices of 100 packets alternate
between the two engines; the medians and minima of the per-packet times are printed with their ratio new/old.
"""

from __future__ import annotations

import importlib
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

NOW: Final = 1000.0
ENDPOINT_A: Final = ("192.0.2.1", 51820)
ENDPOINT_B: Final = ("192.0.2.2", 51820)
SLICES: Final = 300
PACKETS: Final = 100


def ipv4_packet(size: int, src: bytes = bytes([10, 0, 0, 1]), dst: bytes = bytes([10, 0, 0, 2])) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, src, dst)
    return header + bytes(size - len(header))


def session(package: str) -> tuple[Any, Any]:
    """Two devices of ``package`` with a confirmed session (A initiated), as ``bench_transport.make_session``."""
    device = importlib.import_module(f"{package}.device")
    keys = importlib.import_module(f"{package}.keys")
    testing = importlib.import_module(f"{package}.testing")
    a = device.Device(keys.PrivateKey(random.Random("a").randbytes(32)), rng=random.Random(1).randbytes, mtu=1420)
    b = device.Device(keys.PrivateKey(random.Random("b").randbytes(32)), rng=random.Random(2).randbytes, mtu=1420)
    a.add_peer(b.public_key, endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, endpoint=ENDPOINT_A, allowed_ips=["10.0.0.1/32"])
    net = testing.MemoryNetwork()
    node_a, node_b = net.attach(a, ENDPOINT_A), net.attach(b, ENDPOINT_B)
    net.now = NOW - 1.0
    net.send_packet(a, ipv4_packet(64))
    net.send_packet(b, ipv4_packet(64, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])))
    if not (node_a.delivered and node_b.delivered):
        raise RuntimeError(f"{package}: the handshake did not complete")
    return a, b


def _send_packet(a: Any, b: Any, packet: bytes) -> float:
    started = time.perf_counter()
    send = a.send_packet
    for _ in range(PACKETS):
        send(packet, NOW)
    a.datagrams_to_send()
    return time.perf_counter() - started


def _send_packets(a: Any, b: Any, packet: bytes) -> float:
    started = time.perf_counter()
    a.send_packets([packet] * PACKETS, NOW)
    a.datagrams_to_send()
    return time.perf_counter() - started


def _round_trip(a: Any, b: Any, packet: bytes) -> float:
    started = time.perf_counter()
    send, drain, receive, deliver = a.send_packet, a.datagrams_to_send, b.receive_datagram, b.packets_to_tun
    for _ in range(PACKETS):
        send(packet, NOW)
        for data, _endpoint in drain():
            receive(data, ENDPOINT_A, NOW)
        deliver()
    return time.perf_counter() - started


def _receive(a: Any, b: Any, packet: bytes) -> float:
    for _ in range(PACKETS):
        a.send_packet(packet, NOW)
    datagrams = a.datagrams_to_send()
    started = time.perf_counter()
    receive = b.receive_datagram
    for data, _endpoint in datagrams:
        receive(data, ENDPOINT_A, NOW)
    b.packets_to_tun()
    return time.perf_counter() - started


CASES: Final[dict[str, Callable[[Any, Any, bytes], float]]] = {
    "send_packet": _send_packet,
    "send_packets": _send_packets,
    "round_trip": _round_trip,
    "receive": _receive,
}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    old_tree = Path(argv[0])
    new_tree = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copytree(old_tree / "wgpy", Path(scratch) / "wgpy_old")
        sys.path[:0] = [scratch, str(new_tree)]
        engines = {"old": session("wgpy_old"), "new": session("wgpy")}
        import machineinfo  # sibling module in benchmarks/ (this script's own folder is on sys.path)

        print(f"machine: {machineinfo.one_line()}")
        for size in (64, 1420):
            packet = ipv4_packet(size)
            for name, case in CASES.items():
                samples: dict[str, list[float]] = {"old": [], "new": []}
                for i in range(SLICES):
                    for side in ("old", "new") if i % 2 else ("new", "old"):
                        a, b = engines[side]
                        samples[side].append(case(a, b, packet) / PACKETS * 1e6)
                old, new = statistics.median(samples["old"]), statistics.median(samples["new"])
                old_min, new_min = min(samples["old"]), min(samples["new"])
                print(
                    f"{name:13} {size:5} B  median old {old:6.2f} us  new {new:6.2f} us  new/old {new / old:5.3f}"
                    f"   min old {old_min:6.2f}  new {new_min:6.2f}  new/old {new_min / old_min:5.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
