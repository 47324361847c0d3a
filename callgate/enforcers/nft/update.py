"""Incremental nftables updates: change only what differs, still in ONE transaction.

The full replacement (:func:`~callgate.enforcers.nft.transaction.replace_table`) rebuilds the
whole table; at scale that is a lot of work for the kernel on every pod start.
This planner compares the RuleSet the enforcer last applied with the new one
directly, at the IR level — sets by name (element tuples compared as tuples
first, as Python sets only when they differ), chains by dataclass equality —
and renders commands only for what changed, through the same helpers
:func:`~callgate.enforcers.nft.commands.table_objects` uses, so there is one source of
truth for the layout:

* sets and maps: ``add``/``delete element`` for changed members (a changed map
  value is a delete plus an add of the key), ``add set`` for new ones,
  ``delete set`` for ones no rule uses any more;
* chains: ``add chain`` + rules for new ones, ``flush`` + refill for changed
  ones, ``flush`` + ``delete`` for removed ones;
* dispatch maps and anti-spoofing sets (:mod:`.dispatch`): element by element;
* the digest: ``delete element`` of the old one + ``add element`` of the new
  one in the digest set. The kernel refuses the whole transaction when the old
  one is not there, so the transaction applies only to the table it was
  planned against (the enforcer also looks first, to report drift).

Pod churn elsewhere in the cluster therefore becomes element commands only.

The planner refuses (returns None, and the caller replaces the table in full)
whenever it is not sure: a set changed its type (family, protocol, or hash ↔
interval form), or the base chains' structure changed (fail-closed turned
on or off, another prefix, another placement). Command order inside the transaction respects the kernel's
references: sets and chains exist before rules and map elements use them, and
nothing is deleted while still referenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callgate.compiler.ir import AddressPortSet, AddressSet, Chain, RuleSet
from callgate.enforcers.base import FailClosed, Placement
from callgate.enforcers.nft.commands import (
    address_set_command,
    chain_rules,
    element,
    expand,
    port_elements,
    port_set_command,
    tiers_with_next,
    validate,
)
from callgate.enforcers.nft.dispatch import dispatch_elements, structure
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import (
    FAMILY,
    TABLE,
    digest_swap,
    is_hash_set,
    layout_digest,
    obj,
)
from callgate.enforcers.nft.text import json_key
from callgate.enforcers.nft.transaction import NftTransaction


@dataclass(frozen=True)
class NftUpdate(NftTransaction):
    """An incremental transaction; :meth:`text` lists its commands."""

    def text(self) -> str:
        lines = []
        for cmd in self.commands:
            (verb, body), = cmd.items()
            (kind, item), = body.items()
            name = item.get("name") or item.get("chain", "")
            detail = ""
            if kind == "element":
                detail = " { " + ", ".join(json_key(e) for e in item["elem"]) + " }"
            lines.append(f"{verb} {kind} {item.get('family', FAMILY)} {TABLE} {name}{detail}")
        return "\n".join(lines) + "\n"

    def counts(self) -> dict[str, int]:
        """How many commands of each "verb kind" (for logs and tests)."""
        out: dict[str, int] = {}
        for cmd in self.commands:
            (verb, body), = cmd.items()
            label = f"{verb} {next(iter(body))}"
            out[label] = out.get(label, 0) + 1
        return out


# A tier chain as rendered: its rules depend on the Chain, the direction and
# where PASS goes (the next tier), nothing else.
_ChainKey = tuple[Chain, str, "str | None"]


def _chains(ruleset: RuleSet) -> dict[str, _ChainKey]:
    out: dict[str, _ChainKey] = {}
    for ep in ruleset.endpoints:
        for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
            for chain, next_tier in tiers_with_next(tiers):
                out[chain.name] = (chain, direction, next_tier)
    return out


def _first_difference(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):  # stops at the shorter
        if x != y:
            return i
    return min(len(a), len(b))


def _elements_diff(before: tuple[Any, ...], after: tuple[Any, ...]) -> tuple[list[Any], list[Any]]:
    """(gone, came) between two element tuples: tuple equality first (the
    common case for unchanged sets), sets only when they differ, and then only
    of the part between the common head and tail (a pod coming or going
    changes one spot of a sorted set). Sound for any order: elements are
    unique within a tuple, so one in a common head or tail is in both."""
    if before == after:
        return [], []
    head = _first_difference(before, after)
    tail = _first_difference(before[head:][::-1], after[head:][::-1])
    b, a = set(before[head:len(before) - tail]), set(after[head:len(after) - tail])
    return sorted(b - a), sorted(a - b)


def _json_diff(before: list[Any], after: list[Any]) -> tuple[list[Any], list[Any]]:
    """(gone, came) between two lists of JSON elements, compared as JSON."""
    a = {json_key(e): e for e in before}
    b = {json_key(e): e for e in after}
    return [a[k] for k in sorted(a.keys() - b.keys())], [b[k] for k in sorted(b.keys() - a.keys())]


def _address_set_change(old: AddressSet, new: AddressSet) -> tuple[list[Any], list[Any]] | None:
    """(elements to delete, elements to add) as libnftables JSON; None when the
    set's form changed (family, hash ↔ interval): only a rebuild will do."""
    if old.family != new.family:
        return None
    gone, came = _elements_diff(old.elements, new.elements)
    if not gone and not came:
        return [], []
    hashed = is_hash_set(old)
    if is_hash_set(new) != hashed:
        return None
    if not hashed:
        return [element(e) for e in gone], [element(e) for e in came]
    # The IR's intervals are disjoint within a set, so the addresses that left
    # are those of the vanished intervals minus those of the new ones (an
    # interval that grew is one of each), and the other way round.
    out, into = set(expand(gone, old.family)), set(expand(came, new.family))
    return sorted(out - into), sorted(into - out)


