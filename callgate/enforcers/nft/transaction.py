"""The nftables transaction as a value, and the full replacement of the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callgate.compiler.compile import chain_tier
from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import FailClosed, Placement
from callgate.enforcers.nft.commands import table_objects
from callgate.enforcers.nft.kernel import Command
from callgate.enforcers.nft.layout import TABLE, families, layout_digest
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

    def to_json(self) -> dict[str, Any]:
        return {"nftables": list(self.commands)}

    def text(self) -> str:
        """The table this transaction leaves behind, in nft syntax."""
        adds = [cmd["add"] for cmd in self.commands if "add" in cmd]
        return objects_text(adds, dict(self.notes))


def replace_table(ruleset: RuleSet, fail_closed: FailClosed | None = None, placement: Placement = "node",
                  ) -> NftTransaction:
    """One transaction that swaps in the new tables: the kernel holds the old
    ruleset or the new one, never a mix, and never an empty moment."""
    commands: list[Command] = []
    for family in families(placement):
        table = {"table": {"family": family, "name": TABLE}}
        # "add table" first makes the "delete" valid even when no table exists yet.
        commands.extend([{"add": table}, {"delete": table}])
    commands.extend(table_objects(ruleset, fail_closed, placement))
    return NftTransaction(tuple(commands), layout_digest(ruleset, fail_closed, placement),
                          notes=_readable_notes(ruleset))


def _readable_notes(ruleset: RuleSet) -> tuple[tuple[str, str], ...]:
    """What each set and chain stands for, for people reading the text form."""
    notes = [(s.name, s.comment) for s in ruleset.address_sets if s.comment]
    notes.extend((s.name, s.comment) for s in ruleset.port_sets if s.comment)
    for ep in ruleset.endpoints:
        where = ep.interface or ep.netns
        notes.extend((c.name, f"ingress of {ep.endpoint} ({where}){_tier_note(c.name)}") for c in ep.ingress)
        notes.extend((c.name, f"egress of {ep.endpoint} ({where}){_tier_note(c.name)}") for c in ep.egress)
    return tuple(notes)


def _tier_note(chain: str) -> str:
    tier = chain_tier(chain)
    return f", {tier.value} tier" if tier is not None else ""
