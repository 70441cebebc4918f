"""RateLimiter edges that the mutation audit found unpinned, against the kernel's token arithmetic.

Source (repository ``torvalds/linux``, ``drivers/net/wireguard/ratelimiter.c``), read, not copied: tokens are
nanoseconds, ``PACKET_COST = NSEC_PER_SEC / PACKETS_PER_SECOND`` and ``TOKEN_MAX = PACKET_COST * PACKETS_BURSTABLE``
in integer arithmetic; a packet passes when ``tokens >= PACKET_COST``; a new source is refused once
``atomic_inc_return(&total_entries) > max_entries``, i.e. a table of ``max_entries`` holds exactly that many sources.

Consequences checked here: at one packet per nanosecond the cost is 1 ns, the finest rate the arithmetic can
express; one packet per second more makes the integer cost 0, so every packet would be free (the limiter would fail
open) and such a rate must be refused. A table of one entry is a legal table holding one source.
"""

from __future__ import annotations

import ipaddress

import pytest

from wgpy.ratelimiter import RateLimiter

T0 = 1000.0
NS_PER_SECOND = 10**9  # kernel NSEC_PER_SEC


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def test_one_packet_per_nanosecond_is_accepted_and_costs_one_nanosecond() -> None:
    """Kills ``packets_per_second < 1e9`` in the bound check (the kernel's cost is 1 ns at that rate)."""
    limiter = RateLimiter(packets_per_second=NS_PER_SECOND, burst=1)
    source = v4("192.0.2.1")
    assert limiter.allow(source, 1.0)
    assert not limiter.allow(source, 1.0)  # the burst of one is spent
    assert limiter.allow(source, 1.0 + 2e-9)  # two nanoseconds later: refilled (capped at one packet)
    assert not limiter.allow(source, 1.0 + 2e-9)


@pytest.mark.parametrize("packets_per_second", [NS_PER_SECOND + 1, 2 * NS_PER_SECOND - 1])
def test_a_rate_whose_integer_cost_is_zero_is_refused(packets_per_second: int) -> None:
    """Kills ``_NS_PER_SECOND = 1e9 + 1`` and other loosened bounds: NSEC_PER_SEC // rate == 0 would fail open."""
    assert NS_PER_SECOND // packets_per_second == 0
    with pytest.raises(ValueError):
        RateLimiter(packets_per_second=packets_per_second)


def test_a_table_of_one_entry_holds_one_source() -> None:
    """Kills ``max_entries <= 1`` in the check (kernel: refused only when the count would exceed max_entries)."""
    limiter = RateLimiter(max_entries=1)
    assert limiter.allow(v4("192.0.2.1"), T0)
    assert not limiter.allow(v4("192.0.2.2"), T0)  # full: a second new source fails closed
    assert len(limiter) == 1
    assert limiter.allow(v4("192.0.2.1"), T0)  # the tracked source keeps its bucket
    assert limiter.allow(v4("192.0.2.2"), T0 + 1.5)  # the first went idle past the 1 s age: room again
    assert len(limiter) == 1
