"""The fixed cost per call of the TUN offload fast paths, this tree's ``tun/offload.py`` against a base commit's.

Usage: ``python benchmarks/bench_offload_fixed.py --base DIR [--slices 40] [--case NAME] [--out FILE]``

Both variants run in one process: the base commit's ``tun/offload.py`` (``DIR`` is a ``git worktree`` of it, say
``git worktree add /tmp/split-base e402d1c``) is loaded under another module name
next to this tree's ``tun.offload``. Each case alternates the two slice by slice (``CALLS_PER_SLICE`` calls a
slice), timed with ``time.process_time``, and reports the medians of the slices and the ratio new/old:

- ``split v4``: ``gso_split_into`` of one IPv4 TSO read of 44 segments of 1,368 bytes of payload behind 52 bytes
  of headers (timestamps), a 1,420-byte MTU (the read ``benchmarks/engine_pipeline.py``'s ``tso_record`` makes).
- ``split v6``: the same for IPv6, 44 segments of 1,348 bytes behind 72 bytes of headers.
- ``gro run``: ``gro_run_parts`` of a run of 44 IPv4 TCP segments of one flow (1,368 bytes of payload, 1,420-byte
  rows back to back, as the receive path lays decrypted packets out), the bulk fast path.
- ``gro run + writev``: the same, then each record's parts in one ``os.writev`` into a pipe (1 MiB), which is
  read empty after each call (the same bytes for both variants): what ``LinuxTun.write_run`` does with the
  parts, the kernel's gathering of a record's parts included.

Before timing, each case's outputs of the two variants are compared (byte for byte).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's ``tun``, not an installed one

import machineinfo

import tun.offload as new_offload

CALLS_PER_SLICE: Final = 200
SEGMENTS: Final = 44
MTU: Final = 1420
TIMESTAMPS: Final = struct.pack("!BBBBII", 1, 1, 8, 10, 0x01020304, 0x05060708)
SRC4: Final = bytes((10, 0, 0, 1))
DST4: Final = bytes((10, 0, 0, 2))
SRC6: Final = bytes.fromhex("fd000000000000000000000000000001")
DST6: Final = bytes.fromhex("fd000000000000000000000000000002")


def load_base(base: Path) -> ModuleType:
    """The base tree's ``tun/offload.py`` as the module ``offload_base``."""
    path = base / "tun" / "offload.py"
    spec = importlib.util.spec_from_file_location("offload_base", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["offload_base"] = module  # dataclass-like machinery may look the module up
    spec.loader.exec_module(module)
    return module


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_packet(version: int, payload: bytes, *, seq: int, flags: int, ip_id: int, seed: bool) -> bytes:
    """An IPv4/IPv6 TCP packet with timestamp options; ``seed`` leaves the TCP checksum as the kernel's
    ``CHECKSUM_PARTIAL`` does (the folded pseudo-header sum), else it is complete."""
    tcp_len = 20 + len(TIMESTAMPS)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, (tcp_len // 4) << 4, flags, 502, 0, 0))
    tcp += TIMESTAMPS + payload
    if version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id, 0x4000, 64, 6, 0, SRC4, DST4))
        ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
        pseudo = SRC4 + DST4 + struct.pack("!xBH", 6, len(tcp))
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, SRC6, DST6))
        pseudo = SRC6 + DST6 + struct.pack("!I3xB", len(tcp), 6)
    if seed:
        total: int = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        tcp[16:18] = struct.pack("!H", total)
    else:
        tcp[16:18] = struct.pack("!H", _checksum(pseudo + bytes(tcp)))
    return bytes(ip + tcp)


def tso_record(version: int, segments: int = SEGMENTS) -> bytes:
    """An offload TUN read: the virtio_net_hdr (NEEDS_CSUM, TCPV4/6, the MSS) and the seeded super-packet."""
    ip_len = 20 if version == 4 else 40
    mss = MTU - ip_len - 20 - len(TIMESTAMPS)
    payload = bytes(i * 7 & 0xFF for i in range(segments * mss))
    packet = tcp_packet(version, payload, seq=0xFFFF0000, flags=0x18, ip_id=0xFFF0, seed=True)
    gso_type = 1 if version == 4 else 4
    return struct.pack("=BBHHHH", 1, gso_type, ip_len + 20 + len(TIMESTAMPS), mss, ip_len, 16) + packet


