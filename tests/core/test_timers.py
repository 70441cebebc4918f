"""PeerTimers (kernel timers.c) with the clock stepped by hand, and how the Device drives them.

Each hook is checked against the kernel's contract (its docstring's first line); then the device-level
contracts: ``get_timer`` is the earliest deadline of all peers, ``handle_timer`` before a deadline does nothing,
and a driver that calls it late (after several deadlines passed) gets one expiry per timer, not a burst.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.helpers import (
    ENDPOINT_A,
    ENDPOINT_B,
    datagrams_from,
    det_rng,
    ipv4_packet,
    make_pair,
    message_type,
    private_key,
    pub,
    snapshot,
)

from wgpy.constants import KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME, REKEY_TIMEOUT
from wgpy.device import Device
from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork
from wgpy.timers import PeerTimers, TimerName


def armed(timers: PeerTimers) -> dict[TimerName, float]:
    return {name: at for name in TimerName if (at := getattr(timers, f"{name.name.lower()}_at")) is not None}


@given(st.lists(st.none() | st.floats(0.0, 1e6), min_size=len(TimerName), max_size=len(TimerName)))
def test_next_deadline_is_the_earliest_armed_timer_of_every_name(deadlines: list[float | None]) -> None:
    """``next_deadline`` reads the fields itself; the reference finds them by ``TimerName``, so a timer it left out
    (or one added to ``TimerName`` and not to it) is seen."""
    timers = PeerTimers()
    for name, at in zip(TimerName, deadlines, strict=True):
        setattr(timers, f"{name.name.lower()}_at", at)
    expected = armed(timers)
    assert timers.next_deadline() == (min(expected.values()) if expected else None)


def test_a_new_peer_has_no_deadline() -> None:
    timers = PeerTimers()
    assert timers.next_deadline() is None
    assert timers.due(1e9) == []
    assert armed(timers) == {}


def test_data_sent_arms_new_handshake_once() -> None:
    timers = PeerTimers()
    timers.on_data_sent(10.0, jitter=0.2)
    assert armed(timers) == {TimerName.NEW_HANDSHAKE: 10.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.2}
    timers.on_data_sent(12.0, jitter=0.1)  # already pending: not pushed back
    assert timers.new_handshake_at == 10.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.2
    timers.on_any_authenticated_packet_received()
    assert timers.new_handshake_at is None


def test_data_received_arms_keepalive_or_asks_for_another() -> None:
    timers = PeerTimers()
    timers.on_data_received(3.0)
    assert timers.send_keepalive_at == 3.0 + KEEPALIVE_TIMEOUT
    assert not timers.need_another_keepalive
    timers.on_data_received(5.0)
    assert timers.send_keepalive_at == 3.0 + KEEPALIVE_TIMEOUT
    assert timers.need_another_keepalive
    timers.on_any_authenticated_packet_sent()
    assert timers.send_keepalive_at is None


def test_traversal_arms_persistent_keepalive_only_when_configured() -> None:
    timers = PeerTimers()
    timers.on_any_authenticated_packet_traversal(1.0)
    assert timers.persistent_keepalive_at is None
    timers = PeerTimers(persistent_keepalive_interval=25)
    timers.on_any_authenticated_packet_traversal(1.0)
    assert timers.persistent_keepalive_at == 26.0
    timers.on_any_authenticated_packet_traversal(7.0)  # any packet pushes it back
    assert timers.persistent_keepalive_at == 32.0


def test_handshake_initiated_and_complete() -> None:
    timers = PeerTimers()
    timers.handshake_attempts = 4
    timers.sent_lastminute_handshake = True
    timers.on_handshake_initiated(2.0, jitter=0.3)
    assert timers.retransmit_handshake_at == 2.0 + REKEY_TIMEOUT + 0.3
    timers.on_handshake_complete()
    assert timers.retransmit_handshake_at is None
    assert timers.handshake_attempts == 0
    assert not timers.sent_lastminute_handshake


def test_session_derived_and_gave_up_arm_zeroing() -> None:
    timers = PeerTimers()
    timers.on_session_derived(5.0)
    assert timers.zero_key_material_at == 5.0 + 3 * REJECT_AFTER_TIME
    timers.on_session_derived(6.0)  # a new session pushes it back
    assert timers.zero_key_material_at == 6.0 + 3 * REJECT_AFTER_TIME
    timers.on_data_received(7.0)
    timers.on_handshake_gave_up(100.0)
    assert timers.send_keepalive_at is None
    assert timers.zero_key_material_at == 6.0 + 3 * REJECT_AFTER_TIME  # pending: left alone
    fresh = PeerTimers()
    fresh.on_handshake_gave_up(100.0)
    assert fresh.zero_key_material_at == 100.0 + 3 * REJECT_AFTER_TIME


def test_due_lists_expired_timers_in_order_and_disarms_them() -> None:
    timers = PeerTimers(persistent_keepalive_interval=10)
    timers.on_any_authenticated_packet_traversal(0.0)  # persistent at 10
    timers.on_session_derived(0.0)  # zero at 540
    timers.on_data_received(0.0)  # keepalive at 10
    timers.on_handshake_initiated(0.0, jitter=0.0)  # retransmit at 5
    assert timers.next_deadline() == REKEY_TIMEOUT
    assert timers.due(4.999) == []
    assert timers.due(5.0) == [TimerName.RETRANSMIT_HANDSHAKE]  # a deadline equal to now is due
    assert timers.next_deadline() == 10.0
    assert timers.due(600.0) == [TimerName.SEND_KEEPALIVE, TimerName.ZERO_KEY_MATERIAL, TimerName.PERSISTENT_KEEPALIVE]
    assert timers.next_deadline() is None
    assert timers.due(600.0) == []


def test_stop_disarms_everything() -> None:
    timers = PeerTimers(persistent_keepalive_interval=10)
    timers.on_any_authenticated_packet_traversal(0.0)
    timers.on_session_derived(0.0)
    timers.on_data_sent(0.0, 0.0)
    timers.stop()
    assert timers.next_deadline() is None
    assert timers.persistent_keepalive_interval == 10  # configuration survives


# --- the device driving them ------------------------------------------------------------------------------


def test_get_timer_is_the_earliest_deadline_of_all_peers() -> None:
    pair = make_pair()
    assert pair.a.get_timer() is None and pair.b.get_timer() is None
    pair.send_a(b"x")
    deadlines_a = [p.timers.next_deadline() for p in pair.a.peers.values()]
    assert pair.a.get_timer() == min(d for d in deadlines_a if d is not None)
    assert pair.b.get_timer() == pair.peer_a.timers.next_deadline()


def test_handle_timer_before_the_deadline_does_nothing() -> None:
    pair = make_pair()
    pair.send_a(b"x")
    deadline = pair.b.get_timer()
    assert deadline is not None
    before = snapshot(pair.b)
    pair.b.handle_timer(deadline - 0.001)
    pair.b.handle_timer(deadline - 0.001)
    assert snapshot(pair.b) == before
    assert pair.b.datagrams_to_send() == []


def test_a_late_handle_timer_fires_each_timer_once() -> None:
    """A driver that wakes up long after several retransmission deadlines sends one initiation, not a burst."""
    pair = make_pair()
    net = pair.net
    net.blocked.add(ENDPOINT_B)
    pair.send_a(b"x")
    pair.a.datagrams_to_send()
    pair.a.handle_timer(61.0)
    out = pair.a.datagrams_to_send()
    assert [message_type(d) for d, _ in out] == [int(MessageType.INITIATION)]
    assert pair.peer_b.timers.handshake_attempts == 1
    assert pair.peer_b.timers.retransmit_handshake_at is not None and pair.peer_b.timers.retransmit_handshake_at > 61


def test_removed_peer_timers_never_fire() -> None:
    pair = make_pair()
    pair.send_a(b"x")
    pair.a.remove_peer(pair.pub_b)
    assert pair.a.get_timer() is None
    pair.a.handle_timer(1e6)
    assert pair.a.datagrams_to_send() == []


@pytest.mark.parametrize("tick", [0.01, 0.25, 1.0])
def test_a_coarse_tick_only_delays_expiry(tick: float) -> None:
    """Called on a tick, the keepalive leaves at the first tick at or after its deadline, never before."""
    pair = make_pair()
    pair.send_a(b"data")
    deadline = pair.b.get_timer()
    assert deadline == KEEPALIVE_TIMEOUT
    now = 0.0
    sent_at = None
    while sent_at is None:
        now = round(now + tick, 9)
        pair.b.handle_timer(now)
        if pair.b.datagrams_to_send():
            sent_at = now
    assert deadline <= sent_at < deadline + tick + 1e-9
    assert ENDPOINT_A == pair.peer_a.endpoint


def test_retransmission_with_zero_jitter_is_not_lost_to_float_rounding() -> None:
    """With no jitter the retransmit deadline is exactly sent_at + REKEY_TIMEOUT; at a clock value where
    ``(t + 5.0) - t < 5.0`` in floating point, the rate limit must still let the retransmission out."""
    counter = itertools.count(1)
    other = random.Random(3)

    def zero_jitter_rng(n: int) -> bytes:
        # 4-byte draws feed the jitter (x % 1000 / 1000 * 0.333) and the indices: multiples of 1000, all distinct.
        return (1000 * next(counter)).to_bytes(4, "little") if n == 4 else other.randbytes(n)

    start = next(x / 10 for x in range(1, 10_000) if (x / 10 + REKEY_TIMEOUT) - x / 10 < REKEY_TIMEOUT)
    net = MemoryNetwork()
    a = Device(private_key(1), rng=zero_jitter_rng)
    b = Device(private_key(2), rng=det_rng(2))
    net.attach(a, ENDPOINT_A)
    net.attach(b, ENDPOINT_B)
    a.add_peer(pub(b), endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"])
    net.blocked.add(ENDPOINT_B)
    net.advance(start)
    net.send_packet(a, ipv4_packet("10.0.0.1", "10.0.0.2", b"x"))
    net.advance(200.0)
    assert len(datagrams_from(net, ENDPOINT_A, MessageType.INITIATION)) == MAX_TIMER_HANDSHAKES + 2
