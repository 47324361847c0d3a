"""The agent's reactor: snapshots in, one transaction per burst out.

One worker thread does all kernel work, so transactions never interleave:

* **Coalescing.** Sources call :meth:`Reactor.on_event` from their threads; it
  only records the newest event and wakes the worker, which always works on
  the newest snapshot only. When it acts is adaptive
  (:mod:`callgate.watchers.coalesce`): an event after a quiet spell is
  synced at once; inside a burst, each sync waits ``coalesce`` seconds after
  the previous one ended, growing fourfold per sync up to ``max_delay``, so a
  burst of 1,000 pod events is a handful of compiles and transactions.
* **Compile only what changed.** An :class:`~callgate.compiler.incremental.compiler.IncrementalCompiler`
  is kept across syncs: a snapshot whose policies and namespaces are equal to
  the last one's and whose only changes are endpoints without chains here
  (remote ones, or local ones no policy selects) patches the address sets
  those endpoints can be in (milliseconds at 50,000 pods); anything else, or
  an error on that path, compiles the node in full.
* **Apply only what changed.** The enforcer remembers what it applied; while
  the live digest still says so, changes go in as incremental transactions
  (set elements for pod churn and relabels; chains only when rules change).
  A refused incremental transaction is retried once as a full replacement.
* **Resync and drift repair.** Every ``resync`` seconds the worker compares
  the live table with what it applied (digest and full normal form). Any
  difference — table deleted, a rule added or removed, a set flushed — is
  repaired with a full replacement (one transaction, so no gap) and counted
  in ``callgate_drift_repairs_total``. Resync also re-resolves interfaces.
* **Source lost.** A :class:`SourceProblem` changes nothing in the kernel: the
  last applied rules stay, resync keeps repairing them, ``/readyz`` says why
  it is not ready, ``callgate_source_up`` is 0. It never flushes.
* **Adoption.** On start, a table whose digest and content equal the desired
  ones is adopted as is (no transaction); anything else is replaced in one
  transaction, so a restart never opens a window.
* **Skipped objects.** A snapshot may list objects the source skipped as
  invalid (``Snapshot.problems``; the rest applies). Each distinct problem is
  logged once, when it first appears (not on every resync), and the gauge
  ``callgate_source_problems`` says how many there are now.
* **Not enforceable.** Workloads the source sees but callgate cannot filter
  (``Snapshot.not_enforceable``: a Docker container on the host's network)
  are logged once each and counted in ``callgate_endpoints{state="not_enforceable"}``.
* **Backends.** The reactor works with any :class:`~callgate.enforcers.base.Enforcer`:
  nft (incremental transactions) or iptables (every apply is planned against
  the live sets and chains; its mode is reported as "full").
* **Interfaces.** Local endpoints without an interface in the inventory are
  resolved from the node's routes (those with a ``netns`` of their own and no
  interface are enforced inside it); unresolved ones are retried every
  ``retry`` seconds and stay unprogrammed (dropped, in fail-closed mode).
* **CNI attachments.** What CNI ADD reports (pod, sandbox, host interface,
  addresses; :mod:`callgate.agent.attachments`) is laid over the source's
  inventory, and an ADD or DEL syncs at once, like a source event: the pod is
  programmed before kubelet writes its address to the API.
* **Kernel checks.** :meth:`Reactor.verify` (CNI CHECK, the ADD answer,
  ``/programmed``) has the worker compare the live table with what it applied,
  now, and repair a difference at once rather than at the next resync.
* **Never quietly nothing.** The guard checks that every local endpoint is
  where callgate looks (:mod:`callgate.enforcers.guard`): it fixes what it may
  (br_netfilter off for a bridge holding endpoints), logging it, and reports
  the rest as unprogrammed, retried like unresolved interfaces.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callgate.agent.attachments import Attachment, Attachments
from callgate.agent.failclosed import Programmed
from callgate.agent.flowlog.decode import FlowContext
from callgate.agent.flowlog.service import FlowLogService
from callgate.agent.metrics import AgentMetrics
from callgate.compiler import Compiler, IncrementalCompiler, RuleSet
from callgate.compiler.ir import LocalEndpoint
from callgate.enforcers.base import Enforcer
from callgate.enforcers.conntrack import ConntrackTable, Judge, may_remove_access, revoke
from callgate.enforcers.guard import Report
from callgate.enforcers.placement import without
from callgate.enforcers.routes import InterfaceResolver
from callgate.errors import InputError, KernelError
from callgate.policy.documents import gc_paused
from callgate.policy.model import Inventory
from callgate.watchers.base import Snapshot, SourceProblem
from callgate.watchers.coalesce import CoalescePolicy, Coalescer

log = logging.getLogger("callgate.agent")


def _log(level: int, msg: str, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": fields})


@dataclass(frozen=True)
class ReactorConfig:
    node: str
    resync: float = 30.0  # seconds between drift checks
    audit: bool = False  # --enforcement audit: every endpoint of the node in audit
    revoke: bool = True  # cut tracked connections an update no longer allows (not --keep-established)
    coalesce: float = 0.02  # the first wait between syncs inside a burst (after a quiet spell: none)
    max_delay: float = 2.0  # the longest wait: a steady trickle of events still syncs this often
    retry: float = 1.0  # re-resolve interfaces / retry a failed apply this soon


@dataclass(frozen=True)
class KernelCheck:
    """One look at the live table: did it hold what was applied, and if not,
    was it replaced."""

    live_ok: bool
    repaired: bool
    reason: str


class _CheckTicket:
    def __init__(self, thorough: bool) -> None:
        self.thorough = thorough
        self.done = threading.Event()
        self.result = KernelCheck(False, False, "the agent stopped before checking the kernel")


@dataclass(frozen=True)
class LastSync:
    """The last successful sync: the snapshot, the RuleSet it became and the
    interfaces it was applied with (the enforcer's ``applied`` says what the
    kernel holds)."""

    snapshot: Snapshot
    ruleset: RuleSet
    known: tuple[str, ...]
    at: float


class Reactor:
    def __init__(self, config: ReactorConfig, enforcer: Enforcer, resolver: InterfaceResolver,
                 metrics: AgentMetrics | None = None, guard: Callable[[RuleSet], Report] | None = None,
                 conntrack: ConntrackTable | None = None, flows: FlowLogService | None = None) -> None:
        self.config = config
        self.enforcer = enforcer
        self.resolver = resolver
        # Places each local endpoint on the node (None: trust the inventory, as unit tests do).
        self.guard = guard
        self._guard_report: Report | None = None
        self._guarded_local: tuple[LocalEndpoint, ...] | None = None
        self.metrics = metrics or AgentMetrics()
        # Revocation walks this table after every change (None: not at all);
        # the flow log gets the context of every applied snapshot.
        self.conntrack = conntrack if config.revoke else None
        self.flows = flows
        self.revoked = 0  # connections cut so far (tests)
        self.programmed = Programmed()
        self.attachments = Attachments()
        self._attachments_changed = False
        self._checks: list[_CheckTicket] = []
        self._cond = threading.Condition()
        self._event: Snapshot | SourceProblem | None = None
        self._coalescer = Coalescer(CoalescePolicy(holdoff=config.coalesce, max_delay=config.max_delay))
        self._stop = False
        self._thread: threading.Thread | None = None
        self.last_sync: LastSync | None = None
        self.snapshot: Snapshot | None = None  # newest valid snapshot
        self.source_problem: str | None = None
        self.apply_error: str | None = None
        self.unresolved: dict[str, str] = {}
        self.syncs = 0  # completed syncs (tests wait on this)
        # The last event whose sync has ended, applied or failed, its log lines written
        # (tests wait on this: a retry's or resync's sync may end while the event's runs).
        self.settled: Snapshot | SourceProblem | None = None
        self._last_check = 0.0  # monotonic time the worker last looked at the kernel
        self.repairs = 0
        self.transactions: Counter[str] = Counter()  # committed transactions by mode ("incremental", "full")
        self.skipped: set[str] = set()  # the source's skipped-object problems already logged
        self.not_enforceable: set[str] = set()  # workloads the source says cannot be enforced, logged
        # Kept across syncs: a snapshot that differs from the last only in
        # endpoints without chains here patches the affected sets instead of recompiling
        # the node (milliseconds instead of ~0.4 s at 50,000 pods).
        self.compiler: IncrementalCompiler | None = None

    # -- the source side ---------------------------------------------------

    def on_event(self, event: Snapshot | SourceProblem) -> None:
        """Called by the source from any thread; cheap, never blocks on the kernel."""
        with self._cond:
            self._event = event
            self._coalescer.changed(time.monotonic())
            self._cond.notify_all()

    def attach(self, attachment: Attachment) -> None:
        """CNI ADD: lay ``attachment`` over the inventory and sync soon (coalesced like events)."""
        self.attachments.add(attachment)
        self._attachments_moved()

    def detach(self, pod: str, container_id: str) -> None:
        """CNI DEL of a sandbox."""
        if self.attachments.remove(pod, container_id):
            self._attachments_moved()

    def _attachments_moved(self) -> None:
        # Coalesced like source events: after a quiet spell (a pod starting) at once.
        with self._cond:
            self._attachments_changed = True
            self._coalescer.changed(time.monotonic())
            self._cond.notify_all()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="callgate-reactor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop working. The rules stay in the kernel: they are the policy."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            for ticket in self._checks:
                ticket.done.set()
            self._checks.clear()

    # -- status (HTTP) -------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        if self._thread is None or not self._thread.is_alive():
            return False, "reactor thread is not running"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.last_sync is None:
            return False, self.apply_error or self.source_problem or "no ruleset applied yet"
        if self.apply_error:
            return False, f"last apply failed (previous rules still enforced): {self.apply_error}"
        if self.source_problem:
            return False, f"source problem (last applied rules still enforced): {self.source_problem}"
        digest = self.enforcer.applied.digest[:12] if self.enforcer.applied else "?"
        return True, f"ok: enforcing digest {digest}"

    def verify(self, thorough: bool, timeout: float = 30.0) -> KernelCheck:
        """Have the worker compare the live table with what it applied, now, and
        repair it at once if it differs. Concurrent callers share one check.

        ``thorough`` compares the whole normal form (CHECK: catches a rule slipped
        in with the digest intact; a whole-table read); otherwise the live
        digest is compared (one element listed: a deleted or replaced table)."""
        ticket = _CheckTicket(thorough)
        with self._cond:
            if self._stop:
                return ticket.result
            self._checks.append(ticket)
            self._cond.notify_all()
        if not ticket.done.wait(timeout):
            return KernelCheck(False, False, f"the agent did not get to check the kernel within {timeout:g}s")
        return ticket.result

    def wait_programmed(self, pod: str, interface: str | None, timeout: float) -> tuple[bool, str]:
        """Wait until ``pod`` is programmed, then confirm it with the live table
        (repaired first if it had drifted: then the pod is programmed again)."""
        deadline = time.monotonic() + timeout
        ok, why = self.programmed.wait(pod, interface, timeout)
        if not ok:
            return ok, why
        check = self.verify(thorough=False, timeout=max(deadline - time.monotonic(), 5.0))
        if not (check.live_ok or check.repaired):
            return False, f"{why}, but {check.reason}"
        return self._still_programmed(pod, interface, why, check)

    def check_programmed(self, pod: str, interface: str | None) -> tuple[bool, str]:
        """CNI CHECK: programmed, and the live table held the rules when asked. A
        drifted table is a failure even though it is repaired at once."""
        ok, why = self.programmed.wait(pod, interface, 0.0)
        if not ok:
            return ok, why
        check = self.verify(thorough=True)
        if not check.live_ok:
            return False, check.reason
        return self._still_programmed(pod, interface, why, check)

    def _still_programmed(self, pod: str, interface: str | None, why: str, check: KernelCheck) -> tuple[bool, str]:
        # The check may have re-synced (a repair): ask the published state again.
        ok, now = self.programmed.wait(pod, interface, 0.0)
        return (True, f"{now}; {check.reason}") if ok else (False, now)

    # -- the worker ----------------------------------------------------------

    def _next(self) -> tuple[str, Snapshot | SourceProblem | None, float | None]:
        """Wait for work: ("event", event, first_event_time), ("resync", …) or ("stop", …)."""
        cfg = self.config
        with self._cond:
            while True:
                if self._stop:
                    return "stop", None, None
                now = time.monotonic()
                attached = self._attachments_changed and self.snapshot is not None
                if self._event is not None or attached:
                    due = self._coalescer.due()
                    if due is None or now >= due:  # (None: attachments moved before the first snapshot)
                        first = self._coalescer.start(now)
                        if self._event is None:  # only attachments moved: the same snapshot again
                            self._attachments_changed = False
                            return "event", self.snapshot, first
                        event, self._event = self._event, None
                        if isinstance(event, Snapshot):
                            self._attachments_changed = False
                        return "event", event, first
                    self._cond.wait(due - now)
                    continue
                if self._checks:
                    return "check", None, None
                interval = cfg.retry if (self.unresolved or self.apply_error) else cfg.resync
                due = self._last_check + interval
                if now >= due and self.snapshot is not None:
                    return "resync", None, None
                self._cond.wait(max(due - now, 0.01) if self.snapshot is not None else None)

    def _run(self) -> None:
        _log(logging.INFO, "reactor started", node=self.config.node)
        while True:
            kind, event, first = self._next()
            if kind == "stop":
                break
            if kind == "check":
                self._kernel_check()
                continue
            try:
                if kind == "resync":
                    self._resync()
                elif isinstance(event, SourceProblem):
                    self._source_problem(event)
                elif isinstance(event, Snapshot):
                    self.snapshot = event
                    self.source_problem = None
                    self.metrics.source_up.set(1)
                    self._skipped_objects(event)
                    self._not_enforceable(event)
                    self._sync(event, first)
            except (KernelError, InputError, OSError) as exc:
                # What the kernel or the host can do to an apply (refused, EPERM, a tool
                # missing, a namespace gone) or what a backend cannot express: one line
                # saying so. The kernel still holds the previous rules (a transaction is
                # all or nothing); the apply is retried every `retry` seconds.
                self.apply_error = str(exc)
                self.metrics.apply_errors.inc()
                _log(logging.ERROR, "apply failed; the previous rules stay in the kernel", node=self.config.node,
                     error=self.apply_error,
                     digest=self.enforcer.applied.digest if self.enforcer.applied else None)
            except Exception as exc:  # a bug: keep the worker alive, the rules stay as they are
                self.apply_error = f"{type(exc).__name__}: {exc}"
                self.metrics.apply_errors.inc()
                log.exception("sync failed; previous rules stay", extra={"fields": {"node": self.config.node}})
            finally:
                # The drift check is due `resync` seconds after the last one, however
                # many event syncs came between: an event's incremental transaction
                # looks only at what it changes, so under steady churn (a change more
                # often than --resync) a tampered table would otherwise stay tampered.
                # A failed apply is retried `retry` seconds after the failure.
                if kind == "resync" or self.apply_error:
                    self._last_check = time.monotonic()
                with self._cond:
                    if kind == "event":
                        self._coalescer.done(time.monotonic())
                        self.settled = event
                    self.syncs += 1
                    self._cond.notify_all()
        _log(logging.INFO, "reactor stopped; rules stay in the kernel", node=self.config.node)

    def _source_problem(self, problem: SourceProblem) -> None:
        self.source_problem = problem.message
        self.metrics.source_up.set(0)
        self.metrics.source_errors.inc()
        _log(logging.WARNING, "source problem; keeping the last applied rules", node=self.config.node,
             problem=problem.message, details=[str(p) for p in problem.problems][:20],
             digest=self.enforcer.applied.digest if self.enforcer.applied else None)

    def _skipped_objects(self, snapshot: Snapshot) -> None:
        """Log each invalid object the source skipped once, when it first appears."""
        now = {str(p) for p in snapshot.problems}
        self.metrics.skipped_objects.set(len(now))
        for problem in sorted(now - self.skipped):
            _log(logging.WARNING, "the source skipped an invalid object; the rest applies",
                 node=self.config.node, problem=problem)
        if self.skipped - now:
            _log(logging.INFO, "skipped objects resolved", node=self.config.node,
                 resolved=sorted(self.skipped - now)[:20])
        self.skipped = now

    def _not_enforceable(self, snapshot: Snapshot) -> None:
        """Workloads the source sees but callgate cannot enforce (host network):
        each logged once when it appears, and counted, so none is mistaken for
        enforced."""
        now = {str(p) for p in snapshot.not_enforceable}
        self.metrics.endpoints.labels("not_enforceable").set(len(now))
        for problem in sorted(now - self.not_enforceable):
            _log(logging.WARNING, "not enforceable: callgate cannot filter this workload's traffic",
                 node=self.config.node, workload=problem)
        self.not_enforceable = now

    def _resync(self) -> None:
        """Repair drift, re-resolve interfaces, retry failures."""
        assert self.snapshot is not None
        drift = False
        if self.last_sync is not None:
            drift = not self.enforcer.in_sync(self.last_sync.ruleset, self.last_sync.known)
            if drift:
                self.repairs += 1
                self.metrics.drift_repairs.inc()
                _log(logging.WARNING, "drift: the live table differs from what was applied; repairing",
                     node=self.config.node, live_digest=self.enforcer.live_digest(),
                     applied_digest=self.enforcer.applied.digest if self.enforcer.applied else None)
        self._sync(self.snapshot, None, full=drift, recheck=True)

    def _kernel_check(self) -> None:
        """Answer every pending :meth:`verify` with one look at the live table."""
        with self._cond:
            tickets, self._checks = self._checks, []
        try:
            result = self._compare_and_repair(any(t.thorough for t in tickets))
        except Exception as exc:  # the kernel said no: the waiters hear why, the worker lives on
            log.exception("kernel check failed", extra={"fields": {"node": self.config.node}})
            result = KernelCheck(False, False, f"cannot read the live table: {type(exc).__name__}: {exc}")
        for ticket in tickets:
            ticket.result = result
            ticket.done.set()

    def _compare_and_repair(self, thorough: bool) -> KernelCheck:
        last, applied = self.last_sync, self.enforcer.applied
        if last is None or self.snapshot is None or applied is None:
            return KernelCheck(False, False, self.apply_error or "no ruleset applied yet")
        live_ok = (self.enforcer.in_sync(last.ruleset, last.known) if thorough
                   else self.enforcer.live_digest() == applied.digest)
        if live_ok:
            what = "rules" if thorough else "digest"
            return KernelCheck(True, False, f"the live table holds the applied {what} ({applied.digest[:12]})")
        self.repairs += 1
        self.metrics.drift_repairs.inc()
        _log(logging.WARNING, "drift found by a kernel check: the live table differs from what was applied; repairing",
             node=self.config.node, live_digest=self.enforcer.live_digest(),
             applied_digest=self.enforcer.applied.digest if self.enforcer.applied else None)
        reason = "the live table differed from what the agent applied (deleted or changed)"
        try:
            self._sync(self.snapshot, None, full=True, recheck=True)
        except Exception as exc:
            self.apply_error = f"{type(exc).__name__}: {exc}"
            self.metrics.apply_errors.inc()
            log.exception("repair failed; will retry", extra={"fields": {"node": self.config.node}})
            return KernelCheck(False, False, f"{reason}; the repair failed: {self.apply_error}")
        finally:
            self._last_check = time.monotonic()
        return KernelCheck(False, True, f"{reason}; replaced it")

    def _bind(self, inventory: Inventory) -> tuple[Inventory, dict[str, str], dict[str, str]]:
        """The inventory with the CNI attachments laid over it and every
        resolvable local interface filled in; and where each local endpoint is
        (interface, or its own namespace when it has none: macvlan, ipvlan),
        and why the others are not placed."""
        inventory, waiting = self.attachments.overlay(inventory, self.config.node)
        local = [ep for ep in inventory.endpoints if ep.node == self.config.node]
        in_namespace = {ep.key: ep.netns for ep in local if not ep.interface and ep.netns}
        found = self.resolver.resolve([ep for ep in local if ep.key not in in_namespace])
        unresolved = {ep.key: "no interface in the inventory and no host route to "
                      + (", ".join(str(i) for i in ep.ips) or "it (no IP)") for ep in local
                      if ep.key not in found and ep.key not in in_namespace}
        unresolved.update(waiting)
        placed = {**found, **{k: v for k, v in in_namespace.items() if v}}
        if all(ep.interface == found.get(ep.key) for ep in local if ep.key not in in_namespace):
            return inventory, placed, unresolved
        endpoints = tuple(dataclasses.replace(ep, interface=found[ep.key]) if ep.node == self.config.node
                          and not ep.interface and ep.key in found else ep for ep in inventory.endpoints)
        return dataclasses.replace(inventory, endpoints=endpoints), placed, unresolved

    def _guarded(self, ruleset: RuleSet, recheck: bool) -> tuple[RuleSet, dict[str, str]]:
        """``ruleset`` as the node can enforce it, and the endpoints it cannot
        (with why), from the guard (see :mod:`callgate.enforcers.guard`): what
        it can fix it fixes, saying so; endpoints whose rules would land
        somewhere wrong or nowhere (host networking, a namespace that is not
        theirs or not there, a device that is not a container's) are left
        out. An endpoint whose interface is missing keeps its rules (they
        match its addresses wherever they show up) but is not programmed. The
        node is looked at again when its local endpoints change and on
        resync, not for churn elsewhere in the cluster."""
        if self.guard is None:
            return ruleset, {}
        if recheck or self._guard_report is None or ruleset.local != self._guarded_local:
            report = self.guard(ruleset)
            for fix in report.fixes:
                fix.apply()
                _log(logging.WARNING, "fixed: " + fix.describe(), node=self.config.node)
            self._guard_report = report if not report.fixes else self.guard(ruleset)
            self._guarded_local = ruleset.local
        refused = self._guard_report.refused()
        excluded = {f.endpoint for f in self._guard_report.findings if f.fix is None and not f.keep}
        return without(ruleset, excluded), refused

    def _sync(self, snapshot: Snapshot, first_event: float | None, full: bool = False, recheck: bool = False) -> None:
        # A full compile and table build at 50,000 pods allocate millions of
        # objects that stay; the collector would traverse them again and again.
        with gc_paused():
            self._sync_now(snapshot, first_event, full, recheck)

    def _sync_now(self, snapshot: Snapshot, first_event: float | None, full: bool, recheck: bool) -> None:
        started = time.monotonic()
        inventory, found, unresolved = self._bind(snapshot.inventory)
        ruleset = self._compile(snapshot, inventory)
        if self.config.audit:
            ruleset = ruleset.in_audit()
        ruleset, refused = self._guarded(ruleset, recheck)
        if refused:
            unresolved = {**unresolved, **refused}
            found = {k: v for k, v in found.items() if k not in refused}
        known = tuple(sorted(v for v in set(found.values()) if not v.startswith("/")))  # interfaces, not namespaces
        try:
            result = self.enforcer.apply(ruleset, known_interfaces=known, incremental=not full)
        except KernelError as exc:
            if full:
                raise
            try:
                result = self.enforcer.apply(ruleset, known_interfaces=known, incremental=False)
            except KernelError as again:  # one failure to report, not two
                raise KernelError(f"{again} (the incremental transaction before it was refused too: {exc})") from None
            _log(logging.WARNING, "incremental transaction refused; replaced the table instead",
                 node=self.config.node, error=str(exc))
        seconds = time.monotonic() - started
        # A change although nothing desired changed is a repair too: the live state
        # moved after the resync's check (nft also says so itself, other backends not).
        same = (self.last_sync is not None and known == self.last_sync.known
                and ruleset.digest() == self.last_sync.ruleset.digest())
        if (result.drift or (result.changed and same)) and not full:
            # Found while applying a change rather than by the resync check:
            # the full replacement just repaired it; count it all the same.
            self.repairs += 1
            self.metrics.drift_repairs.inc()
            _log(logging.WARNING, "drift: the live table was not what was applied; replaced it",
                 node=self.config.node)
        mode = result.mode
        self.metrics.sync_seconds.labels(mode).observe(seconds)
        if result.changed:
            self.metrics.applies.labels(mode).inc()
            self.transactions[mode] += 1
        if first_event is not None:
            self.metrics.event_to_live_seconds.observe(time.monotonic() - first_event)
        self.metrics.last_success.set(time.time())
        self._record(ruleset, unresolved)
        if self.flows is not None:
            self.flows.update(FlowContext(self.config.node, ruleset, inventory, snapshot.policies))
        previous = self.last_sync.ruleset if self.last_sync is not None else None
        if (result.changed and self.conntrack is not None and not result.dry_run
                and may_remove_access(previous, ruleset)):
            self._revoke(ruleset)
        if self.last_sync is None:
            # The model, caches and table layout built for the first sync stay
            # for the agent's life: moved out of the collector's generations,
            # later collections no longer traverse them (what the next
            # snapshots replace is freed by reference counting all the same).
            gc.freeze()
        if self.last_sync is None or full:
            # The first apply (nothing applied yet) and a full one read or replaced
            # the whole live table: that was a drift check, and the next is due
            # `resync` after it, not at once.
            self._last_check = time.monotonic()
        self.last_sync = LastSync(snapshot, ruleset, known, time.monotonic())
        self.apply_error = None
        if unresolved != self.unresolved:
            for key, why in sorted(unresolved.items()):
                _log(logging.WARNING, "endpoint not programmed", node=self.config.node, endpoint=key, reason=why)
        self.unresolved = unresolved
        self.programmed.publish(found, unresolved)
        if result.changed or first_event is not None:
            _log(logging.INFO, "applied" if result.changed else "unchanged", node=self.config.node, mode=mode,
                 seconds=round(seconds, 6), digest=result.digest[:12], origin=snapshot.origin,
                 version=snapshot.version, endpoints=len(ruleset.endpoints), programmed=len(found),
                 unresolved=len(unresolved))

    def _revoke(self, ruleset: RuleSet) -> None:
        """Cut the tracked connections the rules just applied no longer allow
        (a failure is logged and counted; the connections stay)."""
        assert self.conntrack is not None
        try:
            with self.metrics.revocation_seconds.time():
                result = revoke(self.conntrack, Judge(ruleset))
        except Exception as exc:
            self.metrics.revocation_errors.inc()
            _log(logging.WARNING, "could not walk connection tracking; established connections kept",
                 node=self.config.node, error=str(exc))
            return
        self.revoked += result.deleted
        if result.deleted:
            self.metrics.revoked.inc(result.deleted)
            _log(logging.INFO, "revoked connections the new rules do not allow", node=self.config.node,
                 deleted=result.deleted, checked=result.checked, seconds=round(result.seconds, 6))

    def _compile(self, snapshot: Snapshot, inventory: Inventory) -> RuleSet:
        """The node's RuleSet, incrementally when only endpoints without chains here changed."""
        try:
            if self.compiler is None:
                self.compiler = IncrementalCompiler(snapshot.policies, inventory, self.config.node)
                return self.compiler.ruleset
            return self.compiler.sync(snapshot.policies, inventory)
        except Exception:
            # A bug in the incremental compiler must not stop enforcement: the
            # plain compiler (the reference the incremental one is tested
            # against) answers this time, and the next snapshot primes anew.
            log.exception("incremental compile failed; compiling in full", extra={"fields": {"node": self.config.node}})
            self.compiler = None
            return Compiler(snapshot.policies, inventory).compile(self.config.node)

    def _record(self, ruleset: RuleSet, unresolved: dict[str, str]) -> None:
        m = self.metrics
        chains = [c for ep in ruleset.endpoints for c in (*ep.ingress, *ep.egress)]
        m.chains.set(len(chains))
        m.rules.set(sum(len(c.rules) + 1 for c in chains))  # +1: each chain's default rule
        m.sets.set(len(ruleset.address_sets) + len(ruleset.port_sets))
        m.set_elements.set(sum(len(s.elements) for s in ruleset.address_sets)
                           + sum(len(s.elements) for s in ruleset.port_sets))
        m.endpoints.labels("enforced").set(len(ruleset.endpoints))
        m.endpoints.labels("unresolved").set(len(unresolved))

    @property
    def mode_counts(self) -> dict[str, int]:
        """Committed transactions by mode (tests and the bench)."""
        return {mode: self.transactions[mode] for mode in ("incremental", "full")}

    # -- for tests and the CLI ----------------------------------------------

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Block until ``predicate()`` is true after some sync (or time is up)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

