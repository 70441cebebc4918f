"""Edges of the mesh packet filter that the other mesh tests leave open: a timeout met *exactly*, between two of the
once-a-second expiry sweeps.

The filter removes idle flows in two places: the amortised sweep (at most once a second) and the lookup of each
packet. A test that checks a packet at exactly ``last_seen + timeout`` right after a sweep only sees the sweep's
answer; here a denied packet runs the sweep half a second earlier, so the lookup alone must decide.

Expected values come from the README's "Mesh mode" section (idle timeouts: TCP 120 s before a reply, 3600 s
established, 10 s after RST or FIN both ways; UDP 30 s without a reply, 180 s after) and from Linux conntrack,
whose ``nf_ct_is_expired`` takes a flow as expired once ``timeout - now <= 0``: a flow idle for exactly its timeout
is gone, the same instant as the sweep takes it. Fragments: the filter's ``FRAGMENT_TIMEOUT`` is Linux
``ipfrag_time`` (30 s), counted the same way.
"""

from __future__ import annotations

import struct

import pytest
from support.helpers import ADDR_A, ADDR_B, ipv4_packet, make_pair
from support.meshfilter import ACK, SYN, TCP, UDP, flow_packet, mesh_filter, open_flow

from wgpy.keys import PublicKey
from wgpy.mesh import PacketFilter
from wgpy.packetrun import PacketRun

T0 = 1000.0


def _keys() -> tuple[PublicKey, PublicKey]:
    pair = make_pair()
    return pair.peer_a.public_key, pair.peer_b.public_key


KEY_A, KEY_B = _keys()

# (flow state as support.meshfilter.open_flow builds it on A's side, its idle timeout from the README, protocol)
TIMEOUTS = [
    ("new", 120.0, TCP),
    ("established", 3600.0, TCP),
    ("closed", 10.0, TCP),
    ("udp-new", 30.0, UDP),
    ("udp-established", 180.0, UDP),
]


def _sweep(packet_filter: PacketFilter, now: float) -> None:
    """Run the once-a-second sweep at ``now`` with a packet the rules deny (B opening a flow to A: only A may open
    flows to B), so that no sweep runs again before ``now + 1``."""
    assert not packet_filter.check_inbound(flow_packet(reply=True, sport=40001, flags=SYN), KEY_B, now)


def _reply(proto: int) -> bytes:
    """B's reply to A on the flow A:SPORT -> B:DPORT."""
    return flow_packet(reply=True, proto=proto, flags=ACK)


@pytest.mark.parametrize(("state", "timeout", "proto"), TIMEOUTS)
def test_a_flow_idle_for_exactly_its_timeout_is_gone_between_sweeps(state: str, timeout: float, proto: int) -> None:
    """README idle timeouts; Linux ``nf_ct_is_expired``: at ``last_seen + timeout`` the flow has expired, so B's
    reply is a new flow from B, which the map denies, and the lookup that found the idle flow dropped it."""
    packet_filter = mesh_filter(KEY_A, KEY_B)
    open_flow(packet_filter, KEY_B, state, T0)
    _sweep(packet_filter, T0 + timeout - 0.5)
    assert len(packet_filter.conntrack) == 1  # still live half a second before its timeout
    assert not packet_filter.check_inbound(_reply(proto), KEY_B, T0 + timeout)
    assert len(packet_filter.conntrack) == 0


@pytest.mark.parametrize(("state", "timeout", "proto"), TIMEOUTS)
def test_a_flow_just_inside_its_timeout_still_passes(state: str, timeout: float, proto: int) -> None:
    """The other side of the same edge: a reply a quarter second before the timeout is a packet of the flow."""
    packet_filter = mesh_filter(KEY_A, KEY_B)
    open_flow(packet_filter, KEY_B, state, T0)
    _sweep(packet_filter, T0 + timeout - 0.5)
    assert packet_filter.check_inbound(_reply(proto), KEY_B, T0 + timeout - 0.25)


def _run(packets: list[bytes], stride: int) -> PacketRun:
    buffer = bytearray(len(packets) * stride)
    for i, packet in enumerate(packets):
        buffer[i * stride : i * stride + len(packet)] = packet
    return PacketRun(buffer, len(packets), stride, len(packets[0]), len(packets[-1]))


def test_a_run_of_an_expired_flow_is_not_passed_whole() -> None:
    """README: a GRO/TSO run of one *tracked* flow passes with one check, and the run path and the per-packet path
    agree. A TCP flow established at T0 is gone at exactly T0 + 3600 s, so the run check must refuse the run and
    each packet of it is then denied one by one."""
    packet_filter = mesh_filter(KEY_A, KEY_B)
    open_flow(packet_filter, KEY_B, "established", T0)
    _sweep(packet_filter, T0 + 3600.0 - 0.5)
    replies = [flow_packet(reply=True, length=200, seq=1 + i * 160) for i in range(4)]
    run = _run(replies, 200)
    assert not packet_filter.check_inbound_run(run, KEY_B, T0 + 3600.0)
    assert [packet_filter.check_inbound(run[i], KEY_B, T0 + 3600.0) for i in range(len(run))] == [False] * 4


def _icmp_unreachable(quoted: bytes) -> bytes:
    """ICMP destination unreachable (RFC 792: type 3; code 4, fragmentation needed) from B to A quoting the IP
    header and first 8 bytes of ``quoted``."""
    return ipv4_packet(ADDR_B, ADDR_A, struct.pack("!BBHI", 3, 4, 0, 0) + quoted[:28], protocol=1)


def test_an_icmp_error_about_a_flow_idle_for_exactly_its_timeout_is_denied() -> None:
    """README: ICMP errors pass when they quote a *tracked* flow. A's unreplied SYN is tracked for 120 s (README),
    so B's unreachable quoting it passes at T0 + 119.6 s and is denied, as B's own ICMP the map does not allow, at
    exactly T0 + 120 s."""
    packet_filter = mesh_filter(KEY_A, KEY_B)
    syn = flow_packet(flags=SYN, length=40)
    assert packet_filter.check_outbound(syn, KEY_B, T0)
    _sweep(packet_filter, T0 + 119.5)
    assert packet_filter.check_inbound(_icmp_unreachable(syn), KEY_B, T0 + 119.6)
    assert not packet_filter.check_inbound(_icmp_unreachable(syn), KEY_B, T0 + 120.0)
    assert packet_filter.stats.related == 1


def test_a_later_fragment_exactly_fragment_timeout_after_its_first_is_dropped() -> None:
    """``FRAGMENT_TIMEOUT`` (Linux ``ipfrag_time``, 30 s): a later fragment passes only within 30 s of its first
    fragment; at exactly 30 s it is dropped as ``fragment``, whether or not a sweep has just run."""
    packet_filter = mesh_filter(KEY_A, KEY_B)
    first = flow_packet(proto=UDP, fragment=0x2000, length=100)  # MF set, offset 0 (RFC 791 §3.1)
    later = flow_packet(proto=UDP, fragment=10, length=100)  # offset 10 x 8 bytes, the last fragment
    assert packet_filter.check_outbound(first, KEY_B, T0)
    _sweep(packet_filter, T0 + 29.5)
    assert packet_filter.check_outbound(later, KEY_B, T0 + 29.75)
    assert not packet_filter.check_outbound(later, KEY_B, T0 + 30.0)
    assert packet_filter.stats.fragments == 1
    assert packet_filter.stats.denied["fragment"] == 1
