"""The Kubernetes source: Pods, Namespaces, Nodes, NetworkPolicies and the cluster
tiers (ClusterNetworkPolicy; v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy)
from the API server.

One :class:`~callgate.watchers.k8s_reflector.Reflector` thread per kind
list-then-watches into one :class:`~callgate.watchers.cache.ClusterCache`. A
publisher thread turns cache changes into published states:

* nothing is published until the first list of **every** kind has completed
  (a cluster policy kind whose CRD is not installed counts as listed and
  empty): pods without their policies would be a wrong picture, not a
  partial one;
* changes are coalesced adaptively (:mod:`callgate.watchers.coalesce`): a
  change after a quiet spell goes out at once; inside a burst each state
  waits ``coalesce`` seconds after the previous one, fourfold longer each time
  up to ``max_delay``, so a burst of 1,000 events is a handful of states;
* a state is published only when its content version changed (pod status
  heartbeats do not wake the agent), except that the first state after an
  outage is always published, so the consumer knows the source is back;
* while any kind's requests fail (API down, RBAC), a :class:`SourceProblem` is
  published once per distinct failure, and the reflectors keep retrying with
  backoff. The consumer keeps the rules it last applied.

Invalid objects (a NetworkPolicy callgate cannot parse, a malformed Pod) are
skipped and listed in ``problems``: one bad object must not block the cluster.

:class:`ClusterWatcher` publishes :class:`ClusterState` (with object references,
for the controller); :class:`KubernetesSource` adapts it to the agent's
:class:`~callgate.watchers.base.Source` interface.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from callgate.watchers.base import Snapshot, SnapshotHandler, SourceProblem, hand_over
from callgate.watchers.cache import ClusterCache
from callgate.watchers.coalesce import CoalescePolicy, Coalescer
from callgate.watchers.k8s_client import make_api_client
from callgate.watchers.k8s_convert import KINDS, ClusterState
from callgate.watchers.k8s_reflector import Reflector, WatchOptions

log = logging.getLogger("callgate.watchers.kubernetes")

StateHandler = Callable[[ClusterState | SourceProblem], None]

__all__ = ["ClusterState", "ClusterWatcher", "KubernetesSource", "WatchOptions"]


class ClusterWatcher:
    """List-then-watch every kind and publish consistent, coalesced states."""

    def __init__(self, api_client: Any, origin: str, *, coalesce: float = 0.02, max_delay: float = 2.0,
                 options: WatchOptions | None = None, kinds: tuple[str, ...] = KINDS) -> None:
        self.api_client = api_client
        self.origin = origin
        self.cache = ClusterCache(kinds)
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._coalescer = Coalescer(CoalescePolicy(holdoff=coalesce, max_delay=max_delay))
        self._failing: dict[str, str] = {}
        self.reflectors = [
            Reflector(kind, api_client, self.cache, on_change=self._changed, on_health=self._health,
                      stopping=self._stopping, options=options)
            for kind in kinds
        ]
        self._threads: list[threading.Thread] = []
        self._handler: StateHandler | None = None

    def start(self, handler: StateHandler) -> None:
        if self._threads:
            raise RuntimeError("already started")
        self._handler = handler
        self._threads = [threading.Thread(target=r.run, name=f"callgate-watch-{r.kind}", daemon=True)
                         for r in self.reflectors]
        self._threads.append(threading.Thread(target=self._publish_loop, name="callgate-publish", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for r in self.reflectors:
            r.stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("threads still running after stop: %s", ", ".join(alive))

    # ---- reflector callbacks -------------------------------------------------------

    def _mark(self) -> None:
        self._coalescer.changed(time.monotonic())
        self._cond.notify_all()

    def _changed(self) -> None:
        with self._cond:
            self._mark()

    def _health(self, kind: str, problem: str | None) -> None:
        with self._cond:
            if problem is None:
                if self._failing.pop(kind, None) is not None:
                    self._mark()
            elif self._failing.get(kind) != problem:
                self._failing[kind] = problem
                self._mark()

    # ---- publishing ----------------------------------------------------------------

    def _publish_loop(self) -> None:
        last_version: str | None = None
        last_problem: str | None = None
        while True:
            with self._cond:
                while not self._stopping.is_set():
                    due = self._coalescer.due()
                    remaining = None if due is None else due - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopping.is_set():
                    return
                self._coalescer.start(time.monotonic())
                failing = dict(self._failing)
            if failing:
                message = _summarise(failing)
                if message != last_problem:
                    last_problem, last_version = message, None
                    self._emit(SourceProblem(f"kubernetes API at {self.origin} unavailable "
                                             f"(keeping the last rules, retrying): {message}"))
            elif self.cache.synced:
                state = self.cache.state()
                if state.version != last_version:
                    last_problem, last_version = None, state.version
                    self._emit(state)
            with self._cond:
                self._coalescer.done(time.monotonic())

    def _emit(self, item: ClusterState | SourceProblem) -> None:
        hand_over(self._handler, item, "cluster state")


def _summarise(failing: dict[str, str]) -> str:
    """"pods, namespaces: cannot connect: …" — kinds failing the same way share a line."""
    by_reason: dict[str, list[str]] = {}
    for kind, why in sorted(failing.items()):
        by_reason.setdefault(why, []).append(kind)
    return "; ".join(f"{', '.join(kinds)}: {why}" for why, kinds in sorted(by_reason.items()))


class KubernetesSource:
    """The agent's :class:`~callgate.watchers.base.Source` for a Kubernetes cluster.

    ``KubernetesSource.connect(kubeconfig=..., server=...)`` builds the client from
    a kubeconfig, the in-cluster service account, or a plain URL.
    """

    def __init__(self, api_client: Any, origin: str, **watcher_options: Any) -> None:
        self.watcher = ClusterWatcher(api_client, origin, **watcher_options)
        self.origin = f"kubernetes {origin}"

    @classmethod
    def connect(cls, server: str | None = None, kubeconfig: str | None = None, context: str | None = None,
                **watcher_options: Any) -> KubernetesSource:
        api_client, origin = make_api_client(server=server, kubeconfig=kubeconfig, context=context)
        return cls(api_client, origin, **watcher_options)

    def start(self, handler: SnapshotHandler) -> None:
        def forward(item: ClusterState | SourceProblem) -> None:
            if isinstance(item, SourceProblem):
                handler(item)
            else:
                handler(Snapshot(inventory=item.inventory, policies=item.policies, version=item.version,
                                 origin=self.origin, problems=list(item.problems)))

        self.watcher.start(forward)

    def stop(self) -> None:
        self.watcher.stop()
