"""iptables backend: the RuleSet IR as ipsets plus iptables/ip6tables chains.

The layout is described in :mod:`callgate.enforcers.ipt_render`; this module
moves the kernel from its live state to the planned one, touching only what
callgate owns: ``cg-*`` sets, ``CG-*`` chains and the single ``-j CG-FORWARD``
rule in FORWARD.

iptables has no single transaction spanning ipset, IPv4 and IPv6, so an apply
is a sequence of steps that are each atomic, ordered so that nothing live
changes until everything has been validated, and undone in reverse if a later
step is refused:

1. ``ipset restore``: create new sets under their final names and, for sets
   whose content changes, a staging copy (``cg+...``). Nothing references any
   of them yet, so traffic is unaffected.
2. ``iptables-restore --test`` and ``ip6tables-restore --test`` of the new
   chains (this also checks that every referenced set exists).
3. ``ipset restore``: ``swap`` each staging copy with its live set (each swap
   is atomic; the staging name now holds the old content, kept for undo).
4. ``iptables-restore --noflush -w``: callgate's IPv4 chains, each declared
   (which flushes it) and refilled, stale ones deleted, the FORWARD jump
   inserted at position 1 if missing: one commit. Then the same for IPv6.
5. ``ipset restore``: destroy the staging copies and the sets no longer used.

A failure in 1-2 removes what step 1 created. A failure in 4 swaps the sets
back, restores the IPv4 chains if they had been committed and removes what step
1 created: the kernel holds the previous state again.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from callgate.compiler.ir import RuleSet
from callgate.enforcers.ipt_kernel import LiveState, LiveTable, Runner, SubprocessRunner, Tools, read_live
from callgate.enforcers.ipt_render import (
    FORWARD_CHAIN,
    TMP_PREFIX,
    VERSIONS,
    FailClosed,
    IptTransaction,
    Table,
    Version,
    plan,
    render_state,
    tmp_name,
)
from callgate.errors import KernelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    """What this enforcer last put into the kernel."""

    ruleset: RuleSet
    digest: str


@dataclass
class ApplyResult:
    changed: bool
    digest: str
    transaction: IptTransaction
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)


def restore_text(desired: Table, live: LiveTable | None, rename: dict[str, str] | None = None) -> str:
    """An ``iptables-restore --noflush`` file that turns ``live`` into ``desired``.

    Each of our chains is declared (``:CHAIN - [0:0]`` creates it or flushes
    it) and refilled; chains we own that are no longer wanted are flushed and
    deleted; the FORWARD jump is inserted only when missing. Nothing else in
    the table is named, so nothing else changes. ``rename`` maps set names
    (used by ``check`` to point rules at staging sets)."""
    stale = [c for c in (live.chains if live else {}) if c not in desired.chains]
    lines = ["*filter", *(f":{c} - [0:0]" for c in (*desired.chains, *stale))]
    for rule in desired.rules:
        for old, new in (rename or {}).items():
            rule = rule.replace(f" --match-set {old} ", f" --match-set {new} ")
        lines.append(rule)
    jumps = live.jumps if live else 0
    if desired.jump and not jumps:
        lines.append(f"-I FORWARD 1 -j {FORWARD_CHAIN}")
    if not desired.jump:
        lines.extend(f"-D FORWARD -j {FORWARD_CHAIN}" for _ in range(jumps))
    lines.extend(f"-X {c}" for c in stale)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _empty_table(version: Version) -> Table:
    return Table(version, (), (), jump=False)


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


class IptablesEnforcer:
    """Applies RuleSets with ipset + iptables/ip6tables in one network namespace."""

    name = "iptables"

    def __init__(self, runner: Runner | None = None, variant: str | None = None, netns: str | None = None,
                 fail_closed_prefix: str | None = None) -> None:
        self.runner: Runner = runner or SubprocessRunner(netns)
        self.tools = Tools.choose(variant)
        self.fail_closed_prefix = fail_closed_prefix
        if fail_closed_prefix is not None:  # validate now, not at the first apply
            FailClosed.build(fail_closed_prefix, RuleSet(node=""))
        self.applied: Applied | None = None
        self._other: tuple[Tools | None] | None = None

    # -- plumbing ---------------------------------------------------------------

    def _ipset(self, lines: Iterable[str]) -> None:
        batch = list(lines)
        if batch:
            self.runner.run(["ipset", "restore"], stdin="\n".join(batch) + "\n")

    def _restore(self, version: Version, text: str, test: bool = False) -> None:
        argv = [self.tools.restore(version), "--noflush", "-w"]
        self.runner.run([*argv, "--test"] if test else argv, stdin=text)

    def _destroy_quietly(self, names: Iterable[str]) -> None:
        """Best-effort undo: destroy those of ``names`` that exist."""
        try:
            existing = set(self.live().sets)
            self._ipset(f"destroy {n}" for n in names if n in existing)
        except KernelError as exc:  # undo must not hide the original error
            log.warning("could not remove staged ipsets: %s", exc)

    # -- the Enforcer protocol ----------------------------------------------------

    def fail_closed(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> FailClosed | None:
        if self.fail_closed_prefix is None:
            return None
        return FailClosed.build(self.fail_closed_prefix, ruleset, known_interfaces)

    def plan(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> IptTransaction:
        """The desired state; pure (no kernel access). Raises InputError for
        what iptables cannot express, before anything is applied.
        ``known_interfaces`` matters only in fail-closed mode (as for nft)."""
        return plan(ruleset, self.fail_closed(ruleset, known_interfaces))

    def check(self, tx: IptTransaction) -> None:
        """Validate ``tx`` against the kernel without changing what is enforced.

        The sets are created under staging names (nothing references them),
        so the kernel validates every element, and the chains are checked with
        ``--test`` pointing at those staging sets; then the staging sets go."""
        live = self.live()
        stale_tmp = [n for n in live.sets if n.startswith(TMP_PREFIX)]
        rename = {s.name: tmp_name(s.name) for s in tx.sets}
        staged = list(rename.values())
        try:
            self._ipset([*(f"destroy {n}" for n in stale_tmp),
                         *(line for s in tx.sets for line in (s.create_line(rename[s.name]), *s.add_lines(rename[s.name])))])
            for v in VERSIONS:
                self._restore(v, restore_text(tx.table(v), live.tables.get(v), rename), test=True)
        finally:
            self._destroy_quietly(staged)

    def other_tools(self) -> Tools | None:
        """The other iptables variant, where an earlier apply may have left chains."""
        if self._other is None:
            self._other = (self.tools.other(self.runner),)
        return self._other[0]

    def live(self) -> LiveState:
        return read_live(self.runner, self.tools, self.other_tools())

    def _live_text(self, live: LiveState) -> str | None:
        if live.empty:
            return None
        text = render_state(live.sets.values(), (live.tables[v].table() for v in VERSIONS))
        other = self.other_tools()
        for v, table in sorted(live.foreign.items()):
            # Shown so that diff reports them; the next apply removes them.
            text += f"# {other.restore(v) if other else '?'}: callgate chains of the other variant\n"
            text += table.table().text() + "\n"
        return text

    def live_text(self) -> str | None:
        return self._live_text(self.live())

    def live_digest(self) -> str | None:
        """The digest recorded in the IPv4 CG-FORWARD chain, if any."""
        return self.live().tables[4].digest()

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        return self.plan(ruleset, known_interfaces).text()

    def diff(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> list[str]:
        """Unified diff from the live state to the desired one; empty when equal."""
        live = self.live_text() or ""
        return list(difflib.unified_diff(live.splitlines(), self.desired_text(ruleset, known_interfaces).splitlines(),
                                         "live", "desired", lineterm=""))

    def in_sync(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> bool:
        return self.live_text() == self.desired_text(ruleset, known_interfaces)

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Sequence[str] = (),
              incremental: bool = True) -> ApplyResult:
        """Make the kernel hold ``ruleset``; a no-op when it already does. With
        ``dry_run`` the kernel validates everything and nothing is enforced.

        Every apply is computed against the live state (sets whose content is
        unchanged are left alone, changed ones are swapped), so
        ``incremental`` is accepted for interface parity with nft and ignored."""
        del incremental
        tx = self.plan(ruleset, known_interfaces)
        live = self.live()
        if self._live_text(live) == tx.text():
            self.applied = Applied(ruleset, tx.digest)
            return ApplyResult(False, tx.digest, tx, dry_run)
        if dry_run:
            self.check(tx)
            return ApplyResult(True, tx.digest, tx, dry_run)
        result = self._execute(tx, live, build_steps(tx, live))
        self.applied = Applied(ruleset, tx.digest)
        return result

    def _execute(self, tx: IptTransaction, live: LiveState, steps: Steps) -> ApplyResult:
        result = ApplyResult(True, tx.digest, tx)
        try:
            self._ipset(steps.stage)
            for v in VERSIONS:
                self._restore(v, steps.tables[v], test=True)
        except KernelError:
            self._destroy_quietly(steps.created)
            raise
        self._ipset(steps.swaps)  # same type and family: a swap is not refused
        committed: list[Version] = []
        try:
            for v in VERSIONS:
                self._restore(v, steps.tables[v])
                committed.append(v)
        except KernelError:
            self._undo(live, committed, steps)
            raise
        self._remove_foreign(live, result.warnings)
        try:
            self._ipset(steps.cleanup)
        except KernelError as exc:
            # The new rules are live; a leftover unreferenced set is untidy, not wrong.
            result.warnings.append(f"could not remove unused ipsets (retried on the next apply): {exc}")
            log.warning("%s", result.warnings[-1])
        return result

    def _undo(self, live: LiveState, committed: list[Version], steps: Steps) -> None:
        """Put back the chains of ``committed`` versions and the swapped sets."""
        try:
            for v in committed:
                now = self.live().tables[v]
                before = live.tables.get(v) or LiveTable(v)
                self._restore(v, restore_text(before.table() if not before.empty else _empty_table(v), now))
            self._ipset(steps.swaps)  # swapping again restores the old content
        except KernelError as exc:
            log.error("could not undo a failed apply: %s", exc)
        self._destroy_quietly(steps.created)

    def _remove_foreign(self, live: LiveState, warnings: list[str]) -> None:
        """Take callgate's chains out of the other iptables variant (after a
        switch of CALLGATE_IPTABLES): two variants filtering at once, sharing
        sets, would be hard to reason about."""
        other = self.other_tools()
        for v, table in sorted(live.foreign.items()):
            if other is None:
                break
            try:
                self.runner.run([other.restore(v), "--noflush", "-w"], stdin=restore_text(_empty_table(v), table))
            except KernelError as exc:
                warnings.append(f"could not remove callgate's chains from {other.restore(v)}: {exc}")
                log.warning("%s", warnings[-1])

    def remove(self) -> bool:
        """Delete every CG-* chain, the FORWARD jump and every cg- set. True if
        there was something."""
        live = self.live()
        if live.empty:
            return False
        for v in VERSIONS:
            if not live.tables[v].empty:
                self._restore(v, restore_text(_empty_table(v), live.tables[v]))
        warnings: list[str] = []
        self._remove_foreign(live, warnings)
        if warnings:
            raise KernelError("; ".join(warnings))
        self._ipset(f"destroy {n}" for n in sorted(live.sets))
        self.applied = None
        return True


def nft_available(netns: str | None = None) -> bool:
    """Can libnftables talk to the kernel here? (Decides ``--backend auto``.)"""
    try:
        from callgate.enforcers.kernel import LibNftables

        kernel = LibNftables(netns)
        try:
            kernel.list_tables()
        finally:
            kernel.close()
    except Exception as exc:  # missing bindings, no nf_tables, no permission: all mean "no"
        log.debug("nftables not usable, choosing iptables: %s", exc)
        return False
    return True
