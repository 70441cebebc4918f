"""The daemon's send and receive paths in one process, old against new in alternating slices, on loopback.

Usage: ``python benchmarks/engine_pipeline.py [--slices 40] [--out FILE]``

End-to-end runs on a shared 2-core machine swing by 2x with the other work on it; this measures the same code
paths a daemon runs, minus the TUN device and the event loop, with ``time.process_time`` (CPU time of this
process: the system calls' kernel time included), alternating the two variants slice by slice so that load
drifting hits both alike, and reports the medians of the slices:

- ``send``: 64 TCP-sized (1420-byte) packets through ``Device.send_packets``, then the drain to a real UDP socket
  on 127.0.0.1 (a GSO ``sendmsg``): ``inline`` (``InlineSealer``: a bytes object per message, then
  ``UdpSocket.send_batch`` joins them) against ``in-place`` (``seal_offload`` and the tunnel's ``_SealInPlace``:
  ``SealJob.run_into`` one buffer, ``UdpSocket.send_contiguous``). The receiving socket is drained between slices.
- ``tso``: one TSO read of a 47-segment TCP super-packet (1,368 bytes of payload each, the size a daemon reads)
  three ways: its segments as ``bytes`` already (what 47 plain reads give, without the reads' own cost) through
  ``send_packets``; cut by ``handle_virtio_read`` (a ``bytes`` object per segment) through ``send_packets``; cut by
  ``handle_virtio_read_run`` into one buffer through ``send_run``. All three seal in place and send as above.
- ``receive``: 64 transport messages through ``receive_datagram`` one by one against one ``receive_datagrams``.
- ``mesh``: the same TSO read with A's mesh ACL filter (``wgpy.mesh.PacketFilter``, the flow established), as one
  run through ``send_run`` (one ``check_outbound_run``) against its segments through ``send_packets`` (one
  ``check_outbound`` each, what mesh mode did before runs passed the filter); and a GRO read of 44 messages of that
  flow into B with B's filter, through ``receive_gro`` and ``packet_items_to_tun`` (one ``check_inbound_run``, the
  run handed on whole) against ``receive_datagrams`` (a ``check_inbound`` per packet).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_transport
import machineinfo

from tun.offload import handle_virtio_read, handle_virtio_read_run
from wgpy.device import Device
from wgpy.drivers.asyncio_udp import _SealInPlace
from wgpy.drivers.udp import UdpSocket
from wgpy.events import Endpoint
from wgpy.mesh import PacketFilter, parse_network_map
from wgpy.packetrun import PacketRun
from wgpy.transmit import drain

BATCH: Final = 64
SIZE: Final = 1420
CALLS_PER_SLICE: Final = 40


class _Sockets:
    """What ``_SealInPlace`` reads of a tunnel, and the tunnel's ``send_datagrams`` for the inline path."""

    def __init__(self, udp: UdpSocket) -> None:
        self.nat = None
        self._sockets = {socket.AF_INET: udp}
        self._udp = udp

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        self._udp.send_batch(datagrams)


def _drain_socket(sock: socket.socket) -> None:
    for _ in range(100_000):
        try:
            sock.recv(65535)
        except BlockingIOError:
            return


def _loopback() -> tuple[socket.socket, UdpSocket]:
    """A non-blocking receiving socket with a 16 MiB buffer on 127.0.0.1, and a ``UdpSocket`` to send to it."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    return receiver, UdpSocket(sender)


def measure(variants: dict[str, Callable[[], None]], slices: int, between: Callable[[], None]) -> dict[str, float]:
    """CPU seconds per call of each variant: the median over ``slices`` alternating slices."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(slices):
        for name in names if index % 2 == 0 else reversed(names):
            between()
            start = time.process_time()
            for _ in range(CALLS_PER_SLICE):
                variants[name]()
            samples[name].append((time.process_time() - start) / CALLS_PER_SLICE)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_send(slices: int) -> str:
    session = bench_transport.make_session()
    device = session.a
    receiver, udp = _loopback()
    target: Endpoint = receiver.getsockname()
    (peer,) = device.peers.values()
    peer.endpoint = target
    tunnel: Any = _Sockets(udp)
    in_place = _SealInPlace(tunnel)
    packets = [bench_transport.ipv4_packet(SIZE) for _ in range(BATCH)]
    now = bench_transport.NOW

    def inline() -> None:
        device.seal_offload = False
        device.send_packets(packets, now)
        drain(device, tunnel, None)

    def sealed_in_place() -> None:
        device.seal_offload = True
        device.send_packets(packets, now)
        drain(device, tunnel, None, in_place)

    try:
        result = measure({"inline": inline, "in-place": sealed_in_place}, slices, lambda: _drain_socket(receiver))
    finally:
        receiver.close()
        udp.close()
    ratio = result["in-place"] / result["inline"]
    return (
        f"send {BATCH} x {SIZE} B to a loopback UDP socket: inline {result['inline'] / BATCH * 1e6:.3f} us/packet, "
        f"in-place {result['in-place'] / BATCH * 1e6:.3f} us/packet ({ratio:.3f}x); send errors {udp.send_errors}"
    )


