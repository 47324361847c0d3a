"""The Kubernetes source against a fake API server, through the real ``kubernetes`` client.

Every test waits on conditions (a published snapshot that satisfies a
predicate, a server-side count) with a timeout; none sleeps to synchronise.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from callgate.errors import InputError
from callgate.policy import load_inventory
from callgate.watchers.base import Snapshot, SourceProblem
from callgate.watchers.cache import Listed
from callgate.watchers.k8s_client import make_api_client
from callgate.watchers.k8s_reflector import Backoff, WatchOptions
from callgate.watchers.kubernetes import KubernetesSource
from tests.fake_apiserver import CRD_RESOURCES, FakeAPIServer

pytestmark = pytest.mark.timeout(60)

# Every resource the source lists and watches (the CRDs' too, where served).
WATCHED = ("pods", "namespaces", "networkpolicies", "nodes", *CRD_RESOURCES)
FAST = WatchOptions(watch_timeout=30, connect_timeout=2, backoff_initial=0.02, backoff_max=0.2, page_size=500)
WAIT = 30.0  # a bound, not a delay: in one full-suite run a first snapshot did not come within 10 s


# ---- objects ---------------------------------------------------------------------------

def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, ns: str, ip: str | None, labels: dict[str, str] | None = None, node: str = "node-1",
        ports: list[dict[str, Any]] | None = None, phase: str = "Running", **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"pod": name}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x", "ports": ports or []}]},
        "status": {"phase": phase, **({"podIP": ip, "podIPs": [{"ip": ip}]} if ip else {})},
    }
    for key, value in extra.items():
        obj[key] = value
    return obj


def policy(name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


DENY_ALL = {"podSelector": {}, "policyTypes": ["Ingress"]}


# ---- harness ---------------------------------------------------------------------------

class Recorder:
    """Collects what the source publishes; tests wait on it with a timeout."""

    def __init__(self) -> None:
        self.items: list[Snapshot | SourceProblem] = []
        self._cond = threading.Condition()

    def __call__(self, item: Snapshot | SourceProblem) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.items)

    def wait(self, predicate: Callable[[Snapshot | SourceProblem], bool], after: int = 0,
             timeout: float = WAIT) -> Snapshot | SourceProblem:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.items[after:]:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"nothing matching was published; got {self.items[after:]!r}"[:3000])
                self._cond.wait(remaining)

    def snapshot(self, predicate: Callable[[Snapshot], bool] = lambda s: True, after: int = 0) -> Snapshot:
        item = self.wait(lambda i: isinstance(i, Snapshot) and predicate(i), after)
        assert isinstance(item, Snapshot)
        return item

    def problem(self, after: int = 0) -> SourceProblem:
        item = self.wait(lambda i: isinstance(i, SourceProblem), after)
        assert isinstance(item, SourceProblem)
        return item


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)  # polling a condition, not synchronising by sleeping


@pytest.fixture
def server() -> Iterator[FakeAPIServer]:
    with FakeAPIServer() as srv:
        yield srv


@pytest.fixture
def start_source(server: FakeAPIServer) -> Iterator[Callable[..., tuple[KubernetesSource, Recorder]]]:
    started: list[KubernetesSource] = []

    def start(**options: Any) -> tuple[KubernetesSource, Recorder]:
        options.setdefault("options", FAST)
        options.setdefault("coalesce", 0.02)
        options.setdefault("max_delay", 0.5)
        src = KubernetesSource.connect(server=server.url, **options)
        recorder = Recorder()
        src.start(recorder)
        started.append(src)
        return src, recorder

    yield start
    for src in started:
        src.stop()


def endpoints(snap: Snapshot) -> dict[str, Any]:
    return {ep.key: ep for ep in snap.inventory.endpoints}


def policy_keys(snap: Snapshot) -> set[str]:
    return {p.key for p in snap.policies.policies}


def seed(server: FakeAPIServer) -> None:
    server.create(namespace("x", ns="x"))
    server.create(namespace("y", ns="y"))
    server.create(pod("a", "x", "198.18.0.10", node="node-1",
                      ports=[{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}]))
    server.create(pod("b", "y", "198.18.0.11", node="node-2"))
    server.create(policy("deny-all", "x", DENY_ALL))


# ---- initial list ------------------------------------------------------------------------

def test_initial_list_gives_the_same_inventory_as_kubectl_yaml(server: FakeAPIServer, start_source: Any,
                                                                tmp_path: Path) -> None:
    objects = [
        namespace("x", ns="x"), namespace("y", ns="y", team="blue"),
        pod("a", "x", "198.18.0.10", ports=[{"name": "serve-80-tcp", "containerPort": 80},
                                           {"name": "dns", "containerPort": 53, "protocol": "UDP"}]),
        pod("b", "y", "198.18.0.11", node="node-2"),
        pod("done", "x", "198.18.0.12", phase="Succeeded"),  # finished: holds no IP policy applies to
        pod("pending", "y", None),
    ]
    dual = pod("c", "y", "198.18.0.13")
    dual["status"]["podIPs"].append({"ip": "fd00::13"})
    dual["metadata"]["annotations"] = {"callgate.io/interface": "cgxc0"}
    objects.append(dual)
    macvlan = pod("d", "y", "198.18.0.14")  # no host-side interface: enforced in its own namespace
    macvlan["metadata"]["annotations"] = {"callgate.io/netns": "/run/netns/cni-d"}
    objects.append(macvlan)
    for obj in objects:
        server.create(obj)
    host_network = pod("kube-proxy", "x", "198.18.1.1")
    host_network["spec"]["hostNetwork"] = True  # shares the node's address; policy does not apply
    server.create(host_network)
    server.create(policy("deny-all", "x", DENY_ALL))
    server.create(policy("allow-b", "y", {"podSelector": {"matchLabels": {"pod": "b"}},
                                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}],
                                                       "ports": [{"port": "serve-80-tcp"}]}]}))

    _src, rec = start_source()
    snap = rec.snapshot()

    # The same objects as `kubectl get -o yaml` prints them, through the file loader.
    listing = {"apiVersion": "v1", "kind": "List", "items": objects}
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(listing))
    expected = load_inventory(tmp_path / "inv.yaml")
    assert sorted(snap.inventory.endpoints, key=lambda e: e.key) == sorted(expected.endpoints, key=lambda e: e.key)
    assert snap.inventory.namespaces == expected.namespaces

    eps = endpoints(snap)
    assert set(eps) == {"x/a", "y/b", "y/c", "y/d", "y/pending"}  # not the finished pod, not the host-network pod
    assert eps["y/c"].ips == (ipaddress.ip_address("198.18.0.13"), ipaddress.ip_address("fd00::13"))
    assert eps["y/c"].interface == "cgxc0"
    assert eps["y/d"].netns == "/run/netns/cni-d" and eps["y/d"].interface is None
    assert eps["y/b"].node == "node-2"
    assert [(p.name, p.port, p.protocol) for p in eps["x/a"].ports] == [("serve-80-tcp", 80, "TCP"), ("dns", 53, "UDP")]
    assert snap.inventory.namespaces["y"].labels == {"ns": "y", "team": "blue", "kubernetes.io/metadata.name": "y"}
    assert policy_keys(snap) == {"x/deny-all", "y/allow-b"}
    assert snap.problems == []
    assert snap.origin == f"kubernetes {server.url}"
    # list-then-watch: one list per kind, then watches with bookmarks from the list's version.
    for resource in WATCHED:
        assert len(server.requests_for(resource, watch=False)) == 1
        def watching(r: str = resource) -> bool:
            return bool(server.requests_for(r, watch=True))

        assert server.wait_for(watching)
        req = server.requests_for(resource, watch=True)[0]
        assert req.query["allowWatchBookmarks"] == "true"
        assert int(req.query["resourceVersion"]) >= 100
        assert int(req.query["timeoutSeconds"]) >= FAST.watch_timeout


def test_nothing_is_published_until_all_kinds_are_listed(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    server.fail(lambda r: r.path.endswith("/networkpolicies") and not r.watch, code=500, times=3)
    _src, rec = start_source()
    problem = rec.problem()
    assert "networkpolicies" in problem.message and "HTTP 500" in problem.message
    snap = rec.snapshot()
    assert policy_keys(snap) == {"x/deny-all"}
    # Every snapshot ever published had the policies: none went out before the policy list succeeded.
    assert all(policy_keys(s) == {"x/deny-all"} for s in rec.items if isinstance(s, Snapshot))
    assert len(server.requests_for("networkpolicies", watch=False)) == 4


def test_pagination_and_an_expired_continue_token(server: FakeAPIServer, start_source: Any) -> None:
    server.create(namespace("x"))
    for i in range(7):
        server.create(pod(f"p{i}", "x", f"198.18.0.{i + 1}"))
    server.create(policy("deny-all", "x", DENY_ALL))
    # The second page's continue token has "expired": the reflector must restart the list.
    server.fail(lambda r: r.path.endswith("/pods") and "continue" in r.query, code=410, times=1)
    _src, rec = start_source(options=WatchOptions(**{**FAST.__dict__, "page_size": 3}))
    snap = rec.snapshot()
    assert set(endpoints(snap)) == {f"x/p{i}" for i in range(7)}
    pod_lists = server.requests_for("pods", watch=False)
    assert [r.query.get("limit") for r in pod_lists] == ["3"] * len(pod_lists)
    fresh = [r for r in pod_lists if "continue" not in r.query]
    assert len(fresh) == 2, "the list restarted from the beginning after the 410"
    assert snap.problems == []


def test_the_next_page_is_requested_while_a_page_is_converted(server: FakeAPIServer, start_source: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetching and converting overlap: while page k is converted, page k+1 is
    already asked for (the server prepares it meanwhile), so a big list takes
    the longer of the two instead of their sum."""
    server.create(namespace("x"))
    for i in range(9):
        server.create(pod(f"p{i}", "x", f"198.18.0.{i + 1}"))
    server.create(policy("deny-all", "x", DENY_ALL))
    overlapped: list[bool] = []
    original = Listed.add

    def slow_add(self: Listed, objects: Any) -> None:
        if self.kind == "pods":
            asked = len(server.requests_for("pods", watch=False))
            time.sleep(0.3)  # a page that takes long to convert
            # Asked for during the conversion: one more list request than when it began.
            overlapped.append(len(server.requests_for("pods", watch=False)) > asked)
        original(self, objects)

    monkeypatch.setattr(Listed, "add", slow_add)
    _src, rec = start_source(options=WatchOptions(**{**FAST.__dict__, "page_size": 3}))
    snap = rec.snapshot()
    assert set(endpoints(snap)) == {f"x/p{i}" for i in range(9)}
    pod_lists = server.requests_for("pods", watch=False)
    assert len(pod_lists) == 3 and len(overlapped) == 3
    # Every page but the last had its successor requested (and answered) while it was converted.
    assert overlapped == [True, True, False]


