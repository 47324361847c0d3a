"""Rule actions of the nft layout: what a decision does once it is made.

A decision (:mod:`.decisions`) names the chain of the rule that decided; that
chain counts the packet and acts on it. How it acts depends on the endpoint's
:class:`Style`:

* enforced, no flow log: ``counter goto accept_decided`` (ingress allow:
  accept, the verdict cached in the flow's ct mark, see :mod:`.dispatch`),
  ``counter return`` (egress allow), ``counter drop`` (deny);
* with a flow log (:class:`~callgate.enforcers.base.FlowLogging`, table-wide):
  denials, and allows when asked, are logged to the NFLOG group with the
  label ``callgate <verdict> <direction> <rule id|default>``, at most the
  limit's rate per local endpoint address (a dynamic set per family and side,
  ``flowlimit4_in`` …, keyed by the local address: ``daddr`` on ingress,
  ``saddr`` on egress); what the limit holds back is counted by the rules
  commented :data:`~callgate.enforcers.base.FLOW_LOG_LIMITED` and acted on
  unlogged;
* in audit (the endpoint's namespace, or the node): what the tiers deny goes
  to ``audit_in_<rule id>`` / ``audit_out_<rule id>`` (``audit_default_…``
  for no rule), which log ``would-deny`` and then act as an allow does.

Only the first packet of a connection reaches these chains (the forward
chain accepts established traffic first), so allowed established traffic
pays nothing for logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from callgate.compiler.decision import Decision
from callgate.compiler.ir import Verdict
from callgate.enforcers.base import FLOW_LOG_LIMITED, FlowLogging
from callgate.enforcers.logprefix import DEFAULT, LogLabel, LogVerdict
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import ACCEPT_DECIDED, obj

Expr = dict[str, Any]
ChainRules = list[tuple[list[Expr], str | None]]  # a verdict chain: its rules' expressions and comments

DEFAULT_DENY, DEFAULT_ALLOW = "default_deny", "default_allow_"
LIMIT_SET_SIZE = 65_535  # local endpoint addresses a limit set tracks (one element each)
LIMIT_SET_TIMEOUT = 60  # seconds an address stays in a limit set after its last logged packet


@dataclass(frozen=True)
class Style:
    """How an endpoint's decisions act: in audit or enforced, logged or not."""

    audit: bool = False
    logging: FlowLogging | None = None

    @property
    def plain(self) -> bool:
        """Enforced and unlogged: layout 4's rule chains and names, unchanged."""
        return not self.audit and self.logging is None


ENFORCED = Style()  # layout 4's plain style: enforced, no flow log


def side(direction: str) -> str:
    return "in" if direction == "ingress" else "out"


def target(direction: str, decision: Decision, style: Style) -> str:
    """The chain a decision ``goto``s."""
    where = side(direction)
    if decision.verdict is Verdict.DENY:
        if style.audit:
            return f"audit_{where}_{decision.rule}" if decision.rule else f"audit_default_{where}"
        if decision.rule:
            return f"deny_{decision.rule}"
        return f"default_deny_{where}" if style.logging is not None else DEFAULT_DENY
    return f"allow_{where}_{decision.rule}" if decision.rule else DEFAULT_ALLOW + where


def action(direction: str, verdict: Verdict) -> Expr:
    if verdict is Verdict.DENY:
        return {"drop": None}
    # Ingress allow is the decision's end: the flow's verdict is cached on the way out.
    return {"goto": {"target": ACCEPT_DECIDED}} if direction == "ingress" else {"return": None}


def decision_chain(direction: str, decision: Decision, style: Style, comment: str | None = None) -> ChainRules:
    """The rules of the chain :func:`target` names for ``decision``: the counter
    (with the rule's comment, read back as per-policy counters) and the action,
    logged where the style says so."""
    act, logged = _act(direction, decision.verdict, style)
    if style.logging is None or logged is None:
        return [([{"counter": None}, act], comment)]
    label = LogLabel(logged, direction, decision.rule or DEFAULT)  # type: ignore[arg-type]
    return [([{"counter": None}], comment), *_limited(direction, act, style.logging),
            ([{"log": {"prefix": label.prefix(), "group": style.logging.group}}, act], None)]


