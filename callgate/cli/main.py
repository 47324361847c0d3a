"""The ``callgate`` command line.

Each command group lives in its own module and is registered here. Exit codes:
0 ok, 1 user error (a clear message on stderr, no traceback), 2 usage error.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import typer

from callgate.cli.common import run_app

HELP = (
    "Network-policy enforcement for container platforms.\n\n"
    "callgate reads who runs where (an inventory) and who may call whom "
    "(Kubernetes NetworkPolicy or callgate/v1 App YAML), compiles that into "
    "rules for one node, and applies them as one atomic nftables transaction."
)

# The module (callgate.cli.<name>) that registers each top-level command. A
# process started for one command imports only that module: the analysis
# commands pull in numpy and the lint engine, the lab asyncio and urllib, and
# importing all of them was a third of `callgate apply`'s start-up.
# tests/test_cli_startup.py checks this table against what the modules register.
COMMAND_MODULES: dict[str, str] = {
    "apply": "engine", "compile": "engine",
    "lint": "analysis", "diff": "analysis", "explain": "analysis", "matrix": "analysis", "graph": "analysis",
    "convert": "analysis",
    "lab": "lab",
    "agent": "agent",
    "controller": "k8s",
}
MODULES = ("engine", "analysis", "lab", "agent", "k8s")  # the order commands are listed in --help


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
    app = typer.Typer(name="callgate", help=HELP, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)
    # A callback keeps the app a group even when it holds one command (typer
    # would otherwise make `callgate agent ...` the app itself).
    app.callback()(_no_options)
    only = COMMAND_MODULES.get(command or "")
    for module in MODULES:
        if only is None or module == only:
            register(app, module)
    return app


def _no_options() -> None:
    pass


def __getattr__(name: str) -> Any:
    # `from callgate.cli.main import app` (tests, embedding) gets every command;
    # built on first use so that main() need not build it.
    if name == "app":
        globals()["app"] = full = build_app()
        return full
    raise AttributeError(name)


def main() -> None:
    run_app(build_app(sys.argv[1] if len(sys.argv) > 1 else None))
