"""The mesh ACL packet filter: group rules from the network map, default deny, with connection tracking.

Theory of operation: ``PacketFilter`` sits in the data plane at two hooks. ``check_outbound`` sees each IP packet
read from the local TUN after cryptokey routing chose its peer and before it is staged for encryption;
``check_inbound`` sees each decrypted packet after the device's allowed-IPs source check and before it is written
to the TUN. Each returns ``True`` (pass) or ``False`` (drop, counted). It never raises for any bytes, never reads a
clock (``now`` is the device's monotonic time) and does no I/O; the optional ``AuditLog`` writes through
``logging``.

Who is who. The filter knows the addresses of *every* peer of the mesh, the local device included, from the map's
allowed IPs (an ``AllowedIPs`` table of map peers, longest prefix wins). A packet's source and destination
addresses each map to the peer that owns them and thence to that peer's groups; an address no map peer owns has
no groups and matches only ``"*"``. On a new flow the remote end (the source of an inbound packet, the destination
of an outbound one) must belong to the very peer the packet travels to or from, or the packet is dropped as
``spoofed-source`` (this stops a peer whose allowed IPs cover the local device's addresses from borrowing the
local device's groups).

Decision for a packet, cheapest first:

1. if the map in force has expired and the controller runs fail-closed: drop (``map-expired``);
2. parse the IPv4/IPv6 header (``malformed`` if it is not a plausible packet or its transport header is cut short);
3. a later IPv4/IPv6 fragment (no transport header) passes only if the first fragment of the same datagram passed
   within ``FRAGMENT_TIMEOUT``, else ``fragment``;
4. a packet of a tracked flow, either direction, passes (``conntrack.py``), as does an ICMP/ICMPv6 error
   (destination unreachable, packet too big, time exceeded, parameter problem) that quotes a tracked flow
   and is addressed to the quoted packet's sender (RFC 4890 asks that packet-too-big is never filtered blindly);
5. otherwise the rules of the map are evaluated in order and the first rule that matches decides; none matching
   is ``default-deny``. An accepted TCP, UDP, ICMP echo request or other-protocol packet creates a flow, if the
   table has room (else ``table-full``, fail closed). ICMP that is not an echo request, and TCP RSTs, are decided
   per packet and create no flow.

A rule matches when the source address's groups meet ``src_groups`` (or it holds ``"*"``), the destination's meet
``dst_groups`` (or ``"*"``), the protocol matches (``icmp`` is ICMP in IPv4 and ICMPv6 in IPv6; ``all`` is any
protocol) and, if the rule lists ports, the TCP/UDP destination port lies in one of its ranges.

Speed: rules are not scanned per packet. Peers with the same group set share a *group signature*; for each pair of
signatures met, the rules that can match are compiled once into four short lists (TCP, UDP, ICMP, other) of
``(port ranges, accept, name)``, cut after the first rule with no port condition (nothing after it can match).
A new flow costs two ``AllowedIPs`` lookups, one dict probe and a walk of that short list; a packet of a tracked
flow costs one dict probe. Drops are counted per rule name (or reason) in ``stats.denied``. A whole run of packets
(a TSO read, a UDP GRO read: ``wgpy.packetrun.PacketRun``) costs one probe and a few array compares when every
packet belongs to one tracked flow and none closes it (``check_outbound_run``/``check_inbound_run``); any other run
is checked packet by packet, so that the two ways always leave the same counters and flows (the tests compare them).

Parsing limits, stated: IPv4 options are skipped by IHL. IPv6 hop-by-hop, routing, destination-options,
fragment and AH headers are walked (at most ``MAX_EXTENSION_HEADERS``); ESP, or any unknown next header, is
taken as the transport protocol and so only matches ``all`` rules. Jumbograms are not supported. The ICMP error
check reads the quoted packet's fixed header only (no extension headers). Fragments are not reassembled, and a
later fragment that overtakes its first fragment is dropped.

Loading a new map (``load``) rebuilds the address table and rule index and re-checks every tracked flow against
the new rules: flows the new map no longer allows are removed at once, so revoking access also cuts existing
connections.
"""

from __future__ import annotations

import bisect
import collections
import struct
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

import numpy as np

from ..allowedips import AllowedIPs
from ..keys import PublicKey
from ..packetrun import PacketRun
from .audit import AuditLog
from .conntrack import (
    CLOSED,
    DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FLOWS_PER_PEER,
    ECHO_MARK,
    ESTABLISHED,
    INBOUND,
    KIND_ICMP,
    KIND_OTHER,
    KIND_TCP,
    KIND_UDP,
    NEW,
    OUTBOUND,
    ConnTrack,
    FlowKey,
)
from .netmap import DEFAULT_DENY, WILDCARD_GROUP, AclRule, NetworkMap

