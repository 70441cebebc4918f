"""The DoS layer between Devices: cookie replies under load, mac2 retries, per-source rate limits, a handshake flood.

"Under load" is a rate of handshake messages (a sans-I/O core has no queue to measure); the tests lower the
threshold through the ``handshake_load_threshold`` constructor argument where they need load without a flood.
"""

from __future__ import annotations

import random

import pytest
from support.helpers import (
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    datagrams_from,
    det_rng,
    drops_total,
    make_device,
    make_pair,
    message_type,
    snapshot,
)

from wgpy.constants import REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from wgpy.cookie import CookieGenerator
from wgpy.device import HANDSHAKE_LOAD_THRESHOLD, Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint
from wgpy.keys import PublicKey
from wgpy.messages import MAC_SIZE, MESSAGE_COOKIE_REPLY_SIZE, CookieReply, MessageType, unpack
from wgpy.ratelimiter import PACKETS_BURSTABLE, PACKETS_PER_SECOND

COOKIE_REPLY = int(MessageType.COOKIE_REPLY)


class Attacker:
    """Someone who knows a device's public key (enough for mac1) but is not its peer."""

    def __init__(self, target: PublicKey, seed: int) -> None:
        self.cookie = CookieGenerator(target)
        self.random = random.Random(seed)

    def initiation(self, now: float) -> bytes:
        """A 148-byte initiation with a valid mac1 (and mac2 when holding a cookie) and a garbage body."""
        body = (1).to_bytes(4, "little") + self.random.randbytes(112)
        return self.cookie.add_macs(body + bytes(2 * MAC_SIZE), now)

    def take_cookie(self, reply: bytes, now: float) -> bool:
        message = unpack(reply)
        assert isinstance(message, CookieReply)
        return self.cookie.consume_reply(message, now)


def replies_to(device: Device, endpoint: Endpoint) -> list[bytes]:
    return [data for data, destination in device.datagrams_to_send() if destination == endpoint]


def test_cookie_reply_under_load_then_mac2_retry_is_accepted() -> None:
    pair = make_pair(handshake_load_threshold=10.0)
    net = pair.net
    flood_source: Endpoint = ("198.51.100.1", 1000)
    attacker = Attacker(pair.pub_b, seed=1)

    def flood_for(seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            for _ in range(3):  # 30 handshake messages a second: above the threshold of 10
                net.inject(attacker.initiation(net.now), flood_source, ENDPOINT_B)
            net.advance(0.1)

    flood_for(1.0)
    packet = pair.send_a(b"legitimate")
    # B answered A's initiation with a cookie reply only; A stored the cookie.
    assert pair.node_b.delivered == []
    to_a = [d for s, d, dst in net.sent if s == ENDPOINT_B and dst == ENDPOINT_A]
    assert [message_type(d) for d in to_a] == [COOKIE_REPLY]
    assert pair.peer_b.cookie.has_fresh_cookie(net.now)
    flood_for(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 0.2)
    # The retransmitted initiation carried mac2 and went through while B was still under load.
    initiations = datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)
    assert len(initiations) == 2
    assert initiations[0][-MAC_SIZE:] == bytes(MAC_SIZE)
    assert initiations[1][-MAC_SIZE:] != bytes(MAC_SIZE)
    assert pair.node_b.delivered == [packet]
    assert pair.b.stats.drops[DropReason.RATE_LIMITED] == 0
    # Every flood message was answered with (at most) a cookie reply and nothing else.
    to_flood = [d for s, d, dst in net.sent if s == ENDPOINT_B and dst == flood_source]
    assert to_flood and all(len(d) == MESSAGE_COOKIE_REPLY_SIZE and message_type(d) == COOKIE_REPLY for d in to_flood)


