"""Logged packets → flow records, through what the agent last applied.

A packet's prefix (:mod:`callgate.enforcers.logprefix`) says the verdict, the
side that decided and the deciding rule's id; the :class:`FlowContext` of
the applied snapshot maps the id back to the rule's policies, addresses back
to endpoints and, for a default deny, names the policies that isolate the
local endpoint on that side (the decision was theirs together). Anything that
does not decode (another program's prefix, a truncated packet, an id from a
ruleset older than the one we hold) is counted by the caller, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from callgate.agent.flowlog.record import FlowPeer, FlowRecord, protocol_name
from callgate.compiler.ir import Origin, RuleSet
from callgate.enforcers.logprefix import DEFAULT, parse_prefix
from callgate.enforcers.nflog import NflogPacket, packet_headers
from callgate.policy.evaluator import Evaluator
from callgate.policy.model import Direction, Inventory, PolicySet

_DIRECTIONS = {"ingress": Direction.INGRESS, "egress": Direction.EGRESS}


def origin_label(origin: Origin) -> str:
    """How a record names the policy of a rule: "Kind namespace/name"; a
    cluster policy's rule with its tier, priority and rule name,
    "ClusterNetworkPolicy deny-all (Admin 10) block-y"."""
    if not origin.tier:
        return origin.policy
    return f"{origin.policy} ({origin.tier} {origin.priority})" + (f" {origin.rule}" if origin.rule else "")


@dataclass
class FlowContext:
    """What the agent applied, for naming what the kernel logged."""

    node: str
    ruleset: RuleSet
    inventory: Inventory
    policies: PolicySet
    _isolating: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    @cached_property
    def endpoint_by_ip(self) -> Mapping[str, str]:
        # Built on the first record after a sync, not on every sync.
        return {str(ip): ep.key for ep in self.inventory.endpoints for ip in ep.ips}

    @cached_property
    def _origins(self) -> Mapping[str, tuple[Origin, ...]]:
        return self.ruleset.rule_origins()

    @cached_property
    def _evaluator(self) -> Evaluator:
        return Evaluator(self.policies, self.inventory)

    def rule_policies(self, rule_id: str) -> tuple[str, ...] | None:
        """The policies of the rules carrying ``rule_id``, in order, once each (None: unknown id)."""
        origins = self._origins.get(rule_id)
        if origins is None:
            return None
        return tuple(dict.fromkeys(origin_label(o) for o in origins))

    def isolating(self, endpoint: str, direction: str) -> tuple[str, ...]:
        """The policies that isolate ``endpoint`` on ``direction`` (a default deny is theirs)."""
        key = (endpoint, direction)
        found = self._isolating.get(key)
        if found is None:
            ep = self.inventory.endpoint(endpoint)
            found = () if ep is None else tuple(p.display for p in self._evaluator.isolating(
                ep, _DIRECTIONS[direction]))
            self._isolating[key] = found
        return found


def decode(packet: NflogPacket, context: FlowContext, now: float | None = None) -> FlowRecord | None:
    """The flow record of one logged packet, or None when it is not callgate's or does not decode."""
    label = parse_prefix(packet.prefix)
    headers = packet_headers(packet.family, packet.payload)
    if label is None or headers is None:
        return None
    src = _peer(context, headers.src, headers.sport)
    dst = _peer(context, headers.dst, headers.dport)
    if label.rule_id == DEFAULT:
        local = dst.endpoint if label.direction == "ingress" else src.endpoint
        policies: tuple[str, ...] | None = context.isolating(local, label.direction) if local else ()
    else:
        policies = context.rule_policies(label.rule_id)
    if policies is None:
        return None
    when = packet.timestamp if packet.timestamp is not None else (now if now is not None else time.time())
    return FlowRecord(time=when, node=context.node, verdict=label.verdict, direction=label.direction,
                      protocol=protocol_name(headers.protocol), src=src, dst=dst, policies=policies)


def _peer(context: FlowContext, ip: str, port: int | None) -> FlowPeer:
    # packet_headers prints addresses the way ipaddress does, and so are the
    # inventory's keyed: text equality is address equality.
    return FlowPeer(ip=ip, port=port, endpoint=context.endpoint_by_ip.get(ip))