__all__ = [
    "DEFAULT_DENY",
    "FRAGMENT_TIMEOUT",
    "INBOUND",
    "MALFORMED",
    "MAP_EXPIRED",
    "MAX_EXTENSION_HEADERS",
    "MAX_FRAGMENT_TRAINS",
    "OUTBOUND",
    "SPOOFED_SOURCE",
    "TABLE_FULL",
    "UNTRACKED_FRAGMENT",
    "FilterStats",
    "PacketFilter",
    "PacketFilterHook",
    "PreparedMap",
    "Verdict",
]

# Counter names of drops that no rule made (netmap.RESERVED_RULE_NAMES keeps rules from taking them).
MALFORMED: Final = "malformed"
SPOOFED_SOURCE: Final = "spoofed-source"
TABLE_FULL: Final = "table-full"  # the connection table, or the peer's share of it
MAP_EXPIRED: Final = "map-expired"
UNTRACKED_FRAGMENT: Final = "fragment"

FRAGMENT_TIMEOUT: Final = 30.0  # Linux ipfrag_time: how long a datagram's later fragments may trail its first
MAX_FRAGMENT_TRAINS: Final = 4096  # fragmented datagrams remembered at once (ours)
MAX_EXTENSION_HEADERS: Final = 8  # IPv6 extension headers walked before giving up (ours)
SWEEP_INTERVAL: Final = 1.0  # seconds between amortised expiry sweeps of the flow table (ours)
MAX_PAIR_CACHE: Final = 65536  # compiled group-signature pairs kept before the cache is reset (ours)
MAX_OWNER_CACHE: Final = 65536  # addresses whose owner is remembered before the cache is reset (ours)

_V4_MIN: Final = 20  # RFC 791 §3.1
_V6_HEADER: Final = 40  # RFC 8200 §3
_TCP_MIN: Final = 20  # RFC 9293 §3.1: data offset at least 5 words
_UDP_HEADER: Final = 8  # RFC 768
_ICMP_HEADER: Final = 8  # RFC 792 / RFC 4443 §2.1: type, code, checksum, 4 bytes of rest-of-header
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_PROTO_ICMP: Final = 1
_PROTO_ICMPV6: Final = 58
_V6_FRAGMENT: Final = 44  # RFC 8200 §4.5
_V6_AH: Final = 51  # RFC 4302 §2.2: length in 4-octet units minus 2
_V6_EXTENSIONS: Final = frozenset({0, 43, 44, 51, 60})  # hop-by-hop, routing, fragment, AH, destination options
_TCP_SYN: Final = 0x02
_TCP_ACK: Final = 0x10
_TCP_RST: Final = 0x04
_TCP_FIN_RST: Final = 0x05

# ICMP classes (the "info" slot of a parsed ICMP packet)
_ICMP_OTHER: Final = 0
_ICMP_ECHO_REQUEST: Final = 1
_ICMP_ECHO_REPLY: Final = 2
_ICMP_ERROR: Final = 3
# type -> class, per family: RFC 792 (echo 8/0; unreachable 3, time exceeded 11, parameter problem 12) and
# RFC 4443 (echo 128/129; unreachable 1, packet too big 2, time exceeded 3, parameter problem 4).
_ICMP4_CLASS: Final = {8: _ICMP_ECHO_REQUEST, 0: _ICMP_ECHO_REPLY, 3: _ICMP_ERROR, 11: _ICMP_ERROR, 12: _ICMP_ERROR}
_ICMP6_CLASS: Final = {
    128: _ICMP_ECHO_REQUEST,
    129: _ICMP_ECHO_REPLY,
    1: _ICMP_ERROR,
    2: _ICMP_ERROR,
    3: _ICMP_ERROR,
    4: _ICMP_ERROR,
}

# Fragment states of a parsed packet
_NOT_FRAGMENT: Final = 0
_FIRST_FRAGMENT: Final = 1
_LATER_FRAGMENT: Final = 2

# The header bytes every packet of a run must share with the first for ``PacketFilter._check_run``: all up to the
# transport ports, but the fields the filter never reads (IPv4 TOS, id, TTL and checksum; IPv6 traffic class, flow
# label and hop limit), so that one masked compare shows that each packet parses as the first does.
_RUN_MASK_V4: Final = np.frombuffer(bytes.fromhex("ff00ffff0000ffff00ff0000") + b"\xff" * 12, np.uint8)
_RUN_MASK_V6: Final = np.frombuffer(bytes.fromhex("f0000000ffffff00") + b"\xff" * 36, np.uint8)

