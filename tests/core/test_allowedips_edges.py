"""Edges of the cryptokey routing table that the other AllowedIPs tests leave open: what the table keeps of a peer
once its prefixes are gone, peers that are false in a boolean context, and memory under many distinct lookups.

Sources: the WireGuard whitepaper §2 (cryptokey routing: a peer is found by the allowed IPs it owns, and removing a
peer's allowed IPs removes every one of them) and the Linux kernel's ``drivers/net/wireguard/allowedips.c``: the
trie references a peer only from the nodes it owns, ``wg_allowedips_remove_by_peer`` walks the peer's own list of
nodes, and a lookup allocates nothing, so the table's memory is a function of its prefixes alone. The
``AllowedIPs.insert`` contract takes any object except ``None`` as a peer, compared by identity.
"""

from __future__ import annotations

import gc
import ipaddress
import weakref

from wgpy.allowedips import AllowedIPs


class Peer:
    """A peer stand-in that can be weakly referenced."""

    def __init__(self, name: str) -> None:
        self.name = name


class FalsyPeer(Peer):
    """A peer that is false in a boolean context: still a peer (only ``None`` is not)."""

    def __bool__(self) -> bool:
        return False


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def test_a_peer_whose_last_prefix_moved_away_is_not_kept_alive_by_the_table() -> None:
    """Kernel allowedips.c: only the nodes a peer owns reference it. Once its only prefix moved to another peer
    (whitepaper §2: one owner per prefix), the table holds nothing of it."""
    table: AllowedIPs[Peer] = AllowedIPs()
    old, new = Peer("old"), Peer("new")
    table.insert(net("10.0.0.0/24"), old)
    table.insert(net("10.0.0.0/24"), new)
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None
    assert table.lookup(v4("10.0.0.9")) is new


def test_a_peer_whose_prefixes_were_removed_one_by_one_is_not_kept_alive() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = Peer("p")
    table.insert(net("10.0.0.0/24"), peer)
    table.insert(net("fd00::/64"), peer)
    assert table.remove(net("10.0.0.0/24"), peer) and table.remove(net("fd00::/64"), peer)
    gone = weakref.ref(peer)
    del peer
    gc.collect()
    assert gone() is None
    assert len(table) == 0


def test_a_peer_that_is_false_in_a_boolean_context_keeps_its_other_prefixes() -> None:
    """Any object but ``None`` is a peer. Removing one of its two prefixes leaves the other listed, and
    ``remove_by_peer`` (kernel ``wg_allowedips_remove_by_peer``) then removes that one too."""
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = FalsyPeer("falsy")
    table.insert(net("10.0.0.0/24"), peer)
    table.insert(net("10.0.1.0/24"), peer)
    assert table.remove(net("10.0.0.0/24"), peer)
    assert table.entries_for_peer(peer) == [net("10.0.1.0/24")]
    table.remove_by_peer(peer)
    assert table.lookup(v4("10.0.1.1")) is None
    assert len(table) == 0


def test_many_distinct_lookups_do_not_grow_the_table_without_bound() -> None:
    """Kernel allowedips.c: a lookup allocates nothing. A peer whose allowed IPs are 0.0.0.0/0 may send inner
    packets from every IPv4 address, each looked up once; the table may remember some answers, but not one per
    address for ever: after 20,000 distinct addresses it holds fewer than half of them."""
    table: AllowedIPs[Peer] = AllowedIPs()
    peer = Peer("everything")
    table.insert(net("0.0.0.0/0"), peer)
    for n in range(20_000):
        assert table.lookup((0x0A000000 + n).to_bytes(4, "big")) is peer
    assert len(table._cache) < 10_000
