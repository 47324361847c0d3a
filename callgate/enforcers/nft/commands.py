"""The RuleSet IR as libnftables JSON commands, in the layout of :mod:`.layout`.

The full replacement (:func:`table_objects`) and the incremental planner
(:mod:`.update`) build their commands from these same functions, so there is
one source of truth for what each object looks like.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from callgate.compiler import addresses
from callgate.compiler.ir import AddressSet, Family, RuleSet
from callgate.enforcers.base import FailClosed
from callgate.enforcers.nft.actions import ChainRules, limit_sets
from callgate.enforcers.nft.decisions import Layout, build_layout
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import (
    DIGEST_SET,
    FAIL_CLOSED_COMMENT,
    FAMILY,
    FORWARD,
    FROM_ENDPOINT,
    KNOWN_ENDPOINT,
    TABLE,
    TO_ENDPOINT,
    digest_element,
    is_hash_set,
    layout_digest,
    obj,
)

_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}


def element(text: str) -> Any:
    """An IR element (address, prefix or range) as a libnftables set element."""
    if "/" in text:
        addr, length = text.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in text:
        lo, hi = text.split("-", 1)
        return {"range": [lo, hi]}
    return text


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


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def decision_objects(layout: Layout) -> list[Command]:
    """``add`` commands for the decision part, in dependency order: the peer
    sets of the rule walks, verdict chains (map elements and walks jump to
    them), maps, then the endpoint chains that look them up."""
    cmds: list[Command] = [address_set_command(layout.sets[name]) for name in sorted(layout.sets)]
    for name, verdict_rules in sorted(layout.verdicts.items()):
        cmds.append({"add": {"chain": obj(name=name)}})
        cmds.extend(verdict_chain_commands(name, verdict_rules))
    cmds.extend(m.command() for _name, m in sorted(layout.maps.items()))
    for name, rules in layout.chains.items():
        cmds.append({"add": {"chain": obj(name=name)}})
        cmds.extend(_rule(name, exprs) for exprs in rules)
    return cmds


def _rule(chain: str, exprs: list[dict[str, Any]], comment: str | None = None) -> Command:
    body = obj(chain=chain, expr=exprs)
    if comment is not None:
        body["comment"] = comment
    return {"add": {"rule": body}}


def endpoint_chain_commands(name: str, rules: list[list[dict[str, Any]]]) -> list[Command]:
    """The rules of one endpoint chain (added to an existing, empty chain)."""
    return [_rule(name, exprs) for exprs in rules]


def verdict_chain_commands(name: str, rules: ChainRules) -> list[Command]:
    """The rules of one verdict chain (added to an existing, empty chain)."""
    return [_rule(name, exprs, comment) for exprs, comment in rules]


def dispatch_pairs(ruleset: RuleSet) -> tuple[dict[str, str], dict[str, str]]:
    """(from_endpoint, to_endpoint): interface -> first egress / ingress tier."""
    from_ep = {ep.interface: ep.egress[0].name for ep in ruleset.endpoints if ep.egress}
    to_ep = {ep.interface: ep.ingress[0].name for ep in ruleset.endpoints if ep.ingress}
    return from_ep, to_ep


def dispatch_element(iface: str, chain: str) -> list[Any]:
    return [iface, {"jump": {"target": chain}}]


def _dispatch_map(name: str, pairs: list[tuple[str, str]]) -> Command:
    body = obj(name=name, type="ifname", map="verdict")
    if pairs:
        body["elem"] = [dispatch_element(iface, chain) for iface, chain in sorted(pairs)]
    return {"add": {"map": body}}


def _fail_closed_rules(fc: FailClosed) -> list[Command]:
    rules = []
    for key in ("iifname", "oifname"):
        meta = {"meta": {"key": key}}
        # The prefix goes in as JSON data, never as nft text.
        expr = [_match(meta, fc.prefix + "*"), _match(meta, "@" + KNOWN_ENDPOINT, op="!="),
                {"counter": None}, {"drop": None}]
        rules.append({"add": {"rule": obj(chain=FORWARD, expr=expr, comment=FAIL_CLOSED_COMMENT)}})
    return rules


def table_objects(ruleset: RuleSet, fail_closed: FailClosed | None = None,
                  layout: Layout | None = None) -> list[Command]:
    """``add`` commands that build the whole table, in dependency order
    (``layout``: the decision part, when the caller has built it already)."""
    layout = layout if layout is not None else build_layout(ruleset)
    cmds: list[Command] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds.append({"add": {"set": obj(name=DIGEST_SET, type="ifname",
                                    elem=[digest_element(layout_digest(ruleset, fail_closed, layout.logging))])}})
    if fail_closed is not None:
        body = obj(name=KNOWN_ENDPOINT, type="ifname")
        if fail_closed.known:
            body["elem"] = list(fail_closed.known)
        cmds.append({"add": {"set": body}})
    cmds.extend(limit_sets(layout.logging))
    cmds.extend(decision_objects(layout))
    from_ep, to_ep = dispatch_pairs(ruleset)
    cmds.append(_dispatch_map(FROM_ENDPOINT, list(from_ep.items())))
    cmds.append(_dispatch_map(TO_ENDPOINT, list(to_ep.items())))
    cmds.append({"add": {"chain": obj(name=FORWARD, type="filter", hook="forward", prio=0, policy="accept")}})
    established = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    cmds.append({"add": {"rule": obj(chain=FORWARD, expr=[established, {"accept": None}])}})
    cmds.append({"add": {"rule": obj(chain=FORWARD, expr=[
        {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@" + FROM_ENDPOINT}}])}})
    cmds.append({"add": {"rule": obj(chain=FORWARD, expr=[
        {"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@" + TO_ENDPOINT}}])}})
    if fail_closed is not None:
        cmds.extend(_fail_closed_rules(fail_closed))
    return cmds
