"""IndexTable edges that the mutation audit of ``wgpy/indextable.py`` found unpinned.

Sources of the expected values: the whitepaper §5.4.2 (the sender index is "a random 32-bit value"; the kernel's
``wg_index_hashtable_insert`` in ``drivers/net/wireguard/peerlookup.c`` draws it with ``get_random_u32()``), so
every one of the 2**32 values can be drawn and an index takes four bytes of the rng; ``IndexTable.peers``'s
docstring ("the peers that have at least one index (each once)"); and the kernel's ``wg_peer_remove`` /
``peer_remove_after_dead`` (``peer.c``), which clear the removed peer's keypairs and handshake out of the index
hashtable, so that a transport message of its session no longer finds a keypair (``wg_packet_consume_data``:
dropped) — wgpy finds the removed peers to close through ``IndexTable.peers`` at ``ConfigurationChange.commit``.
"""

from __future__ import annotations

import struct

from support.helpers import ENDPOINT_A, make_pair

from wgpy.errors import DropReason
from wgpy.indextable import IndexTable
from wgpy.send import pad


def test_an_index_is_four_bytes_of_the_rng() -> None:
    """Kills ``self._rng(3)``: each draw asks for exactly 4 bytes, and all-ones bytes give 2**32 - 1."""
    asked: list[int] = []

    def rng(n: int) -> bytes:
        asked.append(n)
        return b"\xff" * n

    table: IndexTable[str, str] = IndexTable(rng)
    assert table.insert("peer", "entry") == 2**32 - 1
    assert asked == [4]


def test_peers_lists_each_peer_with_an_index_once() -> None:
    """Kills ``return None`` in ``peers``: a peer with two indices is listed once, one whose last index went is not."""
    draws = iter(range(1, 100))
    table: IndexTable[str, str] = IndexTable(lambda n: next(draws).to_bytes(n, "little"))
    one = table.insert("p1", "handshake")
    table.insert("p1", "keypair")
    two = table.insert("p2", "handshake")
    assert sorted(table.peers()) == ["p1", "p2"]
    table.remove(two)
    assert table.peers() == ["p1"]
    table.remove(one)
    assert table.peers() == ["p1"]
    assert len(table) == 1


def test_a_removed_peers_session_is_closed() -> None:
    """After a change removes A from B, a transport message of A's live session is UNKNOWN_INDEX at B and delivers
    nothing (kernel ``wg_peer_remove``). Kills ``return None`` in ``peers`` (the commit closes what it lists)."""
    pair = make_pair()
    pair.handshake()
    now = pair.net.now
    a_keypair = pair.peer_b.keypairs.current
    assert a_keypair is not None
    message = a_keypair.seal(pad(pair.a_to_b(b"after removal"), 1420))
    assert message is not None
    index = struct.unpack_from("<I", message, 4)[0]
    assert pair.b.index_table.lookup(index) is not None
    change = pair.b.begin_change()
    assert change.remove_peer(pair.pub_a)
    change.commit(now)
    assert pair.b.index_table.lookup(index) is None
    pair.b.stats.drops.clear()
    pair.b.receive_datagram(message, ENDPOINT_A, now)
    assert pair.b.stats.drops == {DropReason.UNKNOWN_INDEX: 1}
    assert pair.b.packets_to_tun() == []
