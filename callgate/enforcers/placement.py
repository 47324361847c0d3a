"""One node's RuleSet, enforced wherever its endpoints are.

Endpoints with a host-side interface are enforced in the node's network
namespace (placement "node"); endpoints with only a namespace of their own
(macvlan, ipvlan) inside that namespace (placement "netns"), each with its
own tables and its own transaction. :func:`split` cuts a RuleSet into those
parts (each with only the sets its chains use), and :class:`NodeEnforcer`
offers the :class:`~callgate.enforcers.base.Enforcer` contract for the whole
node on top of one backend enforcer per part, so the agent and the CLI keep
one enforcer per node: drift repair, adoption and incremental updates work
per part as they do for one table.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from callgate.compiler.ir import EndpointRules, RuleSet
from callgate.enforcers.base import Applied, ApplyMode, ApplyResult, Enforcer, Placement, RuleCounters, Transaction
from callgate.enforcers.netns import netns_file

# Makes the backend enforcer of one part: (namespace, placement) -> Enforcer.
Factory = Callable[[str | None, Placement], Enforcer]


def _used_sets(endpoints: Iterable[EndpointRules]) -> set[str]:
    return {name for ep in endpoints for chain in (*ep.ingress, *ep.egress) for rule in chain.rules
            for name in (rule.peer_set, rule.peer_port_set) if name is not None}


def _place(interface: str | None, netns: str | None) -> str | None:
    """Which part an endpoint belongs to: None (the node) when it has a host-side interface."""
    return None if interface is not None else netns


def _part(ruleset: RuleSet, where: str | None) -> RuleSet:
    endpoints = [ep for ep in ruleset.endpoints if _place(ep.interface, ep.netns) == where]
    used = _used_sets(endpoints)
    return RuleSet(
        node=ruleset.node,
        address_sets=tuple(s for s in ruleset.address_sets if s.name in used),
        port_sets=tuple(s for s in ruleset.port_sets if s.name in used),
        endpoints=tuple(endpoints),
        unbound=ruleset.unbound if where is None else (),
        local=tuple(le for le in ruleset.local if _place(le.interface, le.netns) == where),
    )


def split(ruleset: RuleSet) -> dict[str | None, RuleSet]:
    """The node part (key None) and one part per endpoint namespace (key: its
    path). Without in-namespace endpoints the node part is ``ruleset`` itself."""
    namespaces = sorted({ns for le in ruleset.local if (ns := _place(le.interface, le.netns)) is not None})
    if not namespaces:
        return {None: ruleset}
    return {where: _part(ruleset, where) for where in (None, *namespaces)}


def without(ruleset: RuleSet, endpoints: Iterable[str]) -> RuleSet:
    """``ruleset`` with these local endpoints left out (chains, dispatch and
    anti-spoofing; the sets only they used go too): what a node enforces
    when some endpoints cannot be programmed."""
    gone = set(endpoints)
    if not gone:
        return ruleset
    kept = [ep for ep in ruleset.endpoints if ep.endpoint not in gone]
    used = _used_sets(kept)
    return replace(ruleset, address_sets=tuple(s for s in ruleset.address_sets if s.name in used),
                   port_sets=tuple(s for s in ruleset.port_sets if s.name in used), endpoints=tuple(kept),
                   local=tuple(le for le in ruleset.local if le.endpoint not in gone))


def _combined(digests: dict[str | None, str]) -> str:
    """One digest for a node with namespace parts (the node part's own otherwise)."""
    if set(digests) == {None}:
        return digests[None]
    text = "\x00".join(f"{k or ''}={v}" for k, v in sorted(digests.items(), key=lambda kv: kv[0] or ""))
    return hashlib.sha256(text.encode()).hexdigest()


def _section(netns: str | None) -> str:
    return f"# inside network namespace {netns}\n" if netns else ""


@dataclass(frozen=True)
class NodeTransaction:
    """The transactions of a node's parts: the node's own, then one per
    endpoint namespace (each atomic in its namespace)."""

    parts: tuple[tuple[str | None, Transaction], ...]

    @property
    def digest(self) -> str:
        return _combined({k: tx.digest for k, tx in self.parts})

    @property
    def node(self) -> Transaction:
        return dict(self.parts)[None]

    def text(self) -> str:
        return "\n".join(_section(k) + tx.text() for k, tx in self.parts)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.node.to_json())
        namespaces = {k: tx.to_json() for k, tx in self.parts if k is not None}
        if namespaces:
            out["netns"] = namespaces
        return out


def _mode(results: list[ApplyResult]) -> ApplyMode:
    changed = [r.mode for r in results if r.changed]
    if not changed:
        return "noop"
    return "incremental" if all(m == "incremental" for m in changed) else "full"


