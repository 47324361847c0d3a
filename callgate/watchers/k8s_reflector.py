"""List-then-watch for one kind of object, feeding the cache (a "reflector").

The protocol, as client-go implements it and as we do here:

1. **List** (paginated with ``limit``/``continue``) and replace the kind's cache
   content; the list's ``metadata.resourceVersion`` is where the watch resumes.
2. **Watch** from that resourceVersion with ``allowWatchBookmarks=true`` and a
   server-side ``timeoutSeconds`` (randomised, so many agents do not reconnect in
   lockstep). Each event moves the resume point; BOOKMARK events move it without
   content, so a quiet kind does not fall behind the compaction window.
3. When the watch ends cleanly (server timeout) or the connection drops, watch
   again from the last resourceVersion: nothing is missed and nothing re-listed.
4. **410 Gone** (the resume point was compacted away; as an ERROR event in the
   stream or as the HTTP status) means events were lost: forget the resume point
   and list again.
5. A failed request (connection refused, 5xx, 403 …) is reported and retried
   after an exponential backoff with jitter, reset once a request succeeds.
6. An optional kind (the ClusterNetworkPolicy CRDs) that the server does not
   serve (HTTP 404 on the list) counts as listed and empty: the cluster works
   as one without such policies. That is logged once, and the list is tried
   again every ``absent_recheck`` seconds, so installing the CRD later is
   noticed; a CRD removed later empties the kind the same way.

We stream with ``_preload_content=False`` and parse lines ourselves rather than
use ``kubernetes.watch.Watch``: ``Watch`` deserialises into model classes (we
need the raw dicts the policy parsers read, and converting back loses unknown
fields), retries a 410 by itself once from the same stale version, and with
``deserialize=False`` fails with a KeyError on ERROR events.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from callgate.policy.documents import gc_paused
from callgate.watchers.base import clip
from callgate.watchers.cache import ClusterCache, Listed
from callgate.watchers.k8s_convert import (
    API_VERSIONS,
    NAMESPACES,
    NODES,
    OPTIONAL_KINDS,
    PODS,
    POLICIES,
)

log = logging.getLogger("callgate.watchers.kubernetes")

_MAX_LINE = 32 * 1024 * 1024  # one event; a bigger "line" is a broken or hostile stream


@dataclass(frozen=True)
class WatchOptions:
    """Timing knobs; the defaults suit a real cluster, tests shrink them."""

    page_size: int = 500
    watch_timeout: int = 300  # seconds; each watch lasts between this and twice this
    connect_timeout: float = 10.0
    read_grace: float = 30.0  # beyond the watch timeout before we call the connection dead
    list_timeout: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    absent_recheck: float = 300.0  # seconds between looks for an optional kind the server does not serve


class Backoff:
    """Exponential backoff with "equal jitter": a delay in [d/2, d], d doubling to a cap."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return self._rng.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.initial


class Gone(Exception):
    """The resume point is too old (HTTP 410): relist."""


class BadStream(Exception):
    """The stream said something we cannot trust; relist to stay consistent."""


class NotServed(Exception):
    """The server does not serve an optional kind (its CRD is not installed)."""


def list_function(kind: str, api_client: Any) -> Callable[..., Any]:
    """The official client's cluster-wide list call for ``kind``."""
    from kubernetes import client

    if kind == PODS:
        return client.CoreV1Api(api_client).list_pod_for_all_namespaces  # type: ignore[no-any-return]
    if kind == NAMESPACES:
        return client.CoreV1Api(api_client).list_namespace  # type: ignore[no-any-return]
    if kind == POLICIES:
        return client.NetworkingV1Api(api_client).list_network_policy_for_all_namespaces  # type: ignore[no-any-return]
    if kind == NODES:
        return client.CoreV1Api(api_client).list_node  # type: ignore[no-any-return]
    if kind in OPTIONAL_KINDS:
        group, version = API_VERSIONS[kind].split("/")
        return functools.partial(client.CustomObjectsApi(api_client).list_cluster_custom_object, group, version,
                                 kind)
    raise ValueError(f"unknown kind {kind}")


