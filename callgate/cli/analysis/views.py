"""``callgate matrix`` and ``callgate graph``: who reaches whom, as tables and pictures."""

from __future__ import annotations

import csv
import io
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from callgate.analysis import render
from callgate.analysis.connectivity import Connectivity, Partition
from callgate.analysis.groups import DEFAULT_MAX_GROUPS, GroupMatrix, choose_grouping, declared_ports, group_matrix
from callgate.cli.analysis.output import FamilyOpt, check_family, progress_bar, stdout
from callgate.cli.common import InventoryOpt, PoliciesOpt, fail, load_inputs, usage_error
from callgate.cli.engine import parse_port
from callgate.policy.model import PortProtocol

GroupOpt = Annotated[str, typer.Option(
    "--group-by", "-g", metavar="GROUP",
    help="app (namespace/app label), namespace, endpoint, or any label key; auto: endpoints up to "
         "30, else apps, else namespaces.")]
PortsOpt = Annotated[list[str] | None, typer.Option(
    "--port", metavar="PORT", help="Port to include, e.g. 80/TCP (repeatable). Default: every port an endpoint "
    "declares.")]
MaxGroupsOpt = Annotated[int, typer.Option(
    "--max-groups", metavar="N", help="Show at most N groups: the largest, and the rest merged into one "
    "'(other: ...)' group. 0: all of them (refused when the table would be too large).")]

# Cell symbols of the text matrix, explained under every table.
ALLOWED, DENIED, NO_PAIRS = "✓", "✗", "—"
LEGEND = (f"{ALLOWED} every pod pair allowed, {DENIED} none, n% the share allowed, "
          f"{NO_PAIRS} no pair (a pod alone with itself: always allowed)")


def compute_groups(inventory: list[str], policies: list[str], port: list[str] | None, family: int,
                   group_by: str, max_groups: int) -> GroupMatrix:
    check_family(family)
    if max_groups < 0:
        usage_error("--max-groups must be 0 (no limit) or more")
    if max_groups == 1:
        usage_error("--max-groups must be at least 2 (one group and the rest)")
    wanted = [parse_port(p) for p in port] if port else None
    inv, pols = load_inputs(inventory, policies)
    ports: list[tuple[int, PortProtocol]] = wanted or declared_ports(inv)
    if not ports:
        fail("the inventory declares no ports; name some with --port 80/TCP")
    part = Partition(inv, [pols], family)
    if not part.endpoints:
        fail(f"no endpoint of the inventory has an IPv{family} address")
    grouping = choose_grouping(part.endpoints, group_by, max_groups)
    try:
        with progress_bar("evaluating") as progress:
            gm = group_matrix(Connectivity(part, pols), ports, grouping, progress, max_groups)
    except ValueError as exc:
        usage_error(str(exc))
    if gm.merged:
        typer.echo(f"note: the {gm.merged} smallest groups are shown as one, {gm.groups[-1]}; "
                   "--max-groups N shows more", err=True)
    return gm


class MatrixFormat(StrEnum):
    TEXT = "text"
    CSV = "csv"
    JSON = "json"


def matrix(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    port: PortsOpt = None,
    family: FamilyOpt = 4,
    fmt: Annotated[MatrixFormat, typer.Option(
        "--format", "-f", metavar="[text|csv|json]", case_sensitive=False, help="Output format.")
    ] = MatrixFormat.TEXT,
    group_by: GroupOpt = "auto",
    max_groups: MaxGroupsOpt = DEFAULT_MAX_GROUPS,
) -> None:
    """Who reaches whom: one table per port, rows are sources, columns destinations.

    A cell is the share of ordered pairs of different pods, row group to
    column group, that the policies allow on the port. Computed per class of
    equivalent endpoints, so 10,000 pods take seconds and bounded memory.

    \b
    Example: callgate matrix -i inv.yaml -p policies/ --port 80/TCP --format csv
    """
    gm = compute_groups(inventory, policies, port, family, group_by, max_groups)
    if fmt is MatrixFormat.JSON:
        typer.echo(json.dumps({
            "family": family, "group_by": gm.group_by, "ports": gm.ports, "groups": gm.groups,
            "matrix": {p: {g: {h: gm.verdict(g, h, p) for h in gm.groups} for g in gm.groups} for p in gm.ports},
        }, indent=2))
    elif fmt is MatrixFormat.CSV:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["from", "to", "port", "allowed", "allowed_pairs", "pairs"])
        for p in gm.ports:
            for g in gm.groups:
                for h in gm.groups:
                    allowed, total = gm.cell(g, h, p)
                    v = gm.verdict(g, h, p)
                    word = "none" if v is None else "some" if isinstance(v, float) else str(v).lower()
                    writer.writerow([g, h, p, word, allowed, total])
        typer.echo(buf.getvalue(), nl=False)
    else:
        _text(gm, family)


