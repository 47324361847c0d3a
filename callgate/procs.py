"""Running the node's helper programs (``ip``, ``nsenter``…): argv lists, never a shell.

Below every other package so that the enforcers (routes) and the watchers
(Docker's container links) share one way of asking a program and treating its
failure as "no answer" — the caller decides what no answer means.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

# argv -> stdout, or None when the program failed: swapped for fakes in tests.
QuietRunner = Callable[[Sequence[str]], str | None]


def output_or_none(argv: Sequence[str], log: logging.Logger, level: int = logging.DEBUG,
                   timeout: float = 5) -> str | None:
    """stdout of ``argv``, or None when it could not run, timed out or exited non-zero.

    A failure to start or a timeout is logged at ``level``: for one caller a
    missing answer is routine (a container already gone), for another a warning.
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.log(level, "command failed", extra={"fields": {"argv": list(argv), "error": str(exc)}})
        return None
    return done.stdout if done.returncode == 0 else None


def json_objects(out: str | None) -> list[dict[str, Any]]:
    """The objects of a JSON list a program printed (``ip -j …``); nothing when
    it printed nothing, not JSON or not a list (the program's output is input)."""
    if not out:
        return []
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
