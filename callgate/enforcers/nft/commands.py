"""The RuleSet IR as libnftables JSON commands, in the layout of :mod:`.layout`.

The decision part (peer sets of the rule walks, decision maps, endpoint and
rule chains: :mod:`.decisions`) is rendered here; the dispatch part around it
(maps, anti-spoofing, base chains) by :mod:`.dispatch`.
The full replacement (:func:`table_objects`) and the incremental planner
(:mod:`.update`) build their commands from these same functions, so there is
one source of truth for what each object looks like.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from callgate.compiler import addresses
from callgate.compiler.ir import AddressSet, Family, RuleSet
from callgate.enforcers.base import FailClosed, Placement, refuse_interfaces
from callgate.enforcers.nft.actions import ChainRules, limit_sets
from callgate.enforcers.nft.decisions import Layout, build_layout, next_map_command
from callgate.enforcers.nft.dispatch import dispatch_objects, verdict_cache_objects
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import (
    DIGEST_SET,
    FAMILY,
    TABLE,
    GuardHook,
    digest_element,
    is_hash_set,
    layout_digest,
    obj,
)
from callgate.errors import shown

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


def decision_objects(layout: Layout) -> list[Command]:
    """``add`` commands for the decision part, in dependency order: the peer
    sets of the rule walks, verdict chains and (empty) pass chains (map
    elements and walks jump to them), maps, the endpoint tier chains that look
    them up, then the next maps (their elements name endpoint tier chains) and
    the pass chains' rules that look those up."""
    cmds: list[Command] = [address_set_command(layout.sets[name]) for name in sorted(layout.sets)]
    for name, verdict_rules in sorted(layout.verdicts.items()):
        cmds.append({"add": {"chain": obj(name=name)}})
        cmds.extend(verdict_chain_commands(name, verdict_rules))
    cmds.extend({"add": {"chain": obj(name=name)}} for name in sorted(layout.passes))
    cmds.extend(m.command() for _name, m in sorted(layout.maps.items()))
    for name, rules in layout.chains.items():
        cmds.append({"add": {"chain": obj(name=name)}})
        cmds.extend(_rule(name, exprs) for exprs in rules)
    cmds.extend(next_map_command(name, elems) for name, elems in sorted(layout.continuations.items()))
    for name, rules in sorted(layout.passes.items()):
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
                  layout: Layout | None = None, guard: GuardHook = "ingress") -> list[Command]:
    """``add`` commands that build the whole table (and, on a node, the bridge
    table), in dependency order: the flow-log limit sets and the decision part
    (``layout``, when the caller has built it already) here, then the dispatch
    part (:mod:`.dispatch`), whose maps jump to its endpoint chains (InputError
    for what nftables cannot be given)."""
    validate(ruleset, fail_closed)
    layout = layout if layout is not None else build_layout(ruleset)
    cmds: list[Command] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    digest = layout_digest(ruleset, fail_closed, placement, layout.logging, guard)
    cmds.append({"add": {"set": obj(name=DIGEST_SET, type="ifname", elem=[digest_element(digest)])}})
    cmds.extend(verdict_cache_objects(digest))  # before the decision chains that goto accept_decided
    cmds.extend(limit_sets(layout.logging))
    cmds.extend(decision_objects(layout))
    cmds.extend(dispatch_objects(ruleset, fail_closed, placement, guard))
    return cmds
