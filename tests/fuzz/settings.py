"""How much the fuzz tests run, and the bounds every example runs under.

CI runs each fuzz test with its default number of examples (a few thousand in
all, well under two minutes on two cores), derandomized: the same examples every
run, so a red CI is a change's fault and reproduces, never the luck of the draw.
``CALLGATE_FUZZ_SCALE=50`` multiplies every count and draws fresh random examples,
for the long exploratory runs recorded in docs/reliability.md (what they find
becomes an explicit example or a fix).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

from hypothesis import HealthCheck, Phase, settings

SCALE = float(os.environ.get("CALLGATE_FUZZ_SCALE", "1"))
# No example may take longer: a hang (an input whose cost is not bounded by its size) is a failure.
# Typical examples take milliseconds and the slowest a few seconds; the margin is for a
# shared two-core machine under load, where a 20 s limit failed the odd example.
EXAMPLE_SECONDS = 60


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        derandomize=SCALE == 1,
        deadline=None,  # some examples are big on purpose; time is bounded by example_time_limit instead
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        # No explain phase: it traces every line of a failing example again, which
        # takes minutes on the big ones and says little about a parser's input.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )


class ExampleTooSlow(BaseException):
    """Raised by the alarm: a BaseException, so code under test that catches
    Exception cannot swallow it."""


@contextlib.contextmanager
def example_time_limit(seconds: int = EXAMPLE_SECONDS) -> Iterator[None]:
    fired: list[bool] = []

    def expired(_signum: int, _frame: FrameType | None) -> None:
        fired.append(True)
        raise ExampleTooSlow(f"one example ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if fired:
        # The signal handler's exception is raised wherever the main thread happens to
        # be, and some places drop it: a gc callback (hypothesis has one) only prints
        # "Exception ignored". The example was too slow all the same.
        raise ExampleTooSlow(f"one example ran for more than {seconds} s (its alarm was swallowed)")
