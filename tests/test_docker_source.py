"""The Docker watcher and source against an in-memory engine (tests/fake_docker.py):
list then events, nothing lost between the two, coalescing, one look per event,
engine loss (stream ended, engine hung) as one problem and recovery by a fresh
list, veths looked up again until found, and the source that puts the engine's
view and the policy files together. The same guarantees are checked against a
real dockerd in tests/test_docker_e2e.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callgate.agent.metrics import AgentMetrics
from callgate.agent.reactor import Reactor, ReactorConfig
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.routes import InterfaceResolver
from callgate.errors import Problem
from callgate.watchers.base import Snapshot, SourceProblem
from callgate.watchers.docker_engine import EngineView
from callgate.watchers.docker_source import DockerSource, DockerWatcher
from tests.fake_docker import FakeEngine, container_info

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


class Recorder:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[Any], bool], after: int = 0) -> Any:
        with self.cond:
            assert self.cond.wait_for(lambda: any(predicate(i) for i in self.items[after:]), WAIT), self.items
            return next(i for i in self.items[after:] if predicate(i))

    def count(self) -> int:
        with self.cond:
            return len(self.items)


def names(item: Any) -> list[str]:
    return sorted(ep.name for ep in item.inventory.endpoints) if isinstance(item, (EngineView, Snapshot)) else []


def has(*expected: str) -> Callable[[Any], bool]:
    return lambda item: names(item) == sorted(expected)


def interfaces(pid: int, mac: str) -> str | None:
    return f"veth{pid}"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def watcher(engine: FakeEngine, **options: Any) -> DockerWatcher:
    options = {"coalesce": 0.02, "max_delay": 0.5, "heartbeat": 5.0, "retry": 0.1, "backoff": (0.05, 0.2), **options}
    return DockerWatcher(engine, "fake://engine", "docker-1", interfaces, **options)


def test_list_then_events(engine: FakeEngine) -> None:
    engine.run(container_info("a", "198.18.200.2", pid=11))
    w, seen = watcher(engine), Recorder()
    w.start(seen)
    try:
        first = seen.wait(has("a"))
        assert first.inventory.endpoints[0].interface == "veth11"
        n = seen.count()
        b = engine.run(container_info("b", "198.18.200.3", pid=12))
        seen.wait(has("a", "b"), n)
        inspected = engine.calls["inspect_container"]
        engine.emit("container", "exec_start: sh", b)  # events that change nothing are not even looked at
        engine.emit("container", "health_status: healthy", b)
        n = seen.count()
        engine.stop(b)
        seen.wait(has("a"), n)
        assert engine.calls["inspect_container"] == inspected + 1  # the die, nothing else
        assert engine.calls["containers"] == 1  # one list, then events only
    finally:
        w.stop()


def test_nothing_started_during_the_list_is_missed(engine: FakeEngine) -> None:
    """The stream is opened before the list: a container started while the list
    runs (the list does not have it) arrives as an event and is looked at."""
    late = container_info("late", "198.18.200.9")
    engine.list_hook = lambda: engine.run(late)
    w, seen = watcher(engine), Recorder()
    w.start(seen)
    try:
        seen.wait(has("late"))
    finally:
        w.stop()


def test_a_burst_is_a_few_views(engine: FakeEngine) -> None:
    """Adaptive coalescing: the first start after a quiet spell goes out at once,
    the rest of a Compose stack coming up in a few more views."""
    w, seen = watcher(engine, coalesce=0.2, max_delay=2.0), Recorder()
    w.start(seen)
    try:
        seen.wait(has())
        n = seen.count()
        for i in range(20):  # a Compose stack coming up
            engine.run(container_info(f"c{i}", f"198.18.201.{i + 2}", pid=100 + i))
        seen.wait(lambda item: len(names(item)) == 20, n)
        assert seen.count() <= n + 3, [names(i) for i in seen.items[n:]]
    finally:
        w.stop()


def test_engine_lost_is_one_problem_and_a_fresh_list_recovers(engine: FakeEngine) -> None:
    engine.run(container_info("a", "198.18.200.2"))
    w, seen = watcher(engine), Recorder()
    w.start(seen)
    try:
        seen.wait(has("a"))
        n = seen.count()
        engine.down()
        problem = seen.wait(lambda i: isinstance(i, SourceProblem), n)
        assert "docker engine at fake://engine unavailable (keeping the last rules, retrying)" in problem.message
        engine.running.clear()  # dockerd restarted: its containers are gone …
        engine.run(container_info("b", "198.18.200.3"))  # … and another one runs (no stream saw it)
        engine.up()
        seen.wait(has("b"), n)
        assert sum(isinstance(i, SourceProblem) for i in seen.items[n:]) == 1  # retries do not repeat it
        assert w.relists >= 2
    finally:
        w.stop()


def test_a_consumer_that_raises_does_not_stop_the_watcher(engine: FakeEngine,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The watcher's threads outlive one bad hand-over: the error is logged and
    the next change still reaches the consumer."""
    seen, failed = Recorder(), threading.Event()

    def consumer(item: Any) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("consumer bug")
        seen(item)

    engine.run(container_info("a", "198.18.200.2"))
    w = watcher(engine)
    with caplog.at_level("ERROR", logger="callgate.watchers"):
        w.start(consumer)
        try:
            assert failed.wait(WAIT)
            engine.run(container_info("b", "198.18.200.3"))
            seen.wait(has("a", "b"))
        finally:
            w.stop()
    assert any("docker view handler failed" in r.getMessage() for r in caplog.records)


