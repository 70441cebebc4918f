"""The Device's own configuration API (kernel device.c / netlink.c, wireguard-go device.go): keys, peers, allowed
IPs, keepalive, the sealer switch and the timer heap. The send and receive paths have their own files."""

from __future__ import annotations

import gc
import ipaddress
import os

import pytest
from support.helpers import ENDPOINT_A, ENDPOINT_B, det_rng, make_device, make_pair, message_type, private_key

from wgpy.device import DEFAULT_MTU, Device
from wgpy.errors import ConfigError
from wgpy.events import PeerRemoved
from wgpy.keys import PresharedKey, PublicKey
from wgpy.messages import MessageType
from wgpy.peer import Peer
from wgpy.send import InlineSealer, OffloadSealer


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_a_new_device_has_no_key_no_peers_no_timer_and_no_socket_state() -> None:
    device = Device(rng=det_rng(1))
    assert device.private_key is None and device.public_key is None
    assert device.peers == {} and device.get_timer() is None and device.next_event() is None
    assert device.mtu == DEFAULT_MTU
    assert not hasattr(device, "listen_port") and not hasattr(device, "fwmark")  # the driver's (Tunnel)
    assert Device(listen_port=51820).peers == {}  # the old keyword is still accepted, and means nothing here


def test_set_private_key_derives_the_public_key_and_none_clears_it() -> None:
    device = Device()
    device.set_private_key(private_key(1))
    assert device.public_key == private_key(1).public_key()
    device.set_private_key(None)
    assert device.private_key is None and device.public_key is None


def test_a_new_private_key_drops_every_session_and_removes_a_peer_with_our_new_key() -> None:
    pair = make_pair()
    pair.handshake()
    assert pair.peer_b.keypairs.current is not None
    own_next = private_key(99)
    pair.a.add_peer(own_next.public_key())
    pair.a.set_private_key(own_next)
    assert pair.peer_b.keypairs.all() == []
    assert own_next.public_key() not in pair.a.peers
    assert len(pair.a.index_table) == 0


def test_setting_the_same_private_key_changes_nothing() -> None:
    pair = make_pair()
    pair.handshake()
    keypair = pair.peer_b.keypairs.current
    pair.a.set_private_key(private_key(1))  # make_pair's A has the key of seed 1
    assert pair.peer_b.keypairs.current is keypair


def test_add_peer_validates_everything_before_changing_anything() -> None:
    device = make_device(1)
    other = private_key(2).public_key()
    with pytest.raises(ConfigError):
        device.add_peer(other, allowed_ips=["10.0.0.0/24", "not a network"])
    with pytest.raises(ConfigError):
        device.add_peer(other, persistent_keepalive_interval=65536)
    assert device.peers == {}
    with pytest.raises(ConfigError):
        device.add_peer(private_key(1).public_key())  # our own key
    with pytest.raises(ConfigError):
        device.add_peer(b"\x00" * 32)  # type: ignore[arg-type]


