"""One apply as concrete batches for ipset and iptables-restore (see
:mod:`callgate.enforcers.iptables.enforcer` for the order they run in and how
a failure is undone)."""

from __future__ import annotations

from dataclasses import dataclass

from callgate.enforcers.iptables.layout import TMP_PREFIX, VERSIONS, Version, tmp_name
from callgate.enforcers.iptables.live import LiveState, LiveTable
from callgate.enforcers.iptables.rules import Table
from callgate.enforcers.iptables.transaction import IptTransaction
from callgate.errors import KernelError


def restore_text(desired: Table, live: LiveTable | None, rename: dict[str, str] | None = None) -> str:
    """An ``iptables-restore --noflush`` file that turns ``live`` into ``desired``.

    Each of our chains is declared (``:CHAIN - [0:0]`` creates it or flushes
    it) and refilled; chains we own that are no longer wanted are flushed and
    deleted; a jump from a built-in chain is inserted only when missing, and
    jumps no longer wanted are deleted. Nothing else in the table is named,
    so nothing else changes. ``rename`` maps set names (used by ``check`` to
    point rules at staging sets)."""
    stale = [c for c in (live.chains if live else {}) if c not in desired.chains]
    lines = ["*filter", *(f":{c} - [0:0]" for c in (*desired.chains, *stale))]
    for rule in desired.rules:
        for old, new in (rename or {}).items():
            rule = rule.replace(f" --match-set {old} ", f" --match-set {new} ")
        lines.append(rule)
    jumps = live.jumps if live else {}
    for builtin, entry in desired.jumps:
        if not jumps.get((builtin, entry)):
            lines.append(f"-I {builtin} 1 -j {entry}")
    for (builtin, entry), count in sorted(jumps.items()):
        if (builtin, entry) not in desired.jumps:
            lines.extend(f"-D {builtin} -j {entry}" for _ in range(count))
    lines.extend(f"-X {c}" for c in stale)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def empty_table(version: Version) -> Table:
    return Table(version, (), (), jumps=())


@dataclass
class Steps:
    """The concrete, live-dependent batches of one apply (see the module doc)."""

    stage: list[str]  # ipset restore lines: create+fill new sets and staging copies
    created: list[str]  # names step 1 creates (removed again on failure)
    swaps: list[str]  # ipset restore lines: swap staging <-> live
    tables: dict[Version, str]  # restore files
    cleanup: list[str]  # ipset restore lines: destroy staging copies and stale sets


def build_steps(tx: IptTransaction, live: LiveState) -> Steps:
    stage: list[str] = []
    created: list[str] = []
    swaps: list[str] = []
    cleanup: list[str] = []
    wanted = {s.name for s in tx.sets}
    for name in sorted(live.sets):
        if name.startswith(TMP_PREFIX):  # left over from an interrupted apply
            cleanup.append(f"destroy {name}")
    for s in tx.sets:
        current = live.sets.get(s.name)
        if current is None:
            stage += [s.create_line(), *s.add_lines()]
            created.append(s.name)
        elif current.header != s.header:
            # Names encode family and type, so this is someone else's set.
            raise KernelError(f"ipset {s.name} exists as {current.type} family {current.family}; callgate "
                              f"needs {s.type} family {s.family} (remove it, or run `callgate remove`)")
        elif current != s:
            tmp = tmp_name(s.name)
            if tmp in live.sets:
                stage.append(f"destroy {tmp}")
            stage += [s.create_line(tmp), *s.add_lines(tmp)]
            created.append(tmp)
            swaps.append(f"swap {tmp} {s.name}")
            cleanup.append(f"destroy {tmp}")
    cleanup += [f"destroy {n}" for n in sorted(live.sets) if not n.startswith(TMP_PREFIX) and n not in wanted]
    tables = {v: restore_text(tx.table(v), live.tables.get(v)) for v in VERSIONS}
    return Steps(stage, created, swaps, tables, cleanup)
