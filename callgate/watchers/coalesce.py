"""When to act on a stream of changes: at once after a quiet spell, seldom in a burst.

A fixed debounce (wait until the changes have been quiet for N ms) charges
every single change N ms and still acts many times in a long burst. The
sources and the agent's reactor use this policy instead:

* a change that comes after a quiet spell is acted on **at once**;
* a change that comes while a burst is going on waits until ``holdoff`` after
  the previous action, and each further action in the same burst waits
  ``growth`` times longer than the one before, up to ``max_delay``: with the
  defaults (20 ms, x4, 2 s) the actions of a burst come 0, 20, 100, 420,
  1,700 ms after it starts, so a burst of 1,000 changes over a second or two
  is 5 actions, and a steady trickle still acts every ``max_delay``;
* the burst is over once a change finds the last action longer ago than the
  wait it would have been given: the next change is acted on at once again.

The class holds no clock and no thread: the caller passes ``now`` (monotonic
seconds), which keeps it exact to test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoalescePolicy:
    holdoff: float = 0.02  # seconds: the first wait inside a burst
    growth: float = 4.0  # each further wait in the same burst is this many times longer
    max_delay: float = 2.0  # seconds: no wait is longer (a steady trickle acts this often)

    def wait(self, actions_in_burst: int) -> float:
        """How long after the previous action the next one may come."""
        if actions_in_burst == 0:
            return 0.0
        return min(self.holdoff * self.growth ** (actions_in_burst - 1), self.max_delay)


class Coalescer:
    """The state of :class:`CoalescePolicy` for one stream of changes.

    The caller reports each change (:meth:`changed`), asks when to act
    (:meth:`due`), and brackets each action with :meth:`start` (it takes the
    pending changes; changes from then on are new) and :meth:`done` (waits
    count from the end of an action, so a slow action is not followed at once
    by another one in a burst)."""

    def __init__(self, policy: CoalescePolicy | None = None) -> None:
        self.policy = policy or CoalescePolicy()
        self._pending_since: float | None = None  # first change not acted on yet
        self._last_action: float | None = None  # when the last action ended
        self._in_burst = 0  # actions since the burst began

    @property
    def pending(self) -> bool:
        return self._pending_since is not None

    def changed(self, now: float) -> None:
        """A change arrived."""
        if self._pending_since is None:
            self._pending_since = now

    def due(self) -> float | None:
        """When to act on the pending changes (monotonic seconds; None: nothing pending)."""
        if self._pending_since is None:
            return None
        if self._burst_over(self._pending_since):
            return self._pending_since
        assert self._last_action is not None
        return self._last_action + self.policy.wait(self._in_burst)

    def start(self, now: float) -> float:
        """An action begins and takes every pending change; returns when the
        first of them arrived (``now`` if none was pending)."""
        first = self._pending_since if self._pending_since is not None else now
        if self._burst_over(first):
            self._in_burst = 0
        self._in_burst += 1
        self._pending_since = None
        self._last_action = now
        return first

    def done(self, now: float) -> None:
        """The action that :meth:`start` began has ended."""
        self._last_action = now

    def _burst_over(self, first_change: float) -> bool:
        return self._last_action is None or first_change - self._last_action >= self.policy.wait(self._in_burst)
