"""ReplayWindow against a naive set-based model (Hypothesis).

The model is a set of the counters accepted so far plus the highest one. A counter is acceptable iff

* it is below ``REJECT_AFTER_MESSAGES``,
* it has not been accepted before, and
* ``counter + 1 + REPLAY_WINDOW_SIZE >= highest + 1``, i.e. it is at most 8128 behind the highest accepted counter
  (the kernel's ``counter_validate`` rejects when ``COUNTER_WINDOW_SIZE + their_counter < counter``, both values
  being counters plus one).

Why this model is exact rather than approximate: the kernel's (and wgpy's) bitmap is a ring of 128 64-bit words
that is cleared a whole word at a time as the top moves forward, so the ring may still hold, or may already have
lost, the bit of a counter 8129 to 8191 behind the top depending on how the top is aligned in its word. But every
counter in that band is rejected by the explicit window comparison before the bitmap is read, so the alignment never
shows through. Inside the window (at most 8128 = 127 words behind) the word holding a counter's bit has been cleared
when the top entered it and cannot be cleared again until the top reaches the next word with the same ring index,
128 words later, by which time the counter has left the window. Hence the bitmap, read inside the window, is exactly
"was this counter accepted". The model therefore needs no word-clearing semantics; the band 8129-8191 behind, where
the ring's contents and the answer could differ, is compared here like any other region (the strategies aim at it)
and is also pinned with explicit cases for all 64 alignments in ``tests/core/test_replay.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from wgpy.replay import ReplayWindow

W = REPLAY_WINDOW_SIZE
R = REJECT_AFTER_MESSAGES
_RING_SLOTS = 8192  # kernel COUNTER_BITS_TOTAL: counters this far apart share a ring bit


@dataclass
class Model:
    seen: set[int] = field(default_factory=set)
    highest: int | None = None

    def would_accept(self, counter: int) -> bool:
        if not 0 <= counter < R or counter in self.seen:
            return False
        return self.highest is None or counter + 1 + W >= self.highest + 1

    def accept(self, counter: int) -> bool:
        if not self.would_accept(counter):
            return False
        self.seen.add(counter)
        self.highest = counter if self.highest is None else max(self.highest, counter)
        return True


# A move is (kind, offset, commit). It is turned into a counter relative to the state at the time it runs, so that
# the counters stay near the interesting places whatever came before.
Move = tuple[str, int, bool]

moves: st.SearchStrategy[Move] = st.one_of(
    st.tuples(st.just("near"), st.integers(-80, 80), st.booleans()),  # around the top
    st.tuples(st.just("edge"), st.integers(-80, 80), st.booleans()),  # around top - 8128 (the 8129-8191 band too)
    st.tuples(st.just("jump"), st.integers(8060, 8300), st.booleans()),  # slide by about one window
    st.tuples(st.just("wrap"), st.integers(8192 - 70, 8192 + 70), st.booleans()),  # about one ring ahead
    st.tuples(st.just("far"), st.integers(2 * W, 40 * W), st.booleans()),  # far ahead: clears the whole ring
    st.tuples(st.just("seen"), st.integers(0, 10_000), st.booleans()),  # replay something accepted before
    st.tuples(st.just("small"), st.integers(0, 300), st.booleans()),  # absolute, near zero
    st.tuples(st.just("limit"), st.integers(-4, 4), st.booleans()),  # around REJECT_AFTER_MESSAGES
)


def _counter(model: Model, kind: str, offset: int) -> int:
    top = model.highest if model.highest is not None else 0
    if kind == "near":
        value = top + offset
    elif kind == "edge":
        value = top - W + offset
    elif kind in ("jump", "wrap", "far"):
        value = top + offset
    elif kind == "seen":
        if not model.seen:
            return offset
        ordered = sorted(model.seen)
        value = ordered[offset % len(ordered)]
    elif kind == "small":
        value = offset
    else:
        value = R + offset
    return max(0, value)


def _snapshot(window: ReplayWindow) -> tuple[int, tuple[int, ...]]:
    # White-box: the whole internal state, to prove that would_accept is pure.
    return window._top, tuple(window._ring)


@settings(max_examples=300)
@given(st.lists(moves, min_size=1, max_size=60))
def test_replay_window_matches_set_model(plan: list[Move]) -> None:
    window = ReplayWindow()
    model = Model()
    for kind, offset, commit in plan:
        counter = _counter(model, kind, offset)
        expected = model.would_accept(counter)
        before = _snapshot(window)
        assert window.would_accept(counter) is expected, (kind, counter, model.highest)
        assert _snapshot(window) == before
        if commit:
            assert window.accept(counter) is model.accept(counter), (kind, counter, model.highest)
        assert window.greatest == model.highest
        # Aliasing probes: a counter one or two whole rings (8192 slots) after an accepted one shares its ring bit.
        # If a stale bit survived a slide, the window would wrongly call such a counter a replay.
        before = _snapshot(window)
        for seen in model.seen:
            for alias in (seen + _RING_SLOTS, seen + 2 * _RING_SLOTS):
                assert window.would_accept(alias) is model.would_accept(alias), (seen, alias, model.highest)
        assert _snapshot(window) == before


_offsets_from_top = st.one_of(
    st.integers(-W - 70, -W + 70),  # the window edge and the 8129-8191 band behind it
    st.integers(-100, 100),  # around the top
    st.integers(-W - 100, 100),  # anywhere in or just outside the window
)


@settings(max_examples=200)
@given(
    base=st.integers(0, 2**40),
    accepted=st.lists(st.integers(-W - 100, 100), max_size=40),
    probes=st.lists(_offsets_from_top, min_size=1, max_size=40),
)
def test_would_accept_answers_every_probe_like_the_model(base: int, accepted: list[int], probes: list[int]) -> None:
    """Accept counters scattered around ``base + W + 100``, then probe relative to the resulting top without
    committing: every answer matches the model and no probe changes the state."""
    window = ReplayWindow()
    model = Model()
    origin = base + W + 100
    for delta in accepted:
        assert window.accept(origin + delta) is model.accept(origin + delta)
    top = model.highest if model.highest is not None else origin
    before = _snapshot(window)
    for delta in probes:
        assert window.would_accept(top + delta) is model.would_accept(top + delta), (delta, top)
    assert _snapshot(window) == before
