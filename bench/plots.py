"""Tiny SVG charts (no matplotlib: one less heavy dependency for a few lines and bars)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

W, H = 560, 340
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "middle", rotate: bool = False) -> str:
    rot = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-family="sans-serif"{rot}>{escape(s)}</text>')


def _frame(title: str, xlabel: str, ylabel: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
            '<rect width="100%" height="100%" fill="white"/>',
            _text(W / 2, 22, title, 14),
            _text(W / 2, H - 10, xlabel),
            _text(16, TOP + (H - TOP - BOTTOM) / 2, ylabel, rotate=True),
            f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
            'fill="none" stroke="#888"/>']


def loglog(path: Path, title: str, xlabel: str, ylabel: str,
           series: Sequence[tuple[str, Sequence[float], Sequence[float]]], reference_slope: bool = True) -> None:
    """Lines on log-log axes; a dashed slope-1 line marks linear growth."""
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if y > 0]
    x0, x1 = math.log10(min(xs)), math.log10(max(xs))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x: float) -> float:
        return LEFT + (math.log10(x) - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return H - BOTTOM - (math.log10(y) - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    out = _frame(title, xlabel, ylabel)
    for e in range(int(y0), int(y1) + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(_text(LEFT - 6, y + 4, f"{10 ** e:g}", 11, "end"))
    for x in sorted(set(xs)):
        out.append(_text(px(x), H - BOTTOM + 16, f"{x:,.0f}", 11))
    for i, (name, sx, sy) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(sx, sy, strict=True) if y > 0)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in zip(sx, sy, strict=True):
            if y > 0:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        out.append(_text(LEFT + 10, TOP + 16 + 16 * i, f"— {name}", 12, "start").replace(
            "<text ", f'<text fill="{colour}" '))
        if reference_slope and len(sx) > 1 and sy[0] > 0:
            # Linear growth from the first point: y = y_first * x / x_first.
            xa, xb = sx[0], sx[-1]
            ya, yb = sy[0], sy[0] * xb / xa
            out.append(f'<line x1="{px(xa):.1f}" y1="{py(ya):.1f}" x2="{px(xb):.1f}" y2="{py(yb):.1f}" '
                       f'stroke="{colour}" stroke-dasharray="4 4" opacity="0.5"/>')
    if reference_slope:
        out.append(_text(W - RIGHT - 6, H - BOTTOM - 8, "dashed: linear growth from the first point", 10, "end"))
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def bars(path: Path, title: str, ylabel: str, groups: Sequence[str],
         series: Sequence[tuple[str, Sequence[tuple[float, float, float]]]]) -> None:
    """Grouped bars of medians with min-max whiskers; one group per metric,
    values as a percentage of the first series (the baseline)."""
    out = _frame(title, "", ylabel)
    n_groups, n_series = len(groups), len(series)
    top = max(hi for _, vals in series for _, _, hi in vals) * 1.1 or 1.0

    def py(y: float) -> float:
        return H - BOTTOM - y / top * (H - TOP - BOTTOM)

    for tick in range(0, int(top) + 1, 25):
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>')
        out.append(_text(LEFT - 6, py(tick) + 4, f"{tick}%", 11, "end"))
    group_w = (W - LEFT - RIGHT) / n_groups
    bar_w = group_w * 0.8 / n_series
    for g, name in enumerate(groups):
        out.append(_text(LEFT + group_w * (g + 0.5), H - BOTTOM + 16, name, 12))
        for s, (_label, vals) in enumerate(series):
            lo, med, hi = vals[g]
            x = LEFT + group_w * g + group_w * 0.1 + bar_w * s
            colour = COLOURS[s % len(COLOURS)]
            out.append(f'<rect x="{x:.1f}" y="{py(med):.1f}" width="{bar_w * 0.9:.1f}" '
                       f'height="{py(0) - py(med):.1f}" fill="{colour}"/>')
            cx = x + bar_w * 0.45
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{py(lo):.1f}" y2="{py(hi):.1f}" stroke="black"/>')
            out.append(_text(cx, py(hi) - 4, f"{med:.0f}%", 10))
    for s, (label, _) in enumerate(series):
        out.append(_text(W - RIGHT - 90, TOP + 16 + 16 * s, f"■ {label}", 12, "start").replace(
            "<text ", f'<text fill="{COLOURS[s % len(COLOURS)]}" '))
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def _round_step(span: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving four to eight ticks over ``span``."""
    step = 10 ** math.floor(math.log10(span / 4))
    return float(step * next(m for m in (1, 2, 5, 10) if span / (step * m) <= 8))


def timeline(path: Path, title: str, xlabel: str, ylabel: str,
             series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
             marks: Sequence[tuple[float, str]] = (), log_y: bool = False) -> None:
    """Lines (or, for a series named with a leading '.', dots) over linear time, with
    vertical marks (e.g. the faults of a soak: time and a one-letter label)."""
    xs = [x for _, sx, _ in series for x in sx] + [m for m, _ in marks] or [0.0, 1.0]
    ys = [y for _, _, sy in series for y in sy if y > 0 or not log_y] or [1.0]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    if log_y:
        y0, y1 = float(math.floor(math.log10(min(ys)))), float(math.ceil(math.log10(max(ys))))
        y1 = y1 if y1 > y0 else y0 + 1
    else:
        y0, y1 = 0, max(ys) * 1.1 or 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        v = math.log10(max(y, 10 ** y0)) if log_y else y
        return H - BOTTOM - (v - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    out = _frame(title, xlabel, ylabel)
    if log_y:
        ticks = [10 ** e for e in range(int(y0), int(y1) + 1)]
    else:
        step = _round_step(y1)
        ticks = [step * i for i in range(int(y1 / step) + 1)]
    for tick in ticks:
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>')
        out.append(_text(LEFT - 6, py(tick) + 4, f"{tick:g}", 11, "end"))
    xstep = _round_step(x1 - x0)
    for i in range(int(x0 // xstep), int(x1 // xstep) + 1):
        if x0 <= i * xstep <= x1:
            out.append(_text(px(i * xstep), H - BOTTOM + 16, f"{i * xstep:g}", 11))
    for x, label in marks:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#bbb" '
                   'stroke-dasharray="3,3"/>')
        out.append(_text(px(x), TOP + 10, label, 9))
    for s, (label, sx, sy) in enumerate(series):
        colour = COLOURS[s % len(COLOURS)]
        points = [(px(x), py(y)) for x, y in zip(sx, sy, strict=True) if y > 0 or not log_y]
        if label.startswith("."):
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.5" fill="{colour}"/>' for x, y in points)
            label = label[1:]
        elif points:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        out.append(_text(LEFT + 8, TOP + 26 + 16 * s, f"■ {label}", 12, "start").replace(
            "<text ", f'<text fill="{colour}" '))
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
