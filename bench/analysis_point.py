"""Time one analysis command on a synthetic cluster, in a subprocess (so a slow
implementation is bounded by the caller's timeout):
``python -m bench.analysis_point TASK '<Spec JSON>'`` prints one JSON object.

Tasks are what a user runs, as processes (imports and YAML parsing included),
with the peak RSS of that process:

* ``lint``: ``callgate lint -i inventory.json policies.yaml``;
* ``diff``: ``callgate diff`` between the policies and a copy with 1% of them
  removed (default-denies among them, so access changes);
* ``matrix``, ``graph``, ``heatmap``: ``callgate matrix`` (text, every declared
  port, default grouping), ``callgate graph --format dot``, ``callgate graph
  --kind heatmap -o heatmap.svg``;
* ``matrix-evaluator``: the reference Evaluator on a sample of pairs,
  extrapolated to every pair of every declared port: labelled as an estimate in
  the report (what a matrix without equivalence classes would cost).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.synth import Spec, generate, to_model

COMMANDS: dict[str, list[str]] = {
    "lint": ["lint", "-i", "{inventory}", "{policies}"],
    "diff": ["diff", "-i", "{inventory}", "{policies}", "{changed}"],
    "matrix": ["matrix", "-i", "{inventory}", "-p", "{policies}"],
    "graph": ["graph", "-i", "{inventory}", "-p", "{policies}", "--format", "dot"],
    "heatmap": ["graph", "-i", "{inventory}", "-p", "{policies}", "--kind", "heatmap", "-o", "{dir}/heatmap.svg"],
}


def command(task: str, spec: Spec) -> dict[str, Any]:
    exe = str(Path(sys.executable).with_name("callgate"))
    cluster = generate(spec)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with tempfile.TemporaryDirectory(prefix="cgb-analysis-") as tmp:
        files = {"inventory": f"{tmp}/inventory.json", "policies": f"{tmp}/policies.yaml",
                 "changed": f"{tmp}/changed.yaml", "dir": tmp}
        Path(files["inventory"]).write_text(json.dumps(cluster.inventory))
        Path(files["policies"]).write_text(yaml.dump_all(cluster.policies, Dumper=dumper))
        Path(files["changed"]).write_text(
            yaml.dump_all([p for i, p in enumerate(cluster.policies) if i % 100 != 7], Dumper=dumper))
        argv = [exe, *(a.format(**files) for a in COMMANDS[task])]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "CI": "1"})
        out, err = proc.communicate()
        elapsed = time.perf_counter() - start
        peak_kib = _children_peak_kib()  # the command is this process's only child
    shown = " ".join(a if a.startswith("-") or not a.startswith(tmp) else Path(a).name for a in argv[1:])
    # lint exits 1 on findings and diff on a change; 2 is a usage error, a traceback is a crash.
    failed = proc.returncode == 2 or "Traceback" in err
    return {"available": not failed, "seconds": elapsed, "exit": proc.returncode, "peak_rss_mib": peak_kib / 1024,
            "output_bytes": len(out), "what": f"`callgate {shown}`",
            **({"why": err.strip().splitlines()[-1][:300] if err.strip() else "failed"} if failed else {})}


def _children_peak_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def matrix_evaluator(spec: Spec, sample: int = 20000) -> dict[str, Any]:
    from callgate.policy.evaluator import Evaluator

    inventory, policies = to_model(generate(spec))
    ev = Evaluator(policies, inventory)
    eps = inventory.endpoints
    ports = sorted({(p.port, p.protocol) for ep in eps for p in ep.ports})
    n = len(eps)
    start = time.perf_counter()
    done = 0
    for k in range(sample):
        s, d = eps[(k * 7919) % n], eps[(k * 104729 + 1) % n]
        port, proto = ports[k % len(ports)]
        ev.allowed(s.ips[0], d.ips[0], port, proto)
        done += 1
    per = (time.perf_counter() - start) / done
    return {"available": True, "estimate": True, "seconds": per * n * n * len(ports),
            "what": f"reference Evaluator: {per * 1e6:.0f} us per (src, dst, port) from {done} samples, "
                    f"x {n}^2 pairs x {len(ports)} ports"}


TASKS = [*COMMANDS, "matrix-evaluator"]


def main() -> None:
    task, spec = sys.argv[1], Spec(**json.loads(sys.argv[2]))
    try:
        result = matrix_evaluator(spec) if task == "matrix-evaluator" else command(task, spec)
    except Exception as exc:  # an implementation in progress: report, don't crash the suite
        result = {"available": False, "why": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
