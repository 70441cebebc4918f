"""Per-source rate limits of the enrolment, login and signed peer routes (``wgpy/management/ratelimit.py``).

The live tests flood a server on 127.0.0.1 from one loopback address and are served from another (Linux routes
all of 127.0.0.0/8 to ``lo``, so a client can bind 127.0.0.2). The limiter's clock is frozen by hand: exactly the
burst passes, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import pathlib
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from management_helpers import Harness, with_harness

from wgpy.management import tokens
from wgpy.management.ratelimit import Limit, RateLimits, SourceLimiter, route_class, source_of
from wgpy.ratelimiter import RateLimiter

BURST = 20
SMALL = RateLimits({"credentials": Limit(5.0, BURST), "peer": Limit(5.0, BURST)})


class Frozen:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limit_parse_and_route_classes() -> None:
    assert Limit.parse("10/200") == Limit(10.0, 200)
    assert Limit.parse("0") == Limit(0.0, 0)
    for bad in ("10", "x/1", "10/0", "-1/5", "10/2000000", "/"):
        with pytest.raises(ValueError, match="rate limit"):
            Limit.parse(bad)
    assert route_class("POST", "/api/v1/enrol") == "credentials"
    assert route_class("POST", "/login") == "credentials"
    assert route_class("GET", "/login") is None  # the form itself costs nothing
    assert route_class("POST", "/api/v1/token/refresh") == "peer"
    assert route_class("GET", "/api/v1/peer/stream") == "peer"
    assert route_class("GET", "/api/v1/info") is None
    assert route_class("GET", "/api/v1/peers") is None  # admin routes: not limited here


def test_the_source_is_the_tcp_peer_unless_it_is_a_trusted_proxy() -> None:
    assert source_of("192.0.2.1", "198.51.100.9", ()) == "192.0.2.1"  # X-Forwarded-For from anyone: ignored
    assert source_of("192.0.2.1", "198.51.100.9", ["192.0.2.1"]) == "198.51.100.9"
    # the right-most hop that is not a trusted proxy; what a client wrote further left is not believed
    assert source_of("192.0.2.1", "203.0.113.5, 198.51.100.9, 192.0.2.2", ["192.0.2.1", "192.0.2.2"]) == (
        "198.51.100.9"
    )
    assert source_of("192.0.2.1", "not-an-ip", ["192.0.2.1"]) == "192.0.2.1"
    assert source_of("192.0.2.1", None, ["192.0.2.1"]) == "192.0.2.1"
    # IPv6 by /64; IPv4-mapped as IPv4
    assert (
        source_of("2001:db8:1:2:aaaa::1", None, ())
        == source_of("2001:db8:1:2:ffff::9", None, ())
        == ("2001:db8:1:2::/64")
    )
    assert source_of("2001:db8:1:3::1", None, ()) != source_of("2001:db8:1:2::1", None, ())
    assert source_of("::ffff:192.0.2.7", None, ()) == "192.0.2.7"
    assert source_of(None, None, ()) == "unknown"


# Addresses that often share a /64 or a /32 with each other: a few prefixes, any low bits; some IPv4-mapped.
_V6_PREFIXES = [0x20010DB8_00000001, 0x20010DB8_00000002, 0xFE800000_00000000]
_ADDRESSES = st.one_of(
    st.builds(lambda low: ipaddress.IPv4Address(0xC0000200 | low), st.integers(0, 3)),
    st.builds(
        lambda high, low: ipaddress.IPv6Address(high << 64 | low),
        st.sampled_from(_V6_PREFIXES),
        st.integers(0, 2) | st.integers(0, (1 << 64) - 1),
    ),
    st.builds(lambda low: ipaddress.IPv6Address(0xFFFF_C0000200 | low), st.integers(0, 3)),  # ::ffff:192.0.2.x
)


@given(_ADDRESSES, _ADDRESSES)
def test_sources_share_a_bucket_exactly_when_the_data_plane_limiter_would_share_one(
    first: ipaddress.IPv4Address | ipaddress.IPv6Address, second: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    """The management limit keys sources as the handshake limiter (``wgpy/ratelimiter.py``, after the kernel's
    ``ratelimiter.c``) does: an IPv6 address by its /64, an IPv4-mapped one as the IPv4 address. The data-plane
    limiter is the reference here, seen from outside: with a burst of one, a second source is refused exactly when
    it shares the first one's bucket."""
    handshakes = RateLimiter(packets_per_second=1, burst=1)
    assert handshakes.allow(first.packed, 0.0)
    same_bucket = not handshakes.allow(second.packed, 0.0)
    assert (source_of(str(first), None, ()) == source_of(str(second), None, ())) is same_bucket


def test_buckets_refill_at_their_rate_and_the_table_stays_bounded() -> None:
    clock = Frozen()
    limiter = SourceLimiter(RateLimits({"credentials": Limit(2.0, 3), "peer": Limit(0.0, 0)}), clock=clock)
    assert [limiter.allow("credentials", "a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("credentials", "a") == pytest.approx(0.5)  # one token at 2/s: half a second away
    assert limiter.allow("credentials", "b") == 0.0  # another source has its own bucket
    clock.now += 1.0  # two tokens back
    assert [limiter.allow("credentials", "a") > 0 for _ in range(3)] == [False, False, True]
    assert limiter.refused["credentials"] == 2
    assert all(limiter.allow("peer", "a") == 0.0 for _ in range(100))  # rate 0: no limit
    small = SourceLimiter(RateLimits({"credentials": Limit(1.0, 1)}), max_sources=10, clock=clock)
    for n in range(50):
        small.allow("credentials", f"s{n}")
    assert len(small._buckets) == 10 and small.evicted == 40


def _other_address() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))


