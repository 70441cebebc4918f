"""The mesh packet filter: the seed ACL example, connection tracking, timeouts, bounds, parsing edge cases.

The seed example: groups ``developers``, ``production`` and ``other``; developers may reach production on tcp/22
and tcp/443; everything else is denied. Packets are real IPv4/IPv6 packets built with ``struct``; the filter is
driven as the device will drive it, ``check_outbound`` on the sender's side and ``check_inbound`` on the
receiver's, with ``now`` stepped by hand.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any

import pytest
from support.helpers import ipv4_packet, ipv6_packet, make_pair, private_key

from wgpy.keys import PublicKey
from wgpy.mesh import MeshController, NetworkMap, PacketFilter, parse_network_map, sign_network_map
from wgpy.mesh.acl import (
    DEFAULT_DENY,
    FRAGMENT_TIMEOUT,
    MALFORMED,
    SPOOFED_SOURCE,
    TABLE_FULL,
    UNTRACKED_FRAGMENT,
    Verdict,
)
from wgpy.mesh.conntrack import (
    CLOSED,
    ESTABLISHED,
    ICMP_TIMEOUT,
    INBOUND,
    NEW,
    OTHER_TIMEOUT,
    OUTBOUND,
    TCP_CLOSE_TIMEOUT,
    TCP_ESTABLISHED_TIMEOUT,
    TCP_NEW_TIMEOUT,
    UDP_STREAM_TIMEOUT,
    UDP_TIMEOUT,
)

DEV = private_key(11).public_key()  # the local laptop in most tests
DEV2 = private_key(12).public_key()
PROD = private_key(13).public_key()
OTHER = private_key(14).public_key()

DEV_IP, DEV_IP6 = "10.0.0.1", "fd00::1"
DEV2_IP = "10.0.0.2"
PROD_IP, PROD_IP6 = "10.0.1.1", "fd00:1::1"
OTHER_IP, OTHER_IP6 = "10.0.2.1", "fd00:2::1"
OUTSIDE_IP = "198.51.100.9"  # owned by no map peer

SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08
T0 = 1000.0


# --- packets ------------------------------------------------------------------------------------------------------


def _ip(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    if ":" in src:
        return ipv6_packet(src, dst, payload, next_header=proto)
    return ipv4_packet(src, dst, payload, protocol=proto)


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = SYN) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 65535, 0, 0)
    return _ip(src, dst, 6, header)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"q") -> bytes:
    return _ip(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def icmp_echo(src: str, dst: str, ident: int, *, reply: bool = False) -> bytes:
    v6 = ":" in src
    kind = (129 if reply else 128) if v6 else (0 if reply else 8)
    return _ip(src, dst, 58 if v6 else 1, struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"ping")


def icmp_error(src: str, dst: str, quoted: bytes) -> bytes:
    """Destination unreachable (v4) or packet too big (v6) from ``src`` quoting ``quoted``."""
    if ":" in src:
        return _ip(src, dst, 58, struct.pack("!BBHI", 2, 0, 0, 1280) + quoted[:1232])
    return _ip(src, dst, 1, struct.pack("!BBHI", 3, 4, 0, 0) + quoted[:28])


def reply_to(packet: bytes, flags: int = SYN | ACK) -> bytes:
    """The TCP/UDP reply to ``packet``: addresses and ports swapped."""
    v6 = packet[0] >> 4 == 6
    header = 40 if v6 else 20
    proto = packet[6] if v6 else packet[9]
    src_at, size = (8, 16) if v6 else (12, 4)
    src = ipaddress.ip_address(packet[src_at : src_at + size])
    dst = ipaddress.ip_address(packet[src_at + size : src_at + 2 * size])
    sport, dport = struct.unpack_from("!HH", packet, header)
    if proto == 6:
        return tcp(str(dst), str(src), dport, sport, flags)
    return udp(str(dst), str(src), dport, sport)


# --- maps ---------------------------------------------------------------------------------------------------------


def peer(key: PublicKey, addresses: list[str], groups: list[str]) -> dict[str, Any]:
    return {"public_key": key.to_base64(), "allowed_ips": addresses, "endpoint": None, "groups": groups, "relay": False}


def rule(name: str, src: list[str], dst: list[str], protocol: str, ports: list[Any], action: str = "accept") -> Any:
    return {"name": name, "src_groups": src, "dst_groups": dst, "protocol": protocol, "ports": ports, "action": action}


SEED_RULES = [
    rule("dev-ssh", ["developers"], ["production"], "tcp", [22]),
    rule("dev-https", ["developers"], ["production"], "tcp", [443]),
]


def netmap(rules: list[Any], serial: int = 1) -> NetworkMap:
    return parse_network_map(
        {
            "version": 1,
            "serial": serial,
            "issued_at": 0,
            "expires_at": 2**40,
            "peers": [
                peer(DEV, [f"{DEV_IP}/32", f"{DEV_IP6}/128"], ["developers"]),
                peer(DEV2, [f"{DEV2_IP}/32"], ["developers"]),
                peer(PROD, [f"{PROD_IP}/32", f"{PROD_IP6}/128"], ["production"]),
                peer(OTHER, [f"{OTHER_IP}/32", f"{OTHER_IP6}/128"], ["other"]),
            ],
            "acl": rules,
        }
    )


def make_filter(rules: list[Any] = SEED_RULES, **kwargs: Any) -> PacketFilter:
    packet_filter = PacketFilter(**kwargs)
    packet_filter.load(netmap(rules))
    return packet_filter


# ------------------------------------------------------------------------------------------------------------------
# The seed example
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dport", [22, 443])
def test_developers_reach_production_and_replies_flow(dport: int) -> None:
    laptop, server = make_filter(), make_filter()  # the filters on the developer's and the server's devices
    syn = tcp(DEV_IP, PROD_IP, 40000, dport)
    assert laptop.check_outbound(syn, PROD, T0)
    assert server.check_inbound(syn, DEV, T0)
    synack = reply_to(syn)
    assert server.check_outbound(synack, DEV, T0)
    assert laptop.check_inbound(synack, PROD, T0)
    for _ in range(3):
        assert laptop.check_outbound(tcp(DEV_IP, PROD_IP, 40000, dport, ACK | PSH), PROD, T0 + 1)
        assert laptop.check_inbound(reply_to(syn, ACK | PSH), PROD, T0 + 1)
    name = "dev-ssh" if dport == 22 else "dev-https"
    assert laptop.stats.accepted == {name: 1} and server.stats.accepted == {name: 1}
    assert laptop.stats.conntrack_hits == 7
    assert not laptop.stats.denied and not server.stats.denied


def test_other_ports_and_directions_are_denied() -> None:
    f = make_filter()
    assert not f.check_outbound(tcp(DEV_IP, PROD_IP, 40000, 80), PROD, T0)  # port not in the ACL
    assert not f.check_outbound(udp(DEV_IP, PROD_IP, 40000, 22), PROD, T0)  # protocol not in the ACL
    assert not f.check_inbound(tcp(PROD_IP, DEV_IP, 40000, 22), PROD, T0)  # production may not open to developers
    assert not f.check_outbound(tcp(DEV_IP, DEV2_IP, 40000, 22), DEV2, T0)  # nor developers to developers
    assert f.stats.denied == {DEFAULT_DENY: 4}
    assert len(f.conntrack) == 0


def test_other_group_reaches_nothing() -> None:
    f = make_filter()
    for dst, key in ((PROD_IP, PROD), (DEV_IP, DEV), (DEV2_IP, DEV2)):
        for packet in (tcp(OTHER_IP, dst, 1234, 22), tcp(OTHER_IP, dst, 1234, 443), udp(OTHER_IP, dst, 1, 53)):
            assert not f.check_inbound(packet, OTHER, T0)
            assert not f.check_outbound(packet, key, T0)
        assert not f.check_inbound(icmp_echo(OTHER_IP, dst, 7), OTHER, T0)
    assert f.stats.denied[DEFAULT_DENY] == 3 * 7


def test_unsolicited_reply_is_denied() -> None:
    f = make_filter()
    syn = tcp(DEV_IP, PROD_IP, 40000, 22)
    assert not f.check_inbound(reply_to(syn), PROD, T0)  # no flow yet: a "reply" is just a packet from production
    assert f.check_outbound(syn, PROD, T0)
    assert f.check_inbound(reply_to(syn), PROD, T0)
    # Same ports, other source port: a different flow.
    assert not f.check_inbound(tcp(PROD_IP, DEV_IP, 22, 40001, ACK), PROD, T0)


def test_reply_must_arrive_on_the_opposite_hook() -> None:
    f = make_filter()
    syn = tcp(DEV_IP, PROD_IP, 40000, 22)
    assert f.check_outbound(syn, PROD, T0)
    # A packet shaped like the reply but read from the local TUN is not the reply.
    assert not f.check_outbound(reply_to(syn), DEV, T0)


def test_ipv6() -> None:
    laptop = make_filter()
    syn = tcp(DEV_IP6, PROD_IP6, 50000, 443)
    assert laptop.check_outbound(syn, PROD, T0)
    assert laptop.check_inbound(reply_to(syn), PROD, T0)
    assert not laptop.check_outbound(tcp(DEV_IP6, PROD_IP6, 50000, 80), PROD, T0)
    assert not laptop.check_inbound(tcp(OTHER_IP6, DEV_IP6, 1, 22), OTHER, T0)
    assert laptop.stats.accepted == {"dev-https": 1} and laptop.stats.denied == {DEFAULT_DENY: 2}


def test_deny_rule_is_counted_by_name() -> None:
    rules = [
        rule("no-db", ["developers"], ["production"], "tcp", [[5432, 5433]], "deny"),
        rule("dev-all", ["developers"], ["production"], "all", []),
    ]
    f = make_filter(rules)
    assert not f.check_outbound(tcp(DEV_IP, PROD_IP, 1, 5432), PROD, T0)
    assert not f.check_outbound(tcp(DEV_IP, PROD_IP, 1, 5433), PROD, T0)
    assert f.check_outbound(tcp(DEV_IP, PROD_IP, 1, 5434), PROD, T0)
    assert f.check_outbound(udp(DEV_IP, PROD_IP, 1, 5432), PROD, T0)
    assert f.check_outbound(ipv4_packet(DEV_IP, PROD_IP, b"gre!", protocol=47), PROD, T0)  # GRE: "all" covers it
    assert f.stats.denied == {"no-db": 2}
    assert f.stats.accepted == {"dev-all": 3}
    assert f.decide(tcp(DEV_IP, PROD_IP, 1, 5432)) == Verdict(False, "no-db")


def test_first_matching_rule_wins() -> None:
    rules = [
        rule("allow-ssh", ["developers"], ["production"], "tcp", [22]),
        rule("deny-everything", ["*"], ["*"], "all", [], "deny"),
        rule("never-reached", ["developers"], ["production"], "tcp", [443]),
    ]
    f = make_filter(rules)
    assert f.decide(tcp(DEV_IP, PROD_IP, 1, 22)) == Verdict(True, "allow-ssh")
    assert f.decide(tcp(DEV_IP, PROD_IP, 1, 443)) == Verdict(False, "deny-everything")


def test_wildcard_matches_addresses_outside_the_map() -> None:
    f = make_filter([rule("egress-web", ["developers"], ["*"], "tcp", [443])])
    assert f.check_outbound(tcp(DEV_IP, OUTSIDE_IP, 1, 443), None, T0)
    assert f.check_outbound(tcp(DEV_IP, PROD_IP, 1, 443), PROD, T0)
    assert not f.check_outbound(tcp(DEV_IP, OUTSIDE_IP, 1, 80), None, T0)
    named = make_filter([rule("x", ["developers"], ["production"], "tcp", [443])])
    assert not named.check_outbound(tcp(DEV_IP, OUTSIDE_IP, 1, 443), None, T0)  # no groups: only "*" matches


def test_no_map_denies_everything() -> None:
    f = PacketFilter()
    assert not f.check_outbound(tcp(DEV_IP, PROD_IP, 1, 22), PROD, T0)
    assert f.stats.denied == {DEFAULT_DENY: 1}


# ------------------------------------------------------------------------------------------------------------------
# ICMP and UDP
# ------------------------------------------------------------------------------------------------------------------

PING_AND_DNS = [
    *SEED_RULES,
    rule("dev-ping", ["developers"], ["production"], "icmp", []),
    rule("dev-dns", ["developers"], ["production"], "udp", [53, [60000, 60010]]),
]


@pytest.mark.parametrize(("src", "dst"), [(DEV_IP, PROD_IP), (DEV_IP6, PROD_IP6)])
def test_icmp_echo(src: str, dst: str) -> None:
    f = make_filter(PING_AND_DNS)
    assert f.check_outbound(icmp_echo(src, dst, 77), PROD, T0)
    assert f.check_inbound(icmp_echo(dst, src, 77, reply=True), PROD, T0)
    assert not f.check_inbound(icmp_echo(dst, src, 78, reply=True), PROD, T0)  # another identifier
    assert not f.check_inbound(icmp_echo(dst, src, 77), PROD, T0)  # production may not ping developers
    assert f.stats.accepted == {"dev-ping": 1} and f.stats.denied == {DEFAULT_DENY: 2}
    assert f.check_outbound(icmp_echo(src, dst, 77), PROD, T0 + ICMP_TIMEOUT - 1)  # refreshes the flow
    assert f.check_inbound(icmp_echo(dst, src, 77, reply=True), PROD, T0 + 2 * ICMP_TIMEOUT - 2)
    assert not f.check_inbound(icmp_echo(dst, src, 77, reply=True), PROD, T0 + 3 * ICMP_TIMEOUT)


def test_icmp_rule_is_per_family() -> None:
    f = make_filter(PING_AND_DNS)
    icmp_in_v6 = ipv6_packet(DEV_IP6, PROD_IP6, struct.pack("!BBHHH", 8, 0, 0, 1, 1), next_header=1)
    assert f.decide(icmp_in_v6) == Verdict(False, DEFAULT_DENY)  # ICMPv4 inside IPv6 is not "icmp"


def test_udp_request_reply_and_ranges() -> None:
    f = make_filter(PING_AND_DNS)
    query = udp(DEV_IP, PROD_IP, 53535, 53)
    assert f.check_outbound(query, PROD, T0)
    assert f.check_inbound(reply_to(query), PROD, T0 + 1)
    assert f.check_outbound(udp(DEV_IP, PROD_IP, 1, 60005), PROD, T0)
    assert not f.check_outbound(udp(DEV_IP, PROD_IP, 1, 60011), PROD, T0)
    assert not f.check_outbound(udp(DEV_IP, PROD_IP, 1, 54), PROD, T0)
    assert f.stats.accepted == {"dev-dns": 2}


# ------------------------------------------------------------------------------------------------------------------
# Timeouts and states
# ------------------------------------------------------------------------------------------------------------------


def _flow(f: PacketFilter) -> Any:
    flows = list(f.conntrack.flows())
    assert len(flows) == 1
    return flows[0]


def test_udp_timeouts_unreplied_and_stream() -> None:
    f = make_filter(PING_AND_DNS)
    query = udp(DEV_IP, PROD_IP, 5000, 53)
    assert f.check_outbound(query, PROD, T0)
    assert _flow(f).state == NEW
    assert not f.check_inbound(reply_to(query), PROD, T0 + UDP_TIMEOUT)  # unreplied flows go after 30 s
    assert len(f.conntrack) == 0
    assert f.check_outbound(query, PROD, T0 + 100)
    assert f.check_inbound(reply_to(query), PROD, T0 + 101)
    assert _flow(f).state == ESTABLISHED
    assert f.check_inbound(reply_to(query), PROD, T0 + 101 + UDP_STREAM_TIMEOUT - 1)
    assert not f.check_inbound(reply_to(query), PROD, T0 + 101 + 2 * UDP_STREAM_TIMEOUT)


def test_tcp_idle_timeout_expiry() -> None:
    f = make_filter()
    syn = tcp(DEV_IP, PROD_IP, 40000, 22)
    assert f.check_outbound(syn, PROD, T0)
    assert _flow(f).state == NEW and _flow(f).timeout == TCP_NEW_TIMEOUT
    assert f.check_inbound(reply_to(syn), PROD, T0 + 1)
    assert _flow(f).state == ESTABLISHED
    idle = T0 + 1 + TCP_ESTABLISHED_TIMEOUT
    assert f.check_inbound(reply_to(syn, ACK), PROD, idle - 0.5)
    assert not f.check_inbound(reply_to(syn, ACK), PROD, idle - 0.5 + TCP_ESTABLISHED_TIMEOUT)
    assert len(f.conntrack) == 0
    # The developer's side may of course reconnect: the rule allows it afresh.
    assert f.check_outbound(tcp(DEV_IP, PROD_IP, 40000, 22, ACK), PROD, idle + TCP_ESTABLISHED_TIMEOUT)


def test_unreplied_syn_expires() -> None:
    f = make_filter()
    syn = tcp(DEV_IP, PROD_IP, 40000, 22)
    assert f.check_outbound(syn, PROD, T0)
    assert not f.check_inbound(reply_to(syn), PROD, T0 + TCP_NEW_TIMEOUT)


@pytest.mark.parametrize("closing", ["rst", "fin"])
def test_tcp_close_shortens_the_timeout(closing: str) -> None:
    f = make_filter()
    syn = tcp(DEV_IP, PROD_IP, 40000, 22)
    assert f.check_outbound(syn, PROD, T0)
    assert f.check_inbound(reply_to(syn), PROD, T0)
    if closing == "rst":
        assert f.check_inbound(reply_to(syn, RST), PROD, T0 + 1)
    else:
        assert f.check_outbound(tcp(DEV_IP, PROD_IP, 40000, 22, FIN | ACK), PROD, T0 + 1)
        assert _flow(f).state == ESTABLISHED  # half closed
        assert f.check_inbound(reply_to(syn, FIN | ACK), PROD, T0 + 1)
    assert _flow(f).state == CLOSED
    assert f.check_outbound(tcp(DEV_IP, PROD_IP, 40000, 22, ACK), PROD, T0 + 2)  # the last ACK passes
    # The slot frees after TCP_CLOSE_TIMEOUT, not TCP_ESTABLISHED_TIMEOUT.
    assert f.expire(T0 + 2 + TCP_CLOSE_TIMEOUT) == 1
    assert len(f.conntrack) == 0


def test_syn_reusing_a_closed_flow_is_decided_afresh() -> None:
    f = make_filter()
    syn = tcp(DEV_IP, PROD_IP, 40000, 22)
    assert f.check_outbound(syn, PROD, T0)
    assert f.check_inbound(reply_to(syn, RST), PROD, T0)
    assert f.check_outbound(syn, PROD, T0 + 1)
    assert f.stats.accepted == {"dev-ssh": 2}
    assert _flow(f).state == NEW


def test_rst_opens_no_flow() -> None:
    f = make_filter()
    assert f.check_outbound(tcp(DEV_IP, PROD_IP, 40000, 22, RST), PROD, T0)
    assert len(f.conntrack) == 0


def test_other_protocols_track_with_the_generic_timeout() -> None:
    f = make_filter([rule("dev-any", ["developers"], ["production"], "all", [])])
    gre = ipv4_packet(DEV_IP, PROD_IP, b"gre!", protocol=47)
    back = ipv4_packet(PROD_IP, DEV_IP, b"gre!", protocol=47)
    assert f.check_outbound(gre, PROD, T0)
    assert f.check_inbound(back, PROD, T0 + OTHER_TIMEOUT - 1)
    assert not f.check_inbound(back, PROD, T0 + 2 * OTHER_TIMEOUT)


def test_expiry_sweep_frees_memory_without_traffic_on_the_flows() -> None:
    f = make_filter(PING_AND_DNS)
    for sport in range(100):
        assert f.check_outbound(udp(DEV_IP, PROD_IP, 10000 + sport, 53), PROD, T0)
    assert len(f.conntrack) == 100
    # Any later packet runs the amortised sweep (at most once a second).
    assert not f.check_outbound(udp(DEV_IP, PROD_IP, 1, 9), PROD, T0 + UDP_TIMEOUT + 1)
    assert len(f.conntrack) == 0
    assert len(f.conntrack.table) == 0


# ------------------------------------------------------------------------------------------------------------------
# Bounds and safety
# ------------------------------------------------------------------------------------------------------------------


def test_table_bound_fails_closed() -> None:
    f = make_filter(max_flows=3)
    syns = [tcp(DEV_IP, PROD_IP, 40000 + i, 22) for i in range(4)]
    assert all(f.check_outbound(syn, PROD, T0) for syn in syns[:3])
    assert not f.check_outbound(syns[3], PROD, T0)
    assert f.stats.denied == {TABLE_FULL: 1}
    assert all(f.check_inbound(reply_to(syn), PROD, T0) for syn in syns[:3])  # existing flows carry on
    # Once flows time out, new ones fit again.
    assert f.check_outbound(syns[3], PROD, T0 + TCP_ESTABLISHED_TIMEOUT + 1)
    assert len(f.conntrack) == 1


def test_one_peer_fills_its_share_of_the_table_not_the_others_room() -> None:
    """A compromised developer laptop opening connection after connection to production: beyond its share it is
    refused, while the other developer's connections still fit; when its flows close, its share frees again."""
    f = make_filter(max_flows=8, max_flows_per_peer=3)
    flood = [tcp(DEV_IP, PROD_IP, 41000 + i, 22) for i in range(6)]
    verdicts = [f.check_inbound(syn, DEV, T0) for syn in flood]
    assert verdicts == [True, True, True, False, False, False]
    assert f.stats.denied == {TABLE_FULL: 3} and f.conntrack.flows_of(DEV) == 3
    others = [tcp(DEV2_IP, PROD_IP, 42000 + i, 22) for i in range(3)]
    assert all(f.check_inbound(syn, DEV2, T0) for syn in others)  # the table had room: DEV took only its share
    assert len(f.conntrack) == 6 and f.conntrack.flows_of(DEV2) == 3
    for port in range(41000, 41003):  # DEV's connections end: a RST closes each
        assert f.check_inbound(tcp(DEV_IP, PROD_IP, port, 22, RST), DEV, T0)
    assert f.check_inbound(flood[3], DEV, T0 + TCP_CLOSE_TIMEOUT + 1)
    assert f.conntrack.flows_of(DEV) == 1


