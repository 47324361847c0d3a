"""The agent's reactor without a kernel: FakeNftKernel (and FakeIptables) and a
hand-driven source. Every wait is on a condition with a timeout.

What must hold: a burst of events is one transaction carrying the newest
snapshot; a SourceProblem changes nothing in the kernel and flips readiness;
drift is found by resync and repaired with one full replacement; pod churn and
relabels go in as incremental transactions, a first apply or a repair as a full
one, an unchanged ruleset as none; skipped objects are logged once and counted
in a gauge; the reactor drives the iptables backend through the same protocol.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from callgate.agent.metrics import AgentMetrics
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.compiler.compile import Compiler
from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import Enforcer, Placement
from callgate.enforcers.guard import Finding, Fix, Placed, Report
from callgate.enforcers.iptables.enforcer import IptablesEnforcer
from callgate.enforcers.iptables.fake import FakeIptables
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.placement import NodeEnforcer
from callgate.enforcers.routes import InterfaceResolver
from callgate.errors import Problem
from callgate.policy.documents import Document
from callgate.policy.inventory import inventory_from_dict
from callgate.policy.model import PolicySet
from callgate.policy.networkpolicy import parse_network_policy
from callgate.watchers.base import Snapshot, SourceProblem

pytestmark = pytest.mark.timeout(30)

NODE = "node-1"
WAIT = 10.0


def inventory(b_labels: dict[str, str] | None = None, extra: int = 0) -> Any:
    endpoints = [
        {"name": "a", "namespace": "x", "labels": {"pod": "a"}, "node": NODE, "interface": "cga0",
         "ips": ["198.18.1.10"], "ports": [{"name": "http", "port": 80}]},
        {"name": "c", "namespace": "x", "labels": {"pod": "c"}, "node": NODE, "interface": "cgc0",
         "ips": ["198.18.1.12"], "ports": [{"name": "http", "port": 80}]},
        {"name": "b", "namespace": "x", "labels": b_labels or {"pod": "b"}, "node": "node-2",
         "ips": ["198.18.1.11"], "ports": [{"name": "http", "port": 80}]},
    ]
    endpoints += [{"name": f"r{i}", "namespace": "x", "labels": {"pod": "b"}, "node": "node-2",
                   "ips": [f"198.18.3.{i + 1}"]} for i in range(extra)]
    return inventory_from_dict({"apiVersion": "callgate/v1", "kind": "Inventory",
                                "namespaces": {"x": {"labels": {"ns": "x"}}}, "endpoints": endpoints})


def policy(name: str, selected: str, peer: str) -> Any:
    return parse_network_policy(Document("<test>", 0, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": selected}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": peer}}}], "ports": [{"port": 80}]}]}}))


A_FROM_B = policy("a-from-b", "a", "b")
C_FROM_B = policy("c-from-b", "c", "b")
_versions = iter(range(1_000_000))


def snap(inv: Any = None, policies: tuple[Any, ...] = (A_FROM_B,), problems: tuple[Problem, ...] = ()) -> Snapshot:
    return Snapshot(inv if inv is not None else inventory(), PolicySet(list(policies)), f"v{next(_versions)}",
                    "test", list(problems))


def no_routes(_argv: Any) -> str:
    return "[]"


class Harness:
    def __init__(self, enforcer: Enforcer, resync: float = 3600.0) -> None:
        self.enforcer = enforcer
        self.reactor = Reactor(ReactorConfig(node=NODE, resync=resync, coalesce=0.01, max_delay=1.0, retry=0.05),
                               enforcer, InterfaceResolver(runner=no_routes), AgentMetrics())
        self.reactor.start()

    def send(self, *events: Snapshot | SourceProblem) -> None:
        """Emit events as one burst and wait until the reactor has dealt with it.
        Holding the reactor's lock while emitting makes the burst atomic: the
        worker cannot take an event before the last one is in."""
        r = self.reactor
        with r._cond:
            before = r.syncs
            for event in events:
                r.on_event(event)
        assert r.wait_for(lambda: r.syncs > before and r._event is None, WAIT), "the reactor did not sync"
        last = events[-1]
        if isinstance(last, Snapshot):
            assert r.wait_for(lambda: r.last_sync is not None and r.last_sync.snapshot is last, WAIT)

    def counts(self) -> dict[str, float]:
        return self.reactor.mode_counts


@pytest.fixture
def kernel() -> FakeNftKernel:
    return FakeNftKernel()


@pytest.fixture
def h(kernel: FakeNftKernel) -> Iterator[Harness]:
    harness = Harness(NftablesEnforcer(kernel, fail_closed_prefix="cg"))
    yield harness
    harness.reactor.stop()


def test_first_apply_is_full_then_ready(h: Harness, kernel: FakeNftKernel) -> None:
    assert not h.reactor.ready()[0]
    h.send(snap())
    assert h.counts() == {"incremental": 0, "full": 1}
    assert kernel.transactions == 1
    ok, why = h.reactor.ready()
    assert ok and why.startswith("ok: enforcing digest")
    assert h.reactor.programmed.snapshot() == {"x/a": "cga0", "x/c": "cgc0"}


def test_a_burst_is_one_transaction_with_the_newest_snapshot(h: Harness, kernel: FakeNftKernel) -> None:
    h.send(snap())
    before = kernel.transactions
    # 30 snapshots, each different from the one before (a growing peer set):
    # applied one by one they would be 30 transactions.
    burst = [snap(inventory(extra=i)) for i in range(1, 31)]
    h.send(*burst)
    assert kernel.transactions == before + 1
    assert h.reactor.last_sync is not None and h.reactor.last_sync.snapshot is burst[-1]
    assert h.enforcer.in_sync(h.reactor.last_sync.ruleset, h.reactor.last_sync.known)
    peers = [s for s in kernel.tables[("inet", "callgate")]["sets"].values() if "198.18.3.30" in str(s["elem"])]
    assert peers, "the newest snapshot's last pod is in a peer set"


def test_pod_churn_and_relabel_are_incremental_a_policy_too(h: Harness, kernel: FakeNftKernel) -> None:
    h.send(snap())
    assert h.counts() == {"incremental": 0, "full": 1}
    h.send(snap(inventory(extra=1)))  # a remote pod joins the peer set
    assert h.counts() == {"incremental": 1, "full": 1}
    h.send(snap(inventory(b_labels={"pod": "z"}, extra=1)))  # a remote pod leaves it by relabel
    assert h.counts() == {"incremental": 2, "full": 1}
    h.send(snap(inventory(b_labels={"pod": "z"}, extra=1), (A_FROM_B, C_FROM_B)))  # new chains
    assert h.counts() == {"incremental": 3, "full": 1}
    assert h.enforcer.in_sync(h.reactor.last_sync.ruleset, h.reactor.last_sync.known)  # type: ignore[union-attr]
    # Same content under a new version: compiled, compared, nothing committed.
    transactions = kernel.transactions
    h.send(snap(inventory(b_labels={"pod": "z"}, extra=1), (A_FROM_B, C_FROM_B)))
    assert kernel.transactions == transactions
    assert h.counts() == {"incremental": 3, "full": 1}
    assert h.reactor.metrics.sync_seconds.labels("noop")._sum.get() > 0


def test_a_failing_incremental_compiler_falls_back_to_the_plain_compiler(
        h: Harness, kernel: FakeNftKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    h.send(snap())

    def broken(*_: object, **__: object) -> None:
        raise AssertionError("a bug in the incremental path")

    monkeypatch.setattr("callgate.compiler.incremental.compiler.IncrementalCompiler.sync", broken)
    monkeypatch.setattr("callgate.compiler.incremental.compiler.IncrementalCompiler.__init__", broken)
    h.send(snap(inventory(extra=1)))  # a remote pod joins: applied all the same
    want = Compiler(snap(inventory(extra=1)).policies, inventory(extra=1)).compile(NODE)
    assert h.reactor.last_sync is not None and h.reactor.last_sync.ruleset.digest() == want.digest()
    assert h.enforcer.in_sync(h.reactor.last_sync.ruleset, h.reactor.last_sync.known)
    assert h.reactor.apply_error is None


def test_a_refused_incremental_transaction_is_retried_in_full(h: Harness, kernel: FakeNftKernel) -> None:
    h.send(snap())
    kernel.fail_next = "Operation not supported"
    h.send(snap(inventory(extra=2)))
    assert h.counts() == {"incremental": 0, "full": 2}
    assert h.reactor.apply_error is None and h.reactor.ready()[0]


def test_source_problem_keeps_the_rules_and_flips_readiness(h: Harness, kernel: FakeNftKernel) -> None:
    h.send(snap())
    digest, transactions = h.enforcer.live_digest(), kernel.transactions
    h.send(SourceProblem("kubernetes API unavailable: connection refused", [Problem("connection refused")]))
    ok, why = h.reactor.ready()
    assert not ok and "source problem" in why and "connection refused" in why
    assert h.reactor.healthy()[0]
    assert kernel.transactions == transactions and h.enforcer.live_digest() == digest
    m = h.reactor.metrics
    assert m.value("callgate_source_up") == 0 and m.value("callgate_source_errors_total") == 1
    good = snap()
    h.send(good)
    assert h.reactor.ready()[0] and m.value("callgate_source_up") == 1
    assert kernel.transactions == transactions  # same content: no transaction on recovery


@pytest.mark.parametrize("tamper", [
    [{"delete": {"table": {"family": "inet", "name": "callgate"}}}],
    [{"add": {"rule": {"family": "inet", "table": "callgate", "chain": "forward", "expr": [{"accept": None}]}}}],
], ids=["table-deleted", "rule-added"])
def test_drift_is_repaired_on_resync(kernel: FakeNftKernel, tamper: list[dict[str, Any]]) -> None:
    h = Harness(NftablesEnforcer(kernel, fail_closed_prefix="cg"), resync=0.05)
    try:
        h.send(snap())
        applied = h.reactor.last_sync
        assert applied is not None
        kernel.run(tamper)
        assert not h.enforcer.in_sync(applied.ruleset, applied.known)
        assert h.reactor.wait_for(lambda: h.reactor.repairs >= 1, WAIT), "drift was not repaired"
        assert h.reactor.wait_for(lambda: h.enforcer.in_sync(applied.ruleset, applied.known), WAIT)
        assert h.reactor.metrics.value("callgate_drift_repairs_total") >= 1
        assert h.counts()["full"] == 2 and h.counts()["incremental"] == 0  # the repair replaced the table
        # Once repaired, resyncs find nothing: no further transactions.
        transactions = kernel.transactions
        syncs = h.reactor.syncs
        assert h.reactor.wait_for(lambda: h.reactor.syncs >= syncs + 3, WAIT)
        assert kernel.transactions == transactions and h.reactor.repairs == 1
    finally:
        h.reactor.stop()


def test_skipped_objects_are_logged_once_and_counted(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    bad = Problem("spec.ingress[0].ports[0].port: must be 1-65535", file="kubernetes",
                  object="NetworkPolicy x/broken")
    caplog.set_level(logging.WARNING, logger="callgate.agent")

    def logged() -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith("the source skipped an invalid object"))

    h.send(snap(problems=(bad,)))
    assert h.reactor.metrics.value("callgate_source_problems") == 1 and logged() == 1
    assert h.reactor.ready()[0]  # the rest applies: a skipped object does not make the node stale
    h.send(snap(problems=(bad,)))  # the same problem again (another snapshot): not logged again
    assert logged() == 1
    other = Problem("malformed object", file="kubernetes", object="Pod x/odd")
    h.send(snap(problems=(bad, other)))
    assert h.reactor.metrics.value("callgate_source_problems") == 2 and logged() == 2
    h.send(snap())
    assert h.reactor.metrics.value("callgate_source_problems") == 0
    h.send(snap(problems=(bad,)))  # back again after being fixed: news again
    assert logged() == 3


def test_the_reactor_drives_iptables_through_the_same_protocol() -> None:
    fake = FakeIptables()
    h = Harness(IptablesEnforcer(fake, fail_closed_prefix="cg"), resync=0.05)
    try:
        h.send(snap())
        applied = h.reactor.last_sync
        assert applied is not None and h.enforcer.in_sync(applied.ruleset, applied.known)
        assert "-j CG-FORWARD" in fake.tables[4]["FORWARD"]
        h.send(snap(inventory(extra=1)))
        assert h.counts() == {"incremental": 0, "full": 2}  # iptables reports every change as full
        # Drift: someone removes our jump from FORWARD; resync puts it back.
        fake.tables[4]["FORWARD"].remove("-j CG-FORWARD")
        assert h.reactor.wait_for(lambda: h.reactor.repairs >= 1, WAIT)
        assert h.reactor.wait_for(lambda: "-j CG-FORWARD" in fake.tables[4]["FORWARD"], WAIT)
        assert h.reactor.ready()[0]
    finally:
        h.reactor.stop()


def test_remote_pod_changes_compile_incrementally_to_the_same_ruleset(h: Harness) -> None:
    from callgate.compiler import Compiler

    def full(s: Snapshot) -> Any:
        return Compiler(s.policies, s.inventory).compile(NODE)

    h.send(snap())
    compiler = h.reactor.compiler
    assert compiler is not None and compiler.full_compiles == 1
    for s in (snap(inventory(extra=1)), snap(inventory(extra=3)), snap(inventory(b_labels={"pod": "z"}, extra=3))):
        h.send(s)  # remote pods join, then one leaves by relabel
        assert compiler.last_path == "incremental"
        assert h.reactor.last_sync is not None
        assert h.reactor.last_sync.ruleset == full(s) and h.reactor.last_sync.ruleset.digest() == full(s).digest()
    assert h.reactor.compiler is compiler and compiler.full_compiles == 1
    # A policy change: the chains of the local pods it selects, compiled again.
    s = snap(inventory(b_labels={"pod": "z"}, extra=3), (A_FROM_B, C_FROM_B))
    h.send(s)
    assert compiler.last_path == "incremental" and compiler.full_compiles == 1
    assert h.reactor.last_sync is not None and h.reactor.last_sync.ruleset == full(s)
    assert h.reactor.last_sync.ruleset.digest() == full(s).digest()


def test_a_change_after_a_quiet_spell_is_synced_at_once(kernel: FakeNftKernel) -> None:
    """No fixed debounce: with a 1 s first wait configured, a lone change
    after a quiet spell still goes in at once (a debounce of 1 s would hold
    each of them for a second)."""
    import time

    enforcer = NftablesEnforcer(kernel)
    reactor = Reactor(ReactorConfig(node=NODE, resync=3600, coalesce=1.0, max_delay=4.0),
                      enforcer, InterfaceResolver(runner=no_routes), AgentMetrics())
    reactor.start()
    try:
        for extra in (0, 1, 2):  # the first snapshot, then lone changes after quiet spells
            event = snap(inventory(extra=extra))
            started = time.monotonic()
            reactor.on_event(event)
            assert reactor.wait_for(lambda e=event: reactor.last_sync is not None and reactor.last_sync.snapshot is e,
                                    WAIT)
            assert time.monotonic() - started < 0.5
            time.sleep(1.1)  # quiet: longer than the first wait
    finally:
        reactor.stop()


def test_a_burst_of_1000_events_over_a_second_is_at_most_five_transactions(kernel: FakeNftKernel) -> None:
    import time

    enforcer = NftablesEnforcer(kernel)
    reactor = Reactor(ReactorConfig(node=NODE, resync=3600), enforcer, InterfaceResolver(runner=no_routes),
                      AgentMetrics())
    reactor.start()
    try:
        first = snap()
        reactor.on_event(first)
        assert reactor.wait_for(lambda: reactor.last_sync is not None, WAIT)
        time.sleep(2.5)  # quiet: longer than the longest wait
        before = kernel.transactions
        snapshots = [snap(inventory(extra=1 + i % 40)) for i in range(1000)]
        start = time.monotonic()
        for k, event in enumerate(snapshots):  # one event per millisecond
            time.sleep(max(0.0, start + k * 0.001 - time.monotonic()))
            reactor.on_event(event)
        assert reactor.wait_for(lambda: reactor.last_sync is not None and reactor.last_sync.snapshot is snapshots[-1],
                                WAIT)
        assert 1 < kernel.transactions - before <= 5
    finally:
        reactor.stop()


# -- the guard: never enforce nothing quietly ------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedFix(Fix):
    """A fix that only records that it was made."""

    made: list[str] = dataclasses.field(default_factory=list, compare=False)

    def apply(self) -> None:
        self.made.append(self.target)


class FakeGuard:
    """Reports the findings it is given about the local endpoints (a fix, once
    made, makes its finding go); counts its calls."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        self.calls = 0

    def __call__(self, ruleset: RuleSet) -> Report:
        self.calls += 1
        found = tuple(f for f in self.findings if not (isinstance(f.fix, RecordedFix) and f.fix.made))
        return Report(tuple(Placed(le.endpoint, "routed veth", le.interface or "") for le in ruleset.local), found,
                      tuple(f.fix for f in found if f.fix is not None))


