"""The ``callgate`` command line.

Each command group lives in its own module and is registered here. Exit codes
are described once, in :mod:`callgate.cli.common`.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from importlib import import_module
from typing import Annotated, Any, NoReturn

import typer

from callgate import __version__
from callgate.cli.common import CONTEXT_SETTINGS, tidy

HELP = (
    "Network-policy enforcement for container platforms.\n\n"
    "callgate reads who runs where (an inventory) and who may call whom "
    "(Kubernetes NetworkPolicy or callgate/v1 App YAML), compiles that into "
    "rules for one node, and applies them as one atomic nftables transaction. "
    "Exit codes: 0 ok, 1 bad input or a negative answer (see each command), 2 usage mistake."
)

# The module (callgate.cli.<name>) that registers each top-level command. A
# process started for one command imports only that module: the analysis
# commands pull in numpy and the lint engine, the lab asyncio and urllib, and
# importing all of them was a third of `callgate apply`'s start-up.
# tests/test_cli_startup.py checks this table against what the modules register.
COMMAND_MODULES: dict[str, str] = {
    "apply": "engine", "compile": "engine",
    "doctor": "doctor",
    "lint": "analysis", "diff": "analysis", "explain": "analysis", "matrix": "analysis", "graph": "analysis",
    "convert": "analysis", "test": "analysis",
    "lab": "lab",
    "agent": "agent", "flows": "flows",
    "inventory": "inventory",
    "controller": "k8s",
    "cni": "cni",
}
MODULES = ("engine", "doctor", "analysis", "lab", "agent", "flows", "inventory", "k8s", "cni")  # the order in --help


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"callgate {__version__}")
        raise typer.Exit()


def _main(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True, callback=_show_version)] = False,
) -> None:
    """Options of callgate itself (the commands are registered below)."""


def register(app: typer.Typer, module: str) -> None:
    """Add the commands of ``callgate.cli.<module>`` to ``app``. Each module
    imports its heavy dependencies (kubernetes client, prometheus,
    libnftables) inside the commands, so its own import stays light."""
    mod = import_module(f"callgate.cli.{module}")
    if module == "lab":
        app.add_typer(mod.lab_app, name="lab")
    else:
        mod.register(app)


def build_app(command: str | None = None) -> typer.Typer:
    """The CLI with every command, or (``command`` known) with that command only."""
    app = typer.Typer(
        name="callgate",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Plain click help: no boxes, no type tags, wrapped by click, the same in a
        # terminal, a pipe and a CI log.
        rich_markup_mode=None,
        context_settings=CONTEXT_SETTINGS,
    )
    # The callback also keeps the app a group when it holds one command (typer
    # would otherwise make `callgate agent ...` the app itself).
    app.callback()(_main)
    only = COMMAND_MODULES.get(command or "")
    for module in MODULES:
        if only is None or module == only:
            register(app, module)
    tidy(app)
    return app


def __getattr__(name: str) -> Any:
    # `from callgate.cli.main import app` (tests, embedding) gets every command;
    # built on first use so that main() need not build it.
    if name == "app":
        globals()["app"] = full = build_app()
        return full
    raise AttributeError(name)


# One-shot commands that build a whole model (and, for apply, a table) and exit.
# Python's cyclic collector would only traverse their millions of live objects
# again and again (and, held with gc_paused, once more when it resumes: ~0.6 s
# for a 50k-pod inventory); and tearing the model down object by object at exit
# took longer still (0.2 s after loading a 50k-pod inventory, more after a lint),
# only to hand the memory back that the kernel reclaims with the process anyway.
# So these commands run without the collector and end with os._exit once their
# output is flushed. They register no atexit work and hold nothing the kernel
# does not release (the apply lock is a flock; libnftables a socket).
ONE_SHOT_COMMANDS = frozenset({"apply", "compile", "lint", "diff"})


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command not in ONE_SHOT_COMMANDS:
        build_app(command)()
        return
    gc.disable()
    try:
        build_app(command)()
        code: object = 0
    except SystemExit as done:
        code = done.code
    _exit_now(code)


def _exit_now(code: object) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, without tearing the heap down."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message goes to stderr, the status is 1
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            status = status or 1
    os._exit(status)
