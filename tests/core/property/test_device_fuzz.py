"""Fuzz contract of ``Device.receive_datagram`` (the h11 "never raises" contract, style guide §7).

Any bytes, from any endpoint, at any time: the call returns, exactly one drop is counted, and nothing else about the
device changes (``support.helpers.snapshot``); afterwards the two devices still exchange traffic. The datagrams are drawn
from raw binary, from well-typed messages of the right sizes with random bodies (some with a valid mac1, some aimed
at the live receiver index), and from replays and single-byte mutations of what was really sent on the wire.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import (
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    drops_total,
    ipv4_packet,
    ipv6_packet,
    make_pair,
    message_type,
    snapshot,
)

from wgpy.constants import REJECT_AFTER_TIME
from wgpy.cookie import CookieGenerator
from wgpy.device import Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint
from wgpy.messages import MAC_SIZE, MessageType
from wgpy.noise import HandshakeState

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ENDPOINTS = st.one_of(
    st.sampled_from([ENDPOINT_A, ENDPOINT_B, ("255.255.255.255", 65535)]),
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535), st.just(0), st.just(0)),
)
SIZES = {1: 148, 2: 92, 3: 64}


def _connected(seed: int) -> Pair:
    pair = make_pair(seed=seed)
    pair.handshake()
    for device in (pair.a, pair.b):
        while device.next_event() is not None:
            pass
    return pair


def _live_indices(device: Device) -> list[int]:
    return sorted(device.index_table._entries) or [0]


@st.composite
def hostile_datagram(draw: st.DrawFn, pair: Pair, target: Device, delivered: int) -> bytes:
    """Bad bytes for ``target``; replays and mutations only use the first ``delivered`` datagrams on the wire
    (those that certainly arrived: an undelivered initiation with a flipped mac2 byte is a fresh, valid one)."""
    kind = draw(st.sampled_from(["raw", "typed", "typed-mac1", "transport-live", "replay", "mutated"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind in ("typed", "typed-mac1"):
        message_type = draw(st.sampled_from([1, 2, 3, 4]))
        if message_type == 4:
            size = draw(st.integers(0, 200))
        else:
            size = SIZES[message_type] + draw(st.sampled_from([0, 0, 0, -1, 1]))
        body = draw(st.binary(min_size=max(size - 4, 0), max_size=max(size - 4, 0)))
        data = struct.pack("<I", message_type) + body
        if kind == "typed-mac1" and message_type in (1, 2) and len(data) == SIZES[message_type]:
            assert target.public_key is not None
            data = CookieGenerator(target.public_key).add_macs(data[: -2 * MAC_SIZE] + bytes(2 * MAC_SIZE), 0.0)
        return data
    if kind == "transport-live":
        index = draw(st.sampled_from(_live_indices(target)))
        counter = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 50)))
        payload = draw(st.binary(min_size=16, max_size=80))
        return struct.pack("<IIQ", 4, index, counter) + payload
    sent = [data for _src, data, _dst in pair.net.sent[:delivered]]
    data = draw(st.sampled_from(sent))
    if kind == "mutated":
        position = draw(st.integers(0, len(data) - 1))
        flip = draw(st.integers(1, 255))
        data = data[:position] + bytes([data[position] ^ flip]) + data[position + 1 :]
    return data


@FUZZ
@given(data=st.data())
def test_any_datagram_counts_one_drop_and_changes_nothing(data: st.DataObject) -> None:
    pair = _connected(seed=data.draw(st.integers(0, 3), label="seed"))
    net = pair.net
    delivered = len(net.sent)
    if data.draw(st.booleans(), label="handshake in flight"):
        # B is cut off and A has data for it: A holds an initiation in progress and staged packets.
        net.advance(REJECT_AFTER_TIME)
        net.blocked.add(ENDPOINT_B)
        pair.send_a(b"pending")
        assert pair.peer_b.handshake.state is HandshakeState.CREATED_INITIATION
    steps = data.draw(st.integers(1, 4), label="steps")
    for _ in range(steps):
        net.advance(data.draw(st.sampled_from([0.0, 0.001, 0.5, 3.0, 11.0, 130.0]), label="advance"))
        for device in (pair.a, pair.b):
            while device.next_event() is not None:
                pass
        target = data.draw(st.sampled_from([pair.a, pair.b]), label="target")
        datagram = data.draw(hostile_datagram(pair, target, delivered), label="datagram")
        source: Endpoint = data.draw(ENDPOINTS, label="source")
        before = snapshot(target)
        drops = drops_total(target)
        target.receive_datagram(datagram, source, net.now, net.wall_ns)
        assert drops_total(target) == drops + 1
        assert snapshot(target) == before
        assert target.datagrams_to_send() == []
        assert target.packets_to_tun() == []
        assert target.next_event() is None
    # Still working: fresh packets get through both ways (after at most a new handshake).
    net.blocked.clear()
    net.advance(1.0)
    ping, pong = pair.send_a(b"ping"), pair.send_b(b"pong")
    net.advance(20.0)
    assert pair.node_b.delivered.count(ping) == 1
    assert pair.node_a.delivered.count(pong) == 1


@settings(max_examples=300, deadline=None)
@given(datagram=st.binary(max_size=200), source=ENDPOINTS, now=st.floats(0.0, 1e6, allow_nan=False))
def test_any_bytes_to_an_unconfigured_device(datagram: bytes, source: Endpoint, now: float) -> None:
    """Even a device with no key and no peers never raises and counts one drop."""
    device = Device()
    device.receive_datagram(datagram, source, now)
    assert drops_total(device) == 1
    assert device.datagrams_to_send() == []
    assert device.next_event() is None


@settings(max_examples=200, deadline=None)
@given(
    packet=st.one_of(
        st.binary(max_size=120),
        st.builds(lambda p, n: ipv4_packet("10.0.0.1", "10.0.0.2", p)[:n], st.binary(max_size=40), st.integers(0, 70)),
        st.builds(lambda p: ipv6_packet("fd00::1", "fd00::2", p), st.binary(max_size=40)),
    ),
    now=st.floats(0.0, 1e6, allow_nan=False),
)
def test_any_packet_from_tun_never_raises(packet: bytes, now: float) -> None:
    """From the TUN side, anything is either routed (valid header, known destination) or counted as one drop."""
    pair = make_pair()
    pair.a.send_packet(packet, now)
    out = pair.a.datagrams_to_send()
    if drops_total(pair.a):
        assert set(pair.a.stats.drops) <= {DropReason.INVALID_IP_PACKET, DropReason.NO_ROUTE}
        assert drops_total(pair.a) == 1
        assert out == [] and not pair.peer_b.staged
    else:  # routed to B, which has no session yet: staged, and an initiation is on its way
        assert list(pair.peer_b.staged) == [packet]
        assert [message_type(d) for d, _ in out] == [int(MessageType.INITIATION)]
