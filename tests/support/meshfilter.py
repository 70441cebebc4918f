"""Mesh packet filters for the run tests: a filter for one side of a ``Pair``, packets of one flow, and a snapshot
of everything a filter holds, so that two twins can be compared after the run path and the per-packet path."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from support.helpers import ADDR_A, ADDR_A6, ADDR_B, ADDR_B6
from wgpy.keys import PublicKey
from wgpy.mesh import PacketFilter, parse_network_map
from wgpy.packetrun import PacketRun

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
TCP, UDP = 6, 17
SPORT, DPORT = 40000, 5201


def mesh_filter(key_a: PublicKey, key_b: PublicKey) -> PacketFilter:
    """A filter with a map of A (group "a") and B (group "b", the addresses of ``support.helpers``) that lets A
    open TCP and UDP flows to B on any port, and nothing else."""
    peers = [
        (key_a, [f"{ADDR_A}/32", f"{ADDR_A6}/128"], ["a"]),
        (key_b, [f"{ADDR_B}/32", f"{ADDR_B6}/128"], ["b"]),
    ]
    rules = [
        {"name": f"a-{p}", "src_groups": ["a"], "dst_groups": ["b"], "protocol": p, "ports": [], "action": "accept"}
        for p in ("tcp", "udp")
    ]
    packet_filter = PacketFilter()
    packet_filter.load(
        parse_network_map(
            {
                "version": 1,
                "serial": 1,
                "issued_at": 0,
                "expires_at": 2**40,
                "peers": [
                    {"public_key": k.to_base64(), "allowed_ips": a, "endpoint": None, "groups": g, "relay": False}
                    for k, a, g in peers
                ],
                "acl": rules,
            }
        )
    )
    return packet_filter


def flow_packet(
    *,
    v6: bool = False,
    reply: bool = False,
    proto: int = TCP,
    flags: int = ACK,
    length: int = 100,
    sport: int = SPORT,
    tos: int = 0,
    ident: int = 7,
    ttl: int = 64,
    fragment: int = 0x4000,
    seq: int = 1,
) -> bytes:
    """A packet of the flow A:SPORT -> B:DPORT (``reply``: B -> A), ``length`` bytes in all (zeros after the
    transport header). Checksums are left zero: the filter reads none."""
    if proto == TCP:
        transport_size = 20
        ports = (DPORT, sport) if reply else (sport, DPORT)
        transport = struct.pack("!HHIIBBHHH", *ports, seq, 1, 5 << 4, flags, 502, 0, 0)
    else:
        transport_size = 8
        ports = (DPORT, sport) if reply else (sport, DPORT)
        transport = struct.pack("!HHHH", *ports, length - (40 if v6 else 20), 0)
    header_size = 40 if v6 else 20
    assert length >= header_size + transport_size
    body = transport + bytes(length - header_size - transport_size)
    if v6:
        src, dst = (ipaddress.ip_address(a).packed for a in ((ADDR_B6, ADDR_A6) if reply else (ADDR_A6, ADDR_B6)))
        first = (6 << 28) | (tos << 20) | (ident & 0xFFFFF)
        return struct.pack("!IHBB16s16s", first, len(body), proto, ttl, src, dst) + body
    src, dst = (ipaddress.ip_address(a).packed for a in ((ADDR_B, ADDR_A) if reply else (ADDR_A, ADDR_B)))
    return struct.pack("!BBHHHBBH4s4s", 0x45, tos, length, ident, fragment, ttl, proto, 0, src, dst) + body


def open_flow(
    packet_filter: PacketFilter, peer: PublicKey, state: str, now: float, *, v6: bool = False, side: str = "a"
) -> None:
    """Put the flow A:SPORT -> B:DPORT in ``state`` on the filter of ``side`` ("a": A's, which sends to ``peer`` B;
    "b": B's, which receives from ``peer`` A): "none", "new" (A's SYN only), "established" (and B's SYN-ACK),
    "closed" (then an RST from A), or for UDP "udp-new" / "udp-established"."""
    if state == "none":
        return
    from_a, from_b = (
        (packet_filter.check_outbound, packet_filter.check_inbound)
        if side == "a"
        else (packet_filter.check_inbound, packet_filter.check_outbound)
    )
    if state.startswith("udp"):
        assert from_a(flow_packet(v6=v6, proto=UDP), peer, now)
        if state == "udp-established":
            assert from_b(flow_packet(v6=v6, proto=UDP, reply=True), peer, now)
        return
    small = 60 if v6 else 40
    assert from_a(flow_packet(v6=v6, flags=SYN, length=small), peer, now)
    if state in ("established", "closed"):
        assert from_b(flow_packet(v6=v6, reply=True, flags=SYN | ACK, length=small), peer, now)
    if state == "closed":
        assert from_a(flow_packet(v6=v6, flags=RST, length=small), peer, now)


def filter_state(packet_filter: PacketFilter) -> dict[str, Any]:
    """Everything the filter holds that a check can change: counters, flows (with their clocks), fragments."""
    stats = packet_filter.stats
    flows = sorted(
        (f.key, f.reply_key, f.kind, f.rule, f.state, f.timeout, f.last_seen, f.deadline, f.fins, f.created_at)
        for f in packet_filter.conntrack.flows()
    )
    heap = sorted((deadline, flow.key) for deadline, _, flow in packet_filter.conntrack._heap)
    return {
        "denied": dict(stats.denied),
        "accepted": dict(stats.accepted),
        "hits": stats.conntrack_hits,
        "related": stats.related,
        "fragments": stats.fragments,
        "flows": flows,
        "heap": heap,
        "fragment_trains": dict(packet_filter._fragments),
        "next_sweep": packet_filter._next_sweep_at,
    }


class CountingFilter:
    """A ``PacketFilter`` that records the packets its per-packet hooks see (``checked``) and the runs it passed
    whole (``runs``): which path the device took."""

    def __init__(self, inner: PacketFilter) -> None:
        self.inner = inner
        self.checked: list[bytes] = []
        self.runs = 0

    def check_outbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool:
        self.checked.append(bytes(packet))
        return self.inner.check_outbound(packet, peer_public_key, now)

    def check_inbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool:
        self.checked.append(bytes(packet))
        return self.inner.check_inbound(packet, peer_public_key, now)

    def check_outbound_run(self, run: PacketRun, peer_public_key: PublicKey | None, now: float) -> bool:
        passed = self.inner.check_outbound_run(run, peer_public_key, now)
        self.runs += passed
        return passed

    def check_inbound_run(self, run: PacketRun, peer_public_key: PublicKey | None, now: float) -> bool:
        passed = self.inner.check_inbound_run(run, peer_public_key, now)
        self.runs += passed
        return passed
