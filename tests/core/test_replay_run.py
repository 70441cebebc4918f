"""ReplayWindow.ahead / commit_run against per-counter would_accept / commit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wgpy.constants import REPLAY_WINDOW_SIZE
from wgpy.replay import ReplayWindow


@given(
    st.lists(
        st.tuples(st.integers(0, 3 * REPLAY_WINDOW_SIZE), st.integers(1, REPLAY_WINDOW_SIZE)), min_size=1, max_size=6
    )
)
def test_commit_run_equals_per_counter_commit(steps: list[tuple[int, int]]) -> None:
    run, single = ReplayWindow(), ReplayWindow()
    counter = 0
    for gap, count in steps:
        counter += gap
        assert run.ahead(counter, count)
        run.commit_run(counter, count)
        for value in range(counter, counter + count):
            assert single.would_accept(value)
            single.commit(value)
        assert run.greatest == single.greatest
        for probe in range(max(0, counter - REPLAY_WINDOW_SIZE - 70), counter + count + 70):
            assert run.would_accept(probe) == single.would_accept(probe)
        counter += count


@given(st.integers(0, 5000), st.integers(1, 100), st.integers(0, 200))
def test_ahead_refuses_counters_at_or_behind_the_top(first: int, count: int, back: int) -> None:
    window = ReplayWindow()
    window.commit(first + 200)
    assert not window.ahead(max(0, first + 200 - back), count)
    assert window.ahead(first + 201, count)
    assert not window.ahead(first + 201, 0)
