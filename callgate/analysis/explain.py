"""Why one connection is allowed or denied, pointing at the YAML a person wrote.

The evaluator decides (:class:`callgate.policy.evaluator.Decision`); this says
which tier decided (a ClusterNetworkPolicy rule of the Admin or Baseline tier,
or the NetworkPolicy tier), where each deciding rule is written (``file:line:column`` and the field, which
for an App's egress rule is a ``callers`` entry of *another* App) and, for a
side that denies, which policies isolate the endpoint and how near each of
their rules came: a rule that admits the peer but not on this port, or this
port but not from this peer, is usually the one that needs a change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from callgate.policy.documents import format_path
from callgate.policy.evaluator import (
    NETWORK_POLICY_TIER,
    ClusterRuleRef,
    Decision,
    Evaluator,
    RuleRef,
    SideDecision,
    TierMatch,
    port_matches,
)
from callgate.policy.model import (
    ENFORCEMENT_KEY,
    NAMESPACE_NAME_LABEL,
    Direction,
    Endpoint,
    IPAddress,
    Peer,
    Policy,
    PolicyRule,
)
from callgate.policy.positions import Positions

# Per isolating policy and side, at most this many rules that do not match are
# listed for a denial (the nearest first); a policy with hundreds of rules would
# otherwise bury the answer.
MAX_MISSES = 3

_DIRECTION_KEYS = {Direction.INGRESS: "ingress", Direction.EGRESS: "egress"}


@dataclass(frozen=True)
class Where:
    """Where a policy or rule is written."""

    object: str  # "NetworkPolicy x/web", "App shop/cart"
    field: str  # "spec.ingress[0]", "spec.callers[1]"; "" for the object itself
    file: str | None
    line: int | None
    column: int | None

    def location(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return where

    def text(self) -> str:
        return f"{self.location()} ({self.object}{' ' + self.field if self.field else ''})"

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object, "field": self.field or None, "file": self.file, "line": self.line,
                "column": self.column}


@dataclass(frozen=True)
class Miss:
    """A rule of an isolating policy that does not match this connection, and which half of it does."""

    rule: RuleRef
    where: Where
    peer_matches: bool
    port_matches: bool
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": str(self.rule), "where": self.where.to_json(), "peer_matches": self.peer_matches,
                "port_matches": self.port_matches, "why": self.description}


@dataclass(frozen=True)
class SideExplanation:
    side: SideDecision
    isolating: list[tuple[Policy, Where]]
    allowed_by: list[tuple[RuleRef, Where]]
    misses: list[Miss]  # only for a side the NetworkPolicy tier denies
    silent: list[tuple[Policy, Where]]  # isolating policies without a rule of this direction
    # The cluster tiers' matching rules (Admin, then Baseline when asked), with where they are written.
    tiers: list[tuple[TierMatch, Where]]
    audit: bool = False  # the endpoint's namespace is in audit: a denial here is logged, not enforced


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    egress: SideExplanation
    ingress: SideExplanation


class Explainer:
    """Explanations over one evaluator, finding positions in each file once."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.positions = Positions()

    def explain(self, decision: Decision) -> Explanation:
        src_ep, dst_ep = decision.egress.endpoint, decision.ingress.endpoint
        return Explanation(
            decision,
            self._audited(self._side(decision.egress, decision.dst, dst_ep, decision, dst_ep)),
            self._audited(self._side(decision.ingress, decision.src, src_ep, decision, dst_ep)),
        )

    def _audited(self, side: SideExplanation) -> SideExplanation:
        """Marks an isolated side whose namespace is in audit (a side that is not isolated has nothing to audit)."""
        endpoint = side.side.endpoint
        namespace = (self.evaluator.inventory.namespaces.get(endpoint.namespace)
                     if endpoint is not None and side.side.isolated else None)
        return dataclasses.replace(side, audit=True) if namespace is not None and namespace.audit else side

    def policy_where(self, policy: Policy) -> Where:
        origin = policy.origin
        line, column = self._locate(origin.file, origin.document, (*origin.path, "metadata", "name"))
        return Where(policy.display, "", origin.file, line, column)

    def rule_where(self, ref: RuleRef) -> Where:
        rule = ref.policy.rules(ref.direction)[ref.index]
        if rule.source is not None:
            loc = rule.source.location
            line, column = self._locate(loc.file, loc.document, loc.path)
            return Where(rule.source.object, rule.source.field, loc.file, line, column)
        origin = ref.policy.origin
        path = ("spec", _DIRECTION_KEYS[ref.direction], ref.index)
        line, column = self._locate(origin.file, origin.document, origin.path + path)
        return Where(ref.policy.display, format_path(path), origin.file, line, column)

    def cluster_rule_where(self, ref: ClusterRuleRef) -> Where:
        origin = ref.policy.origin
        path = ("spec", _DIRECTION_KEYS[ref.direction], ref.index)
        line, column = self._locate(origin.file, origin.document, origin.path + path)
        return Where(ref.policy.display, format_path(path), origin.file, line, column)

    def _locate(self, file: str | None, document: int, path: tuple[str | int, ...]) -> tuple[int | None, int | None]:
        if file is None or file.startswith("<"):
            return None, None
        return self.positions(file, document, path)

    def _side(self, side: SideDecision, peer_ip: IPAddress, peer_ep: Endpoint | None, decision: Decision,
              dst_ep: Endpoint | None) -> SideExplanation:
        isolating = [(p, self.policy_where(p)) for p in side.isolating]
        allowed_by = [(ref, self.rule_where(ref)) for ref in side.allowed_by]
        misses: list[Miss] = []
        silent: list[tuple[Policy, Where]] = []
        tiers = [(m, self.cluster_rule_where(m.rule)) for m in (side.admin, side.baseline) if m is not None]
        if not side.allowed and side.decided_by == NETWORK_POLICY_TIER:  # a cluster tier's denial has its rule
            for policy, where in isolating:
                rules = policy.rules(side.direction)
                if not rules:
                    silent.append((policy, where))
                    continue
                found = [self._miss(RuleRef(policy, side.direction, i), rule, peer_ip, peer_ep, decision, dst_ep)
                         for i, rule in enumerate(rules)]
                # Nearest first: half a match before none, then in written order.
                found.sort(key=lambda m: not (m.peer_matches or m.port_matches))
                misses.extend(found[:MAX_MISSES])
        return SideExplanation(side, isolating, allowed_by, misses, silent, tiers)

    def _miss(self, ref: RuleRef, rule: PolicyRule, peer_ip: IPAddress, peer_ep: Endpoint | None,
              decision: Decision, dst_ep: Endpoint | None) -> Miss:
        ev = self.evaluator
        peer_ok = not rule.peers or any(ev.peer_matches(p, peer_ip, peer_ep) for p in rule.peers)
        port_ok = not rule.ports or any(port_matches(s, decision.port, decision.protocol, dst_ep)
                                        for s in rule.ports)
        towards = "from" if ref.direction is Direction.INGRESS else "to"
        peer_name = peer_ep.key if peer_ep is not None else str(peer_ip)
        peers = "; or ".join(describe_peer(p) for p in rule.peers) or "anyone"
        ports = ", ".join(s.canonical() for s in rule.ports) or "any port"
        here = f"{decision.port}/{decision.protocol}"
        if peer_ok:
            why = f"admits {peer_name}, but on {ports}, not {here}"
        elif port_ok:
            why = f"allows {here}, but {towards} {peers}, not {peer_name}"
        else:
            why = f"allows {ports} {towards} {peers}"
        return Miss(ref, self.rule_where(ref), peer_ok, port_ok, why)


