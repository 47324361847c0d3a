"""The agent end to end with the Kubernetes source: FakeAPIServer -> KubernetesSource
-> Reactor -> nftables in a lab node namespace, proven with real TCP probes.

One in-process agent per node (as a DaemonSet would run), each with its own
KubernetesSource watching the fake API server. Changes are made through the
server — a policy created, a pod relabelled, a pod created (its veth exists in
the lab from the start; until its Pod object arrives fail-closed drops it), a
policy deleted, a namespace relabelled — and after each the kernel must follow:
probes of the pairs concerned are compared with hand-stated expectations AND
with the Evaluator on the snapshot the agent applied. Then the API server goes
away (rules and probes must not change, /readyz must say why) and comes back
(a change made meanwhile must arrive); the table is deleted under the agent
(repaired). Last, the CLI agent with ``--backend iptables`` takes over a node.

Lab "cgw", addresses in 198.18.0.0/15, the fake API server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from callgate.agent.metrics import AgentMetrics, StatusServer
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.routes import InterfaceResolver
from callgate.policy.evaluator import Evaluator
from callgate.policy.inventory import inventory_from_dict
from callgate.watchers.base import Snapshot
from callgate.watchers.k8s_reflector import WatchOptions
from callgate.watchers.kubernetes import KubernetesSource
from tests.fake_apiserver import FakeAPIServer
from tests.netns import nft

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

LAB = "cgw"
PREFIX = "cg"
NODES = ("node-1", "node-2")
FAST = WatchOptions(watch_timeout=30, connect_timeout=1, backoff_initial=0.05, backoff_max=0.3)
WAIT = 20.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every pod the lab builds (x/d too: its Pod object is created later).
PODS: dict[str, dict[str, Any]] = {
    "x/a": {"node": "node-1", "iface": "cgxa0", "ip": "198.18.1.10", "labels": {"pod": "a"}},
    "x/b": {"node": "node-2", "iface": "cgxb0", "ip": "198.18.1.11", "labels": {"pod": "b"}},
    "y/c": {"node": "node-1", "iface": "cgyc0", "ip": "198.18.2.10", "labels": {"pod": "c"}},
    "x/d": {"node": "node-2", "iface": "cgxd0", "ip": "198.18.1.13", "labels": {"pod": "b"}},
}
LAB_INVENTORY = inventory_from_dict({
    "apiVersion": "callgate/v1", "kind": "Inventory",
    "namespaces": {"x": {"labels": {}}, "y": {"labels": {}}},
    "endpoints": [{"name": k.split("/")[1], "namespace": k.split("/")[0], "labels": p["labels"], "node": p["node"],
                   "interface": p["iface"], "ips": [p["ip"]], "ports": [{"port": 80}]} for k, p in PODS.items()],
})
IP_OF = {k: p["ip"] for k, p in PODS.items()}


# ---- API objects ------------------------------------------------------------------------

def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name, **labels}}}


def pod(key: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    ns, name = key.split("/")
    p = PODS[key]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or p["labels"],
                         "annotations": {"callgate.io/interface": p["iface"]}},
            "spec": {"nodeName": p["node"], "containers": [
                {"name": "main", "image": "x", "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": p["ip"], "podIPs": [{"ip": p["ip"]}]}}


def policy(name: str, ns: str, selected: str, peer: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"pod": selected}},
                     "ingress": [{"from": [peer], "ports": [{"port": 80}]}]}}


A_FROM_B = policy("a-from-b", "x", "a", {"podSelector": {"matchLabels": {"pod": "b"}}})
C_FROM_BLUE = policy("c-from-blue", "y", "c", {"namespaceSelector": {"matchLabels": {"team": "blue"}}})
# Selects pod=b in x: x/d (x/b is relabelled pod=b2 where this is used).
D_FROM_A = policy("d-from-a", "x", "b", {"podSelector": {"matchLabels": {"pod": "a"}}})
BROKEN = policy("broken", "x", "a", {"podSelector": {"matchLabels": {"pod": ["not", "a", "string"]}}})


# ---- the world ------------------------------------------------------------------------

@dataclass
class Agent:
    node: str
    netns: str
    reactor: Reactor
    enforcer: NftablesEnforcer
    source: KubernetesSource
    kernel: LibNftables
    http: StatusServer

    def stop(self) -> None:
        self.source.stop()
        self.reactor.stop()
        self.http.stop()
        self.kernel.close()


@dataclass
class World:
    lab: Any
    api: FakeAPIServer
    agents: dict[str, Agent]


def wait(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition, not synchronising by sleeping


def start_agent(lab: Any, api: FakeAPIServer, node: str) -> Agent:
    ns = lab.node_netns(node)
    kernel = LibNftables(ns)
    enforcer = NftablesEnforcer(kernel, fail_closed_prefix=PREFIX)
    metrics = AgentMetrics()
    metrics.watch_enforcer(enforcer)
    reactor = Reactor(ReactorConfig(node=node, resync=0.3, coalesce=0.02, retry=0.2), enforcer,
                      InterfaceResolver(ns, prefix=PREFIX), metrics)
    http = StatusServer("127.0.0.1:0", metrics, reactor)
    source = KubernetesSource.connect(server=api.url, options=FAST, coalesce=0.02, max_delay=0.5)
    agent = Agent(node, ns, reactor, enforcer, source, kernel, http)
    http.start()
    reactor.start()
    source.start(reactor.on_event)
    return agent


def seed(api: FakeAPIServer) -> None:
    api.create(namespace("x"))
    api.create(namespace("y"))
    for key in ("x/a", "x/b", "y/c"):
        api.create(pod(key))
    api.create(A_FROM_B)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    from callgate.lab import Lab

    lab = Lab(LAB)
    lab.down()  # leftovers of an interrupted run
    api = FakeAPIServer().start()
    agents: dict[str, Agent] = {}
    try:
        seed(api)
        with lab.running(LAB_INVENTORY):
            try:
                for node in NODES:
                    agents[node] = start_agent(lab, api, node)
                w = World(lab, api, agents)
                settle(w, lambda s: True)
                yield w
            finally:
                for agent in agents.values():
                    agent.stop()
    finally:
        api.stop()


def settle(world: World, predicate: Callable[[Snapshot], bool], agents: tuple[str, ...] = NODES) -> None:
    """Wait until every agent applied a snapshot satisfying ``predicate`` and its
    kernel holds exactly what it applied."""
    for node in agents:
        agent = world.agents[node]

        def done(a: Agent = agent) -> bool:
            applied = a.reactor.last_sync
            return (applied is not None and predicate(applied.snapshot) and a.reactor.apply_error is None
                    and a.enforcer.in_sync(applied.ruleset, applied.known))
        wait(done, f"{node} to apply the change")


def labels(snap: Snapshot, key: str) -> dict[str, str] | None:
    ep = next((e for e in snap.inventory.endpoints if e.key == key), None)
    return dict(ep.labels) if ep else None


def policies(snap: Snapshot) -> set[str]:
    return {p.key for p in snap.policies.policies}


def observe(world: World, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    from callgate.lab import probe_matrix

    # Two retries of silent probes: a loaded host must not turn "allowed" into "blocked".
    found = probe_matrix(world.lab, LAB_INVENTORY, pairs, families=(4,), ports=[(80, "TCP")], timeout=0.5,
                         retries=2)
    assert {(k[0], k[1]) for k in found} == set(pairs), "every pair was probed"
    return {(k[0], k[1]): ok for k, ok in found.items()}


def check(world: World, expected: dict[tuple[str, str], bool]) -> None:
    """Probe the pairs; the kernel must agree with the hand-stated expectation and
    with the Evaluator on the snapshot the agents applied (for pods it knows)."""
    observed = observe(world, list(expected))
    assert observed == expected, {p: (observed[p], e) for p, e in expected.items() if observed[p] != e}
    applied = world.agents["node-1"].reactor.last_sync
    assert applied is not None
    snap = applied.snapshot
    ev = Evaluator(snap.policies, snap.inventory)
    known = {e.key for e in snap.inventory.endpoints}
    for (src, dst), ok in observed.items():
        if src in known and dst in known:
            assert ev.allowed(IP_OF[src], IP_OF[dst], 80, "TCP") == ok, f"{src} -> {dst}: evaluator disagrees"


def http_get(agent: Agent, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{agent.http.address}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# ---- the tests ------------------------------------------------------------------------

def test_changes_through_the_api_reach_the_kernel(world: World) -> None:
    api = world.api
    # 0. As seeded: only b may call a; c is not isolated; d's veth exists but its
    #    pod is unknown: fail-closed drops it.
    check(world, {("x/b", "x/a"): True, ("y/c", "x/a"): False, ("x/a", "y/c"): True,
                  ("x/a", "x/d"): False, ("x/d", "x/a"): False})

    # 1. Create a policy isolating c (from namespaces labelled team=blue: none yet),
    #    and an invalid one: skipped, reported, the rest applies.
    api.create(C_FROM_BLUE)
    api.create(BROKEN)
    settle(world, lambda s: "y/c-from-blue" in policies(s) and len(s.problems) >= 1)
    for agent in world.agents.values():
        assert agent.reactor.metrics.value("callgate_source_problems") == 1
        code, text = http_get(agent, "/metrics")
        assert code == 200 and "\ncallgate_source_problems 1.0\n" in text
        assert agent.reactor.ready()[0]
    check(world, {("x/a", "y/c"): False, ("x/b", "y/c"): False, ("x/b", "x/a"): True})

    # 2. Relabel pod b: it no longer matches a's "from pod=b".
    api.update(pod("x/b", {"pod": "b2"}))
    settle(world, lambda s: labels(s, "x/b") == {"pod": "b2"})
    check(world, {("x/b", "x/a"): False, ("y/c", "x/a"): False})

    # 3. Create pod d (labelled pod=b) on node-2: its veth is programmed (no longer
    #    dropped), and it is a's allowed peer.
    api.create(pod("x/d"))
    settle(world, lambda s: labels(s, "x/d") is not None)
    assert world.agents["node-2"].reactor.programmed.snapshot()["x/d"] == "cgxd0"
    check(world, {("x/d", "x/a"): True, ("x/a", "x/d"): True, ("x/d", "y/c"): False, ("x/b", "x/a"): False})

    # 4. Delete a's policy (and the broken one): a is open again.
    api.delete("NetworkPolicy", "a-from-b", "x")
    api.delete("NetworkPolicy", "broken", "x")
    settle(world, lambda s: "x/a-from-b" not in policies(s) and not s.problems)
    assert world.agents["node-1"].reactor.metrics.value("callgate_source_problems") == 0
    check(world, {("x/b", "x/a"): True, ("y/c", "x/a"): True, ("x/a", "y/c"): False})

    # 5. Relabel namespace x team=blue: its pods may now call c.
    api.update(namespace("x", team="blue"))
    settle(world, lambda s: s.inventory.namespaces["x"].labels.get("team") == "blue")
    check(world, {("x/a", "y/c"): True, ("x/b", "y/c"): True, ("x/d", "y/c"): True, ("y/c", "x/a"): True})


def test_api_outage_keeps_enforcement_and_a_change_made_meanwhile_arrives(world: World) -> None:
    api = world.api
    api.apply(namespace("x", team="blue"))
    settle(world, lambda s: s.inventory.namespaces["x"].labels.get("team") == "blue"
           and "y/c-from-blue" in policies(s))
    pairs = {("x/a", "y/c"): True, ("x/b", "y/c"): True}
    check(world, pairs)
    digests = {n: a.enforcer.live_digest() for n, a in world.agents.items()}
    api.stop()
    try:
        for agent in world.agents.values():
            wait(lambda a=agent: a.reactor.source_problem is not None, f"{agent.node} to notice the outage")
            code, text = http_get(agent, "/readyz")
            assert code == 503 and "source problem" in text and "unavailable" in text, text
            assert http_get(agent, "/healthz")[0] == 200
            assert agent.reactor.metrics.value("callgate_source_up") == 0
        # Meanwhile (while nobody can watch) namespace x loses team=blue.
        api.update(namespace("x"))
        # Enforcement continues: same rules, same verdicts, resync still running.
        syncs = {n: a.reactor.syncs for n, a in world.agents.items()}
        for node, agent in world.agents.items():
            wait(lambda a=agent, s=syncs[node]: a.reactor.syncs >= s + 2, "resyncs during the outage")
        assert {n: a.enforcer.live_digest() for n, a in world.agents.items()} == digests
        check(world, pairs)
    finally:
        api.start()
    settle(world, lambda s: "team" not in s.inventory.namespaces["x"].labels)
    for agent in world.agents.values():
        wait(lambda a=agent: a.reactor.ready()[0], f"{agent.node} ready again")
        assert http_get(agent, "/readyz")[0] == 200
    check(world, {("x/a", "y/c"): False, ("x/b", "y/c"): False})


def test_deleted_table_is_repaired(world: World) -> None:
    settle(world, lambda s: "y/c-from-blue" in policies(s) and "team" not in s.inventory.namespaces["x"].labels)
    agent = world.agents["node-1"]
    repairs = agent.reactor.repairs
    nft(agent.netns, "delete", "table", "inet", "callgate")
    wait(lambda: agent.reactor.repairs > repairs, "the drift repair")
    settle(world, lambda s: True, agents=("node-1",))
    assert agent.reactor.metrics.value("callgate_drift_repairs_total") >= 1
    check(world, {("x/a", "y/c"): False, ("x/b", "y/c"): False, ("x/b", "x/a"): True})


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_cli_agent_with_iptables_backend_enforces_and_repairs(world: World, tmp_path: Any) -> None:
    """``callgate agent --backend iptables`` (the CLI, as a process) takes over node-2."""
    api = world.api
    node2 = world.agents.pop("node-2")
    node2.stop()
    nft(node2.netns, "delete", "table", "inet", "callgate")
    api.apply(pod("x/d"))
    api.apply(pod("x/b", {"pod": "b2"}))
    api.apply(D_FROM_A)  # d (node-2) only from pod=a
    settle(world, lambda s: "x/d-from-a" in policies(s) and labels(s, "x/b") == {"pod": "b2"}, agents=("node-1",))
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callgate", "agent", "--node", "node-2", "--netns", node2.netns,
             "--backend", "iptables", "--source", "kubernetes", "--server", api.url, "--resync", "0.3",
             "--fail-closed-prefix", PREFIX, "--metrics-address", "127.0.0.1:0", "--coalesce-ms", "20"],
            stdout=subprocess.DEVNULL, stderr=log_file, cwd=ROOT, start_new_session=True)
    try:
        def logged(msg: str) -> list[dict[str, Any]]:
            return [r for r in _json_lines(log_path.read_text()) if r.get("msg") == msg]

        wait(lambda: bool(logged("applied")) or proc.poll() is not None, "the iptables agent's first apply")
        assert proc.poll() is None, log_path.read_text()
        assert logged("agent starting")[0]["backend"] == "iptables"
        forward = subprocess.run(["ip", "netns", "exec", node2.netns, "iptables", "-S", "FORWARD"],
                                 capture_output=True, text=True, check=True).stdout
        assert "-j CG-FORWARD" in forward
        assert nft(node2.netns, "list", "tables").count("inet callgate") == 0  # no nft table on this node
        expected = {("x/a", "x/d"): True, ("y/c", "x/d"): False, ("x/b", "x/d"): False, ("x/a", "x/b"): True}
        check(world, expected)
        assert "d-from-a" in subprocess.run(["ip", "netns", "exec", node2.netns, "iptables-save"],
                                            capture_output=True, text=True, check=True).stdout
        # Drift: the FORWARD jump removed under the agent. Without it c would reach d.
        subprocess.run(["ip", "netns", "exec", node2.netns, "iptables", "-D", "FORWARD", "-j", "CG-FORWARD"],
                       check=True)
        # Found by the resync's check, or (when the deletion lands between that
        # check and the resync's apply) by the apply changing what should not change.
        wait(lambda: bool(logged("drift: the live table differs from what was applied; repairing")
                          or logged("drift: the live table was not what was applied; replaced it")),
             "the iptables agent to notice the drift")
        wait(lambda: "-j CG-FORWARD" in subprocess.run(
            ["ip", "netns", "exec", node2.netns, "iptables", "-S", "FORWARD"],
            capture_output=True, text=True, check=True).stdout, "the jump to be back")
        check(world, expected)
        # A change through the API reaches the iptables rules too.
        api.delete("NetworkPolicy", "d-from-a", "x")
        wait(lambda: "d-from-a" not in subprocess.run(
            ["ip", "netns", "exec", node2.netns, "iptables-save"], capture_output=True, text=True,
            check=True).stdout, "the iptables agent to apply the deletion")
        check(world, {("y/c", "x/d"): True, ("x/b", "x/d"): True})
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- agent log (tail) ---\n{log_path.read_text()[-4000:]}") from err
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)  # stopping joins the watch threads; slow on a loaded host
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert logged("agent stopped; rules stay in the kernel")