def plan_update(old: RuleSet, old_fc: FailClosed | None, new: RuleSet, new_fc: FailClosed | None,
                placement: Placement = "node") -> NftUpdate | None:
    """One transaction taking the kernel from ``old`` to ``new``; None when only
    a full replacement is safe. The transaction itself checks, in the kernel,
    that the live table holds ``old``'s digest."""
    validate(new, new_fc)
    old_digest, new_digest = layout_digest(old, old_fc, placement), layout_digest(new, new_fc, placement)
    if old_digest == new_digest:
        return None  # nothing to change yet not in sync: drift the digest cannot see
    if structure(old_fc, placement) != structure(new_fc, placement):
        return None  # the dispatch structure itself changed

    # -- sets: (kind, name) -> what to do ------------------------------------
    new_sets: list[Command] = []
    dels: list[Command] = []
    adds: list[Command] = []

    def element_commands(name: str, gone: list[Any], came: list[Any], family: str = FAMILY) -> None:
        if gone:
            dels.append({"delete": {"element": {"family": family, "table": TABLE, "name": name, "elem": gone}}})
        if came:
            adds.append({"add": {"element": {"family": family, "table": TABLE, "name": name, "elem": came}}})

    a_addr = {s.name: s for s in old.address_sets}
    b_addr = {s.name: s for s in new.address_sets}
    a_port = {s.name: s for s in old.port_sets}
    b_port = {s.name: s for s in new.port_sets}
    if (a_addr.keys() & b_port.keys()) or (a_port.keys() & b_addr.keys()):
        return None  # a name changed kind: rebuild
    for name in sorted(b_addr.keys() | b_port.keys()):
        if name in a_addr:
            change = _address_set_change(a_addr[name], b_addr[name])
            if change is None:
                return None
            element_commands(name, *change)
        elif name in a_port:
            before_p: AddressPortSet = a_port[name]
            after_p: AddressPortSet = b_port[name]
            if (before_p.family, before_p.protocol) != (after_p.family, after_p.protocol):
                return None
            gone, came = _elements_diff(before_p.elements, after_p.elements)
            element_commands(name, port_elements(gone), port_elements(came))
        elif name in b_addr:  # new: complete, with its elements
            new_sets.append(address_set_command(b_addr[name]))
        else:
            new_sets.append(port_set_command(b_port[name]))
    gone_sets = sorted((a_addr.keys() | a_port.keys()) - (b_addr.keys() | b_port.keys()))

    # Dispatch maps, anti-spoofing and fail-closed sets: element by element (a
    # map key whose chain changed is a delete and an add, deletions first).
    a_dispatch, b_dispatch = dispatch_elements(old, old_fc, placement), dispatch_elements(new, new_fc, placement)
    for (family, name), after in b_dispatch.items():
        before = a_dispatch.get((family, name), [])
        gone, came = _json_diff(before, after)
        element_commands(name, gone, came, family)

    # -- chains -----------------------------------------------------------------
    a_chains, b_chains = _chains(old), _chains(new)
    new_chains = [n for n in b_chains if n not in a_chains]
    changed_chains = [n for n in b_chains if n in a_chains and a_chains[n] != b_chains[n]]
    gone_chains = [n for n in a_chains if n not in b_chains]

    cmds: list[Command] = digest_swap(old_digest, new_digest)  # first: a refusal comes early
    cmds.extend(new_sets)
    cmds.extend({"add": {"chain": obj(name=n)}} for n in new_chains)  # empty first: gotos may point at them
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in changed_chains)
    for name in (*new_chains, *changed_chains):
        cmds.extend(chain_rules(*b_chains[name]))
    # Deletions before additions: a changed map value is "delete key, add key",
    # and an interval that grows replaces an overlapping one.
    cmds.extend(dels)
    cmds.extend(adds)
    # Removed chains: nothing jumps to them any more (maps and changed chains
    # were updated above); flush all first so chains among them let go of each other.
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in gone_chains)
    cmds.extend({"delete": {"chain": obj(name=n)}} for n in gone_chains)
    cmds.extend({"delete": {"set": obj(name=n)}} for n in gone_sets)
    return NftUpdate(tuple(cmds), new_digest)