def _text(gm: GroupMatrix, family: int) -> None:
    """Plain lines, never cut to the terminal's width: rows named, columns numbered."""
    out = stdout()
    number_width = len(str(len(gm.groups)))
    name_width = max(len(g) for g in gm.groups)
    cell_width = max(4, number_width)
    for p in gm.ports:
        out.print(f"{p} (IPv{family}): does the row reach the column?", markup=False)
        head = " " * (number_width + 1 + name_width) + "".join(
            f" {i + 1:>{cell_width}}" for i in range(len(gm.groups)))
        out.print(head, markup=False)
        for i, g in enumerate(gm.groups):
            cells = []
            for h in gm.groups:
                v = gm.verdict(g, h, p)
                if v is None:
                    text, style = NO_PAIRS, ""
                elif isinstance(v, bool):
                    text, style = (ALLOWED, "green") if v else (DENIED, "red")
                else:
                    text, style = f"{v:.0%}", "yellow"
                padded = f"{text:>{cell_width}}"
                cells.append(f" [{style}]{padded}[/]" if style else f" {padded}")
            out.print(escape(f"{i + 1:>{number_width}} {g:<{name_width}}") + "".join(cells))
        out.print("", markup=False)
    out.print(LEGEND, markup=False)


class GraphKind(StrEnum):
    CALLS = "calls"
    HEATMAP = "heatmap"


class GraphFormat(StrEnum):
    DOT = "dot"
    GV = "gv"
    SVG = "svg"
    PNG = "png"


def graph(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Write to this file (format from its suffix unless --format is "
        "given); default stdout (text formats only).")] = None,
    kind: Annotated[GraphKind, typer.Option(
        "--kind", "-k", metavar="[calls|heatmap]", case_sensitive=False,
        help="calls: the app call graph; heatmap: the matrix as colours.")] = GraphKind.CALLS,
    fmt: Annotated[GraphFormat | None, typer.Option(
        "--format", "-f", metavar="[dot|svg|png]", case_sensitive=False,
        help="Output format (png needs cairosvg).")] = None,
    port: PortsOpt = None,
    family: FamilyOpt = 4,
    group_by: Annotated[str, typer.Option(
        "--group-by", "-g", metavar="GROUP", help="app, namespace, endpoint or a label key.")] = "app",
    max_groups: MaxGroupsOpt = DEFAULT_MAX_GROUPS,
) -> None:
    """Draw connectivity: an application call graph or a heat-map matrix.

    The call graph (DOT, SVG, PNG) has an arrow from app to app for each
    port the destination serves and the policies allow; the heatmap (SVG,
    PNG) colours each cell by the share of pod pairs and served ports allowed.

    \b
    Example: callgate graph -i inv.yaml -p policies/ -o calls.svg
    """
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        chosen = suffix if suffix in ("dot", "gv", "svg", "png") else ("dot" if kind is GraphKind.CALLS else "svg")
    else:
        chosen = fmt.value
    chosen = "dot" if chosen == "gv" else chosen
    if kind is GraphKind.HEATMAP and chosen == "dot":
        usage_error("a heatmap is drawn as svg or png, not dot")
    if chosen == "png" and output is None:
        usage_error("png output needs --output FILE")
    gm = compute_groups(inventory, policies, port, family, group_by, max_groups)
    what = "call graph" if kind is GraphKind.CALLS else "connectivity"
    title = f"callgate: {what} by {gm.group_by}, IPv{family}, ports {', '.join(gm.ports)}"
    if kind is GraphKind.CALLS:
        text = render.graph_dot(gm, title) if chosen == "dot" else render.graph_svg(gm, title)
    else:
        text = render.heatmap_svg(gm, title)
    data: bytes = text.encode()
    if chosen == "png":
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
    typer.echo(f"wrote {output} ({len(gm.groups)} groups, {chosen})", err=True)
