"""Per-source token bucket for handshake messages (whitepaper §5.3, kernel ``ratelimiter.c``).

Theory of operation: once the device is under load and a handshake message carries a valid cookie (mac2),
it still costs an X25519 computation to process, so each source address may start at most
``packets_per_second`` handshakes per second, with a burst of ``burst``. This module owns only that
accounting: the caller (``Device``) asks :meth:`RateLimiter.allow` after mac1/mac2 and before any
Diffie-Hellman, and drops the message with ``RATE_LIMITED`` when it says no. It never reads a clock: time
is the ``now`` argument (seconds, monotonic, counting through suspend), converted once per call to whole
nanoseconds so that bucket arithmetic is exact integer arithmetic as in the kernel.

The bucket follows the kernel's algorithm. Tokens are nanoseconds of credit: a packet costs
``1e9 / packets_per_second`` of them, the bucket holds at most ``burst`` packets' worth, and a new source
starts full minus the packet it is sending. So a fresh source gets ``burst`` packets at once, then one
every ``1 / packets_per_second`` seconds.

Sources are keyed as the kernel keys them: an IPv4 address by all 32 bits, an IPv6 address by its /64
(anyone who owns one address of a /64 usually owns all of them). An IPv4-mapped IPv6 address
(``::ffff:a.b.c.d``, as a dual-stack socket reports IPv4 peers) counts as that IPv4 address.

Memory is bounded, because every spoofed source address would otherwise add an entry. Entries that have
been idle for longer than ``1 s`` (the kernel's garbage-collection age) are collected lazily, at most once a
second, from the ``now`` passed in; the idle age is raised to the refill time ``burst / packets_per_second``
when that is longer, so that collecting an entry never changes an answer. The table is kept in least
recently used order (a hit moves its key to the end of an ``OrderedDict``), so a sweep stops at the first entry still
in use and costs O(entries collected). At most ``max_entries`` sources are tracked (default 2**16, the
kernel's cap on a machine with more than 1 GiB of RAM: 8192 buckets * 8); when the table is full a new
source is refused (fails closed, as the kernel does) until older entries go idle; a full table sweeps
before refusing, which is cheap for the same reason.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

__all__ = [
    "GC_IDLE_TIME",
    "MAX_ENTRIES",
    "PACKETS_BURSTABLE",
    "PACKETS_PER_SECOND",
    "RateLimiter",
]

PACKETS_PER_SECOND: Final = 20  # kernel ratelimiter.c PACKETS_PER_SECOND
PACKETS_BURSTABLE: Final = 5  # kernel ratelimiter.c PACKETS_BURSTABLE
GC_IDLE_TIME: Final = 1.0  # kernel ratelimiter.c: entries idle for more than NSEC_PER_SEC are collected
MAX_ENTRIES: Final = 2**16  # kernel ratelimiter.c max_entries = table_size * 8, table_size 8192 above 1 GiB

_NS_PER_SECOND: Final = 1_000_000_000
_GC_INTERVAL_NS: Final = _NS_PER_SECOND  # kernel ratelimiter.c: the gc work is requeued every HZ
_V4_SIZE: Final = 4
_V6_SIZE: Final = 16
_V6_KEY_SIZE: Final = 8  # kernel ratelimiter.c: "Only use 64 bits, so as to ratelimit the whole /64."
_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"  # RFC 4291 §2.5.5.2


class RateLimiter:
    """Token buckets keyed by source address, driven entirely by the caller's ``now``."""

    __slots__ = ("_idle_ns", "_max_entries", "_next_gc_ns", "_packet_cost", "_table", "_token_max")

    def __init__(
        self,
        packets_per_second: int = PACKETS_PER_SECOND,
        burst: int = PACKETS_BURSTABLE,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        """Create an empty limiter.

        Args:
            packets_per_second: Sustained rate allowed per source.
            burst: Packets a source may send at once after being quiet.
            max_entries: Sources tracked at most; beyond it new sources are refused.

        Raises:
            ValueError: A parameter is not positive, or the rate exceeds one packet per nanosecond.
        """
        if not 0 < packets_per_second <= _NS_PER_SECOND:
            raise ValueError("packets_per_second must be between 1 and 1e9")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._packet_cost = _NS_PER_SECOND // packets_per_second
        self._token_max = self._packet_cost * burst
        # Collecting an entry resets it to a full bucket, so wait at least until it would be full anyway.
        self._idle_ns = max(round(GC_IDLE_TIME * _NS_PER_SECOND), self._token_max)
        self._max_entries = max_entries
        # source key -> [tokens_ns, last_ns], least recently used first. An OrderedDict and not a dict: a dict
        # keeps the slots of deleted keys until it resizes, and finding its oldest key scans past all of them,
        # which would make every sweep O(entries deleted so far) under a flood. OrderedDict walks a linked list.
        self._table: OrderedDict[bytes, list[int]] = OrderedDict()
        self._next_gc_ns: int | None = None

    def allow(self, source: bytes, now: float) -> bool:
        """Charge one handshake message to ``source`` and say whether it may be processed.

        Args:
            source: The sender's raw address: 4 bytes (IPv4) or 16 bytes (IPv6, IPv4-mapped counts as IPv4).
            now: Monotonic time in seconds.

        Returns:
            ``True`` if the source has a token left. ``False`` if it is over its rate, if the table is
            full and the source is new, or if ``source`` is neither 4 nor 16 bytes long.
        """
        size = len(source)
        if size == _V4_SIZE:
            key = bytes(source)
        elif size == _V6_SIZE:
            key = bytes(source[12:]) if source[:12] == _V4_MAPPED_PREFIX else bytes(source[:_V6_KEY_SIZE])
        else:
            return False
        now_ns = round(now * _NS_PER_SECOND)
        table = self._table
        if self._next_gc_ns is None or now_ns >= self._next_gc_ns:
            self._collect(now_ns)
        entry = table.get(key)
        if entry is None:
            if len(table) >= self._max_entries:
                self._collect(now_ns)  # cheap: stops at the first entry still in use
                if len(table) >= self._max_entries:
                    return False
            table[key] = [self._token_max - self._packet_cost, now_ns]
            return True
        table.move_to_end(key)
        tokens, last_ns = entry
        if now_ns > last_ns:
            # A clock that steps back earns no credit and does not move last_ns back.
            tokens = min(self._token_max, tokens + now_ns - last_ns)
            entry[1] = now_ns
        if tokens >= self._packet_cost:
            entry[0] = tokens - self._packet_cost
            return True
        entry[0] = tokens
        return False

    def clear(self) -> None:
        """Forget every source."""
        self._table.clear()
        self._next_gc_ns = None

    def __len__(self) -> int:
        """The number of sources currently tracked."""
        return len(self._table)

    def _collect(self, now_ns: int) -> None:
        """Drop entries idle for longer than the idle age, oldest first."""
        self._next_gc_ns = now_ns + _GC_INTERVAL_NS
        table = self._table
        cutoff = now_ns - self._idle_ns
        while table:
            key, entry = next(iter(table.items()))
            if entry[1] >= cutoff:
                break  # everything after this was used more recently
            del table[key]
