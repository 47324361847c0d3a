"""lint, diff, explain, matrix, graph, convert: questions answered without a kernel
(except ``diff --live``, which reads the live ruleset).

Exit codes: 0 ok; 1 user error, lint findings at --fail-on, or (diff) access
changed; 2 usage error.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from callgate.analysis import convert as conv
from callgate.analysis import diff as diffmod
from callgate.analysis import render
from callgate.analysis.connectivity import (
    Connectivity,
    GroupMatrix,
    Partition,
    Progress,
    declared_ports,
    group_matrix,
)
from callgate.analysis.lint import report
from callgate.analysis.lint.config import find_config
from callgate.analysis.lint.rules import RULES, Severity, lookup, rules_markdown
from callgate.analysis.lint.run import lint
from callgate.cli.common import EXIT_OK, EXIT_USER, InventoryOpt, PoliciesOpt, fail
from callgate.cli.engine import BackendOpt, compile_for, load, parse_port, parse_target
from callgate.policy import Evaluator, load_inventory, load_policies
from callgate.policy.evaluator import ClusterRuleRef, Decision, RuleRef, SideDecision, TierMatch
from callgate.policy.model import PortProtocol

FamilyOpt = Annotated[int, typer.Option("--family", help="IP family of the addresses used: 4 or 6.")]
GroupOpt = Annotated[str, typer.Option(
    "--group-by", "-g",
    help="How endpoints are grouped: app (namespace/app label), namespace, endpoint, or any label key. "
         "'auto': endpoint for up to 30 endpoints, else app.")]
PortsOpt = Annotated[list[str] | None, typer.Option(
    "--port", help="Port to include, e.g. 80/TCP (repeatable). Default: every port an endpoint declares.")]


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def interactive() -> bool:
    """Progress bars only for a person at a terminal: not in CI, not when piped."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when interactive; otherwise nothing at all."""
    if not interactive():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    with RichProgress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _check_family(family: int) -> None:
    if family not in (4, 6):
        fail(f"--family must be 4 or 6, not {family}")


def _format(fmt: str, allowed: tuple[str, ...]) -> str:
    fmt = fmt.lower()
    if fmt not in allowed:
        fail(f"unknown format {fmt!r}: use {', '.join(allowed)}")
    return fmt


# -- lint ------------------------------------------------------------------------


def lint_cmd(
    paths: Annotated[list[str] | None, typer.Argument(help="Policy files or directories (recursive).")] = None,
    inventory: Annotated[list[str] | None, typer.Option(
        "--inventory", "-i", help="Inventory (callgate/v1 or a kubectl Pod/Namespace dump) for the semantic "
        "checks that need to know the pods. Repeatable.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, json, sarif or junit.")] = "text",
    fail_on: Annotated[str | None, typer.Option(
        "--fail-on", help="Exit 1 when a finding reaches this severity: error, warning, info "
        "(default: config, else error).")] = None,
    disable: Annotated[list[str] | None, typer.Option(
        "--disable", "-d", help="Rule id or name to skip (repeatable), on top of the config.")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", help="Config file (.callgate.yaml or pyproject.toml). Default: the nearest one "
        "from the current directory up.")] = None,
    explain_rule: Annotated[str | None, typer.Option(
        "--explain", help="Print the documentation of a rule (id or name, or 'all') and exit.")] = None,
) -> None:
    """Check NetworkPolicy, callgate/v1 App and ClusterNetworkPolicy files for mistakes, for people and CI.

    Schema and API-server validation, then semantic checks (with --inventory:
    selectors that select nothing, unresolved named ports, redundant rules,
    namespaces without default-deny...). Every finding has file:line:column,
    the object, the field and a hint. Exit 1 when findings reach --fail-on.

    Example: callgate lint -i inventory.yaml policies/ --format sarif > lint.sarif
    """
    if explain_rule is not None:
        if explain_rule.lower() == "all":
            typer.echo(rules_markdown(), nl=False)
            return
        text = report.explain(explain_rule)
        if text is None:
            fail(f"unknown lint rule {explain_rule!r}; rules: {', '.join(r.id for r in RULES)}")
        typer.echo(text, nl=False)
        return
    if not paths:
        fail("give at least one policy file or directory (or --explain RULE)")
    fmt = _format(fmt, ("text", "json", "sarif", "junit"))
    cfg = find_config(Path.cwd(), config)
    for ref in disable or ():
        rule = lookup(ref)
        if rule is None:
            fail(f"--disable {ref!r}: unknown lint rule; rules: {', '.join(r.id for r in RULES)}")
        cfg.disable.add(rule.id)
    try:
        threshold = Severity.parse(fail_on) if fail_on else (cfg.fail_on or Severity.ERROR)
    except ValueError as exc:
        fail(f"--fail-on: {exc}")
    inv = load_inventory(inventory) if inventory else None
    result = lint(paths, inv, cfg, inventory_paths=inventory or ())
    if fmt == "text":
        report.text(result, _stdout())
    elif fmt == "json":
        typer.echo(report.to_json(result))
    elif fmt == "sarif":
        typer.echo(report.sarif(result))
    else:
        typer.echo(report.junit(result, threshold), nl=False)
    raise typer.Exit(EXIT_USER if result.failed(threshold) else EXIT_OK)


