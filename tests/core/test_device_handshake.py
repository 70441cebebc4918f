"""Two (or more) Devices over a MemoryNetwork: handshakes, key confirmation, retransmission, restarts, reconfiguration.

The clock is stepped by hand through ``MemoryNetwork.advance``; every rng is seeded, so each scenario is replayable.
"""

from __future__ import annotations

import itertools
from ipaddress import ip_network

import pytest
from support.helpers import (
    ADDR_A,
    ADDR_A6,
    ADDR_B,
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    datagrams_from,
    det_rng,
    drops_total,
    ipv4_packet,
    make_device,
    make_pair,
    message_type,
    private_key,
    pub,
    transport_header,
)

from wgpy.constants import MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from wgpy.device import Device
from wgpy.errors import ConfigError, DropReason
from wgpy.events import Endpoint, Event, HandshakeCompleted, KeypairExpired, PeerRemoved
from wgpy.keys import PresharedKey
from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork

INITIATION = int(MessageType.INITIATION)
RESPONSE = int(MessageType.RESPONSE)
TRANSPORT = int(MessageType.TRANSPORT)


def drain(device: Device) -> list[Event]:
    events: list[Event] = []
    while (event := device.next_event()) is not None:
        events.append(event)
    return events


def wire(net: MemoryNetwork) -> list[tuple[Endpoint, int]]:
    return [(src, message_type(data)) for src, data, _dst in net.sent]


def assert_matching_sessions(pair: Pair) -> None:
    """Both sides hold the same session as ``current``: indices cross, and it carries traffic both ways."""
    ka = pair.peer_b.keypairs.current
    kb = pair.peer_a.keypairs.current
    assert ka is not None and kb is not None
    assert (ka.local_index, ka.remote_index) == (kb.remote_index, kb.local_index)
    assert ka.is_initiator != kb.is_initiator


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_handshake_from_either_side(initiator: str) -> None:
    pair = make_pair()
    if initiator == "a":
        packet = pair.send_a(b"ping")
        receiver, first, second = pair.node_b, ENDPOINT_A, ENDPOINT_B
    else:
        packet = pair.send_b(b"ping")
        receiver, first, second = pair.node_a, ENDPOINT_B, ENDPOINT_A
    assert receiver.delivered == [packet]
    # Initiation, response, then the initiator's data (which confirms the session to the responder).
    assert wire(pair.net) == [(first, INITIATION), (second, RESPONSE), (first, TRANSPORT)]
    assert_matching_sessions(pair)
    init_dev, resp_dev = (pair.a, pair.b) if initiator == "a" else (pair.b, pair.a)
    assert drain(init_dev) == [HandshakeCompleted(pub(resp_dev), is_initiator=True)]
    assert drain(resp_dev) == [HandshakeCompleted(pub(init_dev), is_initiator=False)]
    assert drops_total(pair.a) == drops_total(pair.b) == 0
    # And back the other way on the same session, with no further handshake.
    reply = pair.send_a(b"x") if initiator == "b" else pair.send_b(b"x")
    assert (pair.node_b if initiator == "b" else pair.node_a).delivered == [reply]
    assert pair.a.stats.handshakes_completed == pair.b.stats.handshakes_completed == 1


def test_responder_without_endpoint_learns_it_and_flushes_staged() -> None:
    pair = make_pair(endpoint_known_by_b=False)
    early = pair.send_b(b"B has no endpoint for A yet")
    assert pair.net.sent == []  # nowhere to send an initiation: staged
    assert list(pair.peer_a.staged) == [early]
    packet = pair.send_a(b"hello")
    assert pair.node_b.delivered == [packet]
    assert pair.peer_a.endpoint == ENDPOINT_A
    # B's staged packet left as soon as A's data confirmed the session.
    assert pair.node_a.delivered == [early]


def test_simultaneous_initiations_converge_and_deliver_once() -> None:
    pair = make_pair()
    net = pair.net
    pa, pb = pair.a_to_b(b"from a"), pair.b_to_a(b"from b")
    pair.a.send_packet(pa, net.now, net.wall_ns)
    pair.b.send_packet(pb, net.now, net.wall_ns)
    net.pump()  # the two initiations cross
    assert [t for _, t in wire(net)].count(INITIATION) == 2
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + 0.01)  # the earlier retransmission settles it
    assert pair.node_b.delivered == [pa]
    assert pair.node_a.delivered == [pb]
    assert_matching_sessions(pair)
    # The crossing responses pointed at initiations that had been replaced: dropped and counted, nothing else.
    assert set(pair.a.stats.drops) | set(pair.b.stats.drops) <= {DropReason.UNKNOWN_INDEX}
    before = len(net.sent)
    again = pair.send_a(b"again"), pair.send_b(b"again")
    assert pair.node_b.delivered[-1] == again[0] and pair.node_a.delivered[-1] == again[1]
    assert [message_type(d) for _, d, _ in net.sent[before:]] == [TRANSPORT, TRANSPORT]


