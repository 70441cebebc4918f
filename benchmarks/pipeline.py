"""Send-side capacity of one wgpy tunnel, in one process and with its data-plane worker, side by side.

Usage: ``python benchmarks/pipeline.py [--seconds 3] [--repeat 3] [--size 1420] [--out FILE.json]`` (no root).

What it measures: how many packets per second one ``Tunnel`` can take from its "TUN side", seal and send as UDP,
when nothing else competes for the cores. A real handshake is done in memory first (``MemoryNetwork``), then device
A is put in a socket-only ``Tunnel`` on 127.0.0.1 whose peer endpoint is a UDP socket that nobody reads (the kernel
drops what overflows it, cheaply). The main loop plays the TUN device: it hands the device batches of 64 ready-made
IP packets (``Device.send_packets``, as the driver does after one TUN wake-up) and flushes. Two modes, alternated in
each repetition so that both see the same machine:

- ``one process``: the device seals, and the tunnel sends with UDP GSO;
- ``worker``: the device reserves counters and hands ``SealJob``s to the worker process, which seals and sends.

The channel to the worker blocks when full, so the rate counted in the main process is also the worker's. Each run
ends only after the worker has drained its channel (``close()`` waits), and that time counts. CPU seconds of the
main process and of the worker (``/proc``) are reported per million packets.

This is the case the worker is for: a machine with a core to spare (the end-to-end benchmark, with both tunnel ends
and iperf3 on two cores, has none, and there the worker costs more than it gives: see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import machineinfo  # sibling module in benchmarks/

from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.clock import monotonic_now
from wgpy.keys import PrivateKey
from wgpy.testing import MemoryNetwork

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
BATCH = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ipv4_packet(size: int) -> bytes:
    header = _IPV4.pack(0x45, 0, size, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return header + bytes(i & 0xFF for i in range(size - len(header)))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def session(now: float) -> Device:
    """Device A with a confirmed session to B (B is dropped afterwards: nothing answers A any more)."""
    a = Device(PrivateKey(random.Random("a").randbytes(32)), rng=random.Random(1).randbytes)
    b = Device(PrivateKey(random.Random("b").randbytes(32)), rng=random.Random(2).randbytes)
    assert a.public_key is not None and b.public_key is not None
    a.add_peer(b.public_key, endpoint=("192.0.2.2", 1), allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, endpoint=("192.0.2.1", 1), allowed_ips=["10.0.0.1/32"])
    net = MemoryNetwork()
    net.now = now
    net.attach(a, ("192.0.2.1", 1))
    net.attach(b, ("192.0.2.2", 1))
    net.send_packet(a, ipv4_packet(64))
    if a.stats.handshakes_completed != 1:
        raise RuntimeError("no handshake")
    return a


async def run_once(worker: bool, seconds: float, size: int, sink: tuple[str, int]) -> dict[str, float]:
    device = session(monotonic_now())
    peer = next(iter(device.peers.values()))
    peer.endpoint = sink
    tunnel = Tunnel(device, bind_address="127.0.0.1", worker=worker)
    await tunnel.start()
    worker_pid = tunnel.worker_pid
    if worker and worker_pid is None:
        raise RuntimeError("the worker did not start")
    batch = [ipv4_packet(size)] * BATCH
    me = os.getpid()
    cpu_main = cpu_seconds(me)
    cpu_worker = cpu_seconds(worker_pid) if worker_pid else 0.0
    sent = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(16):
            device.send_packets(batch, monotonic_now())
            tunnel.flush()
            sent += BATCH
        await asyncio.sleep(0)
    if worker_pid is not None:
        cpu_worker = cpu_seconds(worker_pid) - cpu_worker
    tunnel.close()  # waits for the worker to finish its channel
    elapsed = time.perf_counter() - start
    cpu_main = cpu_seconds(me) - cpu_main
    if tunnel.worker_failures:
        raise RuntimeError("the worker failed during the run")
    return {
        "packets_per_second": sent / elapsed,
        "cpu_main_per_million": cpu_main / sent * 1e6,
        "cpu_worker_per_million": cpu_worker / sent * 1e6,
        "sent": sent,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=1420, help="IP packet size (default 1420)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # nobody reads it: keep the kernel's work small
    sink.setsockopt(17, 104, 1)  # UDP_GRO: a GSO run is dropped whole instead of being cut into datagrams first
    address = sink.getsockname()
    samples: dict[str, list[dict[str, float]]] = {"one process": [], "worker": []}
    try:
        for repetition in range(args.repeat):
            for mode in samples:
                result = asyncio.run(run_once(mode == "worker", args.seconds, args.size, address))
                samples[mode].append(result)
                print(
                    f"#{repetition + 1} {mode:12} {result['packets_per_second']:>10,.0f} pkt/s  "
                    f"CPU main {result['cpu_main_per_million']:.2f} s + worker "
                    f"{result['cpu_worker_per_million']:.2f} s per million packets"
                )
    finally:
        sink.close()
    medians = {
        mode: {key: statistics.median(s[key] for s in runs) for key in runs[0]} for mode, runs in samples.items()
    }
    ratio = medians["worker"]["packets_per_second"] / medians["one process"]["packets_per_second"]
    print(f"\nmachine: {machineinfo.one_line()}")
    print(
        f"\nmedians of {args.repeat} x {args.seconds:g} s, {args.size}-byte packets, {os.cpu_count()} CPUs:\n"
        f"  one process {medians['one process']['packets_per_second']:>10,.0f} pkt/s\n"
        f"  worker      {medians['worker']['packets_per_second']:>10,.0f} pkt/s\n"
        f"  worker / one process = {ratio:.2f}x"
    )
    if args.out is not None:
        report = {"machine": machineinfo.describe(), "size": args.size, "seconds": args.seconds,
                  "cpus": os.cpu_count(), "medians": medians, "ratio": ratio, "samples": samples}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