def test_same_content_after_an_outage_is_published_again(engine: FakeEngine) -> None:
    """The consumer must learn that the source is back, even when nothing changed."""
    engine.run(container_info("a", "198.18.200.2"))
    w, seen = watcher(engine), Recorder()
    w.start(seen)
    try:
        seen.wait(has("a"))
        n = seen.count()
        engine.down()
        seen.wait(lambda i: isinstance(i, SourceProblem), n)
        engine.up()
        seen.wait(has("a"), n + 1)
    finally:
        w.stop()


def test_a_hung_engine_is_found_by_the_heartbeat(engine: FakeEngine) -> None:
    w, seen = watcher(engine, heartbeat=0.2), Recorder()
    w.start(seen)
    try:
        seen.wait(has())
        n = seen.count()
        engine.frozen = True  # the stream stays open, calls fail
        problem = seen.wait(lambda i: isinstance(i, SourceProblem), n)
        assert "does not answer" in problem.message
        engine.up()
        seen.wait(has(), n + 1)
    finally:
        w.stop()


def test_a_veth_not_there_yet_is_looked_up_again(engine: FakeEngine) -> None:
    found: dict[int, str] = {}
    w = DockerWatcher(engine, "fake://engine", "docker-1", lambda pid, mac: found.get(pid),
                      coalesce=0.02, retry=0.05)
    seen = Recorder()
    engine.run(container_info("a", "198.18.200.2", pid=21))
    w.start(seen)
    try:
        first = seen.wait(has("a"))
        assert first.inventory.endpoints[0].interface is None and first.unresolved
        found[21] = "vethlate"
        later = seen.wait(lambda i: isinstance(i, EngineView) and i.inventory.endpoints[0].interface == "vethlate")
        assert later.unresolved == ()
    finally:
        w.stop()


def test_host_network_containers_are_in_the_view_as_not_enforceable(engine: FakeEngine) -> None:
    engine.run(container_info("monitor", "", network="host", network_id="net-host", mode="host"))
    engine.run(container_info("a", "198.18.200.2"))
    w, seen = watcher(engine), Recorder()
    w.start(seen)
    try:
        view = seen.wait(has("a"))
        assert [(p.object, "network mode host" in p.message) for p in view.not_enforceable] == [
            ("container monitor", True)]
    finally:
        w.stop()


POLICY = """apiVersion: callgate/v1
kind: App
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  ports: [{name: http, port: 80}]
  callers: [{app: client}]
---
apiVersion: callgate/v1
kind: App
metadata: {name: client, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
"""


def test_the_source_puts_engine_and_policy_files_together(engine: FakeEngine, tmp_path: Path) -> None:
    policies = tmp_path / "apps.yaml"
    policies.write_text(POLICY)
    engine.run(container_info("web", "198.18.200.2", labels={"app": "web", "com.docker.compose.project": "shop"}))
    source = DockerSource(engine, "fake://engine", "docker-1", interfaces, [policies], coalesce=0.02)
    seen = Recorder()
    source.start(seen)
    try:
        first = seen.wait(lambda i: isinstance(i, Snapshot))
        assert names(first) == ["web"] and sorted(p.name for p in first.policies.policies) == ["client", "web"]
        assert first.origin == f"docker fake://engine + files {policies}"
        n = seen.count()
        policies.write_text("kind: App\nnot: valid\n")  # a bad edit: a problem, the engine's view is kept aside
        seen.wait(lambda i: isinstance(i, SourceProblem) and "apps.yaml" in i.message, n)
        n = seen.count()
        engine.run(container_info("client", "198.18.200.3", labels={"app": "client"}))
        policies.write_text(POLICY)
        fixed = seen.wait(lambda i: isinstance(i, Snapshot) and names(i) == ["client", "web"], n)
        assert fixed.version != first.version
        n = seen.count()
        engine.down()
        seen.wait(lambda i: isinstance(i, SourceProblem) and "docker engine" in i.message, n)
    finally:
        source.stop()


