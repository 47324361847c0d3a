"""The nftables transaction as a value, and the full replacement of the table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import FailClosed, FlowLogging, Placement
from callgate.enforcers.nft.commands import table_objects
from callgate.enforcers.nft.decisions import Layout, build_layout
from callgate.enforcers.nft.dispatch import guard_chains
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import TABLE, GuardHook, families, layout_digest
from callgate.enforcers.nft.text import objects_text


@dataclass(frozen=True)
class NftTransaction:
    """A transaction as a value: build it, look at it, check it, run it.
    This one replaces the whole of callgate's tables (see :class:`~.update.NftUpdate` for
    the incremental kind)."""

    commands: tuple[Command, ...]
    digest: str
    # What each set and chain stands for, shown as '#' lines in text() (the
    # kernel keeps no comments on sets or chains, so these never round-trip).
    notes: tuple[tuple[str, str], ...] = ()
    # The decision part this transaction leaves behind: the enforcer keeps it
    # to plan the next change incrementally.
    layout: Layout | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"nftables": list(self.commands)}

    def text(self) -> str:
        """The table this transaction leaves behind, in nft syntax."""
        adds = [cmd["add"] for cmd in self.commands if "add" in cmd]
        return objects_text(adds, dict(self.notes))


def replace_table(ruleset: RuleSet, fail_closed: FailClosed | None = None, placement: Placement = "node",
                  logging: FlowLogging | None = None, guard: GuardHook = "ingress") -> NftTransaction:
    """One transaction that swaps in the new tables: the kernel holds the old
    ruleset or the new one, never a mix, and never an empty moment. ``guard``:
    where a node's source checks run (:data:`~.layout.GuardHook`)."""
    commands: list[Command] = []
    for family in families(placement):
        table = {"table": {"family": family, "name": TABLE}}
        # "add table" first makes the "delete" valid even when no table exists yet.
        commands.extend([{"add": table}, {"delete": table}])
    layout = build_layout(ruleset, logging)
    commands.extend(table_objects(ruleset, fail_closed, placement, layout, guard))
    return NftTransaction(tuple(commands), layout_digest(ruleset, fail_closed, placement, logging, guard),
                          notes=_readable_notes(ruleset, layout, placement, guard), layout=layout)


def _readable_notes(ruleset: RuleSet, layout: Layout, placement: Placement,
                    guard: GuardHook) -> tuple[tuple[str, str], ...]:
    """What each map and chain stands for, for people reading the text form."""
    notes: list[tuple[str, str]] = []
    hook = "on its ingress hook" if guard == "ingress" else "from the forward chain"
    for name, chain in guard_chains(ruleset, placement, guard).items():
        notes.append((name, f"source check of {chain.interface}, {hook}"))
    for ep in ruleset.endpoints:
        where = ep.interface or ep.netns
        for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
            for position, tier in enumerate(tiers):
                after = f", tier {position + 1}" if len(tiers) > 1 else ""
                notes.append((tier.name, f"{direction} of {ep.endpoint} ({where}){after}"))
    for name, m in sorted(layout.maps.items()):
        family = "IPv4" if m.family == "ip" else "IPv6"
        notes.append((name, f"{m.direction} decisions of one tier by address . protocol . port, {family}"))
    for name in sorted(layout.passes):
        notes.append((name, "a pass goes on to the endpoint's next tier"))
    return tuple(notes)
