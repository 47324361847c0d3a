"""The reference semantics: is one connection allowed, and why.

This evaluator is deliberately direct — it follows the Kubernetes
NetworkPolicy rules one by one, and the ClusterNetworkPolicy tiers around them
— because it is the oracle that the compiler, every backend and the
real-kernel tests are checked against. explain, matrix, diff and lint all use
it.

Per direction (the source's egress, the destination's ingress) the tiers are
asked in order: the **Admin** tier (cluster policies by priority, rules in
written order: the first match decides; Accept allows, Deny denies, Pass skips
the rest of the tier), then the **NetworkPolicy** tier (NetworkPolicies and
callgate/v1 Apps: when they isolate the pod, they decide: allowed if a rule
allows), then the **Baseline** tier (as the Admin tier), then: allowed. A
connection needs both directions. A pod reaching itself is never subject.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from callgate.policy.model import (
    Action,
    ClusterPeer,
    ClusterPolicy,
    ClusterRule,
    Direction,
    Endpoint,
    Inventory,
    IPAddress,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortProtocol,
    PortSpec,
    Tier,
)
from callgate.policy.resolve import Resolver


@dataclass(frozen=True)
class RuleRef:
    """Provenance: rule ``index`` of ``policy``'s ingress or egress list."""

    policy: Policy
    direction: Direction
    index: int

    def __str__(self) -> str:
        return f"{self.policy.display} {self.direction.value.lower()}[{self.index}]"


@dataclass(frozen=True)
class ClusterRuleRef:
    """Provenance: rule ``index`` of a cluster policy's ingress or egress list."""

    policy: ClusterPolicy
    direction: Direction
    index: int

    @property
    def rule(self) -> ClusterRule:
        return self.policy.rules(self.direction)[self.index]

    def __str__(self) -> str:
        name = f" {self.rule.name!r}" if self.rule.name else ""
        return (f"{self.policy.display} ({self.policy.tier.value} tier, priority {self.policy.priority}) "
                f"{self.direction.value.lower()}[{self.index}]{name}")


@dataclass(frozen=True)
class TierMatch:
    """The rule of a cluster tier that decided (or passed) one side of a connection.

    ``action`` is what happened: the rule's own action, except that a Deny or
    Pass rule matching through a peer callgate cannot resolve (domainNames, a
    peer of a kind it does not know) denies (the API's fail-closed rule);
    ``fail_closed`` says so."""

    tier: Tier
    action: Action
    rule: ClusterRuleRef
    fail_closed: bool = False

    def reason(self) -> str:
        verb = {Action.ACCEPT: "accepted", Action.DENY: "denied", Action.PASS: "passed to the next tier"}[self.action]
        why = " (a peer callgate cannot resolve fails closed)" if self.fail_closed else ""
        return f"{self.tier.value} tier: {verb} by {self.rule}{why}"


# Who decided one side of a connection.
DECIDED_BY_DEFAULT = "default"  # no tier decided: allowed
NETWORK_POLICY_TIER = "NetworkPolicy"