_U16: Final = struct.Struct("!H")
_PORTS: Final = struct.Struct("!HH")
# One unpack per header on the per-packet path (style guide §8).
_V4_HEADER: Final = struct.Struct(
    "!BxHHHxB2x4s4s"
)  # RFC 791 §3.1: IHL, total length, id, flags|offset, proto, src, dst
_V6_HEADER_FIELDS: Final = struct.Struct("!4xHB1x16s16s")  # RFC 8200 §3: payload length, next header, src, dst
_TCP_FIELDS: Final = struct.Struct("!HH9xB")  # RFC 9293 §3.1: source port, destination port, control bits
_V6_FRAGMENT_HEADER: Final = struct.Struct("!BxHI")  # next header, reserved, offset|M, identification

_DIRECTION_NAMES: Final = ("outbound", "inbound")
_KIND_OF_PROTOCOL: Final = {"tcp": (KIND_TCP,), "udp": (KIND_UDP,), "icmp": (KIND_ICMP,)}
_ALL_KINDS: Final = (KIND_OTHER, KIND_ICMP, KIND_TCP, KIND_UDP)

# A parsed packet: (kind, proto, src, dst, sport, dport, info, l4_offset, fragment_state, fragment_id), where
# info is the TCP flags for TCP and the ICMP class for ICMP (0 otherwise). A plain tuple: this is per packet.
_Parsed = tuple[int, int, bytes, bytes, int, int, int, int, int, int]
_CompiledRule = tuple[tuple[tuple[int, int], ...], bool, str]  # (port ranges, empty = any; accept; rule name)
# Per kind, the decision as a step function of the destination port: verdicts[bisect_right(starts, dport) - 1].
_PortTable = tuple[tuple[int, ...], tuple["Verdict", ...]]
_Compiled = tuple[_PortTable, _PortTable, _PortTable, _PortTable]  # indexed by kind
_FragmentKey = tuple[int, int, bytes, bytes, int]  # (direction, proto, src, dst, identification)
# (src_groups, src has "*", dst_groups, dst has "*", kinds the protocol covers, compiled rule)
_RuleMatcher = tuple[frozenset[str], bool, frozenset[str], bool, tuple[int, ...], _CompiledRule]


@dataclass(frozen=True, slots=True)
class PreparedMap:
    """A map whose owner table ``PacketFilter.prepare`` built, ready for ``PacketFilter.install``."""

    netmap: NetworkMap | None
    owners: AllowedIPs[_Owner]
    signature_of: dict[frozenset[str], int]


class PacketFilterHook(Protocol):
    """What the ``Device`` calls; ``PacketFilter`` implements it. ``False`` means drop."""

    def check_outbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool: ...

    def check_inbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool: ...


class Verdict(NamedTuple):
    """A stateless decision: whether the packet would open a flow, and the rule (or reason) that said so."""

    accept: bool
    rule: str


@dataclass(slots=True)
class FilterStats:
    """Counters of the filter. ``denied`` and ``accepted`` are keyed by rule name or drop reason."""

    denied: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: collections.Counter[str] = field(default_factory=collections.Counter)  # new flows / stateless passes
    conntrack_hits: int = 0
    related: int = 0  # ICMP errors passed because they quote a tracked flow
    fragments: int = 0  # later fragments passed


class _Owner:
    """A map peer as the address table knows it."""

    __slots__ = ("key_raw", "public_key", "signature")

    def __init__(self, public_key: PublicKey, signature: int) -> None:
        self.public_key = public_key
        self.key_raw = public_key.raw
        self.signature = signature


_UNRESOLVED: Final = _Owner(PublicKey(bytes(32)), -1)  # "not in the owner cache" (None means "owned by nobody")
_DEFAULT_DENY: Final = Verdict(False, DEFAULT_DENY)
_SPOOFED: Final = Verdict(False, SPOOFED_SOURCE)