def describe_peer(peer: Peer) -> str:
    """A rule's peer in words: 'pods app=cart in namespace shop', 'ipBlock 10.0.0.0/8'."""
    if peer.ip_block is not None:
        return "ipBlock " + peer.ip_block.canonical()
    pods = f"pods {peer.pod_selector.canonical()}" if peer.pod_selector and not peer.pod_selector.is_empty \
        else "all pods"
    ns = peer.namespace_selector
    if ns is None:
        return f"{pods} in namespace {peer.namespace}"
    if ns.is_empty:
        return f"{pods} in every namespace"
    if len(ns.match_labels) == 1 and not ns.match_expressions and ns.match_labels[0][0] == NAMESPACE_NAME_LABEL:
        return f"{pods} in namespace {ns.match_labels[0][1]}"
    return f"{pods} in namespaces {ns.canonical()}"


def text_lines(explanation: Explanation) -> list[str]:
    """The verdict's reasons as printed by ``callgate explain`` (without the headline)."""
    decision = explanation.decision
    if decision.self_traffic:
        return ["  - a pod always reaches itself"]
    lines: list[str] = []
    for title, side in (("egress (source side)", explanation.egress),
                        ("ingress (destination side)", explanation.ingress)):
        lines.append(f"  {title}: {'allows' if side.side.allowed else 'denies'}")
        if side.audit and side.side.endpoint is not None:
            lines.append(f"    - namespace {side.side.endpoint.namespace} is in audit ({ENFORCEMENT_KEY}): "
                         "what this side denies is logged as would-deny and passes")
        for reason in side.side.reasons():
            lines.append(f"    - {reason}")
        for match, where in side.tiers:
            lines.append(f"      {match.rule} is written at {where.text()}")
        for ref, where in side.allowed_by:
            lines.append(f"      {ref} is written at {where.text()}")
        if side.side.allowed or side.side.decided_by != NETWORK_POLICY_TIER:
            continue
        direction = side.side.direction.value.lower()
        silent = {id(p) for p, _ in side.silent}
        for policy, where in side.isolating:
            if id(policy) in silent:
                lines.append(f"      {policy.display} ({where.location()}) has no {direction} rules: "
                             "it isolates and allows nothing")
                continue
            lines.append(f"      {policy.display} ({where.location()}): no {direction} rule matches; nearest:")
            for miss in side.misses:
                if miss.rule.policy is policy:
                    lines.append(f"        {direction}[{miss.rule.index}] at {miss.where.text()}: {miss.description}")
    return lines


