"""Incremental nftables updates: change only what differs, still in ONE transaction.

The full replacement (:func:`~callgate.enforcers.nft.transaction.replace_table`) rebuilds the
whole table; at scale that is a lot of work for the kernel on every pod start.
This planner takes the decision layout the enforcer last applied
(:class:`~callgate.enforcers.nft.decisions.Layout`), patches it for the new
RuleSet — re-deciding only the addresses whose set membership changed
(:func:`~callgate.enforcers.nft.decisions.update_layout`) — and renders
commands only for what changed, through the same helpers the full table uses:

* decision maps: ``add``/``delete element`` for changed cells, ``add map``
  for new programs, ``delete map`` for ones no endpoint has any more; the
  peer sets of the rule walks, the dispatch maps and the fail-closed set
  likewise;
* chains (endpoint chains, rule chains): ``add chain`` + rules for new ones,
  ``flush`` + refill for changed ones, ``flush`` + ``delete`` for removed ones;
* dispatch maps and anti-spoofing sets (:mod:`.dispatch`): element by element;
  the source chains (base chains on a veth's ingress hook, or the chains
  ``endpoint_guard`` jumps to) like endpoint chains;
* the verdict cache's tag: its two elements swapped (:func:`.dispatch.verdict_tag_swap`);
* the digest: ``delete element`` of the old one + ``add element`` of the new
  one in the digest set. The kernel refuses the whole transaction when the old
  one is not there, so the transaction applies only to the table it was
  planned against (the enforcer also looks first, to report drift).

Pod churn elsewhere in the cluster therefore becomes element commands only.

The planner refuses (returns None, and the caller replaces the table in full)
whenever it is not sure: a map or set changes form (hash ↔ interval), a map its port classes,
or the base chains' structure changed (fail-closed turned on or off, another
prefix, another placement). Command order inside the transaction respects the kernel's
references: chains and maps exist before rules and elements use them, and
nothing is deleted while still referenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callgate.compiler.ir import AddressSet, RuleSet
from callgate.enforcers.base import FailClosed, Placement
from callgate.enforcers.nft.commands import (
    address_set_command,
    element,
    endpoint_chain_commands,
    expand,
    validate,
    verdict_chain_commands,
)
from callgate.enforcers.nft.decisions import (
    Layout,
    differing_middles,
    elements_diff,
    next_map_command,
    update_layout,
)
from callgate.enforcers.nft.dispatch import (
    dispatch_elements,
    guard_chain,
    guard_chain_commands,
    guard_chain_declaration,
    guard_chain_of,
    guard_sources,
    structure,
    verdict_tag_swap,
)
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import (
    FAMILY,
    TABLE,
    GuardHook,
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


def _json_diff(before: list[Any], after: list[Any]) -> tuple[list[Any], list[Any]]:
    """(gone, came) between two lists of JSON elements, compared as JSON.

    Both lists are built in one order (by address, by interface), so only the
    middle where they differ is keyed as JSON text (keying all of them was ~550
    ``json.dumps`` a local pod's start). The elements of one set or map are
    unique; should a list repeat one, what is found is checked against the
    whole other list, so it cannot pass as gone or new."""
    if before == after:  # the common case (a change touches one or two of them)
        return [], []
    left, right = differing_middles(before, after)
    a = {json_key(e): e for e in left}
    b = {json_key(e): e for e in right}
    return ([a[k] for k in sorted(a.keys() - b.keys()) if a[k] not in after],
            [b[k] for k in sorted(b.keys() - a.keys()) if b[k] not in before])


def _address_set_change(old: AddressSet, new: AddressSet) -> tuple[list[Any], list[Any]] | None:
    """(elements to delete, elements to add) as libnftables JSON; None when the
    set's form changed (family, hash ↔ interval): only a rebuild will do."""
    if old.family != new.family:
        return None
    gone, came = elements_diff(old.elements, new.elements)
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


def plan_update(old: RuleSet, old_fc: FailClosed | None, old_layout: Layout, new: RuleSet,
                new_fc: FailClosed | None, placement: Placement = "node",
                guard: GuardHook = "ingress") -> NftUpdate | None:
    """One transaction taking the kernel from ``old`` (whose decision part is
    ``old_layout``) to ``new``; None when only a full replacement is safe.
    The transaction itself checks, in the kernel, that the live table holds
    ``old``'s digest; it carries the new layout for the next change."""
    validate(new, new_fc)
    logging = old_layout.logging  # the table's: a change of it is a full replacement (the enforcer keeps it)
    old_digest = layout_digest(old, old_fc, placement, logging, guard)
    new_digest = layout_digest(new, new_fc, placement, logging, guard)
    if old_digest == new_digest:
        return None  # nothing to change yet not in sync: drift the digest cannot see
    if structure(old_fc, placement) != structure(new_fc, placement):
        return None  # the dispatch structure itself changed
    patched = update_layout(old_layout, old, new)
    if patched is None:
        return None
    layout, changes = patched

    dels: list[Command] = []
    adds: list[Command] = []

    def element_commands(name: str, gone: list[Any], came: list[Any], family: str = FAMILY) -> None:
        if gone:
            dels.append({"delete": {"element": {"family": family, "table": TABLE, "name": name, "elem": gone}}})
        if came:
            adds.append({"add": {"element": {"family": family, "table": TABLE, "name": name, "elem": came}}})

    for name in sorted(layout.sets.keys() & old_layout.sets.keys()):
        set_change = _address_set_change(old_layout.sets[name], layout.sets[name])
        if set_change is None:
            return None
        element_commands(name, *set_change)
    new_sets = sorted(layout.sets.keys() - old_layout.sets.keys())
    gone_sets = sorted(old_layout.sets.keys() - layout.sets.keys())
    for name, change in sorted(changes.items()):
        before, after = old_layout.maps[name], layout.maps[name]
        element_commands(name, before.element_json((k, before.elements[k]) for k in change.gone),
                         after.element_json(change.came))
    new_maps = sorted(layout.maps.keys() - old_layout.maps.keys())
    gone_maps = sorted(old_layout.maps.keys() - layout.maps.keys())

    # The next maps (which endpoint tier chain a pass goes on to), dispatch
    # maps, anti-spoofing and fail-closed sets: element by element (a
    # map key whose chain changed is a delete and an add, deletions first).
    new_passes = sorted(layout.passes.keys() - old_layout.passes.keys())
    gone_passes = sorted(old_layout.passes.keys() - layout.passes.keys())
    new_next = sorted(layout.continuations.keys() - old_layout.continuations.keys())
    gone_next = sorted(old_layout.continuations.keys() - layout.continuations.keys())
    for name, now in sorted(layout.continuations.items()):
        if name in old_layout.continuations:
            element_commands(name, *_json_diff(old_layout.continuations[name], now))
    for name in gone_next:  # emptied before the endpoint chains they name go
        element_commands(name, list(old_layout.continuations[name]), [])
    # The dispatch elements come from the endpoints, the local endpoints and the
    # fail-closed interfaces alone: when those are the same objects (a change
    # elsewhere in the cluster), so are the elements.
    if not (old.endpoints is new.endpoints and old.local is new.local and old_fc == new_fc):
        a_dispatch, b_dispatch = (dispatch_elements(old, old_fc, placement, guard),
                                  dispatch_elements(new, new_fc, placement, guard))
        for (family, name), now in b_dispatch.items():
            gone, came = _json_diff(a_dispatch.get((family, name), []), now)
            element_commands(name, gone, came, family)

    new_verdicts = [n for n in layout.verdicts if n not in old_layout.verdicts]
    changed_verdicts = [n for n in layout.verdicts if n in old_layout.verdicts
                        and old_layout.verdicts[n] != layout.verdicts[n]]
    gone_verdicts = [n for n in old_layout.verdicts if n not in layout.verdicts]
    new_chains = [n for n in layout.chains if n not in old_layout.chains]
    changed_chains = [n for n in layout.chains if n in old_layout.chains and old_layout.chains[n] != layout.chains[n]]
    gone_chains = [n for n in old_layout.chains if n not in layout.chains]
    # Source chains follow the local endpoints only; most changes are elsewhere in the cluster.
    # Only the interfaces whose sources changed get their chains built.
    a_src, b_src = ({}, {}) if old.local == new.local else (guard_sources(old, placement),
                                                          guard_sources(new, placement))
    b_guard = {guard_chain(iface): guard_chain_of(iface, sources, guard) for iface, sources in sorted(b_src.items())
               if a_src.get(iface) != sources}
    new_guards = [guard_chain(iface) for iface in sorted(b_src) if iface not in a_src]
    changed_guards = [guard_chain(iface) for iface in sorted(b_src) if iface in a_src and a_src[iface] != b_src[iface]]
    gone_guards = [guard_chain(iface) for iface in sorted(a_src) if iface not in b_src]

    cmds: list[Command] = digest_swap(old_digest, new_digest)  # first: a refusal comes early
    # Another table: every flow decided under the old one is decided again.
    cmds.extend(verdict_tag_swap(old_digest, new_digest))
    cmds.extend(address_set_command(layout.sets[n]) for n in new_sets)
    # Rule chains before the map elements that jump to them; maps before the chains that look them up.
    cmds.extend({"add": {"chain": obj(name=n)}} for n in new_verdicts)
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in changed_verdicts)
    for n in (*new_verdicts, *changed_verdicts):
        cmds.extend(verdict_chain_commands(n, layout.verdicts[n]))
    cmds.extend({"add": {"chain": obj(name=n)}} for n in new_passes)  # empty: map elements may name them
    cmds.extend(layout.maps[n].command() for n in new_maps)
    cmds.extend({"add": {"chain": obj(name=n)}} for n in new_chains)  # empty first: dispatch may point at them
    # Before endpoint_guard's elements (forward guard) that jump to them.
    cmds.extend(guard_chain_declaration(n, b_guard[n], guard) for n in new_guards)
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in changed_guards)
    for name in (*new_guards, *changed_guards):
        cmds.extend(guard_chain_commands(name, b_guard[name]))
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in changed_chains)
    for name in (*new_chains, *changed_chains):
        cmds.extend(endpoint_chain_commands(name, layout.chains[name]))
    # Next maps name endpoint chains; pass chains look them up.
    cmds.extend(next_map_command(n, layout.continuations[n]) for n in new_next)
    for name in new_passes:
        cmds.extend(endpoint_chain_commands(name, layout.passes[name]))
    # Deletions before additions: a changed map value is "delete key, add key".
    cmds.extend(dels)
    cmds.extend(adds)
    # What nothing refers to any more: endpoint chains (the dispatch maps let
    # go above), then their maps, then rule chains (whose elements are gone).
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in gone_chains)
    cmds.extend({"delete": {"chain": obj(name=n)}} for n in gone_chains)
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in gone_guards)  # endpoint_guard (if any) let go above
    cmds.extend({"delete": {"chain": obj(name=n)}} for n in gone_guards)
    cmds.extend({"delete": {"map": obj(name=n)}} for n in gone_maps)
    # Pass chains last of the decision part: map elements and walks named them.
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in gone_passes)
    cmds.extend({"delete": {"map": obj(name=n)}} for n in gone_next)
    cmds.extend({"delete": {"chain": obj(name=n)}} for n in gone_passes)
    cmds.extend({"delete": {"set": obj(name=n)}} for n in gone_sets)
    cmds.extend({"flush": {"chain": obj(name=n)}} for n in gone_verdicts)
    cmds.extend({"delete": {"chain": obj(name=n)}} for n in gone_verdicts)
    return NftUpdate(tuple(cmds), new_digest, layout=layout)
