"""Checks of ClusterNetworkPolicies (and the v1alpha1 kinds read as them).

Without an inventory: rules shadowed by an earlier catch-all (CG113), ``/0``
networks (CG114), Pass in the Baseline tier (CG115), peers callgate cannot
enforce and that therefore fail closed (CG116). With one: subjects and peers
that select nothing (CG101, CG102), networks that hold pod addresses (CG114,
counted), and two policies of one tier and priority that decide a connection
differently (CG112), exactly over endpoint classes and port segments.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from callgate.analysis.connectivity import Connectivity, Partition, ProtocolPortRange, family_ip
from callgate.analysis.lint.linter import Item, Linter
from callgate.policy.model import (
    Action,
    ClusterPeer,
    ClusterPolicy,
    ClusterRule,
    Direction,
    Peer,
    PolicySet,
    PortSpec,
    Tier,
)

DIRECTIONS = ((Direction.INGRESS, "ingress", "from"), (Direction.EGRESS, "egress", "to"))


def _cluster(item: Item) -> ClusterPolicy:
    assert item.cluster is not None
    return item.cluster


def _rule_label(rule: ClusterRule, index: int, direction: Direction) -> str:
    name = f" {rule.name!r}" if rule.name else ""
    return f"{direction.value.lower()} rule {index}{name}"


def check(linter: Linter, items: list[Item]) -> None:
    """The checks that need no inventory."""
    for item in items:
        pol = _cluster(item)
        for direction, key, peers_key in DIRECTIONS:
            for i, rule in enumerate(pol.rules(direction)):
                if pol.tier is Tier.BASELINE and rule.action is Action.PASS:
                    linter.report("CG115", f"{_rule_label(rule, i, direction)} passes in the Baseline tier: after "
                                  "it there is only the default, so this allows the traffic (and skips the "
                                  "Baseline rules after it)", item, ("spec", key, i, "action"),
                                  hint="write Accept if allowing is meant, or Deny")
                for j, peer in enumerate(rule.peers):
                    if not peer.resolvable:
                        _unresolvable(linter, item, rule, (i, j), direction, key, peers_key, peer)
                if linter.inventory is None:
                    _broad_networks(linter, item, pol, direction, i)
    _shadowed(linter, items)


def _unresolvable(linter: Linter, item: Item, rule: ClusterRule, at: tuple[int, int], direction: Direction,
                  key: str, peers_key: str, peer: ClusterPeer) -> None:
    what = "domainNames" if peer.domain_names else "a peer with no field callgate knows"
    if rule.action is Action.ACCEPT:
        effect = "this Accept rule matches nothing through it"
    else:
        effect = f"this {rule.action.value} rule becomes \"deny all\" (every peer, on its ports)"
    i, j = at
    linter.report("CG116", f"{_rule_label(rule, i, direction)}: callgate cannot enforce {what} (it filters by "
                  f"address in the kernel), so the peer fails closed: {effect}", item,
                  ("spec", key, i, peers_key, j),
                  hint="use networks with the addresses meant" if peer.domain_names
                  else "upgrade callgate, or rewrite the peer with namespaces, pods or networks")


# -- CG114: networks over pod addresses ----------------------------------------------------


def _pods_decided_before(pol: ClusterPolicy, direction: Direction, index: int) -> bool:
    """Does an earlier rule of the same policy take every pod on all of this rule's ports?"""
    rule = pol.rules(direction)[index]
    return any(_all_pods(e) and _ports_cover(e.ports, rule.ports) for e in pol.rules(direction)[:index])


def _network_peers(pol: ClusterPolicy, direction: Direction, index: int) -> Iterator[tuple[int, ClusterPeer]]:
    rule = pol.rules(direction)[index]
    if rule.action is Action.ACCEPT or not any(not p.resolvable for p in rule.peers):
        for j, peer in enumerate(rule.peers):
            if peer.networks and not _pods_decided_before(pol, direction, index):
                yield j, peer


def _broad_networks(linter: Linter, item: Item, pol: ClusterPolicy, direction: Direction, index: int) -> None:
    rule = pol.rules(direction)[index]
    for j, peer in _network_peers(pol, direction, index):
        wide = [str(b.cidr) for b in peer.networks if b.cidr.prefixlen == 0]
        if wide:
            linter.report("CG114", f"{_rule_label(rule, index, direction)}: networks {', '.join(wide)} hold "
                          f"every pod's address, so this {rule.action.value} applies to pod traffic too", item,
                          ("spec", "egress", index, "to", j, "networks"),
                          hint="put a rule for pods (e.g. Pass to namespaces: {}) before it if pods are not meant")


