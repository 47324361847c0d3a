"""The reference semantics: is one connection allowed, and why.

This evaluator is deliberately direct — it follows the Kubernetes
NetworkPolicy rules one by one — because it is the oracle that the compiler,
every backend and the real-kernel tests are checked against. explain, matrix,
diff and lint all use it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from callgate.policy.model import (
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


@dataclass
class SideDecision:
    """One side of a connection: the source's egress or the destination's ingress."""

    direction: Direction
    endpoint: Endpoint | None  # None: an address outside the inventory, never isolated
    isolating: list[Policy] = field(default_factory=list)
    allowed_by: list[RuleRef] = field(default_factory=list)

    @property
    def isolated(self) -> bool:
        return bool(self.isolating)

    @property
    def allowed(self) -> bool:
        return not self.isolating or bool(self.allowed_by)

    def reasons(self) -> list[str]:
        side = "egress of source" if self.direction is Direction.EGRESS else "ingress of destination"
        if self.endpoint is None:
            return [f"{side}: outside the inventory, not enforced here"]
        if not self.isolating:
            return [f"{side}: {self.endpoint.key} is not isolated for {self.direction.value.lower()} (no policy selects it)"]
        names = ", ".join(p.display for p in self.isolating)
        if self.allowed_by:
            return [f"{side}: {self.endpoint.key} is isolated by {names}; allowed by {r}" for r in self.allowed_by]
        return [f"{side}: {self.endpoint.key} is isolated by {names}; no rule matches, denied"]


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
        for policy in side.isolating:
            for i, rule in enumerate(policy.rules(direction)):
                if self.rule_matches(rule, peer_ip, peer_ep, port, protocol, dst):
                    side.allowed_by.append(RuleRef(policy, direction, i))
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
