"""The adaptive coalescing policy: at once when quiet, a handful of actions per burst."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.watchers.coalesce import CoalescePolicy, Coalescer


def simulate(arrivals: list[float], policy: CoalescePolicy, action_seconds: float = 0.0) -> list[tuple[float, float]]:
    """Drive a Coalescer like the reactor does: returns (start, first change taken) per action."""
    c = Coalescer(policy)
    actions: list[tuple[float, float]] = []
    now = 0.0
    pending = sorted(arrivals)
    i = 0
    while i < len(pending) or c.pending:
        due = c.due()
        next_arrival = pending[i] if i < len(pending) else None
        if due is not None and (next_arrival is None or due <= next_arrival):
            now = max(now, due)
            first = c.start(now)
            actions.append((now, first))
            now += action_seconds
            # changes that arrive while acting are pending afterwards
            while i < len(pending) and pending[i] < now:
                c.changed(pending[i])
                i += 1
            c.done(now)
            continue
        assert next_arrival is not None
        now = max(now, next_arrival)
        c.changed(next_arrival)
        i += 1
    return actions


def test_a_change_after_a_quiet_spell_is_acted_on_at_once() -> None:
    actions = simulate([1.0, 5.0, 9.5], CoalescePolicy())
    assert actions == [(1.0, 1.0), (5.0, 5.0), (9.5, 9.5)]


def test_a_burst_of_1000_changes_over_a_second_is_at_most_five_actions() -> None:
    arrivals = [k * 0.001 for k in range(1000)]  # 1,000 events in one second
    actions = simulate(arrivals, CoalescePolicy(), action_seconds=0.005)
    assert len(actions) <= 5
    assert actions[0] == (0.0, 0.0)  # the first still goes at once
    starts = [a for a, _ in actions]
    assert starts[-1] >= 0.999  # the last change is acted on
    assert starts[-1] - 0.999 <= CoalescePolicy().max_delay + 0.005


def test_waits_grow_inside_a_burst_and_are_capped() -> None:
    policy = CoalescePolicy(holdoff=0.02, growth=4.0, max_delay=2.0)
    assert [policy.wait(k) for k in range(6)] == [0.0, 0.02, 0.08, 0.32, 1.28, 2.0]
    arrivals = [k * 0.001 for k in range(3000)]  # a steady trickle for 3 s
    starts = [a for a, _ in simulate(arrivals, policy)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g <= 2.0 + 1e-9 for g in gaps)  # a steady trickle still acts every max_delay


def test_the_burst_ends_when_a_change_finds_the_last_action_older_than_its_wait() -> None:
    # A burst of half a second: actions at 0, 20, 100, 420 ms and 1.7 s (the
    # next wait would be 2 s). A change 1.8 s after that last action still
    # waits for the 2 s; one 2.3 s after it goes at once.
    burst = [k * 0.001 for k in range(500)]
    assert [round(a, 3) for a, _ in simulate(burst, CoalescePolicy())] == [0.0, 0.02, 0.1, 0.42, 1.7]
    assert simulate([*burst, 3.5], CoalescePolicy())[-1] == (3.7, 3.5)
    assert simulate([*burst, 4.0], CoalescePolicy())[-1] == (4.0, 4.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=200),
       st.floats(0, 0.05), st.sampled_from([CoalescePolicy(), CoalescePolicy(0.01, 2.0, 0.5)]))
def test_every_change_is_acted_on_within_max_delay_of_the_action_before(arrivals: list[float], work: float,
                                                                        policy: CoalescePolicy) -> None:
    actions = simulate(arrivals, policy, action_seconds=work)
    # every change is taken by some action that starts no earlier than the change
    starts = [a for a, _ in actions]
    for t in arrivals:
        assert any(s >= t for s in starts)
    # and no change waits longer than max_delay after the end of the action before it
    for (prev, _), (start, first) in itertools.pairwise(actions):
        assert start - max(first, prev + work) <= policy.max_delay + 1e-9