# ---- changes -------------------------------------------------------------------------------

def test_pod_namespace_and_policy_changes_are_reflected(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source()
    first = rec.snapshot()
    versions = [first.version]

    def step(change: Callable[[], Any], check: Callable[[Snapshot], bool]) -> Snapshot:
        mark = rec.mark()
        change()
        snap = rec.snapshot(check, after=mark)
        versions.append(snap.version)
        return snap

    step(lambda: server.create(pod("c", "x", "198.18.0.20")), lambda s: "x/c" in endpoints(s))
    relabelled = pod("c", "x", "198.18.0.20", labels={"pod": "c", "tier": "web"})
    step(lambda: server.update(relabelled), lambda s: endpoints(s).get("x/c") is not None
         and endpoints(s)["x/c"].labels == {"pod": "c", "tier": "web"})
    step(lambda: server.delete("Pod", "c", "x"), lambda s: "x/c" not in endpoints(s))
    step(lambda: server.create(namespace("z", ns="z")), lambda s: "z" in s.inventory.namespaces)
    step(lambda: server.update(namespace("z", ns="zz")),
         lambda s: s.inventory.namespaces.get("z") is not None and s.inventory.namespaces["z"].labels.get("ns") == "zz")
    step(lambda: server.delete("Namespace", "z"), lambda s: "z" not in s.inventory.namespaces)
    step(lambda: server.create(policy("allow", "y", {"podSelector": {}, "ingress": [{}]})),
         lambda s: policy_keys(s) == {"x/deny-all", "y/allow"})
    modified = step(lambda: server.update(policy("allow", "y", {"podSelector": {"matchLabels": {"pod": "b"}},
                                                                "ingress": [{}]})),
                    lambda s: any(p.key == "y/allow" and not p.pod_selector.is_empty for p in s.policies.policies))
    assert modified.policies.in_namespace("y")[0].pod_selector.match_labels == (("pod", "b"),)
    step(lambda: server.delete("NetworkPolicy", "deny-all", "x"), lambda s: policy_keys(s) == {"y/allow"})

    assert all(a != b for a, b in itertools.pairwise(versions)), "every content change gives a new version"
    # The version is a digest of the content: adding then deleting pod c is back to the start.
    assert versions[3] == versions[0]
    # No relists and no problems along the way: it was all watch events.
    assert all(len(server.requests_for(r, watch=False)) == 1 for r in WATCHED)
    assert not any(isinstance(i, SourceProblem) for i in rec.items)


def test_status_only_updates_do_not_republish(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    src, rec = start_source()
    rec.snapshot()
    heartbeat = pod("a", "x", "198.18.0.10", node="node-1",
                    ports=[{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}])
    for i in range(5):  # status churn: what kubelet does all day
        heartbeat["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastProbeTime": str(i)}]
        server.update(heartbeat)
    wait_until(lambda: src.watcher.cache.resource_version("pods") == server.resource_version)
    mark = rec.mark()
    server.create(pod("d", "x", "198.18.0.30"))
    rec.snapshot(lambda s: "x/d" in endpoints(s), after=mark)
    snaps = [i for i in rec.items if isinstance(i, Snapshot)]
    assert len(snaps) == 2, "the heartbeats published nothing"
    assert snaps[0].version != snaps[1].version


def test_a_burst_of_changes_is_coalesced(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source(coalesce=0.3, max_delay=5.0)
    rec.snapshot()
    mark = rec.mark()
    for i in range(30):
        server.create(pod(f"burst{i}", "y", f"198.18.2.{i + 1}"))
    last = rec.snapshot(lambda s: "y/burst29" in endpoints(s), after=mark)
    assert all(f"y/burst{i}" in endpoints(last) for i in range(30))
    published = len(rec.items) - mark
    assert published < 30, f"30 quick changes gave {published} snapshots; expected them coalesced"


# ---- resourceVersion, bookmarks, 410 ---------------------------------------------------------

def test_bookmarks_advance_the_resume_point_and_spare_a_relist(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    src, rec = start_source()
    rec.snapshot()
    cache = src.watcher.cache
    listed_at = cache.resource_version("networkpolicies")
    for i in range(3):  # other kinds move the global revision on; policies stay quiet
        server.create(pod(f"n{i}", "x", f"198.18.3.{i + 1}"))
    assert server.wait_for(lambda: server.open_watches("networkpolicies") == 1)
    server.bookmark("networkpolicies")
    wait_until(lambda: cache.resource_version("networkpolicies") == server.resource_version)
    assert cache.resource_version("networkpolicies") != listed_at
    # History before the bookmark is compacted away and the watch is cut: resuming from
    # the bookmark is still valid, so no 410 and no relist.
    server.compact()
    server.drop_watches("networkpolicies")
    bookmarked = server.resource_version
    assert server.wait_for(lambda: any(r.query.get("resourceVersion") == bookmarked
                                       for r in server.requests_for("networkpolicies", watch=True)))
    mark = rec.mark()
    server.create(policy("late", "x", DENY_ALL))
    rec.snapshot(lambda s: "x/late" in policy_keys(s), after=mark)
    assert len(server.requests_for("networkpolicies", watch=False)) == 1


def test_410_gone_while_down_relists_and_the_snapshot_is_right(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source()
    rec.snapshot()
    server.stop()
    rec.problem()
    # While the API is away the cluster changes and etcd compacts its history.
    server.delete("Pod", "a", "x")
    server.create(pod("e", "y", "198.18.0.40"))
    server.update(namespace("y", ns="y", moved="yes"))
    server.delete("NetworkPolicy", "deny-all", "x")
    server.compact()
    mark = rec.mark()
    server.start()
    snap = rec.snapshot(after=mark)
    assert set(endpoints(snap)) == {"y/b", "y/e"}
    assert snap.inventory.namespaces["y"].labels["moved"] == "yes"
    assert policy_keys(snap) == set()
    for resource in WATCHED:
        assert len(server.requests_for(resource, watch=False)) == 2, f"{resource} relisted once after 410"


def test_410_error_event_in_an_open_watch_relists(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source()
    rec.snapshot()
    assert server.wait_for(lambda: server.open_watches("pods") == 1)
    server.send_raw("pods", {"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
        "message": "too old resource version"}})
    assert server.wait_for(lambda: len(server.requests_for("pods", watch=False)) == 2)
    mark = rec.mark()
    server.create(pod("f", "x", "198.18.0.50"))
    snap = rec.snapshot(lambda s: "x/f" in endpoints(s), after=mark)
    assert set(endpoints(snap)) == {"x/a", "y/b", "x/f"}


# ---- connections -------------------------------------------------------------------------

def test_dropped_watches_resume_from_the_last_version(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    src, rec = start_source()
    rec.snapshot()
    for round_ in range(3):
        # Every kind watching again before the next cut (each resumes on its own thread).
        assert server.wait_for(lambda: server.open_watches() == len(WATCHED))
        before = len(server.requests_for("pods", watch=True))
        resume_at = src.watcher.cache.resource_version("pods")
        assert server.drop_watches() == len(WATCHED)
        def rewatched(b: int = before) -> bool:
            return len(server.requests_for("pods", watch=True)) > b

        assert server.wait_for(rewatched)
        assert server.requests_for("pods", watch=True)[-1].query["resourceVersion"] == resume_at
        mark = rec.mark()
        server.create(pod(f"g{round_}", "x", f"198.18.4.{round_ + 1}"))
        rec.snapshot(lambda s, r=round_: f"x/g{r}" in endpoints(s), after=mark)
    assert all(len(server.requests_for(r, watch=False)) == 1 for r in WATCHED)
    assert not any(isinstance(i, SourceProblem) for i in rec.items), "a dropped stream is not an outage"


def test_api_down_publishes_a_problem_and_back_resumes(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source()
    first = rec.snapshot()
    mark = rec.mark()
    server.stop()
    problem = rec.problem(after=mark)
    assert "unavailable" in problem.message and "cannot connect" in problem.message
    assert "keeping the last rules" in problem.message
    # Retrying with backoff: connection attempts keep coming (observed as retries once back).
    server.create(pod("h", "y", "198.18.0.60"))
    mark = rec.mark()
    server.start()
    snap = rec.snapshot(after=mark)
    assert "y/h" in endpoints(snap)
    assert snap.version != first.version
    # Not compacted: the watches resumed where they were, no relist needed.
    assert all(len(server.requests_for(r, watch=False)) == 1 for r in WATCHED)


def test_recovery_republishes_even_when_nothing_changed(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source()
    first = rec.snapshot()
    server.stop()
    rec.problem()
    mark = rec.mark()
    server.start()
    again = rec.snapshot(after=mark)
    assert again.version == first.version  # same content, same version: the agent can skip the compile


def test_api_unreachable_from_the_start(start_source: Any, server: FakeAPIServer) -> None:
    server.stop()
    _src, rec = start_source()
    assert "cannot connect" in rec.problem().message
    seed(server)
    mark = rec.mark()
    server.start()
    assert policy_keys(rec.snapshot(after=mark)) == {"x/deny-all"}


def test_forbidden_is_reported(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    server.fail(lambda r: r.path == "/api/v1/pods" and not r.watch, code=403, times=2)
    _src, rec = start_source()
    assert "HTTP 403" in rec.problem().message
    assert set(endpoints(rec.snapshot())) == {"x/a", "y/b"}


def test_stop_is_prompt_and_closes_watches(server: FakeAPIServer) -> None:
    seed(server)
    src = KubernetesSource.connect(server=server.url, coalesce=0.02, options=FAST)
    rec = Recorder()
    src.start(rec)
    rec.snapshot()
    assert server.wait_for(lambda: server.open_watches() == len(WATCHED))
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 3
    assert not any(t.is_alive() for t in src.watcher._threads)
    assert server.wait_for(lambda: server.open_watches() == 0)


# ---- bad input -----------------------------------------------------------------------------

def test_an_invalid_policy_is_reported_and_does_not_block_the_rest(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    bad = policy("bad", "y", {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]})
    server.create(bad)
    _src, rec = start_source()
    snap = rec.snapshot()
    assert policy_keys(snap) == {"x/deny-all"}
    assert len(snap.problems) == 1
    text = str(snap.problems[0])
    assert "NetworkPolicy y/bad" in text and "endPort" in text and text.startswith("kubernetes: ")
    # A new good policy still goes through while the bad one is there.
    mark = rec.mark()
    server.create(policy("good", "y", DENY_ALL))
    snap = rec.snapshot(lambda s: "y/good" in policy_keys(s), after=mark)
    assert len(snap.problems) == 1
    # Fixing it clears the problem and the policy applies.
    mark = rec.mark()
    bad["spec"] = {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 90}]}]}
    server.update(bad)
    snap = rec.snapshot(lambda s: "y/bad" in policy_keys(s), after=mark)
    assert snap.problems == []


def test_hostile_objects_are_skipped_with_a_problem(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    weird = [
        pod("labels-not-a-map", "x", "198.18.5.1") | {"metadata": {"name": "labels-not-a-map", "namespace": "x",
                                                                    "labels": ["a", "b"]}},
        pod("bad-ip", "x", "not-an-ip"),
        pod("status-a-list", "x", None) | {"status": ["Running"]},
        pod("same-ip", "y", "198.18.0.10"),  # a's address: two endpoints cannot share it
        pod("long-label", "x", "198.18.5.2", labels={"pod": "v" * 5000 + "\x1b[31m"}),
        policy("spec-a-string", "x", "nope"),  # type: ignore[arg-type]
    ]
    escape = pod("netns-escape", "x", "198.18.5.3")  # a path callgate would open as root
    escape["metadata"]["annotations"] = {"callgate.io/netns": "/run/netns/../../proc/1/root/etc/shadow"}
    weird.append(escape)
    for obj in weird:
        server.create(obj)
    _src, rec = start_source()
    snap = rec.snapshot()
    assert set(endpoints(snap)) == {"x/a", "y/b"}
    assert policy_keys(snap) == {"x/deny-all"}
    named = {p.object for p in snap.problems}
    assert named == {"Pod x/labels-not-a-map", "Pod x/bad-ip", "Pod x/status-a-list", "Pod y/same-ip",
                     "Pod x/long-label", "NetworkPolicy x/spec-a-string", "Pod x/netns-escape"}
    for p in snap.problems:
        assert len(p.message) <= 512 and "\x1b" not in p.message, "API strings are clipped and made printable"


def test_garbage_on_the_watch_stream_relists(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    _src, rec = start_source()
    rec.snapshot()
    garbage: list[dict[str, Any] | str] = [
        '{"type": "ADDED", "object": {"metadata": {"name": "x"',  # cut short
        "not json at all",
        {"type": "TELEPORTED", "object": {"metadata": {"resourceVersion": "1"}}},
        {"type": "ADDED", "object": "a string"},
    ]
    for n, line in enumerate(garbage, start=2):
        def listening(n: int = n) -> bool:  # the watch that follows the last relist
            return len(server.requests_for("pods", watch=True)) == n - 1 and server.open_watches("pods") == 1

        def relisted(n: int = n) -> bool:
            return len(server.requests_for("pods", watch=False)) == n

        assert server.wait_for(listening)
        server.send_raw("pods", line)
        assert server.wait_for(relisted)
    mark = rec.mark()
    server.create(pod("after", "x", "198.18.0.70"))
    snap = rec.snapshot(lambda s: "x/after" in endpoints(s), after=mark)
    assert set(endpoints(snap)) == {"x/a", "y/b", "x/after"}


def test_objects_without_a_name_are_ignored(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    src, rec = start_source()
    rec.snapshot()
    assert server.wait_for(lambda: server.open_watches("pods") == 1)
    server.send_raw("pods", {"type": "ADDED", "object": {"metadata": {"resourceVersion": "999", "name": 7}}})
    wait_until(lambda: src.watcher.cache.ignored == 1)
    mark = rec.mark()
    server.create(pod("named", "x", "198.18.0.80"))
    assert set(endpoints(rec.snapshot(lambda s: "x/named" in endpoints(s), after=mark))) == {"x/a", "y/b", "x/named"}


# ---- pieces ------------------------------------------------------------------------------------

def test_backoff_doubles_with_jitter_up_to_a_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert len({round(d, 6) for d in delays}) == 6, "jittered, not fixed"
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


def test_client_configuration_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="must be an http"):
        make_api_client(server="ftp://example")
    with pytest.raises(InputError, match="no such kubeconfig"):
        make_api_client(kubeconfig=str(tmp_path / "missing"))
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(InputError):
        make_api_client(kubeconfig=str(broken))
    good = tmp_path / "good"
    good.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://198.18.9.9:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    client, origin = make_api_client(kubeconfig=str(good))
    assert origin == "https://198.18.9.9:6443"
    assert client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer t"
    # --server with a kubeconfig: that file's credentials, sent to the given URL.
    client, origin = make_api_client(kubeconfig=str(good), server="http://127.0.0.1:8001")
    assert origin == "http://127.0.0.1:8001"
    assert client.configuration.auth_settings()["BearerToken"]["value"] == "Bearer t"


# ---- the controller: lint findings as Events -----------------------------------------------------

def lint_cluster(server: FakeAPIServer) -> None:
    seed(server)
    server.create(policy("nothing", "x", {"podSelector": {"matchLabels": {"pod": "zzz"}}}))
    server.create(policy("bad", "y", {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}))
    server.create(policy("named", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": "nope", "protocol": "TCP"}]}]}))


EXPECTED_FINDINGS = {("NetworkPolicy", "x/nothing", "CG101"), ("NetworkPolicy", "y/bad", "CG004"),
                     ("NetworkPolicy", "x/named", "CG104"), ("Namespace", "y", "CG110")}


def event_findings(server: FakeAPIServer) -> set[tuple[str, str, str]]:
    out = set()
    for ev in server.objects("Event"):
        inv = ev["involvedObject"]
        key = f"{inv['namespace']}/{inv['name']}" if inv.get("namespace") else inv["name"]
        out.add((inv["kind"], key, ev["message"].split()[0]))
    return out


def event_writes(server: FakeAPIServer) -> int:
    return sum(1 for r in server.requests_for("events") if r.method in ("POST", "PATCH"))


@pytest.fixture
def start_controller(server: FakeAPIServer) -> Iterator[Callable[..., Any]]:
    from callgate.controller import Controller

    started: list[Controller] = []

    def start(**options: Any) -> Controller:
        api_client, origin = make_api_client(server=server.url)
        options.setdefault("options", FAST)
        options.setdefault("coalesce", 0.02)
        options.setdefault("max_delay", 0.5)
        ctl = Controller(api_client, origin, **options)
        ctl.start()
        started.append(ctl)
        assert ctl.wait_synced(WAIT)
        return ctl

    yield start
    for ctl in started:
        ctl.stop()


def test_controller_posts_one_event_per_finding_on_the_object(server: FakeAPIServer, start_controller: Any) -> None:
    lint_cluster(server)
    ctl = start_controller()
    assert ctl.last_sync.created == len(EXPECTED_FINDINGS) and ctl.last_sync.failed == 0
    assert event_findings(server) == EXPECTED_FINDINGS
    for ev in server.objects("Event"):
        inv = ev["involvedObject"]
        target = server.get(inv["kind"], inv["name"], inv.get("namespace"))
        assert target is not None and inv["uid"] == target["metadata"]["uid"], "kubectl describe matches on uid"
        assert ev["reason"] == "CallgateLint" and ev["type"] == "Warning" and ev["count"] == 1
        assert ev["metadata"]["namespace"] == (inv.get("namespace") or inv["name"])
        assert ev["source"] == {"component": "callgate-controller"}
        assert len(ev["message"]) <= 1024
    bad = next(ev for ev in server.objects("Event") if ev["involvedObject"]["name"] == "bad")
    assert "endPort" in bad["message"]  # the invalid policy says why the agent skips it


def test_controller_does_not_repost_unchanged_findings(server: FakeAPIServer, start_controller: Any) -> None:
    lint_cluster(server)
    ctl = start_controller()
    writes, syncs = event_writes(server), ctl.syncs
    # A change that alters no finding (a namespace without pods) still re-lints.
    server.create(namespace("quiet"))
    wait_until(lambda: ctl.syncs > syncs and "quiet" in ctl.watcher.cache.state().inventory.namespaces)
    wait_until(lambda: ctl.last_sync is not None and ctl.last_sync.unchanged == len(EXPECTED_FINDINGS))
    assert event_writes(server) == writes
    assert len(server.objects("Event")) == len(EXPECTED_FINDINGS)


def test_a_changed_message_updates_the_event_in_place(server: FakeAPIServer, start_controller: Any) -> None:
    lint_cluster(server)
    start_controller()
    server.create(pod("open", "y", "198.18.0.91"))  # y has no default deny: CG110 now lists two pods

    def updated() -> bool:
        ns_events = [e for e in server.objects("Event") if e["involvedObject"]["kind"] == "Namespace"]
        return len(ns_events) == 1 and ns_events[0]["count"] == 2 and "2 pod(s)" in ns_events[0]["message"]

    assert server.wait_for(updated)
    assert len(server.objects("Event")) == len(EXPECTED_FINDINGS)


def test_a_fixed_finding_is_forgotten_and_a_new_one_posted(server: FakeAPIServer, start_controller: Any) -> None:
    lint_cluster(server)
    ctl = start_controller()
    server.update(policy("nothing", "x", {"podSelector": {"matchLabels": {"pod": "a"}}}))  # fixed
    wait_until(lambda: all(r.target.name != "nothing" for r in ctl.reports))
    server.create(policy("typo", "y", {"podSelector": {"matchLabels": {"app": "ghost"}}}))
    assert server.wait_for(lambda: ("NetworkPolicy", "y/typo", "CG101") in event_findings(server))
    # Breaking it again finds its old Event (409 AlreadyExists) and bumps it: no duplicate.
    server.update(policy("nothing", "x", {"podSelector": {"matchLabels": {"pod": "zzz"}}}))
    assert server.wait_for(lambda: any(e["involvedObject"]["name"] == "nothing" and e["count"] == 2
                                       for e in server.objects("Event")))
    assert sum(1 for e in server.objects("Event") if e["involvedObject"]["name"] == "nothing") == 1


def test_a_restarted_controller_does_not_duplicate_events(server: FakeAPIServer, start_controller: Any) -> None:
    lint_cluster(server)
    first = start_controller()
    first.stop()
    second = start_controller()
    assert second.last_sync.created == 0 and second.last_sync.refreshed == len(EXPECTED_FINDINGS)
    assert len(server.objects("Event")) == len(EXPECTED_FINDINGS)
    assert all(e["count"] == 2 for e in server.objects("Event"))


def test_persisting_findings_are_refreshed_and_failed_posts_retried(server: FakeAPIServer,
                                                                     start_controller: Any) -> None:
    lint_cluster(server)
    server.fail(lambda r: r.method == "POST" and r.path.endswith("/events"), code=500, times=2)
    ctl = start_controller(resync=0.05, refresh=0.3)
    assert ctl.last_sync.failed == 2  # the first pass could not post two of them
    # The periodic resync retries them, then keeps refreshing what persists.
    assert server.wait_for(lambda: event_findings(server) == EXPECTED_FINDINGS)
    assert server.wait_for(lambda: all(e["count"] >= 2 for e in server.objects("Event")))
    assert len(server.objects("Event")) == len(EXPECTED_FINDINGS)


def test_lint_disable_annotation_and_min_severity(server: FakeAPIServer, start_controller: Any) -> None:
    from callgate.analysis.lint.rules import Severity

    lint_cluster(server)
    quiet = policy("nothing", "x", {"podSelector": {"matchLabels": {"pod": "zzz"}}})
    quiet["metadata"]["annotations"] = {"callgate.io/lint-disable": "CG101"}
    server.update(quiet)
    # A port without a protocol is an info finding (CG109): Kubernetes means TCP.
    server.create(policy("noproto", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    ctl = start_controller(dry_run=True, min_severity=Severity.INFO)
    found = {(r.target.key, r.rule) for r in ctl.reports}
    assert ("x/nothing", "CG101") not in found
    assert ("x/noproto", "CG109") in found  # info: only with --min-severity info
    default = start_controller(dry_run=True)
    assert ("x/noproto", "CG109") not in {(r.target.key, r.rule) for r in default.reports}
    assert server.objects("Event") == [], "dry run posts nothing"


def test_controller_health_endpoints(server: FakeAPIServer, start_controller: Any) -> None:
    import urllib.error
    import urllib.request

    from callgate.controller import HealthServer

    lint_cluster(server)
    ctl = start_controller()
    health = HealthServer("127.0.0.1", 0, ctl)
    health.start()
    try:
        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health.port}{path}", timeout=5) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as err:
                return err.code

        assert status("/healthz") == 200 and status("/readyz") == 200 and status("/nope") == 404
        server.stop()
        wait_until(lambda: status("/readyz") == 503)
        assert status("/healthz") == 200  # alive, just not ready: no restart for an API outage
    finally:
        health.stop()


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `callgate ...` in-process exactly as the console script does (errors -> exit codes)."""
    import sys

    from callgate.cli.main import main

    monkeypatch.setattr(sys, "argv", ["callgate", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    code = exit_.value.code
    return int(code) if isinstance(code, int) else (0 if code is None else 1), out.out, out.err


def test_cli_controller_once(server: FakeAPIServer, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    lint_cluster(server)
    code, out, err = run_cli(["controller", "--server", server.url, "--once", "--dry-run"], monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(EXPECTED_FINDINGS)
    assert any(line.startswith("NetworkPolicy y/bad: CG004 error (field spec.ingress[0].ports[0]): endPort")
               for line in lines), lines
    assert "4 finding(s)" in err
    assert server.objects("Event") == []
    code, out, err = run_cli(["controller", "--server", server.url, "--once"], monkeypatch, capsys)
    assert code == 0, err
    assert "events: 4 created" in err
    assert event_findings(server) == EXPECTED_FINDINGS


@pytest.mark.parametrize(("args", "message", "exit_code"), [
    # The command line itself is wrong (a bad value, a path that does not exist): usage (2).
    (["--health-address", "nope"], "expected HOST:PORT", 2),
    (["--min-severity", "loud"], "unknown severity", 2),
    (["--refresh", "0"], "--refresh must be a positive", 2),
    (["--log-level", "chatty"], "--log-level", 2),
    (["--server", "ftp://x"], "must be an http", 2),
    (["--kubeconfig", "/nonexistent/kubeconfig"], "no such file or directory: /nonexistent/kubeconfig", 2),
    (["--lint-config", "/nonexistent/lint.yaml"], "no such file or directory: /nonexistent/lint.yaml", 2),
    # Found out while reading a file that exists: bad input (1).
    (["--lint-config", ".pre-commit-hooks.yaml"], "expected a mapping with a 'lint' key", 1),
])
def test_cli_controller_rejects_bad_options(args: list[str], message: str, exit_code: int,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["controller", "--once", *args], monkeypatch, capsys)
    assert code == exit_code, (out, err)
    assert message in err and "Traceback" not in err


def test_cli_controller_once_when_the_api_is_down(server: FakeAPIServer, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server.stop()
    code, _out, err = run_cli(["controller", "--server", server.url, "--once", "--timeout", "1"], monkeypatch, capsys)
    assert code == 1
    assert "no consistent view of the cluster" in err and "cannot connect" in err


# ---- the cluster tiers: ClusterNetworkPolicy CRDs, Nodes ------------------------------------

def cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


ADMIN_DENY_Y = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
                "ingress": [{"name": "no-y", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}


def cluster_keys(snap: Snapshot) -> set[str]:
    return {p.key for p in snap.policies.cluster}


def test_cluster_policies_and_nodes_come_from_the_api(server: FakeAPIServer, start_source: Any) -> None:
    seed(server)
    server.create(cnp("admin-x", ADMIN_DENY_Y))
    server.create({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                   "metadata": {"name": "old-admin"},
                   "spec": {"priority": 3, "subject": {"namespaces": {}},
                            "egress": [{"action": "Allow", "to": [{"networks": ["198.18.0.0/16"]}],
                                        "ports": [{"portNumber": {"port": 80}}]}]}})
    server.create({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
                   "metadata": {"name": "default"},
                   "spec": {"subject": {"namespaces": {}},
                            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}})
    server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                   "status": {"addresses": [{"type": "InternalIP", "address": "198.19.255.1"},
                                            {"type": "Hostname", "address": "node-1"}],
                              "conditions": [{"type": "Ready", "status": "True"}]}})
    _src, rec = start_source()
    snap = rec.snapshot()
    assert cluster_keys(snap) == {"ClusterNetworkPolicy/admin-x", "AdminNetworkPolicy/old-admin",
                                  "BaselineAdminNetworkPolicy/default"}
    assert snap.problems == []
    node = snap.inventory.node_info["node-1"]
    assert node.addresses == (ipaddress.ip_address("198.19.255.1"),) and node.labels == {"zone": "a"}
    # A node heartbeat (status conditions) changes nothing callgate uses: no new snapshot.
    mark = rec.mark()
    server.update({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "a"}},
                   "status": {"addresses": [{"type": "InternalIP", "address": "198.19.255.1"}],
                              "conditions": [{"type": "Ready", "status": "False"}]}})
    server.create(policy("later", "x", DENY_ALL))
    snap = rec.snapshot(after=mark)
    assert "x/later" in policy_keys(snap) and snap.inventory.node_info["node-1"].labels == {"zone": "a"}


def test_a_cluster_without_the_crds_works_and_says_so_once(caplog: pytest.LogCaptureFixture,
                                                           start_source: Any) -> None:
    with FakeAPIServer(crds=False) as server:
        seed(server)
        options = WatchOptions(watch_timeout=30, connect_timeout=2, backoff_initial=0.02, backoff_max=0.2,
                               absent_recheck=0.2)
        with caplog.at_level("INFO", logger="callgate.watchers.kubernetes"):
            src = KubernetesSource.connect(server=server.url, coalesce=0.02, max_delay=0.5, options=options)
            rec = Recorder()
            src.start(rec)
            try:
                snap = rec.snapshot()
                assert policy_keys(snap) == {"x/deny-all"} and cluster_keys(snap) == set()
                # Looked again several times, said so once per kind.
                assert server.wait_for(lambda: len(server.requests_for("clusternetworkpolicies")) >= 3)
                said = [r.getMessage() for r in caplog.records if "not served" in r.getMessage()]
                assert sorted(m.split(":")[0] for m in said) == sorted(CRD_RESOURCES), said
                # The CRD is installed later: its policies are picked up.
                server.install_crds()
                mark = rec.mark()
                server.create(cnp("admin-x", ADMIN_DENY_Y))
                snap = rec.snapshot(lambda s: bool(cluster_keys(s)), after=mark)
                assert cluster_keys(snap) == {"ClusterNetworkPolicy/admin-x"}
                # ... and removed again: its policies go with it.
                mark = rec.mark()
                server.uninstall_crds()
                snap = rec.snapshot(lambda s: not cluster_keys(s), after=mark)
                assert policy_keys(snap) == {"x/deny-all"}
                assert not any(isinstance(i, SourceProblem) for i in rec.items), "no CRD is not an outage"
            finally:
                src.stop()


def test_an_unknown_peer_from_the_api_fails_closed(server: FakeAPIServer, start_source: Any) -> None:
    """The API server validated the object against its (newer) CRD: a peer whose only
    field callgate does not know becomes the unresolvable peer (Accept: matches
    nothing; Deny, Pass: deny all), not an invalid policy. Anything else unknown is
    still invalid, and reported."""
    seed(server)
    spec = dict(ADMIN_DENY_Y, ingress=[
        {"name": "new-kind", "action": "Deny", "from": [{"serviceAccounts": {"name": "x"}}]},
        {"name": "known", "action": "Accept", "from": [{"namespaces": {}}]}])
    server.create(cnp("newer", spec))
    server.create(cnp("typo", dict(ADMIN_DENY_Y, prioritee=3)))
    _src, rec = start_source()
    snap = rec.snapshot()
    (newer,) = snap.policies.cluster
    assert newer.name == "newer" and not newer.ingress[0].peers[0].resolvable
    assert newer.ingress[1].peers[0].resolvable
    assert [p.object for p in snap.problems] == ["ClusterNetworkPolicy typo"]
    assert "spec.prioritee" in str(snap.problems[0]) and "unknown field" in str(snap.problems[0])


def test_controller_reports_cluster_policy_findings_as_events(server: FakeAPIServer,
                                                              start_controller: Any) -> None:
    """Findings on a ClusterNetworkPolicy become Events on it, in the default namespace
    (where Kubernetes keeps the events of cluster-scoped objects); an invalid one
    gets CG001 with the reason."""
    seed(server)
    server.create(cnp("names", {"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                                "egress": [{"name": "by-name", "action": "Accept",
                                            "to": [{"domainNames": ["api.example.com"]}]}]}))
    server.create(cnp("broken", dict(ADMIN_DENY_Y, priority=1001)))
    server.create(cnp("default-pass", {"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
                                       "egress": [{"action": "Pass", "to": [{"namespaces": {}}]}]}))
    ctl = start_controller()
    assert ctl.last_sync.failed == 0
    found = event_findings(server)
    assert {("ClusterNetworkPolicy", "names", "CG116"), ("ClusterNetworkPolicy", "broken", "CG001"),
            ("ClusterNetworkPolicy", "default-pass", "CG115")} <= found
    for ev in server.objects("Event"):
        inv = ev["involvedObject"]
        if inv["kind"] == "ClusterNetworkPolicy":
            assert ev["metadata"]["namespace"] == "default"
            assert inv["apiVersion"] == "policy.networking.k8s.io/v1alpha2" and "namespace" not in inv
            assert inv["uid"] == server.get("ClusterNetworkPolicy", inv["name"])["metadata"]["uid"]
    broken = next(ev for ev in server.objects("Event") if ev["involvedObject"]["name"] == "broken")
    assert "priority" in broken["message"] and "1000" in broken["message"]


def test_a_terminating_pod_gives_way_to_the_pod_that_got_its_freed_address() -> None:
    """host-local frees an address at CNI DEL, while the API still shows the pod
    terminating with it; the new pod must keep the address, whatever the names."""
    from callgate.watchers.k8s_convert import PODS, assemble, convert_pod, object_ref

    def pod_obj(name: str, ip: str, terminating: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "x"}
        if terminating:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "spec": {"nodeName": "n1"},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}

    def state(*objs: dict[str, Any]) -> list[str]:
        entries = {}
        for obj in objs:
            ref = object_ref(PODS, obj)
            assert ref is not None
            entries[("x", ref.name)] = convert_pod(ref, obj)
        return [ep.key for ep in assemble({PODS: entries}).inventory.endpoints]

    # "a-old" sorts first; before, it pushed "b-new" out.
    assert state(pod_obj("a-old", "198.18.0.5", terminating=True), pod_obj("b-new", "198.18.0.5")) == ["x/b-new"]
    # Neither terminating: first by name, as before.
    assert state(pod_obj("a-old", "198.18.0.5"), pod_obj("b-new", "198.18.0.5")) == ["x/a-old"]