def test_spoofed_source_is_denied() -> None:
    f = make_filter([rule("prod-to-dev", ["production"], ["developers"], "tcp", [22])])
    # PROD's own address: fine. DEV's address arriving from PROD would borrow the developer's groups.
    assert f.check_inbound(tcp(PROD_IP, DEV_IP, 1, 22), PROD, T0)
    assert not f.check_inbound(tcp(DEV2_IP, DEV_IP, 1, 22), PROD, T0)
    assert not f.check_outbound(tcp(DEV_IP, PROD_IP, 1, 22), OTHER, T0)  # routed to a peer that does not own it
    assert f.stats.denied == {SPOOFED_SOURCE: 2}


def test_new_map_revokes_flows_and_keeps_allowed_ones() -> None:
    f = make_filter()
    ssh, https = tcp(DEV_IP, PROD_IP, 40000, 22), tcp(DEV_IP, PROD_IP, 40001, 443)
    assert f.check_outbound(ssh, PROD, T0) and f.check_outbound(https, PROD, T0)
    assert f.load(netmap([SEED_RULES[1]], serial=2)) == 1
    assert not f.check_inbound(reply_to(ssh), PROD, T0)
    assert f.check_inbound(reply_to(https), PROD, T0)


def test_never_raises_on_garbage() -> None:
    f = make_filter([rule("any", ["*"], ["*"], "all", [])])
    rng = random.Random(7)
    samples = [tcp(DEV_IP, PROD_IP, 1, 22), udp(DEV_IP6, PROD_IP6, 1, 53), icmp_error(PROD_IP, DEV_IP, b"x" * 28)]
    for _ in range(3000):
        base = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        packet = bytes(base[: rng.randrange(len(base) + 1)])
        f.check_inbound(packet, None, T0)
        f.check_outbound(packet, PROD, T0)
        f.decide(packet)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45" + bytes(18),
        tcp(DEV_IP, PROD_IP, 1, 22)[:30],  # transport header cut short (total length still says 40)
        ipv4_packet(DEV_IP, PROD_IP, b"\x00\x16\x00\x16", protocol=6),  # 4 bytes of TCP
        ipv4_packet(DEV_IP, PROD_IP, b"\x00\x35\x00\x35", protocol=17),  # 4 bytes of UDP
        ipv6_packet(DEV_IP6, PROD_IP6, bytes(6), next_header=0),  # hop-by-hop header cut short
        b"\x75" + bytes(60),  # version 7
    ],
)
def test_malformed_packets_are_denied(packet: bytes) -> None:
    f = make_filter([rule("any", ["*"], ["*"], "all", [])])
    assert not f.check_outbound(packet, PROD, T0)
    assert f.stats.denied == {MALFORMED: 1}
    assert f.decide(packet) == Verdict(False, MALFORMED)


