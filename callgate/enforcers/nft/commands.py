"""The RuleSet IR as libnftables JSON commands, in the layout of :mod:`.layout`.

The decision part (sets, per-endpoint tier chains) is built here; the
dispatch part around it (maps, anti-spoofing, base chains) by :mod:`.dispatch`.
The full replacement (:func:`table_objects`) and the incremental planner
(:mod:`.update`) build their commands from these same functions, so there is
one source of truth for what each object looks like.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from callgate.compiler import addresses
from callgate.compiler.ir import AddressPortSet, AddressSet, Chain, Family, L4Match, Rule, RuleSet, Verdict
from callgate.enforcers.base import FailClosed, Placement, refuse_interfaces, rule_comment
from callgate.enforcers.nft.dispatch import dispatch_objects
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import (
    COMMENT_MAX,
    DIGEST_SET,
    FAMILY,
    TABLE,
    digest_element,
    is_hash_set,
    layout_digest,
    obj,
)
from callgate.errors import shown

_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}
_NFPROTO = {"ip": "ipv4", "ip6": "ipv6"}


def element(text: str) -> Any:
    """An IR element (address, prefix or range) as a libnftables set element."""
    if "/" in text:
        addr, length = text.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in text:
        lo, hi = text.split("-", 1)
        return {"range": [lo, hi]}
    return text


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _ports(l4: L4Match) -> Any:
    items: list[Any] = [p.first if p.first == p.last else {"range": [p.first, p.last]} for p in l4.ports]
    return items[0] if len(items) == 1 else {"set": items}


def _verdict(verdict: Verdict, direction: str, next_tier: str | None) -> dict[str, Any]:
    if verdict is Verdict.PASS:
        return {"goto": {"target": next_tier}} if next_tier else _verdict(Verdict.ALLOW, direction, None)
    if verdict is Verdict.DENY:
        return {"drop": None}
    return {"return": None} if direction == "egress" else {"accept": None}


def _family(family: Family | None) -> str:
    assert family is not None, "a peer set always has a family"
    return family


def rule_exprs(rule: Rule, direction: str, next_tier: str | None) -> list[dict[str, Any]]:
    field = "saddr" if direction == "ingress" else "daddr"
    exprs: list[dict[str, Any]] = []
    if rule.peer_set is not None:
        exprs.append(_match(_payload(_family(rule.family), field), "@" + rule.peer_set))
    elif rule.family is not None and rule.peer_port_set is None:
        exprs.append(_match({"meta": {"key": "nfproto"}}, _NFPROTO[rule.family]))
    if rule.peer_port_set is not None:
        assert rule.l4 is not None
        left = {"concat": [_payload(_family(rule.family), field), _payload(rule.l4.protocol, "dport")]}
        exprs.append(_match(left, "@" + rule.peer_port_set))
    elif rule.l4 is not None:
        if rule.l4.ports:
            # "tcp dport" carries its own l4proto dependency; writing it this way
            # is also how the kernel lists it back, so read-back compares equal.
            exprs.append(_match(_payload(rule.l4.protocol, "dport"), _ports(rule.l4)))
        else:
            exprs.append(_match({"meta": {"key": "l4proto"}}, rule.l4.protocol))
    exprs.append({"counter": None})
    exprs.append(_verdict(rule.verdict, direction, next_tier))
    return exprs


def expand(elements: Iterable[str], family: Family) -> list[str]:
    """Every address the elements hold, as nft lists them (single addresses
    pass through as they are: the IR already prints them canonically)."""
    version, bits = (4, 32) if family == "ip" else (6, 128)
    out: list[str] = []
    for e in elements:
        if "/" in e:
            # The prefix's own address is already printed as address_text
            # prints it (the IR uses the same function): only the rest is made.
            addr, length = e.split("/")
            lo = addresses.address_int(addr)
            out.append(addr)
            out.extend(addresses.address_text(v, version) for v in range(lo + 1, lo + (1 << (bits - int(length)))))
        elif "-" in e:
            lo, hi = addresses.parse_element(e)
            out.extend(addresses.address_text(v, version) for v in range(lo, hi + 1))
        else:
            out.append(e)
    return out


def address_set_command(s: AddressSet, hashed: bool | None = None) -> Command:
    """``add set`` with its elements, in the hash or the interval form
    (``hashed`` None: the form :func:`~.layout.is_hash_set` chooses)."""
    if hashed is None:
        hashed = is_hash_set(s)
    body = obj(name=s.name, type=_ADDR_TYPE[s.family])
    if not hashed:
        body["flags"] = ["interval"]
    if s.elements:
        body["elem"] = expand(s.elements, s.family) if hashed else [element(e) for e in s.elements]
    return {"add": {"set": body}}


def port_elements(pairs: Iterable[tuple[str, int]]) -> list[Any]:
    """(address, port) pairs as libnftables JSON elements."""
    return [{"concat": [a, p]} for a, p in pairs]


def port_set_command(s: AddressPortSet) -> Command:
    """``add set`` of (address, port) pairs, with its elements."""
    body = obj(name=s.name, type=[_ADDR_TYPE[s.family], "inet_service"])
    if s.elements:
        body["elem"] = port_elements(s.elements)
    return {"add": {"set": body}}


def chain_rules(chain: Chain, direction: str, next_tier: str | None) -> list[Command]:
    """``add rule`` commands for one tier chain (its rules, then its default)."""
    cmds: list[Command] = []
    for rule in chain.rules:
        body = obj(chain=chain.name, expr=rule_exprs(rule, direction, next_tier))
        if (comment := rule_comment(rule, COMMENT_MAX)) is not None:
            body["comment"] = comment
        cmds.append({"add": {"rule": body}})
    default = [{"counter": None}, _verdict(chain.default, direction, next_tier)]
    cmds.append({"add": {"rule": obj(chain=chain.name, expr=default)}})
    return cmds


def tiers_with_next(tiers: tuple[Chain, ...]) -> list[tuple[Chain, str | None]]:
    """Each tier with the name of the one after it (where PASS goes)."""
    return [(chain, tiers[i + 1].name if i + 1 < len(tiers) else None) for i, chain in enumerate(tiers)]


def _tier_commands(tiers: tuple[Chain, ...], direction: str) -> list[Command]:
    # Every tier's chain before any rule: a PASS rule's goto must find the next tier.
    cmds: list[Command] = [{"add": {"chain": obj(name=chain.name)}} for chain in tiers]
    for chain, next_tier in tiers_with_next(tiers):
        cmds.extend(chain_rules(chain, direction, next_tier))
    return cmds


def interface_problem(iface: str) -> str | None:
    """Why nftables cannot be given ``iface``, or None. libnftables' JSON reads a string
    that starts with '@' as a reference to a set (the kernel then refuses the whole
    transaction); Linux and callgate's validation allow such a name."""
    if iface.startswith("@"):
        return (f"interface {shown(iface)} cannot be written for nftables (libnftables reads a name starting with "
                "'@' as a set); rename the interface")
    return None


def validate(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> None:
    """Refuse what nftables cannot be given, before anything reaches the kernel."""
    refuse_interfaces(ruleset, fail_closed, interface_problem)


def table_objects(ruleset: RuleSet, fail_closed: FailClosed | None = None, placement: Placement = "node",
                  ) -> list[Command]:
    """``add`` commands that build the whole table (and, on a node, the bridge
    table), in dependency order: the decision part from the IR here, then
    the dispatch part (:mod:`.dispatch`), whose maps jump to its chains (InputError
    for what nftables cannot be given)."""
    validate(ruleset, fail_closed)
    cmds: list[Command] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds.append({"add": {"set": obj(name=DIGEST_SET, type="ifname",
                                    elem=[digest_element(layout_digest(ruleset, fail_closed, placement))])}})
    cmds.extend(address_set_command(s) for s in ruleset.address_sets)
    cmds.extend(port_set_command(s) for s in ruleset.port_sets)
    for ep in ruleset.endpoints:
        cmds.extend(_tier_commands(ep.ingress, "ingress"))
        cmds.extend(_tier_commands(ep.egress, "egress"))
    cmds.extend(dispatch_objects(ruleset, fail_closed, placement))
    return cmds
