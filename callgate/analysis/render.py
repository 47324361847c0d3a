"""Pictures of connectivity: a heat-map matrix (SVG/PNG) and an application call graph (DOT/SVG/PNG).

SVG is written by hand: deterministic output (golden-file tests), no system
packages, and it is simple geometry. PNG is the same SVG rasterised by cairosvg.
Endpoints are drawn in groups (apps or namespaces, see
:func:`callgate.analysis.groups.group_key`) so large inventories stay
readable: the picture grows with the number of apps, not pods, and at most
``--max-groups`` of them are drawn. Both pictures count only the ports a
destination serves: an app that may call another on everything it serves is
fully green and its arrow names those ports, not every port of the cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from callgate.analysis.groups import GroupMatrix

ANY = "(any pod)"
LISTED_PORTS = 3  # an edge lists up to this many ports; beyond, it says how many


def _label(ports: list[str], served: list[str]) -> str:
    if len(ports) <= LISTED_PORTS:
        return ", ".join(ports)
    if ports == served:
        return f"all {len(ports)} served ports"
    return ", ".join(ports[:LISTED_PORTS - 1]) + f" and {len(ports) - LISTED_PORTS + 1} more"
_FONT = "font-family='DejaVu Sans, Verdana, sans-serif'"


def _attr(text: str) -> str:
    return escape(text, {"'": "&apos;", '"': "&quot;"})


def _mix(fraction: float) -> str:
    """Colour of a cell: light red (denied) to green (allowed)."""
    lo, hi = (0xFD, 0xE0, 0xDD), (0x1A, 0x98, 0x50)
    r, g, b = (round(a + (c - a) * fraction) for a, c in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _cell_tip(gm: GroupMatrix, g: str, h: str, frac: float | None) -> str:
    if frac is not None:
        return f"{g} -> {h}: {frac:.0%} of (pod pair, served port) allowed"
    if gm.pairs(gm.index[g], gm.index[h]) == 0:
        return f"{g} -> {h}: no pod pairs (one pod, which always reaches itself)"
    return f"{g} -> {h}: no pod of {h} serves any of the ports"


def heatmap_svg(gm: GroupMatrix, title: str) -> str:
    """Rows are sources, columns destinations; a cell's colour is the share of
    (source pod, destination pod, port the destination serves) combinations
    allowed from the row group to the column group."""
    n = len(gm.groups)
    cell = max(4.0, min(22.0, 900.0 / max(n, 1)))
    labels = cell >= 9
    longest = max((len(g) for g in gm.groups), default=4)
    margin = 7.0 * min(longest, 40) + 20 if labels else 20.0
    left, top = margin, margin + 40
    width = max(left + n * cell + 40, 8.0 * len(title) + 20, 420.0)  # room for the title
    height = top + n * cell + 70
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' {_FONT} font-size='11'>",
        f"<rect width='{width:.0f}' height='{height:.0f}' fill='white'/>",
        f"<text x='10' y='20' font-size='14' font-weight='bold'>{escape(title)}</text>",
        "<text x='10' y='36' fill='#555'>row reaches column? colour = share of (pod pair, port the destination "
        "serves) allowed</text>",
    ]
    for i, g in enumerate(gm.groups):
        y = top + i * cell
        if labels:
            out.append(f"<text x='{left - 4:.1f}' y='{y + cell * 0.7:.1f}' text-anchor='end'>{escape(g)}</text>")
            cx = left + i * cell + cell * 0.7
            out.append(f"<text x='{cx:.1f}' y='{top - 4:.1f}' transform='rotate(-60 {cx:.1f} {top - 4:.1f})'>"
                       f"{escape(g)}</text>")
        for j, h in enumerate(gm.groups):
            frac = gm.served_fraction(g, h)
            fill = "#d9d9d9" if frac is None else _mix(frac)
            tip = _cell_tip(gm, g, h, frac)
            out.append(f"<rect x='{left + j * cell:.1f}' y='{y:.1f}' width='{cell:.1f}' height='{cell:.1f}' "
                       f"fill='{fill}' stroke='white' stroke-width='0.5'><title>{escape(tip)}</title></rect>")
    ly = top + n * cell + 20
    for k in range(11):
        out.append(f"<rect x='{left + k * 14:.1f}' y='{ly:.1f}' width='14' height='10' fill='{_mix(k / 10)}'/>")
    out.append(f"<text x='{left:.1f}' y='{ly + 24:.1f}'>denied</text>")
    out.append(f"<text x='{left + 154:.1f}' y='{ly + 24:.1f}' text-anchor='end'>allowed</text>")
    out.append(f"<rect x='{left + 170:.1f}' y='{ly:.1f}' width='14' height='10' fill='#d9d9d9'/>")
    out.append(f"<text x='{left + 188:.1f}' y='{ly + 9:.1f}'>no pairs, or nothing served</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str
    both: bool = False  # dst calls src on the same ports too: one line, an arrowhead at each end
    opposed: bool = False  # dst calls src on other ports: that edge is drawn on the other side


def call_edges(gm: GroupMatrix) -> list[Edge]:
    """Edges between groups on the ports the destination serves and the policies allow
    for at least one pod pair, labelled with those ports.

    A destination that every other group reaches on the same ports gets one
    edge from :data:`ANY` instead of one per source: in a cluster without
    default-deny that is most of them, and the picture would be a hairball.
    Two groups that call each other on the same ports get one two-headed edge,
    so neither direction hides the other."""
    raw: list[Edge] = []
    for h in gm.groups:
        served = [p for k, p in enumerate(gm.ports) if gm.serving[k, gm.index[h]]]
        incoming = {g: _label(ports, served) for g in gm.groups if g != h and (ports := gm.served_ports(g, h))}
        others = len(gm.groups) - 1
        if others > 2 and len(incoming) == others and len(set(incoming.values())) == 1:
            raw.append(Edge(ANY, h, next(iter(incoming.values()))))
        else:
            raw.extend(Edge(g, h, label) for g, label in sorted(incoming.items()))
    labels = {(e.src, e.dst): e.label for e in raw}
    edges: list[Edge] = []
    for e in raw:
        back = labels.get((e.dst, e.src))
        if back is None:
            edges.append(e)
        elif back == e.label:
            if e.src < e.dst:  # one edge for the pair
                edges.append(Edge(e.src, e.dst, e.label, both=True))
        else:
            edges.append(Edge(e.src, e.dst, e.label, opposed=True))
    return edges


def _namespace(group: str) -> str:
    return group.split("/", 1)[0] if "/" in group else group


def graph_dot(gm: GroupMatrix, title: str) -> str:
    edges = call_edges(gm)
    lines = [
        "digraph callgate {",
        f"  label={_dot(title)}; labelloc=t; rankdir=LR; fontname=\"DejaVu Sans\";",
        "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#e8f1fb\", fontname=\"DejaVu Sans\"];",
        "  edge [fontname=\"DejaVu Sans\", fontsize=10];",
    ]
    by_ns: dict[str, list[str]] = {}
    for g in gm.groups:
        by_ns.setdefault(_namespace(g), []).append(g)
    for i, (ns, groups) in enumerate(sorted(by_ns.items())):
        lines.append(f"  subgraph cluster_{i} {{ label={_dot('namespace ' + ns)}; style=rounded; color=\"#999999\";")
        for g in groups:
            lines.append(f"    {_dot(g)} [label={_dot(f'{g} ({len(gm.members[g])})')}];")
        lines.append("  }")
    if any(e.src == ANY for e in edges):
        lines.append(f"  {_dot(ANY)} [shape=ellipse, style=dashed];")
    for e in edges:
        both = ", dir=both" if e.both else ""
        lines.append(f"  {_dot(e.src)} -> {_dot(e.dst)} [label={_dot(e.label)}{both}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def graph_svg(gm: GroupMatrix, title: str) -> str:
    """Namespaces as columns, apps stacked inside; curved arrows labelled with ports."""
    edges = call_edges(gm)
    by_ns: dict[str, list[str]] = {}
    for g in gm.groups:
        by_ns.setdefault(_namespace(g), []).append(g)
    node_w, node_h, col_w, row_h, top = 170.0, 34.0, 300.0, 70.0, 80.0
    pos: dict[str, tuple[float, float]] = {}
    columns = sorted(by_ns.items())
    has_any = any(e.src == ANY for e in edges)
    x0 = 40.0 + (col_w if has_any else 0)
    for c, (_, groups) in enumerate(columns):
        for r, g in enumerate(groups):
            pos[g] = (x0 + c * col_w + 15, top + 30 + r * row_h)
    tallest = max((len(g) for _, g in columns), default=1)
    if has_any:
        pos[ANY] = (40.0, top + 30 + (tallest - 1) * row_h / 2)
    width = max(x0 + len(columns) * col_w + 20, 9.0 * len(title) + 40)  # room for the title
    height = top + 50 + tallest * row_h
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"viewBox='0 0 {width:.0f} {height:.0f}' {_FONT} font-size='12'>",
        f"<rect width='{width:.0f}' height='{height:.0f}' fill='white'/>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#444'/></marker></defs>",
        f"<text x='20' y='28' font-size='15' font-weight='bold'>{escape(title)}</text>",
        "<text x='20' y='46' fill='#555'>arrow: the source app may call the destination app on these ports</text>",
    ]
    for c, (ns, groups) in enumerate(columns):
        x = x0 + c * col_w
        h = len(groups) * row_h + 20
        out.append(f"<rect x='{x:.1f}' y='{top:.1f}' width='{node_w + 30:.1f}' height='{h:.1f}' rx='10' "
                   "fill='#fafafa' stroke='#999'/>")
        out.append(f"<text x='{x + 10:.1f}' y='{top + 16:.1f}' fill='#555'>namespace {escape(ns)}</text>")
    for e in edges:
        out.append(_edge_svg(pos[e.src], pos[e.dst], e, node_w, node_h))
    for g, (x, y) in pos.items():
        count = "" if g == ANY else f" ({len(gm.members[g])})"
        style = "fill='white' stroke='#777' stroke-dasharray='4 3'" if g == ANY else "fill='#e8f1fb' stroke='#2b6cb0'"
        out.append(f"<g><title>{escape(g + count)}</title><rect x='{x:.1f}' y='{y:.1f}' width='{node_w:.0f}' "
                   f"height='{node_h:.0f}' rx='8' {style}/>")
        out.append(f"<text x='{x + node_w / 2:.1f}' y='{y + 21:.1f}' text-anchor='middle'>"
                   f"{escape(_short(g) + count)}</text></g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(cx: float, cy: float, dx: float, dy: float, w: float, h: float) -> tuple[float, float]:
    """Where a ray from a box centre in direction (dx, dy) leaves the box."""
    if dx == 0 and dy == 0:
        return cx, cy
    tx = (w / 2) / abs(dx) if dx else math.inf
    ty = (h / 2) / abs(dy) if dy else math.inf
    t = min(tx, ty)
    return cx + dx * t, cy + dy * t


def _edge_svg(a: tuple[float, float], b: tuple[float, float], edge: Edge, w: float, h: float) -> str:
    ax, ay = a[0] + w / 2, a[1] + h / 2
    bx, by = b[0] + w / 2, b[1] + h / 2
    dx, dy = bx - ax, by - ay
    dist = math.hypot(dx, dy) or 1.0
    # Bend every edge to its left: A->B and B->A then take different arcs, far enough
    # apart that their labels do not cover each other even between neighbours.
    bend = max(min(60.0, 0.25 * dist), 45.0 if edge.opposed else 0.0)
    label = edge.label
    mx, my = (ax + bx) / 2 - dy / dist * bend, (ay + by) / 2 + dx / dist * bend
    sx, sy = _clip(ax, ay, mx - ax, my - ay, w, h)
    ex, ey = _clip(bx, by, mx - bx, my - by, w, h)
    lx, ly = 0.25 * sx + 0.5 * mx + 0.25 * ex, 0.25 * sy + 0.5 * my + 0.25 * ey
    text = _short(label, 40)
    tw = 6.2 * len(text) + 8
    start = " marker-start='url(#arrow)'" if edge.both else ""
    return (f"<g><path d='M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}' fill='none' stroke='#444' "
            f"stroke-width='1.3' marker-end='url(#arrow)'{start}/>"
            f"<rect x='{lx - tw / 2:.1f}' y='{ly - 9:.1f}' width='{tw:.1f}' height='14' rx='3' fill='white' "
            f"fill-opacity='0.85'/><text x='{lx:.1f}' y='{ly + 2:.1f}' text-anchor='middle' font-size='10' "
            f"fill='#222'>{escape(text)}<title>{escape(label)}</title></text></g>")


def to_png(svg: str) -> bytes:
    """Rasterise SVG with cairosvg (an optional dependency: ``pip install 'callgate[render]'``)."""
    try:
        import cairosvg
    except (ImportError, OSError) as exc:  # OSError: the cairo library itself is missing
        raise RuntimeError(f"PNG output needs cairosvg and the cairo library ({exc}); "
                           "install with: pip install 'callgate[render]' (Debian: apt-get install libcairo2)") from None
    data: bytes = cairosvg.svg2png(bytestring=svg.encode("utf-8"), dpi=96)
    return data
