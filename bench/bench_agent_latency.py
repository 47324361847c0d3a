"""Agent latency: from a source event to the rule live in the kernel.

Runs one in-process agent (source -> reactor -> nftables) against a scratch
network namespace and, for four kinds of change, measures the time from the
event until the kernel's table carries the new digest (polled from a separate
libnftables handle):

* pod add       a pod on another node appears/disappears in a peer selector (set elements)
* label change  a remote pod's label flips it between two selectors, each of which
                is the peer of policies selecting local pods (set elements)
* policy change a policy selecting local pods appears/disappears (chains + maps)
* pod start     a replica of local pods that policies select starts/stops on this node
                (its own chains, dispatch elements and source chain)

Two sources:

* ``files``: the event is the new file renamed into place (inotify, watch step,
  reload);
* ``kubernetes``: the event is the object written to a FakeAPIServer (tests/fake_apiserver.py,
  a real HTTP list/watch server on 127.0.0.1) -> watch stream -> KubernetesSource -> reactor.

Both the source and the reactor coalesce adaptively (callgate/watchers/coalesce.py:
a change after a quiet spell goes at once, a burst waits longer and longer), so
each measured change follows a quiet spell (``--gap-ms``, longer than the
wait after one sync) as a lone change in a running cluster would.

Each kind toggles only its own part of the state, and before every change the
expected digest is checked to differ from the live one: only effective changes
are measured (a change that compiles to the same rules is a correct no-op and
would measure nothing). Then a burst: ``--burst`` pods added one after another
(one file rename, or one API create, each) as fast as the source takes them;
the figure is how many transactions the agent made for it and when the last
pod was live. Prints p50/p99/max in milliseconds (``--json``: one JSON object).

    sudo .venv/bin/python bench/bench_agent_latency.py --runs 20 --source both
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
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
         "policy change (new chains)", "pod start (local, policies select it: its own chains)")
NEW_POD = ["- {name: new, namespace: ns1, labels: {app: app2}, node: node-2, ips: [198.19.200.1], "
           "ports: [{name: http, port: 80}]}"]
# A replica of local pods that policies select (app1 in ns1), with a veth name of its own.
NEW_LOCAL_POD = ["- {name: newlocal, namespace: ns1, labels: {app: app1}, node: node-1, interface: cgbnew, "
                 "ips: [198.19.201.1], ports: [{name: http, port: 80}]}"]


class State:
    """The cluster as the bench changes it: each kind toggles its own flag."""

    def __init__(self, args: argparse.Namespace, d: Path) -> None:
        self.args = args
        self.flags = {kind: False for kind in KINDS}
        self.extra: list[str] = []  # the burst's pods, once it has run
        (d / "expected").mkdir()
        self.inv, self.pol = d / "expected" / "inventory.yaml", d / "expected" / "policies.yaml"
        self.render()

    def inventory_text(self, extra: list[str] | None = None) -> str:
        return inventory_text(self.args.pods, self.args.local,
                              (NEW_POD if self.flags[KINDS[0]] else []) + (NEW_LOCAL_POD if self.flags[KINDS[3]] else [])
                              + (self.extra if extra is None else extra), self.flags[KINDS[1]])

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
    ap.add_argument("--coalesce-ms", type=int, default=20, help="first wait inside a burst (the CLI default is 20)")
    ap.add_argument("--gap-ms", type=int, default=500,
                    help="quiet spell before each measured change (longer than the wait after one sync)")
    ap.add_argument("--burst", type=int, default=1000, help="pods added back to back in the burst (0: none)")
    ap.add_argument("--source", choices=("files", "kubernetes", "both"), default="both")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    out: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
                   f"python {platform.python_version()}",
        "cluster": {"pods": args.pods, "local": args.local, "policies": args.policies},
        "coalesce_ms": args.coalesce_ms, "gap_ms": args.gap_ms, "runs": args.runs, "sources": {}}
    for source in ("files", "kubernetes") if args.source == "both" else (args.source,):
        netns = f"cgw-bench-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            out["sources"][source] = run(args, netns, source)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    if args.json:
        print(json.dumps(out))
    else:
        print_tables(out)
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_tables(out: dict[str, Any]) -> None:
    c = out["cluster"]
    print(f"machine: {out['machine']}")
    print(f"cluster: {c['pods']} pods ({c['local']} on the agent's node), {c['policies']} policies; "
          f"coalesce {out['coalesce_ms']} ms; {out['runs']} changes per kind, each after {out['gap_ms']} ms quiet\n")
    for source, res in out["sources"].items():
        print(f"### source: {source}\n")
        print(f"{res['detail']}; {res['measured']} effective changes measured ({res['noops']} no-op changes skipped); "
              f"transactions during the runs: {res['incremental']} incremental, {res['full']} full\n")
        print("| change | n | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|")
        for kind, values in res["latency_ms"].items():
            if not values:
                print(f"| {kind} | 0 | - | - | - |")
                continue
            print(f"| {kind} | {len(values)} | {statistics.median(values):.1f} | {percentile(values, 0.99):.1f} "
                  f"| {max(values):.1f} |")
        burst = res.get("burst")
        if burst:
            print(f"\nburst: {burst['events']} pods added in {burst['seconds']:.2f} s -> {burst['transactions']} "
                  f"transactions; the last pod live {burst['last_live_ms']:.0f} ms after its event")
        print()


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

    def prepare(self, kind: str) -> Callable[[], None]:
        """The one API write that stands for toggling ``kind`` (the state is already
        toggled and rendered): built here, so that only the write is timed."""
        st, api = self.state, self.api
        inv = load_inventory(st.inv)
        if kind == KINDS[0]:
            if st.flags[kind]:
                new = pod_object(next(ep for ep in inv.endpoints if ep.name == "new"))
                return lambda: api.create(new)
            return lambda: api.delete("Pod", "new", "ns1")
        if kind == KINDS[3]:
            if st.flags[kind]:
                started = pod_object(next(ep for ep in inv.endpoints if ep.name == "newlocal"))
                return lambda: api.create(started)
            return lambda: api.delete("Pod", "newlocal", "ns1")
        if kind == KINDS[1]:
            name = f"p{st.args.local}"
            changed = pod_object(next(ep for ep in inv.endpoints if ep.name == name))
            return lambda: api.update(changed)
        if st.flags[kind]:
            extra = list(self.yaml.safe_load_all(st.policy_text()))[-1]
            return lambda: api.create(extra)
        return lambda: api.delete("NetworkPolicy", "bench-extra", "ns0")


def burst_pod(i: int) -> str:
    return (f"- {{name: burst-{i}, namespace: ns1, labels: {{app: app2}}, node: node-2, "
            f"ips: [198.19.{100 + i // 250}.{i % 250 + 1}], ports: [{{name: http, port: 80}}]}}")


def run(args: argparse.Namespace, netns: str, source_kind: str) -> dict[str, Any]:
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
    inv, pol = d / "inventory.yaml", d / "policies.yaml"
    if source_kind == "files":
        inv.write_text(state.inventory_text())
        pol.write_text(state.policy_text())
        source = FilesSource([inv], [pol])
        detail = (f"files source: inotify (watchfiles step {source.step_ms} ms) -> reload -> reactor "
                  f"(coalesce {args.coalesce_ms} ms)")
    else:
        from callgate.watchers.k8s_reflector import WatchOptions
        from callgate.watchers.kubernetes import KubernetesSource
        from tests.fake_apiserver import FakeAPIServer

        api = FakeAPIServer().start()
        api_state = ApiState(state, api)
        source = KubernetesSource.connect(server=api.url, coalesce=args.coalesce_ms / 1000,
                                          options=WatchOptions(watch_timeout=600))
        detail = (f"kubernetes source: FakeAPIServer on 127.0.0.1 -> watch -> KubernetesSource "
                  f"(coalesce {args.coalesce_ms} ms) -> reactor")
    handler: SnapshotHandler = reactor.on_event
    reactor.start()
    source.start(handler)

    def until_live(digest: str, t0: float) -> float:
        deadline = time.perf_counter() + 60
        while watcher.live_digest() != digest:
            if time.perf_counter() > deadline:
                raise SystemExit(f"digest {digest[:12]} never went live")
            time.sleep(0.0005)
        return (time.perf_counter() - t0) * 1000

    results: dict[str, list[float]] = {kind: [] for kind in KINDS}
    noops = 0
    burst: dict[str, Any] = {}
    try:
        until_live(state.digest(), time.perf_counter())
        before = reactor.mode_counts
        for _ in range(args.runs):
            for kind in KINDS:
                previous = state.digest()
                # Everything the bench computes happens before the clock starts: it
                # runs in the agent's process, and work of its own inside the timed
                # span would hold the GIL the agent needs (the policy change's YAML
                # load and the expected digest took ~20 ms of it).
                state.flags[kind] = not state.flags[kind]
                state.render()
                digest = state.digest()
                if digest == previous:  # compiles to the same rules: a correct no-op, nothing to time
                    noops += 1
                    continue
                act = api_state.prepare(kind) if api_state is not None else None
                target, text = (pol, state.policy_text()) if kind == KINDS[2] else (inv, state.inventory_text())
                time.sleep(args.gap_ms / 1000)  # a lone change: after a quiet spell
                if act is not None:
                    t0 = time.perf_counter()
                    act()
                else:
                    t0 = write(target, text)
                results[kind].append(until_live(digest, t0))
        after = reactor.mode_counts
        if args.burst:
            time.sleep(2.5)  # longer than the longest wait: the burst starts after a quiet spell
            burst = run_burst(args.burst, state, api, inv, reactor, until_live)
    finally:
        source.stop()
        reactor.stop()
        kernel.close()
        probe.close()
        if api is not None:
            api.stop()
    return {"detail": detail, "latency_ms": results, "noops": noops,
            "measured": sum(len(v) for v in results.values()),
            "incremental": after["incremental"] - before["incremental"], "full": after["full"] - before["full"],
            "burst": burst}


def run_burst(count: int, state: State, api: Any, inv: Path, reactor: Reactor, until_live: Any) -> dict[str, Any]:
    """``count`` pods added one after another as fast as the source takes them
    (an API create or a file rename each): how many transactions, and when the
    last one is live."""
    lines = [burst_pod(i) for i in range(count)]
    state.extra = lines
    state.render()
    final = state.digest()
    texts = []
    if api is None:  # the files to rename into place, rendered before the clock starts
        texts = [state.inventory_text(lines[:i + 1]) for i in range(count)]
    else:
        from callgate.policy.inventory import inventory_from_dict

        inventory = inventory_from_dict(yaml_inventory(state.inventory_text(lines)))
        by_key = {ep.key: ep for ep in inventory.endpoints}
        pods = [pod_object(by_key[f"ns1/burst-{i}"]) for i in range(count)]
    before = reactor.transactions.total()
    start = time.perf_counter()
    for k in range(count):
        if api is None:
            last = write(inv, texts[k])
        else:
            last = time.perf_counter()
            api.create(pods[k])
    seconds = time.perf_counter() - start
    last_live_ms = until_live(final, last)
    time.sleep(2.5)  # anything still coming (there should be nothing)
    return {"events": count, "seconds": seconds, "transactions": reactor.transactions.total() - before,
            "last_live_ms": last_live_ms}


def yaml_inventory(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text)  # type: ignore[no-any-return]


if __name__ == "__main__":
    sys.exit(main())
