"""Shared CLI plumbing: options, help layout, error handling, exit codes.

Exit codes, for every command:

* 0: done, and the answer is "yes" (no finding at ``--fail-on``, no change,
  the verdict expected, every connectivity test passed);
* 1: bad input (a file, an object, the kernel said no: one message per
  problem on stderr, never a traceback, nothing applied), or the command's
  "no" (lint findings, failed tests, a verdict other than ``--expect``,
  probes that disagree);
* 2: a usage mistake: an unknown or missing option, a bad option value, the
  wrong number of arguments, a path that does not exist.

``callgate diff`` is the one exception, as diff(1) and ``git diff
--exit-code`` are: 1 means "access changed", so anything that prevents the
comparison (bad input included) exits 2.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from callgate.errors import InputError, KernelError, Problem
from callgate.policy import Inventory, PolicySet, load_inventory, load_policies
from callgate.policy.ahead import YamlAhead

if TYPE_CHECKING:
    from callgate.enforcers.placement import NodeEnforcer

EXIT_OK, EXIT_USER, EXIT_USAGE = 0, 1, 2

# -h as well as --help, everywhere (child contexts inherit it).
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

InventoryOpt = Annotated[
    list[str],
    typer.Option("--inventory", "-i", metavar="PATH",
                 help="Inventory file or directory (callgate/v1 Inventory, or kubectl Pod/Namespace YAML). "
                      "Repeatable. May be the policy directory itself."),
]
PoliciesOpt = Annotated[
    list[str],
    typer.Option("--policies", "-p", metavar="PATH",
                 help="Policy file or directory (NetworkPolicy and/or callgate/v1 App; *.yaml, *.yml, *.json, "
                      "recursive). Repeatable."),
]


def fail(message: str) -> NoReturn:
    """Report a user error and exit 1."""
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(EXIT_USER)


class UsageMistake(typer.BadParameter):
    """A mistake in the command line that is about no single option: shown as
    usage, then the message as it is, exit 2."""

    def format_message(self) -> str:
        return self.message


@contextmanager
def opened_enforcer(backend: str, netns: str | None,
                    refuse: Callable[[str], NoReturn] = fail) -> Iterator[NodeEnforcer]:
    """The backend's enforcer for netns (None: ours), closed on leaving.

    An unknown backend or iptables variant is a usage mistake, not a crash:
    ``refuse`` gets its message. The import is lazy so that commands which
    never reach the kernel do not load libnftables.
    """
    from callgate.enforcers import get_enforcer

    try:
        enforcer = get_enforcer(backend, netns)
    except ValueError as exc:
        refuse(str(exc))
    try:
        yield enforcer
    finally:
        enforcer.close()


def usage_error(message: str) -> NoReturn:
    """A mistake in the command line itself: usage, the message, exit 2."""
    raise UsageMistake(message)


def require_paths(option: str, paths: Iterable[str]) -> list[str]:
    """Paths named on the command line must exist: a typo is a usage mistake, and
    every missing one is named at once."""
    paths = list(paths)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise typer.BadParameter(f"no such file or directory: {', '.join(missing)}", param_hint=option)
    return paths


def check_netns_name(netns: str | None) -> None:
    """A named network namespace (as ``ip netns`` lists them), or a usage mistake."""
    if netns is not None and (not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", netns) or netns in (".", "..")):
        usage_error(f"--netns {netns!r} is not a valid network namespace name")


def load_inputs(inventory: Sequence[str], policies: Sequence[str]) -> tuple[Inventory, PolicySet]:
    """The inventory and the policies, with the problems of both reported together."""
    problems: list[Problem] = []
    inv: Inventory | None = None
    pols: PolicySet | None = None
    inventory_paths = require_paths("'--inventory' / '-i'", inventory)
    policy_paths = require_paths("'--policies' / '-p'", policies)
    # Big YAML policy files, and the tail of a big YAML inventory, are parsed on the second
    # core while this one reads (the head of) the inventory.
    with YamlAhead.started(policy_paths, split=inventory_paths) as ahead:
        try:
            inv = load_inventory(inventory_paths, ahead)
        except InputError as err:
            problems.extend(err.problems)
        try:
            pols = load_policies(policy_paths, ahead)
        except InputError as err:
            problems.extend(err.problems)
    if problems or inv is None or pols is None:
        raise InputError(problems)
    return inv, pols


def report_input_error(err: InputError) -> None:
    for problem in err.problems:
        typer.secho(f"error: {problem}", err=True, fg="red")


def _first_sentence(help_text: str | None) -> str:
    """The first sentence of a help text, whole: the command list wraps it rather than
    cutting it off with '...'."""
    first = " ".join((help_text or "").strip().split("\n\n", 1)[0].split())
    end = first.find(". ")
    return first if end < 0 else first[:end + 1]


class TidyGroup(TyperGroup):
    """A command group whose short help is its first sentence, whole."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or _first_sentence(self.help)


class TidyCommand(TyperCommand):
    """Help without type tags (``<bool>``, ``<list[str]>``): options show a metavar
    (their own, or the option's name), flags show nothing, arguments their name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None and param.name and not getattr(param, "is_flag", False):
                param.metavar = param.name.upper()

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or _first_sentence(self.help)

    # ctx and formatter are click's (typer may carry its own copy of click).
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``Usage: callgate explain [OPTIONS] SRC DST PORT``, as man pages write it
        (optional arguments in brackets, repeatable ones with dots)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = str(p.metavar) + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [(str(p.metavar), p.help or "") for p in self.get_params(ctx)
                     if isinstance(p, TyperArgument) and not p.hidden]
        options = [record for p in self.get_params(ctx)
                   if isinstance(p, TyperOption) and (record := p.get_help_record(ctx)) is not None]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


def tidy(app: typer.Typer) -> None:
    """Every command of ``app`` and of its sub-apps gets the tidy help layout, and
    reports bad input as messages (exit 1), however it is invoked."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = TidyCommand
        if info.callback is not None:
            info.callback = handled(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            group.typer_instance.info.cls = TidyGroup
            tidy(group.typer_instance)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors in the user's input (or the kernel's refusal) as messages and exit 1: one
    line per problem on stderr, never a traceback."""
    try:
        yield
    except InputError as err:
        report_input_error(err)
        raise typer.Exit(EXIT_USER) from None
    except KernelError as err:
        typer.secho(f"error: the kernel rejected the transaction; nothing was changed:\n{err}", err=True, fg="red")
        raise typer.Exit(EXIT_USER) from None
    except PermissionError as exc:
        typer.secho(f"error: {exc} (callgate needs root for this command)", err=True, fg="red")
        raise typer.Exit(EXIT_USER) from None


def handled(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with :func:`user_errors` around it (the signature typer reads is kept)."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return command(*args, **kwargs)

    return run
