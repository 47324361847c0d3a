"""Hypothesis strategies for random inventories and policy sets.

Small label and port vocabularies on purpose: random selectors then actually
select things, named ports collide across pods with different numbers, and
ipBlocks overlap pod addresses — the cases where implementations go wrong.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from callgate.policy.model import (
    NAMESPACE_NAME_LABEL,
    Direction,
    Endpoint,
    Inventory,
    IPBlock,
    LabelSelector,
    NamedPort,
    Namespace,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortSpec,
    Requirement,
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
    plain = [*NAMESPACES, *KEYS, *VALUES, *(f"p{i}" for i in range(8)), *(f"pol{i}" for i in range(6))]
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
    return Inventory(namespaces, endpoints), PolicySet(renamed)
