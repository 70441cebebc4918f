"""Cryptokey routing, inner-packet checks, padding, staged packets and exactly-once delivery between Devices."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from support.helpers import (
    ADDR_A,
    ADDR_A6,
    ADDR_B,
    ADDR_B6,
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    datagrams_from,
    drops_total,
    ipv4_packet,
    ipv6_packet,
    make_device,
    make_pair,
    pub,
    snapshot,
)

from wgpy.constants import MAX_STAGED_PACKETS, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from wgpy.device import DEFAULT_MTU
from wgpy.errors import DropReason
from wgpy.keypair import padded_length
from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork


class Star:
    """A hub A with peers B and C (and their own devices), for routing tests."""

    def __init__(self) -> None:
        self.net = MemoryNetwork(seed=11)
        self.a = make_device(20)
        self.b = make_device(21)
        self.c = make_device(22)
        self.endpoints = {"b": ("192.0.2.21", 51820), "c": ("192.0.2.22", 51820)}
        self.node_a = self.net.attach(self.a, ENDPOINT_A)
        self.node_b = self.net.attach(self.b, self.endpoints["b"])
        self.node_c = self.net.attach(self.c, self.endpoints["c"])
        assert self.a.public_key and self.b.public_key and self.c.public_key
        self.peer_b = self.a.add_peer(
            self.b.public_key, endpoint=self.endpoints["b"], allowed_ips=["10.0.0.0/24", "fd00::/64"]
        )
        self.peer_c = self.a.add_peer(
            self.c.public_key, endpoint=self.endpoints["c"], allowed_ips=["10.0.0.3/32", "10.9.0.0/16"]
        )
        for dev in (self.b, self.c):
            dev.add_peer(self.a.public_key, endpoint=ENDPOINT_A, allowed_ips=["0.0.0.0/0", "::/0"])

    def send(self, dst: str, payload: bytes) -> bytes:
        packet = ipv6_packet(ADDR_A6, dst, payload) if ":" in dst else ipv4_packet(ADDR_A, dst, payload)
        self.net.send_packet(self.a, packet)
        return packet


def test_outgoing_packets_follow_the_longest_prefix() -> None:
    star = Star()
    to_c = star.send("10.0.0.3", b"/32 beats /24")
    to_b = star.send("10.0.0.5", b"/24")
    to_b6 = star.send("fd00::77", b"v6 /64")
    to_c2 = star.send("10.9.1.1", b"/16")
    assert star.node_b.delivered == [to_b, to_b6]
    assert star.node_c.delivered == [to_c, to_c2]
    star.send("192.168.1.1", b"no route")
    star.send("fd01::1", b"no route")
    assert star.a.stats.drops == {DropReason.NO_ROUTE: 2}


def test_prefix_moving_between_peers() -> None:
    star = Star()
    star.send("10.0.0.3", b"to c")
    star.send("10.0.0.5", b"to b")
    # 10.0.0.3/32 moves to B (as `wg set ... allowed-ips` would): the next packet goes to B, C keeps 10.9/16.
    star.a.add_peer(pub(star.b), allowed_ips=["10.0.0.3/32"])
    moved = star.send("10.0.0.3", b"moved")
    assert star.node_b.delivered[-1] == moved
    assert star.a.allowed_ips.entries_for_peer(star.peer_c) == [ip_network("10.9.0.0/16")]
    # And C may no longer use 10.0.0.3 as a source towards A.
    star.net.send_packet(star.c, ipv4_packet("10.0.0.3", ADDR_A, b"spoof"))
    assert star.a.stats.drops[DropReason.DISALLOWED_SOURCE_IP] == 1
    # Replacing B's allowed IPs hands it back once C claims it again.
    star.a.set_allowed_ips(star.peer_b, ["10.0.0.0/24", "fd00::/64"])
    star.a.add_peer(pub(star.c), allowed_ips=["10.0.0.3/32"])
    back = star.send("10.0.0.3", b"back to c")
    assert star.node_c.delivered[-1] == back
    from_c = ipv4_packet("10.0.0.3", ADDR_A, b"c again")
    star.net.send_packet(star.c, from_c)
    assert star.node_a.delivered[-1] == from_c


@pytest.mark.parametrize("v6", [False, True])
def test_inbound_source_must_be_in_the_senders_allowed_ips(connected: Pair, v6: bool) -> None:
    pair = connected
    src = "fd00::99" if v6 else "10.0.0.99"
    spoofed = ipv6_packet(src, ADDR_A6, b"x") if v6 else ipv4_packet(src, ADDR_A, b"x")
    before = snapshot(pair.a)
    pair.net.send_packet(pair.b, spoofed)
    assert pair.node_a.delivered == []
    assert pair.a.stats.drops == {DropReason.DISALLOWED_SOURCE_IP: 1}
    # The packet did authenticate: the session's counters moved, nothing else about routing did.
    after = snapshot(pair.a)
    assert after["index_table"] == before["index_table"]
    good = pair.send_b(b"fine", v6=v6)
    assert pair.node_a.delivered == [good]


@pytest.mark.parametrize(
    "plaintext",
    [
        bytes(16),  # version 0
        b"\x45" + bytes(15),  # IPv4 shorter than its header
        ipv4_packet(ADDR_B, ADDR_A, b"abc")[:2] + b"\x00\x40" + ipv4_packet(ADDR_B, ADDR_A, b"abc")[4:],  # too long
        ipv4_packet(ADDR_B, ADDR_A)[:2] + b"\x00\x08" + ipv4_packet(ADDR_B, ADDR_A)[4:],  # shorter than header
        b"\x44" + ipv4_packet(ADDR_B, ADDR_A, b"abcd")[1:],  # IHL 4
        b"\x60" + bytes(30),  # IPv6 shorter than its header
        ipv6_packet(ADDR_B6, ADDR_A6, b"ab")[:4] + b"\x01\x00" + ipv6_packet(ADDR_B6, ADDR_A6, b"ab")[6:],
    ],
    ids=["v0", "v4-short", "v4-total-too-long", "v4-total-too-small", "v4-ihl4", "v6-short", "v6-payload-too-long"],
)
def test_invalid_inner_packets_are_dropped(connected: Pair, plaintext: bytes) -> None:
    pair = connected
    keypair = pair.peer_a.keypairs.current
    assert keypair is not None
    padded = plaintext + bytes(padded_length(len(plaintext), DEFAULT_MTU) - len(plaintext))
    message = keypair.seal(padded)
    assert message is not None
    pair.net.inject(message, ENDPOINT_B, ENDPOINT_A)
    assert pair.node_a.delivered == []
    assert pair.a.stats.drops == {DropReason.INVALID_IP_PACKET: 1}


def test_invalid_packets_from_tun_are_dropped(pair: Pair) -> None:
    for junk in (b"", b"\x45", bytes(40), ipv4_packet(ADDR_A, ADDR_B, b"x")[:-1]):
        pair.net.send_packet(pair.a, junk)
    assert pair.a.stats.drops == {DropReason.INVALID_IP_PACKET: 4}
    assert pair.net.sent == []


def _payload(n: int) -> bytes:
    return bytes((i * 7 + n) & 0xFF for i in range(n))


@pytest.mark.parametrize("v6", [False, True])
def test_padding_is_trimmed_for_every_small_size(connected: Pair, v6: bool) -> None:
    pair = connected
    sizes = range(1, 101)
    sent = [pair.send_a(_payload(n), v6=v6) for n in sizes]
    assert pair.node_b.delivered == sent
    # And on the wire every plaintext was padded to a multiple of 16.
    transports = datagrams_from(pair.net, ENDPOINT_A, MessageType.TRANSPORT)[-len(sent) :]
    for packet, datagram in zip(sent, transports, strict=True):
        assert len(datagram) - 32 == padded_length(len(packet), DEFAULT_MTU)
        assert (len(datagram) - 32) % 16 == 0


def test_bare_headers_and_every_total_length_up_to_100(connected: Pair) -> None:
    pair = connected
    sent = [pair.a_to_b(_payload(total - 20)) for total in range(20, 101)]
    sent += [pair.a_to_b(_payload(total - 40), v6=True) for total in range(40, 101)]
    for packet in sent:
        pair.net.send_packet(pair.a, packet)
    assert pair.node_b.delivered == sent


@pytest.mark.parametrize("mtu", [DEFAULT_MTU, 1280, 1421])
@pytest.mark.parametrize("v6", [False, True])
def test_mtu_sized_packets(mtu: int, v6: bool) -> None:
    pair = make_pair(mtu=mtu)
    header = 40 if v6 else 20
    packets = [pair.a_to_b(_payload(mtu - header - d), v6=v6) for d in (0, 1, 15, 16, 17)]
    for packet in packets:
        pair.net.send_packet(pair.a, packet)
    assert pair.node_b.delivered == packets
    on_wire = datagrams_from(pair.net, ENDPOINT_A, MessageType.TRANSPORT)
    assert len(on_wire[0]) - 32 == mtu  # an MTU-sized packet is not padded past the MTU


def test_staged_packets_are_bounded_and_delivered_exactly_once() -> None:
    net = MemoryNetwork(seed=4, duplicate=0.5, reorder=0.5)
    pair = make_pair(net=net)
    net.blocked.add(ENDPOINT_B)
    packets = [pair.a_to_b(f"staged {i}".encode()) for i in range(MAX_STAGED_PACKETS + 72)]
    for packet in packets:
        net.send_packet(pair.a, packet)
    assert len(pair.peer_b.staged) == MAX_STAGED_PACKETS
    assert pair.a.stats.drops == {DropReason.QUEUE_FULL: 72}
    assert list(pair.peer_b.staged) == packets[72:]  # the oldest made room
    net.blocked.clear()
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 1)
    assert pair.node_b.delivered == packets[72:]
    assert not pair.peer_b.staged
    net.advance(30.0)  # duplicates and timers later: still once
    assert pair.node_b.delivered == packets[72:]
    assert pair.b.stats.drops[DropReason.REPLAYED_COUNTER] >= 1  # the duplicated datagrams


@pytest.mark.parametrize("seed", range(3))
def test_delivered_at_most_once_through_duplication_and_reordering(seed: int) -> None:
    net = MemoryNetwork(seed=seed, duplicate=0.3, reorder=0.5)
    pair = make_pair(net=net, seed=seed)
    sent_a, sent_b = [], []
    for i in range(60):
        sent_a.append(pair.send_a(f"a{i}".encode()))
        sent_b.append(pair.send_b(f"b{i}".encode()))
        net.advance(0.5)
    assert sorted(pair.node_b.delivered) == sorted(sent_a)
    assert sorted(pair.node_a.delivered) == sorted(sent_b)


@pytest.mark.parametrize("seed", range(3))
def test_lossy_network_never_duplicates_and_recovers(seed: int) -> None:
    net = MemoryNetwork(seed=seed, loss=0.3, duplicate=0.2, reorder=0.3)
    pair = make_pair(net=net, seed=seed)
    sent = []
    for i in range(60):
        sent.append(pair.send_a(f"a{i}".encode()))
        net.advance(1.0)
    assert len(set(pair.node_b.delivered)) == len(pair.node_b.delivered)
    assert set(pair.node_b.delivered) <= set(sent)
    net.loss = net.duplicate = net.reorder = 0.0
    net.advance(REKEY_TIMEOUT + 1)
    final = pair.send_a(b"after heal")
    net.advance(30.0)
    assert pair.node_b.delivered.count(final) == 1


def test_rx_tx_byte_counters_cover_only_authenticated_traffic(connected: Pair) -> None:
    pair = connected
    rx_before = pair.peer_a.rx_bytes
    pair.net.inject(b"\x04" + bytes(40), ENDPOINT_A, ENDPOINT_B)
    assert pair.peer_a.rx_bytes == rx_before
    assert drops_total(pair.b) == 1