def test_cookie_reply_is_bound_to_the_last_initiation(pair: Pair) -> None:
    """A cookie reply for an older message, a replayed one or one from a stranger is dropped and changes nothing."""
    net = pair.net
    net.blocked.add(ENDPOINT_B)
    pair.send_a(b"x")
    first_initiation = datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)[-1]
    loaded = make_device(2, rng=det_rng(77), handshake_load_threshold=0.0)  # B's key, under load at once
    loaded.receive_datagram(first_initiation, ENDPOINT_A, net.now)
    (reply,) = replies_to(loaded, ENDPOINT_A)
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)  # A retransmits: the reply is for an old message now
    latest = datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)[-1]
    assert latest != first_initiation
    before = snapshot(pair.a)
    pair.a.receive_datagram(reply, ENDPOINT_B, net.now)  # its receiver index was the old initiation's
    assert pair.a.stats.drops == {DropReason.UNKNOWN_INDEX: 1}
    # Pointed at the current initiation's index, it still does not decrypt: its associated data is the old mac1.
    redirected = reply[:4] + latest[4:8] + reply[8:]
    pair.a.receive_datagram(redirected, ENDPOINT_B, net.now)
    assert pair.a.stats.drops == {DropReason.UNKNOWN_INDEX: 1, DropReason.INVALID_COOKIE_REPLY: 1}
    assert snapshot(pair.a) == before
    assert not pair.peer_b.cookie.has_fresh_cookie(net.now)
    # A reply to the current initiation is taken, once.
    loaded.receive_datagram(latest, ENDPOINT_A, net.now)
    (reply,) = replies_to(loaded, ENDPOINT_A)
    pair.a.receive_datagram(reply, ENDPOINT_B, net.now)
    assert pair.peer_b.cookie.has_fresh_cookie(net.now)
    pair.a.receive_datagram(reply, ENDPOINT_B, net.now)
    assert pair.a.stats.drops == {DropReason.UNKNOWN_INDEX: 1, DropReason.INVALID_COOKIE_REPLY: 2}
    # A reply made with another device's key does not decrypt.
    other = make_device(9, handshake_load_threshold=0.0)
    assert other.public_key is not None
    fake = CookieGenerator(other.public_key)
    msg = fake.add_macs(latest[: -2 * MAC_SIZE] + bytes(2 * MAC_SIZE), net.now)
    other.receive_datagram(msg, ENDPOINT_A, net.now)
    (foreign,) = replies_to(other, ENDPOINT_A)
    assert len(foreign) == MESSAGE_COOKIE_REPLY_SIZE
    pair.a.receive_datagram(foreign, ENDPOINT_B, net.now)
    assert pair.a.stats.drops == {DropReason.UNKNOWN_INDEX: 1, DropReason.INVALID_COOKIE_REPLY: 3}


def _loaded_device() -> Device:
    device = make_device(40, handshake_load_threshold=0.0)  # every handshake message counts as load
    return device


@pytest.mark.parametrize(
    ("first", "same_bucket", "other_bucket"),
    [
        (("2001:db8:1:1::1", 4000), ("2001:db8:1:1:ffff::2", 4001), ("2001:db8:1:2::1", 4000)),
        (("2001:db8:1:1::1", 4000, 0, 0), ("2001:db8:1:1::9", 4000, 0, 0), ("2001:db8:2:1::1", 4000, 0, 0)),
        (("198.51.100.1", 4000), ("198.51.100.1", 4001), ("198.51.100.2", 4000)),
        (("::ffff:198.51.100.1", 4000), ("198.51.100.1", 4002), ("::ffff:198.51.100.3", 4000)),
    ],
    ids=["ipv6-/64", "ipv6-4tuple", "ipv4", "ipv4-mapped"],
)
def test_per_source_rate_limit_under_load(first: Endpoint, same_bucket: Endpoint, other_bucket: Endpoint) -> None:
    device = _loaded_device()
    assert device.public_key is not None
    now = 10.0
    attackers: dict[Endpoint, Attacker] = {}
    for i, source in enumerate((first, same_bucket, other_bucket)):
        attacker = attackers[source] = Attacker(device.public_key, seed=i)
        device.receive_datagram(attacker.initiation(now), source, now)
        (reply,) = replies_to(device, source)  # no valid mac2 yet: a cookie reply, nothing else
        assert attacker.take_cookie(reply, now)
    assert device.stats.drops == {DropReason.COOKIE_SENT: 3}

    def send(source: Endpoint) -> DropReason:
        before = dict(device.stats.drops)
        device.receive_datagram(attackers[source].initiation(now), source, now)
        assert device.datagrams_to_send() == []  # a mac2-bearing message is never answered with a cookie
        (reason,) = [r for r in device.stats.drops if device.stats.drops[r] != before.get(r, 0)]
        assert device.stats.drops[reason] == before.get(reason, 0) + 1
        return reason

    # The burst passes the limiter (and then fails as garbage), the rest of the second is refused.
    results = [send(first) for _ in range(PACKETS_BURSTABLE + 3)]
    assert results == [DropReason.HANDSHAKE_FAILED] * PACKETS_BURSTABLE + [DropReason.RATE_LIMITED] * 3
    assert send(same_bucket) is DropReason.RATE_LIMITED  # same source key (IPv6 /64, or same IPv4 address)
    assert send(other_bucket) is DropReason.HANDSHAKE_FAILED  # its own bucket
    now += 1.0 / PACKETS_PER_SECOND
    assert send(first) is DropReason.HANDSHAKE_FAILED  # one token back after 1/20 s
    assert send(first) is DropReason.RATE_LIMITED


