"""Time one analysis task on a synthetic cluster, in a subprocess (so a slow or
missing implementation is bounded by the caller's timeout):
``python -m bench.analysis_point TASK '<Spec JSON>'`` prints one JSON object.

Tasks use ``callgate.analysis`` when it provides them, else what exists:

* ``lint``: the ``callgate lint`` command on YAML files, if the CLI has it;
* ``diff``: ``callgate.analysis.diff.connectivity_diff`` between the policies
  and a copy with 1% of them removed;
* ``matrix``: ``callgate.analysis.connectivity`` (class matrix grouped by app),
  if present;
* ``matrix-evaluator``: the reference Evaluator (what ``callgate matrix``
  runs today) on a sample of pairs, extrapolated to every pair: labelled as an
  estimate in the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.synth import Spec, generate, to_model
from callgate.policy.model import PolicySet


def lint(spec: Spec) -> dict[str, Any]:
    exe = str(Path(sys.executable).with_name("callgate"))
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    if " lint " not in help_text:
        return {"available": False, "why": "`callgate lint` is not registered in the CLI yet"}
    cluster = generate(spec)
    with tempfile.TemporaryDirectory(prefix="cgb-lint-") as tmp:
        inv, pol = Path(tmp) / "inventory.json", Path(tmp) / "policies.yaml"
        inv.write_text(json.dumps(cluster.inventory))
        pol.write_text(yaml.dump_all(cluster.policies, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
        lint_help = subprocess.run([exe, "lint", "--help"], capture_output=True, text=True).stdout
        argv = [exe, "lint", "-i", str(inv), str(pol)]
        if "--policies" in lint_help:
            argv = [exe, "lint", "-i", str(inv), "-p", str(pol)]
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    # lint exits non-zero when it has findings; a usage error (2) is a failure.
    shown = " ".join(a if a.startswith("-") or a == "lint" else Path(a).name for a in argv[1:])
    return {"available": True, "seconds": elapsed, "exit": proc.returncode,
            "what": f"`callgate {shown}` (CLI process, imports included)",
            "stderr": proc.stderr[-300:] if proc.returncode == 2 else ""}


def diff(spec: Spec) -> dict[str, Any]:
    try:
        from callgate.analysis.diff import connectivity_diff
    except ImportError as exc:
        return {"available": False, "why": f"callgate.analysis.diff: {exc}"}
    inventory, policies = to_model(generate(spec))
    new = PolicySet([p for i, p in enumerate(policies.policies) if i % 100 != 7])
    start = time.perf_counter()
    connectivity_diff(inventory, policies, new)
    return {"available": True, "seconds": time.perf_counter() - start,
            "what": f"connectivity_diff, {len(policies.policies) - len(new.policies)} policies removed"}


def matrix(spec: Spec) -> dict[str, Any]:
    try:
        from callgate.analysis.connectivity import Connectivity, Partition, declared_ports, group_matrix
    except ImportError as exc:
        return {"available": False, "why": f"callgate.analysis.connectivity: {exc}"}
    inventory, policies = to_model(generate(spec))
    start = time.perf_counter()
    part = Partition(inventory, [policies], 4)
    conn = Connectivity(part, policies)
    group_matrix(conn, declared_ports(inventory), "app")
    return {"available": True, "seconds": time.perf_counter() - start,
            "what": f"Connectivity + group_matrix by app over {len(declared_ports(inventory))} declared ports, "
                    f"{part.size} endpoint classes"}


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


TASKS = {"lint": lint, "diff": diff, "matrix": matrix, "matrix-evaluator": matrix_evaluator}


def main() -> None:
    task, spec = sys.argv[1], Spec(**json.loads(sys.argv[2]))
    try:
        result = TASKS[task](spec)
    except Exception as exc:  # an implementation in progress: report, don't crash the suite
        result = {"available": False, "why": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
