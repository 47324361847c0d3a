"""The benchmark command runs end to end at tiny sizes (``python -m bench --quick``).

No timing is asserted: benchmarks measure, tests check. This only proves that
the suite, its generator, its lab (when the machine allows: root, network
namespaces, nftables, gcc) and its report writer work, so the full run does
not fail after half an hour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.__main__ import datapath_possible

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_a_report(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)]
    if datapath_possible() is not None:
        argv += ["--skip", "datapath"]
    tag = f"smoke{os.getpid()}"  # the lab's namespaces are cgb-bench-<tag>-*: ours only
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CGB_LAB_TAG": tag}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Targets" in report and "Quick mode" in report
    results = json.loads((tmp_path / "results.json").read_text())
    for part in ("target", "tiers", "pods_curve", "policies_curve", "load", "antrea", "analysis"):
        assert part in results, part
    assert results["target"]["compile_s"] and results["target"]["digest"]
    assert results["tiers"]["digest"] != results["target"]["digest"], "the cluster policies compiled into the node"
    assert "ClusterNetworkPolicies" in report
    assert (tmp_path / "plots" / "compile_pods.svg").exists()
    if datapath_possible() is None:
        lab = results["lab"]
        assert set(lab["datapath"]) == {"none", "conntrack", "empty", "callgate", "walk", "linear", "callgate-tiers"}
        assert all(lab["incremental"]["incremental"]), "pod churn should reach the kernel as an incremental update"
        assert lab["local_pod"]["kind"][:2] == ["pod started", "pod stopped"]
        assert lab["local_pod"]["equals_full_compile"]
        for label in ("ordinary", "hot"):
            change = lab["policy_change"][label]
            assert change["kind"][:2] == ["policy added", "policy removed"] and change["equals_full_compile"]
            assert not any(p.startswith("full") for p in change["compile_path"]), change["compile_path"]
        from bench.nf_profile import possible as profile_possible

        if profile_possible() is None:  # the CPU profile: samples taken, netfilter found in them
            for load in ("crr", "udp"):
                tables = lab["profile"][load]
                assert set(tables) == {"conntrack", "callgate", "callgate-forward-guard", "callgate-no-guard"}
                assert all(s["samples"][0] > 0 and 0 < s["netfilter"][0] < 1 for s in tables.values())
            assert "Where the datapath's CPU goes" in report
        assert (tmp_path / "plots" / "datapath.svg").exists()
        # The user's whole path, the agent's latency and the cold start ran too.
        assert all(r["rc"] in (0, 1) for r in results["whole"]["target"].values() if isinstance(r, dict) and "rc" in r)
        assert results["whole"]["target"]["apply yaml"]["rc"] == 0
        assert set(results["agent"]["sources"]) == {"files", "kubernetes"}
        assert results["cold"]["adopted_without_transaction"]
        # The deny-log storm: denied packets were counted and some were logged.
        assert results["flowlog"]["denied_pps"] > 0 and results["flowlog"]["samples"][0]["records"] > 0
        assert "Flow logs under a storm of denied packets" in report
    from bench.docker_latency import possible as docker_possible

    docker = results["docker"]
    if docker_possible() is None:
        assert docker["available"] and len(docker["call_to_enforced_ms"]) == 3, docker
        assert "## 6. Docker hosts" in report
    else:
        assert docker == {"available": False, "why": docker_possible()}
    # The lab cleans up after itself.
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"cgb-bench-{tag}-" not in names and f"cgb-docker-{tag}" not in names


def test_generator_is_deterministic() -> None:
    from bench.synth import Spec, generate

    spec = Spec(pods=300, namespaces=12, policies=40, hot=8)
    a, b = generate(spec), generate(spec)
    assert a.inventory == b.inventory and a.policies == b.policies
    assert a.server != a.client