def test_handshake_flood_leaves_the_legitimate_session_alone() -> None:
    """A thousand initiations with valid mac1 from many sources while A and B exchange data."""
    pair = make_pair()
    net = pair.net
    pair.handshake()
    net.advance(1.0)
    session_a = pair.peer_b.keypairs.current
    session_b = pair.peer_a.keypairs.current
    handshakes = pair.a.stats.handshakes_completed, pair.b.stats.handshakes_completed
    genuine_initiation = datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)[-1]
    attackers = [Attacker(pair.pub_b, seed=100 + i) for i in range(50)]
    sources: list[Endpoint] = [(f"203.0.113.{i % 250 + 1}", 1024 + i) for i in range(250)] + [
        (f"2001:db8:{i:x}::1", 2000 + i, 0, 0) for i in range(50)
    ]
    flood_sources = set(sources)
    drops_before = drops_total(pair.b)
    sent_a, sent_b = [], []
    flood = 0
    rng = random.Random(5)
    while flood < 1000:
        for _ in range(25):  # 25 per 20 ms: 1250 handshake messages a second
            source = sources[flood % len(sources)]
            if flood % 10 == 0:
                data = genuine_initiation  # a replay of A's real initiation, from elsewhere
            else:
                data = attackers[rng.randrange(len(attackers))].initiation(net.now)
            net.inject(data, source, ENDPOINT_B)
            flood += 1
        sent_a.append(pair.send_a(f"a{flood}".encode()))
        sent_b.append(pair.send_b(f"b{flood}".encode()))
        net.advance(0.02)
    assert pair.node_b.delivered == sent_a
    assert pair.node_a.delivered == sent_b
    # The session was not disturbed: same keypairs, no handshake, same endpoint.
    assert pair.peer_b.keypairs.current is session_a
    assert pair.peer_a.keypairs.current is session_b
    assert (pair.a.stats.handshakes_completed, pair.b.stats.handshakes_completed) == handshakes
    assert pair.peer_a.endpoint == ENDPOINT_A
    assert pair.a.stats.drops == {}
    # Every flood message was dropped exactly once, and answered with a cookie reply at most.
    assert drops_total(pair.b) - drops_before == 1000
    # Before the rate crossed the threshold, flood messages were processed: the garbage failed the handshake and
    # the replays were stale. From then on each got a cookie reply.
    assert set(pair.b.stats.drops) == {DropReason.COOKIE_SENT, DropReason.HANDSHAKE_FAILED, DropReason.STALE_TIMESTAMP}
    assert pair.b.stats.drops[DropReason.COOKIE_SENT] >= 1000 - HANDSHAKE_LOAD_THRESHOLD - 1
    to_flood = [d for s, d, dst in net.sent if s == ENDPOINT_B and dst in flood_sources]
    assert len(to_flood) == pair.b.stats.drops[DropReason.COOKIE_SENT] == pair.b.stats.cookie_replies_sent
    assert all(len(d) == MESSAGE_COOKIE_REPLY_SIZE and message_type(d) == COOKIE_REPLY for d in to_flood)
    # After the flood the device leaves the load state and handshakes normally again.
    net.advance(REKEY_TIMEOUT)
    pair.a.rekey_after_messages = 0
    pair.send_a(b"rekey")
    assert pair.b.stats.handshakes_completed == handshakes[1] + 1
