"""Running callgate on an input and judging how it ended.

:func:`run_cli` runs a command in-process the way the ``callgate`` console script
does (through ``run_app``, which turns user errors into messages and exit 1), with
stdout and stderr captured apart; an exception that escapes is what a user would
see as a traceback. :func:`check_problems` holds the library's errors to what the
README promises: every problem names its file, and the object and field when the
document is an object at all; every text is one printable, bounded line.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from callgate.cli.main import app
from callgate.errors import MAX_MESSAGE, MAX_PATH, Problem


@dataclass
class CliResult:
    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None  # escaped the command: a traceback for the user

    def __repr__(self) -> str:
        return (f"CliResult(callgate {' '.join(self.args)} -> exit {self.exit_code}, exception {self.exception!r}, "
                f"stdout {self.stdout[-800:]!r}, stderr {self.stderr[-800:]!r})")


def run_cli(args: Sequence[str]) -> CliResult:
    result = CliRunner().invoke(app, list(args))
    # SystemExit is how click ends every command; anything else would reach the user as a traceback.
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return CliResult(list(args), result.exit_code, result.stdout, result.stderr, exception)


def check_cli(result: CliResult, error_expected_on_1: bool = True) -> None:
    """Exit 0 or 1, no traceback; on 1 (for commands where 1 means an error) at least
    one ``error:`` line; every line of stderr printable and bounded."""
    assert result.exception is None, result
    assert result.exit_code in (0, 1), result
    lines = result.stderr.splitlines()
    if result.exit_code == 1 and error_expected_on_1:
        assert any(line.startswith("error: ") for line in lines), result
    for line in lines:
        assert line.isprintable() and len(line) <= MAX_PATH + 3 * MAX_MESSAGE, result


def check_problems(problems: Sequence[Problem], files: Sequence[Path]) -> None:
    names = {str(f) for f in files}
    assert problems, "an InputError without problems"
    for p in problems:
        assert p.message, p
        assert p.file in names, (p, names)
        assert str(p).isprintable() and len(str(p)) <= MAX_PATH + 3 * MAX_MESSAGE, p
        if p.object is not None:
            assert p.field is not None or p.message in WHOLE_OBJECT_MESSAGES, p


# Problems about an object as a whole, with no one field to blame.
WHOLE_OBJECT_MESSAGES: frozenset[str] = frozenset()


@contextlib.contextmanager
def bounded_memory(extra_bytes: int = 2 * 2**30) -> Iterator[None]:
    """Let the process grow by at most ``extra_bytes`` of address space inside the
    block: a runaway allocation fails with MemoryError (a test failure) instead of
    taking the shared machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * resource.getpagesize()
    limit = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