def test_key_confirmation_responder_waits_for_initiator_data() -> None:
    """A responder must not send on a new keypair before the initiator has used it (whitepaper §5.4.5)."""
    pair = make_pair()
    net = pair.net
    held: list[bytes] = []

    def hold_first_transport_from_a(src: Endpoint, data: bytes, dst: Endpoint) -> bytes | None:
        if src == ENDPOINT_A and message_type(data) == TRANSPORT and not held:
            held.append(data)
            return None
        return data

    net.tap = hold_first_transport_from_a
    first = pair.send_a(b"first")
    assert len(held) == 1 and pair.node_b.delivered == []
    assert pair.peer_a.keypairs.next is not None and pair.peer_a.keypairs.current is None
    # B has data for A, but only an unconfirmed keypair: it stages, and (having just sent a response) does not
    # start a handshake of its own.
    net.advance(1.0)
    reply = pair.send_b(b"reply")
    assert datagrams_from(net, ENDPOINT_B, MessageType.TRANSPORT) == []
    assert list(pair.peer_a.staged) == [reply]
    assert pair.peer_a.last_handshake_at is None  # not complete until confirmed
    # The initiator's data arrives: the session is confirmed and B's staged packet leaves right after.
    net.inject(held[0], ENDPOINT_A, ENDPOINT_B)
    assert pair.node_b.delivered == [first]
    assert pair.node_a.delivered == [reply]
    assert pair.peer_a.last_handshake_at == net.now
    order = [src for src, data, _ in net.sent if message_type(data) == TRANSPORT]
    assert order[0] == ENDPOINT_A  # the held one (the tap saw it first)
    assert order.index(ENDPOINT_B) > 0


def test_key_confirmation_order_on_the_wire(pair: Pair) -> None:
    seen: list[tuple[Endpoint, int]] = []

    def record(src: Endpoint, data: bytes, dst: Endpoint) -> bytes:
        seen.append((src, message_type(data)))
        return data

    pair.net.tap = record
    # Both have data. A's initiation reaches B first; B's packet then finds only the unconfirmed `next` keypair,
    # and B's own initiation is rate limited (it has just made a response), so the packet is staged.
    net = pair.net
    pa, pb = pair.a_to_b(b"a"), pair.b_to_a(b"b")
    pair.a.send_packet(pa, net.now, net.wall_ns)
    for data, destination in pair.a.datagrams_to_send():
        pair.b.receive_datagram(data, ENDPOINT_A, net.now, net.wall_ns)  # B consumes the initiation
        seen.append((ENDPOINT_A, message_type(data)))
        assert destination == ENDPOINT_B
    pair.b.send_packet(pb, net.now, net.wall_ns)
    assert list(pair.peer_a.staged) == [pb]
    pending = pair.b.datagrams_to_send()
    assert [message_type(d) for d, _ in pending] == [RESPONSE]  # no transport from B yet
    for data, destination in pending:
        assert destination == ENDPOINT_A
        seen.append((ENDPOINT_B, message_type(data)))
        pair.a.receive_datagram(data, ENDPOINT_B, net.now, net.wall_ns)  # A consumes the response, sends data
    net.pump()
    transports = [src for src, kind in seen if kind == TRANSPORT]
    assert transports[0] == ENDPOINT_A
    assert ENDPOINT_B in transports
    assert pair.node_b.delivered == [pa] and pair.node_a.delivered == [pb]