# ------------------------------------------------------------------------------------------------------------------
# Parsing: extension headers, fragments, ICMP errors
# ------------------------------------------------------------------------------------------------------------------


def test_ipv6_extension_headers_are_walked() -> None:
    f = make_filter()
    tcp_header = tcp(DEV_IP6, PROD_IP6, 40000, 22)[40:]
    hop_by_hop = bytes([60, 0]) + bytes(6)  # next: destination options
    destination_options = bytes([6, 1]) + bytes(14)  # next: TCP, 16 bytes long
    packet = ipv6_packet(DEV_IP6, PROD_IP6, hop_by_hop + destination_options + tcp_header, next_header=0)
    assert f.decide(packet) == Verdict(True, "dev-ssh")
    packet_80 = ipv6_packet(
        DEV_IP6, PROD_IP6, hop_by_hop + destination_options + tcp(DEV_IP6, PROD_IP6, 1, 80)[40:], next_header=0
    )
    assert f.decide(packet_80) == Verdict(False, DEFAULT_DENY)


def _v4_fragment(src: str, dst: str, payload: bytes, ident: int, offset_words: int, more: bool) -> bytes:
    packet = bytearray(ipv4_packet(src, dst, payload, protocol=17))
    struct.pack_into("!HH", packet, 4, ident, (0x2000 if more else 0) | offset_words)
    return bytes(packet)


