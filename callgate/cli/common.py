"""Shared CLI plumbing: options, error handling, exit codes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, NoReturn

import typer

from callgate.errors import InputError, KernelError

EXIT_OK, EXIT_USER, EXIT_USAGE = 0, 1, 2

InventoryOpt = Annotated[
    list[str],
    typer.Option("--inventory", "-i",
                 help="Inventory file or directory (callgate/v1 Inventory, or kubectl Pod/Namespace YAML). Repeatable."),
]
PoliciesOpt = Annotated[
    list[str],
    typer.Option("--policies", "-p",
                 help="Policy file or directory (NetworkPolicy and/or callgate/v1 App; *.yaml, *.yml, *.json, recursive). "
                      "Repeatable."),
]


def fail(message: str) -> NoReturn:
    """Report a user error and exit 1."""
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(EXIT_USER)


def run_app(app: typer.Typer, args: Sequence[str] | None = None) -> None:
    """Run the typer app on ``args`` (default: the command line), turning user errors
    into messages and exit code 1.

    Typer's standalone mode already maps usage errors to exit 2 and
    ``typer.Exit`` to its code; what reaches us here are our own errors.
    """
    try:
        app(None if args is None else list(args))
    except InputError as err:
        for problem in err.problems:
            typer.secho(f"error: {problem}", err=True, fg="red")
        sys.exit(EXIT_USER)
    except KernelError as err:
        typer.secho(f"error: the kernel rejected the transaction; nothing was changed:\n{err}", err=True, fg="red")
        sys.exit(EXIT_USER)
    except PermissionError as exc:
        typer.secho(f"error: {exc} (callgate needs root for this command)", err=True, fg="red")
        sys.exit(EXIT_USER)
