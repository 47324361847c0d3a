"""The network-policy-api ClusterNetworkPolicy conformance tests, restated on callgate's lab model.

Upstream (kubernetes-sigs/network-policy-api, ``conformance/tests``) applies
manifests to a cluster of four "houses" (examples/conformance/inventory.yaml
restates that model), mutates the policies step by step (swapping rules,
changing actions and priorities, relabelling a namespace) and pokes servers
from client pods. Each upstream test is restated here as a sequence of steps:
the policies as they stand after the step's mutation, and the pokes with the
verdict upstream requires. Manifests and mutations are written anew for
callgate, test names and verdicts are upstream's.

Every step is checked three ways: the reference evaluator, the compiled IR
run by the interpreter (both nodes), and — marked ``kernel`` — real probes in
a two-node lab on both backends (TCP and UDP pokes; the lab has no SCTP
sockets, so SCTP pokes are checked on the model only, as are pokes at node
addresses, where the lab runs no server).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from callgate.compiler import Compiler
from callgate.compiler.interpret import Interpreter
from callgate.enforcers import get_enforcer
from callgate.lab import Lab, probe_matrix
from callgate.policy import Evaluator, Inventory, PolicySet, load_inventory, load_policies
from callgate.policy.model import Namespace
from tests.helpers import ROOT

INVENTORY = ROOT / "examples" / "conformance" / "inventory.yaml"
INV = load_inventory(INVENTORY)
NS = "network-policy-conformance-"
POD = {"gryffindor": "harry-potter", "slytherin": "draco-malfoy", "hufflepuff": "cedric-diggory",
       "ravenclaw": "luna-lovegood"}
NODE_1 = "198.19.255.1"  # node-1's address: what a nodes peer selects


def pod(house: str, replica: int) -> str:
    return f"{NS}{house}/{POD[house]}-{replica}"


@dataclass(frozen=True)
class Poke:
    """One PokeServer call: client pod, server (pod key or address), protocol, port, verdict."""

    client: str
    server: str
    protocol: str
    port: int
    allowed: bool


@dataclass
class Step:
    test: str  # the upstream subtest
    manifests: list[dict[str, Any]]
    pokes: list[Poke]
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # relabelled namespaces

    def inventory(self) -> Inventory:
        if not self.namespace_labels:
            return INV
        spaces = dict(INV.namespaces)
        for name, labels in self.namespace_labels.items():
            spaces[name] = Namespace(name, {**labels, "kubernetes.io/metadata.name": name})
        return replace(INV, namespaces=spaces)


def manifests(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def house_ns(house: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": NS + house}}


def house_label(house: str) -> dict[str, Any]:
    return {"matchLabels": {"conformance-house": house}}


def house_pods(house: str) -> dict[str, Any]:
    return {"pods": {"namespaceSelector": house_label(house), "podSelector": house_label(house)}}


def rule(name: str, action: str, peers_key: str, peers: list[dict[str, Any]],
         protocols: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "action": action, peers_key: peers}
    if protocols:
        out["protocols"] = protocols
    return out


def tcp(port: int) -> dict[str, Any]:
    return {"tcp": {"destinationPort": {"number": port}}}


def udp(port: int) -> dict[str, Any]:
    return {"udp": {"destinationPort": {"number": port}}}


def cnp(name: str, tier: str, priority: int, subject: dict[str, Any], **rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name}, "spec": {"tier": tier, "priority": priority, "subject": subject, **rules}}


def swap(doc: dict[str, Any], direction: str, a: int, b: int) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    rules = out["spec"][direction]
    rules[a], rules[b] = rules[b], rules[a]
    return out


# -- the upstream tests -------------------------------------------------------------------------

def egress_tcp(tier: str, priority: int, name: str) -> dict[str, Any]:
    """base/{admin,baseline}_tier/standard-egress-tcp-rules.yaml (Baseline has no Pass rules)."""
    to = {h: [{"namespaces": house_ns(h)}] for h in POD}
    rules = [rule("allow-to-ravenclaw-everything", "Accept", "to", to["ravenclaw"]),
             rule("deny-to-ravenclaw-everything", "Deny", "to", to["ravenclaw"])]
    if tier == "Admin":
        rules.append(rule("pass-to-ravenclaw-everything", "Pass", "to", to["ravenclaw"]))
    rules.append(rule("deny-to-slytherin-at-port-80", "Deny", "to", to["slytherin"], [tcp(80)]))
    if tier == "Admin":
        rules.append(rule("pass-to-slytherin-at-port-80", "Pass", "to", to["slytherin"], [tcp(80)]))
    rules += [rule("allow-to-hufflepuff-at-port-8080", "Accept", "to", to["hufflepuff"], [tcp(8080)]),
              rule("deny-to-hufflepuff-everything-else", "Deny", "to", to["hufflepuff"])]
    return cnp(name, tier, priority, {"namespaces": house_ns("gryffindor")}, egress=rules)


def cnp_admin_tier_egress_tcp() -> list[Step]:
    """CNPAdminTierEgressTCP (admin-network-policy-standard-egress-tcp-rules.go): rule order."""
    base = egress_tcp("Admin", 6, "egress-tcp")
    g0, g1 = pod("gryffindor", 0), pod("gryffindor", 1)
    swapped = swap(base, "egress", 0, 1)  # deny before allow
    passed = swap(swapped, "egress", 0, 2)  # then pass before deny
    port_pass = swap(passed, "egress", 3, 4)  # and pass-at-80 before deny-at-80
    return [
        Step("Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected", [base],
             [Poke(g0, pod("ravenclaw", 0), "TCP", 80, True), Poke(g1, pod("ravenclaw", 0), "TCP", 8080, True)]),
        Step("Should support an 'allow-egress' policy for TCP protocol at the specified port", [base],
             [Poke(g0, pod("hufflepuff", 1), "TCP", 8080, True), Poke(g1, pod("hufflepuff", 1), "TCP", 80, False)]),
        Step("Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected", [swapped],
             [Poke(g0, pod("ravenclaw", 1), "TCP", 80, False), Poke(g1, pod("ravenclaw", 1), "TCP", 8080, False)]),
        Step("Should support a 'deny-egress' policy for TCP protocol at the specified port", [swapped],
             [Poke(g0, pod("slytherin", 0), "TCP", 80, False), Poke(g1, pod("slytherin", 0), "TCP", 8080, True)]),
        Step("Should support an 'pass-egress' policy for TCP protocol; ensure rule ordering is respected", [passed],
             [Poke(g0, pod("ravenclaw", 0), "TCP", 80, True), Poke(g1, pod("ravenclaw", 0), "TCP", 8080, True)]),
        Step("Should support a 'pass-egress' policy for TCP protocol at the specified port", [port_pass],
             [Poke(g0, pod("slytherin", 0), "TCP", 80, True), Poke(g1, pod("slytherin", 0), "TCP", 8080, True)]),
    ]


def cnp_baseline_tier_egress_tcp() -> list[Step]:
    """CNPBaselineTierEgressTCP (baseline-admin-network-policy-standard-egress-tcp-rules.go)."""
    base = egress_tcp("Baseline", 10, "default")
    g0, g1 = pod("gryffindor", 0), pod("gryffindor", 1)
    swapped = swap(base, "egress", 0, 1)
    return [
        Step("Should support an 'allow-egress' policy for TCP protocol; ensure rule ordering is respected", [base],
             [Poke(g0, pod("ravenclaw", 0), "TCP", 80, True), Poke(g1, pod("ravenclaw", 0), "TCP", 8080, True)]),
        Step("Should support an 'allow-egress' policy for TCP protocol at the specified port", [base],
             [Poke(g0, pod("hufflepuff", 1), "TCP", 8080, True), Poke(g1, pod("hufflepuff", 1), "TCP", 80, False)]),
        Step("Should support an 'deny-egress' policy for TCP protocol; ensure rule ordering is respected", [swapped],
             [Poke(g0, pod("ravenclaw", 1), "TCP", 80, False), Poke(g1, pod("ravenclaw", 1), "TCP", 8080, False)]),
        Step("Should support a 'deny-egress' policy for TCP protocol at the specified port", [swapped],
             [Poke(g0, pod("slytherin", 0), "TCP", 80, False), Poke(g1, pod("slytherin", 0), "TCP", 8080, True)]),
    ]


def ingress_udp() -> dict[str, Any]:
    """base/admin_tier/standard-ingress-udp-rules.yaml."""
    frm = {h: [{"namespaces": house_ns(h)}] for h in POD}
    return cnp("ingress-udp", "Admin", 4, {"namespaces": house_ns("hufflepuff")}, ingress=[
        rule("allow-from-ravenclaw-everything", "Accept", "from", frm["ravenclaw"]),
        rule("deny-from-ravenclaw-everything", "Deny", "from", frm["ravenclaw"]),
        rule("pass-from-ravenclaw-everything", "Pass", "from", frm["ravenclaw"]),
        rule("deny-from-slytherin-at-port-5353", "Deny", "from", frm["slytherin"], [udp(5353)]),
        rule("pass-from-slytherin-at-port-5353", "Pass", "from", frm["slytherin"], [udp(5353)]),
        rule("allow-from-gryffindor-at-port-53", "Accept", "from", frm["gryffindor"], [udp(53)]),
        rule("deny-from-gryffindor-everything-else", "Deny", "from", frm["gryffindor"])])


def cnp_admin_tier_ingress_udp() -> list[Step]:
    """CNPAdminTierIngressUDP (admin-network-policy-standard-ingress-udp-rules.go): rule order on ingress."""
    base = ingress_udp()
    swapped = swap(base, "ingress", 0, 1)
    passed = swap(swapped, "ingress", 0, 2)
    port_pass = swap(passed, "ingress", 3, 4)
    h0, h1 = pod("hufflepuff", 0), pod("hufflepuff", 1)
    r0, r1, s0, s1 = pod("ravenclaw", 0), pod("ravenclaw", 1), pod("slytherin", 0), pod("slytherin", 1)
    g0, g1 = pod("gryffindor", 0), pod("gryffindor", 1)
    return [
        Step("Should support an 'allow-ingress' policy for UDP protocol; ensure rule ordering is respected", [base],
             [Poke(r0, h0, "UDP", 53, True), Poke(r1, h0, "UDP", 5353, True)]),
        Step("Should support an 'allow-ingress' policy for UDP protocol at the specified port", [base],
             [Poke(g0, h1, "UDP", 53, True), Poke(g1, h1, "UDP", 5353, False)]),
        Step("Should support an 'deny-ingress' policy for UDP protocol; ensure rule ordering is respected", [swapped],
             [Poke(r0, h1, "UDP", 53, False), Poke(r1, h1, "UDP", 5353, False)]),
        Step("Should support a 'deny-ingress' policy for UDP protocol at the specified port", [swapped],
             [Poke(s0, h0, "UDP", 5353, False), Poke(s1, h0, "UDP", 53, True)]),
        Step("Should support an 'pass-ingress' policy for UDP protocol; ensure rule ordering is respected", [passed],
             [Poke(r0, h1, "UDP", 5353, True), Poke(r1, h1, "UDP", 53, True)]),
        Step("Should support a 'pass-ingress' policy for UDP protocol at the specified port", [port_pass],
             [Poke(s0, h0, "UDP", 5353, True), Poke(s1, h0, "UDP", 53, True)]),
    ]


def cnp_admin_tier_integration() -> list[Step]:
    """CNPAdminTierIntegration (admin-network-policy-standard-integration.go, base/api_integration/
    standard-anp-np-banp.yaml): Admin Pass hands over to NetworkPolicy, then to the Baseline."""
    slytherin = [{"namespaces": house_label("slytherin")}]
    admin = cnp("pass-example", "Admin", 10, {"namespaces": house_label("gryffindor")},
                ingress=[rule("deny-all-ingress-from-slytherin", "Deny", "from", slytherin)],
                egress=[rule("deny-all-egress-to-slytherin", "Deny", "to", slytherin)])
    network_policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-gress-from-to-slytherin-to-gryffindor", "namespace": NS + "gryffindor"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"namespaceSelector": house_label("slytherin")}]}],
                 "egress": [{"to": [{"namespaceSelector": house_label("slytherin")}]}]}}
    baseline = cnp("default", "Baseline", 10, {"namespaces": house_label("gryffindor")},
                   ingress=[rule("deny-all-ingress-from-slytherin", "Deny", "from", slytherin)],
                   egress=[rule("deny-all-egress-to-slytherin", "Deny", "to", slytherin)])
    pass_in = copy.deepcopy(admin)
    pass_in["spec"]["ingress"][0]["action"] = "Pass"
    pass_both = copy.deepcopy(pass_in)
    pass_both["spec"]["egress"][0]["action"] = "Pass"
    g0, g1, s0, s1 = pod("gryffindor", 0), pod("gryffindor", 1), pod("slytherin", 0), pod("slytherin", 1)
    return [
        Step("Should Deny traffic from slytherin to gryffindor respecting admin CNP",
             [admin, network_policy, baseline], [Poke(s0, g0, "TCP", 80, False), Poke(s1, g0, "TCP", 8080, False)]),
        Step("Should Deny traffic to slytherin from gryffindor respecting admin CNP",
             [admin, network_policy, baseline], [Poke(g0, s0, "TCP", 80, False), Poke(g1, s0, "TCP", 8080, False)]),
        Step("Should support a 'pass-ingress' policy for admin CNP and respect the match for network policy",
             [pass_in, network_policy, baseline], [Poke(s0, g0, "TCP", 80, True), Poke(s1, g0, "TCP", 8080, True)]),
        Step("Should support a 'pass-egress' policy for admin CNP and respect the match for network policy",
             [pass_both, network_policy, baseline], [Poke(g0, s0, "TCP", 80, True), Poke(g1, s0, "TCP", 8080, True)]),
        Step("Should support a 'pass-ingress' policy for admin CNP and respect the match for baseline cluster "
             "network policy", [pass_both, baseline],  # the NetworkPolicy deleted
             [Poke(s0, g0, "TCP", 80, False), Poke(s1, g0, "TCP", 8080, False)]),
        Step("Should support a 'pass-egress' policy for admin CNP and respect the match for baseline cluster "
             "network policy", [pass_both, baseline],
             [Poke(g0, s0, "TCP", 80, False), Poke(g1, s0, "TCP", 8080, False)]),
    ]


def cnp_admin_tier_priority_field() -> list[Step]:
    """CNPAdminTierPriorityField (admin-network-policy-standard-priority.go): a Pass at a
    lower priority number goes before a Deny, and the Baseline then accepts."""
    gry = {"pods": {"namespaceSelector": house_label("gryffindor"), "podSelector": house_label("gryffindor")}}
    sly = [house_pods("slytherin")]
    deny = cnp("priority-50-example", "Admin", 50, gry,
               ingress=[rule("deny-all-ingress-from-slytherin", "Deny", "from", sly)],
               egress=[rule("deny-all-egress-to-slytherin", "Deny", "to", sly)])
    passing = cnp("old-priority-60-new-priority-40-example", "Admin", 60, gry,
                  ingress=[rule("pass-all-ingress-from-slytherin", "Pass", "from", sly)],
                  egress=[rule("pass-all-egress-to-slytherin", "Pass", "to", sly)])
    baseline = cnp("default", "Baseline", 10, gry,
                   ingress=[rule("allow-all-ingress-from-slytherin", "Accept", "from", sly)],
                   egress=[rule("allow-all-egress-to-slytherin", "Accept", "to", sly)])
    moved = copy.deepcopy(passing)
    moved["spec"]["priority"] = 40
    g0, g1, s0, s1 = pod("gryffindor", 0), pod("gryffindor", 1), pod("slytherin", 0), pod("slytherin", 1)
    return [
        Step("Should Deny traffic from slytherin to gryffindor respecting admin CNP", [deny, passing, baseline],
             [Poke(s0, g0, "TCP", 80, False), Poke(s1, g0, "TCP", 8080, False)]),
        Step("Should Deny traffic to slytherin from gryffindor respecting admin CNP", [deny, passing, baseline],
             [Poke(g0, s0, "TCP", 80, False), Poke(g1, s0, "TCP", 8080, False)]),
        Step("Should respect admin CNP priority field; thus passing both ingress and egress traffic over to "
             "baseline CNP", [deny, moved, baseline],
             [Poke(s0, g0, "TCP", 80, True), Poke(s1, g0, "TCP", 8080, True),
              Poke(g0, s0, "TCP", 80, True), Poke(g1, s0, "TCP", 8080, True)]),
    ]


def cnp_admin_tier_egress_inline_cidr_peers() -> list[Step]:
    """CNPAdminTierEgressInlineCIDRPeers (admin-network-policy-standard-egress-inline-cidr-rules.go):
    networks match pod addresses; a namespace relabelled out of a pods peer falls to the Deny."""
    gry = {"pods": {"namespaceSelector": house_label("gryffindor"), "podSelector": house_label("gryffindor")}}
    base = cnp("inline-cidr-as-peers-example", "Admin", 85, gry, egress=[
        rule("allow-egress-to-slytherin", "Accept", "to", [house_pods("slytherin")]),
        rule("deny-egress-to-internet", "Deny", "to", [{"networks": ["0.0.0.0/0", "::/0"]}])])
    specific = copy.deepcopy(base)
    r0, h0 = INV.endpoint(pod("ravenclaw", 0)), INV.endpoint(pod("hufflepuff", 0))
    assert r0 is not None and h0 is not None
    specific["spec"]["egress"].insert(0, rule("allow-egress-to-specific-podIPs", "Accept", "to", [
        {"networks": [f"{r0.ips[0]}/32", f"{h0.ips[0]}/32"]}]))
    g1 = pod("gryffindor", 1)

    def all_protocols(server: str, allowed: bool) -> list[Poke]:
        return [Poke(g1, server, "TCP", 80, allowed), Poke(g1, server, "UDP", 53, allowed),
                Poke(g1, server, "SCTP", 9003, allowed)]

    test = "Should support a 'deny-egress' rule policy for egress-cidr-peer"
    relabelled = {NS + "slytherin": {"conformance-house": "denied-namespace-label"}}
    return [
        Step(test, [base], all_protocols(pod("ravenclaw", 0), False) + all_protocols(pod("hufflepuff", 0), False)
             + all_protocols(pod("slytherin", 0), True)),
        Step(test + " (slytherin relabelled)", [base], all_protocols(pod("slytherin", 0), False),
             namespace_labels=relabelled),
        Step(test + " (slytherin labelled back)", [base], all_protocols(pod("slytherin", 0), True)),
        Step("Should support an 'allow-egress' rule policy for egress-cidr-peer", [specific],
             all_protocols(pod("ravenclaw", 0), True) + all_protocols(pod("hufflepuff", 0), True)
             + all_protocols(pod("ravenclaw", 1), False) + all_protocols(pod("hufflepuff", 1), False)),
    ]


def cnp_admin_tier_named_ports() -> list[Step]:
    """CNPAdminTierEgressNamedPort and CNPAdminTierIngressNamedPort
    (admin-network-policy-experimental-{egress,ingress}-rules.go): destinationNamedPort."""
    egress = egress_tcp("Admin", 6, "egress-tcp")
    egress["spec"]["egress"][5]["protocols"] = [{"destinationNamedPort": "web"}]
    ingress = ingress_udp()
    ingress["spec"]["ingress"][5]["protocols"] = [{"destinationNamedPort": "dns"}]
    g0, g1, h1 = pod("gryffindor", 0), pod("gryffindor", 1), pod("hufflepuff", 1)
    return [
        Step("Should support an 'allow-egress' policy for named port", [egress],
             [Poke(g0, h1, "TCP", 80, True), Poke(g1, h1, "TCP", 8080, False)]),
        Step("Should support an 'allow-ingress' policy for named port", [ingress],
             [Poke(g0, h1, "UDP", 53, True), Poke(g1, h1, "UDP", 5353, False)]),
    ]


def cnp_admin_tier_egress_node_peers() -> list[Step]:
    """CNPAdminTierEgressNodePeers (admin-network-policy-experimental-egress-rules.go): nodes peers
    select node addresses (upstream pokes host-network pods; here node-1's address)."""
    gry = {"pods": {"namespaceSelector": house_label("gryffindor"), "podSelector": house_label("gryffindor")}}
    linux = {"matchLabels": {"kubernetes.io/os": "linux"}}
    policy = cnp("node-and-cidr-as-peers-example", "Admin", 75, gry, egress=[
        rule("allow-egress-to-30000-on-nodes", "Accept", "to", [{"nodes": linux}], [tcp(30000)]),
        rule("pass-egress-to-30002-on-nodes", "Pass", "to", [{"nodes": linux}], [udp(30002)]),
        rule("deny-egress-to-slytherin-and-nodes-and-internet", "Deny", "to",
             [house_pods("slytherin"), {"nodes": linux}, {"networks": ["0.0.0.0/0", "::/0"]}])])
    g1 = pod("gryffindor", 1)
    return [
        Step("Should support an 'allow-egress' rule policy for egress-node-peer", [policy],
             [Poke(g1, NODE_1, "TCP", 30000, True)]),
        Step("Should support a 'pass-egress' rule policy for egress-node-peer", [policy],
             [Poke(g1, NODE_1, "UDP", 30002, True)]),
        Step("Should support a 'deny-egress' rule policy for egress-node-peer", [policy],
             [Poke(g1, NODE_1, "TCP", 30001, False), Poke(g1, NODE_1, "UDP", 30004, False),
              Poke(g1, NODE_1, "SCTP", 30006, False)]),
    ]


TESTS: dict[str, Callable[[], list[Step]]] = {
    "CNPAdminTierEgressTCP": cnp_admin_tier_egress_tcp,
    "CNPBaselineTierEgressTCP": cnp_baseline_tier_egress_tcp,
    "CNPAdminTierIngressUDP": cnp_admin_tier_ingress_udp,
    "CNPAdminTierIntegration": cnp_admin_tier_integration,
    "CNPAdminTierPriorityField": cnp_admin_tier_priority_field,
    "CNPAdminTierEgressInlineCIDRPeers": cnp_admin_tier_egress_inline_cidr_peers,
    "CNPAdminTierNamedPorts": cnp_admin_tier_named_ports,
    "CNPAdminTierEgressNodePeers": cnp_admin_tier_egress_node_peers,
}


# -- checking ------------------------------------------------------------------------------------

def load(step: Step, tmp: Path) -> PolicySet:
    """The step's manifests through the file loader: callgate validates them as it would any file."""
    path = tmp / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(step.manifests, sort_keys=False))
    return load_policies(path)


