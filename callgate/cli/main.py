"""The ``callgate`` command line.

Each command group lives in its own module and is registered here. Exit codes:
0 ok, 1 user error (a clear message on stderr, no traceback), 2 usage error.
"""

from __future__ import annotations

import typer

from callgate.cli.common import run_app

app = typer.Typer(
    name="callgate",
    help=(
        "Network-policy enforcement for container platforms.\n\n"
        "callgate reads who runs where (an inventory) and who may call whom "
        "(Kubernetes NetworkPolicy or callgate/v1 App YAML), compiles that into "
        "rules for one node, and applies them as one atomic nftables transaction."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each command module imports its heavy dependencies (kubernetes client,
    # prometheus, libnftables) inside the commands, so `callgate --help` and
    # the analysis commands start fast and work without them.
    from callgate.cli import agent, analysis, doctor, engine, k8s, lab

    engine.register(app)
    doctor.register(app)
    analysis.register(app)
    app.add_typer(lab.lab_app, name="lab")
    agent.register(app)
    k8s.register(app)


_register()


def main() -> None:
    run_app(app)
