"""Revocation: the tracked connections the new rules refuse are deleted, and only those."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callgate.compiler import compile_node
from callgate.compiler.interpret import Interpreter
from callgate.enforcers.conntrack import Judge, KernelConntrack, TrackedFlow, revoke
from callgate.enforcers.netns import run_in
from tests.helpers import policies_from, standard
from tests.netns import nft

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
"""

A4, B4, C4 = "198.18.1.10", "198.18.1.11", "198.18.1.12"  # x/a (node-1), x/b (node-2), x/c (node-1)
YA4 = "198.18.2.10"  # y/a


class FakeTable:
    def __init__(self, flows: list[TrackedFlow]) -> None:
        self.entries = list(flows)
        self.deleted: list[TrackedFlow] = []

    def flows(self) -> Iterator[TrackedFlow]:
        yield from self.entries

    def delete(self, flow: TrackedFlow) -> bool:
        if flow not in self.entries:
            return False
        self.entries.remove(flow)
        self.deleted.append(flow)
        return True

    def close(self) -> None:
        pass


def _flow(src: str, dst: str, dport: int, protocol: int = 6) -> TrackedFlow:
    return TrackedFlow(protocol=protocol, src=src, dst=dst, sport=40000, dport=dport)


def test_revoke_deletes_only_what_the_rules_refuse(tmp_path: Path) -> None:
    inventory = standard()
    ruleset = compile_node(policies_from(tmp_path, POLICIES), inventory, "node-1")
    allowed = [_flow(YA4, A4, 80), _flow(A4, B4, 443), _flow(A4, B4, 0, protocol=1)]
    refused = [_flow(YA4, A4, 81), _flow(C4, A4, 80), _flow(A4, C4, 80), _flow(A4, "198.51.100.1", 53, 17),
               _flow("fd00:18:2::10", "fd00:18:1::10", 81)]
    unrelated = [_flow(C4, B4, 80), _flow("198.19.255.1", "198.19.255.2", 22)]  # no isolated local endpoint
    table = FakeTable(allowed + refused + unrelated)
    result = revoke(table, Judge(ruleset))
    assert table.deleted == refused
    assert (result.checked, result.deleted) == (len(allowed) + len(refused), len(refused))
    # An endpoint in audit never drops, so nothing of its side is revoked: x/a's flows stay.
    table = FakeTable(allowed + refused + unrelated)
    assert revoke(table, Judge(ruleset.in_audit())).deleted == 0


def test_judge_agrees_with_the_interpreter_on_every_pair(tmp_path: Path) -> None:
    inventory = standard()
    ruleset = compile_node(policies_from(tmp_path, POLICIES), inventory, "node-1")
    judge, interpreter = Judge(ruleset), Interpreter([ruleset])
    addresses = [str(ip) for ep in inventory.endpoints for ip in ep.ips] + ["198.51.100.1", "fd00:99::1"]
    for src in addresses:
        for dst in addresses:
            if (":" in src) != (":" in dst):
                continue
            for port, protocol, name in ((80, 6, "tcp"), (81, 17, "udp"), (0, 1, "icmp")):
                flow = _flow(src, dst, port, protocol)
                if judge.concerns(flow):
                    assert judge.allowed(flow) == interpreter.allowed(src, dst, port, name), flow


class _RefuseDport:
    def __init__(self, dport: int) -> None:
        self.dport = dport

    def concerns(self, flow: TrackedFlow) -> bool:
        return flow.protocol == socket.IPPROTO_TCP

    def allowed(self, flow: TrackedFlow) -> bool:
        return flow.dport != self.dport


def _exchange(client: socket.socket, server: socket.socket) -> bool:
    """Does one round of data get through within a second?"""
    try:
        client.send(b"ping")
        return server.recv(16) == b"ping"
    except (TimeoutError, OSError):
        return False


@pytest.mark.kernel
def test_kernel_revocation_cuts_an_established_connection_and_leaves_the_other(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    # Established flows pass first, as in callgate's forward chain; once both connections
    # exist, a new packet to 9001 is refused.
    nft(netns, "-f", "-", stdin="""
table inet cgtest {
  chain out {
    type filter hook output priority 0; policy accept;
    ct state established,related accept
  }
}
""")
    listeners = [run_in(netns, lambda p=p: socket.create_server(("127.0.0.1", p))) for p in (9000, 9001)]
    clients = [run_in(netns, lambda p=p: socket.create_connection(("127.0.0.1", p), timeout=1))
               for p in (9000, 9001)]
    servers = [listener.accept()[0] for listener in listeners]
    nft(netns, "add", "rule", "inet", "cgtest", "out", "tcp", "dport", "9001", "drop")
    table = KernelConntrack(netns)
    try:
        for s in servers:
            s.settimeout(1)
        assert [_exchange(c, s) for c, s in zip(clients, servers, strict=True)] == [True, True]
        result = revoke(table, _RefuseDport(9001))
        assert (result.checked, result.deleted) == (2, 1)
        time.sleep(0.1)
        assert [_exchange(c, s) for c, s in zip(clients, servers, strict=True)] == [True, False]
        assert [f.dport for f in table.flows() if f.protocol == socket.IPPROTO_TCP and f.dport == 9000] == [9000]
    finally:
        table.close()
        for sock in (*clients, *servers, *listeners):
            sock.close()


def test_only_changes_that_may_remove_access_walk_the_table(tmp_path: Path) -> None:
    import dataclasses

    from callgate.enforcers.conntrack import may_remove_access
    from callgate.policy.inventory import inventory_from_dict
    from tests.test_nft_update import add_pod, inv_doc

    policies = policies_from(tmp_path, POLICIES)
    base = compile_node(policies, inventory_from_dict(inv_doc()), "node-1")
    assert may_remove_access(None, base)  # the first apply: whatever was there before
    assert not may_remove_access(base, base)
    # A pod of namespace y added elsewhere only joins peer sets: nothing to revoke.
    joined = compile_node(policies, inventory_from_dict(inv_doc(add_pod("d", "y", "node-2", "198.18.2.40",
                                                                        {"pod": "d"}))), "node-1")
    assert joined.digest() != base.digest()
    assert not may_remove_access(base, joined)
    assert may_remove_access(joined, base)  # and it leaving may cut its connections
    audited = base.in_audit()
    assert may_remove_access(audited, base)  # out of audit: denials bite again
    narrower = dataclasses.replace(base, endpoints=tuple(
        dataclasses.replace(ep, ingress=ep.ingress[:0] + tuple(dataclasses.replace(c, rules=()) for c in ep.ingress))
        for ep in base.endpoints))
    assert may_remove_access(base, narrower)
