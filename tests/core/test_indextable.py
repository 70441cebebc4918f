"""IndexTable (kernel peerlookup.c, wireguard-go indextable.go): random local indices to (peer, entry)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from support.helpers import det_rng

from wgpy.indextable import IndexTable


def scripted_rng(values: list[int]) -> Callable[[int], bytes]:
    """An rng that returns ``values`` as little-endian u32s, in order."""
    source = iter(values)
    return lambda n: next(source).to_bytes(n, "little")


def test_insert_returns_the_index_and_lookup_finds_peer_and_entry() -> None:
    table: IndexTable[str, str] = IndexTable(det_rng(1))
    index = table.insert("peer", "handshake")
    assert 0 <= index < 2**32
    assert table.lookup(index) == ("peer", "handshake")
    assert len(table) == 1


def test_lookup_of_an_unknown_index_is_none() -> None:
    table: IndexTable[str, str] = IndexTable(det_rng(1))
    assert table.lookup(12345) is None


def test_indices_come_from_the_injected_rng() -> None:
    table: IndexTable[str, str] = IndexTable(scripted_rng([7, 9]))
    assert table.insert("a", "x") == 7
    assert table.insert("b", "y") == 9


def test_a_collision_draws_again() -> None:
    table: IndexTable[str, str] = IndexTable(scripted_rng([7, 7, 7, 8]))
    assert table.insert("a", "x") == 7
    assert table.insert("b", "y") == 8  # two draws of 7 were refused
    assert table.lookup(7) == ("a", "x")


def test_replace_lets_a_keypair_take_over_the_handshake_index() -> None:
    table: IndexTable[str, str] = IndexTable(det_rng(2))
    index = table.insert("peer", "handshake")
    table.replace(index, "peer", "keypair")
    assert table.lookup(index) == ("peer", "keypair")
    assert len(table) == 1


def test_remove_with_an_entry_only_removes_that_entry() -> None:
    table: IndexTable[str, str] = IndexTable(det_rng(3))
    index = table.insert("peer", "handshake")
    table.replace(index, "peer", "keypair")
    table.remove(index, "handshake")  # stale: the index belongs to the keypair now
    assert table.lookup(index) == ("peer", "keypair")
    table.remove(index, "keypair")
    assert table.lookup(index) is None


def test_remove_without_an_entry_and_of_an_unknown_index() -> None:
    table: IndexTable[str, str] = IndexTable(det_rng(4))
    index = table.insert("peer", "x")
    table.remove(index + 1 if index < 2**32 - 1 else 0)  # unknown: nothing happens
    assert len(table) == 1
    table.remove(index)
    assert len(table) == 0


def test_many_inserts_give_distinct_indices() -> None:
    table: IndexTable[int, int] = IndexTable(det_rng(5))
    indices = [table.insert(n, n) for n in range(1000)]
    assert len(set(indices)) == 1000
    assert all(table.lookup(i) == (n, n) for n, i in zip(itertools.count(), indices, strict=False))