@pytest.mark.parametrize("tick", [None, 0.25])
def test_handshake_retransmission_then_gives_up(tick: float | None) -> None:
    net = MemoryNetwork(seed=3, tick=tick)
    pair = make_pair(net=net)
    net.blocked.add(ENDPOINT_B)  # the responder is unreachable
    times: list[float] = []

    def record(src: Endpoint, data: bytes, dst: Endpoint) -> bytes:
        if src == ENDPOINT_A and message_type(data) == INITIATION:
            times.append(net.now)
        return data

    net.tap = record
    pair.send_a(b"never arrives")
    net.advance(200.0)
    # One initiation plus MAX_TIMER_HANDSHAKES + 1 retransmissions (kernel: "after 20 attempts, giving up").
    assert len(times) == MAX_TIMER_HANDSHAKES + 2
    slack = tick or 0.0
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(REKEY_TIMEOUT <= gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + slack + 1e-9 for gap in gaps)
    assert len(pair.peer_b.staged) == 0  # purged on giving up
    assert pair.peer_b.timers.retransmit_handshake_at is None
    # Nothing more until the 3 x REJECT_AFTER_TIME key zeroing, which sends nothing either.
    net.advance(3 * REJECT_AFTER_TIME)
    assert len(times) == MAX_TIMER_HANDSHAKES + 2
    assert KeypairExpired(pair.pub_b) in drain(pair.a)
    # A new packet starts a fresh round of attempts, and heals once B is reachable.
    net.blocked.clear()
    packet = pair.send_a(b"now it does")
    assert pair.node_b.delivered == [packet]


@pytest.mark.parametrize("who_restarts", ["responder", "initiator"])
@pytest.mark.parametrize("who_sends_first", ["survivor", "restarted"])
def test_recovery_after_peer_restart(connected: Pair, who_restarts: str, who_sends_first: str) -> None:
    pair = connected
    net = pair.net
    net.advance(2.0)
    old, endpoint, other_endpoint = (
        (pair.b, ENDPOINT_B, ENDPOINT_A) if who_restarts == "responder" else (pair.a, ENDPOINT_A, ENDPOINT_B)
    )
    survivor = pair.a if old is pair.b else pair.b
    old_key = old.private_key
    assert old_key is not None
    restarted = Device(old_key, rng=det_rng(4242))  # same identity, all state lost
    restarted.add_peer(
        pub(survivor),
        endpoint=other_endpoint,
        allowed_ips=[f"{ADDR_A}/32", f"{ADDR_A6}/128"] if old is pair.b else [f"{ADDR_B}/32"],
        now=net.now,
    )
    node = net.attach(restarted, endpoint)
    survivor_node = pair.node_a if survivor is pair.a else pair.node_b
    src, dst = (ADDR_A, ADDR_B) if survivor is pair.a else (ADDR_B, ADDR_A)
    if who_sends_first == "survivor":
        # The survivor still has keys the restarted side forgot: dropped as UNKNOWN_INDEX until the survivor's
        # "sent data, heard nothing" timer starts a new handshake.
        lost = ipv4_packet(src, dst, b"lost")
        net.send_packet(survivor, lost)
        assert restarted.stats.drops[DropReason.UNKNOWN_INDEX] == 1
        net.advance(16.0)
        assert node.delivered == []  # the data packet itself is gone
    else:
        net.send_packet(restarted, ipv4_packet(dst, src, b"I am back"))
        assert survivor_node.delivered[-1] == ipv4_packet(dst, src, b"I am back")
    packet = ipv4_packet(src, dst, b"after restart")
    net.send_packet(survivor, packet)
    assert node.delivered[-1:] == [packet]
    back = ipv4_packet(dst, src, b"and back")
    net.send_packet(restarted, back)
    assert survivor_node.delivered[-1:] == [back]


def test_private_key_change_rehandshakes(connected: Pair) -> None:
    pair = connected
    net = pair.net
    net.advance(1.0)
    old_public = pair.pub_a
    new_key = private_key(99)
    pair.a.set_private_key(new_key)
    assert pair.a.public_key == new_key.public_key()
    assert pair.peer_b.keypairs.all() == []
    assert len(pair.a.index_table) == 0
    # B learns A's new public key (what `wg set` would do) and keeps everything else.
    pair.b.remove_peer(old_public)
    pair.b.add_peer(new_key.public_key(), endpoint=ENDPOINT_A, allowed_ips=[f"{ADDR_A}/32"], now=net.now)
    # Only one second after the last handshake: the new handshake must not wait out the initiation rate limit.
    packet = pair.send_a(b"with the new key")
    assert pair.node_b.delivered == [packet]
    back = pair.send_b(b"back")
    assert pair.node_a.delivered == [back]


