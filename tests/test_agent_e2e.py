"""The agent end to end: one agent per node namespace, the files source, real
packets. Edits to the files must reach the kernel; a bad file must change
nothing; tampering with the table must be repaired; a veth that appears before
the agent knows its pod must be dropped (fail-closed) until the pod is in the
inventory; and the CNI plugin must hold ADD until the pod is programmed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callgate.agent.cni_socket import CniSocket
from callgate.agent.metrics import AgentMetrics, StatusServer
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.enforcers.routes import InterfaceResolver
from callgate.lab.netns import ip
from callgate.policy import load_inventory
from callgate.watchers.base import Snapshot
from callgate.watchers.files import FilesSource
from tests.cni_node import build_plugin
from tests.netns import nft

pytestmark = pytest.mark.kernel

PREFIX = "cg"  # container interfaces in the lab are cg*
NODES = ("node-1", "node-2")

INVENTORY = """
apiVersion: callgate/v1
kind: Inventory
namespaces:
  x: {labels: {ns: x}}
  y: {labels: {ns: y}}
endpoints:
- {name: a, namespace: x, labels: {pod: a}, node: node-1, interface: cgxa0,
   ips: [198.18.1.10, 'fd00:18:1::10'], ports: [{name: http, port: 80}]}
- {name: b, namespace: x, labels: {pod: b}, node: node-2, interface: cgxb0,
   ips: [198.18.1.11], ports: [{name: http, port: 80}]}
# no interface: the agent finds it from the node's host route
- {name: c, namespace: x, labels: {pod: c}, node: node-1, ips: [198.18.1.12], ports: [{name: http, port: 80}]}
- {name: a, namespace: y, labels: {pod: a}, node: node-2, interface: cgya0,
   ips: [198.18.2.10], ports: [{name: http, port: 80}]}
"""

ALLOW_A_FROM_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
      ports: [{port: 80}]
"""

ALLOW_A_FROM_NS_Y = ALLOW_A_FROM_B.replace("{podSelector: {matchLabels: {pod: b}}}",
                                           "{namespaceSelector: {matchLabels: {ns: y}}}")

NEW_POD = "x/d"  # the pod whose veth appears before the agent knows it
NEW_IFACE = "cgxd0"
NEW_IP = "198.18.1.13"


@dataclass
class Agent:
    node: str
    netns: str
    reactor: Reactor
    enforcer: NftablesEnforcer
    source: FilesSource
    kernel: LibNftables
    http: StatusServer
    gate: CniSocket


@dataclass
class World:
    lab: object
    dir: Path
    agents: dict[str, Agent]
    plugin: Path

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.yaml"

    @property
    def policies(self) -> Path:
        return self.dir / "policies"

    def write(self, path: Path, text: str) -> None:
        # Write-then-rename, as editors and ConfigMap mounts do.
        tmp = path.with_suffix(".tmp~")
        tmp.write_text(textwrap.dedent(text).lstrip())
        tmp.replace(path)


