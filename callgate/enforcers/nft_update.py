"""Incremental nftables updates: change only what differs, still in ONE transaction.

The full replacement (:func:`callgate.enforcers.nft.replace_table`) rebuilds the
whole table; at scale that is a lot of work for the kernel on every pod start.
This planner compares the table the enforcer last applied with the table the
new RuleSet wants — both as the very same ``add`` commands
:func:`~callgate.enforcers.nft.table_objects` builds, so there is one source of
truth for the layout — and emits only the difference:

* sets and maps: ``add``/``delete element`` for changed members (a changed map
  value is a delete plus an add of the key), ``add set`` for new ones,
  ``delete set`` for ones no rule uses any more;
* chains: ``add chain`` + rules for new ones, ``flush`` + refill for changed
  ones, ``flush`` + ``delete`` for removed ones;
* the digest: the forward chain's first rule carries it in its comment, so it
  is swapped with ``replace rule`` by the handle read from the live listing.

Pod churn elsewhere in the cluster therefore becomes element commands only.

The planner refuses (returns None, and the caller replaces the table in full)
whenever it is not sure: the live digest is not the one last applied (drift),
the digest rule cannot be found, a set changed its type, or the forward chain's
structure changed (e.g. a different fail-closed prefix). Command order inside
the transaction respects the kernel's references: sets and chains exist before
rules and map elements use them, and nothing is deleted while still referenced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from callgate.compiler.ir import RuleSet
from callgate.enforcers.kernel import Command
from callgate.enforcers.nft import (
    FAMILY,
    FORWARD,
    TABLE,
    FailClosed,
    NftTransaction,
    digest_rule,
    layout_digest,
    table_objects,
)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass
class _Table:
    """A table as our own ``add`` commands describe it, indexed for diffing."""

    sets: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # name -> (kind, body sans elem)
    elements: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {key: element}
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> chain body
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # chain -> rule bodies, in order

    @classmethod
    def of(cls, commands: Iterable[Command]) -> _Table:
        table = cls()
        for cmd in commands:
            (kind, body), = cmd["add"].items()
            if kind in ("set", "map"):
                table.sets[body["name"]] = (kind, {k: v for k, v in body.items() if k != "elem"})
                table.elements[body["name"]] = {_key(e): e for e in body.get("elem", ())}
            elif kind == "chain":
                table.chains[body["name"]] = body
                table.rules.setdefault(body["name"], [])
            elif kind == "rule":
                table.rules.setdefault(body["chain"], []).append(body)
        return table


def _obj(**fields: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **fields}


def _without_digest(rules: list[dict[str, Any]]) -> list[str]:
    return [_key({k: v for k, v in r.items() if k != "comment"}) if i == 0 else _key(r) for i, r in enumerate(rules)]


@dataclass(frozen=True)
class NftUpdate(NftTransaction):
    """An incremental transaction; :meth:`text` lists its commands."""

    def text(self) -> str:
        lines = []
        for cmd in self.commands:
            (verb, body), = cmd.items()
            (kind, obj), = body.items()
            name = obj.get("name") or obj.get("chain", "")
            detail = ""
            if kind == "element":
                detail = " { " + ", ".join(_key(e) for e in obj["elem"]) + " }"
            elif kind == "rule" and verb == "replace":
                detail = f" handle {obj['handle']}"
            lines.append(f"{verb} {kind} {FAMILY} {TABLE} {name}{detail}")
        return "\n".join(lines) + "\n"

    def counts(self) -> dict[str, int]:
        """How many commands of each "verb kind" (for logs and tests)."""
        out: dict[str, int] = {}
        for cmd in self.commands:
            (verb, body), = cmd.items()
            label = f"{verb} {next(iter(body))}"
            out[label] = out.get(label, 0) + 1
        return out


def plan_update(old: RuleSet, old_fc: FailClosed | None, new: RuleSet, new_fc: FailClosed | None,
                live: list[dict[str, Any]]) -> NftUpdate | None:
    """One transaction taking the kernel from ``old`` (which ``live`` must
    hold, as its digest says) to ``new``; None when only a full replacement is safe."""
    old_digest, new_digest = layout_digest(old, old_fc), layout_digest(new, new_fc)
    holder = digest_rule(live)
    if holder is None or "handle" not in holder or holder.get("comment", "").removeprefix("callgate sha256:") != old_digest:
        return None
    a, b = _Table.of(table_objects(old, old_fc)), _Table.of(table_objects(new, new_fc))
    if (b.chains.get(FORWARD) != a.chains.get(FORWARD)
            or _without_digest(a.rules.get(FORWARD, [])) != _without_digest(b.rules.get(FORWARD, []))):
        return None  # the dispatch structure itself changed
    for name in a.sets.keys() & b.sets.keys():
        if a.sets[name] != b.sets[name]:
            return None  # same name, different type: rebuild

    new_sets = [n for n in b.sets if n not in a.sets]
    gone_sets = [n for n in a.sets if n not in b.sets]
    chains = [n for n in b.chains if n != FORWARD]
    new_chains = [n for n in chains if n not in a.chains]
    changed_chains = [n for n in chains if n in a.chains and
                      [_key(r) for r in a.rules[n]] != [_key(r) for r in b.rules[n]]]
    gone_chains = [n for n in a.chains if n not in b.chains]

    cmds: list[Command] = []
    for name in new_sets:  # complete, with their elements
        kind, body = b.sets[name]
        full = dict(body)
        if b.elements[name]:
            full["elem"] = list(b.elements[name].values())
        cmds.append({"add": {kind: full}})
    cmds.extend({"add": {"chain": _obj(name=n)}} for n in new_chains)  # empty first: gotos may point at them
    cmds.extend({"flush": {"chain": _obj(name=n)}} for n in changed_chains)
    for name in (*new_chains, *changed_chains):
        cmds.extend({"add": {"rule": r}} for r in b.rules[name])
    # Deletions before additions: a changed map value is "delete key, add key",
    # and an interval that grows replaces an overlapping one.
    dels, adds = [], []
    for name in b.sets.keys() & a.sets.keys():
        before, after = a.elements[name], b.elements[name]
        if gone := [before[k] for k in sorted(before.keys() - after.keys())]:
            dels.append({"delete": {"element": _obj(name=name, elem=gone)}})
        if came := [after[k] for k in sorted(after.keys() - before.keys())]:
            adds.append({"add": {"element": _obj(name=name, elem=came)}})
    cmds.extend(sorted(dels, key=_key))
    cmds.extend(sorted(adds, key=_key))
    # Removed chains: nothing jumps to them any more (maps and changed chains
    # were updated above); flush all first so chains among them let go of each other.
    cmds.extend({"flush": {"chain": _obj(name=n)}} for n in gone_chains)
    cmds.extend({"delete": {"chain": _obj(name=n)}} for n in gone_chains)
    cmds.extend({"delete": {a.sets[n][0]: _obj(name=n)}} for n in gone_sets)
    if not cmds and old_digest == new_digest:
        return None  # nothing to change yet not in sync: drift the digest cannot see
    cmds.append({"replace": {"rule": {**b.rules[FORWARD][0], "handle": holder["handle"]}}})
    return NftUpdate(tuple(cmds), new_digest, replaces_table=False)
