"""A small, real-wire Kubernetes API server for tests.

It speaks enough of the list/watch protocol for the official ``kubernetes``
client (and callgate's watchers) to run against it unchanged:

* ``GET`` on a collection returns a ``<Kind>List`` whose ``metadata.resourceVersion``
  is the store's current revision; ``limit``/``continue`` paginate over a
  consistent snapshot (an expired ``continue`` token answers HTTP 410).
* ``GET ...?watch=1`` streams chunked, newline-delimited JSON events
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`` starting
  after ``resourceVersion`` (without one, or with "0", it first sends a
  synthetic ADDED for every current object, as the real server does).
  Watching from a revision older than the compaction point yields one ERROR
  event carrying a ``Status`` with code 410, then the stream ends.
  ``timeoutSeconds`` ends the stream cleanly.
* ``POST``/``PUT``/``PATCH``/``DELETE`` on objects (the controller posts Events).
* Custom resources: ClusterNetworkPolicy (v1alpha2) and the v1alpha1
  AdminNetworkPolicy and BaselineAdminNetworkPolicy, cluster-scoped, as a
  server with their CRDs installed serves them. ``FakeAPIServer(crds=False)``
  (or :meth:`uninstall_crds`) answers 404 for them, as a cluster without the
  CRDs does; :meth:`install_crds` brings them (back).

Tests drive it from Python: :meth:`create`, :meth:`update`, :meth:`delete`
assign increasing resourceVersions like etcd does; :meth:`compact` forgets
history; :meth:`bookmark` sends BOOKMARK events; :meth:`drop_watches` cuts open
streams without a clean end; :meth:`stop` / :meth:`start` take the server down
and bring it back on the same port with the same data (the API going away and
coming back). Every request is recorded in :attr:`requests`.

Only 127.0.0.1; an ephemeral port unless one is given.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Resource:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    kind: str
    api_version: str
    namespaced: bool


RESOURCES: dict[str, Resource] = {
    "pods": Resource("/api/v1", "Pod", "v1", True),
    "namespaces": Resource("/api/v1", "Namespace", "v1", False),
    "nodes": Resource("/api/v1", "Node", "v1", False),
    "events": Resource("/api/v1", "Event", "v1", True),
    "networkpolicies": Resource("/apis/networking.k8s.io/v1", "NetworkPolicy", "networking.k8s.io/v1", True),
    "clusternetworkpolicies": Resource("/apis/policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy",
                                       "policy.networking.k8s.io/v1alpha2", False),
    "adminnetworkpolicies": Resource("/apis/policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy",
                                     "policy.networking.k8s.io/v1alpha1", False),
    "baselineadminnetworkpolicies": Resource("/apis/policy.networking.k8s.io/v1alpha1",
                                             "BaselineAdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1",
                                             False),
}
CRD_RESOURCES = ("clusternetworkpolicies", "adminnetworkpolicies", "baselineadminnetworkpolicies")
_BY_KIND = {r.kind: name for name, r in RESOURCES.items()}


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (query values are the first value given)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("1", "true", "True")


@dataclass
class _Watch:
    resource: str
    namespace: str | None
    bookmarks: bool
    conn: socket.socket
    queue: list[dict[str, Any] | str] = field(default_factory=list)
    dropped: bool = False  # cut the connection, no clean end
    closing: bool = False  # end the stream cleanly once the queue is sent


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``meta/v1 Status`` object, as the API server returns for failures."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (good enough for strategic merge on Events)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


class FakeAPIServer:
    """A threaded fake Kubernetes API server; see the module docstring."""

    def __init__(self, port: int = 0, crds: bool = True) -> None:
        self.port = port
        self.crds = crds  # are the policy CRDs installed (their resources served)?
        self.requests: list[Request] = []
        self._lock = threading.Condition()
        self._rv = 100  # like etcd, revisions start somewhere above zero
        self._compacted = 0  # watching from a revision older than this answers 410
        self._store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {name: {} for name in RESOURCES}
        self._history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self._continues: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._watches: list[_Watch] = []
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._failures: list[tuple[Callable[[Request], bool], int]] = []

    # ---- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> FakeAPIServer:
        """Listen (again) on 127.0.0.1; after a restart, on the same port with the same data."""
        if self._httpd is not None:
            return self
        handler = type("Handler", (_Handler,), {"api": self})
        httpd = _QuietServer(("127.0.0.1", self.port), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-apiserver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: stop listening and cut every open connection (data is kept)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            for w in self._watches:
                w.dropped = True
            conns = list(self._conns)
            self._lock.notify_all()
        for conn in conns:
            _shutdown(conn)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- driving the store -------------------------------------------------------

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object (kind decides the resource); returns the stored copy."""
        with self._lock:
            return copy.deepcopy(self._write(self._resource_of(obj), obj, create=True))

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._write(self._resource_of(obj), obj, create=False))

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or update, whichever applies."""
        resource = self._resource_of(obj)
        with self._lock:
            exists = self._key(resource, obj) in self._store[resource]
            return copy.deepcopy(self._write(resource, obj, create=not exists))

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        resource = _BY_KIND[kind]
        with self._lock:
            self._delete(resource, (namespace or "default") if RESOURCES[resource].namespaced else "", name)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        resource = _BY_KIND[kind]
        with self._lock:
            obj = self._store[resource].get(((namespace or "default") if RESOURCES[resource].namespaced else "", name))
            return copy.deepcopy(obj)

    def objects(self, kind: str) -> list[dict[str, Any]]:
        resource = _BY_KIND[kind]
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self._store[resource].items())]

    def compact(self) -> None:
        """Forget history up to now: watches from any older revision get 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._history.clear()
            self._continues = {k: v for k, v in self._continues.items() if v[0] >= self._rv}

    def bookmark(self, resource: str | None = None) -> None:
        """Send a BOOKMARK at the current revision to watches that asked for bookmarks."""
        with self._lock:
            for w in self._watches:
                if w.bookmarks and (resource is None or w.resource == resource):
                    r = RESOURCES[w.resource]
                    w.queue.append({"type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": r.api_version,
                        "metadata": {"resourceVersion": str(self._rv)}}})
            self._lock.notify_all()

    def send_raw(self, resource: str, event: dict[str, Any] | str) -> None:
        """Push an arbitrary event to every watch of ``resource``: a dict (even a
        malformed event) is sent as JSON, a str as the line itself (even non-JSON)."""
        with self._lock:
            for w in self._watches:
                if w.resource == resource:
                    w.queue.append(event)
            self._lock.notify_all()

    def drop_watches(self, resource: str | None = None) -> int:
        """Cut open watch streams mid-flight (no terminating chunk); returns how many."""
        with self._lock:
            victims = [w for w in self._watches if resource is None or w.resource == resource]
            for w in victims:
                w.dropped = True
            self._lock.notify_all()
        for w in victims:
            _shutdown(w.conn)
        return len(victims)

    def uninstall_crds(self) -> None:
        """Remove the policy CRDs: their objects go (as on a real server) and their
        resources answer 404; open watches of them end."""
        with self._lock:
            self.crds = False
            for resource in CRD_RESOURCES:
                self._store[resource].clear()
            for w in self._watches:
                if w.resource in CRD_RESOURCES:
                    w.closing = True
            self._lock.notify_all()

    def _check_served(self, resource: str, path: str) -> None:
        """404 for a CRD's resource while the CRDs are not installed (caller holds the lock)."""
        if resource in CRD_RESOURCES and not self.crds:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")

    def install_crds(self) -> None:
        with self._lock:
            self.crds = True
            self._lock.notify_all()

    def fail(self, predicate: Callable[[Request], bool], code: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests matching ``predicate`` with an error status."""
        with self._lock:
            self._failures.extend([(predicate, code)] * times)

    def open_watches(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(1 for w in self._watches if not w.dropped and not _peer_closed(w.conn)
                       and (resource is None or w.resource == resource))

    def requests_for(self, resource: str, watch: bool | None = None) -> list[Request]:
        """Recorded requests on a collection (any namespace), optionally only watches/lists."""
        with self._lock:
            found = list(self.requests)
        return [r for r in found if _route(r.path)[0] == resource and (watch is None or r.watch == watch)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every server change). The
        timeout is a bound, not a delay. With 5 s, the CRD-less cluster test failed
        a few seconds into a run on a loaded two-core machine (passing alone every
        time); of its waits, this one had the shortest bound."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))
        return True

    # ---- internals (call with the lock held) --------------------------------------

    @staticmethod
    def _resource_of(obj: dict[str, Any]) -> str:
        try:
            return _BY_KIND[obj["kind"]]
        except KeyError:
            raise ValueError(f"unsupported kind {obj.get('kind')!r}") from None

    @staticmethod
    def _key(resource: str, obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        ns = (meta.get("namespace") or "default") if RESOURCES[resource].namespaced else ""
        return ns, str(meta.get("name") or "")

    def _write(self, resource: str, obj: dict[str, Any], create: bool) -> dict[str, Any]:
        r = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", r.api_version)
        obj.setdefault("kind", r.kind)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            else:
                raise ApiError(422, "Invalid", "metadata.name: Required value")
        if r.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = self._key(resource, obj)
        old = self._store[resource].get(key)
        if create and old is not None:
            raise ApiError(409, "AlreadyExists", f'{resource} "{key[1]}" already exists')
        if not create and old is None:
            raise ApiError(404, "NotFound", f'{resource} "{key[1]}" not found')
        self._rv += 1
        if old is not None:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta["resourceVersion"] = str(self._rv)
        if resource == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        self._store[resource][key] = obj
        self._emit(resource, "ADDED" if old is None else "MODIFIED", obj)
        return obj

    def _delete(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self._store[resource].pop((namespace, name), None)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(resource, "DELETED", obj)
        return obj

    def _emit(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self._history.append((self._rv, resource, kind, copy.deepcopy(obj)))
        ns = obj["metadata"].get("namespace")
        for w in self._watches:
            if w.resource == resource and (w.namespace is None or w.namespace == ns):
                w.queue.append({"type": kind, "object": copy.deepcopy(obj)})
        self._lock.notify_all()

    def _injected_failure(self, req: Request) -> int | None:
        for i, (predicate, code) in enumerate(self._failures):
            if predicate(req):
                del self._failures[i]
                return code
        return None

    def _list(self, resource: str, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
        token = query.get("continue")
        if token:
            if token not in self._continues:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                               "consistent list result. You can start a new list without "
                                               "the continue parameter.")
            list_rv, items = self._continues.pop(token)
        else:
            list_rv = self._rv
            # As on a real server, list items carry no kind/apiVersion of their own. They
            # share nested values with the store, which nothing changes in place (every
            # write stores a fresh deep copy; responses are only encoded): deep-copying
            # 50,000 pods here held the server's lock for ~2 s, in which every other
            # kind's list waited, a cost no real API server (serving from its watch
            # cache) has and that the agent's cold-start figure should not carry.
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                     for (ns, _), o in sorted(self._store[resource].items())
                     if namespace is None or ns == namespace]
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        limit = _int(query.get("limit"), "limit")
        if limit and len(items) > limit:
            rest = items[limit:]
            items = items[:limit]
            next_token = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
            self._continues[next_token] = (list_rv, rest)
            meta["continue"] = next_token
            meta["remainingItemCount"] = len(rest)
        r = RESOURCES[resource]
        return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": meta, "items": items}

    def _open_watch(self, resource: str, namespace: str | None, query: dict[str, str],
                    conn: socket.socket) -> _Watch:
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        w = _Watch(resource, namespace, bookmarks, conn)
        raw_rv = query.get("resourceVersion", "")
        if raw_rv in ("", "0"):
            # "Any"/"most recent": synthetic ADDED events for what exists now.
            for (ns, _), obj in sorted(self._store[resource].items()):
                if namespace is None or ns == namespace:
                    w.queue.append({"type": "ADDED", "object": copy.deepcopy(obj)})
        else:
            since = _int(raw_rv, "resourceVersion")
            if since < self._compacted:
                w.queue.append({"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {since} ({self._compacted})")})
                w.closing = True  # the stream ends after the error, as on a real server
                return w
            for rv, res, kind, obj in self._history:
                if rv > since and res == resource and (namespace is None or obj["metadata"].get("namespace") == namespace):
                    w.queue.append({"type": kind, "object": copy.deepcopy(obj)})
        self._watches.append(w)
        return w


def _int(text: str | None, name: str) -> int:
    if text is None or text == "":
        return 0
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name}: invalid value {text!r}") from None


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def _peer_closed(conn: socket.socket) -> bool:
    """Has the client closed its end? (Readable with nothing to read means EOF.)"""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (OSError, ValueError):
        return True


def _route(path: str) -> tuple[str | None, str | None, str | None]:
    """(resource, namespace, name) for an API path, or (None, None, None)."""
    for prefix in sorted({r.prefix + "/" for r in RESOURCES.values()}, key=len, reverse=True):
        if path.startswith(prefix):
            parts = [p for p in path[len(prefix):].split("/") if p]
            break
    else:
        return None, None, None
    resource = parts[2] if len(parts) >= 3 and parts[0] == "namespaces" else parts[0] if parts else None
    if resource in RESOURCES and RESOURCES[resource].prefix + "/" != prefix:
        return None, None, None  # a resource under another group's path
    if len(parts) >= 3 and parts[0] == "namespaces":
        ns = parts[1]
        resource = parts[2]
        name = parts[3] if len(parts) == 4 else None
        if len(parts) > 4 or resource not in RESOURCES or not RESOURCES[resource].namespaced:
            return None, None, None
        return resource, ns, name
    if len(parts) in (1, 2) and parts[0] in RESOURCES:
        return parts[0], None, parts[1] if len(parts) == 2 else None
    return None, None, None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up (or us cutting them off) is routine here, not worth a traceback


class _Handler(BaseHTTPRequestHandler):
    api: FakeAPIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def setup(self) -> None:
        super().setup()
        with self.api._lock:
            self.api._conns.add(self.connection)

    def finish(self) -> None:
        with self.api._lock:
            self.api._conns.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        body = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                self._send_json(400, status(400, "BadRequest", "request body is not JSON"))
                return
        req = Request(method, split.path, query, body)
        api = self.api
        with api._lock:
            api.requests.append(req)
            api._lock.notify_all()
            injected = api._injected_failure(req)
        if injected is not None:
            self._send_json(injected, status(injected, "InternalError", "injected failure"))
            return
        resource, namespace, name = _route(split.path)
        try:
            if resource is None:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({split.path})")
            if method == "GET" and name is None and req.watch:
                self._watch(resource, namespace, query, split.path)
                return
            with api._lock:
                # Whether a CRD's resource is served is decided under the lock that
                # uninstall_crds takes, so no request slips in between the two.
                api._check_served(resource, split.path)
                code, out = self._dispatch(method, resource, namespace, name, body, query)
        except ApiError as err:
            self._send_json(err.code, status(err.code, err.reason, err.message))
            return
        self._send_json(code, out)

    def _dispatch(self, method: str, resource: str, namespace: str | None, name: str | None,
                  body: Any, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        api = self.api
        ns_key = (namespace or "") if RESOURCES[resource].namespaced else ""
        if method == "GET" and name is None:
            return 200, api._list(resource, namespace, query)
        if method == "GET":
            obj = api._store[resource].get((ns_key, name or ""))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            return 200, obj
        if method == "DELETE" and name is not None:
            return 200, api._delete(resource, ns_key, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "expected a JSON object")
        if method == "POST" and name is None:
            body.setdefault("metadata", {})
            if RESOURCES[resource].namespaced:
                body["metadata"]["namespace"] = namespace or "default"
            return 201, api._write(resource, body, create=True)
        if method == "PUT" and name is not None:
            return 200, api._write(resource, body, create=False)
        if method == "PATCH" and name is not None:
            old = api._store[resource].get((ns_key, name))
            if old is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            return 200, api._write(resource, _merge_patch(old, body), create=False)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _watch(self, resource: str, namespace: str | None, query: dict[str, str], path: str) -> None:
        api = self.api
        timeout = _int(query.get("timeoutSeconds"), "timeoutSeconds") or 1800
        deadline = time.monotonic() + timeout
        with api._lock:
            # Checked and opened under one lock: a watch that passed the check is in
            # _watches before uninstall_crds can look for it, so it is always ended.
            api._check_served(resource, path)
            w = api._open_watch(resource, namespace, query, self.connection)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in self._events(w, deadline):
                line = (json.dumps(event) if isinstance(event, dict) else event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            if not w.dropped:
                self.wfile.write(b"0\r\n\r\n")  # a clean end: the server's timeout expired
        except OSError:
            pass  # the client went away, or we cut the connection on purpose
        finally:
            with api._lock:
                if w in api._watches:
                    api._watches.remove(w)
                api._lock.notify_all()

    def _events(self, w: _Watch, deadline: float) -> Iterator[dict[str, Any] | str]:
        lock = self.api._lock
        while True:
            with lock:
                while not w.queue and not (w.dropped or w.closing) and time.monotonic() < deadline:
                    lock.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                    if _peer_closed(w.conn):
                        w.dropped = True  # the client hung up; a real server notices too
                batch, w.queue = w.queue, []
                cut = w.dropped
                done = w.closing or time.monotonic() >= deadline
            if cut:
                return
            yield from batch
            if done:
                return
