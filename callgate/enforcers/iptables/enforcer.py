"""The iptables enforcer: move the kernel from its live state to the planned one.

The layout is described in :mod:`callgate.enforcers.iptables.layout`; this
module touches only what callgate owns: ``cg-*`` sets, ``CG-*`` chains and the
single ``-j CG-FORWARD`` rule in FORWARD.

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

import logging
from collections.abc import Iterable

from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import (
    Applied,
    ApplyResult,
    ComparesNormalText,
    FailClosed,
    FlowLogging,
    Placement,
    RuleCounters,
    check_fail_closed_prefix,
)
from callgate.enforcers.iptables.kernel import Runner, SubprocessRunner, Tools
from callgate.enforcers.iptables.layout import TMP_PREFIX, VERSIONS, Version, tmp_name
from callgate.enforcers.iptables.live import LiveState, LiveTable, read_live
from callgate.enforcers.iptables.steps import Steps, build_steps, empty_table, restore_text
from callgate.enforcers.iptables.transaction import IptTransaction, plan, render_state
from callgate.errors import KernelError

log = logging.getLogger(__name__)


class IptablesEnforcer(ComparesNormalText):
    """Applies RuleSets with ipset + iptables/ip6tables in one network namespace."""

    name = "iptables"

    def __init__(self, runner: Runner | None = None, variant: str | None = None, netns: str | None = None,
                 fail_closed_prefix: str | None = None, placement: Placement = "node",
                 flow_logging: FlowLogging | None = None) -> None:
        self.runner: Runner = runner or SubprocessRunner(netns)
        self.tools = Tools.choose(variant)
        # Validated now, not at the first apply.
        self.fail_closed_prefix = None if fail_closed_prefix is None else check_fail_closed_prefix(fail_closed_prefix)
        if placement == "netns" and fail_closed_prefix is not None:
            raise ValueError("fail-closed mode needs host-side interfaces: not inside an endpoint's namespace")
        self.placement: Placement = placement
        self.flow_logging = flow_logging  # NFLOG action chains (see .rules); None: no flow log
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
        return plan(ruleset, self.fail_closed(ruleset, known_interfaces), self.placement, self.flow_logging)

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
        """The digest recorded in the IPv4 entry chain, if any."""
        return self.live().tables[4].digest()

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        return self.plan(ruleset, known_interfaces).text()

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Iterable[str] = (),
              incremental: bool = True) -> ApplyResult:
        """Make the kernel hold ``ruleset``; a no-op when it already does. With
        ``dry_run`` the kernel validates everything and nothing is enforced.

        Every apply is computed against the live state (sets whose content is
        unchanged are left alone, changed ones are swapped), so
        ``incremental`` is accepted for interface parity with nft and ignored;
        the mode of a change is always "full" (every chain is redeclared).
        Drift is not reported here: the agent's resync finds it."""
        del incremental
        fc = self.fail_closed(ruleset, known_interfaces)
        tx = plan(ruleset, fc, self.placement, self.flow_logging)
        live = self.live()
        if self._live_text(live) == tx.text():
            self.applied = Applied(ruleset, tx.digest, fc)
            return ApplyResult(False, tx.digest, tx, "noop", dry_run)
        if dry_run:
            self.check(tx)
            return ApplyResult(True, tx.digest, tx, "full", dry_run)
        warnings = self._execute(tx, live, build_steps(tx, live))
        self.applied = Applied(ruleset, tx.digest, fc)
        return ApplyResult(True, tx.digest, tx, "full", warnings=tuple(warnings))

    def _execute(self, tx: IptTransaction, live: LiveState, steps: Steps) -> list[str]:
        """Run the steps (see the module doc); the warnings of a successful run."""
        warnings: list[str] = []
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
        self._remove_foreign(live, warnings)
        try:
            self._ipset(steps.cleanup)
        except KernelError as exc:
            # The new rules are live; a leftover unreferenced set is untidy, not wrong.
            warnings.append(f"could not remove unused ipsets (retried on the next apply): {exc}")
            log.warning("%s", warnings[-1])
        return warnings

    def _undo(self, live: LiveState, committed: list[Version], steps: Steps) -> None:
        """Put back the chains of ``committed`` versions and the swapped sets."""
        try:
            for v in committed:
                now = self.live().tables[v]
                before = live.tables.get(v) or LiveTable(v)
                self._restore(v, restore_text(before.table() if not before.empty else empty_table(v), now))
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
                self.runner.run([other.restore(v), "--noflush", "-w"], stdin=restore_text(empty_table(v), table))
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
                self._restore(v, restore_text(empty_table(v), live.tables[v]))
        warnings: list[str] = []
        self._remove_foreign(live, warnings)
        if warnings:
            raise KernelError("; ".join(warnings))
        self._ipset(f"destroy {n}" for n in sorted(live.sets))
        self.applied = None
        return True

    def rule_counters(self) -> RuleCounters | None:
        """Not read for iptables: None (no per-policy counters)."""
        return None

    def prefetch(self) -> None:
        pass  # not done for iptables: apply reads the live rules when it compares them

    def close(self) -> None:
        pass  # every command is its own process: nothing is held open
