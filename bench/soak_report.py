"""The soak's verdict and report: figures and pass/fail from a run's record, a
Markdown summary and two SVG plots (bench/soak.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.plots import timeline
from bench.soak_model import EXPECTED, Config, Record, Window


def judge(rec: Record, cfg: Config) -> dict[str, Any]:
    """Figures and pass/fail, from the record."""
    def in_window(t0: float, t1: float, kinds: tuple[str, ...]) -> bool:
        return any(w.kind in kinds and t0 <= (w.end if w.end is not None else 1e18) and t1 >= w.start
                   for w in rec.windows)

    wrong_outside: list[str] = []
    rounds_in = {"drop": 0, "kill": 0, "tamper": 0}
    wrong_tamper = {"count": 0}
    for t0, t1, result in rec.probes:
        for kind in ("drop", "kill", "tamper"):
            if in_window(t0, t1, (kind,)):
                rounds_in[kind] += 1
        bad = [pair for pair, ok in result.items() if ok != EXPECTED[tuple(pair.split(">"))]]  # type: ignore[index]
        if not bad:
            continue
        if in_window(t0, t1, ("tamper",)):
            wrong_tamper["count"] += 1
        else:
            wrong_outside.append(f"t={t0}: {', '.join(bad)}")
    latencies = sorted(s for _, s in rec.markers if s is not None)
    in_restart = sorted(s for t, s in rec.markers if s is not None and in_window(t, t + s, ("kill", "drop")))
    quiet = sorted(s for t, s in rec.markers if s is not None and not in_window(t, t + s, ("kill", "drop", "tamper")))
    rss = rss_by_incarnation(rec, cfg)
    problems = list(rec.problems) + rec.unexpected_exits
    problems += [f"probe wrong outside a tamper window: {w}" for w in wrong_outside]
    if cfg.rss_check:
        problems += [f"agent {n}: RSS grew {r['growth_pct']}% after warm-up" for n, r in rss.items()
                     if r["growth_pct"] is not None and r["growth_pct"] > 10]
    if not rec.final.get("equal"):
        problems.append("final table not equal to a fresh compile")
    totals: dict[str, float] = {}
    for inc in rec.incarnations:
        for k, v in inc.get("metrics", {}).items():
            totals[k] = totals.get(k, 0) + v
    loads = sorted(s["load1"] for s in rec.samples)
    return {
        "load_median": round(statistics.median(loads), 2) if loads else None, "load_max": loads[-1] if loads else None,
        "probe_rounds": len(rec.probes), "probe_rounds_in": rounds_in, "wrong_in_tamper_windows": wrong_tamper["count"],
        "wrong_outside_tamper_windows": len(wrong_outside),
        "latency_ms": percentiles(latencies), "latency_quiet_ms": percentiles(quiet),
        "latency_across_restart_or_drop_ms": percentiles(in_restart),
        "markers": len(rec.markers), "markers_lost": sum(1 for _, s in rec.markers if s is None),
        "rss": rss, "agent_totals": totals, "changes": rec.changes,
        "faults": {k: [dataclasses.asdict(w) for w in rec.windows if w.kind == k] for k in ("drop", "kill", "tamper")},
        "final": rec.final, "problems": problems, "ok": not problems,
    }


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, round(p * (len(values) - 1)))] * 1000, 1)

    return {"n": len(values), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(values[-1] * 1000, 1),
            "mean": round(statistics.fmean(values) * 1000, 1)}


def rss_by_incarnation(rec: Record, cfg: Config) -> dict[int, dict[str, Any]]:
    """Per agent process: RSS once warm, its maximum and last value after, and the
    growth from warm to last (None when it lived too briefly).

    Warm means ``warmup`` seconds after start AND after the process's first relist of
    the pods (an API drop after which its watch position had been compacted away, as
    its log says): the new list is built beside the cache it replaces, and the
    allocator keeps that high-water mark, one step up of about 18 MiB at 10,000 pods,
    once per process (the 30-minute run of docs/reliability.md shows it). Growth is
    judged from there; ``first_minute_growth_pct`` keeps the growth from ``warmup``."""
    out: dict[int, dict[str, Any]] = {}
    starts = {inc["n"]: inc["started"] for inc in rec.incarnations}
    for n, started in starts.items():
        mine = [(s["t"], s["agent_rss_kib"]) for s in rec.samples
                if s["incarnation"] == n and s["agent_rss_kib"] is not None]
        relisted = first_pod_relist(cfg.out / f"agent-{n}.log", started)
        warm_from = max(started + cfg.warmup, (relisted or 0.0) + 10)  # the relist itself takes seconds
        after = [kib for t, kib in mine if t >= warm_from]
        early = [kib for t, kib in mine if t >= started + cfg.warmup]
        if len(after) < 3 or relisted is None or len(early) < 3:
            out[n] = {"samples": len(mine), "growth_pct": None,
                      "max_mib": round(max((k for _, k in mine), default=0) / 1024, 1)}
            continue
        warm, late = statistics.median(after[:3]), statistics.median(after[-3:])
        first = statistics.median(early[:3])
        out[n] = {"samples": len(mine), "warm_mib": round(warm / 1024, 1), "last_mib": round(late / 1024, 1),
                  "max_mib": round(max(after) / 1024, 1), "growth_pct": round(100 * (late - warm) / warm, 1),
                  "first_minute_mib": round(first / 1024, 1),
                  "first_minute_growth_pct": round(100 * (late - first) / first, 1)}
    return out


def first_pod_relist(log: Path, started: float) -> float | None:
    """Soak time of the first "pods: ... relisting" in an agent's log (its lines carry
    wall-clock times; the first line, "agent starting", is at soak time ``started``)."""
    try:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    except (OSError, ValueError):
        return None
    if not lines:
        return None

    def wall(record: dict[str, Any]) -> float:
        return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()

    origin = wall(lines[0])
    return next((started + wall(r) - origin for r in lines
                 if str(r.get("msg", "")).startswith("pods:") and "relisting" in str(r.get("msg"))), None)


def load_samples(out: Path) -> tuple[Config, Record]:
    """The configuration and record of a finished run, from its samples.json."""
    data = json.loads((out / "samples.json").read_text())
    defaults = Config()
    cfg = Config(**{f.name: (type(getattr(defaults, f.name))(data["config"][f.name])
                             if f.name != "rss_check" else data["config"][f.name] == "True")
                    for f in dataclasses.fields(Config)})
    raw = data["record"]
    rec = Record(**{**raw, "windows": [Window(**w) for w in raw["windows"]],
                    "probes": [tuple(p) for p in raw["probes"]], "markers": [tuple(m) for m in raw["markers"]]})
    return cfg, rec


def write_report(out: Path, cfg: Config, rec: Record, verdict: dict[str, Any]) -> None:
    marks = [(w.start, w.kind[0].upper()) for w in rec.windows]  # D(rop), K(ill), T(amper)
    samples = [s for s in rec.samples if s["agent_rss_kib"] is not None]
    timeline(out / "soak-rss.svg", f"Agent RSS, {cfg.pods} pods, {cfg.pod_rate:g} pod changes/s",
             "seconds (D: API dropped, K: agent SIGKILLed and restarted, T: table tampered)", "MiB",
             [("agent RSS", [s["t"] for s in samples], [s["agent_rss_kib"] / 1024 for s in samples]),
              ("soak harness + fake API server RSS", [s["t"] for s in samples],
               [(s["harness_rss_kib"] or 0) / 1024 for s in samples])], marks)
    seen = [(t, s) for t, s in rec.markers if s is not None]
    timeline(out / "soak-latency.svg", "Event -> kernel latency (API write until the kernel's set has it)",
             "seconds (D: API dropped, K: agent SIGKILLed and restarted, T: table tampered)", "ms (log)",
             [(".marker latency", [t for t, _ in seen], [s * 1000 for _, s in seen])], marks, log_y=True)
    (out / "report.md").write_text(markdown(cfg, verdict))


def _pct(p: dict[str, Any]) -> str:
    if not p.get("n"):
        return "| - | - | - | - | 0 |"
    return f"| {p['p50']} | {p['p90']} | {p['p99']} | {p['max']} | {p['n']} |"


def markdown(cfg: Config, v: dict[str, Any]) -> str:
    uname = platform.uname()
    lines = [f"# Soak: {'PASS' if v['ok'] else 'FAIL'}", "",
             f"Machine: {uname.node}, {os.cpu_count()} CPUs, kernel {uname.release}; load (1 min) "
             f"median {v.get('load_median', '?')}, max {v.get('load_max', '?')} during the run.",
             f"Run: {cfg.duration:g} s, {cfg.pods} pods, {cfg.pod_rate:g} pod changes/s, {cfg.policy_rate:g} "
             f"policy changes/s; API dropped {cfg.drop_for:g} s every {cfg.drop_every:g} s; agent SIGKILLed every "
             f"{cfg.kill_every:g} s; table tampered every {cfg.tamper_every:g} s; agent --resync {cfg.resync:g} s.",
             f"Changes made: {v['changes']['pod']} pod, {v['changes']['policy']} policy "
             f"(watch history compacted {v['changes']['compactions']} times).", "",
             "## Event -> kernel latency (ms)", "",
             "| markers | p50 | p90 | p99 | max | n |", "|---|---:|---:|---:|---:|---:|",
             f"| all {_pct(v['latency_ms'])}",
             f"| no fault under way {_pct(v['latency_quiet_ms'])}",
             f"| across a restart or an API drop {_pct(v['latency_across_restart_or_drop_ms'])}",
             "", f"Markers lost: {v['markers_lost']} of {v['markers']}.", "",
             "## Faults", "", "| fault | count | recovery s (each) |", "|---|---:|---|"]
    for kind, what in (("drop", "API server stopped, then back (until /readyz)"),
                       ("kill", "SIGKILL + restart (until /readyz)"),
                       ("tamper", "table tampered (until the drift repair)")):
        ws = v["faults"][kind]
        lines.append(f"| {what} | {len(ws)} | {', '.join(str(w['recovered']) for w in ws)} |")
    lines += ["", "## Probes", "",
              f"{v['probe_rounds']} rounds of 3 probes (b->a allowed, c->a denied, a->c allowed); during API drops "
              f"{v['probe_rounds_in']['drop']}, during restarts {v['probe_rounds_in']['kill']}, during tampering "
              f"{v['probe_rounds_in']['tamper']}. Wrong outside tamper windows: {v['wrong_outside_tamper_windows']}; "
              f"inside them (the table was deleted or emptied on purpose): {v['wrong_in_tamper_windows']}.", "",
              "## Agent RSS per process (MiB)", "",
              "Warm: 60 s after start and 10 s after the process's first relist of the pods (after an API drop"
              " whose watch position had been compacted away); growth from there to its last samples."
              " At 60 s: before that relist, and the growth from then.", "",
              "| process | samples | at 60 s | warm | last | max | growth from warm | growth from 60 s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in v["rss"].items():
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x}%"
        lines.append(f"| {n} | {r['samples']} | {r.get('first_minute_mib', '-')} | {r.get('warm_mib', '-')} | "
                     f"{r.get('last_mib', '-')} | {r['max_mib']} | {pct(r['growth_pct'])} | "
                     f"{pct(r.get('first_minute_growth_pct'))} |")
    totals = v["agent_totals"]
    lines += ["", "## Agent counters (summed over its processes)", "",
              *(f"- {k}: {val:g}" for k, val in sorted(totals.items())), "",
              f"## Final table: {'equal' if v['final'].get('equal') else 'DIFFERENT'} to a fresh compile "
              f"({v['final'].get('desired_lines')} lines, {v['final'].get('set_elements')} set elements; "
              f"settled in {v['final'].get('seconds')} s)", ""]
    if v["problems"]:
        lines += ["## Problems", "", *(f"- {p}" for p in v["problems"]), ""]
    lines += ["Plots: soak-rss.svg, soak-latency.svg.", ""]
    return "\n".join(lines)