# -- explain -----------------------------------------------------------------------


def _tier_json(match: TierMatch | None) -> dict[str, Any] | None:
    if match is None:
        return None
    ref = match.rule
    return {"tier": match.tier.value, "action": match.action.value, "policy": ref.policy.display,
            "priority": ref.policy.priority, "direction": ref.direction.value, "rule": ref.index,
            "rule_name": ref.rule.name, "fail_closed": match.fail_closed, "file": ref.policy.origin.file}


def _side_json(side: SideDecision) -> dict[str, Any]:
    return {
        "endpoint": side.endpoint.key if side.endpoint else None,
        "isolated": side.isolated,
        "allowed": side.allowed,
        "decided_by": side.decided_by,
        "admin": _tier_json(side.admin),
        "isolating_policies": [p.display for p in side.isolating],
        "allowed_by": [{"policy": r.policy.display, "direction": r.direction.value, "rule": r.index,
                        "file": r.policy.origin.file} for r in side.allowed_by],
        "baseline": _tier_json(side.baseline),
        "reasons": side.reasons(),
    }


def decision_json(decision: Decision, src: str, dst: str) -> dict[str, Any]:
    return {
        "source": {"name": src, "ip": str(decision.src)}, "destination": {"name": dst, "ip": str(decision.dst)},
        "port": decision.port, "protocol": decision.protocol, "allowed": decision.allowed,
        "self": decision.self_traffic, "egress": _side_json(decision.egress),
        "ingress": _side_json(decision.ingress), "reasons": decision.reasons(),
    }


