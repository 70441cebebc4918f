"""Connection tracking for the mesh packet filter: which flows exist, so that their replies may pass.

Theory of operation: a *flow* is created when the ACL accepts the first packet of a connection (``acl.py`` decides;
this module only remembers). It is stored under two keys, the tuple of its original direction and the reversed
tuple its replies carry, so a packet of either direction finds it with one dict probe. A key is
``(direction, proto, src, dst, sport, dport)``:

* ``direction`` is the hook that saw the packet, ``OUTBOUND`` (from the local TUN towards a peer) or ``INBOUND``
  (decrypted, from a peer towards the TUN); the reply key has the other one, so a reply is only recognised on the
  opposite hook from its connection's first packet;
* ``src``/``dst`` are the raw 4- or 16-byte addresses; ``proto`` is the IP protocol number;
* ``sport``/``dport`` are the TCP/UDP ports; an ICMP echo request carries ``(identifier, ECHO_MARK)`` and an echo
  reply ``(ECHO_MARK, identifier)``, so a reply matches its request's reversed key while a request travelling the
  other way does not (Linux conntrack keys ICMP on type, code and identifier in the same spirit);
  other protocols carry ``(0, 0)``.

State is kept as simply as a bounded table allows (a reduced form of Linux ``nf_conntrack_proto_tcp.c``):
``NEW`` until a reply is seen, then ``ESTABLISHED``; for TCP, a RST, or a FIN from both sides, moves the flow to
``CLOSED`` and its short timeout. Each state has an idle timeout (``*_TIMEOUT``, seconds); a flow idle for longer
is gone. Time is the ``now`` the caller passes; nothing here reads a clock.

Expiry is lazy and amortised: a lookup that finds an idle flow removes it, and a heap of deadlines, each no later
than its flow's true expiry, lets ``expire(now)`` remove everything due in O(expired · log n) without walking the
table. A flow whose timeout grows is re-queued only when its old deadline comes up; one whose timeout shrinks (a
close) is queued again at once, so closed flows free their slot promptly.

The table is bounded (``max_flows``), and so is each peer's share of it (``max_flows_per_peer``, a quarter of the
default table): one peer, compromised or broken, that opens connection after connection fills its own share, not the
table the other peers' connections need. When the table or the peer's share is full, expired flows are swept first;
if it is still full, ``create`` returns ``None`` and the filter drops the packet: new connections fail closed,
existing ones carry on.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Final

from ..keys import PublicKey

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_FLOWS",
    "DEFAULT_MAX_FLOWS_PER_PEER",
    "ECHO_MARK",
    "ESTABLISHED",
    "ICMP_TIMEOUT",
    "INBOUND",
    "KIND_ICMP",
    "KIND_OTHER",
    "KIND_TCP",
    "KIND_UDP",
    "NEW",
    "OTHER_TIMEOUT",
    "OUTBOUND",
    "TCP_CLOSE_TIMEOUT",
    "TCP_ESTABLISHED_TIMEOUT",
    "TCP_NEW_TIMEOUT",
    "UDP_STREAM_TIMEOUT",
    "UDP_TIMEOUT",
    "ConnTrack",
    "Flow",
    "FlowKey",
]

OUTBOUND: Final = 0  # packet read from the local TUN, about to be encrypted to a peer
INBOUND: Final = 1  # packet decrypted from a peer, about to be written to the TUN

# What the filter's rules and this table tell apart (the rule table of a group pair is indexed by it).
KIND_OTHER: Final = 0
KIND_ICMP: Final = 1  # ICMP in IPv4 and ICMPv6 in IPv6
KIND_TCP: Final = 2
KIND_UDP: Final = 3

NEW: Final = 0  # only the original direction seen so far
ESTABLISHED: Final = 1  # a reply was seen (ICMP and other protocols start here: they have no further states)
CLOSED: Final = 2  # TCP: RST seen, or FIN from both sides

ECHO_MARK: Final = 0x10000  # stands for "echo" in the port slot of an ICMP key: outside the 16-bit port range

TCP_NEW_TIMEOUT: Final = 120.0  # Linux nf_conntrack_tcp_timeout_syn_sent
TCP_ESTABLISHED_TIMEOUT: Final = 3600.0  # ours; Linux keeps 5 days, but this table is bounded and shared
TCP_CLOSE_TIMEOUT: Final = 10.0  # Linux nf_conntrack_tcp_timeout_close
UDP_TIMEOUT: Final = 30.0  # Linux nf_conntrack_udp_timeout (no reply yet)
UDP_STREAM_TIMEOUT: Final = 180.0  # Linux nf_conntrack_udp_timeout_stream (before 5.x; 120 since)
ICMP_TIMEOUT: Final = 30.0  # Linux nf_conntrack_icmp_timeout
OTHER_TIMEOUT: Final = 600.0  # Linux nf_conntrack_generic_timeout
DEFAULT_MAX_FLOWS: Final = 65536  # ours; Linux sizes nf_conntrack_max from memory
DEFAULT_MAX_FLOWS_PER_PEER: Final = 16384  # ours: no one peer may hold more than a quarter of the default table

_TCP_FIN: Final = 0x01  # RFC 9293 §3.1 control bits
_TCP_RST: Final = 0x04
_HEAP_SLACK: Final = 1024  # stale heap entries tolerated beyond twice the live flows before a rebuild

FlowKey = tuple[int, int, bytes, bytes, int, int]
"""``(direction, proto, src, dst, sport, dport)``; see the module docstring."""

# (kind, state) -> idle timeout
_TIMEOUTS: Final[dict[tuple[int, int], float]] = {
    (KIND_TCP, NEW): TCP_NEW_TIMEOUT,
    (KIND_TCP, ESTABLISHED): TCP_ESTABLISHED_TIMEOUT,
    (KIND_TCP, CLOSED): TCP_CLOSE_TIMEOUT,
    (KIND_UDP, NEW): UDP_TIMEOUT,
    (KIND_UDP, ESTABLISHED): UDP_STREAM_TIMEOUT,
    (KIND_ICMP, ESTABLISHED): ICMP_TIMEOUT,
    (KIND_OTHER, ESTABLISHED): OTHER_TIMEOUT,
}


class Flow:
    """One tracked connection. ``key`` is its original direction; ``rule`` the rule that accepted it."""

    __slots__ = (
        "created_at",
        "deadline",
        "fins",
        "key",
        "kind",
        "last_seen",
        "peer",
        "reply_key",
        "rule",
        "state",
        "timeout",
    )

    def __init__(
        self, key: FlowKey, reply_key: FlowKey, kind: int, rule: str, peer: PublicKey | None, now: float
    ) -> None:
        self.key = key
        self.reply_key = reply_key
        self.kind = kind
        self.rule = rule
        self.peer = peer
        self.state = NEW if kind == KIND_TCP or kind == KIND_UDP else ESTABLISHED
        self.timeout = _TIMEOUTS[kind, self.state]
        self.created_at = now
        self.last_seen = now
        self.deadline = now + self.timeout  # the heap entry that counts; never later than last_seen + timeout
        self.fins = 0  # bit 0: FIN seen in the original direction, bit 1: in the reply direction

    @property
    def direction(self) -> int:
        return self.key[0]

    def __repr__(self) -> str:
        states = ("NEW", "ESTABLISHED", "CLOSED")
        return f"Flow(proto={self.key[1]}, {states[self.state]}, rule={self.rule!r})"


class ConnTrack:
    """The bounded table of flows, keyed by both directions."""

    __slots__ = ("_count", "_heap", "_per_peer", "_seq", "max_flows", "max_flows_per_peer", "table")

    def __init__(
        self, max_flows: int = DEFAULT_MAX_FLOWS, max_flows_per_peer: int = DEFAULT_MAX_FLOWS_PER_PEER
    ) -> None:
        if max_flows < 1 or max_flows_per_peer < 1:
            raise ValueError("max_flows and max_flows_per_peer must be at least 1")
        self.max_flows = max_flows
        self.max_flows_per_peer = max_flows_per_peer
        self._per_peer: dict[PublicKey | None, int] = {}  # live flows per peer (no entry: none)
        # Both keys of every live flow. Public so that the filter's hot path can probe it without a call.
        self.table: dict[FlowKey, Flow] = {}
        self._heap: list[tuple[float, int, Flow]] = []
        self._seq = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        """The number of flows (not keys)."""
        return self._count

    def flows(self) -> Iterator[Flow]:
        """Every flow once (a snapshot, safe to remove from while iterating)."""
        return iter([flow for key, flow in self.table.items() if key is flow.key])

    def get(self, key: FlowKey, now: float) -> Flow | None:
        """The live flow that ``key`` belongs to (either direction), or ``None``; an idle flow found is removed."""
        flow = self.table.get(key)
        if flow is None:
            return None
        if now - flow.last_seen >= flow.timeout:
            self.remove(flow)
            return None
        return flow

    def create(
        self, key: FlowKey, reply_key: FlowKey, kind: int, rule: str, peer: PublicKey | None, now: float
    ) -> Flow | None:
        """Track a new flow, or return ``None`` if the table is full of live flows (the caller fails closed)."""
        for existing in (self.table.get(key), self.table.get(reply_key)):
            if existing is not None:
                self.remove(existing)
        per_peer = self._per_peer
        if self._count >= self.max_flows or per_peer.get(peer, 0) >= self.max_flows_per_peer:
            self.expire(now)
            if self._count >= self.max_flows or per_peer.get(peer, 0) >= self.max_flows_per_peer:
                return None
        flow = Flow(key, reply_key, kind, rule, peer, now)
        self.table[key] = flow
        self.table[reply_key] = flow
        self._count += 1
        per_peer[peer] = per_peer.get(peer, 0) + 1
        heapq.heappush(self._heap, (flow.deadline, next(self._seq), flow))
        return flow

    def advance(self, flow: Flow, is_reply: bool, tcp_flags: int, now: float) -> None:
        """Move ``flow``'s state for a packet seen at ``now`` (the caller has set ``last_seen`` already)."""
        state = flow.state
        if flow.kind == KIND_TCP:
            if tcp_flags & _TCP_RST:
                state = CLOSED
            elif tcp_flags & _TCP_FIN:
                flow.fins |= 2 if is_reply else 1
                if flow.fins == 3:
                    state = CLOSED
            elif is_reply and state == NEW:
                state = ESTABLISHED
        elif is_reply and state == NEW:
            state = ESTABLISHED
        if state == flow.state:
            return
        flow.state = state
        flow.timeout = timeout = _TIMEOUTS[flow.kind, state]
        deadline = now + timeout
        if deadline < flow.deadline:  # the timeout shrank: queue the earlier deadline so the slot frees on time
            flow.deadline = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), flow))

    def remove(self, flow: Flow) -> None:
        """Forget ``flow`` (a no-op if it is already gone)."""
        table = self.table
        if table.get(flow.key) is flow:
            del table[flow.key]
            if table.get(flow.reply_key) is flow:
                del table[flow.reply_key]
            self._count -= 1
            left = self._per_peer[flow.peer] - 1
            if left:
                self._per_peer[flow.peer] = left
            else:
                del self._per_peer[flow.peer]
            flow.deadline = -1.0  # no heap entry matches it any more

    def clear(self) -> None:
        self.table.clear()
        self._heap.clear()
        self._per_peer.clear()
        self._count = 0

    def flows_of(self, peer: PublicKey | None) -> int:
        """How many live flows ``peer`` holds (its share of the table in use)."""
        return self._per_peer.get(peer, 0)

    def expire(self, now: float) -> int:
        """Remove every flow idle past its timeout at ``now``; return how many were removed."""
        heap = self._heap
        removed = 0
        while heap and heap[0][0] <= now:
            deadline, _, flow = heapq.heappop(heap)
            if deadline != flow.deadline:
                continue  # superseded by an earlier deadline, or the flow was removed
            expires_at = flow.last_seen + flow.timeout
            if expires_at <= now:
                self.remove(flow)
                removed += 1
            else:
                flow.deadline = expires_at
                heapq.heappush(heap, (expires_at, next(self._seq), flow))
        if len(heap) > 2 * self._count + _HEAP_SLACK:
            self._heap = [(flow.deadline, next(self._seq), flow) for flow in self.flows()]
            heapq.heapify(self._heap)
        return removed
