"""RateLimiter: token buckets per source, clock stepped by hand.

The timing cases follow the published expectations of the kernel's ratelimiter self-test
(``drivers/net/wireguard/selftest/ratelimiter.c`` in ``torvalds/linux``, ``expected_results``): PACKETS_BURSTABLE
packets pass at once, the next is refused, one more passes after 1/PACKETS_PER_SECOND s, and two more after twice
that; while one source is limited a different IPv4 address, or an IPv6 address in another /64, still passes; and
with the table full the next new source is refused. The tests are our own; here time is stepped exactly, so no
timing slack is needed.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

import wgpy.ratelimiter as ratelimiter_module
from wgpy.ratelimiter import GC_IDLE_TIME, MAX_ENTRIES, PACKETS_BURSTABLE, PACKETS_PER_SECOND, RateLimiter

COST = 1.0 / PACKETS_PER_SECOND  # seconds per packet at the sustained rate
T0 = 1000.0  # an arbitrary monotonic start


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_defaults_match_kernel() -> None:
    assert PACKETS_PER_SECOND == 20
    assert PACKETS_BURSTABLE == 5
    assert GC_IDLE_TIME == 1.0
    assert MAX_ENTRIES == 2**16


def test_burst_then_refusal() -> None:
    limiter = RateLimiter()
    source = v4("192.0.2.1")
    assert [limiter.allow(source, T0) for _ in range(PACKETS_BURSTABLE)] == [True] * PACKETS_BURSTABLE
    assert not limiter.allow(source, T0)
    assert not limiter.allow(source, T0)


def test_kernel_selftest_timing_sequence() -> None:
    limiter = RateLimiter()
    source = v4("0.0.31.246")  # the kernel's selftest uses 8182 as the IPv4 source
    now = T0
    # (seconds to wait before, expected result), as in the kernel's expected_results table.
    steps = [(0.0, True)] * PACKETS_BURSTABLE + [
        (0.0, False),
        (COST, True),
        (0.0, False),
        (2 * COST, True),
        (0.0, True),
        (0.0, False),
    ]
    for index, (wait, expected) in enumerate(steps):
        now += wait
        assert limiter.allow(source, now) is expected, index
        # A different address is never affected by this one being limited.
        other = (int.from_bytes(source, "big") + index + 1).to_bytes(4, "big")
        assert limiter.allow(other, now), index


def test_refill_is_linear_and_capped_at_burst() -> None:
    limiter = RateLimiter()
    source = v4("198.51.100.7")
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(source, T0)
    # Just short of one packet's worth of credit: still refused.
    assert not limiter.allow(source, T0 + COST * 0.99)
    assert limiter.allow(source, T0 + COST)
    assert not limiter.allow(source, T0 + COST)
    # A long quiet spell refills at most PACKETS_BURSTABLE packets.
    later = T0 + 0.9  # less than the idle age, so the entry is not collected
    assert [limiter.allow(source, later) for _ in range(PACKETS_BURSTABLE + 1)] == [True] * PACKETS_BURSTABLE + [False]


def test_sustained_rate_over_stepped_time() -> None:
    limiter = RateLimiter()
    source = v4("198.51.100.8")
    allowed = 0
    now = T0
    for _ in range(400):  # 10 s offered at 40 packets per second
        allowed += limiter.allow(source, now)
        now += 0.025
    # 10 s at 20 packets per second, plus the initial burst, give or take the last step.
    assert 20 * 10 + PACKETS_BURSTABLE - 2 <= allowed <= 20 * 10 + PACKETS_BURSTABLE


def test_exact_steps_accumulate_without_rounding_loss() -> None:
    limiter = RateLimiter()
    source = v4("198.51.100.9")
    now = T0
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(source, now)
    for step in range(1, 200):
        # Exactly one packet cost later each time: always exactly one token, never two.
        now = T0 + step * COST
        assert limiter.allow(source, now), step
        assert not limiter.allow(source, now), step


def test_independent_ipv4_sources() -> None:
    limiter = RateLimiter()
    a, b = v4("192.0.2.1"), v4("192.0.2.2")
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(a, T0)
    assert not limiter.allow(a, T0)
    assert [limiter.allow(b, T0) for _ in range(PACKETS_BURSTABLE)] == [True] * PACKETS_BURSTABLE
    assert not limiter.allow(b, T0)


def test_ipv6_sources_share_their_slash_64() -> None:
    limiter = RateLimiter()
    for i in range(PACKETS_BURSTABLE):
        # Different interface identifiers, same /64: one bucket.
        assert limiter.allow(v6(f"2001:db8:1:2::{i + 1:x}"), T0)
    assert not limiter.allow(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), T0)
    # The neighbouring /64 has its own bucket.
    assert limiter.allow(v6("2001:db8:1:3::1"), T0)
    assert len(limiter) == 2


def test_ipv4_mapped_ipv6_counts_as_ipv4() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(v6("::ffff:192.0.2.55"), T0)
    assert not limiter.allow(v4("192.0.2.55"), T0)
    # Other IPv4-mapped addresses share the ::ffff:0:0/96 prefix but must not share a bucket.
    assert limiter.allow(v6("::ffff:192.0.2.56"), T0)
    assert len(limiter) == 2


def test_ipv4_and_ipv6_keys_do_not_collide() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(v4("32.1.13.184"), T0)  # the bytes 20 01 0d b8
    assert limiter.allow(v6("2001:db8::1"), T0)  # its /64 starts with the same four bytes


@pytest.mark.parametrize("size", [0, 1, 3, 5, 8, 15, 17, 32])
def test_other_address_sizes_are_refused(size: int) -> None:
    limiter = RateLimiter()
    assert not limiter.allow(b"\x01" * size, T0)
    assert len(limiter) == 0


def test_idle_entries_are_collected() -> None:
    limiter = RateLimiter()
    for i in range(100):
        assert limiter.allow(v4(f"10.0.0.{i}"), T0)  # the first call sweeps; the next sweep is due at T0 + 1
    assert len(limiter) == 100
    # One source stays busy; the others go quiet.
    busy = v4("10.0.0.0")
    for step in range(1, 13):
        limiter.allow(busy, T0 + step / 10)
    # The sweep at T0 + 1 found nothing idle for *more* than GC_IDLE_TIME; the next is due at T0 + 2.
    assert len(limiter) == 100
    limiter.allow(busy, T0 + 2.05)
    assert len(limiter) == 1
    # Once the busy source goes quiet too, it is collected by a later call from anyone.
    limiter.allow(v4("10.0.1.1"), T0 + 3.3)
    assert len(limiter) == 1


def test_sweep_is_lazy_and_at_most_once_per_second() -> None:
    limiter = RateLimiter()
    assert limiter.allow(v4("10.0.0.1"), T0)  # the first call sweeps and schedules the next at T0 + 1
    assert limiter.allow(v4("10.0.0.2"), T0 + 0.5)
    assert len(limiter) == 2
    assert limiter.allow(v4("10.0.0.3"), T0 + 0.9)
    assert len(limiter) == 3
    # At T0 + 1.2 a sweep is due: only entries idle for more than 1 s go (10.0.0.1, idle 1.2 s).
    assert limiter.allow(v4("10.0.0.4"), T0 + 1.2)
    assert len(limiter) == 3
    # Nothing happens between sweeps, even though 10.0.0.2 is now idle for more than 1 s.
    assert limiter.allow(v4("10.0.0.5"), T0 + 1.6)
    assert len(limiter) == 4


def test_collection_never_changes_an_answer() -> None:
    """A collected source starts with a full bucket, which it would have refilled to anyway."""
    limiter = RateLimiter(packets_per_second=1, burst=3)  # refill takes 3 s, longer than the 1 s idle age
    source = v4("192.0.2.9")
    for _ in range(3):
        assert limiter.allow(source, T0)
    assert not limiter.allow(source, T0)
    other = v4("192.0.2.10")
    assert limiter.allow(other, T0 + 2.0)  # triggers a sweep; source was idle 2 s but is not yet full
    assert len(limiter) == 2
    assert [limiter.allow(source, T0 + 2.0) for _ in range(3)] == [True, True, False]


def test_table_bound_fails_closed() -> None:
    limiter = RateLimiter(max_entries=8)
    for i in range(8):
        assert limiter.allow(v4(f"192.0.2.{i}"), T0)
    assert len(limiter) == 8
    # Full: a new source is refused and not recorded; known sources still get their tokens.
    assert not limiter.allow(v4("192.0.2.200"), T0 + 0.5)
    assert not limiter.allow(v6("2001:db8::1"), T0 + 0.5)
    assert len(limiter) == 8
    assert limiter.allow(v4("192.0.2.0"), T0 + 0.5)
    # Once the old entries have been idle past the age, a new source gets in again.
    assert limiter.allow(v4("192.0.2.200"), T0 + 1.3)
    assert len(limiter) == 2  # 192.0.2.0 (used at T0 + 0.5) and the newcomer


def test_flood_of_spoofed_sources_is_bounded() -> None:
    limiter = RateLimiter(max_entries=1000)
    now = T0
    for i in range(20_000):
        limiter.allow(i.to_bytes(4, "big"), now)
        now += 0.0001  # 10k packets per second of new sources
        assert len(limiter) <= 1000


def test_full_table_recovers_when_entries_go_idle_before_the_next_sweep() -> None:
    limiter = RateLimiter(max_entries=2)
    assert limiter.allow(v4("192.0.2.1"), T0)  # sweep at T0, next due at T0 + 1
    assert limiter.allow(v4("192.0.2.2"), T0 + 0.9)
    # At T0 + 1.05 the periodic sweep runs first (192.0.2.1 idle 1.05 s goes), so there is room.
    assert limiter.allow(v4("192.0.2.3"), T0 + 1.05)
    # At T0 + 1.95 no periodic sweep is due, but 192.0.2.2 has been idle 1.05 s: a full table sweeps itself.
    assert limiter.allow(v4("192.0.2.4"), T0 + 1.95)
    assert len(limiter) == 2


def test_clock_stepping_back_earns_nothing() -> None:
    limiter = RateLimiter()
    source = v4("192.0.2.77")
    for _ in range(PACKETS_BURSTABLE):
        assert limiter.allow(source, T0)
    assert not limiter.allow(source, T0 - 5.0)
    assert not limiter.allow(source, T0)  # back to T0: still no credit
    assert limiter.allow(source, T0 + COST)


def test_clear() -> None:
    limiter = RateLimiter()
    for _ in range(PACKETS_BURSTABLE):
        limiter.allow(v4("192.0.2.1"), T0)
    limiter.clear()
    assert len(limiter) == 0
    assert limiter.allow(v4("192.0.2.1"), T0)


def test_custom_rate_and_burst() -> None:
    limiter = RateLimiter(packets_per_second=2, burst=1)
    source = v4("192.0.2.1")
    assert limiter.allow(source, T0)
    assert not limiter.allow(source, T0 + 0.49)
    assert limiter.allow(source, T0 + 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"packets_per_second": 0},
        {"packets_per_second": -1},
        {"packets_per_second": 2_000_000_000},
        {"burst": 0},
        {"max_entries": 0},
    ],
)
def test_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


def test_never_reads_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "time" not in vars(ratelimiter_module)

    def forbidden() -> float:
        raise AssertionError("the rate limiter read the clock")

    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns", "perf_counter_ns"):
        monkeypatch.setattr(time, name, forbidden)
    limiter = RateLimiter(max_entries=4)
    results = [limiter.allow(v4(f"192.0.2.{i % 6}"), T0 + i * 0.3) for i in range(50)]
    # Same inputs, same answers: the outcome is a function of the arguments alone.
    again = RateLimiter(max_entries=4)
    assert [again.allow(v4(f"192.0.2.{i % 6}"), T0 + i * 0.3) for i in range(50)] == results