def describe_error(exc: BaseException) -> str:
    """A one-line account of a failed request, safe to log and publish."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        detail = exc.reason or ""
        try:
            body = json.loads(exc.body) if exc.body else None
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                detail = body["message"]
        except (ValueError, TypeError):
            pass
        return clip(f"HTTP {exc.status}: {detail}", 300)
    from urllib3.exceptions import MaxRetryError, NewConnectionError, TimeoutError

    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason  # urllib3 wraps the real cause
    if isinstance(exc, NewConnectionError):
        return clip("cannot connect: " + str(exc).rsplit("new connection: ", 1)[-1], 300)
    if isinstance(exc, TimeoutError):
        return clip(f"timed out: {exc}", 300)
    return clip(f"{type(exc).__name__}: {exc}", 300)


class Reflector:
    """Keeps one kind of the cache in step with the API server (one thread)."""

    def __init__(self, kind: str, api_client: Any, cache: ClusterCache, *,
                 on_change: Callable[[], None],
                 on_health: Callable[[str, str | None], None],
                 stopping: threading.Event,
                 options: WatchOptions | None = None,
                 rng: random.Random | None = None) -> None:
        self.kind = kind
        self.cache = cache
        self.options = options or WatchOptions()
        self._list = list_function(kind, api_client)
        self._on_change = on_change
        self._on_health = on_health  # (kind, None) when healthy, (kind, message) when failing
        self._stopping = stopping
        self._rng = rng or random.Random()
        self._backoff = Backoff(self.options.backoff_initial, self.options.backoff_max, self._rng)
        self.optional = kind in OPTIONAL_KINDS
        self.served: bool | None = None  # optional kinds: known after the first list
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        self.lists = 0  # how many full lists (the first one plus every relist)

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.cache.resource_version(self.kind) is None:
                    self._list_all()
                self._watch()
            except Gone:
                log.info("%s: resourceVersion expired (410 Gone); relisting", self.kind)
                self.cache.forget_version(self.kind)
            except NotServed:
                if self.served is not False:
                    log.info("%s: not served by this cluster (CRD not installed); going on without them, "
                             "looking again every %gs", self.kind, self.options.absent_recheck)
                self.served = False
                if self.cache.absent(self.kind):
                    self._on_change()
                self._healthy()
                self._stopping.wait(self.options.absent_recheck)
            except BadStream as exc:
                log.warning("%s: %s; relisting", self.kind, exc)
                self.cache.forget_version(self.kind)
                self._pause()  # a server that keeps sending garbage must not spin us
            except Exception as exc:
                if self._stopping.is_set():
                    break
                message = describe_error(exc)
                log.warning("%s: %s", self.kind, message)
                self._on_health(self.kind, message)
                self._pause()

    def stop(self) -> None:
        """Unblock a watch in progress (the caller has set ``stopping``)."""
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            _abort(resp)

    def _pause(self) -> None:
        self._stopping.wait(self._backoff.next())

    # ---- list --------------------------------------------------------------------

    def _list_all(self) -> None:
        """One consistent list, page by page; an expired continue token restarts it."""
        with gc_paused():  # tens of thousands of objects that all stay: see gc_paused
            self._list_pages()

    def _list_pages(self) -> None:
        # The next page is requested before this one is converted: the server
        # encodes it while we convert (on two cores, and on a real cluster with
        # the server elsewhere, the two overlap instead of taking turns), and a
        # page is dropped once converted instead of all being held to the end.
        fetcher = ThreadPoolExecutor(1, thread_name_prefix=f"callgate-list-{self.kind}")
        try:
            listed, version = self._pages(fetcher)
        finally:
            fetcher.shutdown(wait=False, cancel_futures=True)
        self.lists += 1
        if self.optional and self.served is not True:
            log.info("%s: served by this cluster; watching them", self.kind)
        self.served = True
        changed = self.cache.install(listed, version)
        log.debug("%s: listed %d objects at resourceVersion %s", self.kind, len(listed.entries), version)
        self._healthy()
        if changed:
            self._on_change()

    def _pages(self, fetcher: ThreadPoolExecutor) -> tuple[Listed, str]:
        """Every page of one consistent list, converted; and its resourceVersion."""
        listed = Listed(self.kind)
        token: str | None = None
        pending = fetcher.submit(self._request_page, token)
        while True:
            try:
                body = pending.result()
            except Gone:
                if token is None:
                    raise
                log.info("%s: list continue token expired; listing again from the start", self.kind)
                listed, token = Listed(self.kind), None
                pending = fetcher.submit(self._request_page, token)
                continue
            meta = body.get("metadata")
            page = body.get("items")
            if not isinstance(meta, dict) or not isinstance(page, list):
                raise BadStream(f"list response without metadata/items ({clip(str(body)[:200])})")
            token = meta.get("continue") if isinstance(meta.get("continue"), str) else None
            if token:
                pending = fetcher.submit(self._request_page, token)
                listed.add(page)
                continue
            version = meta.get("resourceVersion")
            if not isinstance(version, str) or not version:
                raise BadStream("list response without metadata.resourceVersion")
            listed.add(page)
            return listed, version

    def _request_page(self, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"limit": self.options.page_size,
                                  "_request_timeout": (self.options.connect_timeout, self.options.list_timeout)}
        if token:
            kwargs["_continue"] = token
        return self._request_json(**kwargs)

    def _request_json(self, **kwargs: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._list(_preload_content=False, **kwargs)
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            if exc.status == 404 and self.optional:
                raise NotServed() from None
            raise
        try:
            body = json.loads(resp.data)
        except ValueError:
            raise BadStream("list response is not JSON") from None
        finally:
            resp.release_conn()
        if not isinstance(body, dict):
            raise BadStream("list response is not a JSON object")
        return body

    # ---- watch -------------------------------------------------------------------

    def _watch(self) -> None:
        from kubernetes.client.exceptions import ApiException

        version = self.cache.resource_version(self.kind)
        timeout = self._rng.randint(self.options.watch_timeout, 2 * self.options.watch_timeout)
        try:
            resp = self._list(watch=True, resource_version=version, allow_watch_bookmarks=True,
                              timeout_seconds=timeout, _preload_content=False,
                              _request_timeout=(self.options.connect_timeout, timeout + self.options.read_grace))
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            if exc.status == 404 and self.optional:
                raise NotServed() from None
            raise
        self._healthy()
        with self._resp_lock:
            self._resp = resp
        received = 0
        try:
            if self._stopping.is_set():
                return
            for line in _lines(resp):
                received += 1
                self._handle(line)
                if self._stopping.is_set():
                    return
        except (Gone, BadStream):
            raise
        except Exception as exc:
            if not self._stopping.is_set():
                log.info("%s: watch stream broke (%s); resuming from %s", self.kind, describe_error(exc),
                         self.cache.resource_version(self.kind))
                if not received:
                    self._pause()  # a server that accepts and drops at once must not spin us
        finally:
            with self._resp_lock:
                self._resp = None
            # Close before releasing: a half-read stream must never go back into the pool,
            # or the next request would be written into the middle of this one.
            resp.close()
            resp.release_conn()

    def _handle(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            raise BadStream("watch sent a line that is not JSON") from None
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise BadStream("watch sent an event without an object")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            code = obj.get("code")
            message = clip(str(obj.get("message", "")), 300)
            if code == 410:
                raise Gone()
            raise RuntimeError(f"watch error {code}: {message}")
        meta = obj.get("metadata")
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(version, str) or not version or len(version) > 64:
            raise BadStream(f"{kind} event without a usable metadata.resourceVersion")
        if kind == "BOOKMARK":
            self.cache.bookmark(self.kind, version)
            return
        if kind in ("ADDED", "MODIFIED"):
            changed = self.cache.upsert(self.kind, obj, version)
        elif kind == "DELETED":
            changed = self.cache.remove(self.kind, obj, version)
        else:
            raise BadStream(f"unknown watch event type {clip(str(kind), 40)!r}")
        if changed:
            self._on_change()

    def _healthy(self) -> None:
        self._backoff.reset()
        self._on_health(self.kind, None)


def _lines(resp: Any) -> Iterator[str]:
    """Newline-delimited lines of a streamed response, as they arrive."""
    buffer = bytearray()
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) != -1:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line.decode("utf-8", errors="replace")
        if len(buffer) > _MAX_LINE:
            raise BadStream(f"watch event longer than {_MAX_LINE} bytes")
    if buffer.strip():
        yield buffer.decode("utf-8", errors="replace")


def _abort(resp: Any) -> None:
    """Shut the socket under a blocked read so the reading thread returns now."""
    with contextlib.suppress(Exception):
        resp.shutdown()
