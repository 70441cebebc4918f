"""Hostile input: every kind of bad datagram is dropped with exactly one counted reason and changes nothing else.

Each case is injected into B, which holds a confirmed session with A, from several source endpoints. Before and
after, ``support.helpers.snapshot`` captures the state an unauthenticated datagram must not touch (peers, endpoints, keypairs
and their replay windows, handshakes, timers, cookies, staged packets, the index table, counters and pending
outputs); the drop counters must rise by exactly one, under the expected reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from support.helpers import (
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    datagrams_from,
    det_rng,
    drops_total,
    make_pair,
    private_key,
    snapshot,
)

from wgpy import noise
from wgpy.cookie import CookieGenerator
from wgpy.device import Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint
from wgpy.messages import MAC_SIZE, MessageType, Response
from wgpy.noise import Handshake, StaticIdentity

SOURCES: list[Endpoint] = [ENDPOINT_A, ("203.0.113.9", 9), ("2001:db8::bad", 443, 0, 0)]
_TRANSPORT = struct.Struct("<IIQ")


def _prepare() -> Pair:
    pair = make_pair()
    pair.handshake()
    # Move B's receive window far ahead, so that old counters are out of the window (an authenticated packet).
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    keypair.send_counter = 10_000
    pair.send_a(b"jump")
    pair.node_b.delivered.clear()
    for device in (pair.a, pair.b):
        while device.next_event() is not None:
            pass
    return pair


def _b_index(pair: Pair) -> int:
    keypair = pair.peer_a.keypairs.current
    assert keypair is not None
    return keypair.local_index


def _unused_index(pair: Pair) -> int:
    used = set(pair.b.index_table._entries)
    return next(i for i in range(7, 10_000) if i not in used)


def _transport(index: int, counter: int, body: bytes = bytes(32)) -> bytes:
    return _TRANSPORT.pack(4, index, counter) + body


def _with_mac1(pair: Pair, message: bytes) -> bytes:
    return CookieGenerator(pair.pub_b).add_macs(message, 0.0)


def _initiation_from(pair: Pair, identity: StaticIdentity, wall_ns: int) -> bytes:
    handshake = Handshake(identity, pair.pub_b)
    message = noise.create_initiation(handshake, identity, 12345, wall_ns, det_rng(5))
    return _with_mac1(pair, message.pack())


def _a_identity(pair: Pair) -> StaticIdentity:
    assert pair.a.identity is not None
    return pair.a.identity


Case = Callable[[Pair], bytes]

CASES: dict[str, tuple[Case, DropReason]] = {
    "empty": (lambda p: b"", DropReason.BAD_LENGTH),
    "three-bytes": (lambda p: b"\x01\x00\x00", DropReason.BAD_LENGTH),
    "type-zero": (lambda p: bytes(64), DropReason.BAD_TYPE),
    "type-five": (lambda p: b"\x05" + bytes(63), DropReason.BAD_TYPE),
    "reserved-set": (lambda p: b"\x01\x00\x01\x00" + bytes(144), DropReason.BAD_TYPE),
    "reserved-set-transport": (lambda p: b"\x04\x01\x00\x00" + bytes(60), DropReason.BAD_TYPE),
    "initiation-147": (lambda p: b"\x01" + bytes(146), DropReason.BAD_LENGTH),
    "initiation-149": (lambda p: b"\x01" + bytes(148), DropReason.BAD_LENGTH),
    "response-91": (lambda p: b"\x02" + bytes(90), DropReason.BAD_LENGTH),
    "response-93": (lambda p: b"\x02" + bytes(92), DropReason.BAD_LENGTH),
    "cookie-63": (lambda p: b"\x03" + bytes(62), DropReason.BAD_LENGTH),
    "cookie-65": (lambda p: b"\x03" + bytes(64), DropReason.BAD_LENGTH),
    "transport-31": (lambda p: b"\x04" + bytes(30), DropReason.BAD_LENGTH),
    "initiation-bad-mac1": (lambda p: b"\x01" + bytes(147), DropReason.INVALID_MAC),
    "response-bad-mac1": (lambda p: b"\x02" + bytes(91), DropReason.INVALID_MAC),
    "initiation-flipped-mac1": (
        lambda p: (lambda d: d[:120] + bytes([d[120] ^ 1]) + d[121:])(
            datagrams_from(p.net, ENDPOINT_A, MessageType.INITIATION)[0]
        ),
        DropReason.INVALID_MAC,
    ),
    "initiation-garbage-valid-mac1": (
        lambda p: _with_mac1(p, b"\x01" + bytes(3) + bytes(range(112)) + bytes(2 * MAC_SIZE)),
        DropReason.HANDSHAKE_FAILED,
    ),
    "initiation-low-order-ephemeral": (
        lambda p: _with_mac1(p, b"\x01" + bytes(3) + bytes(4) + bytes(32) + bytes(76) + bytes(2 * MAC_SIZE)),
        DropReason.HANDSHAKE_FAILED,
    ),
    "initiation-unknown-peer": (
        lambda p: _initiation_from(p, StaticIdentity(private_key(500)), p.net.wall_ns),
        DropReason.UNKNOWN_PEER,
    ),
    "initiation-replayed": (
        lambda p: datagrams_from(p.net, ENDPOINT_A, MessageType.INITIATION)[0],
        DropReason.STALE_TIMESTAMP,
    ),
    "initiation-older-timestamp": (
        lambda p: _initiation_from(p, _a_identity(p), p.net.wall_ns - 10**9),
        DropReason.STALE_TIMESTAMP,
    ),
    "initiation-within-20ms": (
        # Genuine, newer, but less than 1/50 s after the last one B consumed (same `now`).
        lambda p: _initiation_from(p, _a_identity(p), p.net.wall_ns + 10**9),
        DropReason.HANDSHAKE_FLOOD,
    ),
    "response-unknown-index": (
        lambda p: _with_mac1(p, Response(1, _unused_index(p), bytes(32), bytes(16)).pack()),
        DropReason.UNKNOWN_INDEX,
    ),
    "response-to-a-keypair-index": (
        lambda p: _with_mac1(p, Response(1, _b_index(p), bytes(32), bytes(16)).pack()),
        DropReason.UNKNOWN_INDEX,
    ),
    "response-replayed": (
        lambda p: datagrams_from(p.net, ENDPOINT_B, MessageType.RESPONSE)[0],
        DropReason.INVALID_MAC,  # keyed to A's public key, not B's
    ),
    "cookie-unknown-index": (
        lambda p: b"\x03" + bytes(3) + struct.pack("<I", _unused_index(p)) + bytes(56),
        DropReason.UNKNOWN_INDEX,
    ),
    "cookie-forged": (
        lambda p: b"\x03" + bytes(3) + struct.pack("<I", _b_index(p)) + bytes(56),
        DropReason.INVALID_COOKIE_REPLY,
    ),
    "transport-unknown-index": (lambda p: _transport(_unused_index(p), 10_001), DropReason.UNKNOWN_INDEX),
    "transport-bad-tag": (lambda p: _transport(_b_index(p), 10_001), DropReason.INVALID_AEAD_TAG),
    "transport-bad-tag-big": (lambda p: _transport(_b_index(p), 20_000, bytes(1500)), DropReason.INVALID_AEAD_TAG),
    "transport-replayed": (
        lambda p: datagrams_from(p.net, ENDPOINT_A, MessageType.TRANSPORT)[-1],
        DropReason.REPLAYED_COUNTER,
    ),
    "transport-replayed-first": (
        lambda p: datagrams_from(p.net, ENDPOINT_A, MessageType.TRANSPORT)[0],
        DropReason.COUNTER_OUT_OF_WINDOW,
    ),
    "transport-counter-max": (lambda p: _transport(_b_index(p), 2**64 - 1), DropReason.KEYPAIR_EXPIRED),
    "transport-flipped-payload": (
        lambda p: (lambda d: d[:20] + bytes([d[20] ^ 4]) + d[21:])(
            datagrams_from(p.net, ENDPOINT_A, MessageType.TRANSPORT)[-1]
        ),
        DropReason.REPLAYED_COUNTER,  # the counter was seen: rejected before any AEAD work
    ),
    "transport-flipped-counter": (
        lambda p: (lambda d: d[:8] + struct.pack("<Q", 10_500) + d[16:])(
            datagrams_from(p.net, ENDPOINT_A, MessageType.TRANSPORT)[-1]
        ),
        DropReason.INVALID_AEAD_TAG,
    ),
    "a-datagram-b-sent-itself": (
        lambda p: datagrams_from(p.net, ENDPOINT_B, MessageType.TRANSPORT)[-1],
        DropReason.UNKNOWN_INDEX,
    ),
}


@pytest.mark.parametrize("source", SOURCES, ids=["peer-endpoint", "stranger-v4", "stranger-v6"])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_datagram_counts_exactly_one_drop_and_changes_nothing(name: str, source: Endpoint) -> None:
    pair = _prepare()
    build, reason = CASES[name]
    data = build(pair)
    before = snapshot(pair.b)
    drops_before = dict(pair.b.stats.drops)
    sent_before = len(pair.net.sent)
    pair.b.receive_datagram(data, source, pair.net.now, pair.net.wall_ns)
    expected = dict(drops_before)
    expected[reason] = expected.get(reason, 0) + 1
    assert dict(pair.b.stats.drops) == expected
    assert snapshot(pair.b) == before
    assert pair.b.datagrams_to_send() == []
    assert pair.b.packets_to_tun() == []
    assert pair.b.next_event() is None
    pair.net.pump()
    assert len(pair.net.sent) == sent_before
    # Still working both ways.
    ping = pair.send_a(b"still there?")
    pong = pair.send_b(b"yes")
    assert pair.node_b.delivered == [ping] and pair.node_a.delivered == [pong]


def test_garbage_from_tun_side_counts_one_drop_each(connected: Pair) -> None:
    pair = connected
    before = drops_total(pair.a)
    pair.a.send_packet(b"", 0.0)
    pair.a.send_packet(b"\x45" + bytes(10), 0.0)
    pair.a.send_packet(b"\x45" + bytes(19), 0.0)  # total length 0 < header
    assert pair.a.stats.drops == {DropReason.INVALID_IP_PACKET: 3}
    assert drops_total(pair.a) == before + 3
    assert pair.a.datagrams_to_send() == []


def test_handshake_to_a_device_without_private_key() -> None:
    pair = make_pair()
    pair.b.set_private_key(None)
    pair.net.blocked.add(ENDPOINT_B)
    pair.send_a(b"x")
    initiation_bytes = datagrams_from(pair.net, ENDPOINT_A, MessageType.INITIATION)[-1]
    pair.b.receive_datagram(initiation_bytes, ENDPOINT_A, 0.0)
    assert pair.b.stats.drops == {DropReason.NO_PRIVATE_KEY: 1}
    assert pair.b.datagrams_to_send() == []
    # And it sends nothing for packets from its TUN either.
    pair.b.send_packet(pair.b_to_a(b"y"), 0.0)
    assert pair.b.stats.drops == {DropReason.NO_PRIVATE_KEY: 2}


def test_device_survives_a_burst_of_mixed_garbage(connected: Pair) -> None:
    pair = connected
    device: Device = pair.b
    total = 0
    for name, (build, _reason) in CASES.items():
        if name.startswith("initiation-within"):
            continue  # needs the exact `now` of the last initiation; covered above
        for source in SOURCES:
            device.receive_datagram(build(pair), source, pair.net.now, pair.net.wall_ns)
            total += 1
    assert drops_total(device) == total
    assert device.datagrams_to_send() == []
    ping = pair.send_a(b"alive")
    assert pair.node_b.delivered == [ping]