def explain(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    src: Annotated[str, typer.Argument(help="Source: namespace/name or IP.")],
    dst: Annotated[str, typer.Argument(help="Destination: namespace/name or IP (also outside the inventory).")],
    port: Annotated[str, typer.Argument(help="Destination port, optionally /TCP, /UDP or /SCTP (default TCP).")],
    family: Annotated[int | None, typer.Option("--family", help="4 or 6: which address of a named endpoint to use.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
) -> None:
    """Say whether SRC may reach DST on PORT, and why, for both the source's
    egress and the destination's ingress: which tier decided (Admin,
    NetworkPolicy, Baseline), which ClusterNetworkPolicy rule (with its
    priority and name) or which isolating policies and allowing rule.

    Example: callgate explain -i inv.yaml -p policies/ x/a y/b 80/TCP
    """
    fmt = _format(fmt, ("text", "json"))
    if family is not None:
        _check_family(family)
    inv, pols = load(inventory, policies)
    src_ip, _ = parse_target(src, inv, family)
    dst_ip, _ = parse_target(dst, inv, family or src_ip.version)
    if src_ip.version != dst_ip.version:
        fail(f"{src_ip} and {dst_ip} are of different IP families")
    number, proto = parse_port(port)
    decision = Evaluator(pols, inv).evaluate(src_ip, dst_ip, number, proto)
    if fmt == "json":
        typer.echo(json.dumps(decision_json(decision, src, dst), indent=2))
        return
    out = _stdout()
    word = "[green]ALLOWED[/]" if decision.allowed else "[red]DENIED[/]"
    out.print(f"{src} ({src_ip}) -> {dst} ({dst_ip}) {number}/{proto}: {word}")
    if decision.self_traffic:
        out.print("  - a pod always reaches itself", markup=False)
        return
    for title, side in (("egress (source side)", decision.egress), ("ingress (destination side)", decision.ingress)):
        state = "[green]allows[/]" if side.allowed else "[red]denies[/]"
        out.print(f"  {title}: {state}")
        for reason in side.reasons():
            out.print(f"    - {reason}", markup=False)
        refs: list[RuleRef | ClusterRuleRef] = [m.rule for m in (side.admin, side.baseline) if m is not None]
        for ref in [*refs, *side.allowed_by]:
            if ref.policy.origin.file:
                out.print(f"      ({ref} is in {ref.policy.origin.file}, document {ref.policy.origin.document + 1})",
                          markup=False)


# -- matrix ----------------------------------------------------------------------------


def _ports(inv: Any, port: list[str] | None) -> list[tuple[int, PortProtocol]]:
    ports = [parse_port(p) for p in port] if port else declared_ports(inv)
    if not ports:
        fail("the inventory declares no ports; name some with --port 80/TCP")
    return ports


def _group_by(group_by: str, count: int) -> str:
    return ("endpoint" if count <= 30 else "app") if group_by == "auto" else group_by


def compute_groups(inventory: list[str], policies: list[str], port: list[str] | None, family: int,
                   group_by: str) -> tuple[GroupMatrix, str]:
    _check_family(family)
    inv, pols = load(inventory, policies)
    ports = _ports(inv, port)
    part = Partition(inv, [pols], family)
    if not part.endpoints:
        fail(f"no endpoint of the inventory has an IPv{family} address")
    grouping = _group_by(group_by, len(part.endpoints))
    with progress_bar("evaluating") as progress:
        gm = group_matrix(Connectivity(part, pols), ports, grouping, progress)
    return gm, grouping


def _cell(gm: GroupMatrix, g: str, h: str, port: str) -> tuple[int, int]:
    return gm.cell(g, h, port)


def _verdict(allowed: int, total: int, same: bool) -> bool | float:
    if total == 0:
        return same  # a pod and itself: always allowed; groups with no pairs: nothing to allow
    return True if allowed == total else False if allowed == 0 else round(allowed / total, 4)


def matrix(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    port: PortsOpt = None,
    family: FamilyOpt = 4,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, csv or json.")] = "text",
    group_by: GroupOpt = "auto",
) -> None:
    """Who reaches whom: one table per port, rows are sources, columns destinations.

    Cells: ✓ allowed, ✗ denied; with groups, the share of pod pairs allowed.
    Computed per class of equivalent endpoints, so it stays fast at 10,000 pods.

    Example: callgate matrix -i inv.yaml -p policies/ --port 80/TCP --format csv
    """
    fmt = _format(fmt, ("text", "csv", "json"))
    gm, grouping = compute_groups(inventory, policies, port, family, group_by)
    if fmt == "json":
        typer.echo(json.dumps({
            "family": family, "group_by": grouping, "ports": gm.ports, "groups": gm.groups,
            "matrix": {p: {g: {h: _verdict(*_cell(gm, g, h, p), g == h) for h in gm.groups} for g in gm.groups}
                       for p in gm.ports},
        }, indent=2))
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["from", "to", "port", "allowed", "allowed_pairs", "pairs"])
        for p in gm.ports:
            for g in gm.groups:
                for h in gm.groups:
                    a, t = _cell(gm, g, h, p)
                    v = _verdict(a, t, g == h)
                    writer.writerow([g, h, p, "some" if isinstance(v, float) else str(v).lower(), a, t])
        typer.echo(buf.getvalue(), nl=False)
        return
    out = _stdout()
    for p in gm.ports:
        table = Table(title=f"{p} (IPv{family}) — row reaches column?")
        table.add_column("from \\ to")
        for h in gm.groups:
            table.add_column(h, justify="center")
        for g in gm.groups:
            cells = []
            for h in gm.groups:
                v = _verdict(*_cell(gm, g, h, p), g == h)
                cells.append("[green]✓[/]" if v is True else "[red]✗[/]" if v is False else f"[yellow]{v:.0%}[/]")
            table.add_row(g, *cells)
        out.print(table)


# -- graph -------------------------------------------------------------------------------


def graph(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write to this file (format from its suffix unless --format is given); "
        "default stdout (text formats only).")] = None,
    kind: Annotated[str, typer.Option("--kind", "-k", help="calls: the app call graph; heatmap: the matrix.")] = "calls",
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="dot, svg or png (png needs cairosvg).")] = None,
    port: PortsOpt = None,
    family: FamilyOpt = 4,
    group_by: Annotated[str, typer.Option("--group-by", "-g", help="app, namespace, endpoint or a label key.")] = "app",
) -> None:
    """Draw connectivity: an application call graph (DOT, SVG, PNG) or a
    heat-map matrix (SVG, PNG), endpoints grouped into apps or namespaces.

    Example: callgate graph -i inv.yaml -p policies/ -o calls.svg
    """
    if kind not in ("calls", "heatmap"):
        fail(f"unknown --kind {kind!r}: use calls or heatmap")
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        fmt = suffix if suffix in ("dot", "gv", "svg", "png") else ("dot" if kind == "calls" else "svg")
    fmt = _format("dot" if fmt == "gv" else fmt, ("dot", "svg", "png"))
    if kind == "heatmap" and fmt == "dot":
        fail("a heatmap is drawn as svg or png, not dot")
    if fmt == "png" and output is None:
        fail("png output needs --output FILE")
    gm, _ = compute_groups(inventory, policies, port, family, group_by)
    title = f"callgate: {'call graph' if kind == 'calls' else 'connectivity'} by {group_by}, IPv{family}, " \
            f"ports {', '.join(gm.ports)}"
    if kind == "calls":
        text = render.graph_dot(gm, title) if fmt == "dot" else render.graph_svg(gm, title)
    else:
        text = render.heatmap_svg(gm, title)
    data: bytes = text.encode()
    if fmt == "png":
        try:
            data = render.to_png(text)
        except RuntimeError as exc:
            fail(str(exc))
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")
    typer.echo(f"wrote {output} ({len(gm.groups)} groups, {fmt})", err=True)


