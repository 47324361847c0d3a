"""``callgate diff``: what a policy change does, or how the kernel differs from the policies.

Its exit codes are diff(1)'s: 0 no change, 1 changed, 2 could not compare. A
CI job must be able to tell "access changed" from "a typo in a path", so every
error here (usage or input) exits 2, never 1.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from callgate.analysis import diff as diffmod
from callgate.cli.analysis.output import progress_bar, stdout
from callgate.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    EXIT_USER,
    opened_enforcer,
    report_input_error,
    require_paths,
    usage_error,
)
from callgate.cli.engine import BackendOpt, compile_for
from callgate.errors import InputError, KernelError, Problem
from callgate.policy import Inventory, PolicySet, load_inventory, load_policies
from callgate.policy.documents import gc_paused
from callgate.policy.loader import Reused


class DiffFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"
    MD = "md"


def _cannot_compare(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def _errors_exit_2() -> Iterator[None]:
    """Inside, every way of failing exits 2 (shared helpers exit 1 on bad input)."""
    try:
        yield
    except typer.Exit as exc:
        raise typer.Exit(EXIT_USAGE if exc.exit_code == EXIT_USER else exc.exit_code) from None
    except InputError as err:
        report_input_error(err)
        raise typer.Exit(EXIT_USAGE) from None
    except KernelError as err:
        _cannot_compare(f"cannot read the live ruleset: {err}")
    except PermissionError as exc:
        _cannot_compare(f"{exc} (reading the kernel's ruleset needs root)")


def diff(
    paths: Annotated[list[str] | None, typer.Argument(
        metavar="PATH", help="OLD NEW policy paths; with --git, the policy paths to compare between revisions.")
    ] = None,
    inventory: Annotated[list[str] | None, typer.Option(
        "--inventory", "-i", metavar="PATH", help="Inventory file or directory (required).")] = None,
    git: Annotated[str | None, typer.Option(
        "--git", metavar="REV[..REV]",
        help="Compare revisions: REV..REV (e.g. main..HEAD) or REV (against the working tree).")] = None,
    fmt: Annotated[DiffFormat, typer.Option(
        "--format", "-f", metavar="[text|json|markdown]", case_sensitive=False, help="Output format.")
    ] = DiffFormat.TEXT,
    group_by: Annotated[str, typer.Option(
        "--group-by", "-g", metavar="GROUP", help="app, namespace, endpoint or a label key.")] = "app",
    live: Annotated[bool, typer.Option("--live", help="Compare the desired ruleset for --node with the kernel's.")] = False,
    node: Annotated[str | None, typer.Option(
        "--node", "-n", metavar="NODE", help="With --live: the node to compile for.")] = None,
    policies: Annotated[list[str] | None, typer.Option(
        "--policies", "-p", metavar="PATH", help="With --live: policy paths.")] = None,
    backend: BackendOpt = "nft",
    netns: Annotated[str | None, typer.Option(
        "--netns", metavar="NS", help="With --live: read this network namespace.")] = None,
) -> None:
    """What a policy change does to who can reach whom.

    Which (source, destination, port) gained or lost access, grouped by app,
    exact over every port. Exit 0 when nothing changed, 1 when access changed,
    2 when the comparison could not be made (a usage mistake, a path or
    revision that does not exist, invalid input).

    \b
    Examples:
      callgate diff -i inv.yaml old/ new/
      callgate diff -i inv.yaml --git main..HEAD policies/ --format markdown
      callgate diff --live -i inv.yaml -p policies/ --node node-1
    """
    if live:
        with _errors_exit_2():
            differs = _diff_live(inventory or [], policies or [], node, backend, netns, fmt)
        raise typer.Exit(EXIT_USER if differs else EXIT_OK)
    if not inventory:
        usage_error("--inventory is required")
    paths = paths or []
    if git and not paths:
        usage_error("--git needs the policy paths to compare, e.g. --git main..HEAD policies/")
    if not git and len(paths) != 2:
        usage_error("give OLD and NEW policy paths (or --git REV..REV PATH...)")
    require_paths("'--inventory' / '-i'", inventory)
    # One-shot: the collector walking the loaded cluster again and again freed next to nothing.
    with tempfile.TemporaryDirectory(prefix="callgate-diff-") as tmp, _errors_exit_2(), gc_paused():
        if git:
            revisions = diffmod.at_revisions(git, paths, Path(tmp))
            old_paths, new_paths = revisions.old_paths, revisions.new_paths
            labels = (revisions.old_label, revisions.new_label)
        else:
            require_paths("'PATH'", paths)
            old_paths, new_paths = [Path(paths[0])], [Path(paths[1])]
            labels = (paths[0], paths[1])
        inv, old, new = _load_all(inventory, old_paths, new_paths)
        with progress_bar("comparing") as progress:
            result = diffmod.connectivity_diff(inv, old, new, group_by, labels[0], labels[1], progress, forks=True)
    if fmt is DiffFormat.JSON:
        typer.echo(diffmod.to_json(result))
    elif fmt in (DiffFormat.MARKDOWN, DiffFormat.MD):
        typer.echo(diffmod.markdown(result), nl=False)
    else:
        typer.echo(diffmod.text(result), nl=False)
    raise typer.Exit(EXIT_USER if result.changed else EXIT_OK)


def _load_all(inventory: list[str], old_paths: list[Path], new_paths: list[Path]
              ) -> tuple[Inventory, PolicySet, PolicySet]:
    """The inventory and both sides, every problem of the three reported together."""
    problems: list[Problem] = []
    inv: Inventory | None = None
    loaded: list[PolicySet] = []
    reused = Reused()  # NEW is mostly OLD: its unchanged policies are not parsed again
    try:
        inv = load_inventory(inventory)
    except InputError as err:
        problems.extend(err.problems)
    for paths in (old_paths, new_paths):
        try:
            loaded.append(load_policies(paths, reused=reused))
        except InputError as err:
            problems.extend(err.problems)
    if problems or inv is None:
        raise InputError(problems)
    return inv, loaded[0], loaded[1]


def _diff_live(inventory: list[str], policies: list[str], node: str | None, backend: str,
               netns: str | None, fmt: str) -> bool:
    """Print how the kernel differs from the policies; whether it does."""
    if node is None:
        usage_error("--live needs --node")
    if not inventory:
        usage_error("--live needs --inventory")
    ruleset = compile_for(inventory, policies, node)
    with opened_enforcer(backend, netns, refuse=_cannot_compare) as enforcer:
        lines = enforcer.diff(ruleset)
    if fmt == DiffFormat.JSON:
        typer.echo(json.dumps({"node": node, "backend": backend, "in_sync": not lines, "diff": lines}, indent=2))
    elif not lines:
        typer.echo(f"in sync: the live ruleset on {node} ({backend}) is the desired one")
    else:
        out = stdout()
        for line in lines:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" \
                if line.startswith("@@") else None
            out.print(line, style=style, markup=False)
    return bool(lines)