@pytest.mark.parametrize("offload", [False, True])
def test_reset_sessions_rehandshakes_at_once(connected: Pair, offload: bool) -> None:
    pair = connected
    net = pair.net
    pair.a.seal_offload = offload
    net.advance(1.0)  # well inside REKEY_TIMEOUT of the last initiation
    handshakes = pair.a.stats.handshakes_completed
    old = pair.peer_b.keypairs.all()
    assert old
    pair.a.seal_jobs()
    pair.a.reset_sessions(pair.peer_b)
    assert pair.peer_b.keypairs.all() == [] and all(not k.valid for k in old)
    assert len(pair.a.index_table) == 0
    if offload:  # whoever seals for A must drop the keys too
        assert {job.local_index for job in pair.a.seal_jobs()} == {k.local_index for k in old}
    sent_before = len(datagrams_from(net, ENDPOINT_A, MessageType.INITIATION))
    packet = pair.send_a(b"after the reset")
    assert len(datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)) == sent_before + 1
    assert pair.a.stats.handshakes_completed == handshakes + 1
    assert pair.node_b.delivered == [packet]
    assert pair.a.public_key == pair.pub_a  # the identity is untouched
    assert pair.peer_a.endpoint == ENDPOINT_A and pair.b.stats.drops[DropReason.UNKNOWN_INDEX] == 0


def test_private_key_change_old_identity_rejected(connected: Pair) -> None:
    """A peer that still knows the old public key cannot complete a handshake (mac1 is keyed by it)."""
    pair = connected
    net = pair.net
    pair.a.set_private_key(private_key(98))
    net.advance(REKEY_TIMEOUT + 1)
    # B's session with A's old identity is gone on A's side: B's data is dropped, and B's initiation (to the old
    # key) fails mac1.
    pair.send_b(b"to the old A")
    assert pair.a.stats.drops[DropReason.UNKNOWN_INDEX] == 1
    net.advance(16.0)  # B's new-handshake timer
    assert pair.a.stats.drops[DropReason.INVALID_MAC] >= 1
    assert pair.node_a.delivered == []


def test_peers_added_updated_removed_without_disturbing_others() -> None:
    net = MemoryNetwork(seed=7)
    a = make_device(10)
    devices = {name: make_device(seed) for name, seed in (("b", 11), ("c", 12), ("d", 13))}
    endpoints = {"b": ("192.0.2.11", 51820), "c": ("192.0.2.12", 51820), "d": ("192.0.2.13", 51820)}
    addresses = {"b": "10.0.0.11", "c": "10.0.0.12", "d": "10.0.0.13"}
    node_a = net.attach(a, ENDPOINT_A)
    nodes = {name: net.attach(dev, endpoints[name]) for name, dev in devices.items()}
    assert a.public_key is not None
    for name in ("b", "c"):
        dev = devices[name]
        assert dev.public_key is not None
        a.add_peer(dev.public_key, endpoint=endpoints[name], allowed_ips=[f"{addresses[name]}/32"])
        dev.add_peer(a.public_key, endpoint=ENDPOINT_A, allowed_ips=[f"{ADDR_A}/32"])

    def ping(name: str, payload: bytes) -> None:
        packet = ipv4_packet(ADDR_A, addresses[name], payload)
        net.send_packet(a, packet)
        assert nodes[name].delivered[-1:] == [packet]
        back = ipv4_packet(addresses[name], ADDR_A, payload)
        net.send_packet(devices[name], back)
        assert node_a.delivered[-1:] == [back]

    ping("b", b"1")
    ping("c", b"1")
    pub_b, pub_c = devices["b"].public_key, devices["c"].public_key
    assert pub_b is not None and pub_c is not None
    peer_b = a.peer(pub_b)
    assert peer_b is not None
    session_b = peer_b.keypairs.current
    handshakes_before = a.stats.handshakes_completed

    def b_undisturbed(payload: bytes) -> None:
        sent_before = len(net.sent)
        ping("b", payload)
        assert peer_b.keypairs.current is session_b
        assert all(message_type(d) == TRANSPORT for _, d, _ in net.sent[sent_before:])

    # Update B: a keepalive interval, more allowed IPs, the same endpoint, a preshared key on both ends. The
    # current session carries on; the preshared key only applies to the next handshake.
    a.add_peer(pub_b, persistent_keepalive_interval=30, now=net.now)
    psk = PresharedKey(bytes(range(32)))
    a.add_peer(pub_b, allowed_ips=["10.1.0.0/16"], endpoint=endpoints["b"], preshared_key=psk, now=net.now)
    devices["b"].add_peer(a.public_key, preshared_key=psk, now=net.now)
    assert peer_b.persistent_keepalive_interval == 30  # an update that does not mention it keeps it
    assert a.allowed_ips.entries_for_peer(peer_b) == [ip_network("10.0.0.11/32"), ip_network("10.1.0.0/16")]
    b_undisturbed(b"2")
    with pytest.raises(ConfigError):
        a.add_peer(pub_b, allowed_ips=["10.2.0.0/16", "not a network"], now=net.now)
    with pytest.raises(ConfigError):
        a.add_peer(private_key(55).public_key(), allowed_ips=["10.3.0.0/16"], persistent_keepalive_interval=70000)
    assert (
        len(a.peers) == 2
        and a.allowed_ips.lookup_ip("10.2.0.1") is None
        and a.allowed_ips.lookup_ip("10.3.0.1") is None
    )
    b_undisturbed(b"2b")
    # Remove C: its keys and indices go, its routes go, B's session stays.
    peer_c = a.peer(pub_c)
    assert peer_c is not None
    c_indices = {k.local_index for k in peer_c.keypairs.all()}
    assert a.remove_peer(pub_c)
    assert PeerRemoved(pub_c) in drain(a)
    assert not c_indices & set(a.index_table._entries)
    assert a.allowed_ips.lookup_ip(addresses["c"]) is None
    net.send_packet(a, ipv4_packet(ADDR_A, addresses["c"], b"no route"))
    assert a.stats.drops[DropReason.NO_ROUTE] == 1
    net.send_packet(devices["c"], ipv4_packet(addresses["c"], ADDR_A, b"from removed"))
    assert a.stats.drops[DropReason.UNKNOWN_INDEX] == 1
    b_undisturbed(b"3")
    # Add D at run time.
    dev_d = devices["d"]
    assert dev_d.public_key is not None
    a.add_peer(dev_d.public_key, endpoint=endpoints["d"], allowed_ips=[f"{addresses['d']}/32"], now=net.now)
    dev_d.add_peer(a.public_key, endpoint=ENDPOINT_A, allowed_ips=[f"{ADDR_A}/32"], now=net.now)
    ping("d", b"4")
    b_undisturbed(b"5")
    assert a.stats.handshakes_completed == handshakes_before + 1  # only D's
    # Re-add C: a fresh handshake, B still undisturbed.
    a.add_peer(pub_c, endpoint=endpoints["c"], allowed_ips=[f"{addresses['c']}/32"], now=net.now)
    net.advance(REKEY_TIMEOUT + 1)
    ping("c", b"6")
    b_undisturbed(b"7")
    assert sum(a.stats.drops.values()) == 2
    # The preshared key is used by the next handshake with B, which works since both ends have it.
    net.advance(REJECT_AFTER_TIME + 1)
    ping("b", b"8")
    assert peer_b.keypairs.current is not session_b


