"""``AllowedIPs.lookup`` throughput (kernel selftest-style random tables, plus typical configs).

Each round looks up the same 1000 raw addresses, half inside a random inserted prefix and half uniformly random,
so divide the reported time by 1000 for one lookup. Tables are built once per module from a fixed
``random.Random`` seed, so runs are comparable with ``--benchmark-compare``.

The random tables draw prefix lengths uniformly (1-32 for IPv4, 1-128 for IPv6), as the kernel's randomized
self-test does. That is the worst case for wgpy's per-length hash tables, whose cost grows with the number of
*distinct* lengths present; the ``typical`` cases use the few lengths real configs have. Reference numbers
(CPython 3.11, the development machine, ns per lookup, loop overhead included): v4 1k random 1450, v4 100k
random 1310, v6 1k random 6100, v4 typical 330, v6 typical 360. A path-compressed binary trie prototype on the
same tables took 1130, 2290, 1340, 1180 and 1330 (see the docstring of ``wgpy/allowedips.py``).

``AllowedIPs`` now keeps a cache of recent answers (4096 addresses), so the 1000 addresses above are answered from
the cache after the first round: those cases measure the cache hit. The ``uncached`` cases cycle through
``UNCACHED_LOOKUPS`` distinct addresses, several times the cache size, so nearly every lookup misses and probes the
tables (divide by ``UNCACHED_LOOKUPS`` for one lookup).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from typing import Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy.allowedips import AllowedIPs

SEED: Final = 0x5747  # "WG"
LOOKUPS_PER_ROUND: Final = 1000
UNCACHED_LOOKUPS: Final = 20_000  # several times the lookup cache of AllowedIPs
PEER_COUNT: Final = 64


class Peer:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


Table = tuple[AllowedIPs[Peer], list[bytes]]


def build(width: int, count: int, lengths: Sequence[int], seed: int, lookups: int = LOOKUPS_PER_ROUND) -> Table:
    """A table of ``count`` random prefixes (lengths drawn from ``lengths``) and the addresses to look up."""
    rng = random.Random(seed)
    peers = [Peer(i) for i in range(PEER_COUNT)]
    table: AllowedIPs[Peer] = AllowedIPs()
    network: Callable[[tuple[int, int]], ipaddress.IPv4Network | ipaddress.IPv6Network] = (
        ipaddress.IPv4Network if width == 32 else ipaddress.IPv6Network
    )
    inserted: list[tuple[int, int]] = []
    for _ in range(count):
        length = rng.choice(lengths)
        prefix = (rng.getrandbits(width) >> (width - length)) << (width - length) if length else 0
        table.insert(network((prefix, length)), rng.choice(peers))
        inserted.append((prefix, length))
    addresses = []
    for i in range(lookups):
        if i % 2:
            address = rng.getrandbits(width)
        else:
            prefix, length = rng.choice(inserted)
            address = prefix | rng.getrandbits(width - length) if length < width else prefix
        addresses.append(address.to_bytes(width // 8, "big"))
    return table, addresses


def lookup_all(table: AllowedIPs[Peer], addresses: list[bytes]) -> int:
    lookup = table.lookup
    hits = 0
    for address in addresses:
        if lookup(address) is not None:
            hits += 1
    return hits


@pytest.fixture(scope="module")
def v4_1k() -> Table:
    return build(32, 1_000, range(1, 33), SEED)


@pytest.fixture(scope="module")
def v4_100k() -> Table:
    return build(32, 100_000, range(1, 33), SEED + 1)


@pytest.fixture(scope="module")
def v6_1k() -> Table:
    return build(128, 1_000, range(1, 129), SEED + 2)


@pytest.fixture(scope="module")
def v4_typical() -> Table:
    return build(32, 1_000, [32] * 8 + [24, 16], SEED + 3)


@pytest.fixture(scope="module")
def v6_typical() -> Table:
    return build(128, 1_000, [128] * 6 + [64, 64, 48], SEED + 4)


def run(benchmark: BenchmarkFixture, table: Table) -> None:
    lookups = len(table[1])
    benchmark.extra_info["lookups_per_round"] = lookups
    benchmark.extra_info["prefixes"] = len(table[0])
    hits = benchmark(lookup_all, *table)
    assert hits >= lookups // 2  # every address drawn inside a prefix must hit
    stats = benchmark.stats
    if stats is not None:
        benchmark.extra_info["ns_per_lookup"] = round(stats.stats.mean / lookups * 1e9, 1)


def test_lookup_v4_1k_random(benchmark: BenchmarkFixture, v4_1k: Table) -> None:
    run(benchmark, v4_1k)


def test_lookup_v4_100k_random(benchmark: BenchmarkFixture, v4_100k: Table) -> None:
    run(benchmark, v4_100k)


def test_lookup_v6_1k_random(benchmark: BenchmarkFixture, v6_1k: Table) -> None:
    run(benchmark, v6_1k)


def test_lookup_v4_1k_typical(benchmark: BenchmarkFixture, v4_typical: Table) -> None:
    run(benchmark, v4_typical)


def test_lookup_v6_1k_typical(benchmark: BenchmarkFixture, v6_typical: Table) -> None:
    run(benchmark, v6_typical)


@pytest.fixture(scope="module")
def v4_1k_uncached() -> Table:
    return build(32, 1_000, range(1, 33), SEED + 5, UNCACHED_LOOKUPS)


@pytest.fixture(scope="module")
def v4_100k_uncached() -> Table:
    return build(32, 100_000, range(1, 33), SEED + 6, UNCACHED_LOOKUPS)


@pytest.fixture(scope="module")
def v6_1k_uncached() -> Table:
    return build(128, 1_000, range(1, 129), SEED + 7, UNCACHED_LOOKUPS)


def test_lookup_v4_1k_random_uncached(benchmark: BenchmarkFixture, v4_1k_uncached: Table) -> None:
    run(benchmark, v4_1k_uncached)


def test_lookup_v4_100k_random_uncached(benchmark: BenchmarkFixture, v4_100k_uncached: Table) -> None:
    run(benchmark, v4_100k_uncached)


def test_lookup_v6_1k_random_uncached(benchmark: BenchmarkFixture, v6_1k_uncached: Table) -> None:
    run(benchmark, v6_1k_uncached)
