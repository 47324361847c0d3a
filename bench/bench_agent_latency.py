"""Agent latency: from a source event to the rule live in the kernel.

Runs one in-process agent (source -> reactor -> nftables) against a scratch
network namespace and, for three kinds of change, measures the time from the
event until the kernel's table carries the new digest (polled from a separate
libnftables handle):

* pod add       a pod on another node appears/disappears in a peer selector (set elements)
* label change  a remote pod's label flips it between two selectors, each of which
                is the peer of policies selecting local pods (set elements)
* policy change a policy selecting local pods appears/disappears (chains + maps)

Two sources:

* ``files``: the event is the new file renamed into place (inotify, watch step,
  debounce, reload);
* ``kubernetes``: the event is the object written to a FakeAPIServer (tests/fake_apiserver.py,
  a real HTTP list/watch server on 127.0.0.1) -> watch stream -> KubernetesSource
  (its debounce: --k8s-debounce-ms, the CLI's is 200) -> reactor.

Each kind toggles only its own part of the state, and before every change the
expected digest is checked to differ from the live one: only effective changes
are measured (a change that compiles to the same rules is a correct no-op and
would measure nothing). Prints p50/p99/max in milliseconds; the figures include
the deliberate coalescing (--coalesce-ms, and the source's own debounce).

    sudo .venv/bin/python bench/bench_agent_latency.py --runs 20 --source both
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.compiler import Compiler
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.nft.layout import layout_digest
from callgate.enforcers.routes import InterfaceResolver
from callgate.policy import load_inventory, load_policies
from callgate.policy.model import Endpoint
from callgate.watchers.base import SnapshotHandler
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


KINDS = ("pod add (remote, set element)", "label change (remote pod, selection changes)",
         "policy change (new chains)")
NEW_POD = ["- {name: new, namespace: ns1, labels: {app: app2}, node: node-2, ips: [198.19.200.1], "
           "ports: [{name: http, port: 80}]}"]


class State:
    """The cluster as the bench changes it: each kind toggles its own flag."""

    def __init__(self, args: argparse.Namespace, d: Path) -> None:
        self.args = args
        self.flags = {kind: False for kind in KINDS}
        (d / "expected").mkdir()
        self.inv, self.pol = d / "expected" / "inventory.yaml", d / "expected" / "policies.yaml"
        self.render()

    def inventory_text(self) -> str:
        return inventory_text(self.args.pods, self.args.local, NEW_POD if self.flags[KINDS[0]] else [],
                              self.flags[KINDS[1]])

    def policy_text(self) -> str:
        return policy_text(self.args.policies, self.flags[KINDS[2]])

    def render(self) -> None:
        self.inv.write_text(self.inventory_text())
        self.pol.write_text(self.policy_text())

    def digest(self) -> str:
        return expected_digest(self.inv, self.pol)


def expected_digest(inv: Path, pol: Path) -> str:
    # What the live table's digest set holds (the agent here runs without fail-closed).
    return layout_digest(Compiler(load_policies(pol), load_inventory(inv)).compile(NODE))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="changes per kind (default 20)")
    ap.add_argument("--pods", type=int, default=300)
    ap.add_argument("--local", type=int, default=40, help="pods on the measured node")
    ap.add_argument("--policies", type=int, default=30)
    ap.add_argument("--coalesce-ms", type=int, default=50)
    ap.add_argument("--source", choices=("files", "kubernetes", "both"), default="both")
    ap.add_argument("--k8s-debounce-ms", type=int, default=200,
                    help="KubernetesSource debounce (the CLI agent's default is 200)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"python {platform.python_version()}")
    print(f"cluster: {args.pods} pods ({args.local} on the agent's node), {args.policies} policies; "
          f"reactor coalesce {args.coalesce_ms} ms; {args.runs} changes per kind\n")
    for source in ("files", "kubernetes") if args.source == "both" else (args.source,):
        netns = f"cgw-bench-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            run(args, netns, source)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    return 0


# ---- the Kubernetes source: the same state as API objects ------------------------------

def pod_object(ep: Endpoint) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": ep.name, "namespace": ep.namespace, "labels": dict(ep.labels)}
    if ep.interface:
        meta["annotations"] = {"callgate.io/interface": ep.interface}
    ips = [str(i) for i in ep.ips]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": ep.node, "containers": [{"name": "main", "image": "x", "ports": [
                {"name": p.name, "containerPort": p.port, "protocol": p.protocol} for p in ep.ports]}]},
            "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]}}


class ApiState:
    """Mirrors :class:`State` into a FakeAPIServer, one object write per change."""

    def __init__(self, state: State, api: Any) -> None:
        import yaml

        self.state, self.api, self.yaml = state, api, yaml
        inv = load_inventory(state.inv)
        for name, ns in sorted(inv.namespaces.items()):
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(ns.labels)}})
        for ep in inv.endpoints:
            api.create(pod_object(ep))
        for doc in yaml.safe_load_all(state.policy_text()):
            api.create(doc)

    def change(self, kind: str) -> float:
        """Toggle ``kind`` in the state (files re-rendered for the expected digest)
        and make the one API write that stands for it; returns its start time."""
        st, api = self.state, self.api
        st.flags[kind] = not st.flags[kind]
        st.render()
        inv = load_inventory(st.inv)
        t0 = time.perf_counter()
        if kind == KINDS[0]:
            if st.flags[kind]:
                api.create(pod_object(next(ep for ep in inv.endpoints if ep.name == "new")))
            else:
                api.delete("Pod", "new", "ns1")
        elif kind == KINDS[1]:
            name = f"p{st.args.local}"
            api.update(pod_object(next(ep for ep in inv.endpoints if ep.name == name)))
        elif st.flags[kind]:
            extra = list(self.yaml.safe_load_all(st.policy_text()))[-1]
            api.create(extra)
        else:
            api.delete("NetworkPolicy", "bench-extra", "ns0")
        return t0


def run(args: argparse.Namespace, netns: str, source_kind: str) -> None:
    d = Path(tempfile.mkdtemp(prefix="cgw-bench-"))
    state = State(args, d)
    kernel, probe = LibNftables(netns), LibNftables(netns)
    enforcer = NftablesEnforcer(kernel)
    watcher = NftablesEnforcer(probe)
    reactor = Reactor(ReactorConfig(node=NODE, resync=3600, coalesce=args.coalesce_ms / 1000),
                      enforcer, InterfaceResolver(netns))
    api: Any = None
    api_state: ApiState | None = None
    source: Any
    if source_kind == "files":
        inv, pol = d / "inventory.yaml", d / "policies.yaml"
        inv.write_text(state.inventory_text())
        pol.write_text(state.policy_text())
        source = FilesSource([inv], [pol])
        detail = "files source: inotify (watchfiles step 30 ms, debounce 500 ms max) -> reload"
    else:
        from callgate.watchers.k8s_reflector import WatchOptions
        from callgate.watchers.kubernetes import KubernetesSource
        from tests.fake_apiserver import FakeAPIServer

        api = FakeAPIServer().start()
        api_state = ApiState(state, api)
        source = KubernetesSource.connect(server=api.url, debounce=args.k8s_debounce_ms / 1000, max_delay=2.0,
                                          options=WatchOptions(watch_timeout=600))
        detail = (f"kubernetes source: FakeAPIServer on 127.0.0.1 -> watch -> KubernetesSource "
                  f"(debounce {args.k8s_debounce_ms} ms)")
    handler: SnapshotHandler = reactor.on_event
    reactor.start()
    source.start(handler)

    def until_live(digest: str, t0: float) -> float:
        deadline = time.perf_counter() + 30
        while watcher.live_digest() != digest:
            if time.perf_counter() > deadline:
                raise SystemExit(f"digest {digest[:12]} never went live")
            time.sleep(0.001)
        return (time.perf_counter() - t0) * 1000

    try:
        until_live(state.digest(), time.perf_counter())
        before = reactor.mode_counts
        results: dict[str, list[float]] = {kind: [] for kind in KINDS}
        noops = 0
        for _ in range(args.runs):
            for kind in KINDS:
                previous = state.digest()
                if api_state is not None:
                    t0 = api_state.change(kind)
                else:
                    state.flags[kind] = not state.flags[kind]
                    state.render()
                    target, text = (pol, state.policy_text()) if kind == KINDS[2] else (inv, state.inventory_text())
                    t0 = write(target, text)
                digest = state.digest()
                if digest == previous:  # compiles to the same rules: a correct no-op, nothing to time
                    noops += 1
                    continue
                results[kind].append(until_live(digest, t0))
    finally:
        source.stop()
        reactor.stop()
        kernel.close()
        probe.close()
        if api is not None:
            api.stop()
    after = reactor.mode_counts
    inc = after["incremental"] - before["incremental"]
    full = after["full"] - before["full"]
    measured = sum(len(v) for v in results.values())
    print(f"### source: {source_kind}\n")
    print(f"{detail}; {measured} effective changes measured ({noops} no-op changes skipped); "
          f"transactions during the runs: {inc:.0f} incremental, {full:.0f} full\n")
    print("| change | n | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, values in results.items():
        values.sort()
        if not values:
            print(f"| {kind} | 0 | - | - | - |")
            continue
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        print(f"| {kind} | {len(values)} | {statistics.median(values):.1f} | {p99:.1f} | {values[-1]:.1f} |")
    print()


if __name__ == "__main__":
    sys.exit(main())
