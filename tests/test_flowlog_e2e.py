"""Flow logs, audit and revocation on real packets, with both backends.

One lab (``cgf``), one in-process agent on node-1 with a flow log (allowed
connections too), conntrack revocation on, and the files source. A denied
connection must become a deny record naming the policy; a connection into an
audited namespace passes and becomes a would-deny record; an update that
revokes an established connection cuts it within the update and leaves the
connection it still allows alone.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from callgate.agent.flowlog.service import FlowLogService
from callgate.agent.flowlog.writer import FlowLogWriter
from callgate.agent.metrics import AgentMetrics
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers import get_enforcer
from callgate.enforcers.base import Enforcer, FlowLogging
from callgate.enforcers.conntrack import KernelConntrack
from callgate.enforcers.netns import run_in
from callgate.enforcers.nflog import NflogSocket
from callgate.enforcers.routes import InterfaceResolver
from callgate.policy import load_inventory
from callgate.watchers.base import Snapshot
from callgate.watchers.files import FilesSource

pytestmark = pytest.mark.kernel

NODE = "node-1"
GROUP = 61

INVENTORY = """
apiVersion: callgate/v1
kind: Inventory
namespaces:
  x: {labels: {ns: x}}
  y: {labels: {ns: y}}
  w: {labels: {ns: w, callgate.io/enforcement: audit}}
endpoints:
- {name: a, namespace: x, labels: {pod: a}, node: node-1, interface: cgxa0, ips: [198.18.1.10]}
- {name: b, namespace: x, labels: {pod: b}, node: node-2, interface: cgxb0, ips: [198.18.1.11]}
- {name: a, namespace: y, labels: {pod: a}, node: node-2, interface: cgya0, ips: [198.18.2.10]}
- {name: a, namespace: w, labels: {pod: a}, node: node-1, interface: cgwa0, ips: [198.18.3.10]}
"""

CALLERS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-callers, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 9090}]
"""
ONLY_Y = CALLERS.replace("{podSelector: {matchLabels: {pod: b}}}, ", "")
DENY_ALL_W = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: w}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""
IPS = {"x/a": "198.18.1.10", "x/b": "198.18.1.11", "y/a": "198.18.2.10", "w/a": "198.18.3.10"}


@dataclass
class World:
    lab: Any
    dir: Path
    backend: str
    reactor: Reactor
    enforcer: Enforcer
    flows: FlowLogService
    source: FilesSource

    @property
    def log(self) -> Path:
        return self.dir / "flows.jsonl"

    def write_policy(self, text: str) -> None:
        tmp = self.dir / "policies" / "x.tmp~"
        tmp.write_text(textwrap.dedent(text).lstrip())
        tmp.replace(self.dir / "policies" / "x.yaml")

    def settle(self) -> None:
        snapshot = FilesSource([self.dir / "inventory.yaml"], [self.dir / "policies"]).load()
        assert isinstance(snapshot, Snapshot)
        wait(lambda: self.reactor.last_sync is not None and self.reactor.last_sync.snapshot.version
             == snapshot.version, what="the agent to apply the files")

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