def guarded(kernel: FakeNftKernel, guard: FakeGuard) -> Harness:
    harness = Harness(NftablesEnforcer(kernel, fail_closed_prefix="cg"))
    harness.reactor.guard = guard
    return harness


def test_the_guard_fixes_once_and_says_so(kernel: FakeNftKernel, caplog: pytest.LogCaptureFixture) -> None:
    fix = RecordedFix("cgn", "br0", "nf_call_iptables", "bridged IPv4 on br0 did not reach callgate's rules")
    guard = FakeGuard([Finding("x/a", "bridge-nf-call-iptables is off", fix)])
    h = guarded(kernel, guard)
    try:
        with caplog.at_level(logging.WARNING, logger="callgate.agent"):
            h.send(snap())
        assert fix.made == ["br0"]
        assert any(r.getMessage().startswith("fixed: turned on nf_call_iptables on bridge br0") for r in caplog.records)
        assert h.reactor.programmed.snapshot() == {"x/a": "cga0", "x/c": "cgc0"} and h.reactor.unresolved == {}
        calls = guard.calls
        h.send(snap(inventory(extra=3)))  # churn elsewhere: the node is not looked at again
        assert guard.calls == calls and fix.made == ["br0"]
    finally:
        h.reactor.stop()


def test_refused_endpoints_are_unprogrammed_and_said_why(kernel: FakeNftKernel) -> None:
    guard = FakeGuard([Finding("x/a", "address(es) 198.18.1.10 belong to the node itself (host networking)"),
                       Finding("x/c", "interface cgc0 does not exist in network namespace cgn", keep=True)])
    h = guarded(kernel, guard)
    try:
        h.send(snap(policies=(A_FROM_B, C_FROM_B)))
        r = h.reactor
        assert r.programmed.snapshot() == {}
        assert set(r.unresolved) == {"x/a", "x/c"} and "host networking" in r.unresolved["x/a"]
        ok, why = r.programmed.wait("x/a", None, 0)
        assert not ok and "host networking" in why
        applied = h.enforcer.applied.ruleset  # type: ignore[attr-defined]
        # x/a (host network) is left out entirely; x/c keeps its rules (they match its addresses).
        assert [ep.endpoint for ep in applied.endpoints] == ["x/c"]
        assert [le.endpoint for le in applied.local] == ["x/c"]
        # Fixed on the node: the next look (resync) programs it.
        guard.findings = []
        before = r.syncs
        r.on_event(snap(policies=(A_FROM_B, C_FROM_B)))
        assert r.wait_for(lambda: r.syncs > before and not r.unresolved, WAIT)
        assert r.wait_for(lambda: r.programmed.snapshot() == {"x/a": "cga0", "x/c": "cgc0"}, WAIT)
    finally:
        h.reactor.stop()


