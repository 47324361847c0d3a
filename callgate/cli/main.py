"""The ``callgate`` command line.

Each command group lives in its own module and is registered here. Exit codes
are described once, in :mod:`callgate.cli.common`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from callgate import __version__
from callgate.cli.common import CONTEXT_SETTINGS, tidy

app = typer.Typer(
    name="callgate",
    help=(
        "Network-policy enforcement for container platforms.\n\n"
        "callgate reads who runs where (an inventory) and who may call whom "
        "(Kubernetes NetworkPolicy or callgate/v1 App YAML), compiles that into "
        "rules for one node, and applies them as one atomic nftables transaction. "
        "Exit codes: 0 ok, 1 bad input or a negative answer (see each command), 2 usage mistake."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: no boxes, no type tags, wrapped by click, the same in a
    # terminal, a pipe and a CI log.
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"callgate {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True, callback=_show_version)] = False,
) -> None:
    """Options of callgate itself (the commands are registered below)."""


def _register() -> None:
    # Each command module imports its heavy dependencies (kubernetes client,
    # prometheus, libnftables) inside the commands, so `callgate --help` and
    # the analysis commands start fast and work without them.
    from callgate.cli import agent, analysis, cni, doctor, engine, inventory, k8s, lab

    engine.register(app)
    doctor.register(app)
    analysis.register(app)
    app.add_typer(lab.lab_app, name="lab")
    agent.register(app)
    inventory.register(app)
    k8s.register(app)
    cni.register(app)
    tidy(app)


_register()


def main() -> None:
    app()