# -- diff -------------------------------------------------------------------------------------


def diff(
    paths: Annotated[list[str] | None, typer.Argument(
        help="OLD NEW policy paths; with --git, the policy paths to compare between revisions.")] = None,
    inventory: Annotated[list[str] | None, typer.Option("--inventory", "-i", help="Inventory file or directory.")] = None,
    git: Annotated[str | None, typer.Option(
        "--git", help="Compare revisions: REV..REV (e.g. main..HEAD) or REV (against the working tree).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text, json or markdown.")] = "text",
    group_by: Annotated[str, typer.Option("--group-by", "-g", help="app, namespace, endpoint or a label key.")] = "app",
    live: Annotated[bool, typer.Option("--live", help="Compare the desired ruleset for --node with the kernel's.")] = False,
    node: Annotated[str | None, typer.Option("--node", "-n", help="With --live: the node to compile for.")] = None,
    policies: Annotated[list[str] | None, typer.Option("--policies", "-p", help="With --live: policy paths.")] = None,
    backend: BackendOpt = "nft",
    netns: Annotated[str | None, typer.Option("--netns", help="With --live: read this network namespace.")] = None,
) -> None:
    """What a policy change does: which (source, destination, port) gained or
    lost access, grouped by app. Exit 0 when nothing changed, 1 when access changed.

    Examples:
      callgate diff -i inv.yaml old/ new/
      callgate diff -i inv.yaml --git main..HEAD policies/ --format markdown
      callgate diff --live -i inv.yaml -p policies/ --node node-1
    """
    fmt = _format(fmt, ("text", "json", "markdown", "md"))
    if live:
        _diff_live(inventory or [], policies or [], node, backend, netns, fmt)
        return
    if not inventory:
        fail("--inventory is required")
    paths = paths or []
    with tempfile.TemporaryDirectory(prefix="callgate-diff-") as tmp:
        if git:
            if not paths:
                fail("--git needs the policy paths to compare, e.g. --git main..HEAD policies/")
            old_rev, new_rev = diffmod.parse_revisions(git)
            old_paths: list[Any] = diffmod.materialise(old_rev, paths, Path(tmp))
            new_paths: list[Any] = diffmod.materialise(new_rev, paths, Path(tmp)) if new_rev else list(paths)
            labels = (old_rev, new_rev or "working tree")
        else:
            if len(paths) != 2:
                fail("give OLD and NEW policy paths (or --git REV..REV PATH...)")
            old_paths, new_paths = [paths[0]], [paths[1]]
            labels = (paths[0], paths[1])
        inv = load_inventory(inventory)
        old, new = load_policies(old_paths), load_policies(new_paths)
        with progress_bar("comparing") as progress:
            result = diffmod.connectivity_diff(inv, old, new, group_by, labels[0], labels[1], progress)
    if fmt == "json":
        typer.echo(diffmod.to_json(result))
    elif fmt in ("markdown", "md"):
        typer.echo(diffmod.markdown(result), nl=False)
    else:
        typer.echo(diffmod.text(result), nl=False)
    raise typer.Exit(EXIT_USER if result.changed else EXIT_OK)


