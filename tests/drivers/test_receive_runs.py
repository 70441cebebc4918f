"""GRO reads handed on whole: ``UdpSocket.receive_runs`` on loopback, and ``Tunnel._on_socket_readable`` giving a
read of one transport header to ``Device.receive_gro`` and everything else to the per-datagram filters.

No root needed: sockets on 127.0.0.1 in this process. The tunnel's dispatch is checked with a socket stand-in that
returns chosen reads, so that which datagram goes where is known exactly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence

import pytest
from support.helpers import ENDPOINT_A, det_rng, ipv4_packet, private_key

from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.clock import monotonic_now
from wgpy.drivers.udp import UdpSocket
from wgpy.events import Endpoint


def _pair(*, gro: bool = True) -> tuple[UdpSocket, UdpSocket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    return UdpSocket(a), UdpSocket(b, gro=gro)


@pytest.fixture
def pair() -> Iterator[tuple[UdpSocket, UdpSocket]]:
    a, b = _pair()
    try:
        if not (a.gso and b.gro):
            pytest.skip("this kernel offers no UDP GSO/GRO (needs Linux 5.0+)")
        yield a, b
    finally:
        a.close()
        b.close()


def _runs(udp: UdpSocket, expected: int, limit: int = 64) -> list[tuple[bytes, int, Endpoint]]:
    """Read until ``expected`` datagrams arrived (or 2 s passed)."""
    got: list[tuple[bytes, int, Endpoint]] = []
    deadline = time.monotonic() + 2.0
    while sum(len(_cut(data, segment)) for data, segment, _ in got) < expected and time.monotonic() < deadline:
        runs = udp.receive_runs(limit)
        if runs:
            got += runs
        else:
            time.sleep(0.001)
    return got


def _cut(data: bytes, segment: int) -> list[bytes]:
    return [data[i : i + segment] for i in range(0, len(data), segment)] if segment else [data]


def test_a_gso_run_comes_back_as_one_read_with_its_segment_size(pair: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = pair
    sent = [os.urandom(1424) for _ in range(44)] + [os.urandom(300)]  # the shorter last one closes the run
    a.send_batch([(d, b.sock.getsockname()) for d in sent])
    assert _runs(b, len(sent)) == [(b"".join(sent), 1424, a.sock.getsockname())]


def test_runs_cut_at_their_segments_are_the_datagrams_sent(pair: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = pair
    sent: list[bytes] = []
    for count, size in ((7, 64), (1, 1420), (30, 148), (3, 1420), (1, 32), (64, 100)):
        sent += [os.urandom(size) for _ in range(count)]
    a.send_batch([(d, b.sock.getsockname()) for d in sent])
    runs = _runs(b, len(sent))
    assert [d for data, segment, _ in runs for d in _cut(data, segment)] == sent
    for data, segment, _ in runs:
        assert segment == 0 or 0 < segment < len(data)  # 0: one datagram
    assert any(segment for _, segment, _ in runs)


def test_the_limit_counts_datagrams_and_stops_after_the_read_that_passes_it(pair: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = pair
    first = [os.urandom(500) for _ in range(20)]
    second = [os.urandom(600) for _ in range(20)]
    a.send_batch([(d, b.sock.getsockname()) for d in first])
    a.send_batch([(d, b.sock.getsockname()) for d in second])
    time.sleep(0.05)
    assert b.receive_runs(5) == [(b"".join(first), 500, a.sock.getsockname())]  # one read, 20 datagrams
    assert _runs(b, 20) == [(b"".join(second), 600, a.sock.getsockname())]


def test_without_gro_each_read_is_one_datagram() -> None:
    a, b = _pair(gro=False)
    try:
        assert not b.gro
        sent = [os.urandom(1000) for _ in range(10)] + [b"", b"x"]
        for d in sent:
            a._send_one(d, b.sock.getsockname())
        runs = _runs(b, len(sent))
        assert runs == [(d, 0, a.sock.getsockname()) for d in sent]
    finally:
        a.close()
        b.close()


class _TruncatingSocket:
    """A socket stand-in for ``receive_runs``: its ``recvmsg`` gives the reads it holds, with their flags, then
    ``BlockingIOError``."""

    def __init__(self, reads: list[tuple[bytes, int]]) -> None:
        self.reads = reads

    def recvmsg(self, size: int, ancillary_size: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, Endpoint]:
        if not self.reads:
            raise BlockingIOError
        data, flags = self.reads.pop(0)
        return data, [], flags, ("127.0.0.1", 40001)


def test_a_truncated_read_is_counted_and_dropped() -> None:
    """A read the kernel flags ``MSG_TRUNC`` is a receive error, and the reads around it come through."""
    udp = UdpSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    real = udp.sock
    try:
        if not udp.gro:
            pytest.skip("this kernel offers no UDP GRO (needs Linux 5.0+)")
        udp.sock = _TruncatingSocket(  # type: ignore[assignment]
            [(b"first", 0), (b"cut short", int(socket.MSG_TRUNC)), (b"last", int(socket.MSG_CTRUNC))]
        )
        runs = udp.receive_runs(64)
        assert [data for data, _, _ in runs] == [b"first", b"last"] and udp.receive_errors == 1
    finally:
        udp.sock = real
        udp.close()


# --- the tunnel's dispatch ---------------------------------------------------------------------------------------

SENDER: Endpoint = ("127.0.0.1", 40000)


class _Reads:
    """Stands in for the tunnel's UdpSocket: ``receive_runs`` returns the given reads once."""

    def __init__(self, reads: list[tuple[bytes, int, Endpoint]]) -> None:
        self.reads = reads

    def receive_runs(self, limit: int) -> list[tuple[bytes, int, Endpoint]]:
        reads, self.reads = self.reads, []
        return reads


