"""Redundancy: rules that allow nothing other rules do not (CG107), and policies that
change no verdict (CG108).

Two ways to know. Over an inventory, :func:`exact` compares what rules allow
between endpoint classes and port segments, exactly. Without one (or for rules
whose ipBlocks reach addresses outside the inventory) :func:`syntactic` compares
rules by what they say: the same or a wider peer and port list. The exact check
runs first and says what it reported, so no rule is reported twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from callgate.analysis.connectivity import (
    Connectivity,
    Partition,
    ProtocolPortRange,
    families_alike,
    families_present,
    second_family_forked,
)
from callgate.analysis.lint.linter import Item, Linter
from callgate.forked import Forked
from callgate.policy.model import (
    ClusterPolicy,
    Direction,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortSpec,
    Tier,
)
from callgate.policy.positions import FieldPath

# What the exact check reported: (id(item), None, 0) for a whole policy,
# (id(item), direction, rule index) for one rule.
Reported = set[tuple[int, Direction | None, int]]


@dataclass(frozen=True)
class _Rule:
    """A rule of a group with its peers and ports as sets, made once: comparing rules
    pairwise hashed every peer (selectors inside) on every comparison."""

    item: Item
    index: int
    peers: frozenset[Peer]
    ports: frozenset[PortSpec]

    def subsumes(self, other: _Rule) -> bool:
        """Does this rule allow everything ``other`` allows (syntactically)?"""
        peers = not self.peers or (bool(other.peers) and other.peers <= self.peers)
        ports = not self.ports or (bool(other.ports) and other.ports <= self.ports)
        return peers and ports


class _GroupRules:
    """The rules of one direction of a group of policies, in group order, indexed by
    peer: a rule that covers another has no peers or has each of its peers, so the
    candidates are the rules without peers and those holding its first peer, not the
    whole group (the bench's 100 policies on one pod made the pair scan quadratic)."""

    def __init__(self, group: list[Item], direction: Direction) -> None:
        self.rules: list[_Rule] = []
        self._without_peers: list[int] = []
        self._by_peer: dict[Peer, list[int]] = {}
        self._at: dict[tuple[int, int], int] = {}  # (id(item), rule index) -> position
        for item in group:
            pol = item.policy
            assert pol is not None
            if direction not in pol.policy_types:
                continue
            for j, rule in enumerate(pol.rules(direction)):
                k = len(self.rules)
                self.rules.append(_Rule(item, j, frozenset(rule.peers), frozenset(rule.ports)))
                self._at[(id(item), j)] = k
                if not rule.peers:
                    self._without_peers.append(k)
                for peer in self.rules[k].peers:
                    self._by_peer.setdefault(peer, []).append(k)

    def rule(self, item: Item, index: int) -> _Rule:
        return self.rules[self._at[(id(item), index)]]

    def candidates(self, rule: _Rule) -> list[_Rule]:
        """The rules that may cover ``rule``, in group order."""
        found = list(self._without_peers)
        if rule.peers:
            found += self._by_peer[next(iter(rule.peers))]
        return [self.rules[k] for k in sorted(found)]


def syntactic(linter: Linter, items: list[Item], reported: Reported) -> None:
    """Rules subsumed by another rule of the same policy, or of a policy in the same
    namespace with the same podSelector (which applies to exactly the same pods)."""
    groups: dict[tuple[str, Any], list[Item]] = {}
    for item in items:
        assert item.policy is not None
        groups.setdefault((item.policy.namespace, item.policy.pod_selector), []).append(item)
    indexed: dict[tuple[int, Direction], _GroupRules] = {}  # (id(group), direction)
    for item in items:
        pol = item.policy
        assert pol is not None
        if (id(item), None, 0) in reported:
            continue  # the whole policy changes nothing; reported once
        group = groups[(pol.namespace, pol.pod_selector)]
        for direction in pol.policy_types:
            rules = indexed.get((id(group), direction))
            if rules is None:
                rules = indexed[(id(group), direction)] = _GroupRules(group, direction)
            for i in range(len(pol.rules(direction))):
                if (id(item), direction, i) in reported:
                    continue
                why = _covering(rules, rules.rule(item, i), direction)
                if why is not None:
                    linter.report("CG107", f"{direction.value.lower()} rule {i} allows nothing that {why} "
                                  "does not already allow", item, item.rule_path(direction, i),
                                  hint="delete it, or change it to say what was meant")


def _covering(rules: _GroupRules, mine: _Rule, direction: Direction) -> str | None:
    me = mine.item
    for cand in rules.candidates(mine):
        other = cand.item
        if other is me and cand.index == mine.index:
            continue
        if not cand.subsumes(mine):
            continue
        equal = mine.subsumes(cand)
        # Of two equal rules, report only the later one (in file order).
        if equal and ((other is me and cand.index > mine.index) or (other is not me and _order(other) > _order(me))):
            continue
        pol = other.policy
        assert pol is not None
        return f"rule {cand.index}" if other is me else f"{pol.display} {direction.value.lower()}[{cand.index}]"
    return None


def _order(item: Item) -> tuple[str, int, FieldPath]:
    return (item.doc.file, item.doc.index, tuple(str(p) for p in item.doc.path))


def exact(linter: Linter, items: list[Item], cluster: tuple[ClusterPolicy, ...] = ()) -> Reported:
    """CG108 (policy changes nothing) and CG107 (rule redundant) over the inventory.

    Uses endpoint classes and port segments (connectivity.py), per IP family. Rules
    with ipBlock peers or no peers also reach addresses outside the inventory, so
    they are never called redundant here (the syntactic check still looks at them).

    ``cluster``: the ClusterNetworkPolicies beside them. What the NetworkPolicy
    tier decides is all these checks compare, and a change that leaves it the
    same leaves every verdict the same, with one exception: the only policy
    isolating a pod, removed, hands that pod's traffic to the Baseline tier."""
    inv = linter.inventory
    assert inv is not None
    policies = PolicySet(tuple(i.policy for i in items if i.policy is not None), cluster)

    def answers(family: int, first: _FamilyRedundancy | None = None) -> _FamilyRedundancy:
        part = Partition(inv, [policies], family, linter.resolver)
        return _redundancy(Connectivity(part, policies), first)

    present = families_present(inv)
    if len(present) == 2 and families_alike(inv, [policies]):
        present = present[:1]  # IPv6 would give IPv4's answers: same classes, same bits
    families: list[_FamilyRedundancy] = []
    if second_family_forked(inv, present, linter.forks):
        # Dual-stack and big: the second family on the other core. (It then asks about
        # everything, not only what the first found redundant; a verdict needs both, so
        # the verdicts are the same.) The answers are sets of ids, valid in the child:
        # it is a copy of this process.
        with Forked.started(lambda: answers(present[1])) as second:
            families = [answers(present[0]), second.result()]
    else:
        for family in present:
            # A verdict holds only if every family agrees: the second family asks only
            # about what the first found redundant.
            families.append(answers(family, families[0] if families else None))
    reported: Reported = set()
    for item in items:
        pol = item.policy
        assert pol is not None
        if not any(id(pol) in f.selected for f in families):
            continue  # selects nothing: CG101
        if not any(pol.rules(d) for d in pol.policy_types):
            continue  # a pure deny policy: belt and braces by design, even when others isolate too
        if all(f.noop(pol) for f in families):
            reported.add((id(item), None, 0))
            linter.report("CG108", "removing this policy would not change any verdict over the inventory",
                          item, ("metadata", "name"),
                          hint="its pods are isolated and its rules allowed by other policies already, or it "
                          "allows everything it isolates; delete it or fix what it was meant to say")
            continue
        for direction in pol.policy_types:
            for i, rule in enumerate(pol.rules(direction)):
                if not rule.peers or any(p.ip_block is not None for p in rule.peers):
                    continue
                if all(f.rule_redundant(pol, direction, i) for f in families):
                    reported.add((id(item), direction, i))
                    linter.report("CG107", f"{direction.value.lower()} rule {i} allows nothing over the inventory "
                                  "that other rules do not already allow to the same pods", item,
                                  item.rule_path(direction, i), hint="delete it, or change it to say what was meant")
    return reported


RuleKey = tuple[int, Direction, int]  # (id(policy), direction, rule index)


@dataclass
class _FamilyRedundancy:
    """What one IP family says about each policy and rule (policies by ``id``).

    A policy changes nothing in a family when it selects some class there and, at
    every class it selects and for each of its directions, either no other policy
    isolates the class and one of its rules allows everything, or (reaching no
    address outside the inventory) on every port segment its rules allow only peer
    classes that the other isolating policies allow too. A rule is redundant when it
    allows something at some (class, segment) and, wherever it does, the other rules
    of the isolating policies allow it too."""

    selected: set[int] = dc_field(default_factory=set)
    changes: set[int] = dc_field(default_factory=set)  # policies that change some verdict
    allows: set[RuleKey] = dc_field(default_factory=set)
    uncovered: set[RuleKey] = dc_field(default_factory=set)

    def noop(self, pol: Policy) -> bool:
        return id(pol) in self.selected and id(pol) not in self.changes

    def rule_redundant(self, pol: Policy, direction: Direction, index: int) -> bool:
        key = (id(pol), direction, index)
        return key in self.allows and key not in self.uncovered


def _redundancy(conn: Connectivity, first: _FamilyRedundancy | None = None) -> _FamilyRedundancy:
    """Class by class rather than policy by policy: at a class isolated by k policies,
    each policy's "what do the others allow" is a prefix/suffix OR, so a class costs
    O(rules) bit operations per segment instead of O(k x rules) for each of the k
    policies (the 100 policies on the bench's hot pod made that quadratic). Only the
    segments the rules touch, and one for all the others.

    ``first``: another family's answers. A policy or rule is only reported when every
    family finds it redundant, so what ``first`` found to matter is settled: it starts
    out as changing a verdict (or uncovered), and classes where nothing else is open
    are passed over (most of them, in the second family of a dual-stack inventory)."""
    out = _FamilyRedundancy()
    if first is not None:
        out.changes = {id(p) for p in conn.policies.policies if not first.noop(p)}
        out.uncovered = {(id(p), d, i) for p in conn.policies.policies for d in p.policy_types
                         for i in range(len(p.rules(d))) if not first.rule_redundant(p, d, i)}
    segments = conn.partition.segments()
    for c in range(conn.partition.size):
        for direction in (Direction.INGRESS, Direction.EGRESS):
            iso = conn.isolating(c, direction)
            if not iso:
                continue
            out.selected.update(id(p) for p in iso)
            if len(iso) == 1:
                if not any(_allows_all(r) for r in iso[0].rules(direction)) or any(
                        p.rules(direction) for p in conn.cluster_subjects(c, Tier.BASELINE)):
                    out.changes.add(id(iso[0]))  # without it, the class is open (or the Baseline decides)
            else:
                for p in iso:
                    if any(not r.peers or any(q.ip_block is not None for q in r.peers) for r in p.rules(direction)):
                        out.changes.add(id(p))  # reaches addresses outside the inventory
            # Rules whose verdict is still open: they allow peers by selector only.
            checked = [[(id(p), direction, i) if r.peers and all(q.ip_block is None for q in r.peers)
                        and (id(p), direction, i) not in out.uncovered else None
                        for i, r in enumerate(p.rules(direction))] for p in iso]
            open_policies = len(iso) > 1 and any(id(p) not in out.changes for p in iso)
            if not open_policies and not any(k is not None for row in checked for k in row):
                continue
            # Segments no port of these rules touches all give the same rows (rules without
            # ports allow their peers, the others nothing): one of them stands for all.
            touched = conn.touched(r for p in iso for r in p.rules(direction))
            for s in touched:
                _segment(conn, out, iso, checked, direction, c, segments[s])
            untouched = next((s for s in range(len(segments)) if s not in touched), None)
            if untouched is not None:
                _segment(conn, out, iso, checked, direction, c, segments[untouched])
    return out


def _segment(conn: Connectivity, out: _FamilyRedundancy, iso: list[Policy], checked: list[list[RuleKey | None]],
             direction: Direction, c: int, seg: ProtocolPortRange) -> None:
    rows = [[conn.rule_bits(p, direction, i, c, seg.protocol, seg.lo) for i in range(len(p.rules(direction)))]
            for p in iso]
    per_policy = [_or(row) for row in rows]
    before, after = _exclusive_ors(per_policy)
    for k, p in enumerate(iso):
        others = before[k] | after[k]
        if len(iso) > 1 and per_policy[k] & ~others:
            out.changes.add(id(p))
        row = rows[k]
        if not any(key is not None for key in checked[k]):
            continue
        rb, ra = _exclusive_ors(row)
        for i, key in enumerate(checked[k]):
            mine = row[i]
            if key is None or not mine:
                continue
            out.allows.add(key)
            if mine & ~(others | rb[i] | ra[i]):
                out.uncovered.add(key)


def _or(values: list[int]) -> int:
    bits = 0
    for v in values:
        bits |= v
    return bits


def _exclusive_ors(values: list[int]) -> tuple[list[int], list[int]]:
    """For each position, the OR of the values before it and the OR of those after it."""
    n = len(values)
    before, after = [0] * n, [0] * n
    acc = 0
    for i in range(n):
        before[i] = acc
        acc |= values[i]
    acc = 0
    for i in range(n - 1, -1, -1):
        after[i] = acc
        acc |= values[i]
    return before, after


def _allows_all(rule: PolicyRule) -> bool:
    return not rule.peers and not rule.ports
