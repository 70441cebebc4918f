"""The packet filter against a naive rule evaluator (Hypothesis over random maps, rules and packets).

The model is deliberately the slowest obvious reading of the semantics in ``wgpy/mesh/acl.py``: find each
address's owner by scanning every prefix of every map peer for the longest match, then walk the rules in order
and return the first whose groups, protocol and ports all match; no rule means ``default-deny``. The filter's
precomputed per-group-pair rule lists, its cut after an unconditional rule and its ``AllowedIPs`` lookups must
agree with it on every new flow, in both directions, with and without a peer to check the remote address against.

A second property checks the stateful side: whatever the filter accepts and tracks lets the reply through on the
opposite hook, and a packet it denies leaves the flow table untouched.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import ipv4_packet, ipv6_packet, private_key

from wgpy.allowedips import Network
from wgpy.keys import PublicKey
from wgpy.mesh import AclRule, MapPeer, NetworkMap, PacketFilter
from wgpy.mesh.acl import DEFAULT_DENY, SPOOFED_SOURCE
from wgpy.mesh.conntrack import INBOUND, OUTBOUND

GROUPS = ["a", "b", "c", "d"]
KEYS = [private_key(200 + i).public_key() for i in range(5)]
PORTS = [0, 22, 53, 80, 443, 1000, 8080, 65535]
# Prefixes that nest (10.0.0.0/16 holds 10.0.1.0/24 holds 10.0.1.7/32) and sit side by side, per family.
V4_PREFIXES = ["10.0.0.0/16", "10.0.1.0/24", "10.0.1.7/32", "10.1.0.0/24", "10.2.0.0/24"]
V6_PREFIXES = ["fd00::/48", "fd00:0:0:1::/64", "fd00:0:0:1::7/128", "fd01::/64", "fd02::/64"]
V4_ADDRESSES = ["10.0.0.5", "10.0.1.5", "10.0.1.7", "10.1.0.1", "10.2.0.9", "192.0.2.1"]
V6_ADDRESSES = ["fd00::5", "fd00:0:0:1::5", "fd00:0:0:1::7", "fd01::1", "fd02::9", "2001:db8::1"]
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47}


@dataclass(frozen=True)
class Packet:
    version: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    icmp_type: int

    def build(self) -> bytes:
        if self.proto == 6:
            payload = struct.pack("!HHIIBBHHH", self.sport, self.dport, 0, 0, 0x50, 0x02, 1024, 0, 0)
        elif self.proto == 17:
            payload = struct.pack("!HHHH", self.sport, self.dport, 8, 0)
        elif self.proto in (1, 58):
            payload = struct.pack("!BBHHH", self.icmp_type, 0, 0, self.sport, 1)
        else:
            payload = b"\x00" * 8
        if self.version == 6:
            return ipv6_packet(self.src, self.dst, payload, next_header=self.proto)
        return ipv4_packet(self.src, self.dst, payload, protocol=self.proto)


@st.composite
def maps(draw: st.DrawFn) -> NetworkMap:
    # Each prefix goes to at most one peer (the map format's rule); some prefixes belong to nobody.
    owners = draw(st.lists(st.sampled_from([None, 0, 1, 2, 3, 4]), min_size=10, max_size=10))
    prefixes: list[list[Network]] = [[] for _ in KEYS]
    for text, owner in zip(V4_PREFIXES + V6_PREFIXES, owners, strict=True):
        if owner is not None:
            prefixes[owner].append(ipaddress.ip_network(text))
    group_sets = draw(st.lists(st.frozensets(st.sampled_from(GROUPS)), min_size=len(KEYS), max_size=len(KEYS)))
    peers = tuple(
        MapPeer(key, tuple(nets), None, groups) for key, nets, groups in zip(KEYS, prefixes, group_sets, strict=True)
    )
    rules = tuple(draw(rule(f"r{index}")) for index in range(draw(st.integers(min_value=0, max_value=10))))
    return NetworkMap(1, 0, 1, peers, rules)


@st.composite
def rule(draw: st.DrawFn, name: str) -> AclRule:
    group_or_any = st.sampled_from([*GROUPS, "*"])
    protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "all"]))
    ports: tuple[tuple[int, int], ...] = ()
    if protocol in ("tcp", "udp"):
        bounds = st.tuples(st.sampled_from(PORTS), st.sampled_from(PORTS)).map(lambda b: (min(b), max(b)))
        ports = tuple(draw(st.lists(bounds, max_size=3)))
    return AclRule(
        name=name,
        src_groups=draw(st.frozensets(group_or_any, min_size=1, max_size=3)),
        dst_groups=draw(st.frozensets(group_or_any, min_size=1, max_size=3)),
        protocol=protocol,  # type: ignore[arg-type]
        ports=ports,
        action=draw(st.sampled_from(["accept", "deny"])),
    )


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    version = draw(st.sampled_from([4, 6]))
    addresses = V4_ADDRESSES if version == 4 else V6_ADDRESSES
    proto = PROTOCOLS[draw(st.sampled_from(list(PROTOCOLS)))]
    icmp_request = 8 if proto == 1 else 128
    icmp_type = draw(st.sampled_from([icmp_request, 3 if proto == 1 else 1, 13]))
    return Packet(
        version,
        proto,
        draw(st.sampled_from(addresses)),
        draw(st.sampled_from(addresses)),
        draw(st.sampled_from(PORTS)),
        draw(st.sampled_from(PORTS)),
        icmp_type,
    )


def naive_owner(netmap: NetworkMap, address: str) -> MapPeer | None:
    ip = ipaddress.ip_address(address)
    best: tuple[int, MapPeer] | None = None
    for peer in netmap.peers:
        for network in peer.allowed_ips:
            if ip.version == network.version and ip in network and (best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, peer)
    return best[1] if best is not None else None


def naive_decide(netmap: NetworkMap, packet: Packet, direction: int, peer: PublicKey | None) -> tuple[bool, str]:
    src_owner = naive_owner(netmap, packet.src)
    dst_owner = naive_owner(netmap, packet.dst)
    remote = src_owner if direction == INBOUND else dst_owner
    if peer is not None and remote is not None and remote.public_key != peer:
        return False, SPOOFED_SOURCE
    src_groups = src_owner.groups if src_owner is not None else frozenset()
    dst_groups = dst_owner.groups if dst_owner is not None else frozenset()
    icmp = 1 if packet.version == 4 else 58
    for r in netmap.rules:
        if "*" not in r.src_groups and not (r.src_groups & src_groups):
            continue
        if "*" not in r.dst_groups and not (r.dst_groups & dst_groups):
            continue
        if r.protocol == "tcp" and packet.proto != 6:
            continue
        if r.protocol == "udp" and packet.proto != 17:
            continue
        if r.protocol == "icmp" and packet.proto != icmp:
            continue
        if r.ports and not any(lo <= packet.dport <= hi for lo, hi in r.ports):
            continue
        return r.action == "accept", r.name
    return False, DEFAULT_DENY


# Which peer the hook is told the packet travels to or from: none, the owner of the remote address (the usual
# case), or any key (mostly a spoof).
peer_choices = st.sampled_from(["none", "owner", "owner", "any"])


def pick_peer(netmap: NetworkMap, packet: Packet, direction: int, choice: str, index: int) -> PublicKey | None:
    if choice == "none":
        return None
    if choice == "owner":
        owner = naive_owner(netmap, packet.src if direction == INBOUND else packet.dst)
        return owner.public_key if owner is not None else None
    return KEYS[index % len(KEYS)]


@settings(max_examples=400, deadline=None)
@given(
    maps(),
    st.lists(st.tuples(packets(), st.sampled_from([OUTBOUND, INBOUND]), peer_choices, st.integers(0, 4)), max_size=12),
)
def test_new_flow_decision_matches_naive_evaluator(
    netmap: NetworkMap, cases: list[tuple[Packet, int, str, int]]
) -> None:
    packet_filter = PacketFilter()
    packet_filter.load(netmap)
    for packet, direction, choice, index in cases:
        peer = pick_peer(netmap, packet, direction, choice, index)
        expected = naive_decide(netmap, packet, direction, peer)
        raw = packet.build()
        assert tuple(packet_filter.decide(raw, direction, peer)) == expected, (packet, direction, peer)
        # The hooks take the same decision for the first packet of a flow (a fresh filter: no flows yet).
        fresh = PacketFilter()
        fresh.load(netmap)
        hook = fresh.check_inbound if direction == INBOUND else fresh.check_outbound
        assert hook(raw, peer, 0.0) == expected[0]
        counted = fresh.stats.accepted if expected[0] else fresh.stats.denied
        assert counted == {expected[1]: 1}


def reverse(packet: Packet) -> Packet:
    if packet.proto in (1, 58):
        reply_type = 0 if packet.proto == 1 else 129
        return Packet(packet.version, packet.proto, packet.dst, packet.src, packet.sport, packet.dport, reply_type)
    return Packet(packet.version, packet.proto, packet.dst, packet.src, packet.dport, packet.sport, packet.icmp_type)


@settings(max_examples=200, deadline=None)
@given(maps(), st.lists(st.tuples(packets(), st.sampled_from([OUTBOUND, INBOUND])), max_size=12))
def test_tracked_flows_let_replies_through(netmap: NetworkMap, cases: list[tuple[Packet, int]]) -> None:
    packet_filter = PacketFilter()
    packet_filter.load(netmap)
    now = 10.0
    for packet, direction in cases:
        check = packet_filter.check_inbound if direction == INBOUND else packet_filter.check_outbound
        answer = packet_filter.check_outbound if direction == INBOUND else packet_filter.check_inbound
        # Flows may idle out as the clock moves (ICMP after 30 s): expire them first, so that the count below
        # changes only through this packet.
        packet_filter.expire(now)
        flows_before = len(packet_filter.conntrack)
        accepted = check(packet.build(), None, now)
        tracked = len(packet_filter.conntrack) > flows_before
        if not accepted:
            assert len(packet_filter.conntrack) == flows_before
        if tracked:
            assert answer(reverse(packet).build(), None, now + 1)
            assert check(packet.build(), None, now + 2)
        now += 3


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.builds(
            lambda packet, cut, flips: _mangle(packet.build(), cut, flips),
            packets(),
            st.integers(0, 80),
            st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=3),
        ),
    ),
    st.sampled_from([OUTBOUND, INBOUND]),
)
def test_any_bytes_are_decided_and_counted_once(data: bytes, direction: int) -> None:
    """The filter never raises; each call moves exactly one counter (style rule 3 for the filter)."""
    packet_filter = PacketFilter()
    packet_filter.load(ANY_MAP)
    stats = packet_filter.stats

    def total() -> int:
        counted = sum(stats.denied.values()) + sum(stats.accepted.values())
        return counted + stats.conntrack_hits + stats.related + stats.fragments

    hook = packet_filter.check_inbound if direction == INBOUND else packet_filter.check_outbound
    for now in (1.0, 2.0):  # the second call may find the flow the first one created
        before = total()
        hook(data, None, now)
        assert total() == before + 1
        packet_filter.decide(data, direction)


def _mangle(packet: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    mangled = bytearray(packet[: max(cut, 20)])
    for position, value in flips:
        if position < len(mangled):
            mangled[position] = value
    return bytes(mangled)


ANY_MAP = NetworkMap(
    1,
    0,
    1,
    (
        MapPeer(
            KEYS[0], tuple(ipaddress.ip_network(p) for p in V4_PREFIXES[:1] + V6_PREFIXES[:1]), None, frozenset("a")
        ),
    ),
    (AclRule("anything", frozenset("*"), frozenset("*"), "all", (), "accept"),),
)