def gro_run(rows: int = SEGMENTS) -> tuple[bytes, int, int, int, int]:
    """A run of ``rows`` IPv4 segments of one flow back to back (the receive side's layout), the last with PSH."""
    mss = MTU - 20 - 20 - len(TIMESTAMPS)
    packets = [
        tcp_packet(4, bytes((i + j) & 0xFF for j in range(mss)), seq=i * mss, flags=0x10, ip_id=i, seed=False)
        for i in range(rows - 1)
    ]
    packets.append(tcp_packet(4, bytes(mss), seq=(rows - 1) * mss, flags=0x18, ip_id=rows, seed=False))
    return b"".join(packets), rows, MTU, MTU, MTU


def measure(variants: dict[str, Callable[[], object]], slices: int) -> dict[str, float]:
    """CPU seconds per call of each variant: the median over ``slices`` alternating slices."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(slices):
        for name in names if index % 2 == 0 else reversed(names):
            call = variants[name]
            start = time.process_time()
            for _ in range(CALLS_PER_SLICE):
                call()
            samples[name].append((time.process_time() - start) / CALLS_PER_SLICE)
    return {name: statistics.median(values) for name, values in samples.items()}


def _split_case(module: Any, record: bytes) -> Callable[[], object]:
    data = memoryview(record)[module.VIRTIO_NET_HDR_SIZE :]
    hdr = module.VirtioNetHdr.unpack(record)
    split_into = module.gso_split_into

    def call() -> object:
        return split_into(data, hdr)

    return call


def _gro_case(module: Any, run: tuple[bytes, int, int, int, int]) -> Callable[[], object]:
    parts = module.gro_run_parts

    def call() -> object:
        return parts(*run)

    return call


def _gro_writev_case(module: Any, run: tuple[bytes, int, int, int, int], pipe: tuple[int, int]) -> Callable[[], object]:
    parts_of = module.gro_run_parts
    reader, writer = pipe
    writev, read = os.writev, os.read

    def call() -> object:
        for parts in parts_of(*run):
            writev(writer, parts)
        return read(reader, 1 << 20)

    return call


def _pipe() -> tuple[int, int]:
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 1 << 20)
    return reader, writer


def _joined(records: Any) -> list[bytes]:
    return [b"".join(parts) for parts in records]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--base", type=Path, required=True, help="a worktree of the base commit")
    parser.add_argument("--out", type=Path, help="append the report to this text file")
    parser.add_argument(
        "--case", action="append", help="only these cases (split v4, split v6, gro run, gro run + writev)"
    )
    args = parser.parse_args(argv)
    old = load_base(args.base)
    print(f"old: {old.__file__}, new: {new_offload.__file__}")
    run = gro_run()
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for version in (4, 6):
        record = tso_record(version)
        old_call, new_call = _split_case(old, record), _split_case(new_offload, record)
        old_run, new_run = old_call(), new_call()
        assert isinstance(old_run, tuple) and isinstance(new_run, tuple) and old_run[1] == SEGMENTS
        assert old_run == new_run, f"split v{version}: the outputs differ"
        cases[f"split v{version}"] = old_call, new_call
    old_gro, new_gro = _gro_case(old, run), _gro_case(new_offload, run)
    assert _joined(old_gro()) == _joined(new_gro()), "gro run: the outputs differ"
    cases["gro run"] = old_gro, new_gro
    pipe = _pipe()
    old_writev, new_writev = _gro_writev_case(old, run, pipe), _gro_writev_case(new_offload, run, pipe)
    assert old_writev() == new_writev() == b"".join(_joined(old_gro())), "gro run + writev: the bytes differ"
    cases["gro run + writev"] = old_writev, new_writev
    lines = [f"bench_offload_fixed, {SEGMENTS} segments, medians of {args.slices} slices: {machineinfo.one_line()}"]
    print(lines[0], flush=True)
    for name, (old_call, new_call) in cases.items():
        if args.case and name not in args.case:
            continue
        result = measure({"old": old_call, "new": new_call}, args.slices)
        lines.append(
            f"{name}: old {result['old'] * 1e6:.2f} us, new {result['new'] * 1e6:.2f} us a call, "
            f"new/old {result['new'] / result['old']:.3f}x"
        )
        print(lines[-1], flush=True)
    lines.append(f"load after {os.getloadavg()[0]:.2f}")
    machineinfo.append_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