def to_json(explanation: Explanation, src: str, dst: str) -> dict[str, Any]:
    decision = explanation.decision

    def tier(s: SideExplanation, which: TierMatch | None) -> dict[str, Any] | None:
        found = next(((m, w) for m, w in s.tiers if m is which), None)
        if found is None:
            return None
        match, where = found
        ref = match.rule
        return {"tier": match.tier.value, "action": match.action.value, "policy": ref.policy.display,
                "priority": ref.policy.priority, "direction": ref.direction.value, "rule": ref.index,
                "rule_name": ref.rule.name, "fail_closed": match.fail_closed, "file": ref.policy.origin.file,
                "where": where.to_json()}

    def side(s: SideExplanation) -> dict[str, Any]:
        d = s.side
        return {
            "endpoint": d.endpoint.key if d.endpoint else None,
            "isolated": d.isolated,
            "allowed": d.allowed,
            "decided_by": d.decided_by,
            "admin": tier(s, d.admin),
            "baseline": tier(s, d.baseline),
            "isolating_policies": [p.display for p, _ in s.isolating],
            "isolating_where": [w.to_json() for _, w in s.isolating],
            "allowed_by": [{"policy": r.policy.display, "direction": r.direction.value, "rule": r.index,
                            "file": r.policy.origin.file, "where": w.to_json()} for r, w in s.allowed_by],
            "nearest_misses": [m.to_json() for m in s.misses],
            "reasons": d.reasons(),
            "audit": s.audit,
        }

    return {
        "source": {"name": src, "ip": str(decision.src)}, "destination": {"name": dst, "ip": str(decision.dst)},
        "port": decision.port, "protocol": decision.protocol, "allowed": decision.allowed,
        "self": decision.self_traffic, "egress": side(explanation.egress),
        "ingress": side(explanation.ingress), "reasons": decision.reasons(),
    }