def test_an_endpoint_in_its_own_namespace_needs_no_interface(kernel: FakeNftKernel) -> None:
    inv = inventory()
    macvlan = dataclasses.replace(inv, endpoints=tuple(
        dataclasses.replace(ep, interface=None, netns="/run/netns/cgt-a") if ep.key == "x/a" else ep
        for ep in inv.endpoints))
    parts: dict[str | None, FakeNftKernel] = {}

    def factory(netns: str | None, placement: Placement) -> Enforcer:
        parts[netns] = kernel if netns is None else FakeNftKernel()
        return NftablesEnforcer(parts[netns], placement=placement)

    h = Harness(NodeEnforcer(factory, "nft"))
    try:
        h.send(snap(macvlan))
        assert h.reactor.programmed.snapshot() == {"x/a": "/run/netns/cgt-a", "x/c": "cgc0"}
        assert h.reactor.unresolved == {}
        assert h.reactor.last_sync is not None and h.reactor.last_sync.known == ("cgc0",)  # interfaces only
        assert ("inet", "callgate") in parts["/run/netns/cgt-a"].tables
        # Drift inside the pod's namespace is found by a look at the kernel and repaired
        # there. Asked of the worker, which also runs its own drift checks: whichever
        # looks first repairs it, once.
        parts["/run/netns/cgt-a"].tables.clear()
        before = h.reactor.repairs
        h.reactor.verify(thorough=True)
        assert h.reactor.repairs == before + 1 and ("inet", "callgate") in parts["/run/netns/cgt-a"].tables
    finally:
        h.reactor.stop()