TSO_SEGMENTS: Final = 47
TSO_MSS: Final = 1368


def tso_record(segments: int = TSO_SEGMENTS, mss: int = TSO_MSS) -> bytes:
    """An offload TUN read: a virtio_net_hdr (NEEDS_CSUM, TCPV4, the MSS) and an IPv4 TCP super-packet from A to B
    with 12 bytes of timestamp options, its checksum left partial as the kernel leaves it."""
    payload = bytes(i & 0xFF for i in range(segments * mss))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 1, 8 << 4, 0x18, 502, 0, 0) + bytes(12) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, bench_transport.ADDR_A, bench_transport.ADDR_B
    )
    return struct.pack("<BBHHHH", 1, 1, 52, mss, 20, 16) + header + tcp


def bench_tso(slices: int) -> str:
    session = bench_transport.make_session()
    device = session.a
    device.seal_offload = True
    receiver, udp = _loopback()
    (peer,) = device.peers.values()
    peer.endpoint = receiver.getsockname()
    tunnel: Any = _Sockets(udp)
    in_place = _SealInPlace(tunnel)
    record = tso_record()
    segments = handle_virtio_read(record)
    assert len(segments) == TSO_SEGMENTS
    now = bench_transport.NOW

    def as_packets() -> None:
        device.send_packets(segments, now)
        drain(device, tunnel, None, in_place)

    def split_list() -> None:
        device.send_packets(handle_virtio_read(record), now)
        drain(device, tunnel, None, in_place)

    def split_run() -> None:
        split = handle_virtio_read_run(record)
        assert isinstance(split, tuple)
        buffer, count, stride, size, last_size = split
        device.send_run(PacketRun(buffer, count, stride, size, last_size, zero_padded=True), now)
        drain(device, tunnel, None, in_place)

    variants = {"packets": as_packets, "split": split_list, "run": split_run}
    try:
        result = measure(variants, slices, lambda: _drain_socket(receiver))
    finally:
        receiver.close()
        udp.close()
    per = {name: value / TSO_SEGMENTS * 1e6 for name, value in result.items()}
    return (
        f"tso {TSO_SEGMENTS} x {TSO_MSS} B of payload, sealed in place to loopback: segments as bytes through "
        f"send_packets {per['packets']:.3f} us/segment; handle_virtio_read + send_packets {per['split']:.3f} "
        f"({per['split'] / per['packets']:.3f}x); handle_virtio_read_run + send_run {per['run']:.3f} "
        f"({per['run'] / per['packets']:.3f}x, {per['run'] / per['split']:.3f}x the split list); send errors "
        f"{udp.send_errors}"
    )


def bench_receive(slices: int) -> str:
    device, one_by_one, batched = bench_transport.receive_variants(SIZE, BATCH, 2 * slices * CALLS_PER_SLICE + 2)
    result = measure({"single": one_by_one, "batched": batched}, slices, lambda: None)
    assert device.stats.drops == {}, device.stats.drops
    ratio = result["batched"] / result["single"]
    return (
        f"receive {BATCH} x {SIZE} B: receive_datagram each {result['single'] / BATCH * 1e6:.3f} us/packet, "
        f"receive_datagrams {result['batched'] / BATCH * 1e6:.3f} us/packet ({ratio:.3f}x)"
    )


def _mesh_filter(a: Device, b: Device) -> PacketFilter:
    """A filter with a map of A and B in which A may open TCP flows to B on any port."""
    keys = {}
    for device in (a, b):
        assert device.public_key is not None
        keys[device] = device.public_key.to_base64()
    peers = [
        {"public_key": keys[device], "allowed_ips": [f"{address}/32"], "endpoint": None,
         "groups": [group], "relay": False}
        for device, address, group in ((a, "10.0.0.1", "a"), (b, "10.0.0.2", "b"))
    ]  # fmt: skip
    rule = {"name": "a-b", "src_groups": ["a"], "dst_groups": ["b"], "protocol": "tcp", "ports": [], "action": "accept"}
    packet_filter = PacketFilter()
    packet_filter.load(
        parse_network_map(
            {"version": 1, "serial": 1, "issued_at": 0, "expires_at": 2**40, "peers": peers, "acl": [rule]}
        )
    )
    return packet_filter


