"""What the analysis commands share: stdout, progress bars, option checks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from callgate.analysis.connectivity import Progress
from callgate.cli.common import usage_error

FamilyOpt = Annotated[int, typer.Option("--family", metavar="4|6", help="IP family of the addresses used.")]


def stdout() -> Console:
    """Rich output that never wraps or cuts a line (a pipe gets full names, not 'shop/cart…')."""
    return Console(highlight=False, soft_wrap=True)


def interactive() -> bool:
    """Progress bars only for a person at a terminal: not in CI, not when piped."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when interactive; otherwise nothing at all."""
    if not interactive():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    with RichProgress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def check_family(family: int) -> None:
    if family not in (4, 6):
        usage_error(f"--family must be 4 or 6, not {family}")
