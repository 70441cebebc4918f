"""``ReplayWindow`` (RFC 6479) as the receive path uses it: ``would_accept`` before the AEAD, ``commit`` after.

Each round feeds ``COUNTERS`` counters to a fresh window, so divide the time by ``COUNTERS`` for one packet:

- ``in_order``: 0, 1, 2, … (the common case: every call moves the window forward by one);
- ``reordered``: the same counters with each one displaced by up to ``REORDER_DISTANCE`` positions (a seeded
  shuffle inside sliding blocks), all still inside the 8128-counter window, so every one must be accepted;
- ``replayed``: every counter offered twice, the second time refused by ``would_accept`` (a replay flood);
- ``jumps``: counters that leap ahead by more than the window each time (the clear-the-ring path).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy.constants import REPLAY_WINDOW_SIZE
from wgpy.replay import ReplayWindow

COUNTERS: Final = 10_000
REORDER_DISTANCE: Final = 256
SEED: Final = 0x5245  # "RE"


def in_order() -> list[int]:
    return list(range(COUNTERS))


def reordered() -> list[int]:
    rng = random.Random(SEED)
    counters = list(range(COUNTERS))
    for start in range(0, COUNTERS, REORDER_DISTANCE // 2):
        block = counters[start : start + REORDER_DISTANCE // 2]
        rng.shuffle(block)
        counters[start : start + REORDER_DISTANCE // 2] = block
    # Swap some counters further apart too, still well inside the window.
    for _ in range(COUNTERS // 10):
        i = rng.randrange(COUNTERS - REORDER_DISTANCE)
        j = i + rng.randrange(REORDER_DISTANCE)
        counters[i], counters[j] = counters[j], counters[i]
    assert sorted(counters) == list(range(COUNTERS))
    return counters


def replayed() -> list[int]:
    return [c for counter in range(COUNTERS // 2) for c in (counter, counter)]


def jumps() -> list[int]:
    return [i * (REPLAY_WINDOW_SIZE + 100) for i in range(COUNTERS)]


def feed(counters: Sequence[int]) -> int:
    """The device's order: ``would_accept``, (the AEAD would go here), ``commit``. Returns how many were accepted."""
    window = ReplayWindow()
    would_accept, commit = window.would_accept, window.commit
    accepted = 0
    for counter in counters:
        if would_accept(counter):
            commit(counter)
            accepted += 1
    return accepted


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        pytest.param(in_order(), COUNTERS, id="in_order"),
        pytest.param(reordered(), COUNTERS, id="reordered"),
        pytest.param(replayed(), COUNTERS // 2, id="replayed"),
        pytest.param(jumps(), COUNTERS, id="jumps"),
    ],
)
def test_replay_window(benchmark: BenchmarkFixture, counters: list[int], expected: int) -> None:
    benchmark.extra_info["counters_per_round"] = len(counters)
    assert benchmark(feed, counters) == expected
    stats = benchmark.stats
    if stats is not None:
        benchmark.extra_info["ns_per_counter"] = round(stats.stats.mean / len(counters) * 1e9, 1)