def test_ipv4_fragments_follow_their_first_fragment() -> None:
    f = make_filter(PING_AND_DNS)
    first = _v4_fragment(DEV_IP, PROD_IP, struct.pack("!HHHH", 5000, 53, 3000, 0) + bytes(1472), 0x1234, 0, True)
    later = _v4_fragment(DEV_IP, PROD_IP, bytes(1480), 0x1234, 185, True)
    last = _v4_fragment(DEV_IP, PROD_IP, bytes(40), 0x1234, 370, False)
    stray = _v4_fragment(DEV_IP, PROD_IP, bytes(40), 0x9999, 370, False)
    assert not f.check_outbound(later, PROD, T0)  # no first fragment yet
    assert f.check_outbound(first, PROD, T0)
    assert f.check_outbound(later, PROD, T0) and f.check_outbound(last, PROD, T0)
    assert not f.check_outbound(stray, PROD, T0)
    assert not f.check_outbound(last, PROD, T0 + FRAGMENT_TIMEOUT)
    assert f.stats.fragments == 2 and f.stats.denied[UNTRACKED_FRAGMENT] == 3
    denied_first = _v4_fragment(DEV_IP, PROD_IP, struct.pack("!HHHH", 5000, 54, 3000, 0) + bytes(8), 7, 0, True)
    assert not f.check_outbound(denied_first, PROD, T0)
    assert not f.check_outbound(_v4_fragment(DEV_IP, PROD_IP, bytes(8), 7, 2, False), PROD, T0)