def _parse(packet: bytes | memoryview) -> _Parsed | None:
    """Read what the filter needs from an IP packet, or ``None`` if it is not a plausible one."""
    size = len(packet)
    if size < _V4_MIN:
        return None
    fragment_state = _NOT_FRAGMENT
    fragment_id = 0
    version = packet[0] >> 4
    if version == 4:
        first, total, ident, fragment, proto, src, dst = _V4_HEADER.unpack_from(packet)
        offset = (first & 0x0F) << 2
        if offset < _V4_MIN or total < offset or total > size:
            return None
        size = total
        if fragment & 0x3FFF:  # RFC 791 §3.1: MF flag or a fragment offset
            fragment_id = ident
            if fragment & 0x1FFF:
                return (_kind(proto, _PROTO_ICMP), proto, src, dst, 0, 0, 0, offset, _LATER_FRAGMENT, fragment_id)
            fragment_state = _FIRST_FRAGMENT
        icmp = _PROTO_ICMP
    elif version == 6:
        if size < _V6_HEADER:
            return None
        payload, proto, src, dst = _V6_HEADER_FIELDS.unpack_from(packet)
        size = _V6_HEADER + payload
        if size > len(packet):
            return None
        offset = _V6_HEADER
        if proto in _V6_EXTENSIONS:
            for _ in range(MAX_EXTENSION_HEADERS):
                if offset + 8 > size:
                    return None
                if proto == _V6_FRAGMENT:
                    proto, fragment, fragment_id = _V6_FRAGMENT_HEADER.unpack_from(packet, offset)
                    offset += 8
                    if fragment & 0xFFF8:  # RFC 8200 §4.5: a fragment offset
                        kind = _kind(proto, _PROTO_ICMPV6)
                        return (kind, proto, src, dst, 0, 0, 0, offset, _LATER_FRAGMENT, fragment_id)
                    if fragment & 1:  # M flag; offset 0 without M is an atomic fragment (RFC 6946): a whole packet
                        fragment_state = _FIRST_FRAGMENT
                elif proto == _V6_AH:
                    proto, length = packet[offset], packet[offset + 1]
                    offset += (length + 2) * 4
                else:
                    proto, length = packet[offset], packet[offset + 1]
                    offset += (length + 1) * 8
                if proto not in _V6_EXTENSIONS:
                    break
            else:
                return None
        icmp = _PROTO_ICMPV6
    else:
        return None
    if proto == _PROTO_TCP:
        if offset + _TCP_MIN > size:
            return None
        sport, dport, flags = _TCP_FIELDS.unpack_from(packet, offset)
        return (KIND_TCP, proto, src, dst, sport, dport, flags, offset, fragment_state, fragment_id)
    if proto == _PROTO_UDP:
        if offset + _UDP_HEADER > size:
            return None
        sport, dport = _PORTS.unpack_from(packet, offset)
        return (KIND_UDP, proto, src, dst, sport, dport, 0, offset, fragment_state, fragment_id)
    if proto == icmp:
        if offset + _ICMP_HEADER > size:
            return None
        icmp_class = (_ICMP4_CLASS if icmp == _PROTO_ICMP else _ICMP6_CLASS).get(packet[offset], _ICMP_OTHER)
        sport = dport = 0
        if icmp_class == _ICMP_ECHO_REQUEST:
            (sport,) = _U16.unpack_from(packet, offset + 4)
            dport = ECHO_MARK
        elif icmp_class == _ICMP_ECHO_REPLY:
            sport = ECHO_MARK
            (dport,) = _U16.unpack_from(packet, offset + 4)
        return (KIND_ICMP, proto, src, dst, sport, dport, icmp_class, offset, fragment_state, fragment_id)
    return (KIND_OTHER, proto, src, dst, 0, 0, 0, offset, fragment_state, fragment_id)


def _kind(proto: int, icmp: int) -> int:
    if proto == _PROTO_TCP:
        return KIND_TCP
    if proto == _PROTO_UDP:
        return KIND_UDP
    return KIND_ICMP if proto == icmp else KIND_OTHER


def _quoted_keys(packet: bytes, l4: int, version: int) -> tuple[FlowKey, FlowKey] | None:
    """The flow keys (under either hook) of the packet that an ICMP error quotes, or ``None``."""
    start = l4 + _ICMP_HEADER
    if version == 4:
        if len(packet) < start + _V4_MIN + 8:
            return None
        first = packet[start]
        header = (first & 0x0F) << 2
        if first >> 4 != 4 or header < _V4_MIN or len(packet) < start + header + 8:
            return None
        proto = packet[start + 9]
        src = packet[start + 12 : start + 16]
        dst = packet[start + 16 : start + 20]
        inner = start + header
        icmp = _PROTO_ICMP
    else:
        if len(packet) < start + _V6_HEADER + 8 or packet[start] >> 4 != 6:
            return None
        proto = packet[start + 6]
        src = packet[start + 8 : start + 24]
        dst = packet[start + 24 : start + 40]
        inner = start + _V6_HEADER
        icmp = _PROTO_ICMPV6
    if proto == _PROTO_TCP or proto == _PROTO_UDP:
        sport, dport = _PORTS.unpack_from(packet, inner)
    elif proto == icmp:
        icmp_class = (_ICMP4_CLASS if icmp == _PROTO_ICMP else _ICMP6_CLASS).get(packet[inner], _ICMP_OTHER)
        (ident,) = _U16.unpack_from(packet, inner + 4)
        if icmp_class == _ICMP_ECHO_REQUEST:
            sport, dport = ident, ECHO_MARK
        elif icmp_class == _ICMP_ECHO_REPLY:
            sport, dport = ECHO_MARK, ident
        else:
            return None
    else:
        sport = dport = 0
    return (OUTBOUND, proto, src, dst, sport, dport), (INBOUND, proto, src, dst, sport, dport)


