"""Timer-driven behaviour of two Devices (whitepaper §6): rekey, keepalives, key expiry, rotation, tick vs deadline.

The clock only moves through ``MemoryNetwork.advance``, which calls ``handle_timer`` at each ``get_timer()``
deadline (``tick=None``) or on a fixed 250 ms tick (``tick=0.25``), as a driver may do either.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import pytest
from support.helpers import (
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    datagrams_from,
    drops_total,
    make_pair,
    message_type,
    transport_header,
)

from wgpy.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from wgpy.errors import DropReason
from wgpy.events import Endpoint, Event, KeypairExpired
from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork

INITIATION = int(MessageType.INITIATION)
TRANSPORT = int(MessageType.TRANSPORT)
KEEPALIVE_SIZE = 32


@dataclass
class WireRecord:
    at: float
    src: Endpoint
    data: bytes


def record_wire(net: MemoryNetwork) -> list[WireRecord]:
    """Install a tap that records every datagram with the time it was sent."""
    log: list[WireRecord] = []

    def tap(src: Endpoint, data: bytes, dst: Endpoint) -> bytes:
        log.append(WireRecord(net.now, src, data))
        return data

    net.tap = tap
    return log


def assert_no_transport_on_an_expired_keypair(log: list[WireRecord]) -> None:
    """Every transport message's receiver index was announced (as a sender index) by a handshake message less than
    REJECT_AFTER_TIME before it: no data ever leaves on an expired keypair."""
    born: dict[int, float] = {}
    for record in log:
        kind = message_type(record.data)
        if kind in (INITIATION, int(MessageType.RESPONSE)):
            born[int.from_bytes(record.data[4:8], "little")] = record.at
        elif (header := transport_header(record.data)) is not None:
            assert record.at - born[header[0]] < REJECT_AFTER_TIME


def drain(pair: Pair) -> tuple[list[Event], list[Event]]:
    out: tuple[list[Event], list[Event]] = ([], [])
    for device, events in ((pair.a, out[0]), (pair.b, out[1])):
        while (event := device.next_event()) is not None:
            events.append(event)
    return out


def test_rekey_after_time_with_steady_traffic() -> None:
    pair = make_pair()
    net = pair.net
    log = record_wire(net)
    sent_a: list[bytes] = []
    sent_b: list[bytes] = []
    for second in range(0, 400, 5):
        net.advance(5.0 if second else 0.0)
        sent_a.append(pair.send_a(f"a{second}".encode()))
        sent_b.append(pair.send_b(f"b{second}".encode()))
    assert pair.node_b.delivered == sent_a
    assert pair.node_a.delivered == sent_b
    initiations = [r.at for r in log if message_type(r.data) == INITIATION]
    # The first handshake, then one each time the initiator's keypair reaches REKEY_AFTER_TIME while sending.
    assert len(initiations) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(initiations)]
    assert all(REKEY_AFTER_TIME <= gap <= REKEY_AFTER_TIME + 5.0 for gap in gaps)
    assert drops_total(pair.a) == drops_total(pair.b) == 0
    assert_no_transport_on_an_expired_keypair(log)


def test_responder_keepalives_make_the_initiator_rekey_on_receive() -> None:
    """Only the initiator rekeys on time. If it only receives (B's persistent keepalives, which need no answer),
    it starts the handshake when a packet arrives on a keypair older than REJECT - KEEPALIVE - REKEY_TIMEOUT."""
    pair = make_pair()
    net = pair.net
    pair.handshake()  # A initiated
    log = record_wire(net)
    pair.b.set_persistent_keepalive(pair.peer_a, 20, net.now)
    net.pump()
    net.advance(REJECT_AFTER_TIME + 20.0)
    initiations = [r for r in log if message_type(r.data) == INITIATION]
    assert initiations and all(r.src == ENDPOINT_A for r in initiations)
    # A's passive keepalive for B's "hello back" leaves at 10; B's persistent keepalives follow every 20 s from
    # there: 30, 50, ... 150, 170. The one at 170 is the first A receives past 165 s.
    assert [r.at for r in log if r.src == ENDPOINT_A and message_type(r.data) == TRANSPORT][:2] == pytest.approx(
        [KEEPALIVE_TIMEOUT, 170.0]
    )
    assert initiations[0].at == pytest.approx(170.0)
    assert drops_total(pair.a) == drops_total(pair.b) == 0
    current = pair.peer_b.keypairs.current
    assert current is not None and current.created_at == pytest.approx(170.0)


def test_rekey_after_messages_through_the_test_hook(connected: Pair) -> None:
    pair = connected
    net = pair.net
    pair.a.rekey_after_messages = 20  # the hook; the constants stay untouched
    first = pair.peer_b.keypairs.current
    assert first is not None
    net.advance(REKEY_TIMEOUT + 1.0)  # initiations are rate limited to one per REKEY_TIMEOUT
    log = record_wire(net)
    packets = [pair.send_a(f"p{i}".encode()) for i in range(40)]
    assert pair.node_b.delivered == packets
    initiations = [r for r in log if message_type(r.data) == INITIATION]
    assert len(initiations) == 1
    counters = [
        h[1] for r in log if r.src == ENDPOINT_A and (h := transport_header(r.data)) and h[0] == first.remote_index
    ]
    assert max(counters) == 20  # the packet that took the counter past the limit triggered the handshake
    assert pair.peer_b.keypairs.current is not first
    assert pair.peer_b.keypairs.previous is first


def test_reject_after_messages_stops_sending_but_still_receives(connected: Pair) -> None:
    pair = connected
    net = pair.net
    pair.a.rekey_after_messages = 10
    pair.a.reject_after_messages = 15
    first = pair.peer_b.keypairs.current
    assert first is not None
    net.advance(REKEY_TIMEOUT + 1.0)  # initiations are rate limited to one per REKEY_TIMEOUT

    def drop_responses(src: Endpoint, data: bytes, dst: Endpoint) -> bytes | None:
        return None if message_type(data) == int(MessageType.RESPONSE) else data

    net.tap = drop_responses
    packets = [pair.send_a(f"p{i}".encode()) for i in range(20)]
    # Counters 0..14 went out (one was used by the handshake fixture); the rest wait for a new session.
    assert first.send_counter == 15
    assert pair.node_b.delivered == packets[:14]
    assert len(pair.peer_b.staged) == 6
    # Receiving on that keypair is still fine: only its sending side is used up.
    replies = [pair.send_b(f"r{i}".encode()) for i in range(3)]
    assert pair.node_a.delivered == replies
    assert pair.a.stats.drops[DropReason.KEYPAIR_EXPIRED] == 0
    net.tap = None
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)
    assert pair.node_b.delivered == packets
    assert pair.peer_b.keypairs.current is not first
    sent = [transport_header(d) for d in datagrams_from(net, ENDPOINT_A, MessageType.TRANSPORT)]
    assert all(h is not None and (h[0] != first.remote_index or h[1] < 15) for h in sent)


def test_passive_keepalive_after_receiving_data(connected: Pair) -> None:
    pair = connected
    net = pair.net
    log = record_wire(net)
    pair.send_a(b"data")
    net.advance(KEEPALIVE_TIMEOUT - 0.5)
    assert [r for r in log if r.src == ENDPOINT_B] == []
    net.advance(1.0)
    keepalives = [r for r in log if r.src == ENDPOINT_B]
    assert len(keepalives) == 1 and len(keepalives[0].data) == KEEPALIVE_SIZE
    assert keepalives[0].at == pytest.approx(KEEPALIVE_TIMEOUT, abs=1e-6)
    net.advance(100.0)
    assert len([r for r in log if r.src == ENDPOINT_B]) == 1  # a keepalive is not data: no ping-pong


def test_passive_keepalive_needs_another_when_more_data_came(connected: Pair) -> None:
    pair = connected
    net = pair.net
    log = record_wire(net)
    pair.send_a(b"first")
    net.advance(4.0)
    pair.send_a(b"second")  # arrives while the keepalive timer is pending
    net.advance(30.0)
    times = [r.at for r in log if r.src == ENDPOINT_B]
    assert times == pytest.approx([KEEPALIVE_TIMEOUT, 2 * KEEPALIVE_TIMEOUT])


def test_new_handshake_when_data_gets_no_answer(connected: Pair) -> None:
    pair = connected
    net = pair.net
    log = record_wire(net)
    net.blocked.add(ENDPOINT_B)
    pair.send_a(b"into the void")
    net.advance(30.0)
    initiations = [r.at for r in log if message_type(r.data) == INITIATION]
    assert initiations
    assert (
        KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
        <= initiations[0]
        <= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
    )


def keepalive_times(log: list[WireRecord], src: Endpoint) -> list[float]:
    return [r.at for r in log if r.src == src and message_type(r.data) == TRANSPORT]


@pytest.mark.parametrize("tick", [None, 0.25])
def test_persistent_keepalive_on_an_idle_link(tick: float | None) -> None:
    net = MemoryNetwork(seed=1, tick=tick)
    log = record_wire(net)
    pair = make_pair(net=net, keepalive_a=25)
    # Setting the interval sent a keepalive, which needed (and made) a handshake.
    assert pair.peer_b.keypairs.current is not None
    net.advance(110.0)
    assert all(len(r.data) == KEEPALIVE_SIZE for r in log if message_type(r.data) == TRANSPORT)
    assert keepalive_times(log, ENDPOINT_A) == pytest.approx([0.0, 25.0, 50.0, 75.0, 100.0])
    assert keepalive_times(log, ENDPOINT_B) == []  # keepalives need no answer


@pytest.mark.parametrize("tick", [None, 0.25])
def test_persistent_keepalive_counts_from_the_last_packet(tick: float | None) -> None:
    net = MemoryNetwork(seed=1, tick=tick)
    log = record_wire(net)
    pair = make_pair(net=net, keepalive_a=25)
    net.advance(85.0)
    pair.send_b(b"data")  # A answers with a passive keepalive at 95, so the one due at 100 moves to 120
    net.advance(36.0)
    later = [t for t in keepalive_times(log, ENDPOINT_A) if t > 75]
    # (At 120 the keypair is REKEY_AFTER_TIME old, so that keepalive is followed by a handshake and its confirmation.)
    assert later[:2] == pytest.approx([95.0, 120.0], abs=0.26)


def test_persistent_keepalive_disabled_at_run_time() -> None:
    pair = make_pair(keepalive_a=25)
    log = record_wire(pair.net)
    pair.a.set_persistent_keepalive(pair.peer_b, 0, pair.net.now)
    pair.net.advance(100.0)
    assert log == []


def test_reject_after_time_no_send_on_old_keypair_and_drop_on_receive(connected: Pair) -> None:
    pair = connected
    net = pair.net
    old_a = pair.peer_b.keypairs.current
    old_b = pair.peer_a.keypairs.current
    assert old_a is not None and old_b is not None
    created = old_a.created_at
    # A message sealed on the old keypair at t=100 but only delivered after it expired.
    net.advance(100.0)
    late = old_b.seal(bytes(32))
    assert late is not None
    log = record_wire(net)
    net.advance(REJECT_AFTER_TIME - 100.0 + 1.0)
    assert net.now - created > REJECT_AFTER_TIME
    packet = pair.send_a(b"after expiry")
    assert pair.node_b.delivered == [packet]
    kinds = [message_type(r.data) for r in log if r.src == ENDPOINT_A]
    assert kinds[0] == INITIATION  # a new handshake first, not data on the expired keypair
    old_remote = old_a.remote_index
    assert all((h := transport_header(r.data)) is None or h[0] != old_remote for r in log if r.src == ENDPOINT_A)
    assert_no_transport_on_an_expired_keypair([WireRecord(0.0, src, d) for src, d, _ in net.sent[:3]] + log)
    # Data that arrives on the expired keypair (it is still A's previous one) is dropped.
    assert pair.peer_b.keypairs.previous is old_a
    before = drops_total(pair.a)
    net.inject(late, ENDPOINT_B, ENDPOINT_A)
    assert pair.a.stats.drops[DropReason.KEYPAIR_EXPIRED] == 1
    assert drops_total(pair.a) == before + 1
    assert pair.node_a.delivered == []


def test_key_material_zeroed_after_three_reject_after_times(connected: Pair) -> None:
    pair = connected
    net = pair.net
    drain(pair)
    net.advance(3 * REJECT_AFTER_TIME - 1.0)
    assert len(pair.a.index_table) > 0 and len(pair.b.index_table) > 0
    assert drain(pair) == ([], [])
    net.advance(2.0)
    events_a, events_b = drain(pair)
    assert events_a == [KeypairExpired(pair.pub_b)]
    assert events_b == [KeypairExpired(pair.pub_a)]
    for peer, device in ((pair.peer_b, pair.a), (pair.peer_a, pair.b)):
        assert peer.keypairs.all() == []
        assert len(device.index_table) == 0
    # And traffic simply starts a new session.
    packet = pair.send_a(b"fresh")
    assert pair.node_b.delivered == [packet]


def test_previous_keypair_still_decrypts_packets_in_flight(connected: Pair) -> None:
    pair = connected
    net = pair.net
    held: list[tuple[Endpoint, bytes, Endpoint]] = []
    holding = True

    def hold_transport(src: Endpoint, data: bytes, dst: Endpoint) -> bytes | None:
        if holding and message_type(data) == TRANSPORT:
            held.append((src, data, dst))
            return None
        return data

    first_a = pair.peer_b.keypairs.current
    assert first_a is not None
    net.tap = hold_transport
    in_flight = [pair.send_a(f"old-a{i}".encode()) for i in range(3)] + [pair.send_b(b"old-b")]
    holding = False
    net.tap = None
    # Rekey (lowering the message limit through the hook): "new" still leaves on the old keypair, then the
    # handshake runs and A's keepalive confirms the new session. Only then do the old datagrams arrive.
    net.advance(REKEY_TIMEOUT + 1.0)
    pair.a.rekey_after_messages = 0
    fresh = pair.send_a(b"new")
    assert pair.peer_b.keypairs.current is not first_a
    assert pair.peer_b.keypairs.previous is first_a
    assert pair.peer_a.keypairs.previous is not None and pair.peer_a.keypairs.next is None
    for src, data, dst in reversed(held):  # reordered as well
        net.inject(data, src, dst)
    assert pair.node_b.delivered == [fresh, *reversed(in_flight[:3])]
    assert pair.node_a.delivered == [in_flight[3]]
    # A second rekey retires that keypair for good: a datagram still sealed on it is an unknown index.
    late = first_a.seal(bytes(16))
    assert late is not None
    net.advance(REKEY_TIMEOUT + 1.0)
    pair.send_a(b"newer")
    assert first_a not in pair.peer_b.keypairs.all()
    before = drops_total(pair.b)
    net.inject(late, ENDPOINT_A, ENDPOINT_B)
    assert drops_total(pair.b) == before + 1
    assert pair.b.stats.drops[DropReason.UNKNOWN_INDEX] == 1


def _scenario(tick: float | None) -> dict[str, object]:
    """A fixed story exercised by every timer; returns its protocol-level outcome."""
    net = MemoryNetwork(seed=21, tick=tick, loss=0.0)
    pair = make_pair(net=net, seed=21, keepalive_a=25)
    kinds: Counter[tuple[str, int]] = Counter()

    def count(src: Endpoint, data: bytes, dst: Endpoint) -> bytes:
        kinds["a" if src == ENDPOINT_A else "b", message_type(data)] += 1
        return data

    net.tap = count
    for i in range(3):
        pair.send_a(f"a{i}".encode())
    net.advance(30.0)
    pair.send_b(b"b0")
    net.blocked.add(ENDPOINT_B)  # an outage long enough for retransmissions and a new-handshake timer
    net.advance(12.0)
    pair.send_a(b"a-lost")
    net.advance(33.0)
    net.blocked.clear()
    net.advance(30.0)
    pair.send_a(b"a-after")
    pair.send_b(b"b-after")
    net.advance(REKEY_AFTER_TIME + 10.0)  # keepalives age the session into a rekey
    pair.send_b(b"b-late")
    net.advance(3 * REJECT_AFTER_TIME + 10.0)
    pair.a.set_persistent_keepalive(pair.peer_b, 0, net.now)
    net.advance(3 * REJECT_AFTER_TIME + 10.0)  # idle: keys are zeroed
    events: tuple[list[Event], list[Event]] = drain(pair)
    return {
        "delivered_b": pair.node_b.delivered,
        "delivered_a": pair.node_a.delivered,
        "handshakes": (pair.a.stats.handshakes_completed, pair.b.stats.handshakes_completed),
        "drops": (dict(pair.a.stats.drops), dict(pair.b.stats.drops)),
        "events": tuple(tuple(type(e).__name__ for e in side) for side in events),
        "sessions": (pair.peer_b.keypairs.all(), pair.peer_a.keypairs.all()),
        "initiations": (kinds["a", INITIATION], kinds["b", INITIATION]),
        "transports": (kinds["a", TRANSPORT], kinds["b", TRANSPORT]),
    }


def test_timers_same_outcome_at_deadlines_or_on_a_tick() -> None:
    at_deadlines = _scenario(None)
    on_tick = _scenario(0.25)
    assert at_deadlines["delivered_b"]  # the scenario did something
    assert on_tick == at_deadlines


def test_message_limit_reached_while_flushing_staged_packets_keeps_receiving() -> None:
    """The limit is hit in the middle of a burst of staged packets: the rest wait for a new session, and the
    keypair still decrypts what the peer sends on it (the kernel only marks its *sending* half invalid)."""
    pair = make_pair()
    net = pair.net
    pair.a.reject_after_messages = 5
    net.blocked.add(ENDPOINT_B)
    packets = [pair.send_a(f"p{i}".encode()) for i in range(10)]
    net.blocked.clear()
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX)  # the retransmitted initiation gets through
    first = pair.peer_b.keypairs.current
    assert first is not None and first.send_counter == 5
    assert pair.node_b.delivered == packets[:5]
    assert len(pair.peer_b.staged) == 5
    reply = pair.send_b(b"reply on the same keypair")
    assert pair.node_a.delivered == [reply]
    assert pair.a.stats.drops[DropReason.KEYPAIR_EXPIRED] == 0
    # The rest leave on a new session once the initiation rate limit allows one (the next packet asks for it).
    net.advance(REKEY_TIMEOUT + 1.0)
    pair.send_a(b"last")
    assert pair.peer_b.keypairs.current is not first
    assert pair.node_b.delivered == packets  # "last" is the sixth on the new keypair: it waits again
