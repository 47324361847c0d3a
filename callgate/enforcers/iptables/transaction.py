"""The iptables transaction as a value: the sets and chains callgate will own."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import FailClosed, FlowLogging, Placement, equal_sets
from callgate.enforcers.iptables.layout import VERSIONS, Version, layout_digest
from callgate.enforcers.iptables.rules import Table, ruleset_table, validate
from callgate.enforcers.iptables.sets import IpSet, ruleset_sets, source_sets

TOOLS: dict[Version, str] = {4: "iptables", 6: "ip6tables"}


@dataclass(frozen=True)
class IptTransaction:
    """What callgate will own after the apply: sets, and its part of the IPv4 and
    IPv6 filter tables. A value: build it, look at it, check it, apply it."""

    digest: str
    sets: tuple[IpSet, ...]
    tables: tuple[Table, Table]

    def table(self, version: Version) -> Table:
        return self.tables[VERSIONS.index(version)]

    def text(self) -> str:
        return render_state(self.sets, self.tables)

    def to_json(self) -> dict[str, Any]:
        """The same content as data: each ipset with its elements, and per
        tool the chains and the rules as ``iptables-restore`` lines."""
        return {
            "digest": self.digest,
            "ipsets": [{"name": s.name, "type": s.type, "family": s.family, "maxelem": s.maxelem,
                        "elements": list(s.elements)} for s in sorted(self.sets, key=lambda s: s.name)],
            **{TOOLS[t.version]: {"chains": list(t.chains), "rules": list(t.rules),
                                  "jumps": [f"{builtin} -> {entry}" for builtin, entry in t.jumps]}
               for t in self.tables},
        }


def render_state(sets: Iterable[IpSet], tables: Iterable[Table]) -> str:
    """The normalised text both the desired and the live state are shown in."""
    parts = ["# ipset"]
    parts.extend(s.text() for s in sorted(sets, key=lambda s: s.name))
    for table in tables:
        parts.append(f"# {TOOLS[table.version]} (IPv{table.version})")
        parts.append(table.text())
    return "\n".join(parts) + "\n"


def plan(ruleset: RuleSet, fail_closed: FailClosed | None = None, placement: Placement = "node",
         logging: FlowLogging | None = None) -> IptTransaction:
    """The desired state for ``ruleset``; InputError for what iptables cannot express."""
    validate(ruleset, fail_closed)
    instead = equal_sets(ruleset.address_sets)  # once: the ipsets and both tables' rules follow it
    sets = ruleset_sets(ruleset, instead) + (source_sets(ruleset) if placement == "node" else ())
    return IptTransaction(layout_digest(ruleset, fail_closed, placement, logging),
                          tuple(sorted(sets, key=lambda s: s.name)),
                          (ruleset_table(ruleset, 4, instead, fail_closed, placement, logging),
                           ruleset_table(ruleset, 6, instead, fail_closed, placement, logging)))
