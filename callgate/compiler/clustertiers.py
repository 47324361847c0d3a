"""ClusterNetworkPolicy rules lowered to what the chain builder knows: peers and ports.

A cluster rule's peers become NetworkPolicy-model :class:`Peer` objects, so the
compiler's address sets, named-port sets and the incremental compiler's
reference counting work on them unchanged:

* ``namespaces`` / ``pods`` peers already are selector Peers;
* ``networks`` become ipBlock Peers (no excepts), one per CIDR;
* ``nodes`` become ipBlock Peers of the matching nodes' addresses (/32, /128),
  looked up in the inventory's nodes when compiling (a node change is an
  inventory change: a full compile);
* an unresolvable peer (domainNames; a peer kind callgate does not know) fails
  closed: an Accept rule loses it (and matches nothing if nothing is left), a
  Deny or Pass rule becomes a Deny of every peer on the rule's ports.

The evaluator matches the same peers directly (node labels, CIDR containment);
property tests hold the compiled chains equal to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from callgate.compiler.ir import Origin, Verdict
from callgate.policy.model import (
    Action,
    ClusterPolicy,
    ClusterRule,
    Direction,
    Endpoint,
    Inventory,
    IPBlock,
    Namespace,
    Peer,
    PortSpec,
    Tier,
)

VERDICTS = {Action.ACCEPT: Verdict.ALLOW, Action.DENY: Verdict.DENY, Action.PASS: Verdict.PASS}
# Chain name prefixes per tier, after "in"/"out": the NetworkPolicy tier keeps the
# plain "in_"/"out_" names it always had.
TIER_SUFFIX = {Tier.ADMIN: "a", Tier.BASELINE: "b"}


@dataclass(frozen=True, slots=True)
class LoweredRule:
    """A cluster rule as the chain builder takes it. ``peers`` None: every peer."""

    origin: Origin
    verdict: Verdict
    peers: frozenset[Peer] | None
    ports: tuple[PortSpec, ...]


def cluster_origin(policy: ClusterPolicy, direction: Direction, index: int) -> Origin:
    rule = policy.rules(direction)[index]
    return Origin(policy.display, direction.value.lower(), index, policy.tier.value, policy.priority, rule.name)


def node_peers(rule: ClusterRule, inventory: Inventory) -> list[Peer]:
    """The node addresses a rule's ``nodes`` peers stand for, as single-address ipBlocks."""
    out: list[Peer] = []
    for peer in rule.peers:
        if peer.nodes is not None:
            for ip in inventory.node_addresses(peer.nodes):
                out.append(Peer(ip_block=IPBlock(ipaddress.ip_network(ip))))
    return out


def lower_rule(policy: ClusterPolicy, direction: Direction, index: int, inventory: Inventory) -> LoweredRule | None:
    """Rule ``index`` of ``policy``'s ``direction`` for the chain builder; None when it
    can match nothing (an Accept rule whose peers are all unresolvable, or
    ``nodes`` peers that select no node with an address)."""
    rule = policy.rules(direction)[index]
    origin = cluster_origin(policy, direction, index)
    if rule.action is not Action.ACCEPT and any(not p.resolvable for p in rule.peers):
        return LoweredRule(origin, Verdict.DENY, None, rule.ports)  # fail closed: deny every peer
    peers: set[Peer] = set()
    for peer in rule.peers:
        if peer.selector is not None:
            peers.add(peer.selector)
        peers.update(Peer(ip_block=block) for block in peer.networks)
    peers.update(node_peers(rule, inventory))
    if not peers:
        return None
    return LoweredRule(origin, VERDICTS[rule.action], frozenset(peers), rule.ports)


def lower_policy(policy: ClusterPolicy, direction: Direction, inventory: Inventory) -> list[LoweredRule]:
    found = (lower_rule(policy, direction, i, inventory) for i in range(len(policy.rules(direction))))
    return [r for r in found if r is not None]


def subject_selects(policy: ClusterPolicy, ep: Endpoint, namespaces: Mapping[str, Namespace]) -> bool:
    """Does ``policy``'s subject hold ``ep``? (For callers without a resolver.)"""
    ns = namespaces.get(ep.namespace)
    selector = policy.subject.namespace_selector
    if ns is None or selector is None or not selector.matches(ns.labels):
        return False
    return policy.subject.pod_selector is None or policy.subject.pod_selector.matches(ep.labels)
