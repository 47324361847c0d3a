"""IR chains as iptables-restore lines, one IP version at a time (pure, no kernel).

Rule actions follow the nft backend's (:mod:`callgate.enforcers.nft.actions`):
enforced and unlogged, a rule ends in ``-j DROP`` / ``-j ACCEPT`` / ``-j
RETURN``; with a flow log, a decision that is logged goes (``-g``, so that
RETURN still returns to CG-FORWARD) to an action chain ``CG-L<hash>`` per
(rule id, side, verdict)::

    -A CG-L<h> -m hashlimit --hashlimit-above R/sec --hashlimit-burst 2R --hashlimit-mode dstip
               --hashlimit-name cgfl-in4 -m comment --comment "callgate flow-log limited" -j DROP
    -A CG-L<h> -j NFLOG --nflog-prefix "callgate deny ingress <rule id>" --nflog-group G
    -A CG-L<h> -j DROP

the same records as nft (prefixes of at most 43 bytes, inside NFLOG's 63), the
same per-address limit (``dstip`` on ingress, ``srcip`` on egress). In audit,
a denial acts as an allow, through an action chain whether logged (as
would-deny, with a flow log) or not (one rule commented with the label), so
the live rules say that they audit (:func:`holds_audit`), as nft's audit
chains do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from callgate.compiler.ir import Chain, L4Match, Rule, RuleSet, Verdict, short_hash
from callgate.enforcers.base import (
    FLOW_LOG_LIMITED,
    FailClosed,
    FlowLogging,
    Placement,
    refuse_interfaces,
    rule_comment,
)
from callgate.enforcers.iptables.dispatch import ENTRIES, dispatch_chains
from callgate.enforcers.iptables.layout import (
    COMMENT_MAX,
    ENTRY_CHAINS,
    FAMILY_VERSION,
    MULTIPORT_MAX,
    Version,
    chain_name,
    layout_digest,
    quote,
    set_name,
)
from callgate.enforcers.logprefix import DEFAULT, NFLOG_PREFIX_MAX, LogLabel, LogVerdict


@dataclass
class Actions:
    """How one endpoint's decisions act (audit, flow log), and the action
    chains they need, collected for one IP version's table."""

    version: Version
    logging: FlowLogging | None = None
    audit: bool = False
    chains: dict[str, list[str]] = field(default_factory=dict)

    def decide(self, verdict: Verdict, direction: str, rule_id: str) -> str:
        """The target of an ALLOW or DENY decision of rule ``rule_id`` (DEFAULT: the tiers' default)."""
        allow = "RETURN" if direction == "egress" else "ACCEPT"
        final = "DROP" if verdict is Verdict.DENY and not self.audit else allow
        logged: LogVerdict | None
        if verdict is Verdict.DENY:
            logged = "would-deny" if self.audit else "deny"
        else:
            logged = "allow" if self.logging is not None and self.logging.allowed else None
        if logged is None or (self.logging is None and logged != "would-deny"):
            return f"-j {final}"
        label = LogLabel(logged, "ingress" if direction == "ingress" else "egress", rule_id)
        name = chain_name("L" + short_hash("flowlog", label.prefix(), final))
        if name not in self.chains:
            self.chains[name] = self._chain(name, label, final, direction)
        return f"-g {name}"

    def _chain(self, name: str, label: LogLabel, final: str, direction: str) -> list[str]:
        prefix = label.prefix()
        assert len(prefix) <= NFLOG_PREFIX_MAX
        if self.logging is None:
            # Audit without a flow log: the denial passes through a chain of its
            # own all the same, so that the live rules show (and count) it.
            return [f"-A {name} -m comment --comment {quote(prefix)} -j {final}"]
        mode, side = ("dstip", "in") if direction == "ingress" else ("srcip", "out")
        rate = self.logging.rate
        return [f"-A {name} -m hashlimit --hashlimit-above {rate}/sec --hashlimit-burst {2 * rate} "
                f"--hashlimit-mode {mode} --hashlimit-name cgfl-{side}{self.version} "
                f"-m comment --comment {quote(FLOW_LOG_LIMITED)} -j {final}",
                f"-A {name} -j NFLOG --nflog-prefix {quote(prefix)} --nflog-group {self.logging.group}",
                f"-A {name} -j {final}"]


def _target(verdict: Verdict, direction: str, next_tier: str | None, actions: Actions, rule_id: str) -> str:
    if verdict is Verdict.PASS:
        return f"-g {chain_name(next_tier)}" if next_tier else actions.decide(Verdict.ALLOW, direction, DEFAULT)
    return actions.decide(verdict, direction, rule_id)