def test_ipv6_fragments_follow_their_first_fragment() -> None:
    f = make_filter(PING_AND_DNS)
    udp_header = struct.pack("!HHHH", 5000, 53, 3000, 0)
    first = ipv6_packet(DEV_IP6, PROD_IP6, struct.pack("!BBHI", 17, 0, 1, 42) + udp_header + bytes(64), next_header=44)
    later = ipv6_packet(DEV_IP6, PROD_IP6, struct.pack("!BBHI", 17, 0, 9 << 3, 42) + bytes(64), next_header=44)
    atomic = ipv6_packet(DEV_IP6, PROD_IP6, struct.pack("!BBHI", 17, 0, 0, 43) + udp_header, next_header=44)
    assert not f.check_outbound(later, PROD, T0)
    assert f.check_outbound(first, PROD, T0)
    assert f.check_outbound(later, PROD, T0)
    assert f.decide(atomic) == Verdict(True, "dev-dns")  # offset 0 without M: a whole packet


@pytest.mark.parametrize(("src", "dst"), [(DEV_IP, PROD_IP), (DEV_IP6, PROD_IP6)])
def test_icmp_errors_about_tracked_flows_pass(src: str, dst: str) -> None:
    f = make_filter()
    syn = tcp(src, dst, 40000, 22)
    other_syn = tcp(src, dst, 40001, 22)
    assert f.check_outbound(syn, PROD, T0)
    assert f.check_inbound(icmp_error(dst, src, syn), PROD, T0)
    assert f.stats.related == 1
    assert not f.check_inbound(icmp_error(dst, src, other_syn), PROD, T0)  # no such flow
    assert not f.check_inbound(icmp_error(dst, DEV2_IP if ":" not in src else "fd00::2", syn), PROD, T0)
    assert f.stats.related == 1


