"""Peer (kernel peer.c): plain state, and the staged-packet queue bounded like the kernel's."""

from __future__ import annotations

from support.helpers import private_key

from wgpy.constants import MAX_STAGED_PACKETS
from wgpy.keys import PresharedKey
from wgpy.noise import StaticIdentity
from wgpy.peer import Peer


def test_a_new_peer_has_nothing_yet() -> None:
    peer = Peer(private_key(2).public_key(), StaticIdentity(private_key(1)), persistent_keepalive_interval=5)
    assert peer.endpoint is None and peer.keypairs.all() == [] and not peer.staged
    assert (peer.rx_bytes, peer.tx_bytes, peer.last_handshake_at) == (0, 0, None)
    assert peer.persistent_keepalive_interval == 5
    assert peer.preshared_key == PresharedKey.zero()
    assert repr(peer) == f"peer({private_key(2).public_key().short()})"


def test_staging_drops_the_oldest_packet_when_full() -> None:
    peer = Peer(private_key(2).public_key(), None)
    assert all(peer.stage(bytes([n % 256])) for n in range(MAX_STAGED_PACKETS))
    assert not peer.stage(b"new")
    assert len(peer.staged) == MAX_STAGED_PACKETS
    assert peer.staged[0] == b"\x01" and peer.staged[-1] == b"new"