def _act(direction: str, verdict: Verdict, style: Style) -> tuple[Expr, LogVerdict | None]:
    if verdict is Verdict.DENY:
        if style.audit:
            return action(direction, Verdict.ALLOW), "would-deny"
        return {"drop": None}, "deny"
    logged: LogVerdict | None = "allow" if style.logging is not None and style.logging.allowed else None
    return action(direction, Verdict.ALLOW), logged


def default_rule(direction: str, verdict: Verdict, style: Style) -> list[Expr]:
    """The last rule of an endpoint chain (no rule matched: the tiers' default).
    Plain: ``counter drop`` (or accept/return) as in layout 4; otherwise a
    ``goto`` to the default's chain, which counts, logs and acts."""
    if style.plain:
        return [{"counter": None}, action(direction, verdict)]
    return [{"goto": {"target": target(direction, Decision(verdict), style)}}]


def default_chains(direction: str, style: Style) -> dict[str, ChainRules]:
    """The default chains an endpoint chain of this style may name (not plain: its own default goes there)."""
    if style.plain:
        return {}
    return {target(direction, Decision(v), style): decision_chain(direction, Decision(v), style)
            for v in (Verdict.DENY, Verdict.ALLOW)}


def _limit_set(family: str, where: str) -> str:
    return f"flowlimit{4 if family == 'ip' else 6}_{where}"


def _limited(direction: str, act: Expr, logging: FlowLogging) -> ChainRules:
    """Per family: past the limit for this local address, count and act unlogged.
    ``limit rate over <rate>/second burst <2 x rate> packets``, as libnftables lists it back."""
    field = "daddr" if direction == "ingress" else "saddr"
    over = {"rate": logging.rate, "burst": 2 * logging.rate, "per": "second", "inv": True}
    rules: ChainRules = []
    for family in ("ip", "ip6"):
        update = {"set": {"op": "update", "elem": {"payload": {"protocol": family, "field": field}},
                          "set": "@" + _limit_set(family, side(direction)), "stmt": [{"limit": over}]}}
        rules.append(([update, {"counter": None}, act], FLOW_LOG_LIMITED))
    return rules


LIMIT_ANCHOR = "flowlimit_sets"


def limit_sets(logging: FlowLogging | None) -> list[Command]:
    """The per-address limit sets (none without a flow log), and the chain
    that makes them dynamic.

    A set that packets add elements to must be created dynamic. nft makes it
    so when a rule updating it comes in the same transaction, but
    libnftables 1.0.6's JSON cannot say "dynamic" itself, and a set created
    without a rule updating it (no denial on one side yet) would refuse the
    first such rule of a later incremental transaction (EINVAL). So the full
    table always carries ``chain flowlimit_sets``, which nothing jumps to and
    whose rules update each set: they exist for that flag alone."""
    if logging is None:
        return []
    cmds: list[Command] = []
    anchor: list[Command] = [{"add": {"chain": obj(name=LIMIT_ANCHOR)}}]
    for family, addr in (("ip", "ipv4_addr"), ("ip6", "ipv6_addr")):
        for where in ("in", "out"):
            name = _limit_set(family, where)
            cmds.append({"add": {"set": obj(name=name, type=addr, size=LIMIT_SET_SIZE, flags=["timeout"],
                                            timeout=LIMIT_SET_TIMEOUT)}})
            field = "daddr" if where == "in" else "saddr"
            anchor.append({"add": {"rule": obj(chain=LIMIT_ANCHOR, expr=[{"set": {
                "op": "update", "elem": {"payload": {"protocol": family, "field": field}}, "set": "@" + name}}])}})
    return cmds + anchor


def is_limit_set(name: str) -> bool:
    """A limit set: its elements are the kernel's (addresses seen), never compared."""
    return name.startswith("flowlimit")


def holds_audit(live_text: str) -> bool:
    """Whether a listed table lets some denials through for audit (it has audit chains)."""
    return re.search(r"^\s*chain audit_", live_text, re.M) is not None