class _Recording(Device):
    """A device that records how the tunnel hands it datagrams (and then processes them)."""

    def __init__(self) -> None:
        super().__init__(private_key(5), rng=det_rng(5))
        self.calls: list[tuple[str, object]] = []
        self._inside = False

    def receive_gro(
        self, data: bytes, segment: int, endpoint: Endpoint, now: float, wall_ns: int | None = None
    ) -> None:
        self.calls.append(("gro", (data, segment, endpoint)))
        self._inside = True  # what receive_gro hands on to receive_datagrams is its own business
        try:
            super().receive_gro(data, segment, endpoint, now, wall_ns)
        finally:
            self._inside = False

    def receive_datagrams(
        self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float, wall_ns: int | None = None
    ) -> None:
        batch = list(datagrams)
        if not self._inside:
            self.calls.append(("datagrams", batch))
        super().receive_datagrams(batch, now, wall_ns)


class _Nat:
    """A NAT hook that claims the datagrams in ``claims`` and records every datagram it is shown."""

    def __init__(self, claims: set[bytes]) -> None:
        self.claims = claims
        self.seen: list[bytes] = []

    def datagram_received(self, data: bytes, address: Endpoint) -> bool:
        self.seen.append(data)
        return data in self.claims

    def divert(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> Sequence[tuple[bytes, Endpoint]]:
        return datagrams

    def relays(self, endpoint: Endpoint) -> bool:
        return False


class _Admission:
    """Charges handshake messages to their source: the second one is over its rate."""

    def __init__(self) -> None:
        self.charged: list[str] = []

    def allow(self, host: str, now: float) -> bool:
        self.charged.append(host)
        return len(self.charged) != 2


def _transport(index: bytes, counter: int, size: int) -> bytes:
    return b"\x04\x00\x00\x00" + index + counter.to_bytes(8, "little") + bytes(size - 16)


def _tunnel(device: Device) -> Tunnel:
    tunnel = Tunnel(device, on_packet=lambda packet: None, bind_address="127.0.0.1")
    tunnel.flush = lambda: None  # type: ignore[method-assign]  # no sockets: the device keeps its output
    return tunnel


@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "steered"])
def test_the_tunnel_hands_a_read_of_one_transport_header_on_whole(steered: bool) -> None:
    index, other = b"\x11\x22\x33\x44", b"\x55\x66\x77\x88"
    run = b"".join(_transport(index, n, 100) for n in range(5)) + _transport(index, 5, 40)
    mixed_rows = [_transport(index, 0, 100), _transport(other, 1, 100), _transport(index, 2, 100)]
    initiation = b"\x01\x00\x00\x00" + bytes(144)
    handshakes = initiation * 3  # a GRO read of handshake messages: each one is charged
    stun_first = [b"\x04\x00\x00\x00" + index + b"STUN-ish" + bytes(84), _transport(index, 9, 100)]
    stun_first[1] = stun_first[0][:8] + stun_first[1][8:]  # the same 8 bytes on both rows
    short_tail = _transport(index, 0, 100) * 2 + b"\x04\x00"  # a tail too short to share the 8 bytes
    reads: list[tuple[bytes, int, Endpoint]] = [
        (run, 100, SENDER),
        (initiation, 0, SENDER),
        (b"".join(mixed_rows), 100, SENDER),
        (handshakes, 148, SENDER),
        (b"".join(stun_first), 100, SENDER),
        (short_tail, 100, SENDER),
        (run, 100, ENDPOINT_A),
    ]
    device = _Recording()
    tunnel = _tunnel(device)
    nat = _Nat({stun_first[0]})
    tunnel.nat = nat
    admission = _Admission()
    tunnel._admission = admission  # type: ignore[assignment]
    tunnel._on_socket_readable(_Reads(reads), steered)  # type: ignore[arg-type]

    admitted = [initiation] * (3 if steered else 2)  # unsteered, the first of the GRO read was refused
    batch = [initiation, *mixed_rows, *admitted, *stun_first[1:], *_cut(short_tail, 100)]
    assert device.calls == [
        ("gro", (run, 100, SENDER)),
        ("datagrams", [(d, SENDER) for d in batch]),  # in order, up to the next read handed on whole
        ("gro", (run, 100, ENDPOINT_A)),
    ]
    # the NAT layer saw every datagram once, but only the first of a read handed on whole
    assert nat.seen == [
        run[:100],
        initiation,
        *mixed_rows,
        *_cut(handshakes, 148),
        *stun_first,
        *_cut(short_tail, 100),
        run[:100],
    ]
    if steered:
        assert admission.charged == [] and tunnel.handshakes_refused == 0
    else:
        assert admission.charged == [SENDER[0]] * 4  # the lone initiation and the three of the GRO read, nothing else
        assert tunnel.handshakes_refused == 1