def _diff_live(inventory: list[str], policies: list[str], node: str | None, backend: str,
               netns: str | None, fmt: str) -> None:
    from callgate.enforcers import get_enforcer

    if node is None:
        fail("--live needs --node")
    ruleset = compile_for(inventory, policies, node)
    try:
        enforcer = get_enforcer(backend, netns)
    except ValueError as exc:
        fail(str(exc))
    lines = enforcer.diff(ruleset)
    if fmt == "json":
        typer.echo(json.dumps({"node": node, "backend": backend, "in_sync": not lines, "diff": lines}, indent=2))
    elif not lines:
        typer.echo(f"in sync: the live ruleset on {node} ({backend}) is the desired one")
    else:
        out = _stdout()
        for line in lines:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" \
                if line.startswith("@@") else None
            out.print(line, style=style, markup=False)
    raise typer.Exit(EXIT_USER if lines else EXIT_OK)


# -- convert ------------------------------------------------------------------------------------


def convert(
    paths: Annotated[list[str], typer.Argument(help="Policy files or directories to convert.")],
    to: Annotated[str, typer.Option("--to", "-t", help="networkpolicy or app.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if anything could not be converted.")] = False,
) -> None:
    """Convert callgate/v1 Apps to Kubernetes NetworkPolicy, or the other way.

    App -> NetworkPolicy is exact. NetworkPolicy -> App converts what the App
    model can express exactly; the rest is kept as NetworkPolicy (valid input
    beside Apps) and each reason is printed on stderr. ClusterNetworkPolicies
    (and the v1alpha1 kinds) pass through unchanged, as v1alpha2.

    Example: callgate convert --to networkpolicy examples/shop/apps.yaml
    """
    to = to.lower().replace("-", "")
    if to not in ("networkpolicy", "app"):
        fail(f"--to {to!r}: use networkpolicy or app")
    pols = load_policies(paths)
    kept_reasons: dict[str, str] = {}
    if to == "networkpolicy":
        docs = [conv.network_policy_dict(p) for p in pols.policies]
        header = "# Generated by `callgate convert --to networkpolicy`.\n"
    else:
        result = conv.to_apps(pols.policies, pols.cluster)
        docs = result.apps + [conv.network_policy_dict(p) for p in result.kept]
        kept_reasons = result.reasons
        header = "# Generated by `callgate convert --to app`" + (
            "; policies that Apps cannot express exactly are kept as NetworkPolicy.\n" if result.kept else ".\n")
    # Cluster policies are neither: they pass through (as v1alpha2), around what was converted.
    docs.extend(conv.cluster_policy_dict(p) for p in pols.cluster)
    text = conv.dump_documents(docs, header)
    for key, why in sorted(kept_reasons.items()):
        typer.secho(f"kept as NetworkPolicy: {key}: {why}", err=True, fg="yellow")
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {output}: {exc}")
        typer.echo(f"wrote {output}: {len(docs)} object(s)", err=True)
    else:
        typer.echo(text, nl=False)
    if strict and kept_reasons:
        raise typer.Exit(EXIT_USER)


def register(app: typer.Typer) -> None:
    app.command("lint")(lint_cmd)
    app.command("diff")(diff)
    app.command("explain")(explain)
    app.command("matrix")(matrix)
    app.command("graph")(graph)
    app.command("convert")(convert)