def wait(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["nft", "iptables"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from callgate.lab import Lab

    backend = request.param
    d = tmp_path_factory.mktemp(f"flowlog-{backend}")
    (d / "policies").mkdir()
    (d / "inventory.yaml").write_text(textwrap.dedent(INVENTORY).lstrip())
    (d / "policies" / "x.yaml").write_text(textwrap.dedent(CALLERS).lstrip())
    (d / "policies" / "w.yaml").write_text(textwrap.dedent(DENY_ALL_W).lstrip())
    lab = Lab("cgf")
    lab.down()  # leftovers of an interrupted run
    with lab.running(load_inventory(d / "inventory.yaml")):
        ns = lab.node_netns(NODE)
        logging = FlowLogging(GROUP, allowed=True, rate=50)
        enforcer = get_enforcer(backend, ns, None, logging)
        metrics = AgentMetrics()
        metrics.watch_enforcer(enforcer)
        flows = FlowLogService(NflogSocket(GROUP, ns), FlowLogWriter(str(d / "flows.jsonl")), metrics)
        conntrack = KernelConntrack(ns)
        reactor = Reactor(ReactorConfig(node=NODE, resync=30, coalesce=0.02, retry=0.2), enforcer,
                          InterfaceResolver(ns), metrics, conntrack=conntrack, flows=flows)
        source = FilesSource([d / "inventory.yaml"], [d / "policies"], debounce_ms=100, step_ms=20)
        flows.start()
        reactor.start()
        source.start(reactor.on_event)
        try:
            w = World(lab, d, backend, reactor, enforcer, flows, source)
            w.settle()
            yield w
        finally:
            source.stop()
            reactor.stop()
            flows.stop()
            conntrack.close()
            enforcer.close()


def listen(world: World, pod: str, port: int) -> socket.socket:
    listener = run_in(world.lab.pod_netns(pod), lambda: socket.create_server((IPS[pod], port)))
    listener.settimeout(2)
    return listener


def connect(world: World, src: str, dst: str, port: int, timeout: float = 1.0) -> socket.socket | None:
    """A TCP connection from pod ``src``'s namespace, or None when it does not get through."""
    def open_() -> socket.socket | None:
        try:
            return socket.create_connection((IPS[dst], port), timeout=timeout)
        except OSError:
            return None
    return run_in(world.lab.pod_netns(src), open_)


def talks(client: socket.socket, server: socket.socket) -> bool:
    """Does one message get through an established connection within a second?"""
    server.settimeout(1)
    try:
        client.sendall(b"ping\n")
        return server.recv(16) == b"ping\n"
    except OSError:
        return False


def record_where(world: World, **want: Any) -> dict[str, Any]:
    """The first record whose fields include ``want`` (dst port and endpoint as dst_port, dst, src)."""
    def match(r: dict[str, Any]) -> bool:
        flat = {"verdict": r["verdict"], "direction": r["direction"], "src": r["src"]["endpoint"],
                "dst": r["dst"]["endpoint"], "dst_port": r["dst"]["port"], "protocol": r["protocol"]}
        return all(flat[k] == v for k, v in want.items())
    found: list[dict[str, Any]] = []
    wait(lambda: bool(found.extend(r for r in world.records() if match(r)) or found), 10, f"a record {want}")
    return found[0]


def test_a_denied_connection_is_a_deny_record_naming_the_policy(world: World) -> None:
    assert connect(world, "x/b", "x/a", 9091) is None  # only 9090 is allowed
    record = record_where(world, verdict="deny", dst="x/a", dst_port=9091)
    assert record["direction"] == "ingress" and record["protocol"] == "TCP" and record["node"] == NODE
    assert record["src"]["endpoint"] == "x/b" and record["src"]["ip"] == IPS["x/b"]
    assert record["dst"] == {"ip": IPS["x/a"], "port": 9091, "endpoint": "x/a"}
    assert record["policies"] == ["NetworkPolicy x/a-callers"]  # the policy isolating x/a decided
    assert record["time"].endswith("Z")


def test_an_allowed_connection_names_the_rule_that_allowed_it(world: World) -> None:
    listener = listen(world, "x/a", 9090)
    try:
        client = connect(world, "x/b", "x/a", 9090)
        assert client is not None
        client.close()
    finally:
        listener.close()
    record = record_where(world, verdict="allow", src="x/b", dst="x/a", dst_port=9090)
    assert record["policies"] == ["NetworkPolicy x/a-callers"]


def test_an_audited_namespace_passes_and_records_would_deny(world: World) -> None:
    listener = listen(world, "w/a", 9090)
    try:
        client = connect(world, "x/b", "w/a", 9090)
        assert client is not None, "audit must never drop"
        client.close()
    finally:
        listener.close()
    record = record_where(world, verdict="would-deny", dst="w/a", dst_port=9090)
    assert record["policies"] == ["NetworkPolicy w/deny-all"] and record["direction"] == "ingress"
    assert not any(r["verdict"] == "deny" and r["dst"]["endpoint"] == "w/a" for r in world.records())


def test_revocation_cuts_what_the_update_revokes_and_leaves_the_rest(world: World) -> None:
    listener = listen(world, "x/a", 9090)
    clients: list[socket.socket] = []
    try:
        for src in ("x/b", "y/a"):
            client = connect(world, src, "x/a", 9090)
            assert client is not None, src
            clients.append(client)
        servers = [listener.accept()[0] for _ in clients]
        by_source = {s.getpeername()[0]: s for s in servers}
        pairs = [(c, by_source[c.getsockname()[0]]) for c in clients]
        assert [talks(c, s) for c, s in pairs] == [True, True]
        revoked = world.reactor.metrics.value("callgate_revoked_connections_total")
        world.write_policy(ONLY_Y)  # x/b may no longer call x/a; y/a still may
        world.settle()
        assert world.reactor.metrics.value("callgate_revoked_connections_total") >= revoked + 1
        assert [talks(c, s) for c, s in pairs] == [False, True]
    finally:
        world.write_policy(CALLERS)
        world.settle()
        for sock in (*clients, listener):
            sock.close()


def test_keep_established_leaves_revoked_connections_alone(world: World) -> None:
    listener = listen(world, "x/a", 9090)
    conntrack, world.reactor.conntrack = world.reactor.conntrack, None  # --keep-established
    client = None
    try:
        client = connect(world, "x/b", "x/a", 9090)
        assert client is not None
        server = listener.accept()[0]
        world.write_policy(ONLY_Y)
        world.settle()
        assert talks(client, server)  # established: kept, the trade-off documented
        assert connect(world, "x/b", "x/a", 9090) is None  # but no new connection
        server.close()
    finally:
        world.reactor.conntrack = conntrack
        world.write_policy(CALLERS)
        world.settle()
        if client is not None:
            client.close()
        listener.close()


def test_flow_log_metrics_are_exported(world: World) -> None:
    metrics = world.reactor.metrics
    assert metrics.value("callgate_flow_log_records_total", verdict="deny") >= 1
    assert metrics.value("callgate_flow_log_records_total", verdict="would-deny") >= 1
    assert metrics.value("callgate_flow_log_undecoded_packets_total") == 0