def _counted_networks(linter: Linter, item: Item, pol: ClusterPolicy) -> None:
    inv = linter.inventory
    assert inv is not None
    for index, rule in enumerate(pol.egress):
        for j, peer in _network_peers(pol, Direction.EGRESS, index):
            inside = sorted(ep.key for ep in inv.endpoints if any(b.contains(ip) for b in peer.networks
                                                                   for ip in ep.ips))
            if inside:
                example = ", ".join(inside[:3]) + (", ..." if len(inside) > 3 else "")
                linter.report("CG114", f"{_rule_label(rule, index, Direction.EGRESS)}: networks "
                              f"{', '.join(str(b.cidr) for b in peer.networks)} hold the addresses of "
                              f"{len(inside)} pod(s) ({example}), so this {rule.action.value} applies to them too",
                              item, ("spec", "egress", index, "to", j, "networks"),
                              hint="put a rule for pods (e.g. Pass to namespaces: {}) before it if pods are "
                              "not meant")


# -- CG113: shadowed rules -------------------------------------------------------------------


def _everything(selector_peer: Peer) -> bool:
    ns, pods = selector_peer.namespace_selector, selector_peer.pod_selector
    return ns is not None and ns.is_empty and (pods is None or pods.is_empty)


def _all_pods(rule: ClusterRule) -> bool:
    return any(p.selector is not None and _everything(p.selector) for p in rule.peers)


def _all_addresses(rule: ClusterRule) -> bool:
    versions = {b.cidr.version for p in rule.peers for b in p.networks if b.cidr.prefixlen == 0}
    return versions == {4, 6}


def _deny_all(rule: ClusterRule) -> bool:
    return rule.action is not Action.ACCEPT and any(not p.resolvable for p in rule.peers)


def _catch_all(rule: ClusterRule) -> bool:
    return _deny_all(rule) or _all_addresses(rule) or _all_pods(rule)


def _peers_covered(earlier: ClusterRule, later: ClusterRule, direction: Direction) -> bool:
    """Does the catch-all ``earlier`` match every peer ``later`` can match?"""
    if _deny_all(earlier) or _all_addresses(earlier):
        return True
    if _deny_all(later):
        return False  # it denies addresses outside the cluster too
    for peer in later.peers:
        if not peer.resolvable:
            continue  # an Accept: matches nothing through it
        if peer.selector is None and direction is Direction.EGRESS:
            return False  # networks and nodes reach beyond the pods
    return _all_pods(earlier)


def _port_covers(big: PortSpec, small: PortSpec) -> bool:
    if big.protocol != small.protocol:
        return False
    if big.port is None:
        return True
    if isinstance(big.port, str) or isinstance(small.port, str) or small.port is None:
        return big.port == small.port
    return big.port <= small.port and (small.end_port or small.port) <= (big.end_port or big.port)


def _ports_cover(big: tuple[PortSpec, ...], small: tuple[PortSpec, ...]) -> bool:
    if not big:
        return True
    return bool(small) and all(any(_port_covers(b, s) for b in big) for s in small)


def _subject_covers(earlier: ClusterPolicy, later: ClusterPolicy) -> bool:
    return earlier.subject == later.subject or _everything(earlier.subject)


def _shadowed(linter: Linter, items: list[Item]) -> None:
    for item in items:
        pol = _cluster(item)
        earlier_policies = [other for other in items if _cluster(other).tier is pol.tier
                            and _cluster(other).priority < pol.priority and _subject_covers(_cluster(other), pol)]
        for direction, key, _ in DIRECTIONS:
            for i, rule in enumerate(pol.rules(direction)):
                if rule.action is Action.ACCEPT and not any(p.resolvable for p in rule.peers):
                    continue  # matches nothing at all: CG116 says why
                why = _shadowing(pol, direction, i, rule, earlier_policies)
                if why is not None:
                    linter.report("CG113", f"{_rule_label(rule, i, direction)} can never match: {why} takes all "
                                  "of its traffic first", item, ("spec", key, i),
                                  hint="delete the rule, or move it before the catch-all")


def _shadowing(pol: ClusterPolicy, direction: Direction, index: int, rule: ClusterRule,
               earlier_policies: list[Item]) -> str | None:
    for j, earlier in enumerate(pol.rules(direction)[:index]):
        if _catch_all(earlier) and _ports_cover(earlier.ports, rule.ports) and _peers_covered(earlier, rule,
                                                                                                 direction):
            return _rule_label(earlier, j, direction)
    for other in earlier_policies:
        opol = _cluster(other)
        for j, earlier in enumerate(opol.rules(direction)):
            if _catch_all(earlier) and _ports_cover(earlier.ports, rule.ports) and _peers_covered(
                    earlier, rule, direction):
                return f"{opol.display} (priority {opol.priority}) {_rule_label(earlier, j, direction)}"
    return None


