"""Agent latency: from a source event (a file written) to the rule live in the kernel.

Runs one in-process agent (files source -> reactor -> nftables) against a
scratch network namespace and, for three kinds of change, measures the time
from the moment the new file is renamed into place until the kernel's table
carries the new digest (polled from a separate libnftables handle):

* pod add      a pod on another node joins a peer selector (set elements only)
* label change a remote pod's label flips in and out of a selector (elements)
* policy change a policy selecting local pods appears/disappears (chains + maps)

Prints a markdown table of p50/p99/max in milliseconds. The figures include the
agent's deliberate coalescing (watch step + quiet period; see --coalesce-ms).

    sudo .venv/bin/python bench/bench_agent_latency.py --runs 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callgate.agent.interfaces import InterfaceResolver
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.compiler import Compiler
from callgate.enforcers.kernel import LibNftables
from callgate.enforcers.nft import NftablesEnforcer
from callgate.policy import load_inventory, load_policies
from callgate.watchers.files import FilesSource

NODE = "node-1"


def inventory_text(pods: int, local: int, extra: list[str], relabel: bool) -> str:
    lines = ["apiVersion: callgate/v1", "kind: Inventory", "namespaces:"]
    lines += [f"  ns{n}: {{labels: {{team: t{n}}}}}" for n in range(5)]
    lines.append("endpoints:")
    for i in range(pods):
        app = f"app{i % 10}"
        if relabel and i == local:  # the first remote pod flips between two apps
            app = "app9" if i % 10 != 9 else "app8"
        node = NODE if i < local else "node-2"
        iface = f", interface: cgb{i}" if node == NODE else ""
        a, b = divmod(i, 250)
        lines.append(f"- {{name: p{i}, namespace: ns{i % 5}, labels: {{app: {app}}}, node: {node}{iface}, "
                     f"ips: [198.18.{10 + a}.{b + 1}], ports: [{{name: http, port: 80}}]}}")
    lines += extra
    return "\n".join(lines) + "\n"


def policy_text(n: int, extra: bool) -> str:
    docs = []
    for k in range(n):
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-{k}, namespace: ns{k % 5}}}
spec:
  podSelector: {{matchLabels: {{app: app{k % 10}}}}}
  ingress:
  - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: app{(k + 1) % 10}}}}}}}]
    ports: [{{port: 80}}]
""")
    if extra:
        docs.append("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-extra, namespace: ns0}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 198.19.0.0/16}}]
    ports: [{port: 443}]
""")
    return "---\n".join(docs)


def write(path: Path, text: str) -> float:
    tmp = path.with_suffix(".tmp~")
    tmp.write_text(text)
    t0 = time.perf_counter()
    tmp.replace(path)
    return t0


def expected_digest(inv: Path, pol: Path) -> str:
    return Compiler(load_policies(pol), load_inventory(inv)).compile(NODE).digest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="changes per kind (default 20)")
    ap.add_argument("--pods", type=int, default=300)
    ap.add_argument("--local", type=int, default=40, help="pods on the measured node")
    ap.add_argument("--policies", type=int, default=30)
    ap.add_argument("--coalesce-ms", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    netns = f"cgg-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        return run(args, netns)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def run(args: argparse.Namespace, netns: str) -> int:
    d = Path(tempfile.mkdtemp(prefix="cgg-bench-"))
    inv, pol = d / "inventory.yaml", d / "policies.yaml"
    inv.write_text(inventory_text(args.pods, args.local, [], False))
    pol.write_text(policy_text(args.policies, False))
    kernel, probe = LibNftables(netns), LibNftables(netns)
    enforcer = NftablesEnforcer(kernel)
    watcher = NftablesEnforcer(probe)
    reactor = Reactor(ReactorConfig(node=NODE, resync=3600, coalesce=args.coalesce_ms / 1000),
                      enforcer, InterfaceResolver(netns))
    source = FilesSource([inv], [pol])
    reactor.start()
    source.start(reactor.on_event)

    def until_live(digest: str, t0: float) -> float:
        deadline = time.perf_counter() + 30
        while watcher.live_digest() != digest:
            if time.perf_counter() > deadline:
                raise SystemExit(f"digest {digest[:12]} never went live")
            time.sleep(0.001)
        return (time.perf_counter() - t0) * 1000

    until_live(expected_digest(inv, pol), time.perf_counter())
    results: dict[str, list[float]] = {"pod add (remote, set element)": [], "label change (remote pod)": [],
                                       "policy change (new chains)": []}
    new_pod = ["- {name: new, namespace: ns1, labels: {app: app2}, node: node-2, ips: [198.19.200.1], "
               "ports: [{name: http, port: 80}]}"]
    for i in range(args.runs):
        for kind in results:
            on = i % 2 == 0
            if kind.startswith("pod"):
                t0 = write(inv, inventory_text(args.pods, args.local, new_pod if on else [], False))
            elif kind.startswith("label"):
                t0 = write(inv, inventory_text(args.pods, args.local, [], on))
            else:
                t0 = write(pol, policy_text(args.policies, on))
            results[kind].append(until_live(expected_digest(inv, pol), t0))
    source.stop()
    reactor.stop()
    kernel.close()
    probe.close()
    counts = reactor.metrics.applies
    inc = counts.labels("incremental")._value.get()
    full = counts.labels("full")._value.get()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"python {platform.python_version()}")
    print(f"cluster: {args.pods} pods ({args.local} on the agent's node), {args.policies} policies; "
          f"coalesce {args.coalesce_ms} ms, file watch step 30 ms; {args.runs} runs per kind; "
          f"transactions: {inc:.0f} incremental, {full:.0f} full\n")
    print("| change | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for kind, values in results.items():
        values.sort()
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        print(f"| {kind} | {statistics.median(values):.1f} | {p99:.1f} | {values[-1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