def test_with_cluster_policies_remote_pod_churn_stays_incremental(h: Harness, kernel: FakeNftKernel) -> None:
    """An Admin tier ClusterNetworkPolicy on the node's pods: a remote pod joining or
    leaving its peers is a set patch and an incremental transaction, equal to a full
    compile; changing the cluster policy compiles in full."""
    from callgate.policy.clusternetworkpolicy import parse_cluster_network_policy

    def cnp(action: str) -> Any:
        return parse_cluster_network_policy(Document("<test>", 0, {
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "guard"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                     "ingress": [{"name": "no-b", "action": action,
                                  "from": [{"pods": {"podSelector": {"matchLabels": {"pod": "b"}}}}]}]}}))

    def tiered(inv: Any, action: str = "Deny") -> Snapshot:
        return Snapshot(inv, PolicySet([A_FROM_B], (cnp(action),)), f"v{next(_versions)}", "test", [])

    first = tiered(inventory())
    h.send(first)
    ruleset = h.reactor.last_sync.ruleset  # type: ignore[union-attr]
    assert [c.name[:4] for c in next(e for e in ruleset.endpoints if e.endpoint == "x/c").ingress] == ["ina_"]
    for s in (tiered(inventory(extra=2)), tiered(inventory(b_labels={"pod": "z"}, extra=2))):
        h.send(s)
        assert h.reactor.compiler is not None and h.reactor.compiler.last_path == "incremental"
        assert h.reactor.last_sync is not None and h.reactor.last_sync.ruleset == Compiler(
            s.policies, s.inventory).compile(NODE)
    assert h.counts() == {"incremental": 2, "full": 1}
    changed = tiered(inventory(b_labels={"pod": "z"}, extra=2), "Pass")
    h.send(changed)
    assert h.reactor.compiler.last_path == "full: rebase"  # type: ignore[union-attr]
    assert h.enforcer.in_sync(h.reactor.last_sync.ruleset, h.reactor.last_sync.known)  # type: ignore[union-attr]


