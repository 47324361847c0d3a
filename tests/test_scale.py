"""10,000 pods, 1,000 policies: matrix, graph, heatmap and diff in seconds and under 1 GiB.

Two shapes (bench/synth.py): 400 namespaces whose pods all carry their own label, so every
pod is an equivalence class of its own (10,000 classes: the worst case, where a
classes × classes matrix of int64 is 800 MB per port); and 20 namespaces of 500 pods. Each
command runs as a real process under an address-space limit of 1 GiB, so a quadratic array
fails the test instead of swapping the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.synth import Spec, generate

LIMIT = 1 << 30
CALLGATE = str(Path(sys.executable).with_name("callgate"))
SHAPES = {
    "10k-classes": Spec(pods=10000, namespaces=400, policies=1000, hot=100, pod_name_labels=True),
    "20-namespaces": Spec(pods=10000, namespaces=20, policies=1000, hot=100),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    spec = SHAPES[request.param]
    c = generate(spec)
    where = tmp_path_factory.mktemp(request.param)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    (where / "inventory.json").write_text(json.dumps(c.inventory))
    (where / "old.yaml").write_text(yaml.dump_all(c.policies, Dumper=dumper))
    # The change diff is asked about: 1% of the policies removed (default-denies among them).
    (where / "new.yaml").write_text(yaml.dump_all([p for i, p in enumerate(c.policies) if i % 100 != 7],
                                                  Dumper=dumper))
    return {"inventory": str(where / "inventory.json"), "old": str(where / "old.yaml"),
            "new": str(where / "new.yaml"), "out": str(where / "heatmap.svg")}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run(*args: str) -> tuple[int, str, str, float]:
    start = time.monotonic()
    done = subprocess.run([CALLGATE, *args], capture_output=True, text=True, preexec_fn=_limited, timeout=300,
                          env={**os.environ, "CI": "1"})
    return done.returncode, done.stdout, done.stderr, time.monotonic() - start


@pytest.mark.parametrize("command", ["matrix", "graph", "heatmap", "diff"])
def test_ten_thousand_pods_in_seconds_and_bounded_memory(cluster: dict[str, str], command: str) -> None:
    i = ["-i", cluster["inventory"]]
    if command == "matrix":
        code, out, err, took = run("matrix", *i, "-p", cluster["old"])
        assert code == 0, err
        # Bounded output too: at most 40 groups (+ a header, a legend) per declared port.
        assert len(out.splitlines()) <= 6 * 44 + 2
    elif command == "graph":
        code, out, err, took = run("graph", *i, "-p", cluster["old"], "--format", "dot")
        assert code == 0 and out.startswith("digraph"), err
    elif command == "heatmap":
        code, out, err, took = run("graph", *i, "-p", cluster["old"], "--kind", "heatmap", "-o", cluster["out"])
        assert code == 0, err
    else:
        code, out, err, took = run("diff", *i, cluster["old"], cluster["new"])
        assert code == 1, err  # access changed
        assert len(out.splitlines()) < 500, "changes alike are collapsed into lines a reviewer can read"
    # Seconds, not minutes: the benchmark measures it on an idle machine; this bound only
    # catches a regression to the quadratic paths on a shared test machine.
    assert took < 90, f"{command} took {took:.0f} s"
