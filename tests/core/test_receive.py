"""The receive path (kernel receive.c, wireguard-go receive.go): dispatch by type and size, the load meter, the
cookie binding of an endpoint, key confirmation and keep-key-fresh on receive."""

from __future__ import annotations

import struct

import pytest
from support.helpers import ENDPOINT_A, make_pair, message_type

from wgpy.constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT
from wgpy.errors import DropReason
from wgpy.events import EndpointChanged, HandshakeCompleted
from wgpy.messages import MessageType
from wgpy.receive import UNDER_LOAD_AFTER_TIME, LoadMeter, endpoint_bytes


def test_endpoint_bytes_is_ip_then_big_endian_port() -> None:
    assert endpoint_bytes(("192.0.2.1", 51820)) == bytes([192, 0, 2, 1]) + (51820).to_bytes(2, "big")
    assert endpoint_bytes(("fd00::1", 1, 0, 0)) == bytes.fromhex("fd00" + "00" * 13 + "01") + b"\x00\x01"
    assert len(endpoint_bytes(("not-an-ip", 7))) == 18  # hashed to 16 bytes (tests only)


def test_the_load_meter_trips_above_the_threshold_and_stays_for_a_second() -> None:
    meter = LoadMeter(threshold=3)
    assert [meter.note(10.0 + n / 100) for n in range(4)] == [False, False, False, True]
    assert meter.note(10.5)
    assert not meter.note(10.04 + UNDER_LOAD_AFTER_TIME + 1.0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DropReason.BAD_LENGTH),
        (b"\x01\x00\x00", DropReason.BAD_LENGTH),
        (struct.pack("<I", 1) + bytes(10), DropReason.BAD_LENGTH),  # initiation must be 148 bytes
        (struct.pack("<I", 2) + bytes(200), DropReason.BAD_LENGTH),  # response must be 92
        (struct.pack("<I", 3) + bytes(10), DropReason.BAD_LENGTH),  # cookie reply must be 64
        (struct.pack("<I", 4) + bytes(27), DropReason.BAD_LENGTH),  # transport is at least 32
        (struct.pack("<I", 5) + bytes(60), DropReason.BAD_TYPE),
        (struct.pack("<I", 0x0104) + bytes(144), DropReason.BAD_TYPE),  # reserved bytes must be zero
        (struct.pack("<I", 4) + bytes(28), DropReason.UNKNOWN_INDEX),
        (struct.pack("<I", 3) + bytes(60), DropReason.UNKNOWN_INDEX),
        (struct.pack("<I", 1) + bytes(144), DropReason.INVALID_MAC),
    ],
)
def test_dispatch_checks_type_and_size_first(data: bytes, reason: DropReason) -> None:
    pair = make_pair()
    pair.b.receive_datagram(data, ENDPOINT_A, pair.net.now)
    assert pair.b.stats.drops == {reason: 1}
    assert pair.b.datagrams_to_send() == [] and pair.b.packets_to_tun() == []


def test_an_initiation_is_answered_with_a_response_and_the_session_waits_for_confirmation() -> None:
    pair = make_pair()
    pair.a.send_packet(pair.a_to_b(b"x"), pair.net.now)
    (initiation, _), *_ = pair.a.datagrams_to_send()
    pair.b.receive_datagram(initiation, ENDPOINT_A, pair.net.now)
    assert [message_type(d) for d, _ in pair.b.datagrams_to_send()] == [MessageType.RESPONSE]
    assert pair.peer_a.keypairs.next is not None and pair.peer_a.keypairs.current is None
    assert pair.peer_a.tx_bytes == 92 and pair.peer_a.rx_bytes == 148


def test_the_first_data_on_next_confirms_it_and_says_so() -> None:
    pair = make_pair()
    pair.send_a(b"x")
    assert pair.peer_a.keypairs.current is not None and pair.peer_a.keypairs.next is None
    events = pair.events(pair.b)
    assert HandshakeCompleted(pair.pub_a, is_initiator=False) in events
    assert pair.node_b.delivered and pair.node_b.delivered[0].endswith(b"x")


def test_a_roaming_peer_is_followed_after_it_authenticates() -> None:
    pair = make_pair()
    pair.handshake()
    pair.events(pair.b)
    pair.net.move(ENDPOINT_A, ("198.51.100.7", 4000))
    pair.send_a(b"from elsewhere")
    assert pair.peer_a.endpoint == ("198.51.100.7", 4000)
    assert EndpointChanged(pair.pub_a, ("198.51.100.7", 4000)) in pair.events(pair.b)


def test_keep_key_fresh_on_receive_rekeys_an_old_initiator_session_once() -> None:
    pair = make_pair()
    pair.handshake()
    pair.net.now += REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    pair.b.send_packet(pair.b_to_a(b"y"), pair.net.now)
    for data, _ in pair.b.datagrams_to_send():
        pair.a.receive_datagram(data, pair.node_b.endpoint, pair.net.now)
    kinds = [message_type(d) for d, _ in pair.a.datagrams_to_send()]
    assert kinds.count(MessageType.INITIATION) == 1
    assert pair.peer_b.timers.sent_lastminute_handshake