def test_interfaces_found_on_the_node_keep_the_inventorys_nodes(kernel: FakeNftKernel) -> None:
    """Filling in a local pod's interface from the node's routes must not lose the
    inventory's nodes: a ClusterNetworkPolicy nodes peer resolves through them."""
    from callgate.policy.clusternetworkpolicy import parse_cluster_network_policy

    def routes(argv: Any) -> str:
        return '[{"dst": "198.18.1.10", "dev": "cga0", "scope": "link"}]' if "-4" in argv else "[]"

    data = {"apiVersion": "callgate/v1", "kind": "Inventory", "namespaces": {"x": {}},
            "nodes": {"node-2": {"labels": {"role": "gw"}, "addresses": ["198.19.255.2"]}},
            "endpoints": [{"name": "a", "namespace": "x", "labels": {"pod": "a"}, "node": NODE,
                           "ips": ["198.18.1.10"]}]}  # no interface: found through the routes
    guard = parse_cluster_network_policy(Document("<test>", 0, {
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "no-gateways"},
        "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                 "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "gw"}}}]}]}}))
    reactor = Reactor(ReactorConfig(node=NODE, resync=3600.0, coalesce=0.01, max_delay=1.0, retry=0.05),
                      NftablesEnforcer(kernel), InterfaceResolver(runner=routes), AgentMetrics())
    reactor.start()
    try:
        snapshot = Snapshot(inventory_from_dict(data), PolicySet([], (guard,)), "v1", "test", [])
        reactor.on_event(snapshot)
        assert reactor.wait_for(lambda: reactor.last_sync is not None, WAIT)
        ruleset = reactor.last_sync.ruleset  # type: ignore[union-attr]
        (endpoint,) = ruleset.endpoints
        assert endpoint.interface == "cga0"
        assert any("198.19.255.2" in s.elements for s in ruleset.address_sets), "the node's address is denied"
    finally:
        reactor.stop()


