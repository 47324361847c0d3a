"""One compile measurement, run in a subprocess of its own so that its memory
figures belong to it alone: ``python -m bench.compile_point '<Spec JSON>' REPEATS [--yaml]``.

Prints one JSON object: compile seconds per repeat (from the in-memory model,
a fresh Compiler each time, as the engine does on a change), the compile's own
peak allocation (tracemalloc, in a separate untimed run, since tracing slows
Python down), the process's peak RSS, the model's size, and with ``--yaml``
instead the time to load the same cluster from YAML and from JSON files
(parsing + validation), nothing else.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

from bench.synth import Spec, generate, to_model
from callgate.compiler.compile import Compiler
from callgate.policy.inventory import load_inventory
from callgate.policy.loader import load_policies


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(spec: Spec, repeats: int, with_yaml: bool) -> dict[str, Any]:
    cluster = generate(spec)
    out: dict[str, Any] = {"spec": dataclasses.asdict(spec), "policies": len(cluster.policies)}
    if with_yaml:
        # Loading is measured on its own: a separate subprocess keeps the
        # loader's garbage out of the compile's memory figures.
        with tempfile.TemporaryDirectory(prefix="cgb-yaml-") as tmp:
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            for fmt in ("yaml", "json"):
                inv_path, pol_path = Path(tmp) / f"inventory.{fmt}", Path(tmp) / f"policies.{fmt}"
                if fmt == "yaml":
                    inv_path.write_text(yaml.dump(cluster.inventory, Dumper=dumper))
                    pol_path.write_text(yaml.dump_all(cluster.policies, Dumper=dumper))
                else:
                    inv_path.write_text(json.dumps(cluster.inventory))
                    pol_path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": cluster.policies}))
                out[f"{fmt}_bytes"] = inv_path.stat().st_size + pol_path.stat().st_size
                start = time.perf_counter()
                load_inventory(inv_path)
                out[f"{fmt}_inventory_s"] = time.perf_counter() - start
                start = time.perf_counter()
                load_policies(pol_path)
                out[f"{fmt}_policies_s"] = time.perf_counter() - start
        return out
    inventory, policies = to_model(cluster)
    node = cluster.node
    del cluster
    gc.collect()
    out["rss_before_compile_mib"] = _rss_mib()
    times = []
    digest = ""
    for _ in range(repeats):
        start = time.perf_counter()
        ruleset = Compiler(policies, inventory).compile(node)
        times.append(time.perf_counter() - start)
        digest = ruleset.digest()
        del ruleset
        gc.collect()
    out["compile_s"] = times
    out["digest"] = digest
    out["peak_rss_mib"] = _rss_mib()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ruleset = Compiler(policies, inventory).compile(node)
    out["compile_peak_alloc_mib"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    out["endpoints_with_chains"] = len(ruleset.endpoints)
    out["address_sets"] = len(ruleset.address_sets)
    out["set_elements"] = sum(len(s.elements) for s in ruleset.address_sets)
    return out


def main() -> None:
    spec = Spec(**json.loads(sys.argv[1]))
    repeats = int(sys.argv[2])
    print(json.dumps(measure(spec, repeats, "--yaml" in sys.argv[3:])))


if __name__ == "__main__":
    main()
