"""With a NAT layer and no worker, the tunnel's in-place sealer (``_SealInPlace``) still seals the transport messages
of every endpoint the layer does not relay straight into its send buffer and sends them from the socket; those of a
relayed endpoint are left to the drain, which seals them the ordinary way and hands them to ``NatHandler.divert``
(the TURN allocation). The live proof that nothing broke is tests/nat/test_netns_nat.py (coturn, relayed -> direct).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence

import pytest
from support.helpers import ENDPOINT_A, Pair, make_pair

from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.udp import UdpSocket
from wgpy.events import Endpoint
from wgpy.nat.io.handler import NatHandler
from wgpy.nat.io.relay import TurnRelay
from wgpy.send import KeypairRetired, SealJob
from wgpy.transmit import run_seal_jobs

RELAYED = ("192.0.2.50", 49160)  # TEST-NET-1: never reached, the relay below only records


class _RecordingRelay(TurnRelay):
    """A TURN allocation that records what it is asked to send instead of sending it."""

    def __init__(self) -> None:
        super().__init__(("192.0.2.50", 3478), "u", "p", lambda _d, _a: None)
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        self.got.append((data, peer))


class _CountingSocket(UdpSocket):
    """The tunnel's socket, counting which of its two send paths is used."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.contiguous = 0  # send_contiguous calls: the in-place path
        self.batched = 0  # datagrams through send_batch: the ordinary path

    def send_contiguous(self, buffer: bytearray, sizes: Sequence[int], endpoint: Endpoint) -> None:
        self.contiguous += 1
        super().send_contiguous(buffer, sizes, endpoint)

    def send_batch(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        self.batched += len(datagrams)
        super().send_batch(datagrams)


class _Setup:
    def __init__(self) -> None:
        self.pair: Pair = make_pair(seed=11)
        self.pair.handshake()
        self.pair.a.seal_offload = True
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.bind(("127.0.0.1", 0))
        inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        inbox.bind(("127.0.0.1", 0))
        self.sender = _CountingSocket(out)
        self.inbox = UdpSocket(inbox)
        self.direct: Endpoint = inbox.getsockname()
        self.tunnel = Tunnel(self.pair.a, bind_address="127.0.0.1")
        self.tunnel._sockets[socket.AF_INET] = self.sender
        self.nat = NatHandler([])
        self.nat.tunnel = self.tunnel  # what ``attach`` does, without its STUN and tick timers
        self.tunnel.nat = self.nat
        self.relay = _RecordingRelay()
        self.nat.relayed[RELAYED] = self.relay

    def send(self, endpoint: Endpoint, sizes: Sequence[int], tag: int) -> list[bytes]:
        """Packets from A to B while A sends to ``endpoint``; one seal job per call."""
        self.pair.peer_b.endpoint = endpoint
        packets = [self.pair.a_to_b(bytes([tag, n]) * (size // 2)) for n, size in enumerate(sizes)]
        self.pair.a.send_packets(packets, self.pair.net.now)
        return packets

    def received(self, expected: int) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + 2.0
        while len(got) < expected and time.monotonic() < deadline:
            batch = self.inbox.receive_batch(64)
            got += [data for data, _ in batch]
            if not batch:
                time.sleep(0.001)
        time.sleep(0.02)
        got += [data for data, _ in self.inbox.receive_batch(64)]  # nothing more may come
        return got

    def close(self) -> None:
        self.sender.close()
        self.inbox.close()


@pytest.fixture
def setup() -> Iterator[_Setup]:
    made = _Setup()
    try:
        yield made
    finally:
        made.close()


def test_direct_jobs_are_sealed_in_place_as_run_gives_and_relayed_ones_are_left(setup: _Setup) -> None:
    setup.send(setup.direct, [1200] * 5 + [300], 1)
    setup.send(RELAYED, [800, 800, 40], 2)
    setup.send(setup.direct, [1000, 1000], 3)
    jobs = setup.pair.a.seal_jobs()
    seals = [job for job in jobs if isinstance(job, SealJob)]
    assert [job.endpoint for job in seals] == [setup.direct, RELAYED, setup.direct]
    # The expected bytes: SealJob.run, the core's seal_run, which device B decrypts in the test below and in
    # tests/core/test_send.py (and wireguard-go in the interop tests).
    expected = [job.run() for job in seals]
    kept, packets = setup.tunnel._seal_sink.submit(list[SealJob | KeypairRetired](jobs), [])
    assert kept == [seals[1]] and packets == []
    assert setup.sender.contiguous == 2 and setup.sender.batched == 0
    assert setup.received(len(expected[0]) + len(expected[2])) == expected[0] + expected[2]
    assert setup.relay.got == []  # nothing went through the relay yet: the drain sends the kept job
    run_seal_jobs(kept, setup.tunnel)
    assert setup.relay.got == [(message, RELAYED) for message in expected[1]]
    assert setup.sender.batched == 0  # the relayed messages never left from the socket
    assert setup.received(0) == []


def test_through_the_drain_the_peer_gets_every_packet_in_order(setup: _Setup) -> None:
    """The whole flush: direct messages in place out of the socket, relayed ones through the relay; device B
    decrypts all of them, in the order A sent them."""
    sent = setup.send(setup.direct, [1400] * 3, 1)
    sent += setup.send(RELAYED, [600] * 2, 2)
    sent += setup.send(setup.direct, [200], 3)
    setup.tunnel.flush()
    direct = setup.received(4)
    assert len(direct) == 4 and len(setup.relay.got) == 2
    assert setup.sender.contiguous == 2 and setup.sender.batched == 0
    b = setup.pair.b
    for message in direct[:3] + [data for data, _ in setup.relay.got] + direct[3:]:
        b.receive_datagram(message, ENDPOINT_A, setup.pair.net.now)
    assert b.packets_to_tun() == sent
    assert b.stats.drops == {}


def test_without_relays_every_job_is_sealed_in_place(setup: _Setup) -> None:
    """A NAT layer with no relayed endpoint at all (direct paths only, the common case) takes nothing."""
    setup.nat.relayed.clear()
    sent = setup.send(setup.direct, [900] * 4, 1)
    setup.tunnel.flush()
    got = setup.received(4)
    assert setup.sender.contiguous == 1 and setup.sender.batched == 0
    for message in got:
        setup.pair.b.receive_datagram(message, ENDPOINT_A, setup.pair.net.now)
    assert setup.pair.b.packets_to_tun() == sent
