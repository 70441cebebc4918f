"""Micro-benchmarks of the engine levers of issue #12, each beside the path it replaces, in one process.

Usage: ``python benchmarks/engine_micro.py [--rounds 7] [--out FILE]``

- ``seal``: 64 padded 1420-byte plaintexts made into one GSO send buffer: ``SealJob.run`` and ``b"".join`` (what
  the drain and ``UdpSocket.send_batch`` did) against ``SealJob.run_into`` (``encrypt_into`` into the buffer), and
  ``encrypt`` alone as the floor.
- ``receive``: 64 transport messages of 1420-byte packets into a device: ``receive_datagram`` on each against one
  ``receive_datagrams``, and ``decrypt`` alone as the floor.
- ``split``: a TCP super-packet of N segments of 1368 bytes (a 1420-byte MTU with timestamps) cut by
  ``gso_split`` (payload sums from one numpy row sum), by it with numpy hidden, and (``--baseline TREE``) by that
  tree's ``gso_split``.
- ``gro``: ``handle_gro`` of 64 segments of one flow (a UDP GRO read's worth), here and in ``--baseline TREE``.
- ``checksum``: ``gso_none_checksum`` of one 1420-byte TCP packet (here, and in ``--baseline TREE``).

Every figure is the best of ``--rounds`` timeit repeats, in microseconds per packet (or per segment). The machine
(CPU model, cores, kernel, Python, cryptography/OpenSSL) and the load average are printed with them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import struct
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_transport
import machineinfo

import tun.offload as offload
from wgpy import crypto
from wgpy.send import SealJob

BATCH: Final = 64
SIZE: Final = 1420
MSS: Final = 1368


def best(function: Callable[[], object], number: int, rounds: int) -> float:
    """Seconds per call: the best of ``rounds`` repeats of ``number`` calls."""
    return min(timeit.repeat(function, number=number, repeat=rounds)) / number


def bench_seal(rounds: int) -> list[str]:
    aead = crypto.Aead(os.urandom(32))
    plaintexts = [os.urandom(SIZE) for _ in range(BATCH)]
    job = SealJob(1, 2, 100, plaintexts, ("192.0.2.1", 51820), aead, b"")
    buffer = bytearray(job.sealed_size())
    job.run_into(buffer)
    assert bytes(buffer) == b"".join(job.run())
    nonce = bytes(12)
    joined = best(lambda: b"".join(job.run()), 100, rounds) / BATCH
    into = best(lambda: job.run_into(buffer), 100, rounds) / BATCH
    floor = best(lambda: aead.encrypt(nonce, plaintexts[0], None), 5000, rounds)
    return [
        f"seal {BATCH} x {SIZE} B into one send buffer: run + join {joined * 1e6:.3f} us/packet, "
        f"run_into {into * 1e6:.3f} us/packet ({into / joined:.3f}x), encrypt alone {floor * 1e6:.3f} us"
    ]


def bench_receive(rounds: int) -> list[str]:
    number = 30
    device, one_by_one, batched = bench_transport.receive_variants(SIZE, BATCH, 2 * number * rounds + 2)
    packet = bench_transport.ipv4_packet(SIZE)
    single = best(one_by_one, number, rounds) / BATCH
    many = best(batched, number, rounds) / BATCH
    aead = crypto.Aead(os.urandom(32))
    sealed = aead.encrypt(bytes(12), packet, None)
    floor = best(lambda: aead.decrypt(bytes(12), sealed, None), 5000, rounds)
    assert device.stats.drops == {}, device.stats.drops
    return [
        f"receive {BATCH} x {SIZE} B: receive_datagram each {single * 1e6:.3f} us/packet, receive_datagrams "
        f"{many * 1e6:.3f} us/packet ({many / single:.3f}x), decrypt alone {floor * 1e6:.3f} us"
    ]


def _super_packet(segments: int, seq: int = 1) -> tuple[bytes, offload.VirtioNetHdr]:
    """An IPv4 TCP super-packet with timestamps, as the kernel hands it (pseudo-header seed in the checksum)."""
    payload = bytes(i & 0xFF for i in range(segments * MSS))
    options = struct.pack("!BBBBII", 1, 1, 8, 10, 1, 2)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 8 << 4, 0x10, 500, 0, 0) + options + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, bytes(4), bytes(4))
    hdr = offload.VirtioNetHdr(1, offload.VIRTIO_NET_HDR_GSO_TCPV4, 52, MSS, 20, 16)
    return ip + tcp, hdr


def _load_offload(tree: Path) -> ModuleType:
    """``tun/offload.py`` of another tree (an exported older commit), imported under another name."""
    spec = importlib.util.spec_from_file_location("baseline_offload", tree / "tun" / "offload.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no tun/offload.py in {tree}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_split(rounds: int, baseline: Path | None = None) -> list[str]:
    """Per segment: the loop (numpy row sums), the loop without numpy (hidden), and ``baseline``'s split."""
    old = _load_offload(baseline) if baseline is not None else None
    names = vars(offload)
    lines = []
    for segments in (2, 4, 8, 16, 32, 47):
        packet, hdr = _super_packet(segments)
        number = max(50, 2000 // segments)
        expected = offload.gso_split(packet, hdr)
        numpy = names["_np"]
        figures = [("here", best(lambda: offload.gso_split(packet, hdr), number, rounds))]  # noqa: B023
        try:
            names["_np"] = None
            assert offload.gso_split(packet, hdr) == expected
            figures.append(("here without numpy", best(lambda: offload.gso_split(packet, hdr), number, rounds)))  # noqa: B023
        finally:
            names["_np"] = numpy
        if old is not None:  # as it runs there (numpy rows from VECTOR_MIN_SEGMENTS on, if it has them)
            assert old.gso_split(packet, hdr) == expected
            figures.append(("baseline", best(lambda: old.gso_split(packet, hdr), number, rounds)))  # noqa: B023
        lines.append(
            f"split {segments:2d} x {MSS} B, us/segment: "
            + ", ".join(f"{label} {seconds / segments * 1e6:.3f}" for label, seconds in figures)
        )
    return lines


def bench_gro(rounds: int, baseline: Path | None = None) -> list[str]:
    """``handle_gro`` of 64 decrypted segments of one flow (what one UDP GRO read brings), here and in ``baseline``;
    the segments are those the kernel's super-packets are cut into (two of them: 47 and 17 segments)."""
    old = _load_offload(baseline) if baseline is not None else None
    first, hdr = _super_packet(47)
    second, hdr2 = _super_packet(17, seq=1 + 47 * MSS)
    segments = offload.gso_split(first, hdr) + offload.gso_split(second, hdr2)
    records = offload.handle_gro(segments)
    figures = [("here", best(lambda: offload.handle_gro(segments), 200, rounds))]
    if old is not None:
        assert old.handle_gro(segments) == records
        figures.append(("baseline", best(lambda: old.handle_gro(segments), 200, rounds)))
    return [
        f"handle_gro of {len(segments)} segments of {MSS} B into {len(records)} records, us/segment: "
        + ", ".join(f"{label} {seconds / len(segments) * 1e6:.3f}" for label, seconds in figures)
    ]


def bench_checksum(rounds: int, baseline: Path | None = None) -> list[str]:
    """``gso_none_checksum`` of one TCP packet (a NEEDS_CSUM read without GSO), here and in ``baseline``."""
    old = _load_offload(baseline) if baseline is not None else None
    packet, _hdr = _super_packet(1)
    figures = [("here", best(lambda: offload.gso_none_checksum(bytearray(packet), 20, 16), 5000, rounds))]
    if old is not None:
        figures.append(("baseline", best(lambda: old.gso_none_checksum(bytearray(packet), 20, 16), 5000, rounds)))
    return [
        f"gso_none_checksum of a {len(packet)}-byte TCP packet, us: "
        + ", ".join(f"{label} {seconds * 1e6:.3f}" for label, seconds in figures)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, help="append the report to this text file")
    parser.add_argument("--baseline", type=Path, help="also time tun/offload.py of this tree (an older commit)")
    parser.add_argument("--only", help="comma-separated subset of: seal,receive,split,checksum,gro")
    args = parser.parse_args(argv)
    lines = [f"engine_micro, best of {args.rounds}: {machineinfo.one_line()}"]
    print(lines[0], flush=True)
    benches: dict[str, Callable[[], list[str]]] = {
        "seal": lambda: bench_seal(args.rounds),
        "receive": lambda: bench_receive(args.rounds),
        "split": lambda: bench_split(args.rounds, args.baseline),
        "checksum": lambda: bench_checksum(args.rounds, args.baseline),
        "gro": lambda: bench_gro(args.rounds, args.baseline),
    }
    chosen = args.only.split(",") if args.only else list(benches)
    for name in chosen:
        for line in benches[name]():
            lines.append(line)
            print(line, flush=True)
    lines.append(f"load after {os.getloadavg()[0]:.2f}")
    machineinfo.append_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
