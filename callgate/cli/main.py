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
    from callgate.cli import analysis, engine, lab

    engine.register(app)
    analysis.register(app)
    app.add_typer(lab.lab_app, name="lab")
    __import__("callgate.cli.agent", fromlist=["register"]).register(app)
    __import__("callgate.cli.k8s", fromlist=["register"]).register(app)


_register()


def main() -> None:
    run_app(app)
