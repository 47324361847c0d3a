"""``callgate test``: check connectivity expectations, offline or against a node's live table."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from callgate.analysis.conntest import report
from callgate.analysis.conntest.check import Checker
from callgate.analysis.conntest.spec import load_expectations
from callgate.analysis.explain import Explainer
from callgate.cli.analysis.output import stdout
from callgate.cli.common import (
    EXIT_OK,
    EXIT_USER,
    InventoryOpt,
    PoliciesOpt,
    fail,
    load_inputs,
    opened_enforcer,
    require_paths,
    usage_error,
)
from callgate.cli.engine import BackendOpt
from callgate.compiler import Compiler
from callgate.compiler.interpret import Interpreter
from callgate.policy import Inventory, PolicySet


class TestFormat(StrEnum):
    TEXT = "text"
    JUNIT = "junit"
    SARIF = "sarif"


def test_cmd(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="Expectation files (see below).")],
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    fmt: Annotated[TestFormat, typer.Option(
        "--format", "-f", metavar="[text|junit|sarif]", case_sensitive=False,
        help="text for people; JUnit XML or SARIF 2.1.0 for CI.")] = TestFormat.TEXT,
    live: Annotated[bool, typer.Option(
        "--live", help="Check against --node's table in the kernel instead of the policies alone.")] = False,
    node: Annotated[str | None, typer.Option(
        "--node", "-n", metavar="NODE", help="With --live: the node whose table is checked.")] = None,
    netns: Annotated[str | None, typer.Option(
        "--netns", metavar="NS", help="With --live: the node's network namespace.")] = None,
    backend: BackendOpt = "nft",
) -> None:
    """Check connectivity expectations against the policies.

    One expectation per line, e.g. 'frontend/web -> shop/cart 8080/TCP: allow'
    or '* -> shop/ledger: deny except shop/cart' (selectors: *, ns/name,
    ns/*, [ns/]key=value, an IP). Each failure is printed with the explain
    trace. Exit 1 when any expectation fails. With --live --node N, the
    node's table is read back: it must equal what the policies compile to,
    and the expectations are checked on it for the pairs the node enforces.

    \b
    Example: callgate test -i inv.yaml -p policies/ policies/connectivity.cgtest
    """
    if live and node is None:
        usage_error("--live needs --node")
    require_paths("'FILE...'", files)
    inv, pols = load_inputs(inventory, policies)
    expectations = load_expectations(files)
    checker = Checker(inv, pols, _live_table(inv, pols, node, netns, backend) if live and node else None)
    outcomes = [checker.check(e) for e in expectations]
    explainer = Explainer(checker.evaluator)
    where = node if live else None
    if fmt is TestFormat.JUNIT:
        typer.echo(report.junit(outcomes, explainer, where), nl=False)
    elif fmt is TestFormat.SARIF:
        typer.echo(report.sarif(outcomes, explainer, where))
    else:
        out = stdout()
        for line in report.text(outcomes, explainer, where):
            out.print(line, markup=False)
    failed = any(not o.passed and not o.skipped for o in outcomes)
    raise typer.Exit(EXIT_USER if failed else EXIT_OK)


def _live_table(inv: Inventory, pols: PolicySet, node: str, netns: str | None, backend: str
                ) -> tuple[str, Interpreter]:
    """The node's IR, once the kernel is shown to hold exactly its table."""
    if node not in inv.nodes():
        fail(f"node {node!r} runs no endpoint in the inventory (nodes: {', '.join(inv.nodes()) or 'none'})")
    ruleset = Compiler(pols, inv).compile(node)
    with opened_enforcer(backend, netns) as enforcer:
        drift = enforcer.diff(ruleset)
    if drift:
        shown = "\n".join(drift[:40]) + (f"\n... {len(drift) - 40} more lines" if len(drift) > 40 else "")
        fail(f"the live table on {node} ({enforcer.name}) is not what these policies compile to, so its "
             f"verdicts are no policy's; apply them first (callgate apply), or see the difference:\n{shown}")
    return node, Interpreter([ruleset])