def test_a_flood_of_bad_setup_keys_is_refused_429_and_another_address_still_enrols(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wgpy.management")

    async def body(h: Harness) -> None:
        server = h.running.server
        server.limiter.clock = Frozen()
        key = await h.setup_key()
        flood = 200
        statuses = [(await h.agent().enrol("wgsk_not-a-setup-key")).status for _ in range(flood)]
        assert statuses[:BURST] == [401] * BURST  # unknown_setup_key
        assert statuses[BURST:] == [429] * (flood - BURST)
        assert server.limiter.refused["credentials"] == flood - BURST
        # the honest peer, from 127.0.0.2, is served
        async with _other_address() as other:
            honest = dataclasses.replace(h, http=other).agent()
            answer = await honest.enrol(key)
            assert answer.status == 201, answer.text
            # ...and 127.0.0.1 is still refused, cheaply: the body is not even read (a malformed one gets 429 too)
            async with h.http.post(h.url + "/api/v1/enrol", data=b"{not json") as response:
                assert response.status == 429
                assert int(response.headers["Retry-After"]) >= 1
                assert (await response.json())["error"] == "rate_limited"
        # the audit shows the one enrolment: the refused ones changed nothing
        events = await h.admin("GET", "/api/v1/audit?kind=enrol")
        assert len(events.body) == 1
        # the periodic sweep says once what was refused (and the next one, with nothing new, says nothing)
        await server.sweep()
        await server.sweep()
        lines = [r.getMessage() for r in caplog.records if "since the last tick" in r.getMessage()]
        assert lines == [f'refused or dropped since the last tick: {{"http_credentials": {flood - BURST + 1}}}']

    with_harness(tmp_path, body, rate_limits=SMALL)


def test_forged_refresh_tokens_and_dashboard_logins_are_limited_per_address(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    verify = tokens.verify_token

    def counting(token: str, *args: Any, **kwargs: Any) -> tokens.TokenClaims:
        checked.append(token)
        return verify(token, *args, **kwargs)

    monkeypatch.setattr(tokens, "verify_token", counting)

    async def body(h: Harness) -> None:
        server = h.running.server
        server.limiter.clock = Frozen()
        key = await h.setup_key()
        async with _other_address() as other:
            honest = dataclasses.replace(h, http=other).agent()
            assert (await honest.enrol(key)).status == 201
            forger = h.agent()
            statuses = [(await forger.refresh("e30.e30.forged")).status for _ in range(BURST + 30)]
            assert statuses[:BURST] == [401] * BURST and statuses[BURST:] == [429] * 30
            # the refused ones never reached the token's signature check
            assert checked.count("e30.e30.forged") == BURST
            logins = []
            for _ in range(BURST + 10):
                async with h.http.post(h.url + "/login", data={"token": "wgat_guess", "next": "/peers"}) as response:
                    logins.append(response.status)
            assert logins[:BURST] == [401] * BURST and logins[BURST:] == [429] * 10
            assert server.limiter.refused == {"peer": 30, "credentials": 10}
            # the honest peer refreshes from its own address, and a stream connects
            assert (await honest.refresh()).status == 200
            async with honest.stream() as ws:
                first = json.loads((await ws.receive(5.0)).data)
                assert first["type"] == "map"

    with_harness(tmp_path, body, rate_limits=SMALL)


def test_behind_a_trusted_proxy_the_forwarded_client_is_the_source(tmp_path: pathlib.Path) -> None:
    limits = dataclasses.replace(SMALL, trusted_proxies=frozenset({"127.0.0.1"}))

    async def body(h: Harness) -> None:
        h.running.server.limiter.clock = Frozen()

        async def enrol(forwarded: str, http: aiohttp.ClientSession | None = None) -> int:
            session = http or h.http
            async with session.post(
                h.url + "/api/v1/enrol", data=b"{}", headers={"X-Forwarded-For": forwarded}
            ) as response:
                return response.status

        # 127.0.0.1 is the proxy: each forwarded client has its own bucket
        assert [await enrol("198.51.100.1") for _ in range(BURST + 1)][-1] == 429
        assert await enrol("198.51.100.2") == 400
        # 127.0.0.2 is not a proxy: its X-Forwarded-For is not believed, whatever it names
        async with _other_address() as other:
            got = [await enrol(f"198.51.100.{n}", other) for n in range(10, 10 + BURST + 1)]
            assert got[-1] == 429 and got[:BURST] == [400] * BURST

    with_harness(tmp_path, body, rate_limits=limits)


def test_the_default_limits_let_an_ordinary_fleet_through(tmp_path: pathlib.Path) -> None:
    """Defaults (no ``rate_limits``): 30 enrolments at once from one address are all served."""

    async def body(h: Harness) -> None:
        key = await h.setup_key(reusable=True, usage_limit=100)
        answers = await asyncio.gather(*(h.agent().enrol(key) for _ in range(30)))
        assert [a.status for a in answers] == [201] * 30
        assert h.running.server.limiter.refused == {}

    with_harness(tmp_path, body)
