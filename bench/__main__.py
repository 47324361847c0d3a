"""The benchmark suite: ``.venv/bin/python -m bench`` (as root, for the datapath lab).

Runs every benchmark on seeded synthetic clusters (bench/synth.py), then writes
BENCHMARKS.md, bench/results.json and the SVG plots in bench/plots/.

    --quick      tiny sizes, one repeat (the smoke test; no figure means anything)
    --out DIR    write the report, results and plots under DIR instead of the repo
    --skip X     skip a part: compile, load, antrea, datapath, analysis, whole, agent, cold, docker, flowlog
                 (repeatable)
    --only X     measure part X again on its own; the rest of the report keeps the last full run's figures

Compile and analysis figures come from subprocesses (bench/compile_point.py,
bench/analysis_point.py) so that each has its own memory figures and a slow
part is bounded by a timeout. The datapath part needs root, network
namespaces, nftables and gcc; without them it is skipped and the report says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.synth import Spec, generate, to_model

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Plan:
    repeats: int
    pods_curve: tuple[Spec, ...]
    policies_curve: tuple[Spec, ...]
    target: Spec
    tiers: Spec  # the target with ClusterNetworkPolicies beside its NetworkPolicies
    antrea: Spec
    antrea_repeats: int
    analysis: tuple[tuple[str, Spec], ...]  # (shape, cluster): the analysis commands at scale
    analysis_timeout: float
    rounds: int
    seconds: float
    apply_repeats: int
    changes: int
    command_timeout: float  # per CLI process of the whole-path part
    agent_runs: int  # lone changes per kind and source (bench_agent_latency)
    agent_burst: int  # pods in the burst
    docker_starts: int  # containers started on a real dockerd, each timed to its rules in the kernel


FULL = Plan(
    repeats=5,
    pods_curve=tuple(Spec(pods=p, namespaces=p // 25, policies=1000, hot=100) for p in (1000, 10000, 50000)),
    policies_curve=tuple(Spec(pods=50000, namespaces=2000, policies=n, hot=n // 10) for n in (100, 1000, 10000)),
    target=Spec(pods=50000, namespaces=2000, policies=10000, hot=3000, v6_every=1),
    tiers=Spec(pods=50000, namespaces=2000, policies=10000, hot=3000, v6_every=1, cluster_policies=1000),
    antrea=Spec(pods=102000, namespaces=25000, policies=75000, hot=3000),
    antrea_repeats=3,
    analysis=(
        # Every pod its own equivalence class: 10,000 classes, the worst case for anything
        # quadratic in classes (the 400 namespaces that OOMed at 24 GB).
        ("400 namespaces, every pod a class of its own", Spec(pods=10000, namespaces=400, policies=1000, hot=100,
                                                               pod_name_labels=True)),
        ("20 namespaces of 500 pods", Spec(pods=10000, namespaces=20, policies=1000, hot=100)),
    ),
    analysis_timeout=300,
    rounds=5, seconds=5.0, apply_repeats=5, changes=200,
    command_timeout=120, agent_runs=20, agent_burst=1000, docker_starts=100,
)
QUICK = Plan(
    repeats=1,
    pods_curve=tuple(Spec(pods=p, namespaces=p // 25, policies=40, hot=4) for p in (200, 600)),
    policies_curve=tuple(Spec(pods=600, namespaces=24, policies=n, hot=n // 10) for n in (20, 60)),
    target=Spec(pods=600, namespaces=24, policies=60, hot=20, v6_every=1),
    tiers=Spec(pods=600, namespaces=24, policies=60, hot=20, v6_every=1, cluster_policies=12),
    antrea=Spec(pods=1020, namespaces=250, policies=750, hot=30),
    antrea_repeats=1,
    analysis=(
        ("8 namespaces, every pod a class of its own", Spec(pods=200, namespaces=8, policies=20, hot=4,
                                                             pod_name_labels=True)),
        ("2 namespaces of 100 pods", Spec(pods=200, namespaces=2, policies=20, hot=4)),
    ),
    analysis_timeout=40,
    rounds=1, seconds=0.3, apply_repeats=1, changes=2,
    command_timeout=60, agent_runs=1, agent_burst=20, docker_starts=3,
)


PARTS = ["compile", "load", "antrea", "datapath", "analysis", "whole", "agent", "cold", "docker", "flowlog"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered) + 0.5) - 1 if len(ordered) > 1 else 0)]


# Address-space bound of every benchmark process (and what it starts): a runaway
# fails alone instead of pushing a shared machine into swap. The Antrea point's
# model and compile stay under ~1 GiB resident; address space is larger.
MEMORY_LIMIT = 8 << 30


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _sub(module: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([PY, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=ROOT, preexec_fn=_bounded)
    except subprocess.TimeoutExpired:
        return {"available": False, "timeout": timeout, "why": f"did not finish within {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"available": False, "why": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _sub_script(path: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """A benchmark script (not a module) that prints one JSON object last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([PY, str(ROOT / path), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=ROOT, preexec_fn=_bounded)
    except subprocess.TimeoutExpired:
        return {"available": False, "why": f"did not finish within {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"available": False, "why": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _with_netns(why_not: str | None, fn: Any) -> dict[str, Any]:
    """Run ``fn(netns)`` with a scratch network namespace when root may make
    one (else ``fn(None)``: no apply), and always remove it."""
    if why_not is not None:
        return fn(None)  # type: ignore[no-any-return]
    name = f"cgb-whole-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        return fn(name)  # type: ignore[no-any-return]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def spec_json(spec: Spec) -> str:
    return json.dumps(dataclasses.asdict(spec))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": platform.release(), "python": platform.python_version(),
                            "cores": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                            if line.startswith("Model name")), "unknown")
    except OSError:
        info["cpu"] = "unknown"
    try:
        info["nft"] = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["nft"] = "not installed"
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def datapath_possible() -> str | None:
    """Why the datapath part cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "python3-nftables is not linked into the venv (scripts/setup.sh)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip", action="append", default=[], choices=PARTS)
    ap.add_argument("--only", choices=PARTS, help=(
        "measure this part again on its own; the other sections keep the figures of the last full run "
        "(results.json), and the report says when each was measured"))
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out_dir: Path = args.out or ROOT
    plot_dir = (out_dir / "bench" / "plots") if args.out is None else out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    results_path = (out_dir / "bench" / "results.json") if args.out is None else out_dir / "results.json"
    started = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    if args.only:
        if not results_path.exists():
            ap.error(f"--only {args.only} needs the results of a full run in {results_path}")
        res: dict[str, Any] = json.loads(results_path.read_text())
        args.skip = [part for part in PARTS if part != args.only]
        # The machine may not be the full run's: say which one measured this part.
        res[f"{args.only}_measured"] = {"started": stamp, "load": os.getloadavg(), "machine": machine()}
    else:
        res = {"machine": machine(), "quick": args.quick,
               "command": "python -m bench" + (" --quick" if args.quick else ""),
               "started": stamp, "load_before": os.getloadavg()}
    log(f"machine: {machine() if args.only else res['machine']}")

    if "compile" not in args.skip:
        for curve in ("pods_curve", "policies_curve"):
            res[curve] = []
            for spec in getattr(plan, curve):
                log(f"compile {curve} {spec}")
                res[curve].append(_sub("bench.compile_point", spec_json(spec), str(plan.repeats)))
        log(f"compile target {plan.target}")
        res["target"] = _sub("bench.compile_point", spec_json(plan.target), str(plan.repeats))
        log(f"compile target with cluster tiers {plan.tiers}")
        res["tiers"] = _sub("bench.compile_point", spec_json(plan.tiers), str(plan.repeats))
    if "load" not in args.skip:
        log("load YAML/JSON of the target cluster")
        res["load"] = _sub("bench.compile_point", spec_json(plan.target), "1", "--yaml")
    if "antrea" not in args.skip:
        log(f"antrea scale {plan.antrea}")
        res["antrea"] = _sub("bench.compile_point", spec_json(plan.antrea), str(plan.antrea_repeats))
    if "datapath" not in args.skip:
        why = datapath_possible()
        if why is not None:
            res["datapath_skipped"] = why
        else:
            from bench import datapath

            log("datapath lab")
            cluster = generate(plan.target)
            inventory, policies = to_model(cluster)
            # The same cluster with ClusterNetworkPolicies: a table of its own in the same rotation.
            tiered = to_model(generate(plan.tiers))[1]
            res["lab"] = datapath.run(cluster, inventory, policies, rounds=plan.rounds, seconds=plan.seconds,
                                      apply_repeats=plan.apply_repeats, changes=plan.changes, log=log,
                                      tiered=tiered)
    root_why = datapath_possible()  # the parts below need root and namespaces too
    if "whole" not in args.skip:
        res["whole"] = {}
        for label, spec in (("target", plan.target), ("antrea", plan.antrea)):
            log(f"whole path (files -> kernel) {label} {spec}")
            only = None if label == "target" else "apply,compile"
            res["whole"][label] = _with_netns(root_why, lambda ns, spec=spec, only=only: _sub(
                "bench.whole_path", spec_json(spec), *(["--netns", ns] if ns else []),
                "--timeout", str(plan.command_timeout), *(["--only", only] if only else []),
                timeout=plan.command_timeout * 12 + 600))
    if "agent" not in args.skip:
        if root_why is not None:
            res["agent"] = {"available": False, "why": root_why}
        else:
            log("agent latency: event -> kernel, both sources, and a burst")
            res["agent"] = _sub_script("bench/bench_agent_latency.py", "--json", "--runs", str(plan.agent_runs),
                                       "--burst", str(plan.agent_burst), timeout=3600)
    if "cold" not in args.skip:
        if root_why is not None:
            res["cold"] = {"available": False, "why": root_why}
        else:
            log(f"cold start from the API {plan.target}")
            res["cold"] = _sub("bench.cold_start", spec_json(plan.target), timeout=1800)
    if "flowlog" not in args.skip:
        if root_why is not None:
            res["flowlog"] = {"available": False, "why": root_why}
        else:
            log("flow log under a storm of denied packets")
            res["flowlog"] = _sub("bench.flowlog_storm", "--seconds", f"{plan.seconds:g}",
                                  "--rounds", str(plan.rounds), timeout=1800)
    if "analysis" not in args.skip:
        from bench.analysis_point import TASKS

        res["analysis"] = {}
        for n, (shape, spec) in enumerate(plan.analysis):
            res["analysis"][shape] = {"spec": dataclasses.asdict(spec)}
            # The evaluator's extrapolation says what classes save; once is enough.
            for task in TASKS if n == 0 else [t for t in TASKS if t != "matrix-evaluator"]:
                log(f"analysis {shape}: {task}")
                res["analysis"][shape][task] = _sub("bench.analysis_point", task, spec_json(spec),
                                                    timeout=plan.analysis_timeout)
    if "docker" not in args.skip:
        log(f"docker: {plan.docker_starts} container starts on a real dockerd")
        res["docker"] = _sub("bench.docker_latency", str(plan.docker_starts), timeout=1800)
    if not args.only:  # a part measured alone keeps the full run's plan, duration and load
        res["plan"] = {k: (str(v) if isinstance(v, (Spec, tuple)) else v) for k, v in dataclasses.asdict(plan).items()}
        res["elapsed_s"] = time.time() - started
        res["load_after"] = os.getloadavg()
    results_path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    from bench.report import write_report

    write_report(res, out_dir / "BENCHMARKS.md", plot_dir, ROOT if args.out is None else out_dir)
    log(f"wrote {out_dir / 'BENCHMARKS.md'} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
