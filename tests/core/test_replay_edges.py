"""ReplayWindow edges that the mutation audit found unpinned: a run that ends on the last acceptable counter.

Source of the expected values: the whitepaper §6.1 sets ``REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1`` and says a
counter at or past it is rejected; wireguard-go's ``replay.Filter.ValidateCounter`` (repository
``WireGuard/wireguard-go``, ``replay/replay.go``) begins with ``if counter >= limit { return false }``, so
``REJECT_AFTER_MESSAGES - 1`` is the last counter a fresh window accepts, and the kernel self-test
(``drivers/net/wireguard/selftest/counter.c``, steps 25-26) accepts ``limit - 1`` after refusing ``limit``.
``ReplayWindow.ahead`` is documented as "each one alone would be accepted", so a run whose last counter is
``REJECT_AFTER_MESSAGES - 1`` is ahead and one counter longer is not.
"""

from __future__ import annotations

import pytest

from wgpy.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from wgpy.replay import ReplayWindow

R = REJECT_AFTER_MESSAGES


@pytest.mark.parametrize("count", [1, 2, 64, REPLAY_WINDOW_SIZE])
def test_a_run_may_end_on_the_last_acceptable_counter(count: int) -> None:
    """Kills ``first + count < REJECT_AFTER_MESSAGES`` in ``ahead`` (the limit must be inclusive of ``R - 1``)."""
    window = ReplayWindow()
    first = R - count  # counters R - count .. R - 1: each one alone is accepted by a fresh window
    assert all(window.would_accept(c) for c in (first, R - 1))
    assert window.ahead(first, count)
    assert not window.ahead(first + 1, count)  # would end on R itself
    assert not window.ahead(first, count + 1)  # would end on R itself (or be longer than the window)
    window.commit_run(first, count)
    assert window.greatest == R - 1
    assert not window.would_accept(R - 1)
    assert not window.would_accept(first)


def test_a_single_counter_run_at_the_limit_agrees_with_would_accept() -> None:
    """``ahead(c, 1)`` must answer like ``would_accept(c)`` on a fresh window on both sides of the limit."""
    window = ReplayWindow()
    for counter in (R - 2, R - 1, R, R + 1):
        expected = counter < R
        assert window.would_accept(counter) is expected, counter
        assert window.ahead(counter, 1) is expected, counter
