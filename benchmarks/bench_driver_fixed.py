"""The driver's own Python around the engine on the bulk TCP send path: this tree against e402d1c, in one process.

Usage: ``python benchmarks/bench_driver_fixed.py [--slices 40] [--base /tmp/driver-base] [--out FILE]``

The old variant is the driver at e402d1c, read from a ``git worktree`` of it (``git -C /work/main worktree add
/tmp/driver-base e402d1c``) and loaded with importlib as ``wgpy.drivers._base_udp`` and
``wgpy.drivers._base_asyncio_udp``: the rest of ``wgpy`` (the device, the sealing) is this tree's for both, so
only the driver differs. Both variants alternate slice by slice; each number is the median over the slices of
``time.process_time`` per call (``engine_pipeline.measure``), and the report gives new/old ratios:

- ``send_contiguous``: one 44-message sealed run (``[1452] * 43 + [1100]`` bytes, what ``SealJob.run_into``
  returns for a 44-segment TSO read at MTU 1420) sent to a loopback UDP socket, by the old and the new
  ``UdpSocket`` (one GSO ``sendmsg`` each: most of it is the system call); then to a socket that does nothing
  (``_NullSocket``), which leaves the Python alone.
- ``receive_runs``: one UDP GRO read of such a run (``recvmsg`` with its ``UDP_GRO`` segment size) by the old
  and the new ``UdpSocket``, from loopback (both sockets filled between slices), then from a stand-in socket that
  gives the same read every time (the Python alone).
- ``header test``: the test of whether such a GRO read goes whole to ``Device.receive_gro`` (all its datagrams
  begin with one transport header): e402d1c's, copied here (it was inline in ``_on_socket_readable``), against
  ``one_transport_header``.
- ``read pair``: what a sending daemon's loop does per TSO read under bulk TCP, through a real ``Tunnel``: an ACK
  arrives (``receive_datagrams`` of one transport message from the peer, then ``Tunnel.flush``) and a 44-segment
  TSO read is sent (``Tunnel._on_tun_readable`` on a TUN device that returns one ``read_run`` record, then
  ``flush``: ``send_run``, the drain, ``_SealInPlace.submit``, ``send_contiguous``, ``_arm_timer``). The clock
  moves 50 us per reading, so the peer's deadlines move as they do under traffic. ``floor`` is the engine's part
  of the same work with no driver around it (``receive_datagrams``, ``packet_items_to_tun``, ``send_run``,
  ``seal_jobs``, ``run_into`` and one raw ``sendmsg``): old - floor and new - floor are the driver's cost per pair.
  ``old tunnel`` is e402d1c's ``Tunnel`` on this tree's ``UdpSocket``: it splits the gain between the two files.
  Then the same with the null socket (and no receiver to drain), where the system call's noise is gone.

All variants drive one device (one session, its ACKs in order, one TSO record and one seal buffer), each through
its own ``Tunnel``, ``UdpSocket`` and event loop (never run while timed; run once between slices so that asyncio
drops its cancelled timers, as a running loop would). The garbage collector runs between slices only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_transport
import engine_pipeline
import machineinfo

import wgpy.drivers.asyncio_udp as new_asyncio_udp
import wgpy.drivers.udp as new_udp
from tun.offload import SplitRun, handle_virtio_read_run
from wgpy.events import Endpoint
from wgpy.packetrun import PacketRun
from wgpy.send import SealJob

SEGMENTS: Final = 44  # a TSO read at MTU 1420 with the tunnel's gso_max_segs cap
SEALED: Final = 1452
RUN_SIZES: Final = [SEALED] * (SEGMENTS - 1) + [1100]
BASE: Final = Path("/tmp/driver-base")  # noqa: S108 - where the brief puts the worktree of e402d1c
CLOCK_STEP: Final = 50e-6  # seconds the fake clock moves per reading: about a read's time


def load_base(base: Path, name: str) -> ModuleType:
    """``wgpy/drivers/<name>.py`` of the worktree at ``base``, as ``wgpy.drivers._base_<name>`` (its relative
    imports resolve to this tree's ``wgpy``; the old tunnel is only ever given old ``UdpSocket``s)."""
    module_name = f"wgpy.drivers._base_{name}"
    spec = importlib.util.spec_from_file_location(module_name, base / "wgpy" / "drivers" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {name}.py from {base}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class _Clock:
    """``monotonic_now`` for the tunnels: starts where the benchmark sessions were made and moves on each call."""

    def __init__(self) -> None:
        self.now = bench_transport.NOW

    def __call__(self) -> float:
        self.now += CLOCK_STEP
        return self.now


class _NullSocket:
    """A UDP socket that takes every send and does nothing with it: leaves only the Python of a send to time."""

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass

    def sendmsg(self, buffers: Sequence[memoryview], ancillary: object, flags: int, to: Endpoint) -> int:
        return len(buffers[0])

    def sendto(self, data: bytes | memoryview, to: Endpoint) -> int:
        return len(data)


def _sender(null: bool) -> Any:
    """The socket a ``UdpSocket`` sends from: a real one on 127.0.0.1, or a ``_NullSocket``."""
    if null:
        return _NullSocket()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


class _GroReads:
    """A socket stand-in for ``receive_runs``: every ``recvmsg`` is the same GRO read of a 44-message run."""

    def __init__(self, data: bytes, segment: int) -> None:
        self.read = (data, [(new_udp.SOL_UDP, new_udp.UDP_GRO, new_udp._GRO_SIZE.pack(segment))], 0, ("127.0.0.1", 9))

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def close(self) -> None:
        pass

    def recvmsg(self, size: int, ancillary_size: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, Endpoint]:
        return self.read


class _RunTun:
    """A TUN device whose next ``read_run`` is one TSO record (``pending``), then ``BlockingIOError``."""

    name = "bench"
    mtu = 1420
    tso = False

    def __init__(self, split: SplitRun) -> None:
        self.split = split
        self.pending = False

    def fileno(self) -> int:
        return -1

    def read_run(self) -> SplitRun | list[bytes]:
        if not self.pending:
            raise BlockingIOError
        self.pending = False
        return self.split

    def write_packets(self, packets: Sequence[bytes]) -> None:
        pass


def bench_send_contiguous(base_udp: ModuleType, slices: int, null: bool) -> str:
    receiver, _ = engine_pipeline._loopback()
    new = new_udp.UdpSocket(_sender(null))
    old = base_udp.UdpSocket(_sender(null))
    target: Endpoint = receiver.getsockname()
    buffer = bytearray(os.urandom(sum(RUN_SIZES)) + bytes(1024))

    variants: dict[str, Callable[[], None]] = {
        "old": lambda: old.send_contiguous(buffer, RUN_SIZES, target),
        "new": lambda: new.send_contiguous(buffer, RUN_SIZES, target),
    }
    try:
        result = engine_pipeline.measure(variants, slices, lambda: engine_pipeline._drain_socket(receiver))
    finally:
        receiver.close()
        new.close()
        old.close()
    return (
        f"send_contiguous {SEGMENTS} x {SEALED} B to {'a null socket' if null else 'loopback'}: old {result['old'] * 1e6:.2f} us, new "
        f"{result['new'] * 1e6:.2f} us per run (new/old {result['new'] / result['old']:.3f}, "
        f"{(result['old'] - result['new']) * 1e6:.2f} us less per run); send errors {old.send_errors + new.send_errors}"
    )


def bench_receive_runs(base_udp: ModuleType, slices: int, null: bool) -> str:
    """One GRO read of a 44-message run by the old and the new ``receive_runs`` (limit 44: one ``recvmsg``)."""
    data = os.urandom(sum(RUN_SIZES))
    sender = new_udp.UdpSocket(_sender(False))
    receivers: dict[str, Any] = {}
    for name, module in (("old", base_udp), ("new", new_udp)):
        if null:
            receivers[name] = module.UdpSocket(_GroReads(data, SEALED))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            receivers[name] = module.UdpSocket(sock)
    if not all(udp.gro for udp in receivers.values()):
        return "receive_runs: no UDP GRO on this kernel"
    buffer = bytearray(data)
    got: dict[str, list[int]] = {"old": [], "new": []}

    def between() -> None:
        if null:
            return
        for udp in receivers.values():
            while udp.receive_runs(64):
                pass
            for _ in range(engine_pipeline.CALLS_PER_SLICE):
                sender.send_contiguous(buffer, RUN_SIZES, udp.sock.getsockname())
        time.sleep(0.005)  # loopback delivers in softirq: let every run land before the slice

    def reader(name: str) -> Callable[[], None]:
        udp = receivers[name]
        counts = got[name]
        return lambda: counts.append(len(udp.receive_runs(SEGMENTS)))

    try:
        result = engine_pipeline.measure({name: reader(name) for name in receivers}, slices, between)
    finally:
        sender.close()
        for udp in receivers.values():
            udp.close()
    if not all(count == 1 for counts in got.values() for count in counts):
        return "receive_runs: some timed calls did not read exactly one run (the receive buffer overflowed?)"
    return (
        f"receive_runs of one {SEGMENTS}-message GRO read from {'a stand-in socket' if null else 'loopback'}: old "
        f"{result['old'] * 1e6:.2f} us, new {result['new'] * 1e6:.2f} us (new/old {result['new'] / result['old']:.3f}, "
        f"{(result['old'] - result['new']) * 1e6:.2f} us less per read)"
    )


def _old_header_check(data: bytes, segment: int) -> bool:
    """``Tunnel._on_socket_readable``'s test at e402d1c (inline there) of whether a GRO read goes whole to
    ``receive_gro``: eight strided byte columns."""
    full = len(data) - len(data) % segment
    head = data[:8]
    return (
        head[:1] == b"\x04"
        and all(data[j:full:segment] == head[j : j + 1] * (full // segment) for j in range(8))
        and (full == len(data) or data[full : full + 8] == head)
    )


def bench_header_check(slices: int) -> str:
    """The GRO read's header test on a 44-message run of one receiver index: e402d1c's against
    ``one_transport_header``, 20 tests per call."""
    head = b"\x04\x00\x00\x00\x11\x22\x33\x44"
    data = b"".join(head + os.urandom(size - 8) for size in RUN_SIZES)
    assert _old_header_check(data, SEALED) and new_asyncio_udp.one_transport_header(data, SEALED)

    def repeated(check: Callable[[bytes, int], bool]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(20):
                check(data, SEALED)

        return run

    variants = {"old": repeated(_old_header_check), "new": repeated(new_asyncio_udp.one_transport_header)}
    result = engine_pipeline.measure(variants, slices, lambda: None)
    old, new = result["old"] / 20, result["new"] / 20
    return (
        f"GRO read header test, {SEGMENTS} x {SEALED} B: old {old * 1e6:.2f} us, new {new * 1e6:.2f} us per read "
        f"(new/old {new / old:.3f})"
    )


class _Daemon:
    """The sending daemon's engine, shared by every variant: one session, its ACKs to receive in order, one TSO
    record, one seal buffer and one receiving socket (so that no variant gets a device, buffer or key of its own)."""

    def __init__(self, clock: _Clock, acks: int) -> None:
        session = bench_transport.make_session()
        self.device = device = session.a
        device.seal_offload = True
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.setblocking(False)
        self.receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        self.target: Endpoint = self.receiver.getsockname()
        (peer,) = device.peers.values()
        peer.endpoint = self.target
        split = handle_virtio_read_run(engine_pipeline.tso_record(SEGMENTS))
        assert isinstance(split, tuple) and split[1] == SEGMENTS
        self.split: SplitRun = split
        self.buffer = bytearray(256 * 1024)
        ack = bench_transport.ipv4_packet(52, bench_transport.ADDR_B, bench_transport.ADDR_A)
        self.acks = [data for data, _ in bench_transport.send_batch(session.b, ack, acks)]
        self.next_ack = 0
        self.clock = clock

    def ack(self) -> tuple[bytes, Endpoint]:
        datagram = self.acks[self.next_ack]
        self.next_ack += 1
        return datagram, bench_transport.ENDPOINT_B

    def floor(self, udp: Any) -> None:
        """The engine's part of ``_Side.read_pair`` without the driver: no drain, sink, timer or event loop."""
        device = self.device
        device.receive_datagrams([self.ack()], self.clock(), 0)
        device.packet_items_to_tun()
        buffer, count, stride, size, last_size = self.split
        device.send_run(PacketRun(buffer, count, stride, size, last_size, zero_padded=True), self.clock(), 0)
        (job,) = device.seal_jobs()
        assert isinstance(job, SealJob)
        sizes = job.run_into(self.buffer)
        control = [(new_udp.SOL_UDP, new_udp.UDP_SEGMENT, new_udp._SEGMENT_SIZE.pack(sizes[0]))]
        udp.sock.sendmsg([memoryview(self.buffer)[: sum(sizes)]], control, 0, self.target)


class _Side:
    """One variant: a tunnel of that variant's module, with its socket and event loop, on the shared daemon."""

    def __init__(self, daemon: _Daemon, module: ModuleType, udp_module: ModuleType, null: bool) -> None:
        self.daemon = daemon
        self.udp = udp_module.UdpSocket(_sender(null))
        self.tun = _RunTun(daemon.split)
        self.loop = asyncio.new_event_loop()
        self.tunnel: Any = module.Tunnel(daemon.device, tun=self.tun)
        self.tunnel._loop = self.loop
        self.tunnel._sockets = {socket.AF_INET: self.udp}
        self.tunnel._seal_sink._buffer = daemon.buffer

    def read_pair(self) -> None:
        """An ACK received and flushed, then one TSO read sent, as the tunnel's callbacks do them."""
        daemon = self.daemon
        daemon.device.receive_datagrams([daemon.ack()], daemon.clock(), 0)
        self.tunnel.flush()
        self.tun.pending = True
        self.tunnel._on_tun_readable()

    def between(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))  # drops cancelled timers, as a running loop does

    def close(self) -> None:
        self.udp.close()
        self.loop.close()


def bench_read_pair(base_asyncio_udp: ModuleType, base_udp: ModuleType, slices: int, null: bool) -> str:
    clock = _Clock()
    setattr(new_asyncio_udp, "monotonic_now", clock)  # noqa: B010 - the fake clock, for both modules
    setattr(base_asyncio_udp, "monotonic_now", clock)  # noqa: B010
    daemon = _Daemon(clock, 5 * slices * engine_pipeline.CALLS_PER_SLICE + 8)
    old = _Side(daemon, base_asyncio_udp, base_udp, null)
    new = _Side(daemon, new_asyncio_udp, new_udp, null)
    mixed = _Side(daemon, base_asyncio_udp, new_udp, null)  # the old tunnel on the new socket: the timer's part
    sides = (old, new, mixed)
    variants: dict[str, Callable[[], None]] = {
        "old": old.read_pair,
        "new": new.read_pair,
        "old tunnel": mixed.read_pair,
        "floor": lambda: daemon.floor(new.udp),
    }

    def between() -> None:
        engine_pipeline._drain_socket(daemon.receiver)  # nothing comes with a null socket
        for side in sides:
            side.between()
        gc.collect()

    gc.disable()  # a collection lands on whichever variant allocates past the threshold: collected between slices
    try:
        result = engine_pipeline.measure(variants, slices, between)
    finally:
        gc.enable()
        for side in sides:
            side.close()
        daemon.receiver.close()
    assert daemon.device.stats.drops == {}, daemon.device.stats.drops
    driver_old = result["old"] - result["floor"]
    driver_new = result["new"] - result["floor"]
    return (
        f"read pair (ACK in, {SEGMENTS}-segment TSO read out to {'a null socket' if null else 'loopback'}): old "
        f"{result['old'] * 1e6:.2f} us, new {result['new'] * 1e6:.2f} us (new/old {result['new'] / result['old']:.3f}); "
        f"engine floor {result['floor'] * 1e6:.2f} us; driver per pair: old {driver_old * 1e6:.2f} us, new "
        f"{driver_new * 1e6:.2f} us; the old tunnel on the new socket {result['old tunnel'] * 1e6:.2f} us (the "
        f"tunnel's change: {(result['old tunnel'] - result['new']) * 1e6:.2f} us per pair, the socket's: "
        f"{(result['old'] - result['old tunnel']) * 1e6:.2f} us); send errors {sum(side.udp.send_errors for side in sides)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--base", type=Path, default=BASE, help="a worktree of e402d1c")
    parser.add_argument("--out", type=Path, help="append the report to this text file")
    args = parser.parse_args(argv)
    base_udp = load_base(args.base, "udp")
    base_asyncio_udp = load_base(args.base, "asyncio_udp")
    lines = [
        f"bench_driver_fixed, medians of {args.slices} slices, new/old against {args.base}: {machineinfo.one_line()}"
    ]
    print(lines[0], flush=True)
    for null in (False, True):
        lines.append(bench_send_contiguous(base_udp, args.slices, null))
        print(lines[-1], flush=True)
    for null in (False, True):
        lines.append(bench_receive_runs(base_udp, args.slices, null))
        print(lines[-1], flush=True)
    lines.append(bench_header_check(args.slices))
    print(lines[-1], flush=True)
    for null in (False, True):
        lines.append(bench_read_pair(base_asyncio_udp, base_udp, args.slices, null))
        print(lines[-1], flush=True)
    lines.append(f"load after {os.getloadavg()[0]:.2f}")
    machineinfo.append_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
