"""CNI start gate: how long a pod's ADD takes in kubelet's order, gate included.

Builds the node lab of tests/cni_node.py (a node namespace, the agent on the
Kubernetes source against FakeAPIServer, nftables with fail-closed ``veth``),
then for each run makes a sandbox and runs the conflist ptp (+ host-local) →
callgate-cni as libcni does, Pod object created first without an address.
Measured: the chain's ADD (ptp + the gate), and ptp alone for the same
sandboxes (the conflist without the gate, on a second network), so the gate's
share shows. Then ``--concurrent`` ADDs at once. Every pod is selected by a
policy (its own chains). Prints p50/p99/max in ms.

    sudo .venv/bin/python bench/bench_cni_gate.py --runs 30 --concurrent 8
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cni_node import Node, Pod, build_plugin, plugins_missing, ptp_conflist
from tests.fake_apiserver import FakeAPIServer
from tests.libcni import ConfList

POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "web", "namespace": "bench"},
          "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}


def summary(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"{label:<34} n={len(ms):<4} p50 {statistics.median(ms):7.1f}  p99 {p99:7.1f}  max {ms[-1]:7.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--concurrent", type=int, default=8)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # pods without an address yet are logged as unprogrammed, by design
    if (why := plugins_missing()) is not None:
        sys.exit(why)
    with tempfile.TemporaryDirectory() as tmp, FakeAPIServer() as api:
        root = Path(tmp)
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        api.create(POLICY)
        node = Node(root / "node", build_plugin(root / "callgate-cni"), api)
        (root / "node").mkdir()
        try:
            node.start()
            gated = node.runtime(ptp_conflist("gated", "198.18.80.0/22", root / "ipam"))
            bare_list = ptp_conflist("bare", "198.18.84.0/22", root / "ipam")
            bare = node.runtime(ConfList(bare_list.name, bare_list.cni_version, bare_list.plugins[:1]))
            with_gate, without = [], []
            for i in range(args.runs):
                pod = Pod("bench", f"web-{i}", {"app": "web"})
                with_gate.append(node.kubelet_add(gated, pod))
                sandbox = node.new_sandbox(Pod("bench", f"bare-{i}", {}))
                started = time.monotonic()
                bare.add(sandbox)
                without.append(time.monotonic() - started)
            burst: list[float] = []
            pods = [Pod("bench", f"burst-{i}", {"app": "web"}) for i in range(args.concurrent)]
            threads = [threading.Thread(target=lambda p=p: burst.append(node.kubelet_add(gated, p))) for p in pods]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
        finally:
            node.stop()
    print(f"{platform.node()}: {platform.machine()}, kernel {platform.release()}, Python {platform.python_version()}")
    print(summary("ADD ptp alone", without))
    print(summary("ADD ptp -> callgate-cni (gated)", with_gate))
    print(summary(f"{args.concurrent} concurrent gated ADDs, each", burst))
    print(f"{args.concurrent} concurrent gated ADDs, wall clock {wall * 1000:.1f} ms; "
          f"transactions {node.reactor.mode_counts}")


if __name__ == "__main__":
    main()