def test_add_peer_updates_an_existing_peer_and_keeps_what_it_does_not_mention() -> None:
    device = make_device(1)
    key = private_key(2).public_key()
    peer = device.add_peer(key, endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"], persistent_keepalive_interval=25)
    again = device.add_peer(key, allowed_ips=["10.0.1.0/24"])
    assert again is peer
    assert peer.endpoint == ENDPOINT_B and peer.persistent_keepalive_interval == 25
    assert sorted(map(str, device.allowed_ips.entries_for_peer(peer))) == ["10.0.0.2/32", "10.0.1.0/24"]
    assert device.peer(key) is peer


def test_remove_peer_frees_its_indices_and_prefixes_and_says_so() -> None:
    pair = make_pair()
    pair.handshake()
    pub_b = pair.pub_b
    assert pair.a.remove_peer(pub_b)
    assert not pair.a.remove_peer(pub_b)
    assert len(pair.a.index_table) == 0
    assert pair.a.allowed_ips.lookup(_addr("10.0.0.2")) is None
    assert PeerRemoved(pub_b) in pair.events(pair.a)
    assert pair.a.get_timer() is None  # its deadlines left the heap


def test_clear_peers_removes_them_all() -> None:
    device = make_device(1)
    for seed in (2, 3, 4):
        device.add_peer(private_key(seed).public_key())
    device.clear_peers()
    assert device.peers == {}


def test_set_preshared_key_and_none_is_the_zero_key() -> None:
    device = make_device(1)
    peer = device.add_peer(private_key(2).public_key(), preshared_key=PresharedKey(bytes([7]) * 32))
    assert peer.preshared_key == PresharedKey(bytes([7]) * 32)
    device.set_preshared_key(peer, None)
    assert peer.preshared_key == PresharedKey.zero()


def test_set_allowed_ips_replaces_and_moves_a_prefix_between_peers() -> None:
    device = make_device(1)
    one = device.add_peer(private_key(2).public_key(), allowed_ips=["10.0.0.0/24"])
    two = device.add_peer(private_key(3).public_key(), allowed_ips=["10.1.0.0/24"])
    device.set_allowed_ips(two, ["10.0.0.0/24"])
    assert device.allowed_ips.lookup(_addr("10.0.0.5")) is two
    assert device.allowed_ips.lookup(_addr("10.1.0.5")) is None
    assert list(device.allowed_ips.entries_for_peer(one)) == []
    with pytest.raises(ConfigError):
        device.set_allowed_ips(two, ["nonsense"])
    assert device.allowed_ips.lookup(_addr("10.0.0.5")) is two  # a refused list changes nothing


def test_a_new_persistent_keepalive_sends_one_at_once_and_arms_the_timer() -> None:
    pair = make_pair()
    pair.handshake()
    pair.a.set_persistent_keepalive(pair.peer_b, 10, pair.net.now)
    sent = pair.a.datagrams_to_send()
    assert [message_type(data) for data, _ in sent] == [MessageType.TRANSPORT]
    assert pair.peer_b.timers.persistent_keepalive_at == pair.net.now + 10
    assert pair.a.get_timer() is not None and pair.a.get_timer() <= pair.net.now + 10  # type: ignore[operator]
    pair.a.set_persistent_keepalive(pair.peer_b, 0, pair.net.now)
    assert pair.peer_b.timers.persistent_keepalive_at is None
    with pytest.raises(ConfigError):
        pair.a.set_persistent_keepalive(pair.peer_b, -1, pair.net.now)


def test_reset_sessions_forgets_the_keys_and_lets_the_next_packet_handshake_at_once() -> None:
    pair = make_pair()
    pair.handshake()
    pair.a.reset_sessions(pair.peer_b)
    assert pair.peer_b.keypairs.all() == [] and pair.peer_b.last_sent_handshake_at is None
    pair.a.send_packet(pair.a_to_b(b"x"), pair.net.now)
    assert [message_type(data) for data, _ in pair.a.datagrams_to_send()] == [MessageType.INITIATION]


def test_seal_offload_swaps_the_sealer() -> None:
    device = make_device(1)
    assert isinstance(device.sealer, InlineSealer) and not device.seal_offload
    device.seal_offload = True
    assert isinstance(device.sealer, OffloadSealer) and device.seal_offload
    device.seal_offload = False
    assert isinstance(device.sealer, InlineSealer)


def test_the_timer_heap_sees_a_deadline_set_through_the_peer_timers_directly() -> None:
    """Timers mark their own peer: no caller has to tell the device's heap."""
    device = make_device(1)
    peer = device.add_peer(private_key(2).public_key(), endpoint=ENDPOINT_A)
    assert device.get_timer() is None
    peer.timers.on_handshake_initiated(100.0, 0.0)
    assert device.get_timer() == peer.timers.retransmit_handshake_at
    peer.timers.on_handshake_complete()
    assert device.get_timer() is None
    peer.timers.on_session_derived(5.0)
    assert device.get_timer() == peer.timers.zero_key_material_at
    peer.timers.stop()
    assert device.get_timer() is None


def test_wall_ns_at_follows_the_latest_wall_clock_given() -> None:
    device = make_device(1)
    device.handle_timer(10.0, wall_ns=1_000_000_000_000)
    assert device.wall_ns_at(10.0) == 1_000_000_000_000
    assert device.wall_ns_at(12.5) == 1_000_000_000_000 + 2_500_000_000
    device.send_packets([], 20.0, wall_ns=5_000_000_000_000)
    assert device.wall_ns_at(20.0) == 5_000_000_000_000


def test_removed_peers_are_freed_at_once() -> None:
    """Issue #11 item 4: removed peers must not stay in memory. The timers' watcher (a partial over the peer) made
    every peer a reference cycle that only the cyclic collector frees, and stale timer-heap entries held removed
    peers until their deadline (minutes for the zeroing timer). With the collector off, none may remain."""
    device = make_device(1)
    keys = [PublicKey(os.urandom(32)) for _ in range(500)]
    for key in keys:
        device.add_peer(key, endpoint=ENDPOINT_B, persistent_keepalive_interval=25, now=1.0)
    assert device.get_timer() is not None
    gc.collect()
    gc.disable()
    try:
        for key in keys:
            device.remove_peer(key)
        assert device.get_timer() is None
        while device.next_event() is not None:
            pass
        assert [o for o in gc.get_objects() if type(o) is Peer] == []
    finally:
        gc.enable()
