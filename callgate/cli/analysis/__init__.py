"""lint, diff, explain, matrix, graph, convert, test: questions answered without a
kernel (except ``diff --live`` and ``test --live``, which read the live ruleset).

Exit codes are those of :mod:`callgate.cli.common`; each command's "no" (lint
findings, access changed, a failed expectation) is described in its help.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from callgate.cli.analysis import conntest, convert, diff, explain, lint, views

    app.command("lint")(lint.lint_cmd)
    app.command("diff")(diff.diff)
    app.command("explain")(explain.explain)
    app.command("matrix")(views.matrix)
    app.command("graph")(views.graph)
    app.command("convert")(convert.convert)
    app.command("test")(conntest.test_cmd)