def _pair_to_loopback() -> tuple[Device, Device, socket.socket, UdpSocket, Any, _SealInPlace]:
    """A's and B's devices with a session, A sealing in place to a loopback socket: (a, b, the receiving socket,
    A's UDP socket, the tunnel stand-in, the in-place sealer)."""
    session = bench_transport.make_session()
    a, b = session.a, session.b
    a.seal_offload = True
    receiver, udp = _loopback()
    (peer,) = a.peers.values()
    peer.endpoint = receiver.getsockname()
    tunnel: Any = _Sockets(udp)
    return a, b, receiver, udp, tunnel, _SealInPlace(tunnel)


def _run_sender(a: Device, record: bytes, tunnel: Any, in_place: _SealInPlace, now: float) -> Callable[[], None]:
    """One TSO read of ``record`` cut into one buffer, through ``send_run`` and the drain."""

    def send_run() -> None:
        split = handle_virtio_read_run(record)
        assert isinstance(split, tuple)
        a.send_run(PacketRun(*split, zero_padded=True), now)
        drain(a, tunnel, None, in_place)

    return send_run


def _measure_sends(
    a: Device, variants: dict[str, Callable[[], None]], slices: int, receiver: socket.socket, udp: UdpSocket
) -> dict[str, float]:
    """``measure`` of A's send variants, the receiving socket drained between slices; the sockets closed after."""
    try:
        result = measure(variants, slices, lambda: _drain_socket(receiver))
    finally:
        receiver.close()
        udp.close()
    assert not a.stats.drops, a.stats.drops
    return result


def bench_mesh(slices: int) -> str:
    a, b, receiver, udp, tunnel, in_place = _pair_to_loopback()
    record = tso_record(44)
    now = bench_transport.NOW
    a_filter, b_filter = _mesh_filter(a, b), _mesh_filter(a, b)
    a.packet_filter, b.packet_filter = a_filter, b_filter
    segments = handle_virtio_read(record)
    a.send_packets(segments[:1], now)  # A's filter tracks the flow from its first packet
    drain(a, tunnel, None, in_place)

    def send_packets() -> None:
        a.send_packets(handle_virtio_read(record), now)
        drain(a, tunnel, None, in_place)

    variants = {"packets": send_packets, "run": _run_sender(a, record, tunnel, in_place, now)}
    sent = _measure_sends(a, variants, slices, receiver, udp)

    # B's reads: A's segments sealed in place (one keypair, counters in order), the inner packets those of the flow.
    a.seal_offload = False
    reads: list[tuple[bytes, int]] = []
    for _ in range(2 * slices * CALLS_PER_SLICE + 2):
        a.send_packets(segments, now)
        datagrams = [data for data, _ in a.datagrams_to_send()]
        reads.append((b"".join(datagrams), len(datagrams[0])))
    b.receive_datagrams([(reads[0][0][: reads[0][1]], bench_transport.ENDPOINT_A)], now)  # B's filter: the flow
    b.packet_items_to_tun()
    feed = iter(reads[1:])

    def receive_datagrams() -> None:
        data, segment = next(feed)
        b.receive_datagrams(
            [(data[i : i + segment], bench_transport.ENDPOINT_A) for i in range(0, len(data), segment)], now
        )
        b.packet_items_to_tun()

    def receive_gro() -> None:
        data, segment = next(feed)
        b.receive_gro(data, segment, bench_transport.ENDPOINT_A, now)
        b.packet_items_to_tun()

    received = measure({"datagrams": receive_datagrams, "gro": receive_gro}, slices, lambda: None)
    assert not b.stats.drops, b.stats.drops
    per_send = {name: value / 44 * 1e6 for name, value in sent.items()}
    per_receive = {name: value / 44 * 1e6 for name, value in received.items()}
    return (
        f"mesh (ACL filter, established flow), 44 x 1368 B: send_packets {per_send['packets']:.3f} us/segment, "
        f"send_run {per_send['run']:.3f} ({per_send['run'] / per_send['packets']:.3f}x); receive_datagrams "
        f"{per_receive['datagrams']:.3f} us/packet, receive_gro {per_receive['gro']:.3f} "
        f"({per_receive['gro'] / per_receive['datagrams']:.3f}x); filter hits A {a_filter.stats.conntrack_hits}"
        f", B {b_filter.stats.conntrack_hits}"
    )


