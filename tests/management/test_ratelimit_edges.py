"""Edges of the per-source rate limits (wgpy.management.ratelimit) that the mutation audit found untested.

Expected values come from the contract (docs/management-api.md, "Rate limits per source address": ``credentials``
10 a second, 200 at once; ``peer`` 100 a second, 1000 at once; ``CLASS=0`` turns one off; ``RATE/BURST``; IPv6
sources counted by /64; at most 65,536 buckets, the least recently seen source forgotten; the right-most
``X-Forwarded-For`` address that is not a trusted proxy, never believed from any other address; admin routes and
``GET /api/v1/info`` not limited) and the token-bucket definition (RFC 2697 section 3.1 / RFC 4115: a bucket
refills at its rate up to its size, and a request passes when a whole token is there).
"""

from __future__ import annotations

import pytest

from wgpy.management.ratelimit import (
    DEFAULT_LIMITS,
    MAX_SOURCES,
    Limit,
    RateLimits,
    SourceLimiter,
    route_class,
    source_of,
    take_token,
)


class Frozen:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_default_limits_are_the_contracts() -> None:
    """The contract: credentials 10 a second, 200 at once; peer 100 a second, 1000 at once; 65,536 buckets."""
    assert DEFAULT_LIMITS["credentials"] == Limit(10.0, 200)
    assert DEFAULT_LIMITS["peer"] == Limit(100.0, 1000)
    assert MAX_SOURCES == 65536
    assert dict(RateLimits().limits) == dict(DEFAULT_LIMITS)


def test_exactly_the_burst_passes_at_once_then_the_rate() -> None:
    """Token bucket: a full bucket of ``burst`` tokens lets exactly ``burst`` requests through at one instant;
    the next waits ``1/rate`` seconds, and after that wait exactly one more passes."""
    clock = Frozen()
    limiter = SourceLimiter(RateLimits({"credentials": Limit(4.0, 5)}), clock=clock)
    assert [limiter.allow("credentials", "s") for _ in range(5)] == [0.0] * 5
    assert limiter.allow("credentials", "s") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.allow("credentials", "s") == 0.0
    assert limiter.allow("credentials", "s") > 0
    assert limiter.refused["credentials"] == 2


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    """Token bucket: the refill stops at the bucket's size, so a source idle for an hour still gets only
    ``burst`` requests at once."""
    clock = Frozen()
    limiter = SourceLimiter(RateLimits({"credentials": Limit(10.0, 3)}), clock=clock)
    assert all(limiter.allow("credentials", "s") == 0.0 for _ in range(3))
    clock.now += 3600
    assert [limiter.allow("credentials", "s") == 0.0 for _ in range(4)] == [True, True, True, False]


def test_take_token_edges() -> None:
    """Token bucket arithmetic: one whole token is needed (0.99 is not enough), a refill is ``elapsed * rate``
    capped at ``burst``, and a clock that steps back refills nothing (the module's own rule)."""
    assert take_token(0.99, 0.0, 0.0, rate=1.0, burst=5.0) == (False, 0.99)
    assert take_token(1.0, 0.0, 0.0, rate=1.0, burst=5.0) == (True, 0.0)
    allowed, left = take_token(0.0, 10.0, 12.0, rate=1.5, burst=5.0)
    assert allowed and left == pytest.approx(2.0)
    assert take_token(4.5, 0.0, 100.0, rate=1.0, burst=5.0) == (True, 4.0)
    assert take_token(0.5, 10.0, 5.0, rate=100.0, burst=5.0) == (False, 0.5)


def test_classes_are_counted_apart_and_zero_turns_one_off() -> None:
    """The contract: a bucket per class of route; ``CLASS=0`` turns that class off and only it."""
    clock = Frozen()
    limiter = SourceLimiter(RateLimits({"credentials": Limit(1.0, 1), "peer": Limit.parse("0")}), clock=clock)
    assert limiter.allow("credentials", "s") == 0.0
    assert limiter.allow("credentials", "s") > 0
    assert all(limiter.allow("peer", "s") == 0.0 for _ in range(50))
    assert limiter.refused == {"credentials": 1}


