"""Cryptokey routing: the table that maps IP prefixes to peers (whitepaper §2, kernel ``allowedips.c``).

Theory of operation: WireGuard uses one table for two jobs. When the interface sends, the destination address
of the inner packet picks the peer whose allowed IPs contain it (longest prefix wins). When a transport packet
is received and authenticated, the source address of the decrypted inner packet must map back to the very
peer that sent it, or the packet is dropped (``DISALLOWED_SOURCE_IP``). This module owns that table and
nothing else: no I/O, no clock, no parsing of packets (``ip.py`` reads the addresses).

The kernel (``allowedips.c``) and wireguard-go (``allowedips.go``) use a path-compressed binary trie. In
Python a trie walk costs one interpreted loop iteration per level, so here each family instead keeps **one
hash table per prefix length** (``{address >> (width - length): peer}``) and a lookup probes the lengths that
are present, longest first; the first hit is the longest match. Its cost is one dict probe per *distinct*
length present (at most 33 for IPv4 and 129 for IPv6), whatever the number of prefixes, and inserting or
removing a prefix is O(1) apart from rebuilding the short probe list when a length appears or disappears.

Measured against a path-compressed trie prototype on the same tables and addresses (CPython 3.11, ns per
lookup, ``benchmarks/bench_allowedips.py``): with the few lengths that real configs use, hash 330 / trie 1180
for IPv4 (/32, /24, /16) and 360 / 1330 for IPv6 (/128, /64, /48); with every IPv4 length 1-32 present,
1450 / 1130 for 1k prefixes and 1310 / 2290 for 100k. The trie wins clearly only when nearly every IPv6
length is present (1k prefixes over lengths 1-128: 6100 / 1340), which no realistic configuration does.

Semantics follow the kernel and wg(8):

* Peers are compared by identity (``is``), never by ``==``; ``None`` cannot be a peer.
* Inserting a prefix that another peer owns *moves* it to the new peer.
* ``remove(network, peer)`` only removes a prefix that ``peer`` owns (wireguard-go ``RemoveByPrefix``).
* IPv4 and IPv6 are separate tables; an IPv4-mapped IPv6 address is looked up as IPv6, as the kernel does.

A per-peer index of the prefixes each peer owns makes ``remove_by_peer`` and ``entries_for_peer`` cost
O(prefixes of that peer), not O(table), as the kernel's ``peer->allowedips_list`` does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["AllowedIPs", "Network"]

P = TypeVar("P")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
"""The prefix type accepted and returned by :class:`AllowedIPs`."""

_V4_WIDTH: Final = 32  # RFC 791 address size in bits
_V6_WIDTH: Final = 128  # RFC 8200 address size in bits
_V4_SIZE: Final = 4  # bytes in an IPv4 address as read from the header
_V6_SIZE: Final = 16  # bytes in an IPv6 address as read from the header

# A prefix as stored in the per-peer index: (address width, prefix length, address >> (width - length)).
_Entry = tuple[int, int, int]


_MISS: Final = object()
_CACHE_SIZE: Final = 4096  # cached lookup answers (ours)


class _Family(Generic[P]):
    """The per-length tables of one address family."""

    __slots__ = ("probes", "tables", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        # prefix length -> {address >> (width - length): peer}; never holds an empty dict.
        self.tables: dict[int, dict[int, P]] = {}
        # (shift, table.get) for each present length, longest first: the whole lookup loop in one tuple.
        self.probes: tuple[tuple[int, Callable[[int], P | None]], ...] = ()

    def rebuild_probes(self) -> None:
        width = self.width
        self.probes = tuple((width - length, self.tables[length].get) for length in sorted(self.tables, reverse=True))


class AllowedIPs(Generic[P]):
    """Longest-prefix-match table from IPv4/IPv6 prefixes to peers.

    ``P`` is the peer type; the table holds a strong reference to every peer that owns a prefix.
    """

    __slots__ = ("_by_peer", "_cache", "_count", "_shared", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Family[P] = _Family(_V4_WIDTH)
        self._v6: _Family[P] = _Family(_V6_WIDTH)
        # id(peer) -> (peer, its prefixes). Keyed by id() so that peers are told apart by identity; holding
        # the peer itself keeps the id from being reused while the entry exists.
        self._by_peer: dict[int, tuple[P, set[_Entry]]] = {}
        self._count = 0
        # Keys of _by_peer whose prefix set is shared with the table this one was copied from (copy-on-write: a
        # copy of 100,000 peers' sets took 0.1 s); the set is copied before it is first changed here.
        self._shared: set[int] = set()
        # address -> answer of the last lookups: a tunnel sends most packets to few addresses, so this saves the
        # per-length probes. Emptied by every change to the table, and bounded.
        self._cache: dict[bytes, P | None] = {}

    # --- mutation ---------------------------------------------------------------------------------------

    def insert(self, network: Network, peer: P) -> None:
        """Route ``network`` to ``peer``.

        If the identical prefix already belongs to another peer, it moves to ``peer`` (as ``wg set`` does).

        Args:
            network: The prefix; build it with ``ipaddress.ip_network(text, strict=False)`` so that host
                bits are already cleared.
            peer: The owner. Any object except ``None``; compared by identity.

        Raises:
            TypeError: ``network`` is not an ``IPv4Network`` or ``IPv6Network``.
            ValueError: ``peer`` is ``None``.
        """
        self._cache.clear()
        if peer is None:
            raise ValueError("None cannot own allowed IPs")
        family, entry = self._locate(network)
        _width, length, prefix = entry
        table = family.tables.get(length)
        if table is None:
            table = family.tables[length] = {}
            family.rebuild_probes()
        previous = table.get(prefix)
        if previous is peer:
            return
        table[prefix] = peer
        if previous is None:
            self._count += 1
        else:
            self._unindex(previous, entry)
        owned = self._owned(id(peer))
        if owned is None:
            self._by_peer[id(peer)] = (peer, {entry})
        else:
            owned[1].add(entry)

    def remove(self, network: Network, peer: P) -> bool:
        """Remove ``network`` if, and only if, ``peer`` owns it.

        Args:
            network: The exact prefix to remove (not a covering or covered one).
            peer: The peer expected to own it.

        Returns:
            ``True`` if the prefix was removed, ``False`` if it was absent or owned by another peer.

        Raises:
            TypeError: ``network`` is not an ``IPv4Network`` or ``IPv6Network``.
        """
        self._cache.clear()
        family, entry = self._locate(network)
        _width, length, prefix = entry
        table = family.tables.get(length)
        if table is None or table.get(prefix) is not peer:
            return False
        self._drop(family, length, table, prefix)
        self._unindex(peer, entry)
        if length not in family.tables:
            family.rebuild_probes()
        return True

    def remove_by_peer(self, peer: P) -> None:
        """Remove every prefix that ``peer`` owns (kernel ``wg_allowedips_remove_by_peer``)."""
        self._cache.clear()
        owned = self._by_peer.pop(id(peer), None)
        if owned is None:
            return
        self._shared.discard(id(peer))
        touched: set[int] = set()
        for width, length, prefix in owned[1]:
            family = self._v4 if width == _V4_WIDTH else self._v6
            self._drop(family, length, family.tables[length], prefix)
            touched.add(width)
        if _V4_WIDTH in touched:
            self._v4.rebuild_probes()
        if _V6_WIDTH in touched:
            self._v6.rebuild_probes()

    def clear(self) -> None:
        """Remove every prefix of every peer."""
        self._cache.clear()
        self._v4 = _Family(_V4_WIDTH)
        self._v6 = _Family(_V6_WIDTH)
        self._by_peer.clear()
        self._shared = set()
        self._count = 0

    def copy(self) -> AllowedIPs[P]:
        """An independent table with the same routes (the peers are shared, not copied): a configuration change is
        built on a copy while this table keeps routing, and swapped in at once (``device.ConfigurationChange``)."""
        clone: AllowedIPs[P] = AllowedIPs()
        for mine, theirs in ((self._v4, clone._v4), (self._v6, clone._v6)):
            theirs.tables = {length: table.copy() for length, table in mine.tables.items()}
            theirs.rebuild_probes()
        clone._by_peer = self._by_peer.copy()
        clone._shared = set(clone._by_peer)
        self._shared = set(self._by_peer)  # either table copies a set before it changes it
        clone._count = self._count
        return clone

    def release_copies(self) -> None:
        """The table this one was copied from is gone (or will never change again): stop copying the sets shared
        with it before changing them, and forget their 100,000 keys."""
        self._shared = set()

    def compact(self) -> None:
        """Rebuild the dicts after many removals (a dict keeps the size it grew to; ``copy`` makes it fit)."""
        for family in (self._v4, self._v6):
            family.tables = {length: table.copy() for length, table in family.tables.items()}
            family.rebuild_probes()
        self._by_peer = self._by_peer.copy()
        self._shared = set(self._shared)
        self._cache = {}

    # --- queries ------------------------------------------------------------------------------------------

    def lookup(self, address: bytes) -> P | None:
        """Return the peer whose longest matching prefix contains ``address``.

        The per-packet path (kernel ``wg_allowedips_lookup_dst`` / ``_src``): no ``ipaddress`` objects.

        Args:
            address: A raw 4-byte IPv4 or 16-byte IPv6 address, as sliced from an IP header.

        Returns:
            The owning peer, or ``None`` if no prefix matches or ``address`` has any other length.
        """
        cached = self._cache.get(address, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        size = len(address)
        if size == _V4_SIZE:
            probes = self._v4.probes
        elif size == _V6_SIZE:
            probes = self._v6.probes
        else:
            return None
        key = int.from_bytes(address, "big")
        found: P | None = None
        for shift, get in probes:
            found = get(key >> shift)
            if found is not None:
                break
        cache = self._cache
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[bytes(address)] = found
        return found

    def lookup_ip(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> P | None:
        """Convenience form of :meth:`lookup` for text or ``ipaddress`` addresses (not for the hot path).

        Raises:
            ValueError: ``address`` is a string that is not an IP address.
        """
        if isinstance(address, str):
            address = ipaddress.ip_address(address)
        return self.lookup(address.packed)

    def entries_for_peer(self, peer: P) -> list[Network]:
        """The prefixes ``peer`` owns: IPv4 before IPv6, then by address, then by prefix length."""
        owned = self._by_peer.get(id(peer))
        if owned is None:
            return []
        ordered = sorted((width, prefix << (width - length), length) for width, length, prefix in owned[1])
        return [
            ipaddress.IPv4Network((address, length)) if width == _V4_WIDTH else ipaddress.IPv6Network((address, length))
            for width, address, length in ordered
        ]

    def __len__(self) -> int:
        """The number of prefixes in the table, both families together."""
        return self._count

    # --- internals ------------------------------------------------------------------------------------------

    def _locate(self, network: Network) -> tuple[_Family[P], _Entry]:
        if isinstance(network, ipaddress.IPv4Network):
            family = self._v4
        elif isinstance(network, ipaddress.IPv6Network):
            family = self._v6
        else:
            raise TypeError(f"expected IPv4Network or IPv6Network, got {type(network).__name__}")
        width = family.width
        length = network.prefixlen
        # An ipaddress network always has its host bits cleared, so the shift loses nothing.
        return family, (width, length, int(network.network_address) >> (width - length))

    def _drop(self, family: _Family[P], length: int, table: dict[int, P], prefix: int) -> None:
        """Delete one slot; the caller fixes the peer index and, if a table emptied, the probes."""
        del table[prefix]
        self._count -= 1
        if not table:
            del family.tables[length]

    def _unindex(self, peer: P, entry: _Entry) -> None:
        owned = self._owned(id(peer))
        if owned is None:
            return  # not indexed (every stored prefix is)
        owned[1].discard(entry)
        if not owned[1]:
            del self._by_peer[id(peer)]

    def _owned(self, key: int) -> tuple[P, set[_Entry]] | None:
        """The peer's index entry, its set no longer shared with another table (about to be changed)."""
        owned = self._by_peer.get(key)
        if owned is not None and self._shared and key in self._shared:
            owned = self._by_peer[key] = (owned[0], set(owned[1]))
            self._shared.discard(key)
        return owned