@dataclass
class SideDecision:
    """One side of a connection: the source's egress or the destination's ingress.

    ``admin`` and ``baseline`` are the cluster tiers' first matching rules (None:
    none matched; ``baseline`` is only asked when the earlier tiers did not
    decide); ``isolating`` and ``allowed_by`` are the NetworkPolicy tier."""

    direction: Direction
    endpoint: Endpoint | None  # None: an address outside the inventory, never isolated
    isolating: list[Policy] = field(default_factory=list)
    allowed_by: list[RuleRef] = field(default_factory=list)
    admin: TierMatch | None = None
    baseline: TierMatch | None = None

    @property
    def isolated(self) -> bool:
        return bool(self.isolating)

    @property
    def decided_by(self) -> str:
        """The tier whose verdict stands: "Admin", "NetworkPolicy", "Baseline" or "default"."""
        if self.admin is not None and self.admin.action is not Action.PASS:
            return Tier.ADMIN.value
        if self.isolating:
            return NETWORK_POLICY_TIER
        if self.baseline is not None and self.baseline.action is not Action.PASS:
            return Tier.BASELINE.value
        return DECIDED_BY_DEFAULT

    @property
    def deciding_match(self) -> TierMatch | None:
        """The cluster rule that decided, when a cluster tier did."""
        by = self.decided_by
        return self.admin if by == Tier.ADMIN.value else self.baseline if by == Tier.BASELINE.value else None

    @property
    def allowed(self) -> bool:
        match = self.deciding_match
        if match is not None:
            return match.action is Action.ACCEPT
        if self.decided_by == NETWORK_POLICY_TIER:
            return bool(self.allowed_by)
        return True

    def reasons(self) -> list[str]:
        side = "egress of source" if self.direction is Direction.EGRESS else "ingress of destination"
        if self.endpoint is None:
            return [f"{side}: outside the inventory, not enforced here"]
        out = []
        if self.admin is not None:
            out.append(f"{side}: {self.admin.reason()}")
            if self.admin.action is not Action.PASS:
                return out
        if not self.isolating:
            out.append(f"{side}: {self.endpoint.key} is not isolated for {self.direction.value.lower()} "
                       "(no policy selects it)")
            if self.baseline is not None:
                out.append(f"{side}: {self.baseline.reason()}")
            return out
        names = ", ".join(p.display for p in self.isolating)
        if self.allowed_by:
            out.extend(f"{side}: {self.endpoint.key} is isolated by {names}; allowed by {r}" for r in self.allowed_by)
        else:
            out.append(f"{side}: {self.endpoint.key} is isolated by {names}; no rule matches, denied")
        return out


@dataclass
class Decision:
    """The evaluator's answer for one connection: allowed or not, and why, side by side."""

    src: IPAddress
    dst: IPAddress
    port: int
    protocol: PortProtocol
    egress: SideDecision
    ingress: SideDecision
    self_traffic: bool = False

    @property
    def allowed(self) -> bool:
        return self.self_traffic or (self.egress.allowed and self.ingress.allowed)

    def reasons(self) -> list[str]:
        if self.self_traffic:
            return ["a pod always reaches itself"]
        return self.egress.reasons() + self.ingress.reasons()


def port_matches(spec: PortSpec, port: int, protocol: PortProtocol, dst: Endpoint | None) -> bool:
    if spec.protocol != protocol:
        return False
    if spec.port is None:
        return True
    if isinstance(spec.port, str):
        # Named ports resolve against the destination pod; an address outside
        # the inventory has no named ports.
        return dst is not None and port in dst.resolve_port(spec.port, protocol)
    end = spec.end_port if spec.end_port is not None else spec.port
    return spec.port <= port <= end