class PacketFilter:
    """The ACL filter with connection tracking; see the module docstring for the decision order."""

    __slots__ = (
        "_compiled_rules",
        "_deadline",
        "_fragments",
        "_next_sweep_at",
        "_no_groups",
        "_owner_cache",
        "_owners",
        "_pairs",
        "_signatures",
        "audit",
        "conntrack",
        "netmap",
        "stats",
    )

    def __init__(
        self,
        *,
        max_flows: int = DEFAULT_MAX_FLOWS,
        max_flows_per_peer: int = DEFAULT_MAX_FLOWS_PER_PEER,
        audit: AuditLog | None = None,
    ) -> None:
        """Create a filter with no map: until ``load`` is called, everything is denied (``default-deny``).

        Args:
            max_flows: The bound of the connection tracking table.
            max_flows_per_peer: The bound of one peer's share of it (a new flow beyond it is ``table-full``).
            audit: Where connection records go; ``None`` writes none.
        """
        self.conntrack = ConnTrack(max_flows, max_flows_per_peer)
        self.audit = audit
        self.stats = FilterStats()
        self.netmap: NetworkMap | None = None
        self._owners: AllowedIPs[_Owner] = AllowedIPs()
        self._owner_cache: dict[bytes, _Owner | None] = {}
        self._signatures: list[frozenset[str]] = [frozenset()]
        self._no_groups = 0
        self._compiled_rules: tuple[_RuleMatcher, ...] = ()
        self._pairs: dict[tuple[int, int], _Compiled] = {}
        self._deadline: float | None = None
        self._fragments: dict[_FragmentKey, float] = {}
        self._next_sweep_at = float("-inf")

    # --- configuration ----------------------------------------------------------------------------------------------

    def load(self, netmap: NetworkMap | None) -> int:
        """Put ``netmap``'s peers and rules in force (``None``: no map, deny everything).

        Tracked flows that the new rules would not accept, or whose remote address now belongs to another peer,
        are removed.

        Returns:
            The number of flows removed.
        """
        steps = self.prepare(netmap)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                prepared: PreparedMap = done.value
                return self.install(prepared)

    def prepare(self, netmap: NetworkMap | None, peers_per_step: int = 500) -> Generator[int, None, PreparedMap]:
        """Build the owner table of ``netmap`` in steps of ``peers_per_step`` peers, beside the table in force (a
        65,535-peer map takes a second): a generator whose return value ``install`` puts in force at once."""
        owners: AllowedIPs[_Owner] = AllowedIPs()
        signature_of: dict[frozenset[str], int] = {frozenset(): 0}
        if netmap is not None:
            for done, peer in enumerate(netmap.peers, start=1):
                signature = signature_of.setdefault(peer.groups, len(signature_of))
                owner = _Owner(peer.public_key, signature)
                for network in peer.allowed_ips:
                    owners.insert(network, owner)
                if done % peers_per_step == 0:
                    yield done
        return PreparedMap(netmap, owners, signature_of)

    def install(self, prepared: PreparedMap) -> int:
        """Put a ``prepare``d map in force; returns the number of tracked flows removed (see ``load``)."""
        netmap, owners, signature_of = prepared.netmap, prepared.owners, prepared.signature_of
        compiled: list[_RuleMatcher] = []
        for rule in netmap.rules if netmap is not None else ():
            compiled.append(
                (
                    rule.src_groups,
                    WILDCARD_GROUP in rule.src_groups,
                    rule.dst_groups,
                    WILDCARD_GROUP in rule.dst_groups,
                    _KIND_OF_PROTOCOL.get(rule.protocol, _ALL_KINDS),
                    _compile_entry(rule),
                )
            )
        self.netmap = netmap
        self._owners = owners
        self._owner_cache = {}
        self._signatures = list(signature_of)
        self._no_groups = 0
        self._compiled_rules = tuple(compiled)
        self._pairs = {}
        self._fragments.clear()
        removed = 0
        for flow in self.conntrack.flows():
            direction, _proto, src, dst, _sport, dport = flow.key
            verdict = self._verdict(direction, flow.kind, src, dst, dport, flow.peer)
            if verdict.accept:
                flow.rule = verdict.rule
            else:
                self.conntrack.remove(flow)
                removed += 1
        return removed

    def set_deadline(self, deadline: float | None) -> None:
        """From monotonic ``deadline`` on, deny every packet (``map-expired``); ``None`` lifts it (fail-closed)."""
        self._deadline = deadline

    # --- the hooks --------------------------------------------------------------------------------------------------

    def check_outbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool:
        """Should this packet from the TUN be sent to ``peer_public_key``? Counts and audits a drop."""
        return self._check(OUTBOUND, packet, peer_public_key, now)

    def check_inbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool:
        """Should this packet decrypted from ``peer_public_key`` be delivered? Counts and audits a drop."""
        return self._check(INBOUND, packet, peer_public_key, now)

    def check_outbound_run(self, run: PacketRun, peer_public_key: PublicKey | None, now: float) -> bool:
        """``check_outbound`` of every packet of ``run`` at once, where that is cheap to show (``_check_run``):
        ``True`` when every one passes; ``False`` changes nothing, and the caller checks them one by one."""
        return self._check_run(OUTBOUND, run, now)

    def check_inbound_run(self, run: PacketRun, peer_public_key: PublicKey | None, now: float) -> bool:
        """``check_inbound`` of every packet of ``run`` at once (see ``check_outbound_run``)."""
        return self._check_run(INBOUND, run, now)

    def decide(self, packet: bytes, direction: int = OUTBOUND, peer_public_key: PublicKey | None = None) -> Verdict:
        """The rule decision for ``packet`` as the first packet of a flow, ignoring tracked flows and the expiry.

        Changes nothing (no counters, no flows, no audit): for diagnostics and tests.
        """
        parsed = _parse(packet)
        if parsed is None:
            return Verdict(False, MALFORMED)
        kind, _proto, src, dst, _sport, dport, _info, _l4, fragment_state, _id = parsed
        if fragment_state == _LATER_FRAGMENT:
            return Verdict(False, UNTRACKED_FRAGMENT)
        return self._verdict(direction, kind, src, dst, dport, peer_public_key)

    def expire(self, now: float) -> int:
        """Remove idle flows and stale fragment records now (the hooks also do it, at most once a second)."""
        self._next_sweep_at = now + SWEEP_INTERVAL
        fragments = self._fragments
        for key in [key for key, expires_at in fragments.items() if expires_at <= now]:
            del fragments[key]
        return self.conntrack.expire(now)

    def groups_of(self, address: bytes) -> frozenset[str]:
        """The groups of the map peer that owns raw ``address`` (empty if none does)."""
        owner = self._owners.lookup(address)
        return self._signatures[owner.signature] if owner is not None else frozenset()

    # --- internals --------------------------------------------------------------------------------------------------

    def _check(self, direction: int, packet: bytes, peer: PublicKey | None, now: float) -> bool:
        stats = self.stats
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            stats.denied[MAP_EXPIRED] += 1
            return False
        if now >= self._next_sweep_at:
            self.expire(now)
        parsed = _parse(packet)
        if parsed is None:
            stats.denied[MALFORMED] += 1
            return False
        kind, proto, src, dst, sport, dport, info, l4, fragment_state, fragment_id = parsed
        if fragment_state == _LATER_FRAGMENT:
            expires_at = self._fragments.get((direction, proto, src, dst, fragment_id))
            if expires_at is not None and now < expires_at:
                stats.fragments += 1
                return True
            stats.denied[UNTRACKED_FRAGMENT] += 1
            return False
        key = (direction, proto, src, dst, sport, dport)
        conntrack = self.conntrack
        flow = conntrack.table.get(key)
        if flow is not None:
            if now - flow.last_seen >= flow.timeout:
                conntrack.remove(flow)
            else:
                is_reply = flow.key[0] != direction
                if (
                    kind == KIND_TCP
                    and flow.state == CLOSED
                    and not is_reply
                    and info & (_TCP_SYN | _TCP_ACK) == _TCP_SYN
                ):
                    # A new connection reusing the ports of a closed one: decide it afresh.
                    conntrack.remove(flow)
                else:
                    flow.last_seen = now
                    if flow.state != ESTABLISHED or (kind == KIND_TCP and info & _TCP_FIN_RST):
                        conntrack.advance(flow, is_reply, info if kind == KIND_TCP else 0, now)
                    stats.conntrack_hits += 1
                    if fragment_state:
                        self._note_fragment(direction, proto, src, dst, fragment_id, now)
                    return True
        if kind == KIND_ICMP and info == _ICMP_ERROR and self._related(packet, l4, dst, now):
            stats.related += 1
            return True
        return self._new_flow(direction, peer, now, parsed)

    def _check_run(self, direction: int, run: PacketRun, now: float) -> bool:
        """Whether every packet of ``run`` is a packet of one tracked TCP or UDP flow, established or new and in its
        original direction, that none of them closes (no FIN or RST) nor fragments: the case where ``_check`` of each, in order, would only count a
        conntrack hit and set the flow's ``last_seen``. Then it does just that and returns ``True``. Anything else
        returns ``False`` having changed nothing (but the sweep that the first packet's ``_check`` would have made
        anyway), and the caller takes the packets one by one, through every other branch of the decision.

        The first and the last packet are parsed as ``_check`` parses them; the ones between must carry the first
        one's header bytes up to the ports (IPv4 without options, IPv6 without extension headers; the fields the
        filter never reads may differ: ``_RUN_MASK_V4``/``_V6``), total length included, so each parses alike.
        """
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            return False
        if now >= self._next_sweep_at:
            self.expire(now)
        parsed = _parse(run.view(0))
        if parsed is None:
            return False
        kind, proto, src, dst, sport, dport, _info, l4, fragment_state, _id = parsed
        mask = _RUN_MASK_V4 if len(src) == 4 else _RUN_MASK_V6
        if (kind != KIND_TCP and kind != KIND_UDP) or fragment_state != _NOT_FRAGMENT or l4 + 4 != len(mask):
            return False
        flow = self.conntrack.table.get((direction, proto, src, dst, sport, dport))
        if flow is None or now - flow.last_seen >= flow.timeout:
            return False
        if flow.state != ESTABLISHED and (flow.state != NEW or flow.key[0] != direction):
            return False  # a closed flow, or a reply that would establish a new one: one by one
        count, stride, buffer = run.packets_in, run.stride, run.buffer
        if count > 1:
            last = _parse(run.view(count - 1))
            if last is None or last[:6] != parsed[:6] or last[7:9] != parsed[7:9]:
                return False
            if count > 2:
                heads = np.ndarray((count - 2, len(mask)), np.uint8, buffer, stride, (stride, 1))  # rows 1 .. n-2
                first = np.frombuffer(buffer, np.uint8, len(mask))
                if ((heads ^ first) & mask).any():
                    return False
        if kind == KIND_TCP and (np.ndarray((count,), np.uint8, buffer, l4 + 13, (stride,)) & _TCP_FIN_RST).any():
            return False
        flow.last_seen = now
        self.stats.conntrack_hits += count
        return True

    def _new_flow(self, direction: int, peer: PublicKey | None, now: float, parsed: _Parsed) -> bool:
        kind, proto, src, dst, sport, dport, info, _l4, fragment_state, fragment_id = parsed
        stats = self.stats
        accept, rule = self._verdict(direction, kind, src, dst, dport, peer)
        tracked = False
        if accept:
            if (kind == KIND_ICMP and info != _ICMP_ECHO_REQUEST) or (kind == KIND_TCP and info & _TCP_RST):
                pass  # decided per packet: no reply is expected (ICMP other than echo, or a TCP RST)
            elif (
                self.conntrack.create(
                    (direction, proto, src, dst, sport, dport),
                    (1 - direction, proto, dst, src, dport, sport),
                    kind,
                    rule,
                    peer,
                    now,
                )
                is None
            ):
                accept, rule = False, TABLE_FULL
            else:
                tracked = True
        if accept:
            stats.accepted[rule] += 1
            if fragment_state:
                self._note_fragment(direction, proto, src, dst, fragment_id, now)
        else:
            stats.denied[rule] += 1
        audit = self.audit
        if audit is not None:
            ported = kind == KIND_TCP or kind == KIND_UDP
            audit.connection(
                now,
                direction=_DIRECTION_NAMES[direction],
                peer=peer,
                src=src,
                dst=dst,
                proto=proto,
                sport=sport if ported else None,
                dport=dport if ported else None,
                rule=rule,
                action="accept" if accept else "deny",
                limited=not tracked,
            )
        return accept

    def _verdict(
        self, direction: int, kind: int, src: bytes, dst: bytes, dport: int, peer: PublicKey | None
    ) -> Verdict:
        cache = self._owner_cache
        src_owner = cache.get(src, _UNRESOLVED)
        if src_owner is _UNRESOLVED:
            src_owner = self._resolve(src)
        dst_owner = cache.get(dst, _UNRESOLVED)
        if dst_owner is _UNRESOLVED:
            dst_owner = self._resolve(dst)
        remote = src_owner if direction == INBOUND else dst_owner
        if peer is not None and remote is not None and remote.key_raw != peer.raw:
            return _SPOOFED
        pair = (
            src_owner.signature if src_owner is not None else self._no_groups,
            dst_owner.signature if dst_owner is not None else self._no_groups,
        )
        compiled = self._pairs.get(pair)
        if compiled is None:
            compiled = self._compile_pair(pair)
        starts, verdicts = compiled[kind]
        return verdicts[bisect.bisect_right(starts, dport) - 1]

    def _resolve(self, address: bytes) -> _Owner | None:
        """The map peer owning ``address`` (longest prefix), remembered until the next map or a full cache."""
        owner = self._owners.lookup(address)
        cache = self._owner_cache
        if len(cache) >= MAX_OWNER_CACHE:
            cache.clear()
        cache[address] = owner
        return owner

    def _compile_pair(self, pair: tuple[int, int]) -> _Compiled:
        """The rules that can match between two group signatures, as one port table per kind."""
        src_groups = self._signatures[pair[0]]
        dst_groups = self._signatures[pair[1]]
        lists: list[list[_CompiledRule]] = [[], [], [], []]
        closed = [False, False, False, False]  # a kind's list ended with a rule that matches any port
        for rule_src, src_any, rule_dst, dst_any, kinds, entry in self._compiled_rules:
            if not (src_any or not rule_src.isdisjoint(src_groups)):
                continue
            if not (dst_any or not rule_dst.isdisjoint(dst_groups)):
                continue
            for kind in kinds:
                if not closed[kind]:
                    lists[kind].append(entry)
                    closed[kind] = not entry[0]
        compiled = (_port_table(lists[0]), _port_table(lists[1]), _port_table(lists[2]), _port_table(lists[3]))
        if len(self._pairs) >= MAX_PAIR_CACHE:
            self._pairs.clear()
        self._pairs[pair] = compiled
        return compiled

    def _related(self, packet: bytes, l4: int, outer_dst: bytes, now: float) -> bool:
        keys = _quoted_keys(packet, l4, packet[0] >> 4)
        if keys is None:
            return False
        for key in keys:
            if key[2] != outer_dst:
                return False  # an error must go back to the sender of the packet it quotes
            flow = self.conntrack.table.get(key)
            if flow is not None and now - flow.last_seen < flow.timeout:
                return True
        return False

    def _note_fragment(self, direction: int, proto: int, src: bytes, dst: bytes, fragment_id: int, now: float) -> None:
        fragments = self._fragments
        if len(fragments) >= MAX_FRAGMENT_TRAINS:
            for stale in [key for key, expires_at in fragments.items() if expires_at <= now]:
                del fragments[stale]
            if len(fragments) >= MAX_FRAGMENT_TRAINS:
                del fragments[next(iter(fragments))]  # the oldest: its later fragments will be dropped
        fragments[direction, proto, src, dst, fragment_id] = now + FRAGMENT_TIMEOUT


def _compile_entry(rule: AclRule) -> _CompiledRule:
    return (rule.ports, rule.action == "accept", rule.name)


def _port_table(entries: list[_CompiledRule]) -> _PortTable:
    """First-match evaluation of ``entries`` for every destination port, as a step function.

    Every range end is a step boundary, so within a step each range either holds every port or none: evaluating
    the rules once at the step's start decides the whole step. Adjacent steps with the same verdict merge.
    """
    bounds = {0}
    for ranges, _accept, _name in entries:
        for lo, hi in ranges:
            bounds.add(lo)
            bounds.add(hi + 1)
    starts: list[int] = []
    verdicts: list[Verdict] = []
    for start in sorted(bounds):
        verdict = _DEFAULT_DENY
        for ranges, accept, name in entries:
            if not ranges or any(lo <= start <= hi for lo, hi in ranges):
                verdict = Verdict(accept, name)
                break
        if not verdicts or verdicts[-1] != verdict:
            starts.append(start)
            verdicts.append(verdict)
    return tuple(starts), tuple(verdicts)
