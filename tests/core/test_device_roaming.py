"""Endpoint roaming: the endpoint follows the latest *authenticated* packet, never an unauthenticated one."""

from __future__ import annotations

import pytest
from support.helpers import ENDPOINT_A, ENDPOINT_B, Pair, datagrams_from, drops_total, make_pair, snapshot

from wgpy.constants import REKEY_TIMEOUT
from wgpy.cookie import CookieGenerator
from wgpy.errors import DropReason
from wgpy.events import Endpoint, EndpointChanged
from wgpy.messages import MessageType

ROAMED: Endpoint = ("198.51.100.7", 40000)
ROAMED6: Endpoint = ("2001:db8::7", 40001, 0, 0)
ATTACKER: Endpoint = ("203.0.113.66", 6666)


def events(pair: Pair) -> list[object]:
    out: list[object] = []
    while (event := pair.b.next_event()) is not None:
        out.append(event)
    return out


@pytest.mark.parametrize("new_endpoint", [ROAMED, ROAMED6])
def test_endpoint_follows_authenticated_transport(connected: Pair, new_endpoint: Endpoint) -> None:
    pair = connected
    net = pair.net
    events(pair)
    net.move(ENDPOINT_A, new_endpoint)
    packet = pair.send_a(b"from my new address")
    assert pair.node_b.delivered == [packet]
    assert pair.peer_a.endpoint == new_endpoint
    assert events(pair) == [EndpointChanged(pair.pub_a, new_endpoint)]
    reply = pair.send_b(b"reply follows")
    assert pair.node_a.delivered == [reply]
    assert net.sent[-1][2] == new_endpoint


def test_endpoint_follows_authenticated_initiation() -> None:
    pair = make_pair()
    pair.handshake()
    net = pair.net
    net.advance(REKEY_TIMEOUT + 1)
    net.move(ENDPOINT_A, ROAMED)
    pair.a.rekey_after_messages = 0  # the next packet asks for a handshake, which B receives from ROAMED
    pair.send_a(b"x")
    assert pair.peer_a.endpoint == ROAMED
    assert pair.b.stats.handshakes_completed == 2


def test_unauthenticated_packets_from_a_new_address_do_not_move_the_endpoint(connected: Pair) -> None:
    pair = connected
    net = pair.net
    events(pair)
    captured_transport = datagrams_from(net, ENDPOINT_A, MessageType.TRANSPORT)[-1]
    captured_initiation = datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)[-1]
    forged_mac1 = CookieGenerator(pair.pub_b).add_macs(b"\x01" + bytes(115) + bytes(32), net.now)
    tampered = bytearray(captured_transport)
    tampered[-1] ^= 1
    cases = [
        (captured_transport, DropReason.REPLAYED_COUNTER),  # a replay
        (bytes(tampered), DropReason.REPLAYED_COUNTER),  # counter already seen, checked before the AEAD
        (captured_initiation, DropReason.STALE_TIMESTAMP),  # a replayed initiation
        (forged_mac1, DropReason.HANDSHAKE_FAILED),  # mac1 is public knowledge
        (b"\x04" + bytes(47), DropReason.UNKNOWN_INDEX),
    ]
    for data, reason in cases:
        before = snapshot(pair.b)
        drops = drops_total(pair.b)
        net.inject(data, ATTACKER, ENDPOINT_B)
        assert pair.b.stats.drops[reason] >= 1
        assert drops_total(pair.b) == drops + 1
        assert snapshot(pair.b) == before
        assert pair.peer_a.endpoint == ENDPOINT_A
    # A fresh transport whose tag was forged, with a counter never seen, is dropped after the AEAD.
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    forged = bytearray(keypair.seal(bytes(16)) or b"")
    forged[-1] ^= 0x80
    net.inject(bytes(forged), ATTACKER, ENDPOINT_B)
    assert pair.b.stats.drops[DropReason.INVALID_AEAD_TAG] == 1
    assert pair.peer_a.endpoint == ENDPOINT_A
    assert events(pair) == []
    # Nothing was ever sent to the attacker.
    assert all(dst != ATTACKER for _, _, dst in net.sent)


def test_replayed_packet_from_old_address_after_roaming_does_not_move_back(connected: Pair) -> None:
    pair = connected
    net = pair.net
    old = datagrams_from(net, ENDPOINT_A, MessageType.TRANSPORT)[-1]
    net.move(ENDPOINT_A, ROAMED)
    pair.send_a(b"roamed")
    assert pair.peer_a.endpoint == ROAMED
    net.inject(old, ENDPOINT_A, ENDPOINT_B)
    assert pair.peer_a.endpoint == ROAMED
    # But a genuine, newer packet sealed earlier and delivered late from the old address does move it back:
    # the endpoint is that of the latest authenticated packet, whatever its counter.
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    late = keypair.seal(bytes(0))
    assert late is not None
    net.inject(late, ENDPOINT_A, ENDPOINT_B)
    assert pair.peer_a.endpoint == ENDPOINT_A
