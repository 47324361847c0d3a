"""The cluster-wide controller: lint policies as they change, report as Events.

It watches the same kinds as the agent (through :class:`ClusterWatcher`, so
the same consistency rules hold), runs ``callgate lint``'s checks over the
cluster's policies (NetworkPolicies, and ClusterNetworkPolicies with the
v1alpha1 kinds where their CRDs are installed) with the live pods, namespaces
and nodes as inventory, and posts each finding as a Kubernetes Event on the
object it is about, so that ``kubectl describe networkpolicy`` (``describe
clusternetworkpolicy``, or ``describe namespace`` for namespace-wide findings)
shows it. Events about cluster-scoped policies go into the ``default``
namespace, where Kubernetes keeps the events of cluster-scoped objects.
Policies the agent skips as invalid get a CG001 event saying why.

Events are deduplicated: each finding has a deterministic Event name (object
uid + rule + field), so a resync, a pod churning or a controller restart does
not post it again; when its message changes the Event is updated in place. A
finding still present after ``refresh`` seconds has its Event's count and
lastTimestamp bumped (Events expire after an hour by default); a finding that
disappears is forgotten and its Event ages out.

The controller never changes policies or pods: it needs read access to pods,
namespaces, nodes, networkpolicies and the cluster policy kinds, and
create/patch/get on events.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from callgate.analysis.lint.config import LintConfig
from callgate.analysis.lint.linter import Item, Linter
from callgate.analysis.lint.rules import Severity
from callgate.analysis.lint.run import run_checks
from callgate.policy.documents import Document
from callgate.watchers.base import SourceProblem, clip
from callgate.watchers.k8s_convert import (
    API_VERSIONS,
    KIND_NAMES,
    LINTED_KINDS,
    NAMESPACES,
    ClusterState,
    ObjectRef,
)
from callgate.watchers.kubernetes import ClusterWatcher

log = logging.getLogger("callgate.controller")

REASON = "CallgateLint"
COMPONENT = "callgate-controller"
_MAX_EVENT_MESSAGE = 1024  # the API server truncates Event messages around here anyway
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_API_VERSIONS = {KIND_NAMES[kind]: API_VERSIONS[kind] for kind in (*LINTED_KINDS, NAMESPACES)}
CLUSTER_EVENTS_NAMESPACE = "default"  # where Kubernetes keeps events of cluster-scoped objects
_LINT_FILE = "/dev/null/kubernetes-api"  # never readable: lint must not open files named by the API


@dataclass(frozen=True)
class Report:
    """One finding, ready to become an Event."""

    target: ObjectRef
    rule: str
    severity: Severity
    message: str
    field: str | None = None

    @property
    def event_type(self) -> str:
        return "Normal" if self.severity is Severity.INFO else "Warning"

    @property
    def event_namespace(self) -> str:
        if self.target.namespace:
            return self.target.namespace
        if self.target.kind == KIND_NAMES[NAMESPACES]:
            # Namespace-wide findings go into that namespace, so `kubectl get events -n x` shows them.
            return self.target.name
        return CLUSTER_EVENTS_NAMESPACE

    @property
    def event_name(self) -> str:
        """Deterministic: the same rule on the same field of the same object is the same
        Event, even when the message's details change (a pod count, say): that
        updates the Event instead of adding one."""
        identity = "\0".join((self.target.kind, self.target.key, self.target.uid or "", self.rule,
                              self.field or ""))
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        base = self.target.name[:200]
        if not _DNS_SUBDOMAIN.fullmatch(base):
            base = "callgate"  # names come from the API; never build a name from a bad one
        return f"{base}.cg{digest}"

    def text(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return clip(f"{self.rule} {self.severity.label}{where}: {self.message}", _MAX_EVENT_MESSAGE)


# ---- lint over the cluster -----------------------------------------------------------------

def lint_state(state: ClusterState, config: LintConfig | None = None,
               min_severity: Severity = Severity.WARNING) -> list[Report]:
    """Run the lint checks on the cluster's policies with the live inventory.

    Policies come as the API served them (raw checks need fields that parsing
    normalises away); ones that failed to parse are reported as CG001 with the
    parser's problems. Suppressions work as for files: ``--lint-config`` and the
    ``callgate.io/lint-disable`` annotation on the policy. Findings below
    ``min_severity`` are left out.
    """
    linter = Linter(state.inventory)
    by_doc: dict[tuple[str, int, tuple[str | int, ...]], ObjectRef] = {}
    parsed = {p.key: p for p in state.policies.policies}
    cluster = {p.key: p for p in state.policies.cluster}
    for index, (key, (ref, raw)) in enumerate(sorted(state.raw_policies.items())):
        doc = Document(_LINT_FILE, 0, raw, ("items", index))
        by_doc[(doc.file, doc.index, doc.path)] = ref
        policy = parsed.get(key)
        cluster_policy = cluster.get(key)
        if policy is not None:
            linter.items.append(Item(doc, "NetworkPolicy", policy.display, policy=policy))
        elif cluster_policy is not None:
            linter.items.append(Item(doc, cluster_policy.kind, cluster_policy.display, cluster=cluster_policy))
        else:
            for problem in state.problems_by_object.get(ref, ()):
                linter.problem(problem, doc)
    run_checks(linter, config or LintConfig())
    reports = []
    for finding in linter.findings:
        if finding.severity < min_severity:
            continue  # by default info findings (style) are not worth an Event on every policy
        target = by_doc.get(finding.doc_key) if finding.doc_key else None
        if target is None and finding.object:
            target = state.refs.get(finding.object)
        if target is None:
            log.debug("finding without an object to attach to: %s", finding.message)
            continue
        message = finding.message + (f"; hint: {finding.hint}" if finding.hint else "")
        reports.append(Report(target, finding.rule, finding.severity, message, finding.field))
    return sorted(reports, key=lambda r: (r.target.kind, r.target.key, r.rule, r.message))


# ---- events ----------------------------------------------------------------------------------

@dataclass
class SyncResult:
    created: int = 0
    refreshed: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class EventPoster:
    """Keeps one Event per current finding, without re-posting on every resync."""

    def __init__(self, api_client: Any, refresh: float = 1800.0, clock: Callable[[], float] = time.monotonic,
                 instance: str | None = None) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.refresh = refresh
        self.clock = clock
        self.instance = instance or socket.gethostname()
        self._posted: dict[str, tuple[float, int, str]] = {}  # event name -> (when, count, message)

    def sync(self, reports: list[Report]) -> SyncResult:
        result = SyncResult()
        desired = {r.event_name: r for r in reports}
        for name in list(self._posted):
            if name not in desired:
                del self._posted[name]  # the finding is gone; its Event ages out on its own
        now = self.clock()
        for name, report in desired.items():
            try:
                if name not in self._posted:
                    if self._create(report):
                        result.created += 1
                    else:
                        result.refreshed += 1
                elif now - self._posted[name][0] >= self.refresh or self._posted[name][2] != report.text():
                    self._bump(report, self._posted[name][1])
                    result.refreshed += 1
                else:
                    result.unchanged += 1
            except Exception as exc:  # retried on the next sync; one failure must not stop the rest
                from callgate.watchers.k8s_reflector import describe_error

                result.failed += 1
                result.errors.append(f"{report.target.kind} {report.target.key}: {describe_error(exc)}")
        return result

    def _body(self, report: Report, count: int) -> dict[str, Any]:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        target = report.target
        involved: dict[str, Any] = {"apiVersion": _API_VERSIONS.get(target.kind, "v1"), "kind": target.kind,
                                    "name": target.name}
        if target.namespace:
            involved["namespace"] = target.namespace
        if target.uid:
            involved["uid"] = target.uid
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": report.event_name, "namespace": report.event_namespace,
                         "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
            "involvedObject": involved,
            "reason": REASON, "type": report.event_type, "message": report.text(),
            "source": {"component": COMPONENT},
            "reportingComponent": f"callgate.io/{COMPONENT}", "reportingInstance": self.instance[:128],
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": count,
        }

    def _create(self, report: Report) -> bool:
        """Post the Event; False when it existed already and was bumped instead."""
        from kubernetes.client.exceptions import ApiException

        try:
            body: Any = self._body(report, 1)  # a plain dict serialises as the API expects
            self.core.create_namespaced_event(report.event_namespace, body)
            self._posted[report.event_name] = (self.clock(), 1, report.text())
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Posted before (by an earlier run of the controller): refresh, do not duplicate.
            current = self.core.read_namespaced_event(report.event_name, report.event_namespace)
            self._bump(report, current.count or 1)
            return False

    def _bump(self, report: Report, count: int) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch: Any = {"count": count + 1, "lastTimestamp": stamp, "message": report.text(), "type": report.event_type}
        self.core.patch_namespaced_event(report.event_name, report.event_namespace, patch)
        self._posted[report.event_name] = (self.clock(), count + 1, report.text())


# ---- the controller loop ------------------------------------------------------------------------

class Controller:
    """Watch, lint on change, keep Events in step; retry failed posts every ``resync`` seconds."""

    def __init__(self, api_client: Any, origin: str, *, config: LintConfig | None = None,
                 refresh: float = 1800.0, resync: float = 60.0, dry_run: bool = False,
                 min_severity: Severity = Severity.WARNING, on_reports: Callable[[list[Report]], None] | None = None,
                 **watcher_options: Any) -> None:
        watcher_options.setdefault("coalesce", 1.0)  # lint is heavier than a snapshot: coalesce more
        watcher_options.setdefault("max_delay", 10.0)
        self.watcher = ClusterWatcher(api_client, origin, **watcher_options)
        self.poster = EventPoster(api_client, refresh=refresh)
        self.config = config or LintConfig()
        self.resync = resync
        self.dry_run = dry_run
        self.min_severity = min_severity
        self.on_reports = on_reports
        self._cond = threading.Condition()
        self._state: ClusterState | None = None
        self._fresh = False
        self._problem: SourceProblem | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.reports: list[Report] = []
        self.last_sync: SyncResult | None = None
        self.syncs = 0

    # The watcher thread hands over states; the controller thread does the work.
    def _on_item(self, item: ClusterState | SourceProblem) -> None:
        with self._cond:
            if isinstance(item, SourceProblem):
                log.warning("%s", item.message)
                self._problem = item
            else:
                self._state, self._fresh, self._problem = item, True, None
            self._cond.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="callgate-controller", daemon=True)
        self._thread.start()
        self.watcher.start(self._on_item)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.watcher.stop()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        with self._cond:
            return self._state is not None and self._problem is None

    def wait_synced(self, timeout: float) -> bool:
        """Wait until the first lint pass is done (for ``--once``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.syncs == 0 and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self.syncs > 0

    @property
    def problem(self) -> SourceProblem | None:
        with self._cond:
            return self._problem

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._fresh and not self._stopping:
                    self._cond.wait(self.resync)  # a timeout is the periodic retry/refresh
                if self._stopping:
                    return
                state, fresh = self._state, self._fresh
                self._fresh = False
            if state is None:
                continue
            try:
                self.reconcile(state, relint=fresh)
            except Exception:
                log.exception("lint pass failed; retrying at the next change or resync")

    def reconcile(self, state: ClusterState, relint: bool = True) -> SyncResult:
        """Lint ``state`` (unless only retrying) and bring the Events in step."""
        if relint:
            self.reports = lint_state(state, self.config, self.min_severity)
            log.info("linted %d policies: %d findings", len(state.raw_policies), len(self.reports))
            if self.on_reports is not None:
                self.on_reports(self.reports)
        result = SyncResult(unchanged=len(self.reports)) if self.dry_run else self.poster.sync(self.reports)
        for error in result.errors:
            log.warning("cannot post event: %s", error)
        if result.created or result.refreshed:
            log.info("events: %d created, %d refreshed", result.created, result.refreshed)
        with self._cond:
            self.last_sync = result
            self.syncs += 1
            self._cond.notify_all()
        return result


class HealthServer:
    """/healthz (the loop is alive) and /readyz (synced and the API reachable) for probes."""

    def __init__(self, host: str, port: int, controller: Controller) -> None:
        ctl = controller

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    ok = ctl.alive
                elif self.path == "/readyz":
                    ok = ctl.ready
                else:
                    self.send_error(404)
                    return
                body = b"ok\n" if ok else b"not ready\n"
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="callgate-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