# -- with an inventory -------------------------------------------------------------------------


def check_inventory(linter: Linter, items: list[Item]) -> None:
    """The checks that need an inventory."""
    inv = linter.inventory
    assert inv is not None
    resolver = linter.resolver
    assert resolver is not None
    for item in items:
        pol = _cluster(item)
        if not resolver.peer_endpoints(pol.subject):
            linter.report("CG101", "the subject selects no pod of the inventory", item, ("spec", "subject"),
                          hint="check the namespace and pod selectors against the inventory's labels")
        for direction, key, peers_key in DIRECTIONS:
            for i, rule in enumerate(pol.rules(direction)):
                for j, peer in enumerate(rule.peers):
                    path = ("spec", key, i, peers_key, j)
                    if peer.selector is not None and not resolver.peer_endpoints(peer.selector):
                        linter.report("CG102", f"{_rule_label(rule, i, direction)}: {peer.canonical()} selects "
                                      "no pod of the inventory", item, path,
                                      hint="check the label keys and values against the inventory's pods")
                    elif peer.nodes is not None and not inv.node_addresses(peer.nodes):
                        where = ("the inventory lists no nodes (add a nodes: section, or v1 Node objects)"
                                 if not inv.node_info else "no node of the inventory with an address matches it")
                        linter.report("CG102", f"{_rule_label(rule, i, direction)}: nodes "
                                      f"{peer.nodes.canonical()} selects no node address: {where}", item, path)
        _counted_networks(linter, item, pol)
    _overlaps(linter, items)


@dataclass(frozen=True)
class _Outcome:
    """One policy's first-match result per peer class, as bit sets."""

    accepted: int
    denied: int
    passed: int

    def conflict(self, other: _Outcome) -> int:
        return ((self.accepted & (other.denied | other.passed)) | (self.denied & (other.accepted | other.passed))
                | (self.passed & (other.accepted | other.denied)))


def _outcome(conn: Connectivity, pol: ClusterPolicy, direction: Direction, c: int, seg: ProtocolPortRange) -> _Outcome:
    accepted = denied = passed = 0
    remaining = conn.all
    for rule in pol.rules(direction):
        action, bits = conn.cluster_rule_bits(rule, direction, c, seg.protocol, seg.lo)
        bits &= remaining
        if action is Action.ACCEPT:
            accepted |= bits
        elif action is Action.DENY:
            denied |= bits
        else:
            passed |= bits
        remaining &= ~bits
    return _Outcome(accepted, denied, passed)


def _overlaps(linter: Linter, items: list[Item]) -> None:
    inv = linter.inventory
    assert inv is not None
    by_level: dict[tuple[Tier, int], list[Item]] = {}
    for item in items:
        by_level.setdefault((_cluster(item).tier, _cluster(item).priority), []).append(item)
    groups = [sorted(g, key=lambda i: _cluster(i).precedence) for g in by_level.values() if len(g) > 1]
    if not groups:
        return
    policies = PolicySet(cluster=tuple(_cluster(i) for g in groups for i in g))
    conns = [Connectivity(Partition(inv, [policies], family, linter.resolver), policies)
             for family in (4, 6) if any(family_ip(e, family) for e in inv.endpoints)]
    for group in groups:
        for k, later in enumerate(group):
            for first in group[:k]:
                example = _first_conflict(conns, _cluster(first), _cluster(later))
                if example is not None:
                    a = _cluster(first)
                    linter.report("CG112", f"{a.display} and this policy are both {a.tier.value} tier priority "
                                  f"{a.priority} and decide some connections differently (e.g. {example}); "
                                  f"callgate applies {a.display} first, another implementation may not", later,
                                  ("spec", "priority"), hint="give the two policies different priorities")


def _first_conflict(conns: list[Connectivity], a: ClusterPolicy, b: ClusterPolicy) -> str | None:
    for conn in conns:
        part = conn.partition
        both = [c for c in range(part.size) if a in conn.cluster_subjects(c, a.tier)
                and b in conn.cluster_subjects(c, b.tier)]
        for c in both:
            for direction in (Direction.INGRESS, Direction.EGRESS):
                if not a.rules(direction) or not b.rules(direction):
                    continue
                for seg in part.segments():
                    bits = _outcome(conn, a, direction, c, seg).conflict(_outcome(conn, b, direction, c, seg))
                    if bits:
                        peer = part.rep((bits & -bits).bit_length() - 1).key
                        side = "from" if direction is Direction.INGRESS else "to"
                        return (f"{direction.value.lower()} of {part.rep(c).key} {side} {peer} on "
                                f"{seg.text()}")
    return None

