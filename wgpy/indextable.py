"""Random 32-bit local indices for handshakes and keypairs (whitepaper §5.4.1; kernel peerlookup.c).

Theory of operation: every initiation and response carries a sender index chosen at random by its sender, and
every later message to that side carries it back as receiver index. The index is how a receiver finds, in one
dictionary lookup, the handshake a response answers or the keypair a transport message uses, without trying keys.
Indices are drawn from the injected ``rng`` so they reveal nothing, and a collision simply draws again.
When a handshake becomes a keypair, the keypair takes over the handshake's index (kernel
``wg_index_hashtable_replace``), so a transport message can arrive for an index that a response created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["IndexTable"]

P = TypeVar("P")
E = TypeVar("E")


class IndexTable(Generic[P, E]):
    """Maps a local index to (peer, entry), the entry being a ``Handshake`` or a ``Keypair``."""

    __slots__ = ("_entries", "_rng", "lookup")

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._entries: dict[int, tuple[P, E]] = {}
        #: ``lookup(index) -> (peer, entry) | None``: the dictionary's own ``get``, as it runs once per packet.
        self.lookup: Callable[[int], tuple[P, E] | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def peers(self) -> list[P]:
        """The peers that have at least one index (each once): those with a handshake or a session."""
        return list({id(peer): peer for peer, _ in self._entries.values()}.values())

    def insert(self, peer: P, entry: E) -> int:
        """Register ``entry`` under a new random index and return the index."""
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index not in self._entries:
                self._entries[index] = (peer, entry)
                return index

    def replace(self, index: int, peer: P, entry: E) -> None:
        """Let ``entry`` take over an index that is already registered."""
        self._entries[index] = (peer, entry)

    def remove(self, index: int, entry: E | None = None) -> None:
        """Forget ``index`` (only if it still maps to ``entry``, when given)."""
        current = self._entries.get(index)
        if current is not None and (entry is None or current[1] is entry):
            del self._entries[index]
