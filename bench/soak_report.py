"""The soak's report: a Markdown summary and two SVG plots (bench/soak.py)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from bench.plots import timeline


def write_report(out: Path, cfg: Any, rec: Any, verdict: dict[str, Any]) -> None:
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


def markdown(cfg: Any, v: dict[str, Any]) -> str:
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
              "| process | samples | after warm-up | last | max | growth |", "|---|---:|---:|---:|---:|---:|"]
    for n, r in v["rss"].items():
        lines.append(f"| {n} | {r['samples']} | {r.get('warm_mib', '-')} | {r.get('last_mib', '-')} | "
                     f"{r['max_mib']} | {'-' if r['growth_pct'] is None else str(r['growth_pct']) + '%'} |")
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