def test_the_least_recently_seen_source_is_forgotten() -> None:
    """The contract: past the table's bound the *least recently seen* source is forgotten (it starts again with a
    full bucket); a source seen since is kept with its empty bucket."""
    clock = Frozen()
    limiter = SourceLimiter(RateLimits({"credentials": Limit(0.001, 1)}), max_sources=2, clock=clock)
    assert limiter.allow("credentials", "old") == 0.0
    assert limiter.allow("credentials", "recent") == 0.0
    assert limiter.allow("credentials", "old") > 0  # "old" is now the most recently seen
    assert limiter.allow("credentials", "new") == 0.0  # evicts "recent"
    assert limiter.evicted == 1
    assert limiter.allow("credentials", "old") > 0  # still remembered, still empty
    assert limiter.allow("credentials", "recent") == 0.0  # forgotten: a full bucket again


@pytest.mark.parametrize(
    ("text", "limit"),
    [("0", Limit(0.0, 0)), (" 0 ", Limit(0.0, 0)), ("1e6/1", Limit(1e6, 1)), ("0.5/1000000", Limit(0.5, 1_000_000))],
)
def test_limit_parse_accepts_the_bounds(text: str, limit: Limit) -> None:
    """``RATE/BURST`` with RATE in (0, 1e6] and BURST 1-1000000 (the parser's documented ranges), or ``0``."""
    assert Limit.parse(text) == limit


@pytest.mark.parametrize("text", ["0/5", "1000001/1", "5/1000001", "5/0", "5/-1", "00"])
def test_limit_parse_refuses_past_the_bounds(text: str) -> None:
    """Past either end of the ranges, a rate limit is refused with a one-line ``ValueError``."""
    with pytest.raises(ValueError, match="rate limit"):
        Limit.parse(text)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/v1/enrol", None),
        ("POST", "/api/v1/enrol", "credentials"),
        ("POST", "/api/v1/peer/endpoint", "peer"),
        ("POST", "/api/v1/peer/logout", "peer"),
        ("GET", "/api/v1/peer/map", "peer"),
        ("GET", "/api/v1/token/refresh", "peer"),
        ("POST", "/api/v1/setup-keys", None),
        ("POST", "/api/v1/peers/x/revoke", None),
        ("GET", "/api/v1/info", None),
    ],
)
def test_route_classes(method: str, path: str, expected: str | None) -> None:
    """The contract: credentials = ``POST /api/v1/enrol`` and ``POST /login``; peer = ``/api/v1/token/refresh``
    and ``/api/v1/peer/*``; the admin routes and ``GET /api/v1/info`` are not limited here."""
    assert route_class(method, path) == expected


def test_forwarded_for_through_a_chain_of_trusted_proxies() -> None:
    """The contract: the right-most ``X-Forwarded-For`` address that is not a trusted proxy is the source; when
    every hop is a trusted proxy, the proxy itself is; and the header is never believed from anyone else."""
    proxies = ["192.0.2.1", "192.0.2.2"]
    assert source_of("192.0.2.1", "203.0.113.9, 192.0.2.2", proxies) == "203.0.113.9"
    assert source_of("192.0.2.1", "192.0.2.2", proxies) == "192.0.2.1"
    assert source_of("192.0.2.1", "", proxies) == "192.0.2.1"
    assert source_of("198.51.100.7", "203.0.113.9", proxies) == "198.51.100.7"


def test_ipv6_sources_by_slash_64() -> None:
    """The contract: IPv6 sources are counted by /64: two addresses of one /64 share a bucket, neighbouring /64s
    do not; the key is the /64 itself."""
    assert source_of("2001:db8:0:1:ffff:ffff:ffff:ffff", None, ()) == "2001:db8:0:1::/64"
    assert source_of("2001:db8:0:1::", None, ()) == "2001:db8:0:1::/64"
    assert source_of("2001:db8:0:2::", None, ()) == "2001:db8:0:2::/64"


def test_retry_after_is_the_time_until_the_next_whole_token() -> None:
    """The contract: a refusal carries ``Retry-After`` (seconds); with the token-bucket definition that is the time
    until one whole token is back: half a token at 2 a second is a quarter of a second away."""
    clock = Frozen()
    limiter = SourceLimiter(RateLimits({"peer": Limit(2.0, 1)}), clock=clock)
    assert limiter.allow("peer", "s") == 0.0
    clock.now += 0.25  # half a token back
    assert limiter.allow("peer", "s") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.allow("peer", "s") == 0.0