class NodeEnforcer:
    """A node's enforcer: one backend enforcer for the node's namespace and one
    per in-namespace endpoint, made by ``factory`` when first needed."""

    def __init__(self, factory: Factory, name: str) -> None:
        self.factory = factory
        self.name = name
        # The node's part is made now: a bad setting (iptables variant) fails here.
        self._parts: dict[str | None, Enforcer] = {None: factory(None, "node")}
        self.applied: Applied | None = None

    def part(self, netns: str | None) -> Enforcer:
        if netns not in self._parts:
            self._parts[netns] = self.factory(netns, "node" if netns is None else "netns")
        return self._parts[netns]

    @property
    def node(self) -> Enforcer:
        return self.part(None)

    def plan(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> NodeTransaction:
        known = tuple(known_interfaces)
        return NodeTransaction(tuple((k, self.part(k).plan(part, known if k is None else ()))
                                     for k, part in split(ruleset).items()))

    def prefetch(self) -> None:
        """The node's own namespace only: the endpoints' namespaces are known
        once the ruleset is, and their tables are small."""
        self.node.prefetch()

    def check(self, tx: NodeTransaction) -> None:
        for k, part_tx in tx.parts:
            self.part(k).check(part_tx)

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Iterable[str] = (),
              incremental: bool = True) -> ApplyResult:
        """Apply every part: the node's first, then each namespace's; a part
        already as wanted is a no-op. Namespaces whose endpoints left the
        RuleSet lose callgate's tables (when they still exist)."""
        known = tuple(known_interfaces)
        parts = split(ruleset)
        results = {k: self.part(k).apply(part, dry_run, known if k is None else (), incremental)
                   for k, part in parts.items()}
        warnings = [w for r in results.values() for w in r.warnings]
        if not dry_run:
            for gone in [k for k in self._parts if k is not None and k not in parts]:
                warnings.extend(self._forget(gone))
        digest = _combined({k: r.digest for k, r in results.items()})
        tx = NodeTransaction(tuple((k, r.transaction) for k, r in results.items()))
        result = ApplyResult(any(r.changed for r in results.values()), digest, tx, _mode(list(results.values())),
                             dry_run, drift=any(r.drift for r in results.values()), warnings=tuple(warnings))
        if not dry_run:
            self.applied = Applied(ruleset, digest)
        return result

    def _forget(self, netns: str | None) -> list[str]:
        enforcer = self._parts.pop(netns)
        try:
            enforcer.remove()
        except Exception as exc:
            if not _gone(netns):  # most often the namespace went with its pod: nothing left to remove
                return [f"could not remove callgate's tables from network namespace {netns}: {exc}"]
        finally:
            enforcer.close()
        return []

    def diff(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> list[str]:
        known = tuple(known_interfaces)
        out: list[str] = []
        for k, part in split(ruleset).items():
            lines = self.part(k).diff(part, known if k is None else ())
            if lines and k is not None:
                out.append(_section(k).rstrip("\n"))
            out.extend(lines)
        return out

    def in_sync(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> bool:
        known = tuple(known_interfaces)
        return all(self.part(k).in_sync(part, known if k is None else ()) for k, part in split(ruleset).items())

    def live_text(self) -> str | None:
        node = self.node.live_text()
        others = [(k, e.live_text()) for k, e in self._parts.items() if k is not None]
        texts = [_section(k) + t for k, t in others if t is not None]
        if node is None and not texts:
            return None
        return "\n".join([node or "", *texts]) if texts else node

    def live_digest(self) -> str | None:
        node = self.node.live_digest()
        if node is None or len(self._parts) == 1:
            return node
        digests: dict[str | None, str] = {None: node}
        for k, e in self._parts.items():
            if k is not None and (d := e.live_digest()) is not None:
                digests[k] = d
        return _combined(digests)

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        known = tuple(known_interfaces)
        return "\n".join(_section(k) + self.part(k).desired_text(part, known if k is None else ())
                         for k, part in split(ruleset).items())

    def rule_counters(self) -> RuleCounters | None:
        enforcers = list(self._parts.values()) or [self.node]
        counters = [c for e in enforcers if (c := e.rule_counters()) is not None]
        if not counters:
            return None
        by_rule: dict[str, tuple[int, int]] = {}
        for c in counters:
            for rule, (packets, octets) in c.by_rule.items():
                before = by_rule.get(rule, (0, 0))
                by_rule[rule] = (before[0] + packets, before[1] + octets)
        return RuleCounters(by_rule, sum(c.fail_closed_dropped for c in counters),
                            flow_log_limited=sum(c.flow_log_limited for c in counters),
                            spoofed_dropped=sum(c.spoofed_dropped for c in counters))

    def remove(self) -> bool:
        """Delete callgate's tables in the node's namespace and in every endpoint
        namespace this enforcer applied to."""
        removed = False
        for k in list(self._parts):
            try:
                removed = self._parts[k].remove() or removed
            except Exception:
                if k is None or not _gone(k):
                    raise
        self.applied = None
        return removed

    def close(self) -> None:
        for enforcer in self._parts.values():
            enforcer.close()


def _gone(netns: str | None) -> bool:
    return netns is not None and not os.path.exists(netns_file(netns))