def _port_chunks(l4: L4Match) -> list[str]:
    """``--dports`` values, split so that no rule exceeds multiport's 15 slots."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for p in l4.ports:
        cost = 1 if p.first == p.last else 2
        if used + cost > MULTIPORT_MAX:
            chunks.append(",".join(current))
            current, used = [], 0
        current.append(str(p.first) if p.first == p.last else f"{p.first}:{p.last}")
        used += cost
    if current:
        chunks.append(",".join(current))
    return chunks


def rule_lines(chain: str, rule: Rule, direction: str, next_tier: str | None, version: Version,
               actions: Actions | None = None, instead: Mapping[str, str] | None = None) -> list[str]:
    """One IR rule as ``-A`` lines for one IP version (none if it is for the other);
    its peer set, or the equal one held ``instead`` (see :func:`.sets.ruleset_sets`)."""
    if rule.family is not None and FAMILY_VERSION[rule.family] != version:
        return []
    where = "src" if direction == "ingress" else "dst"
    proto = f" -p {rule.l4.protocol}" if rule.l4 is not None else ""
    match = ""
    if rule.peer_set is not None:
        peers = instead.get(rule.peer_set, rule.peer_set) if instead else rule.peer_set
        match += f" -m set --match-set {set_name(peers)} {where}"
    if rule.peer_port_set is not None:
        # (peer address, destination port): egress only, so both are "dst".
        match += f" -m set --match-set {set_name(rule.peer_port_set)} dst,dst"
    comment = rule_comment(rule, COMMENT_MAX)
    target = _target(rule.verdict, direction, next_tier, actions or Actions(version), rule.id)
    tail = (f" -m comment --comment {quote(comment)}" if comment else "") + " " + target
    if rule.l4 is not None and rule.l4.ports and rule.peer_port_set is None:
        return [f"-A {chain}{proto}{match} -m multiport --dports {ports}{tail}" for ports in _port_chunks(rule.l4)]
    return [f"-A {chain}{proto}{match}{tail}"]


def _tier_lines(tiers: tuple[Chain, ...], direction: str, actions: Actions,
                instead: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, tier in enumerate(tiers):
        next_tier = tiers[i + 1].name if i + 1 < len(tiers) else None
        name = chain_name(tier.name)
        lines: list[str] = []
        for rule in tier.rules:
            lines.extend(rule_lines(name, rule, direction, next_tier, actions.version, actions, instead))
        lines.append(f"-A {name} {_target(tier.default, direction, next_tier, actions, DEFAULT)}")
        out[name] = lines
    return out


@dataclass(frozen=True, slots=True)
class Table:
    """callgate's part of one filter table: its chains (entry chains first)
    and rules, plus the jumps from built-in chains into its entry chains."""

    version: Version
    chains: tuple[str, ...]
    rules: tuple[str, ...]  # "-A CHAIN ..." lines, grouped by chain in ``chains`` order
    jumps: tuple[tuple[str, str], ...] = ENTRIES["node"]  # (built-in chain, callgate's entry chain)

    def text(self) -> str:
        lines = ["*filter", *(f":{c} - [0:0]" for c in self.chains)]
        lines.extend(f"-A {builtin} -j {entry}" for builtin, entry in self.jumps)
        lines.extend(self.rules)
        lines.append("COMMIT")
        return "\n".join(lines)


def chain_order(chains: Iterable[str]) -> list[str]:
    """Entry chains first (in their fixed order), then the rest by name: how
    both the plan and the live state list them."""
    return sorted(chains, key=lambda c: (ENTRY_CHAINS.index(c) if c in ENTRY_CHAINS else len(ENTRY_CHAINS), c))


def ruleset_table(ruleset: RuleSet, version: Version, instead: Mapping[str, str],
                  fail_closed: FailClosed | None = None, placement: Placement = "node",
                  logging: FlowLogging | None = None) -> Table:
    """callgate's part of one filter table (``instead``: the sets held in place of
    equal ones, :func:`~callgate.enforcers.base.equal_sets`, as the plan's ipsets)."""
    chains: dict[str, list[str]] = {}
    action_chains: dict[str, list[str]] = {}
    for ep in ruleset.endpoints:
        actions = Actions(version, logging, ep.audit, action_chains)
        chains.update(_tier_lines(ep.ingress, "ingress", actions, instead))
        chains.update(_tier_lines(ep.egress, "egress", actions, instead))
    chains.update(action_chains)
    digest = layout_digest(ruleset, fail_closed, placement, logging)
    chains.update(dispatch_chains(ruleset, version, digest, placement, fail_closed))
    order = chain_order(chains)
    return Table(version, tuple(order), tuple(line for c in order for line in chains[c]), ENTRIES[placement])


def _iface_problem(iface: str) -> str | None:
    # iptables reads a trailing "+" as a wildcard: "eth+" would match eth0, eth1 ...
    if iface.endswith("+") or not re.fullmatch(r"[A-Za-z0-9_.:@+-]{1,15}", iface):
        return (f"interface {iface!r} cannot be matched exactly by iptables (it must be 1-15 of "
                "letters, digits and '_.:@+-', not ending in '+', which iptables reads as a wildcard); "
                "use the nft backend or rename the interface")
    return None


def validate(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> None:
    """What iptables cannot express although the IR allows it: report it before
    anything is applied. (Names and sizes are valid by construction.)"""
    refuse_interfaces(ruleset, fail_closed, _iface_problem)


def holds_audit(live_text: str) -> bool:
    """Whether listed rules let some denials through for audit (their action chains' labels)."""
    return "callgate would-deny " in live_text
