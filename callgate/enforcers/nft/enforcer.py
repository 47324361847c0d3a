"""The nftables enforcer: apply a RuleSet to one network namespace's nftables.

:meth:`NftablesEnforcer.apply` remembers what it applied; when the live digest
still equals that, the next apply is an incremental transaction
(:mod:`callgate.enforcers.nft.update`) instead of a full replacement
(:func:`~callgate.enforcers.nft.transaction.replace_table`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import (
    FLOW_LOG_LIMITED,
    Applied,
    ApplyResult,
    ComparesNormalText,
    FailClosed,
    FlowLogging,
    Placement,
    RuleCounters,
    check_fail_closed_prefix,
    comment_rule_id,
)
from callgate.enforcers.nft.decisions import Layout, adopt_capacities
from callgate.enforcers.nft.kernel import NftKernel, keeps_hooks_by_name
from callgate.enforcers.nft.layout import (
    ANTI_SPOOFING_COMMENT,
    DIGEST_SET,
    FAIL_CLOSED_COMMENT,
    FAMILY,
    TABLE,
    GuardHook,
    digest_of,
    families,
    layout_digest,
)
from callgate.enforcers.nft.text import normal_text
from callgate.enforcers.nft.transaction import NftTransaction, replace_table
from callgate.enforcers.nft.update import plan_update
from callgate.errors import KernelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """The whole table as the kernel held it at ruleset generation ``generation``."""

    generation: int
    objects: list[dict[str, Any]] | None


class NftablesEnforcer(ComparesNormalText):
    """Applies RuleSets to one network namespace's nftables.

    ``known_interfaces`` (plan/apply/desired_text/in_sync/diff) only matters with
    a fail-closed prefix: interfaces beyond the RuleSet's local endpoints that
    must not be dropped. ``placement`` says which tables it owns: "node"
    (``inet`` and ``bridge callgate``, forward hook) or "netns" (``inet
    callgate`` inside one endpoint's own namespace; no fail-closed there).
    ``guard``: where a node's source checks run (:data:`~.layout.GuardHook`);
    by default the kernel is asked, once, whether it keeps hooks by interface
    name ("ingress") or not ("forward").
    """

    name = "nft"

    def __init__(self, kernel: NftKernel, fail_closed_prefix: str | None = None,
                 placement: Placement = "node", flow_logging: FlowLogging | None = None,
                 guard: GuardHook | None = None) -> None:
        self.kernel = kernel
        self.fail_closed_prefix = None if fail_closed_prefix is None else check_fail_closed_prefix(fail_closed_prefix)
        if placement == "netns" and fail_closed_prefix is not None:
            raise ValueError("fail-closed mode needs host-side interfaces: not inside an endpoint's namespace")
        self.placement: Placement = placement
        self.flow_logging = flow_logging  # log new connections to NFLOG (see .actions); None: no flow log
        self.applied: Applied | None = None  # set by apply(); None = unknown, replace in full
        # The decision part of what it applied (maps and their elements): the
        # next change is planned against it (set together with `applied`).
        self.layout: Layout | None = None
        self._prefetched: Future[Listing | None] | None = None  # see prefetch()
        self._guard = guard

    @property
    def guard(self) -> GuardHook:
        """Where this node's source checks run: asked of the kernel on first use."""
        if self._guard is None:
            self._guard = "ingress" if self.placement == "netns" or keeps_hooks_by_name(self.kernel) else "forward"
            if self._guard == "forward":
                log.warning("this kernel keeps no hook for an interface that does not exist (Linux before 6.16): "
                            "the veths' source checks go in the forward chain, behind a look-up of the input "
                            "interface that every forwarded packet pays")
        return self._guard

    def prefetch(self) -> None:
        """Start reading the whole live table in the background, for an apply
        that the caller is about to compute.

        An unchanged apply must compare every object of the live table, and
        listing it costs libnftables ~1.3 s at 180,000 elements, in C with the
        GIL released: read while the caller loads and compiles, it is ready when
        apply wants it. The listing is only used if the ruleset generation was
        the same before and after it and still is when apply looks (nothing
        anywhere was committed since: the listing is what a listing now would
        be); otherwise apply lists again. A table that does not exist, or a
        kernel that says no, leaves nothing prefetched."""
        if self._prefetched is not None:
            return
        future: Future[Listing | None] = Future()

        def read() -> None:
            try:
                future.set_result(self._snapshot())
            except BaseException:  # a speculation: apply reads the table itself
                future.set_result(None)

        self._prefetched = future
        threading.Thread(target=read, name="callgate-prefetch", daemon=True).start()

    def _snapshot(self) -> Listing | None:
        before = self.kernel.generation()
        if before is None or self.live_digest() is None:
            return None  # no generation to trust, or no table worth reading
        objects = self.live_objects()
        return Listing(before, objects) if self.kernel.generation() == before else None

    def _live_objects_now(self) -> list[dict[str, Any]] | None:
        """The whole live table: the prefetched listing if nothing was committed
        since it was read, else a fresh one."""
        prefetched, self._prefetched = self._prefetched, None
        listing = prefetched.result() if prefetched is not None else None
        if listing is not None and self.kernel.generation() == listing.generation:
            return listing.objects
        return self.live_objects()

    def fail_closed(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> FailClosed | None:
        if self.fail_closed_prefix is None:
            return None
        return FailClosed.build(self.fail_closed_prefix, ruleset, known_interfaces)

    def plan(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> NftTransaction:
        """The full transaction for ``ruleset``. Pure (``compile`` runs it with no
        kernel at hand): until something asked the kernel (apply, in_sync, diff
        do), the source checks are planned for one that keeps hooks by name."""
        return replace_table(ruleset, self.fail_closed(ruleset, known_interfaces), self.placement, self.flow_logging,
                             self._guard or "ingress")

    def check(self, tx: NftTransaction) -> None:
        """Let the kernel validate the transaction without committing it."""
        self.kernel.run(list(tx.commands), check=True)

    def live_objects(self) -> list[dict[str, Any]] | None:
        """Every object of the tables this placement owns; None when there are
        none. (A bridge table without the inet one still shows: it is drift.)"""
        found = [self.kernel.list_table(family, TABLE) for family in families(self.placement)]
        if all(objects is None for objects in found):
            return None
        return [o for objects in found for o in objects or ()]

    def live_digest(self, live: list[dict[str, Any]] | None = None) -> str | None:
        """The digest the live table says it holds, from ``live`` when given,
        else by listing only the digest set (cheap, whatever the table's size)."""
        if live is None:
            live = self.kernel.list_set(FAMILY, TABLE, DIGEST_SET)
        return digest_of(live)

    def live_text(self, live: list[dict[str, Any]] | None = None) -> str | None:
        live = self.live_objects() if live is None else live
        return None if live is None else normal_text(live)

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        """Compared with the live table: in the form this kernel takes."""
        fc = self.fail_closed(ruleset, known_interfaces)
        return _table_text(replace_table(ruleset, fc, self.placement, self.flow_logging, self.guard))

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Iterable[str] = (),
              incremental: bool = True) -> ApplyResult:
        """Make the kernel hold ``ruleset``. A no-op when it already does; with
        ``dry_run`` the kernel checks the transaction and nothing is committed.

        When the live digest equals the digest this enforcer last applied, a
        change goes in as an incremental transaction (set elements, changed
        chains) that also swaps the digest element, so the kernel refuses it
        if the table changed hands in between; only the digest set is read
        for that. Otherwise (first apply, drift, same digest, ``incremental=False``)
        a live table carrying the new ruleset's digest is read whole: equal is a
        no-op; anything else is replaced in full. Either way it is one transaction."""
        known = tuple(known_interfaces)
        fc = self.fail_closed(ruleset, known)
        digest = layout_digest(ruleset, fc, self.placement, self.flow_logging, self.guard)
        applied = self.applied
        if incremental and applied is not None and applied.digest != digest:
            self._prefetched = None  # an incremental apply reads no table
            update = self._incremental(applied, ruleset, fc, digest, dry_run)
            if update is not None:
                return update
        full = replace_table(ruleset, fc, self.placement, self.flow_logging, self.guard)
        # The digest set first: listing the whole table costs ~1.5 s at 180,000
        # elements, and only a table that says it holds this ruleset can be left as
        # it is; then every object of it must match, or it is replaced all the same.
        live_digest = self.live_digest()
        if live_digest != full.digest:
            self._prefetched = None
        else:
            live = self._live_objects_now()
            if live is not None and self.live_text(live) == _table_text(full):
                if full.layout is not None:
                    adopt_capacities(full.layout, live)
                self.applied, self.layout = Applied(ruleset, full.digest, fc), full.layout
                return ApplyResult(False, full.digest, full, "noop", dry_run)
        if dry_run:
            self.check(full)
        else:
            self.kernel.run(list(full.commands))
        drift = applied is not None and live_digest != applied.digest and not dry_run
        if not dry_run:
            self.applied, self.layout = Applied(ruleset, full.digest, fc), full.layout
        return ApplyResult(True, full.digest, full, "full", dry_run, drift=drift)

    def _incremental(self, applied: Applied, ruleset: RuleSet, fc: FailClosed | None, digest: str,
                     dry_run: bool) -> ApplyResult | None:
        """The incremental transaction from ``applied`` to ``ruleset``, run; None
        when only a full replacement will do (the caller then does it)."""
        if self.live_digest() != applied.digest or self.layout is None or self.layout.logging != self.flow_logging:
            return None  # drift: someone else changed or deleted the table
        tx = plan_update(applied.ruleset, applied.fail_closed, self.layout, ruleset, fc, self.placement, self.guard)
        if tx is None:
            return None
        try:
            if dry_run:
                self.check(tx)
            else:
                self.kernel.run(list(tx.commands))
        except KernelError:
            # Refused as a whole. If the digest moved since the look above (the
            # swap inside the transaction found it gone), that is drift: the full
            # replacement repairs it. Otherwise the kernel refused our change
            # itself: let the caller see it.
            if self.live_digest() != applied.digest:
                return None
            raise
        if not dry_run:
            self.applied, self.layout = Applied(ruleset, digest, fc), tx.layout
        return ApplyResult(True, digest, tx, "incremental", dry_run)

    def rule_counters(self) -> RuleCounters:
        """Packets and bytes of the live rules, by the rule id their comment
        starts with; the fail-closed drops on their own. (Reads the whole table.)"""
        by_rule: dict[str, tuple[int, int]] = {}
        dropped = limited = spoofed = 0
        for item in self.live_objects() or []:
            rule = item.get("rule")
            if not rule:
                continue
            counter = next((e["counter"] for e in rule.get("expr", []) if isinstance(e, dict) and "counter" in e), None)
            if not isinstance(counter, dict):
                continue
            packets, octets = int(counter.get("packets", 0)), int(counter.get("bytes", 0))
            comment = str(rule.get("comment", ""))
            if comment == FAIL_CLOSED_COMMENT:
                dropped += packets
            elif comment == FLOW_LOG_LIMITED:
                limited += packets
            elif comment == ANTI_SPOOFING_COMMENT:
                spoofed += packets
            elif (rule_id := comment_rule_id(comment)) is not None:
                before = by_rule.get(rule_id, (0, 0))
                by_rule[rule_id] = (before[0] + packets, before[1] + octets)
        return RuleCounters(by_rule, dropped, flow_log_limited=limited, spoofed_dropped=spoofed)

    def remove(self) -> bool:
        """Delete callgate's tables (only they). Returns whether there was one."""
        tables = set(self.kernel.list_tables())
        present = [f for f in families(self.placement) if (f, TABLE) in tables]
        if not present:
            return False
        self.kernel.run([{"delete": {"table": {"family": f, "name": TABLE}}} for f in present])
        self.applied, self.layout = None, None
        return True

    def close(self) -> None:
        self.kernel.close()


def _table_text(tx: NftTransaction) -> str:
    """The normal text of the table a full transaction leaves behind."""
    return normal_text([cmd["add"] for cmd in tx.commands if "add" in cmd])