def test_verify_answers_from_the_live_table_and_repairs_at_once(h: Harness, kernel: FakeNftKernel) -> None:
    """CNI CHECK and ADD ask the kernel, not the reactor's memory; resync is an hour here."""
    assert h.reactor.verify(thorough=True).reason == "no ruleset applied yet"
    h.send(snap())
    assert h.reactor.verify(thorough=False).live_ok and h.reactor.verify(thorough=True).live_ok
    kernel.run([{"delete": {"table": {"family": "inet", "name": "callgate"}}}])
    check = h.reactor.verify(thorough=False)
    assert (check.live_ok, check.repaired) == (False, True)
    assert h.reactor.repairs == 1 and h.reactor.verify(thorough=True).live_ok  # repaired by the check
    # A rule slipped in with the digest intact: only the thorough comparison sees it.
    kernel.run([{"add": {"rule": {"family": "inet", "table": "callgate", "chain": "forward",
                                  "expr": [{"accept": None}]}}}])
    assert h.reactor.verify(thorough=False).live_ok
    check = h.reactor.verify(thorough=True)
    assert (check.live_ok, check.repaired) == (False, True) and h.reactor.repairs == 2
    assert h.enforcer.in_sync(h.reactor.last_sync.ruleset, h.reactor.last_sync.known)  # type: ignore[union-attr]