class Evaluator:
    def __init__(self, policies: PolicySet, inventory: Inventory, resolver: Resolver | None = None) -> None:
        self.policies = policies
        self.inventory = inventory
        self.resolver = resolver or Resolver(inventory)
        self._by_ip = inventory.by_ip()
        self._selecting: dict[tuple[str, Direction], list[Policy]] = {}
        self._tiers = {tier: policies.tier(tier) for tier in Tier}

    def cluster_subjects(self, endpoint: Endpoint, tier: Tier) -> list[ClusterPolicy]:
        """Cluster policies of ``tier`` whose subject holds ``endpoint``, in precedence order."""
        return [p for p in self._tiers[tier] if self.resolver.peer_matches(p.subject, endpoint)]

    def cluster_peer_matches(self, peer: ClusterPeer, ip: IPAddress, endpoint: Endpoint | None) -> bool:
        """Does a resolvable cluster peer hold this address (of ``endpoint``, if in the inventory)?"""
        if peer.selector is not None:
            return self.resolver.peer_matches(peer.selector, endpoint)
        if peer.networks:
            return any(block.contains(ip) for block in peer.networks)
        if peer.nodes is not None:
            return ip in self.inventory.node_addresses(peer.nodes)
        return False

    def cluster_rule_match(self, rule: ClusterRule, peer_ip: IPAddress, peer_ep: Endpoint | None,
                           port: int, protocol: PortProtocol, dst: Endpoint | None) -> tuple[Action, bool] | None:
        """What ``rule`` does to this packet: (action, fail closed), or None when it
        does not match. A peer callgate cannot resolve fails closed, as the API
        says: an Accept rule matches nothing through it; a Deny or Pass rule
        becomes "deny all" (every peer, on the rule's ports)."""
        if rule.ports and not any(port_matches(s, port, protocol, dst) for s in rule.ports):
            return None
        if rule.action is not Action.ACCEPT and any(not p.resolvable for p in rule.peers):
            return Action.DENY, True
        if any(self.cluster_peer_matches(p, peer_ip, peer_ep) for p in rule.peers if p.resolvable):
            return rule.action, False
        return None

    def _tier(self, tier: Tier, direction: Direction, local: Endpoint, peer_ip: IPAddress,
              peer_ep: Endpoint | None, port: int, protocol: PortProtocol, dst: Endpoint | None) -> TierMatch | None:
        for policy in self.cluster_subjects(local, tier):
            for i, rule in enumerate(policy.rules(direction)):
                found = self.cluster_rule_match(rule, peer_ip, peer_ep, port, protocol, dst)
                if found is not None:
                    action, fail_closed = found
                    return TierMatch(tier, action, ClusterRuleRef(policy, direction, i), fail_closed)
        return None

    def isolating(self, endpoint: Endpoint, direction: Direction) -> list[Policy]:
        """Policies that select ``endpoint`` for ``direction``, in a stable order."""
        key = (endpoint.key, direction)
        found = self._selecting.get(key)
        if found is None:
            found = [
                p for p in self.policies.in_namespace(endpoint.namespace)
                if direction in p.policy_types and p.pod_selector.matches(endpoint.labels)
            ]
            self._selecting[key] = found
        return found

    def peer_matches(self, peer: Peer, ip: IPAddress, endpoint: Endpoint | None) -> bool:
        if peer.ip_block is not None:
            return peer.ip_block.contains(ip)
        return self.resolver.peer_matches(peer, endpoint)

    def rule_matches(self, rule: PolicyRule, peer_ip: IPAddress, peer_ep: Endpoint | None,
                     port: int, protocol: PortProtocol, dst: Endpoint | None) -> bool:
        if rule.peers and not any(self.peer_matches(p, peer_ip, peer_ep) for p in rule.peers):
            return False
        return not rule.ports or any(port_matches(s, port, protocol, dst) for s in rule.ports)

    def _side(self, direction: Direction, local: Endpoint | None, peer_ip: IPAddress,
              peer_ep: Endpoint | None, port: int, protocol: PortProtocol, dst: Endpoint | None) -> SideDecision:
        side = SideDecision(direction, local)
        if local is None:
            return side
        side.isolating = self.isolating(local, direction)
        side.admin = self._tier(Tier.ADMIN, direction, local, peer_ip, peer_ep, port, protocol, dst)
        if side.admin is not None and side.admin.action is not Action.PASS:
            return side  # the NetworkPolicy tier is never asked
        for policy in side.isolating:
            for i, rule in enumerate(policy.rules(direction)):
                if self.rule_matches(rule, peer_ip, peer_ep, port, protocol, dst):
                    side.allowed_by.append(RuleRef(policy, direction, i))
        if not side.isolating:
            side.baseline = self._tier(Tier.BASELINE, direction, local, peer_ip, peer_ep, port, protocol, dst)
        return side

    def evaluate(self, src: IPAddress | str, dst: IPAddress | str, port: int,
                 protocol: PortProtocol = "TCP") -> Decision:
        src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        src_ep, dst_ep = self._by_ip.get(src_ip), self._by_ip.get(dst_ip)
        egress = self._side(Direction.EGRESS, src_ep, dst_ip, dst_ep, port, protocol, dst_ep)
        ingress = self._side(Direction.INGRESS, dst_ep, src_ip, src_ep, port, protocol, dst_ep)
        same = src_ep is not None and src_ep is dst_ep
        return Decision(src_ip, dst_ip, port, protocol, egress, ingress, self_traffic=same)

    def allowed(self, src: IPAddress | str, dst: IPAddress | str, port: int, protocol: PortProtocol = "TCP") -> bool:
        return self.evaluate(src, dst, port, protocol).allowed
