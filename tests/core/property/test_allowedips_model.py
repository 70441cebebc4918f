"""AllowedIPs against a naive longest-prefix list (Hypothesis state machine).

The model follows the idea of the kernel's ``horrible_allowedips`` in ``drivers/net/wireguard/selftest/allowedips.c``
(and wireguard-go's ``SlowRouter`` in ``device/allowedips_rand_test.go``): keep a flat list of
(family, prefix, length, peer) and answer a lookup by scanning all of it for the matching entry with the greatest
length. It is obviously right and obviously slow, which is the point. The code here is our own.

Addresses are drawn close to a few fixed seeds per family, so that prefixes nest, collide, replace each other and
sit side by side, and lookups are drawn near prefixes that were inserted, so that most of them hit something.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from wgpy.allowedips import AllowedIPs, Network


class Peer:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


PEERS = [Peer(name) for name in "abcd"]
WIDTHS = {4: 32, 6: 128}
SEEDS = {
    4: [0x0A000000, 0xC0000200, 0xFFFFFFFF, 0x00000000],
    6: [0x20010DB8 << 96, (0x20010DB8 << 96) | (0xABCD << 64), (1 << 128) - 1, 0],
}


@dataclass
class ModelEntry:
    version: int
    prefix: int  # the network address as an int, host bits zero
    length: int
    peer: Peer

    def contains(self, version: int, address: int) -> bool:
        width = WIDTHS[version]
        return version == self.version and (address >> (width - self.length)) == (self.prefix >> (width - self.length))

    def network(self) -> Network:
        if self.version == 4:
            return ipaddress.IPv4Network((self.prefix, self.length))
        return ipaddress.IPv6Network((self.prefix, self.length))


class HorribleAllowedIPs:
    """The flat-list model."""

    def __init__(self) -> None:
        self.entries: list[ModelEntry] = []

    def insert(self, version: int, prefix: int, length: int, peer: Peer) -> None:
        for entry in self.entries:
            if (entry.version, entry.prefix, entry.length) == (version, prefix, length):
                entry.peer = peer
                return
        self.entries.append(ModelEntry(version, prefix, length, peer))

    def remove(self, version: int, prefix: int, length: int, peer: Peer) -> bool:
        for entry in self.entries:
            if (entry.version, entry.prefix, entry.length, entry.peer) == (version, prefix, length, peer):
                self.entries.remove(entry)
                return True
        return False

    def remove_by_peer(self, peer: Peer) -> None:
        self.entries = [entry for entry in self.entries if entry.peer is not peer]

    def lookup(self, version: int, address: int) -> Peer | None:
        best: ModelEntry | None = None
        for entry in self.entries:
            if entry.contains(version, address) and (best is None or entry.length > best.length):
                best = entry
        return None if best is None else best.peer

    def entries_for_peer(self, peer: Peer) -> list[tuple[int, int, int]]:
        return sorted((e.version, e.prefix, e.length) for e in self.entries if e.peer is peer)


@st.composite
def near(draw: st.DrawFn, version: int, base: int) -> int:
    """An address that shares a random number of leading bits with ``base``."""
    width = WIDTHS[version]
    kept = draw(st.integers(0, width))
    noise = draw(st.integers(0, (1 << (width - kept)) - 1)) if kept < width else 0
    return ((base >> (width - kept)) << (width - kept) | noise) if kept else noise


@st.composite
def prefixes(draw: st.DrawFn) -> tuple[int, int, int]:
    version = draw(st.sampled_from([4, 6]))
    width = WIDTHS[version]
    seed = draw(st.sampled_from(SEEDS[version]))
    address = draw(near(version, seed))
    # Favour a few lengths so that identical prefixes come up and replace each other.
    length = draw(st.one_of(st.sampled_from([0, width // 4, width // 2, width - 8, width]), st.integers(0, width)))
    masked = (address >> (width - length)) << (width - length) if length else 0
    return version, masked, length


def to_network(version: int, prefix: int, length: int) -> Network:
    if version == 4:
        return ipaddress.IPv4Network((prefix, length))
    return ipaddress.IPv6Network((prefix, length))


class AllowedIPsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table: AllowedIPs[Peer] = AllowedIPs()
        self.model = HorribleAllowedIPs()

    @rule(p=prefixes(), peer=st.sampled_from(PEERS))
    def insert(self, p: tuple[int, int, int], peer: Peer) -> None:
        self.table.insert(to_network(*p), peer)
        self.model.insert(*p, peer)

    @rule(data=st.data(), peer=st.sampled_from(PEERS))
    def remove_existing(self, data: st.DataObject, peer: Peer) -> None:
        """Remove a prefix that is present, sometimes naming the wrong owner."""
        if not self.model.entries:
            return
        entry = data.draw(st.sampled_from(self.model.entries))
        key = (entry.version, entry.prefix, entry.length)
        assert self.table.remove(entry.network(), peer) == self.model.remove(*key, peer)

    @rule(p=prefixes(), peer=st.sampled_from(PEERS))
    def remove_any(self, p: tuple[int, int, int], peer: Peer) -> None:
        assert self.table.remove(to_network(*p), peer) == self.model.remove(*p, peer)

    @rule(peer=st.sampled_from(PEERS))
    def remove_by_peer(self, peer: Peer) -> None:
        self.table.remove_by_peer(peer)
        self.model.remove_by_peer(peer)

    @rule(data=st.data())
    def lookup_near_inserted(self, data: st.DataObject) -> None:
        if self.model.entries:
            entry = data.draw(st.sampled_from(self.model.entries))
            version, base = entry.version, entry.prefix
        else:
            version = data.draw(st.sampled_from([4, 6]))
            base = data.draw(st.sampled_from(SEEDS[version]))
        address = data.draw(near(version, base))
        raw = address.to_bytes(WIDTHS[version] // 8, "big")
        assert self.table.lookup(raw) is self.model.lookup(version, address)

    @rule(p=prefixes())
    def lookup_anywhere(self, p: tuple[int, int, int]) -> None:
        version, address, _length = p
        raw = address.to_bytes(WIDTHS[version] // 8, "big")
        assert self.table.lookup(raw) is self.model.lookup(version, address)

    @invariant()
    def same_size_and_entries(self) -> None:
        assert len(self.table) == len(self.model.entries)
        for peer in PEERS:
            listed = [(n.version, int(n.network_address), n.prefixlen) for n in self.table.entries_for_peer(peer)]
            assert listed == self.model.entries_for_peer(peer)


AllowedIPsMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestAllowedIPsModel = AllowedIPsMachine.TestCase
