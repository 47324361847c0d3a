"""``callgate explain``."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from callgate.analysis.explain import Explainer, text_lines, to_json
from callgate.cli.analysis.output import check_family, stdout
from callgate.cli.common import EXIT_USER, InventoryOpt, PoliciesOpt, fail, load_inputs
from callgate.cli.engine import parse_port, parse_target
from callgate.policy import Evaluator


class ExplainFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


def explain(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    src: Annotated[str, typer.Argument(metavar="SRC", help="Source: namespace/name or IP.")],
    dst: Annotated[str, typer.Argument(
        metavar="DST", help="Destination: namespace/name or IP (also outside the inventory).")],
    port: Annotated[str, typer.Argument(
        metavar="PORT", help="Destination port, optionally /TCP, /UDP or /SCTP (default TCP).")],
    family: Annotated[int | None, typer.Option(
        "--family", metavar="4|6", help="Which address of a named endpoint to use (default: IPv4 if it has one).")
    ] = None,
    fmt: Annotated[ExplainFormat, typer.Option(
        "--format", "-f", metavar="[text|json]", case_sensitive=False, help="Output format.")] = ExplainFormat.TEXT,
    expect: Annotated[Verdict | None, typer.Option(
        "--expect", metavar="[allow|deny]", case_sensitive=False,
        help="Exit 1 when the verdict is not this one (for CI).")] = None,
) -> None:
    """Say whether SRC may reach DST on PORT, and why.

    Both sides are explained: the source's egress and the destination's
    ingress, which policies isolate each, and the rule that allows it with
    the file:line:column where it is written. For a denial, each isolating
    policy and its rules that came nearest (the peer matches but not the
    port, or the port but not the peer). Exit 1 with --expect when the
    verdict differs.

    \b
    Example: callgate explain -i inv.yaml -p policies/ x/a y/b 80/TCP --expect deny
    """
    if family is not None:
        check_family(family)
    number, proto = parse_port(port)
    inv, pols = load_inputs(inventory, policies)
    src_ip, _ = parse_target(src, inv, family)
    dst_ip, _ = parse_target(dst, inv, family or src_ip.version)
    if src_ip.version != dst_ip.version:
        fail(f"{src_ip} and {dst_ip} are of different IP families")
    evaluator = Evaluator(pols, inv)
    explanation = Explainer(evaluator).explain(evaluator.evaluate(src_ip, dst_ip, number, proto))
    decision = explanation.decision
    if fmt is ExplainFormat.JSON:
        typer.echo(json.dumps(to_json(explanation, src, dst), indent=2))
    else:
        out = stdout()
        word = "[green]ALLOWED[/]" if decision.allowed else "[red]DENIED[/]"
        out.print(f"{src} ({src_ip}) -> {dst} ({dst_ip}) {number}/{proto}: {word}")
        for line in text_lines(explanation):
            out.print(line, markup=False)
    if expect is not None and decision.allowed != (expect is Verdict.ALLOW):
        verdict = "ALLOWED" if decision.allowed else "DENIED"
        typer.secho(f"expected {expect.value}, got {verdict}", err=True, fg="red")
        raise typer.Exit(EXIT_USER)
