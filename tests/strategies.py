"""Hypothesis strategies for random inventories and policy sets.

Small label and port vocabularies on purpose: random selectors then actually
select things, named ports collide across pods with different numbers, and
ipBlocks overlap pod addresses — the cases where implementations go wrong.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from hypothesis import strategies as st

from callgate.policy.model import (
    NAMESPACE_NAME_LABEL,
    Action,
    ClusterPeer,
    ClusterPolicy,
    ClusterRule,
    Direction,
    Endpoint,
    Inventory,
    IPBlock,
    LabelSelector,
    NamedPort,
    Namespace,
    Node,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortSpec,
    Requirement,
    Tier,
)

NAMESPACES = ("x", "y", "z")
KEYS = ("app", "tier")
VALUES = ("a", "b", "c")
PORT_NAMES = ("web", "dns")
PORTS = (80, 81, 53)

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)


@st.composite
def selectors(draw: Any) -> LabelSelector:
    match_labels = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=1))
    exprs = []
    for _ in range(draw(st.integers(0, 1))):
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        values = frozenset(draw(st.sets(st.sampled_from(VALUES), min_size=1, max_size=2))) if op in ("In", "NotIn") else frozenset()
        exprs.append(Requirement(draw(st.sampled_from(KEYS)), op, values))
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(exprs))


@st.composite
def inventories(draw: Any) -> Inventory:
    namespaces = {}
    for ns in NAMESPACES:
        labels = draw(labels_st)
        labels[NAMESPACE_NAME_LABEL] = ns
        namespaces[ns] = Namespace(ns, labels)
    endpoints = []
    count = draw(st.integers(2, 7))
    for i in range(count):
        ports = []
        for name in PORT_NAMES:
            if draw(st.booleans()):
                ports.append(NamedPort(name, draw(st.sampled_from(PORTS)), draw(st.sampled_from(["TCP", "UDP"]))))
        endpoints.append(Endpoint(
            name=f"p{i}", namespace=draw(st.sampled_from(NAMESPACES)), labels=draw(labels_st),
            node=draw(st.sampled_from(["n1", "n2"])),
            ips=(ipaddress.ip_address(f"198.18.0.{10 + i}"), ipaddress.ip_address(f"fd00::{10 + i:x}")),
            interface=f"cgp{i}", ports=tuple(ports)))
    return Inventory(namespaces, tuple(endpoints))


ip_blocks = st.sampled_from([
    IPBlock(ipaddress.ip_network("198.18.0.0/24")),
    IPBlock(ipaddress.ip_network("198.18.0.0/28"), (ipaddress.ip_network("198.18.0.12/30"),)),
    IPBlock(ipaddress.ip_network("198.18.0.8/29")),
    IPBlock(ipaddress.ip_network("fd00::/120"), (ipaddress.ip_network("fd00::10/126"),)),
    IPBlock(ipaddress.ip_network("0.0.0.0/0"), (ipaddress.ip_network("198.18.0.10/32"),)),
])


@st.composite
def peers(draw: Any, namespace: str) -> Peer:
    kind = draw(st.sampled_from(["pod", "ns", "both", "ip"]))
    if kind == "ip":
        return Peer(ip_block=draw(ip_blocks))
    if kind == "pod":
        return Peer(pod_selector=draw(selectors()), namespace=namespace)
    if kind == "ns":
        return Peer(namespace_selector=draw(selectors()))
    return Peer(pod_selector=draw(selectors()), namespace_selector=draw(selectors()))


@st.composite
def port_specs(draw: Any) -> PortSpec:
    protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    kind = draw(st.sampled_from(["number", "range", "named", "all"]))
    if kind == "number":
        return PortSpec(protocol, draw(st.sampled_from(PORTS)))
    if kind == "range":
        return PortSpec(protocol, 79, draw(st.sampled_from([80, 81])))
    if kind == "named":
        return PortSpec(protocol, draw(st.sampled_from(PORT_NAMES)))
    return PortSpec(protocol, None)


@st.composite
def rules(draw: Any, namespace: str) -> PolicyRule:
    return PolicyRule(tuple(draw(st.lists(peers(namespace), max_size=2))), tuple(draw(st.lists(port_specs(), max_size=2))))


@st.composite
def policy_sets(draw: Any) -> PolicySet:
    policies = []
    for i in range(draw(st.integers(0, 5))):
        ns = draw(st.sampled_from(NAMESPACES))
        types = draw(st.sampled_from([(Direction.INGRESS,), (Direction.EGRESS,), (Direction.INGRESS, Direction.EGRESS)]))
        policies.append(Policy(
            namespace=ns, name=f"pol{i}", pod_selector=draw(selectors()), policy_types=types,
            ingress=tuple(draw(st.lists(rules(ns), max_size=3))),
            egress=tuple(draw(st.lists(rules(ns), max_size=3)))))
    return PolicySet(policies)


# -- hostile-but-valid names --------------------------------------------------------
# The model takes any string; what reaches a kernel from names is comments, notes in
# the text form and interface names. These rename a generated model one to one, so
# it means exactly what it did and only the strings change.

# Hostile to anything that writes names out: quotes, backslashes, unicode, control
# characters, nft and shell syntax, 300 characters. Free only of the separators of a
# selector's canonical form (',', '=', ' ', '!', parentheses), which would make two
# different selectors one.
HOSTILE_NAMES = (
    'a"b', "a'b", "a\\b", "\\", "\\x41", 'x" accept; drop "', "é", "名前", "👍", "\u202eevil", "line\nbreak",
    "cr\rx", "tab\tx", "nul\x00x", "\x1b[31m", "#x", "x;y", "{x}", "$(id)", "`id`", "@x", "*", "x" * 300,
    "counter", "accept", "-A", "--comment", "[/]",
)
# Interface names as callgate takes them (policy.validation.interface_name: files,
# Pod annotations and the agent's route look-up all check it), the odd ones. Not
# those a backend refuses with a clear message before the kernel (tests/test_hostile_names.py):
# a leading '@' (nft reads a set) and a trailing '+' (iptables reads a wildcard).
HOSTILE_INTERFACES = ("-", "_", "...", "-x", "+x", "x@", "x" * 15, "a.b", "a-b_c", "a@b+c", "A1", "0", "9z-", "a+b", ".x")


@st.composite
def renamings(draw: Any) -> dict[str, str]:
    """Plain name -> hostile name for every name the strategies above use (one to one)."""
    plain = [*NAMESPACES, *KEYS, *VALUES, *(f"p{i}" for i in range(8)), *(f"pol{i}" for i in range(6)),
             *(f"cnp{i}" for i in range(4)), "r"]
    names = draw(st.lists(st.sampled_from(HOSTILE_NAMES), min_size=len(plain), max_size=len(plain)))
    mapping = {}
    for i, (old, new) in enumerate(zip(plain, names, strict=True)):
        mapping[old] = f"{new}{i}"  # unique, still hostile
    interfaces = draw(st.permutations(HOSTILE_INTERFACES))
    mapping.update({f"cgp{i}": interfaces[i] for i in range(8)})
    return mapping


def _selector(sel: LabelSelector, names: dict[str, str]) -> LabelSelector:
    return LabelSelector(
        tuple(sorted((names.get(k, k), names.get(v, v)) for k, v in sel.match_labels)),
        tuple(Requirement(names.get(r.key, r.key), r.operator, frozenset(names.get(v, v) for v in r.values))
              for r in sel.match_expressions))


def _labels(labels: Any, names: dict[str, str]) -> dict[str, str]:
    return {names.get(k, k): names.get(v, v) for k, v in labels.items()}


def rename(inventory: Inventory, policies: PolicySet, names: dict[str, str]) -> tuple[Inventory, PolicySet]:
    """``inventory`` and ``policies`` with every name replaced through ``names``."""
    namespaces = {}
    for ns in inventory.namespaces.values():
        labels = _labels(ns.labels, names)
        labels[NAMESPACE_NAME_LABEL] = names.get(ns.name, ns.name)
        namespaces[names.get(ns.name, ns.name)] = Namespace(names.get(ns.name, ns.name), labels)
    endpoints = tuple(
        Endpoint(name=names.get(ep.name, ep.name), namespace=names.get(ep.namespace, ep.namespace),
                 labels=_labels(ep.labels, names), node=ep.node, ips=ep.ips,
                 interface=names.get(ep.interface, ep.interface) if ep.interface else None, ports=ep.ports)
        for ep in inventory.endpoints)

    def peer(p: Peer) -> Peer:
        return Peer(pod_selector=_selector(p.pod_selector, names) if p.pod_selector else None,
                    namespace_selector=_selector(p.namespace_selector, names) if p.namespace_selector else None,
                    namespace=names.get(p.namespace, p.namespace) if p.namespace else None, ip_block=p.ip_block)

    def rule(r: PolicyRule) -> PolicyRule:
        return PolicyRule(tuple(peer(p) for p in r.peers), r.ports)

    renamed = tuple(
        Policy(namespace=names.get(p.namespace, p.namespace), name=names.get(p.name, p.name),
               pod_selector=_selector(p.pod_selector, names), policy_types=p.policy_types,
               ingress=tuple(rule(r) for r in p.ingress), egress=tuple(rule(r) for r in p.egress), kind=p.kind)
        for p in policies.policies)

    def cluster_peer(p: ClusterPeer) -> ClusterPeer:
        return dataclasses.replace(p, selector=peer(p.selector) if p.selector else None,
                                   nodes=_selector(p.nodes, names) if p.nodes is not None else None)

    def cluster_rule(r: ClusterRule) -> ClusterRule:
        return dataclasses.replace(r, peers=tuple(cluster_peer(p) for p in r.peers), name=names.get(r.name, r.name))

    cluster = tuple(
        dataclasses.replace(c, name=names.get(c.name, c.name), subject=peer(c.subject),
                            ingress=tuple(cluster_rule(r) for r in c.ingress),
                            egress=tuple(cluster_rule(r) for r in c.egress))
        for c in policies.cluster)
    nodes = {name: dataclasses.replace(node, labels=_labels(node.labels, names))
             for name, node in inventory.node_info.items()}
    return Inventory(namespaces, endpoints, nodes), PolicySet(renamed, cluster)


# -- the cluster tiers ----------------------------------------------------------------

NODE_ADDRESSES = {"n1": ("198.18.0.1", "fd00::1"), "n2": ("198.18.0.2",)}


@st.composite
def inventories_with_nodes(draw: Any) -> Inventory:
    """An inventory that also knows its nodes (labels and addresses), for ``nodes`` peers."""
    inventory = draw(inventories())
    nodes = {name: Node(name, draw(labels_st), tuple(ipaddress.ip_address(a) for a in addresses))
             for name, addresses in NODE_ADDRESSES.items()}
    return Inventory(inventory.namespaces, inventory.endpoints, nodes)


networks = st.sampled_from([
    (IPBlock(ipaddress.ip_network("198.18.0.0/24")),),
    (IPBlock(ipaddress.ip_network("198.18.0.8/30")), IPBlock(ipaddress.ip_network("fd00::/120"))),
    (IPBlock(ipaddress.ip_network("0.0.0.0/0")), IPBlock(ipaddress.ip_network("::/0"))),
    (IPBlock(ipaddress.ip_network("198.18.0.11/32")),),
    (IPBlock(ipaddress.ip_network("198.18.0.0/31")),),  # a node address, and no pod's
])


@st.composite
def cluster_peers(draw: Any, egress: bool) -> ClusterPeer:
    kinds = ["namespaces", "pods"] + (["networks", "nodes", "domainNames"] if egress else []) + ["unknown"]
    kind = draw(st.sampled_from(kinds))
    if kind == "namespaces":
        return ClusterPeer(selector=Peer(namespace_selector=draw(selectors())))
    if kind == "pods":
        return ClusterPeer(selector=Peer(pod_selector=draw(selectors()), namespace_selector=draw(selectors())))
    if kind == "networks":
        return ClusterPeer(networks=draw(networks))
    if kind == "nodes":
        return ClusterPeer(nodes=draw(selectors()))
    if kind == "domainNames":
        return ClusterPeer(domain_names=("example.com",))
    return ClusterPeer()  # a peer of a kind callgate does not know


@st.composite
def cluster_ports(draw: Any, named: bool) -> tuple[PortSpec, ...]:
    kind = draw(st.sampled_from(["none", "number", "range", "named"] if named else ["none", "number", "range"]))
    protocol = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
    if kind == "none":
        return ()
    if kind == "number":
        return (PortSpec(protocol, draw(st.sampled_from(PORTS))),)
    if kind == "range":
        return (PortSpec(protocol, 79, 81),)
    return tuple(PortSpec(p, draw(st.sampled_from(PORT_NAMES))) for p in ("TCP", "UDP", "SCTP"))


@st.composite
def cluster_rules(draw: Any, egress: bool, tier: Tier) -> ClusterRule:
    peers = tuple(draw(st.lists(cluster_peers(egress), min_size=1, max_size=2)))
    # The API refuses named ports beside networks/nodes/domainNames peers.
    named = not any(p.networks or p.nodes is not None or p.domain_names for p in peers)
    action = draw(st.sampled_from([Action.ACCEPT, Action.DENY, Action.PASS]))
    return ClusterRule(action, peers, draw(cluster_ports(named)), draw(st.sampled_from(["", "r"])))


@st.composite
def cluster_policies(draw: Any, index: int) -> ClusterPolicy:
    tier = draw(st.sampled_from([Tier.ADMIN, Tier.BASELINE]))
    if draw(st.booleans()):
        subject = Peer(namespace_selector=draw(selectors()))
    else:
        subject = Peer(pod_selector=draw(selectors()), namespace_selector=draw(selectors()))
    return ClusterPolicy(
        name=f"cnp{index}", tier=tier, priority=draw(st.integers(0, 3)), subject=subject,
        ingress=tuple(draw(st.lists(cluster_rules(False, tier), max_size=3))),
        egress=tuple(draw(st.lists(cluster_rules(True, tier), max_size=3))))


@st.composite
def tiered_policy_sets(draw: Any) -> PolicySet:
    """NetworkPolicies with ClusterNetworkPolicies of both tiers around them."""
    base = draw(policy_sets())
    cluster = [draw(cluster_policies(i)) for i in range(draw(st.integers(1, 4)))]
    return PolicySet(base.policies, tuple(cluster))
