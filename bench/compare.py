"""Before/after for the compiler optimisations: ``python -m bench.compare [REPEATS]``.

Compiles the same clusters with the frozen pre-optimisation compiler and with
the current one, alternately, in one process, and prints min/median/max of each
and whether the digests agree. The figures in docs/performance.md come from
this command. The frozen compiler lives in tests/reference: it is first the
oracle of tests/test_compile_equivalence.py, and this comparison borrows it.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench.synth import Spec, generate, to_model
from callgate.compiler.compile import Compiler
from tests.reference.compile import Compiler as Reference

CASES = {
    "50k pods / 2k ns / 10k policies (3k on one pod)": Spec(pods=50000, namespaces=2000, policies=10000, hot=3000,
                                                            v6_every=1),
    "Antrea: 102k pods / 25k ns / 75k policies": Spec(pods=102000, namespaces=25000, policies=75000, hot=3000),
}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for label, spec in CASES.items():
        cluster = generate(spec)
        inventory, policies = to_model(cluster)
        times: dict[str, list[float]] = {"before": [], "after": []}
        digests: dict[str, str] = {}
        for _ in range(repeats):
            for name, cls in (("before", Reference), ("after", Compiler)):
                start = time.perf_counter()
                ruleset = cls(policies, inventory).compile(cluster.node)
                times[name].append(time.perf_counter() - start)
                digests[name] = ruleset.digest()
        row = ", ".join(f"{k} {min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f} s" for k, v in times.items())
        print(f"{label}: {row}; speed-up (medians) "
              f"{statistics.median(times['before']) / statistics.median(times['after']):.1f}x; "
              f"same digest: {digests['before'] == digests['after']}", flush=True)


if __name__ == "__main__":
    main()