def test_the_reactor_counts_and_logs_not_enforceable_workloads_once(caplog: pytest.LogCaptureFixture) -> None:
    from callgate.policy.model import Inventory, PolicySet

    metrics = AgentMetrics()
    reactor = Reactor(ReactorConfig(node="docker-1", coalesce=0.0), NftablesEnforcer(FakeNftKernel()),
                      InterfaceResolver(runner=lambda argv: "[]"), metrics)
    reactor.start()
    try:
        host = Problem("uses the host's network stack", file="docker", object="container monitor")
        for version in ("1", "2"):
            reactor.on_event(Snapshot(Inventory(), PolicySet(), version, "test", not_enforceable=[host]))
            assert reactor.wait_for(lambda v=version: reactor.last_sync is not None
                                    and reactor.last_sync.snapshot.version == v, WAIT)
        assert metrics.value("callgate_endpoints", state="not_enforceable") == 1
        assert sum("not enforceable" in r.getMessage() for r in caplog.records) == 1
        reactor.on_event(Snapshot(Inventory(), PolicySet(), "3", "test"))
        assert reactor.wait_for(lambda: reactor.last_sync is not None and reactor.last_sync.snapshot.version == "3",
                                WAIT)
        assert metrics.value("callgate_endpoints", state="not_enforceable") == 0
    finally:
        reactor.stop()


# ---- the command line: usage mistakes (exit 2) and an engine that is not there (exit 1) ----------

def invoke(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from callgate.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--docker-host", "http://example"], "expected unix:///path/to/docker.sock or tcp://HOST:PORT"),
    (["-i", "examples/shop/inventory.yaml"], "--inventory belongs to --source files"),
    (["--policies", "no/such/dir"], "no such file or directory: no/such/dir"),
    (["--backend", "iptables"], "--source docker needs the nft backend: with iptables, callgate's ACCEPT would end "
                                "FORWARD before Docker's own rules"),
])
def test_agent_docker_usage_mistakes(args: list[str], message: str) -> None:
    base = ["agent", "--node", "n", "--source", "docker", "--metrics-address", "127.0.0.1:0"]
    if "--policies" not in args:
        base += ["--policies", "examples/docker/policies"]
    code, err = invoke(*base, *args)
    assert code == 2 and message in " ".join(err.split()), err


def test_agent_docker_needs_policies_and_docker_host_needs_docker() -> None:
    code, err = invoke("agent", "--node", "n", "--source", "docker")
    assert code == 2 and "--source docker needs --policies" in err
    code, err = invoke("agent", "--node", "n", "-i", "examples/shop/inventory.yaml", "--docker-host", "unix:///x")
    assert code == 2 and "--docker-host belongs to --source docker" in err


def test_an_engine_unreachable_at_start_is_exit_1_with_the_reason(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/docker.sock"
    code, err = invoke("agent", "--node", "n", "--source", "docker", "--docker-host", missing,
                       "--policies", "examples/docker/policies", "--metrics-address", "127.0.0.1:0")
    assert code == 1
    assert err.strip() == (f"error: cannot reach the Docker engine at {missing}: "
                           "no such socket (is dockerd running, and is this its -H?)")
    code, err = invoke("inventory", "--from", "docker", "--docker-host", missing)
    assert code == 1 and "cannot reach the Docker engine" in err and "Traceback" not in err


def test_inventory_usage_mistakes() -> None:
    assert invoke("inventory", "--from", "kubernetes")[0] == 2
    assert invoke("inventory")[0] == 2  # --from is required
    code, err = invoke("inventory", "--from", "docker", "--netns", "../etc")
    assert code == 2 and "not a valid network namespace name" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "kubernetes"], "--from 'kubernetes': use docker"),
    (["--from", "docker", "-i", "examples/shop/inventory.yaml"], "--inventory and --from docker: give one of them"),
    (["-i", "examples/shop/inventory.yaml", "--docker-host", "unix:///x"], "--docker-host belongs to --from docker"),
    (["--from", "docker", "--docker-host", "ftp://x"], "expected unix:///path/to/docker.sock or tcp://HOST:PORT"),
    ([], "--inventory / -i (or --from docker) is required"),
])
def test_doctor_docker_usage_mistakes(args: list[str], message: str) -> None:
    code, err = invoke("doctor", "--node", "n", *args)
    assert code == 2 and message in " ".join(err.split()), err


def test_doctor_with_an_unreachable_engine_is_exit_1(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/docker.sock"
    code, err = invoke("doctor", "--node", "n", "--from", "docker", "--docker-host", missing)
    assert code == 1 and "cannot reach the Docker engine" in err and "Traceback" not in err