def address(target: str) -> str:
    ep = INV.endpoint(target)
    return str(ep.ips[0]) if ep is not None else target


def model_failures(step: Step, policies: PolicySet) -> list[str]:
    inventory = step.inventory()
    ev = Evaluator(policies, inventory)
    compiler = Compiler(policies, inventory)
    ir = Interpreter([compiler.compile(node) for node in inventory.nodes()])
    out = []
    for p in step.pokes:
        src, dst = address(p.client), address(p.server)
        decision = ev.evaluate(src, dst, p.port, p.protocol)  # type: ignore[arg-type]
        if decision.allowed != p.allowed:
            out.append(f"evaluator: {p} -> {decision.allowed}: {decision.reasons()}")
        if ir.allowed(src, dst, p.port, p.protocol) != p.allowed:
            out.append(f"compiled IR: {p}")
    return out


def all_steps() -> Iterator[tuple[str, Step]]:
    for name, make in TESTS.items():
        for i, step in enumerate(make()):
            yield f"{name}[{i}]", step


STEPS = list(all_steps())


@pytest.mark.parametrize(("name", "step"), STEPS, ids=[n for n, _ in STEPS])
def test_upstream_conformance_on_the_model(name: str, step: Step, tmp_path: Path) -> None:
    assert model_failures(step, load(step, tmp_path)) == [], step.test


