"""``PacketFilter.check_outbound_run`` / ``check_inbound_run`` against ``check_outbound`` / ``check_inbound`` of
each packet of the run, in order.

The oracle is the per-packet filter: two filters built and fed alike, one asked about the run (and, when it says
``False``, about each packet after that, as the device then does), the other about each packet. Their answers and
everything they hold afterwards (counters, flows with their clocks and states, the expiry heap, fragment records)
must be equal; a run pass must mean that every packet passed. The runs are of one flow in either direction, in
every conntrack state, with one packet changed in a way the filter reads (FIN, RST, another port or protocol, a
fragment, IPv4 options, a shorter total length) or does not read (TOS, id, TTL), and with the map expired or the
once-a-second sweep due.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import make_pair
from support.meshfilter import ACK, FIN, PSH, RST, SYN, UDP, filter_state, flow_packet, mesh_filter, open_flow

from wgpy.keys import PublicKey
from wgpy.mesh import PacketFilter
from wgpy.packetrun import PacketRun

T0 = 1000.0
STATES = ("none", "new", "established", "closed", "udp-new", "udp-established")
CHANGES = ("none", "fin", "rst", "syn", "psh", "port", "proto", "fragment", "options", "shorter", "tos", "ident", "ttl")


def _keys() -> tuple[PublicKey, PublicKey]:
    pair = make_pair()
    return pair.peer_a.public_key, pair.peer_b.public_key


KEY_A, KEY_B = _keys()


def _changed(packet: bytes, change: str, v6: bool, tcp: bool) -> bytes:
    """``packet`` with one change (see the module docstring), its length kept."""
    data = bytearray(packet)
    l4 = 40 if v6 else 20
    if change in ("fin", "rst", "syn", "psh") and tcp:
        data[l4 + 13] |= {"fin": FIN, "rst": RST, "syn": SYN, "psh": PSH}[change]
    elif change == "port":
        data[l4 : l4 + 2] = struct.pack("!H", 40001)
    elif change == "proto":
        data[6 if v6 else 9] = 17 if tcp else 6
    elif change == "fragment" and not v6:
        data[6:8] = b"\x20\x00"  # MF: a first fragment
    elif change == "options" and not v6:
        data[0] = 0x46  # IHL 6: the transport header moves by four bytes
    elif change == "shorter":
        offset = 4 if v6 else 2
        total = int.from_bytes(data[offset : offset + 2], "big")
        data[offset : offset + 2] = (total - 4).to_bytes(2, "big")
    elif change == "tos":
        data[1] ^= 0x03 if not v6 else 0x30
    elif change == "ident":
        data[5 if not v6 else 3] ^= 0x5A
    elif change == "ttl":
        data[7 if v6 else 8] -= 1
    return bytes(data)


def _run(packets: list[bytes], stride: int) -> PacketRun:
    buffer = bytearray(len(packets) * stride)
    for i, packet in enumerate(packets):
        buffer[i * stride : i * stride + len(packet)] = packet
    return PacketRun(buffer, len(packets), stride, len(packets[0]), len(packets[-1]))


def _twins(state: str, v6: bool) -> tuple[PacketFilter, PacketFilter]:
    twins = mesh_filter(KEY_A, KEY_B), mesh_filter(KEY_A, KEY_B)
    for packet_filter in twins:
        open_flow(packet_filter, KEY_B, state, T0, v6=v6)
    return twins


def _per_packet(packet_filter: PacketFilter, inbound: bool, run: PacketRun, now: float) -> list[bool]:
    check = packet_filter.check_inbound if inbound else packet_filter.check_outbound
    return [check(run[i], KEY_B, now) for i in range(len(run))]


def _compare(state: str, v6: bool, inbound: bool, packets: list[bytes], stride: int, now: float, **kw: Any) -> bool:
    fast, slow = _twins(state, v6)
    if kw.get("expired"):
        fast.set_deadline(now)
        slow.set_deadline(now)
    run = _run(packets, stride)
    check_run = fast.check_inbound_run if inbound else fast.check_outbound_run
    passed = check_run(run, KEY_B, now)
    answers = [True] * len(run) if passed else _per_packet(fast, inbound, run, now)
    assert answers == _per_packet(slow, inbound, run, now)
    assert filter_state(fast) == filter_state(slow)
    return passed


@settings(max_examples=400, deadline=None)
@given(
    state=st.sampled_from(STATES),
    v6=st.booleans(),
    inbound=st.booleans(),
    count=st.integers(1, 20),
    size=st.integers(64, 1420),
    last_cut=st.integers(0, 30),
    change=st.sampled_from(CHANGES),
    where=st.integers(0, 19),
    slack=st.sampled_from([0, 4, 16]),
    dt=st.sampled_from([0.0, 0.0, 0.5, 2.0, 400.0, 10_000.0]),
    expired=st.sampled_from([False, False, False, True]),
)
def test_a_run_check_answers_and_leaves_what_its_packets_checks_do(
    state: str,
    v6: bool,
    inbound: bool,
    count: int,
    size: int,
    last_cut: int,
    change: str,
    where: int,
    slack: int,
    dt: float,
    expired: bool,
) -> None:
    tcp = not state.startswith("udp")
    reply = inbound  # outbound: A's packets to B; inbound: B's replies to A
    proto = 6 if tcp else UDP
    lengths = [size] * (count - 1) + [max(size - last_cut, 64)]
    packets = [
        flow_packet(v6=v6, reply=reply, proto=proto, length=length, seq=1 + i * size)
        for i, length in enumerate(lengths)
    ]
    where %= count
    packets[where] = _changed(packets[where], change, v6, tcp)
    _compare(state, v6, inbound, packets, size + slack, T0 + dt, expired=expired)


def test_an_established_flow_passes_as_a_run_in_both_directions() -> None:
    """The run path is taken where it should be (the property above would hold if it never were)."""
    for v6 in (False, True):
        outbound = [flow_packet(v6=v6, length=1420, seq=1 + i * 1380) for i in range(44)]
        assert _compare("established", v6, False, outbound, 1424, T0 + 1.0)
        replies = [flow_packet(v6=v6, reply=True, length=1420, ident=i) for i in range(44)]
        assert _compare("established", v6, True, replies, 1420, T0 + 1.0)
        assert _compare("udp-established", v6, False, [flow_packet(v6=v6, proto=UDP)] * 3, 112, T0)
        # a new flow passes in its own direction; its first reply must go one by one (it establishes the flow)
        assert _compare("new", v6, False, outbound, 1424, T0 + 1.0)
        assert not _compare("new", v6, True, replies, 1420, T0 + 1.0)


def test_a_run_pass_counts_every_packet_and_touches_the_flow() -> None:
    packet_filter = mesh_filter(KEY_A, KEY_B)
    open_flow(packet_filter, KEY_B, "established", T0)
    hits = packet_filter.stats.conntrack_hits
    run = _run([flow_packet(length=1000, seq=1 + i * 960) for i in range(16)], 1008)
    assert packet_filter.check_outbound_run(run, KEY_B, T0 + 5.0)
    assert packet_filter.stats.conntrack_hits == hits + 16
    (flow,) = packet_filter.conntrack.flows()
    assert flow.last_seen == T0 + 5.0


def test_what_a_run_check_refuses() -> None:
    base = [flow_packet(length=200, seq=1 + i * 160) for i in range(5)]
    assert _compare("established", False, False, base, 200, T0)
    for change in ("fin", "rst", "port", "proto", "fragment", "options", "shorter"):
        for where in (0, 2) if change == "shorter" else (0, 2, 4):  # a last packet may be shorter than its slot
            packets = list(base)
            packets[where] = _changed(packets[where], change, False, True)
            assert not _compare("established", False, False, packets, 200, T0), (change, where)
    for change in ("tos", "ident", "ttl", "syn", "psh"):
        packets = list(base)
        packets[2] = _changed(packets[2], change, False, True)
        assert _compare("established", False, False, packets, 200, T0), change
    assert not _compare("established", False, False, base, 200, T0, expired=True)
    for state in ("none", "closed"):
        assert not _compare(state, False, False, base, 200, T0)
    assert not _compare("established", False, False, [flow_packet(flags=SYN | ACK | FIN)], 100, T0)
    assert _compare("established", False, False, [flow_packet(flags=ACK)], 100, T0)
