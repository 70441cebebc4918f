"""ReplayWindow against the Linux kernel's published replay-counter self-test.

Source of the cases: the Linux kernel, ``drivers/net/wireguard/selftest/counter.c`` (repository ``torvalds/linux``),
function ``wg_packet_counter_selftest``. wireguard-go reproduces the same cases in ``replay/replay_test.go``
(repository ``WireGuard/wireguard-go``, "Ported from the linux kernel implementation"). The table below was written
from reading those files; no code was copied.

In the kernel, ``T(n, v)`` calls ``counter_validate(counter, n)`` once and checks that it returns ``v``. wgpy splits
that function in two (style guide §4 rule 4): ``would_accept(n)`` is the pure pre-check run before the AEAD open and
``accept(n)`` is the commit run after it. So each step here checks that ``would_accept(n)`` predicts ``v`` without
changing any state, and that ``accept(n)`` then returns ``v``.

``COUNTER_WINDOW_SIZE`` is ``wgpy.constants.REPLAY_WINDOW_SIZE`` (8128) and ``REJECT_AFTER_MESSAGES`` comes from
``wgpy.constants`` (the whitepaper's 2**64 - 2**13 - 1; the kernel's enum is ``U64_MAX - COUNTER_WINDOW_SIZE - 1``, a
slightly larger value; wireguard-go's test uses yet another one. Steps 25-34 only depend on it being the first
rejected counter, which holds for each of them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wgpy.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from wgpy.replay import ReplayWindow

COUNTER_WINDOW_SIZE = REPLAY_WINDOW_SIZE
T_LIM = COUNTER_WINDOW_SIZE + 1
R = REJECT_AFTER_MESSAGES

Step = tuple[int, bool]

# kernel selftest/counter.c, the first block (tests 1-34), in order.
MAIN_SEQUENCE: list[Step] = [
    (0, True),  # 1
    (1, True),  # 2
    (1, False),  # 3
    (9, True),  # 4
    (8, True),  # 5
    (7, True),  # 6
    (7, False),  # 7
    (T_LIM, True),  # 8
    (T_LIM - 1, True),  # 9
    (T_LIM - 1, False),  # 10
    (T_LIM - 2, True),  # 11
    (2, True),  # 12
    (2, False),  # 13
    (T_LIM + 16, True),  # 14
    (3, False),  # 15
    (T_LIM + 16, False),  # 16
    (T_LIM * 4, True),  # 17
    (T_LIM * 4 - (T_LIM - 1), True),  # 18
    (10, False),  # 19
    (T_LIM * 4 - T_LIM, False),  # 20
    (T_LIM * 4 - (T_LIM + 1), False),  # 21
    (T_LIM * 4 - (T_LIM - 2), True),  # 22
    (T_LIM * 4 + 1 - T_LIM, False),  # 23
    (0, False),  # 24
    (R, False),  # 25
    (R - 1, True),  # 26
    (R, False),  # 27
    (R - 1, False),  # 28
    (R - 2, True),  # 29
    (R + 1, False),  # 30
    (R + 2, False),  # 31
    (R - 2, False),  # 32
    (R - 3, True),  # 33
    (0, False),  # 34
]


def _forward_fill_then_zero() -> Iterator[Step]:
    # for (i = 1; i <= COUNTER_WINDOW_SIZE; ++i) T(i, true); T(0, true); T(0, false);
    for i in range(1, COUNTER_WINDOW_SIZE + 1):
        yield i, True
    yield 0, True
    yield 0, False


def _shifted_fill_then_one() -> Iterator[Step]:
    # for (i = 2; i <= COUNTER_WINDOW_SIZE + 1; ++i) T(i, true); T(1, true); T(0, false);
    for i in range(2, COUNTER_WINDOW_SIZE + 2):
        yield i, True
    yield 1, True
    yield 0, False


def _backward_fill_from_window() -> Iterator[Step]:
    # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 0;) T(i, true);   i.e. WINDOW .. 0
    for i in range(COUNTER_WINDOW_SIZE, -1, -1):
        yield i, True


def _backward_fill_shifted_then_zero() -> Iterator[Step]:
    # for (i = COUNTER_WINDOW_SIZE + 2; i-- > 1;) T(i, true); T(0, false);   i.e. WINDOW+1 .. 1
    for i in range(COUNTER_WINDOW_SIZE + 1, 0, -1):
        yield i, True
    yield 0, False


def _backward_fill_then_top_then_zero() -> Iterator[Step]:
    # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 1;) T(i, true); T(WINDOW + 1, true); T(0, false);
    for i in range(COUNTER_WINDOW_SIZE, 0, -1):
        yield i, True
    yield COUNTER_WINDOW_SIZE + 1, True
    yield 0, False


def _backward_fill_then_zero_then_top() -> Iterator[Step]:
    # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 1;) T(i, true); T(0, true); T(WINDOW + 1, true);
    for i in range(COUNTER_WINDOW_SIZE, 0, -1):
        yield i, True
    yield 0, True
    yield COUNTER_WINDOW_SIZE + 1, True


SEQUENCES: dict[str, list[Step]] = {
    "main": MAIN_SEQUENCE,
    "forward_fill_then_zero": list(_forward_fill_then_zero()),
    "shifted_fill_then_one": list(_shifted_fill_then_one()),
    "backward_fill_from_window": list(_backward_fill_from_window()),
    "backward_fill_shifted_then_zero": list(_backward_fill_shifted_then_zero()),
    "backward_fill_then_top_then_zero": list(_backward_fill_then_top_then_zero()),
    "backward_fill_then_zero_then_top": list(_backward_fill_then_zero_then_top()),
}


def _snapshot(window: ReplayWindow) -> tuple[int, tuple[int, ...]]:
    # White-box: the whole internal state, to prove that would_accept is pure.
    return window._top, tuple(window._ring)


def _run(steps: list[Step]) -> None:
    window = ReplayWindow()
    for number, (counter, expected) in enumerate(steps, start=1):
        before = _snapshot(window)
        predicted = window.would_accept(counter)
        assert _snapshot(window) == before, f"step {number}: would_accept({counter}) changed the state"
        assert predicted is expected, f"step {number}: would_accept({counter}) = {predicted}"
        assert window.accept(counter) is expected, f"step {number}: accept({counter}) != {expected}"
        if not expected:
            assert _snapshot(window) == before, f"step {number}: a rejected accept({counter}) changed the state"


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_kernel_selftest_sequence(name: str) -> None:
    _run(SEQUENCES[name])


def test_window_constants_match_the_kernel() -> None:
    # kernel messages.h: COUNTER_BITS_TOTAL = 8192, COUNTER_WINDOW_SIZE = 8192 - BITS_PER_LONG (64).
    assert COUNTER_WINDOW_SIZE == 8192 - 64
    # whitepaper §6.1 and wireguard-go constants.go: RejectAfterMessages = 2**64 - 2**13 - 1.
    assert R == 2**64 - 2**13 - 1


def test_fresh_window_has_no_greatest_and_accepts_anything_in_range() -> None:
    window = ReplayWindow()
    assert window.greatest is None
    assert window.would_accept(0)
    assert window.would_accept(R - 1)
    assert not window.would_accept(R)
    assert not window.would_accept(2**64 - 1)
    assert not window.would_accept(2**64)
    assert not window.would_accept(-1)
    assert window.greatest is None


def test_greatest_tracks_highest_accepted() -> None:
    window = ReplayWindow()
    assert window.accept(5)
    assert window.greatest == 5
    assert window.accept(3)
    assert window.greatest == 5
    assert window.accept(5000)
    assert window.greatest == 5000
    assert not window.accept(5000)
    assert window.greatest == 5000


def test_rejected_counters_do_not_move_the_window() -> None:
    # A forged packet can only reach would_accept: even a huge counter must not slide the window.
    window = ReplayWindow()
    assert window.accept(10)
    for forged in (10 + COUNTER_WINDOW_SIZE * 3, R - 1, R, 2**64):
        window.would_accept(forged)
    assert window.greatest == 10
    assert window.accept(0)  # still inside the window: nothing moved


@pytest.mark.parametrize("top", [COUNTER_WINDOW_SIZE * 3 + k for k in range(64)])
def test_window_edge_for_every_word_alignment(top: int) -> None:
    """Exactly 8128 behind is inside the window; 8129 to 8191 behind is outside, whatever the alignment.

    The ring keeps 8192 bits and clears whole 64-bit words, so a counter 8129-8191 behind may still have its bit;
    the kernel's explicit ``COUNTER_WINDOW_SIZE + their_counter < counter`` check is what rejects it.
    """
    window = ReplayWindow()
    assert window.accept(top)
    assert window.would_accept(top - COUNTER_WINDOW_SIZE)
    for behind in range(COUNTER_WINDOW_SIZE + 1, COUNTER_WINDOW_SIZE + 64):
        assert not window.would_accept(top - behind), behind
    assert window.accept(top - COUNTER_WINDOW_SIZE)
    assert not window.accept(top - COUNTER_WINDOW_SIZE)


@pytest.mark.parametrize("first", [COUNTER_WINDOW_SIZE + k for k in range(64)])
def test_seen_counter_is_remembered_up_to_the_window_edge(first: int) -> None:
    window = ReplayWindow()
    assert window.accept(first)
    assert window.accept(first + COUNTER_WINDOW_SIZE)  # one jump; `first` is now exactly on the edge
    assert not window.would_accept(first)
    assert window.accept(first + 1)  # never seen, 8127 behind
    assert window.accept(first + COUNTER_WINDOW_SIZE + 1)  # `first` falls out; `first + 1` is on the edge
    assert not window.would_accept(first)
    assert not window.would_accept(first + 1)
    assert window.accept(first + 2)


@pytest.mark.parametrize("path", [[8300], [4000, 8300], [100, 3000, 6000, 8300], [8254, 8300]])
def test_bits_of_old_words_do_not_leak_after_a_wrap(path: list[int]) -> None:
    # Counter 5 sits in slot 6 (ring word 0, bit 6). Counter 8197 sits in slot 8198: ring word 128, which is word 0
    # again, bit 6. Once the top has moved past word 128, counter 8197 is inside the window and was never accepted, so
    # the old bit of counter 5 must have been cleared on the way, whatever steps the window took to get there.
    window = ReplayWindow()
    assert window.accept(5)
    for counter in path:
        assert window.accept(counter)
    assert window.would_accept(8197)
    assert window.accept(8197)
    assert not window.would_accept(8197)