# ------------------------------------------------------------------------------------------------------------------
# Wired between two real devices, as the device hook will be
# ------------------------------------------------------------------------------------------------------------------


def test_filter_between_two_devices() -> None:
    """A (developers, 10.0.0.1) and B (production, 10.0.0.2): A may ssh to B; B may not open anything to A."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pair = make_pair()
    management = Ed25519PrivateKey.from_private_bytes(bytes(32))
    body = {
        "version": 1,
        "serial": 1,
        "issued_at": 1_700_000_000,
        "expires_at": 1_700_086_400,
        "peers": [
            peer(pair.pub_a, ["10.0.0.1/32", "fd00::1/128"], ["developers"]),
            peer(pair.pub_b, ["10.0.0.2/32", "fd00::2/128"], ["production"]),
        ],
        "acl": SEED_RULES,
    }
    document = sign_network_map(body, management)
    ctl_a, ctl_b = MeshController(management.public_key()), MeshController(management.public_key())
    ctl_a.apply_network_map(pair.a, document, 1_700_000_100, pair.net.now)
    ctl_b.apply_network_map(pair.b, document, 1_700_000_100, pair.net.now)
    delivered: dict[str, list[bytes]] = {"a": [], "b": []}

    def send(sender: str, packet: bytes) -> None:
        device, ctl, peer_key = (pair.a, ctl_a, pair.pub_b) if sender == "a" else (pair.b, ctl_b, pair.pub_a)
        if ctl.filter.check_outbound(packet, peer_key, pair.net.now):  # the hook before staging
            pair.net.send_packet(device, packet)
        for name, node, receiver_ctl, from_key in (
            ("a", pair.node_a, ctl_a, pair.pub_b),
            ("b", pair.node_b, ctl_b, pair.pub_a),
        ):
            for received in node.delivered:  # the hook after the allowed-IPs source check
                if receiver_ctl.filter.check_inbound(received, from_key, pair.net.now):
                    delivered[name].append(received)
            node.delivered.clear()

    syn = tcp("10.0.0.1", "10.0.0.2", 40000, 22)
    send("a", syn)
    send("b", reply_to(syn))
    send("b", tcp("10.0.0.2", "10.0.0.1", 40000, 22))  # B's own attempt: stopped at B's outbound hook
    assert delivered == {"a": [reply_to(syn)], "b": [syn]}
    assert ctl_b.filter.stats.denied == {DEFAULT_DENY: 1}
    assert (OUTBOUND, INBOUND) == (0, 1)
