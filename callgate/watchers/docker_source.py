"""The Docker source: who runs where from a Docker engine, who may call whom from files.

:class:`DockerWatcher` follows one engine with the guarantees of the other
sources:

* **list, then events.** The reader thread subscribes to the engine's event
  stream (containers and networks) *before* the worker lists every running
  container, so nothing that happens during the list is missed: events that
  arrive meanwhile are looked at again (a look is idempotent). After every
  reconnect it lists afresh.
* **incremental.** An event (start, die, destroy, rename; network connect,
  disconnect, create, destroy) makes the worker inspect that one container
  again; other containers are not looked at.
* **coalescing**, adaptive as the other sources' (:mod:`callgate.watchers.coalesce`):
  a change after a quiet spell is published at once; inside a burst each view
  waits ``coalesce`` seconds after the previous one, fourfold longer each time
  up to ``max_delay`` (a Compose stack coming up is a few snapshots); a view
  goes out only when its content version changed, and the first view after an
  outage always does.
* **engine lost.** When the stream breaks or ends, or the heartbeat ping
  (every ``heartbeat`` seconds while the stream is quiet) fails, a
  :class:`~callgate.watchers.base.SourceProblem` is published once per
  distinct reason and the reader reconnects with backoff. The agent keeps the
  rules it last applied and its /readyz says why.
* **not yet there.** A container whose veth cannot be found yet is looked at
  again every ``retry`` seconds until it is.

:class:`DockerSource` is the agent's :class:`~callgate.watchers.base.Source`:
the engine's view plus the policy files (a policies-only
:class:`~callgate.watchers.files.FilesSource`), published together as one
:class:`~callgate.watchers.base.Snapshot` whenever either changes, or a
problem when either has one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from callgate.policy.documents import as_mapping
from callgate.watchers.base import Snapshot, SnapshotHandler, SourceProblem, hand_over
from callgate.watchers.coalesce import CoalescePolicy, Coalescer
from callgate.watchers.docker_client import describe_error
from callgate.watchers.docker_convert import HostInterface
from callgate.watchers.docker_engine import EngineState, EngineView
from callgate.watchers.files import FilesSource

log = logging.getLogger("callgate.watchers.docker")

ViewHandler = Callable[[EngineView | SourceProblem], None]

# Events that can change what callgate sees of a container. Everything else
# (exec_*, health_status, attach, top, resize …) is ignored without a look.
CONTAINER_ACTIONS = frozenset({"start", "restart", "die", "destroy", "rename", "pause", "unpause"})
NETWORK_ACTIONS = frozenset({"connect", "disconnect", "create", "destroy", "remove"})
_RELIST = "relist"


class DockerWatcher:
    """List-then-follow one engine; publish coalesced :class:`EngineView` s."""

    def __init__(self, client: Any, origin: str, node: str, host_interface: HostInterface, *,
                 coalesce: float = 0.02, max_delay: float = 1.0, heartbeat: float = 5.0, retry: float = 1.0,
                 backoff: tuple[float, float] = (0.2, 5.0)) -> None:
        self.client = client
        self.origin = origin
        self.state = EngineState(client, node, host_interface)
        self.heartbeat, self.retry = heartbeat, retry
        self._coalescer = Coalescer(CoalescePolicy(holdoff=coalesce, max_delay=max_delay))
        self.backoff = backoff
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._queue: list[str] = []  # container ids to look at, or _RELIST
        self._networks_stale = False
        self._stream: Any = None
        self._failing: str | None = None
        self._synced = False  # a full list has succeeded since the last outage
        self._threads: list[threading.Thread] = []
        self._handler: ViewHandler | None = None
        self.relists = 0

    # ---- lifecycle -----------------------------------------------------------

    def start(self, handler: ViewHandler) -> None:
        if self._threads:
            raise RuntimeError("already started")
        self._handler = handler
        self._threads = [threading.Thread(target=self._read, name="callgate-docker-events", daemon=True),
                         threading.Thread(target=self._work, name="callgate-docker-sync", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._cond:
            self._close_stream()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):  # already closed by the engine, or a half-dead socket
                stream.close()

    # ---- the reader: the event stream ---------------------------------------

    def _read(self) -> None:
        delay = self.backoff[0]
        while not self._stopping.is_set():
            try:
                stream = self.client.events(decode=True, filters={"type": ["container", "network"]})
            except Exception as exc:
                self._fail(f"cannot follow its events: {describe_error(exc)}")
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            with self._cond:
                self._stream = stream
                self._queue.append(_RELIST)  # subscribed first: nothing between list and events is lost
                self._cond.notify_all()
            reason = "the event stream ended (engine stopped or restarted)"
            try:
                for event in stream:
                    if self._stopping.is_set():
                        return
                    self._on_event(event)
                    delay = self.backoff[0]
            except Exception as exc:  # a broken connection
                reason = f"the event stream broke: {describe_error(exc)}"
            if self._stopping.is_set():
                return
            with self._cond:
                closed_here = self._stream is not stream  # by the worker, which said why
            if not closed_here:
                self._fail(reason)
            self._stopping.wait(delay)
            delay = min(delay * 2, self.backoff[1])

    def _on_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        kind, action = event.get("Type"), str(event.get("Action") or event.get("status") or "")
        actor = as_mapping(event.get("Actor"))
        attributes = as_mapping(actor.get("Attributes"))
        cid: Any = None
        if kind == "container" and action in CONTAINER_ACTIONS:
            cid = actor.get("ID")
        elif kind == "network" and action in NETWORK_ACTIONS:
            cid = attributes.get("container")  # connect/disconnect name the container
            with self._cond:
                self._networks_stale = True
                self._cond.notify_all()
        if isinstance(cid, str) and cid:
            with self._cond:
                self._queue.append(cid)
                self._cond.notify_all()

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._failing != reason:
                log.warning("docker engine lost; keeping the last rules", extra={"fields": {
                    "engine": self.origin, "reason": reason}})
            self._failing = reason
            self._synced = False
            self._cond.notify_all()

    # ---- the worker: look, coalesce, publish --------------------------------

    def _work(self) -> None:
        last_version: str | None = None
        last_problem: str | None = None
        coalescer = self._coalescer
        last_heard = time.monotonic()
        retry_at: float | None = None
        while True:
            with self._cond:
                while not self._stopping.is_set() and not self._queue and not self._networks_stale:
                    now = time.monotonic()
                    due = [last_heard + self.heartbeat]
                    if (publish_at := coalescer.due()) is not None:
                        due.append(publish_at)
                    if retry_at is not None:
                        due.append(retry_at)
                    if self._failing != last_problem and self._failing is not None:
                        break
                    wait = min(due) - now
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping.is_set():
                    return
                queue, self._queue = self._queue, []
                networks_stale, self._networks_stale = self._networks_stale, False
            now = time.monotonic()
            try:
                changed = self._look(queue, networks_stale, retry_at is not None and now >= retry_at)
            except Exception as exc:  # the engine went away mid-look, or does not answer
                self._fail(f"cannot read containers: {describe_error(exc)}")
                with self._cond:
                    # Reconnect and list afresh (the reader queues the relist), so a
                    # failure here is never the end of following the engine.
                    self._close_stream()
                continue
            if queue or networks_stale:
                last_heard = now
            if changed:
                coalescer.changed(now)
            view = self.state.view()
            retry_at = now + self.retry if view.unresolved else None
            with self._cond:
                failing, synced = self._failing, self._synced
            if failing is not None:
                last_heard = now  # no heartbeat while lost: the reader is reconnecting
                if failing != last_problem:
                    last_problem, last_version = failing, None
                    self._emit(SourceProblem(f"docker engine at {self.origin} unavailable "
                                             f"(keeping the last rules, retrying): {failing}"))
                coalescer.start(now)  # what changed so far is moot: the relist after the outage publishes
                continue
            if now - last_heard >= self.heartbeat and not queue:
                last_heard = now
                self._ping()
            if not synced:
                coalescer.start(now)  # the relist to come publishes whatever changed
                continue
            if (publish_at := coalescer.due()) is not None and now < publish_at:
                continue
            if publish_at is not None:
                coalescer.start(now)
            if view.version != last_version:
                last_problem, last_version = None, view.version
                self._emit(view)
            if publish_at is not None:
                coalescer.done(time.monotonic())

    def _look(self, queue: Sequence[str], networks_stale: bool, retry_due: bool) -> bool:
        """Bring the state up to date with what the queue names; whether it changed."""
        if _RELIST in queue:
            changed = self.state.relist()
            self.relists += 1
            with self._cond:
                recovered = self._failing is not None or not self._synced
                self._failing, self._synced = None, True
            return changed or recovered
        if networks_stale:
            self.state.refresh_networks()
        changed = False
        ids = dict.fromkeys(queue)
        if retry_due:
            ids.update(dict.fromkeys(c.id for c in self.state.containers.values() if c.unresolved))
        for cid in ids:
            changed |= self.state.refresh(cid)
        return changed

    def _ping(self) -> None:
        """A quiet stream may be a dead engine: ask it, and reconnect if it does not answer."""
        try:
            self.client.ping()
        except Exception as exc:
            self._fail(f"the engine does not answer: {describe_error(exc)}")
            with self._cond:
                self._close_stream()  # the reader's loop ends and reconnects

    def _emit(self, item: EngineView | SourceProblem) -> None:
        hand_over(self._handler, item, "docker view")


class DockerSource:
    """The agent's source on a Docker host: containers from the engine, policies from files."""

    def __init__(self, client: Any, origin: str, node: str, host_interface: HostInterface,
                 policies: Sequence[str | Path], **watcher_options: Any) -> None:
        self.watcher = DockerWatcher(client, origin, node, host_interface, **watcher_options)
        self.files = FilesSource([], policies)
        self.origin = f"docker {origin} + files {' + '.join(str(p) for p in policies)}"
        self._lock = threading.Lock()
        self._view: EngineView | SourceProblem | None = None
        self._policies: Snapshot | SourceProblem | None = None
        self._handler: SnapshotHandler | None = None
        self._last: str | None = None

    def start(self, handler: SnapshotHandler) -> None:
        self._handler = handler
        self.files.start(self._on_policies)
        self.watcher.start(self._on_view)

    def stop(self) -> None:
        self.watcher.stop()
        self.files.stop()

    def _on_policies(self, event: Snapshot | SourceProblem) -> None:
        with self._lock:
            self._policies = event
            self._publish()

    def _on_view(self, event: EngineView | SourceProblem) -> None:
        with self._lock:
            self._view = event
            self._publish()

    def _publish(self) -> None:
        """Hand on what the two halves say together (called under the lock, so
        snapshots leave in order)."""
        view, policies = self._view, self._policies
        if view is None or policies is None:
            return  # not both known yet: half a picture is not published
        problem = next((e for e in (view, policies) if isinstance(e, SourceProblem)), None)
        if problem is not None:
            key = "problem:" + problem.message
            event: Snapshot | SourceProblem = problem
        else:
            assert isinstance(view, EngineView) and isinstance(policies, Snapshot)
            key = f"{view.version}:{policies.version}"
            event = Snapshot(view.inventory, policies.policies, key, self.origin,
                             not_enforceable=list(view.not_enforceable))
        if key == self._last:
            return
        self._last = key
        assert self._handler is not None
        self._handler(event)
