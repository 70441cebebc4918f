"""Per-source rate limits of the routes anyone can call: a token bucket per (route class, source address).

Theory of operation: the routes that take a credential from a caller not yet authenticated (``POST
/api/v1/enrol`` with a setup key, ``POST /login`` of the dashboard with an admin token: class ``credentials``) and
those signed with a proof of possession (``POST /api/v1/token/refresh``, ``/api/v1/peer/*``: class ``peer``) are
counted per source address before the handler runs: before the body is read, any database work, signature or
X25519 check. A source over its bucket is answered ``429 rate_limited`` with ``Retry-After``, and counted; other
sources are served as before. IPv6 sources are keyed by their /64 (one host usually holds a whole /64), as the
kernel's ``ratelimiter.c`` does. The table of buckets is bounded (``max_sources``): past it the source seen least
recently is forgotten (it starts again with a full bucket), so memory stays bounded whatever the number of
addresses.

The source is the address of the TCP connection. Behind a reverse proxy that is the proxy, which then shares one
bucket for every client: list the proxy in ``trusted_proxies`` and the right-most ``X-Forwarded-For`` address
that is not a trusted proxy is taken instead. ``X-Forwarded-For`` is never read from anyone else (a client could
write any address in it).

Pure (no I/O): the clock is injected, monotonic seconds (the server passes ``time.monotonic``), not the server's
wall clock: a limit must not jump with it.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_LIMITS", "Limit", "RateLimits", "SourceLimiter", "route_class", "source_of", "take_token"]

MAX_SOURCES: Final = 65536  # buckets kept at once (ours: ~10 MB at most)


def take_token(tokens: float, at: float, now: float, *, rate: float, burst: float) -> tuple[bool, float]:
    """One token from a bucket that held ``tokens`` at time ``at`` and refills at ``rate`` a second up to ``burst``:
    whether there was one, and what the bucket holds at ``now`` after it. A clock stepped back refills nothing."""
    if now > at:
        tokens = min(burst, tokens + (now - at) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0
    return False, tokens


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` requests a second, up to ``burst`` at once; ``rate`` 0 turns the limit off."""

    rate: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``RATE/BURST`` (``10/200``), or ``0`` (no limit). Raises ``ValueError`` with a one-line message."""
        if text.strip() == "0":
            return cls(0.0, 0)
        rate_text, slash, burst_text = text.partition("/")
        try:
            rate, burst = float(rate_text), int(burst_text)
        except ValueError:
            raise ValueError(f"a rate limit is RATE/BURST (10/200) or 0, not {text[:40]!r}") from None
        if not slash or not 0 < rate <= 1e6 or not 1 <= burst <= 1_000_000:
            raise ValueError("a rate limit is RATE/BURST with RATE in (0, 1e6] per second and BURST 1-1000000")
        return cls(rate, burst)


DEFAULT_LIMITS: Final[Mapping[str, Limit]] = {
    # Enrolments and logins: a fleet enrolling behind one NAT gets 200 at once, then 10 a second.
    "credentials": Limit(10.0, 200),
    # Signed peer requests: agents behind one NAT refresh tokens, fetch maps and reconnect streams.
    "peer": Limit(100.0, 1000),
}


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The server's limits by route class (``credentials``, ``peer``) and the proxies whose ``X-Forwarded-For``
    is trusted."""

    limits: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    trusted_proxies: frozenset[str] = frozenset()


def route_class(method: str, path: str) -> str | None:
    """The limited class of a request, or ``None`` for the routes not limited here (admin routes, info, pages)."""
    if method == "POST" and path in ("/api/v1/enrol", "/login"):
        return "credentials"
    if path == "/api/v1/token/refresh" or path.startswith("/api/v1/peer/"):
        return "peer"
    return None


def _key(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def source_of(remote: str | None, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The source a request is counted under (see the module docstring); ``"unknown"`` without a peer address."""
    own = _key(remote) if remote else None
    if own is None:
        return "unknown"
    trusted = {key for key in (_key(proxy) for proxy in trusted_proxies) if key is not None}
    if own not in trusted or not forwarded_for:
        return own
    for hop in reversed(forwarded_for.split(",")[-32:]):  # bounded: at most the last 32 hops are read
        key = _key(hop)
        if key is None:
            return own  # a malformed hop: the proxy's own address, not a client-chosen one
        if key not in trusted:
            return key
    return own


class SourceLimiter:
    """Token buckets keyed by (class, source), at most ``max_sources`` of them (least recently seen forgotten)."""

    def __init__(
        self,
        config: RateLimits | None = None,
        *,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float],
    ) -> None:
        self.config = config if config is not None else RateLimits()
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: collections.OrderedDict[tuple[str, str], tuple[float, float]] = collections.OrderedDict()
        #: Requests refused per class (``429``), and sources forgotten to keep the table bounded.
        self.refused: collections.Counter[str] = collections.Counter()
        self.evicted = 0

    def __repr__(self) -> str:
        return f"SourceLimiter(sources={len(self._buckets)}, refused={dict(self.refused)})"

    def allow(self, kind: str, source: str) -> float:
        """Take one token of ``source``'s bucket of class ``kind``: 0.0 if allowed, else seconds until one is back."""
        limit = self.config.limits.get(kind)
        if limit is None or limit.rate <= 0:
            return 0.0
        now = self.clock()
        key = (kind, source)
        tokens, at = self._buckets.pop(key, (float(limit.burst), now))
        allowed, tokens = take_token(tokens, at, now, rate=limit.rate, burst=float(limit.burst))
        self._buckets[key] = (tokens, now)
        wait = 0.0
        if not allowed:
            self.refused[kind] += 1
            wait = (1.0 - tokens) / limit.rate
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
            self.evicted += 1
        return wait