def test_a_burst_between_two_tunnels_goes_through_receive_gro() -> None:
    """End to end on loopback: A's burst leaves in one GSO send, B reads it with GRO and opens it as one run."""

    async def scenario() -> None:
        a = Device(private_key(1), rng=det_rng(1))
        b = _Recording()
        got: list[bytes] = []
        ta = Tunnel(a, bind_address="127.0.0.1", steer_handshakes=False)
        tb = Tunnel(b, on_packet=got.append, bind_address="127.0.0.1", steer_handshakes=False)
        await ta.start()
        await tb.start()
        try:
            assert a.public_key is not None and b.public_key is not None
            a.add_peer(b.public_key, endpoint=("127.0.0.1", tb.local_port), allowed_ips=["10.0.0.2/32"])
            b.add_peer(a.public_key, endpoint=("127.0.0.1", ta.local_port), allowed_ips=["10.0.0.1/32"])
            ta.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"first"))
            for _ in range(100):  # bounded: the handshake on loopback takes milliseconds
                if got:
                    break
                await asyncio.sleep(0.02)
            assert got, "the handshake completed"
            packets = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([n]) * 1000) for n in range(40)]
            a.send_packets(packets, monotonic_now())  # one call: one burst
            ta.flush()
            for _ in range(100):
                if len(got) >= 41:
                    break
                await asyncio.sleep(0.02)
            assert got[1:] == packets
            gro_reads = [call for call in b.calls if call[0] == "gro"]
            if ta._sockets[socket.AF_INET].gso and tb._sockets[socket.AF_INET].gro:
                assert gro_reads, "the burst came as GRO reads"
                assert sum(len(read[0]) // read[1] for _, read in gro_reads) >= 2  # type: ignore[index]
        finally:
            ta.close()
            tb.close()

    asyncio.run(scenario())


def test_a_socket_read_the_filters_take_whole_still_gives_the_device_the_clock() -> None:
    device = _Recording()
    tunnel = _tunnel(device)
    stun = b"\x01\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
    tunnel.nat = _Nat({stun})
    tunnel._on_socket_readable(_Reads([(stun, 0, SENDER)]))  # type: ignore[arg-type]
    assert device.calls == [("datagrams", [])]  # as before receive_runs: one call, with the wall clock
    assert device._wall_offset_ns != 0