def test_the_restatement_is_not_trivial() -> None:
    verdicts = {p.allowed for _, step in STEPS for p in step.pokes}
    assert verdicts == {True, False}
    assert len(STEPS) >= 30 and sum(len(s.pokes) for _, s in STEPS) >= 80


# -- on the real kernel ----------------------------------------------------------------------------

BACKENDS = ("nft", "iptables")
LAB_PROTOCOLS = ("TCP", "UDP")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("cgcnp").running(INV) as running:
        yield running


@pytest.mark.kernel
@pytest.mark.parametrize("backend", BACKENDS)
def test_upstream_conformance_in_the_lab(lab: Lab, backend: str, tmp_path: Path) -> None:
    """Every step applied on both lab nodes, every TCP/UDP poke between pods sent for real."""
    failures: list[str] = []
    try:
        for name, step in STEPS:
            pokes = [p for p in step.pokes if p.protocol in LAB_PROTOCOLS and INV.endpoint(p.server) is not None]
            if not pokes:
                continue
            inventory = step.inventory()
            compiler = Compiler(load(step, tmp_path), inventory)
            for node in inventory.nodes():
                get_enforcer(backend, netns=lab.node_netns(node)).apply(compiler.compile(node))
            observed = probe_matrix(lab, inventory, pairs={(p.client, p.server) for p in pokes},
                                    ports={(p.port, p.protocol) for p in pokes}, families=(4,), timeout=0.5)
            for p in pokes:
                got = observed[(p.client, p.server, 4, p.port, p.protocol)]
                if got != p.allowed:
                    failures.append(f"{name} {step.test}: {p} observed {got}")
    finally:
        for node in INV.nodes():
            get_enforcer(backend, netns=lab.node_netns(node)).remove()
    assert failures == []