def wait(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


IPS = {"198.18.1.10": "x/a", "fd00:18:1::10": "x/a", "198.18.1.11": "x/b", "198.18.1.12": "x/c",
       "198.18.2.10": "y/a", NEW_IP: NEW_POD}


def reach(world: World, src: str, dst_ip: str, port: int = 80, timeout: float = 0.7) -> bool:
    """One real TCP connection from pod ``src``'s namespace; the answer must
    come from the right server (it greets with its pod name)."""
    from callgate.lab.probe import Target, _run_source

    lab = world.lab
    ns = lab.pod_netns(src)  # type: ignore[attr-defined]
    target = Target((src, IPS[dst_ip], 4 if ":" not in dst_ip else 6, port, "TCP"), dst_ip, "")
    (result,) = _run_source(ns, [target], timeout)
    return result.ok


def applied_version(agent: Agent) -> str | None:
    applied = agent.reactor.last_sync
    return applied.snapshot.version if applied else None


def settle(world: World) -> None:
    """Wait until every agent applied the files as they are now."""
    version = FilesSource([world.inventory], [world.policies]).load()
    assert isinstance(version, Snapshot)
    for agent in world.agents.values():
        def done(a: Agent = agent) -> bool:
            return applied_version(a) == version.version and a.reactor.apply_error is None
        wait(done, what=f"{agent.node} to apply {version.version}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from callgate.lab import Lab

    d = tmp_path_factory.mktemp("agent")
    (d / "policies").mkdir()
    (d / "inventory.yaml").write_text(textwrap.dedent(INVENTORY).lstrip())
    (d / "policies" / "web.yaml").write_text(textwrap.dedent(ALLOW_A_FROM_B).lstrip())
    lab = Lab("cgg")
    lab.down()  # leftovers of an interrupted run
    agents: dict[str, Agent] = {}
    with lab.running(load_inventory(d / "inventory.yaml")):
        try:
            for node in NODES:
                ns = lab.node_netns(node)
                kernel = LibNftables(ns)
                enforcer = NftablesEnforcer(kernel, fail_closed_prefix=PREFIX)
                metrics = AgentMetrics()
                metrics.watch_enforcer(enforcer)
                reactor = Reactor(ReactorConfig(node=node, resync=0.3, coalesce=0.02, retry=0.2),
                                  enforcer, InterfaceResolver(ns, prefix=PREFIX), metrics)
                http = StatusServer("127.0.0.1:0", metrics, reactor)
                gate = CniSocket(str(d / node / "agent.sock"), reactor)
                source = FilesSource([d / "inventory.yaml"], [d / "policies"], debounce_ms=200, step_ms=20)
                agents[node] = Agent(node, ns, reactor, enforcer, source, kernel, http, gate)
                http.start()
                reactor.start()
                source.start(reactor.on_event)
                gate.start()
            w = World(lab, d, agents, build_plugin(d / "callgate-cni"))
            settle(w)
            yield w
        finally:
            for agent in agents.values():
                agent.gate.stop()
                agent.source.stop()
                agent.reactor.stop()
                agent.http.stop()
                agent.kernel.close()


def test_initial_policy_is_enforced_and_local_interface_resolved(world: World) -> None:
    assert reach(world, "x/b", "198.18.1.10")  # b may call a
    assert not reach(world, "y/a", "198.18.1.10")  # y/a may not
    assert reach(world, "y/a", "198.18.1.12")  # x/c is not isolated
    agent = world.agents["node-1"]
    programmed = agent.reactor.programmed.snapshot()
    # x/c has no interface in the inventory: found from the node's /32 route.
    assert programmed["x/c"].startswith(PREFIX) and programmed["x/c"] != "cgxa0"
    assert agent.enforcer.in_sync(agent.reactor.last_sync.ruleset, agent.reactor.last_sync.known)  # type: ignore[union-attr]


def test_policy_edit_reaches_the_kernel(world: World) -> None:
    world.write(world.policies / "web.yaml", ALLOW_A_FROM_NS_Y)
    settle(world)
    assert reach(world, "y/a", "198.18.1.10")
    assert not reach(world, "x/b", "198.18.1.10")
    world.write(world.policies / "web.yaml", ALLOW_A_FROM_B)
    settle(world)
    assert reach(world, "x/b", "198.18.1.10")
    assert not reach(world, "y/a", "198.18.1.10")


def test_label_edit_is_incremental_and_reaches_the_kernel(world: World) -> None:
    agent = world.agents["node-1"]
    applies_before = agent.reactor.metrics.value("callgate_applies_total", mode="incremental")
    # y/a relabelled pod=b: it is now selected by "from pod=b"? No: that peer is
    # namespace x only. Relabel x/c to pod=b instead: a local peer joins the set.
    world.write(world.inventory, INVENTORY.replace("labels: {pod: c}", "labels: {pod: b}"))
    settle(world)
    assert reach(world, "x/c", "198.18.1.10")
    assert agent.reactor.metrics.value("callgate_applies_total", mode="incremental") > applies_before
    world.write(world.inventory, INVENTORY)
    settle(world)
    assert not reach(world, "x/c", "198.18.1.10")


def test_bad_file_keeps_enforcement(world: World) -> None:
    agent = world.agents["node-1"]
    digest = agent.enforcer.live_digest()
    problems = agent.reactor.metrics.value("callgate_source_errors_total")
    world.write(world.policies / "web.yaml", ALLOW_A_FROM_B.replace("podSelector: {matchLabels: {pod: a}}",
                                                                    "podSelector: {matchLabels: {pod: [a]}}"))
    wait(lambda: agent.reactor.source_problem is not None, what="the source problem")
    assert agent.reactor.metrics.value("callgate_source_errors_total") > problems
    assert not agent.reactor.ready()[0] and "source problem" in agent.reactor.ready()[1]
    assert agent.enforcer.live_digest() == digest  # nothing flushed, nothing changed
    assert reach(world, "x/b", "198.18.1.10")
    assert not reach(world, "y/a", "198.18.1.10")
    world.write(world.policies / "web.yaml", ALLOW_A_FROM_B)
    wait(lambda: agent.reactor.source_problem is None, what="recovery")
    assert agent.reactor.ready()[0]


@pytest.mark.parametrize("tamper", [
    ["delete", "table", "inet", "callgate"],
    ["insert", "rule", "inet", "callgate", "forward", "accept"],
])
def test_tampering_is_repaired(world: World, tamper: list[str]) -> None:
    agent = world.agents["node-1"]
    repairs = agent.reactor.repairs
    nft(agent.netns, *tamper)
    wait(lambda: agent.reactor.repairs > repairs, what="drift repair")
    wait(lambda: agent.enforcer.in_sync(agent.reactor.last_sync.ruleset, agent.reactor.last_sync.known),  # type: ignore[union-attr]
         what="the table to be back")
    assert agent.reactor.metrics.value("callgate_drift_repairs_total") >= 1
    assert not reach(world, "y/a", "198.18.1.10")


def _make_pod(world: World) -> str:
    """A pod namespace and veth on node-1 that no inventory mentions yet."""
    lab = world.lab
    node_ns = world.agents["node-1"].netns
    pod_ns = lab.pod_netns(NEW_POD)  # type: ignore[attr-defined]
    subprocess.run(["ip", "netns", "add", pod_ns], check=True)
    ip("link", "add", "name", NEW_IFACE, "type", "veth", "peer", "name", "eth0", "netns", pod_ns, netns=node_ns)
    ip("link", "set", "dev", NEW_IFACE, "up", netns=node_ns)
    ip("route", "add", f"{NEW_IP}/32", "dev", NEW_IFACE, netns=node_ns)
    subprocess.run(["ip", "netns", "exec", node_ns, "sysctl", "-qw", f"net.ipv4.conf.{NEW_IFACE}.proxy_arp=1",
                    f"net.ipv4.neigh.{NEW_IFACE}.proxy_delay=0"], check=True)
    ip("addr", "add", f"{NEW_IP}/32", "dev", "eth0", netns=pod_ns)
    ip("link", "set", "dev", "eth0", "up", netns=pod_ns)
    ip("link", "set", "dev", "lo", "up", netns=pod_ns)
    ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink", netns=pod_ns)
    return pod_ns


def _cni(world: World, timeout: float, agent: Agent, command: str = "ADD",
         container: str = "abc123") -> subprocess.Popen[str]:
    """The built callgate-cni, as the last plugin of a chain whose first made the veth."""
    conf = {"cniVersion": "1.0.0", "name": "lab", "type": "callgate-cni",
            "timeoutSeconds": timeout, "interfacePrefix": PREFIX,
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": NEW_IFACE}, {"name": "eth0", "sandbox": "/x"}],
                           "ips": [{"address": f"{NEW_IP}/32", "interface": 1}]}}
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=d",
           "CALLGATE_CNI_SOCKET": str(agent.gate.path)}
    proc = subprocess.Popen([str(world.plugin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf))
    proc.stdin.close()
    return proc


def _finish(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    out = proc.stdout.read()  # EOF when the plugin exits
    proc.wait(30)
    return out


def test_fail_closed_new_veth_is_dropped_until_programmed_and_cni_waits(world: World) -> None:
    agent = world.agents["node-1"]
    _make_pod(world)
    # Serve from the new pod, as the lab's own servers do.
    server = subprocess.Popen(["ip", "netns", "exec", world.lab.pod_netns(NEW_POD),  # type: ignore[attr-defined]
                               sys.executable, "-m", "callgate.lab.server", "--name", NEW_POD, "--tcp", "80"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # 1. A CNI ADD for a pod the agent never hears of fails with "try again later".
        timed_out = _cni(world, 0.5, agent)
        out = _finish(timed_out)
        assert timed_out.returncode == 1
        error = json.loads(out)
        assert error["code"] == 11 and "x/d" in error["msg"]
        assert "waiting for the Pod object" in error["details"]
        deleted = _cni(world, 0.5, agent, command="DEL")  # the runtime tears the sandbox down
        assert _finish(deleted) == "" and deleted.returncode == 0
        assert NEW_POD not in agent.reactor.attachments.snapshot()
        # 2. The veth exists, the agent does not know it: dropped both ways.
        assert not reach(world, "x/a", NEW_IP)
        assert not reach(world, "x/c", NEW_IP)
        drops = [o["rule"] for o in agent.enforcer.live_objects() or [] if "rule" in o
                 and o["rule"].get("comment") == "callgate fail-closed"]
        assert sum(e["counter"]["packets"] for r in drops for e in r["expr"] if "counter" in e) > 0
        # 3. CNI ADD (a new sandbox) blocks while the pod is unknown…
        waiting = _cni(world, 30, agent, container="def456")
        time.sleep(0.3)  # give it the chance to return early (it must not)
        assert waiting.poll() is None
        # …the pod enters the inventory (no interface: resolved from its route)…
        world.write(world.inventory, INVENTORY + textwrap.dedent(f"""
            - {{name: d, namespace: x, labels: {{pod: d}}, node: node-1, ips: [{NEW_IP}], ports: [{{port: 80}}]}}
            """))
        out = _finish(waiting)
        assert waiting.returncode == 0, out
        assert json.loads(out)["interfaces"][0]["name"] == NEW_IFACE  # prevResult passed on
        # 4. Programmed: traffic flows per policy (x/d is not isolated).
        assert agent.reactor.programmed.snapshot()[NEW_POD] == NEW_IFACE
        assert reach(world, "x/a", NEW_IP)
        assert reach(world, "x/c", NEW_IP)
    finally:
        server.terminate()
        server.wait(5)
        world.write(world.inventory, INVENTORY)
        subprocess.run(["ip", "netns", "del", world.lab.pod_netns(NEW_POD)], check=False)  # type: ignore[attr-defined]
