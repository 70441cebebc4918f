"""wgpy.testing.MemoryNetwork: the in-memory network every engine test stands on does what it says.

Loss, duplication, blocking and the tap are checked by counting what crosses it; ``advance`` by the timers it fires.
"""

from __future__ import annotations

import pytest
from support.helpers import ENDPOINT_A, ENDPOINT_B, make_pair, message_type

from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork


def test_lossless_network_delivers_each_packet_once() -> None:
    pair = make_pair()
    pair.handshake()
    for i in range(20):
        pair.send_a(b"packet %d" % i)
    assert len(pair.node_b.delivered) == 20


def test_total_loss_delivers_nothing_and_counts_no_reception() -> None:
    pair = make_pair(net=MemoryNetwork(loss=1.0))
    pair.send_a(b"lost")
    assert pair.node_b.received_datagrams == 0
    assert pair.node_b.delivered == []
    assert pair.net.sent, "the initiation still went on the wire"


def test_duplication_delivers_the_datagram_twice_and_the_replay_window_drops_the_copy() -> None:
    pair = make_pair()
    pair.handshake()
    pair.net.duplicate = 1.0
    pair.send_a(b"twice on the wire")
    assert len(pair.node_b.delivered) == 1  # the engine's replay check, not the network, removes the copy
    assert pair.node_b.received_datagrams >= 2


def test_blocked_endpoint_is_cut_both_ways_and_unblocking_restores_it() -> None:
    pair = make_pair()
    pair.handshake()
    pair.net.blocked.add(ENDPOINT_B)
    pair.send_a(b"cut")
    assert pair.node_b.delivered == []
    pair.net.blocked.clear()
    pair.send_a(b"through")
    assert pair.node_b.delivered[-1].endswith(b"through")


def test_tap_sees_every_datagram_and_may_drop_it() -> None:
    pair = make_pair()
    seen: list[int] = []

    def tap(source: tuple[str, int] | tuple[str, int, int, int], data: bytes, destination: object) -> bytes | None:
        seen.append(message_type(data))
        return None if source == ENDPOINT_A else data

    pair.net.tap = tap
    pair.send_a(b"hello")
    assert seen == [int(MessageType.INITIATION)]
    assert pair.node_b.received_datagrams == 0


def test_advance_fires_the_retransmission_timer() -> None:
    pair = make_pair(net=MemoryNetwork(loss=1.0))
    pair.send_a(b"no answer")
    initiations = [d for s, d, _ in pair.net.sent if s == ENDPOINT_A and message_type(d) == MessageType.INITIATION]
    assert len(initiations) == 1
    pair.net.advance(5.0 + 0.333 + 0.01)  # REKEY_TIMEOUT plus the largest jitter (whitepaper §6.1, kernel timers.c)
    initiations = [d for s, d, _ in pair.net.sent if s == ENDPOINT_A and message_type(d) == MessageType.INITIATION]
    assert len(initiations) == 2
    assert pair.net.now == pytest.approx(5.343)