def test_unknown_index_is_one_counted_drop(connected: Pair) -> None:
    pair = connected
    current = pair.peer_a.keypairs.current
    assert current is not None
    used = set(pair.b.index_table._entries)
    index = next(i for i in range(1, 1000) if i not in used)
    sending = pair.peer_b.keypairs.current
    assert sending is not None
    forged = bytearray(sending.seal(bytes(32)) or b"")
    forged[4:8] = index.to_bytes(4, "little")
    before = drops_total(pair.b)
    pair.net.inject(bytes(forged), ENDPOINT_A, ENDPOINT_B)
    assert drops_total(pair.b) == before + 1
    assert pair.b.stats.drops[DropReason.UNKNOWN_INDEX] == 1
    assert pair.node_b.delivered == []


def test_last_handshake_time_and_byte_counters() -> None:
    pair = make_pair()
    net = pair.net
    net.advance(3.0)
    assert pair.peer_b.last_handshake_at is None and pair.peer_a.last_handshake_at is None
    for i in range(5):
        pair.send_a(bytes([i]) * (i * 30))
        pair.send_b(bytes([i]) * 7)
    assert pair.peer_b.last_handshake_at == 3.0
    assert pair.peer_a.last_handshake_at == 3.0
    sent_a = sum(len(d) for d in datagrams_from(net, ENDPOINT_A))
    sent_b = sum(len(d) for d in datagrams_from(net, ENDPOINT_B))
    assert pair.peer_b.tx_bytes == sent_a == pair.peer_a.rx_bytes
    assert pair.peer_a.tx_bytes == sent_b == pair.peer_b.rx_bytes
    # A replayed datagram is not counted as received.
    replay = datagrams_from(net, ENDPOINT_A, MessageType.TRANSPORT)[-1]
    net.inject(replay, ENDPOINT_A, ENDPOINT_B)
    assert pair.peer_a.rx_bytes == sent_a
    # A later handshake moves the time.
    net.advance(REJECT_AFTER_TIME + 1)
    pair.send_a(b"new session")
    assert pair.peer_b.last_handshake_at == net.now
    assert pair.peer_a.last_handshake_at == net.now
    assert transport_header(datagrams_from(net, ENDPOINT_A)[-1]) is not None
