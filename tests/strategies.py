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