class _Conntrack:
    """A connection tracking table in memory: x/b → x/a:80 and x/b → x/c:80."""

    def __init__(self) -> None:
        from callgate.enforcers.conntrack import TrackedFlow

        self.flows_ = [TrackedFlow(6, "198.18.1.11", "198.18.1.10", 40000, 80),
                       TrackedFlow(6, "198.18.1.11", "198.18.1.12", 40001, 80)]
        self.walks = 0

    def flows(self) -> Iterator[Any]:
        self.walks += 1
        yield from list(self.flows_)

    def delete(self, flow: Any) -> bool:
        self.flows_.remove(flow)
        return True

    def close(self) -> None:
        pass


def test_an_update_that_revokes_cuts_the_connection_and_counts_it(kernel: FakeNftKernel) -> None:
    table = _Conntrack()
    reactor = Reactor(ReactorConfig(node=NODE, coalesce=0.01, retry=0.05), NftablesEnforcer(kernel),
                      InterfaceResolver(runner=no_routes), AgentMetrics(), conntrack=table)
    harness = Harness.__new__(Harness)
    harness.enforcer, harness.reactor = reactor.enforcer, reactor
    reactor.start()
    try:
        harness.send(snap(policies=(A_FROM_B, C_FROM_B)))  # both allowed: nothing cut
        assert len(table.flows_) == 2 and table.walks == 1
        harness.send(snap(inventory(extra=1), policies=(A_FROM_B, C_FROM_B)))  # a peer joins elsewhere: no walk
        assert table.walks == 1
        harness.send(snap(policies=(A_FROM_B, policy("c-from-a", "c", "a"))))  # x/b may no longer call x/c
        assert [f.dst for f in table.flows_] == ["198.18.1.10"]
        assert reactor.revoked == 1 and reactor.metrics.value("callgate_revoked_connections_total") == 1
    finally:
        reactor.stop()


def test_enforcement_audit_puts_every_endpoint_in_audit(kernel: FakeNftKernel) -> None:
    reactor = Reactor(ReactorConfig(node=NODE, coalesce=0.01, retry=0.05, audit=True), NftablesEnforcer(kernel),
                      InterfaceResolver(runner=no_routes), AgentMetrics())
    harness = Harness.__new__(Harness)
    harness.enforcer, harness.reactor = reactor.enforcer, reactor
    reactor.start()
    try:
        harness.send(snap(policies=(A_FROM_B, C_FROM_B)))
        applied = reactor.enforcer.applied
        assert applied is not None and applied.ruleset.endpoints
        assert all(ep.audit for ep in applied.ruleset.endpoints)
        text = reactor.enforcer.desired_text(applied.ruleset, ["cga0", "cgc0"])
        # Audit concerns isolation: anti-spoofing (not a policy's decision) still drops.
        assert [line for line in text.splitlines() if "drop" in line and "anti-spoofing" not in line] == []
    finally:
        reactor.stop()