def _ack_packet() -> bytes:
    """A pure TCP ACK from A to B (IPv4, 12 bytes of timestamp options, no payload), as the receiving side of a
    bulk transfer sends about once per GRO super-packet."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 1, 8 << 4, 0x10, 502, 0, 0) + bytes(12)
    return (
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, bench_transport.ADDR_A, bench_transport.ADDR_B
        )
        + tcp
    )


def bench_ack(slices: int) -> str:
    """What one TCP ACK costs the paths beside what a 44-segment run costs them, in the same slices: A sends an ACK
    (``send_packets`` of one packet, sealed in place, one ``sendto`` to loopback) or a TSO read (``send_run``, one
    GSO ``sendmsg``); B receives one ACK (``receive_datagrams`` of one datagram) or one GRO read of 44 messages
    (``receive_gro``). TUN reads and writes are not in it (the daemon adds a read or write system call to each)."""
    a, b, receiver, udp, tunnel, in_place = _pair_to_loopback()
    record = tso_record(44)
    ack = _ack_packet()
    now = bench_transport.NOW

    def send_ack() -> None:
        a.send_packets([ack], now)
        drain(a, tunnel, None, in_place)

    variants = {"ack": send_ack, "run": _run_sender(a, record, tunnel, in_place, now)}
    sent = _measure_sends(a, variants, slices, receiver, udp)

    # B's inputs, sealed by A beforehand in the order B takes them (one keypair, counters in order: the replay
    # window never refuses one), the slices alternating as in ``measure``.
    a.seal_offload = False
    segments = handle_virtio_read(record)
    order = [("run", "ack") if index % 2 == 0 else ("ack", "run") for index in range(slices)]
    inputs: list[tuple[bytes, int]] = []  # (data, GRO segment size; 0 for one ACK datagram)
    for name in (name for pair in order for name in pair):
        for _ in range(CALLS_PER_SLICE):
            a.send_packets(segments if name == "run" else [ack], now)
            datagrams = [data for data, _ in a.datagrams_to_send()]
            inputs.append((b"".join(datagrams), len(datagrams[0]) if name == "run" else 0))
    feed = iter(inputs)
    received: dict[str, list[float]] = {"run": [], "ack": []}
    for name in (name for pair in order for name in pair):
        start = time.process_time()
        for _ in range(CALLS_PER_SLICE):
            data, segment = next(feed)
            if segment:
                b.receive_gro(data, segment, bench_transport.ENDPOINT_A, now)
            else:
                b.receive_datagrams(((data, bench_transport.ENDPOINT_A),), now)
            b.packet_items_to_tun()
        received[name].append((time.process_time() - start) / CALLS_PER_SLICE)
    assert not b.stats.drops, b.stats.drops
    rx = {name: statistics.median(values) for name, values in received.items()}
    send_ack_us, send_run_us = sent["ack"] * 1e6, sent["run"] * 1e6 / 44
    rx_ack_us, rx_run_us = rx["ack"] * 1e6, rx["run"] * 1e6 / 44
    return (
        f"ack: sending one ACK {send_ack_us:.2f} us, a 44-segment TSO run {send_run_us:.3f} us/segment (an ACK costs "
        f"{send_ack_us / send_run_us:.1f} segments); receiving one ACK {rx_ack_us:.2f} us, a 44-message GRO read "
        f"{rx_run_us:.3f} us/segment ({rx_ack_us / rx_run_us:.1f} segments); send errors {udp.send_errors}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--out", type=Path, help="append the report to this text file")
    parser.add_argument("--only", help="run only these cases, comma-separated (send, tso, receive, mesh, ack)")
    args = parser.parse_args(argv)
    benches = {"send": bench_send, "tso": bench_tso, "receive": bench_receive, "mesh": bench_mesh, "ack": bench_ack}
    wanted = args.only.split(",") if args.only else list(benches)
    lines = [f"engine_pipeline, medians of {args.slices} slices: {machineinfo.one_line()}"]
    print(lines[0], flush=True)
    for bench in (benches[name] for name in wanted):
        lines.append(bench(args.slices))
        print(lines[-1], flush=True)
    lines.append(f"load after {os.getloadavg()[0]:.2f}")
    machineinfo.append_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
