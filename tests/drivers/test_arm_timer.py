"""``Tunnel._arm_timer``: one asyncio timer at the device's earliest deadline, not re-made when the deadline moves later.

A deadline that moves later keeps the timer armed for the earlier time; when it fires, the device finds nothing
due and the flush arms the timer for the deadline that is left. A deadline that moves earlier, or goes away, takes
the timer with it. The device here is a stand-in with a deadline the test sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from wgpy.drivers.asyncio_udp import Tunnel


class _Deadlines:
    """The part of a ``Device`` that ``Tunnel.flush`` and ``_on_timer`` use, with nothing to send."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.timer_calls: list[float] = []
        self.seal_offload = True
        self.runs_pending = False

    def get_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float, wall_ns: int | None = None) -> None:
        self.timer_calls.append(now)

    def next_event(self) -> None:
        return None

    def datagrams_to_send(self) -> list[Any]:
        return []

    def seal_jobs(self) -> list[Any]:
        return []

    def packet_items_to_tun(self) -> list[Any]:
        return []


@pytest.fixture
def tunnel() -> Iterator[tuple[Tunnel, _Deadlines, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    device = _Deadlines()
    tunnel = Tunnel(device)  # type: ignore[arg-type]
    tunnel._loop = loop
    try:
        yield tunnel, device, loop
    finally:
        tunnel.close()
        loop.close()


def _armed(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    return [handle for handle in loop._scheduled if not handle.cancelled()]  # type: ignore[attr-defined]


def test_a_later_deadline_keeps_the_armed_timer(tunnel: tuple[Tunnel, _Deadlines, asyncio.AbstractEventLoop]) -> None:
    tun, device, loop = tunnel
    device.deadline = 1000.0
    tun.flush()
    (first,) = _armed(loop)
    for later in (1010.0, 1015.0, 1020.0):
        device.deadline = later
        tun.flush()
        assert _armed(loop) == [first] and tun._timer_at == 1000.0


def test_an_earlier_deadline_or_none_rearms(tunnel: tuple[Tunnel, _Deadlines, asyncio.AbstractEventLoop]) -> None:
    tun, device, loop = tunnel
    device.deadline = 1000.0
    tun.flush()
    (first,) = _armed(loop)
    device.deadline = 990.0
    tun.flush()
    (second,) = _armed(loop)
    assert second is not first and first.cancelled() and tun._timer_at == 990.0
    device.deadline = None
    tun.flush()
    assert _armed(loop) == [] and tun._timer_at is None


def test_an_early_wakeup_arms_the_deadline_left(tunnel: tuple[Tunnel, _Deadlines, asyncio.AbstractEventLoop]) -> None:
    """The timer armed for the earlier deadline fires: the device is asked (and finds nothing due), and the timer
    is armed again for the deadline it has now."""
    tun, device, loop = tunnel
    device.deadline = 1000.0
    tun.flush()
    device.deadline = 1010.0
    tun.flush()
    (early,) = _armed(loop)
    early._run()  # what the loop does when it is due (it has taken the handle off its heap already)
    assert len(device.timer_calls) == 1
    (again,) = [handle for handle in _armed(loop) if handle is not early]
    assert tun._timer_at == 1010.0 and tun._timer is again
