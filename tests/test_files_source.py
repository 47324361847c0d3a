"""The files source on its own (no kernel): it publishes a snapshot at start,
republishes after an edit (also one made by renaming a file into place), turns
a bad file into a SourceProblem naming it and recovers from it, and publishes
nothing when the content did not change. Waits are on conditions with timeouts.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from callgate.errors import InputError
from callgate.watchers.base import Snapshot, SourceProblem
from callgate.watchers.coalesce import CoalescePolicy
from callgate.watchers.files import FilesSource

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0

INVENTORY = """
apiVersion: callgate/v1
kind: Inventory
namespaces:
  x: {labels: {ns: x}}
endpoints:
- {name: a, namespace: x, labels: {pod: a}, node: node-1, ips: [198.18.1.10], ports: [{port: 80}]}
- {name: b, namespace: x, labels: {pod: b}, node: node-2, ips: [198.18.1.11]}
"""

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
"""


class Recorder:
    def __init__(self) -> None:
        self.items: list[Snapshot | SourceProblem] = []
        self.cond = threading.Condition()

    def __call__(self, item: Snapshot | SourceProblem) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def count(self) -> int:
        with self.cond:
            return len(self.items)

    def wait(self, predicate: Callable[[Snapshot | SourceProblem], bool], after: int) -> Snapshot | SourceProblem:
        deadline = time.monotonic() + WAIT
        with self.cond:
            while True:
                for item in self.items[after:]:
                    if predicate(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"nothing matching was published after #{after}: {self.items[after:]!r}")
                self.cond.wait(left)


def write(path: Path, text: str) -> None:
    """Write-then-rename, as editors and ConfigMap mounts do."""
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(textwrap.dedent(text).lstrip())
    tmp.replace(path)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    inv, pol = tmp_path / "inventory.yaml", tmp_path / "policies"
    pol.mkdir()
    write(inv, INVENTORY)
    write(pol / "web.yaml", POLICY)
    return inv, pol


@pytest.fixture
def started(files: tuple[Path, Path]) -> Iterator[tuple[FilesSource, Recorder, Path, Path]]:
    inv, pol = files
    source = FilesSource([inv], [pol], debounce_ms=50, step_ms=20)
    recorder = Recorder()
    source.start(recorder)
    try:
        yield source, recorder, inv, pol
    finally:
        source.stop()


def is_snapshot(item: Snapshot | SourceProblem) -> bool:
    return isinstance(item, Snapshot)


def labels_of(item: Snapshot | SourceProblem, key: str) -> dict[str, str]:
    assert isinstance(item, Snapshot)
    return next(dict(ep.labels) for ep in item.inventory.endpoints if ep.key == key)


def test_publishes_a_snapshot_at_start(started: tuple[FilesSource, Recorder, Path, Path]) -> None:
    _, rec, inv, pol = started
    first = rec.wait(is_snapshot, 0)
    assert isinstance(first, Snapshot)
    assert {ep.key for ep in first.inventory.endpoints} == {"x/a", "x/b"}
    assert [p.key for p in first.policies.policies] == ["x/a-from-b"]
    assert first.origin == f"files {inv} + {pol}" and first.problems == []
    assert rec.count() == 1


def test_republishes_on_edit(started: tuple[FilesSource, Recorder, Path, Path]) -> None:
    _, rec, inv, pol = started
    first = rec.wait(is_snapshot, 0)
    assert isinstance(first, Snapshot)
    write(inv, INVENTORY.replace("labels: {pod: b}", "labels: {pod: b, tier: web}"))
    edited = rec.wait(is_snapshot, 1)
    assert isinstance(edited, Snapshot) and edited.version != first.version
    assert labels_of(edited, "x/b") == {"pod": "b", "tier": "web"}
    # A new file in the policy directory is an edit too.
    mark = rec.count()
    write(pol / "more.yaml", POLICY.replace("a-from-b", "a-from-b-2"))
    more = rec.wait(is_snapshot, mark)
    assert isinstance(more, Snapshot)
    assert sorted(p.key for p in more.policies.policies) == ["x/a-from-b", "x/a-from-b-2"]


def test_bad_file_is_a_problem_then_recovers(started: tuple[FilesSource, Recorder, Path, Path]) -> None:
    _, rec, _, pol = started
    first = rec.wait(is_snapshot, 0)
    assert isinstance(first, Snapshot)
    mark = rec.count()
    write(pol / "web.yaml", POLICY.replace("matchLabels: {pod: a}", "matchLabels: {pod: [a]}"))
    problem = rec.wait(lambda i: isinstance(i, SourceProblem), mark)
    assert isinstance(problem, SourceProblem)
    assert problem.message.startswith("invalid input")
    assert problem.problems and any(str(pol / "web.yaml") in str(p) for p in problem.problems)
    # The fix brings the same content as before the problem: published all the same,
    # so the consumer learns that the source is good again.
    mark = rec.count()
    write(pol / "web.yaml", POLICY)
    again = rec.wait(is_snapshot, mark)
    assert isinstance(again, Snapshot) and again.version == first.version


def test_no_republish_when_content_is_unchanged(started: tuple[FilesSource, Recorder, Path, Path]) -> None:
    source, rec, inv, pol = started
    rec.wait(is_snapshot, 0)
    # A first edit, published: from then on the watch is certainly in place
    # (anything published after the first load comes from inside the watch loop).
    write(inv, INVENTORY.replace("{pod: b}", "{pod: b, v: '2'}"))
    rec.wait(is_snapshot, 1)
    loads = source.loads
    write(inv, INVENTORY.replace("{pod: b}", "{pod: b, v: '2'}"))  # same bytes, new inode: an inotify event
    deadline = time.monotonic() + WAIT
    while source.loads == loads:  # the source did notice and reload…
        assert time.monotonic() < deadline, "the rewrite was never noticed"
        time.sleep(0.01)
    # …and then a real edit is the next thing published: nothing came in between.
    write(pol / "web.yaml", POLICY.replace("{pod: b}", "{pod: c}"))
    nxt = rec.wait(is_snapshot, 2)
    assert rec.items[2] is nxt
    assert rec.count() == 3


def test_missing_path_at_start_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        FilesSource([tmp_path / "nope.yaml"], [])


def test_load_reports_problem_without_raising(files: tuple[Path, Path]) -> None:
    inv, pol = files
    source = FilesSource([inv], [pol])
    assert isinstance(source.load(), Snapshot)
    inv.write_text("apiVersion: callgate/v1\nkind: Inventory\nendpoints: [{name: a}]\n")
    result = source.load()
    assert isinstance(result, SourceProblem) and str(inv) in str(result.problems[0])


def test_an_edit_reparses_only_the_side_that_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy edit reuses the inventory parsed before (and a pod edit the
    policies); whatever changed is read again, and a bad edit is still caught."""
    import callgate.watchers.files as files

    parsed: list[str] = []
    real_inventory, real_policies = files.load_inventory, files.load_policies
    monkeypatch.setattr(files, "load_inventory", lambda p: parsed.append("inventory") or real_inventory(p))
    monkeypatch.setattr(files, "load_policies", lambda p: parsed.append("policies") or real_policies(p))
    inv, pol = tmp_path / "inventory.yaml", tmp_path / "policies.yaml"
    write(inv, INVENTORY)
    write(pol, POLICY)
    source = FilesSource([inv], [pol])
    first = source.load()
    assert isinstance(first, Snapshot) and parsed == ["inventory", "policies"]

    write(pol, POLICY.replace("pod: b", "pod: a"))
    second = source.load()
    assert isinstance(second, Snapshot) and parsed[2:] == ["policies"]
    assert second.inventory is first.inventory and second.version != first.version
    assert second.policies.policies[0].ingress != first.policies.policies[0].ingress

    write(inv, INVENTORY.replace("198.18.1.11", "198.18.1.12"))
    third = source.load()
    assert isinstance(third, Snapshot) and parsed[3:] == ["inventory"]
    assert third.policies is second.policies
    assert {str(ip) for ep in third.inventory.endpoints for ip in ep.ips} == {"198.18.1.10", "198.18.1.12"}

    write(inv, INVENTORY.replace("198.18.1.11", "not-an-ip"))
    assert isinstance(source.load(), SourceProblem)
    write(inv, INVENTORY.replace("198.18.1.11", "198.18.1.12"))
    back = source.load()
    assert isinstance(back, Snapshot) and back.version == third.version


def reloads_allowed(burst: float, policy: CoalescePolicy) -> int:
    """How many reloads the policy schedules for changes spread over ``burst``
    seconds: one at once, then one after each wait of the burst while changes
    keep coming, and one more for those after the last."""
    reloads, at, waits = 1, 0.0, 1
    while True:
        at += policy.wait(waits)
        reloads += 1
        if at >= burst:
            return reloads
        waits += 1


def test_reloads_allowed_follows_the_policy() -> None:
    policy = CoalescePolicy()
    assert reloads_allowed(1.5, policy) == 5  # 0, 20, 100, 420, 1,700 ms
    assert reloads_allowed(1.75, policy) == 6  # and 3,700 ms
    assert reloads_allowed(0.01, policy) == 2


def test_a_burst_of_writes_is_a_handful_of_reloads(tmp_path: Path) -> None:
    """300 renames of the inventory over ~1.5 s (one pod more each) publish no more
    snapshots than the coalescing policy schedules for the burst's measured length
    (five on a quiet machine), the last with every pod; the first change after a
    quiet spell still goes out at once."""
    inv, pol = tmp_path / "inventory.yaml", tmp_path / "policies.yaml"
    write(inv, INVENTORY)
    write(pol, POLICY)
    rec = Recorder()
    source = FilesSource([inv], [pol])
    source.start(rec)
    try:
        rec.wait(lambda i: isinstance(i, Snapshot), 0)
        time.sleep(0.5)  # quiet
        first = rec.count()
        started = time.monotonic()
        write(inv, INVENTORY + "- {name: lone, namespace: x, node: node-2, ips: [198.18.2.1]}\n")
        rec.wait(lambda i: isinstance(i, Snapshot) and len(i.inventory.endpoints) == 3, first)
        assert time.monotonic() - started < 1.0, "a lone change waits for nothing"
        time.sleep(0.5)  # quiet again: the burst starts afresh
        before = rec.count()
        pods = ""
        burst_started = time.monotonic()
        for i in range(300):
            pods += f"- {{name: p{i}, namespace: x, node: node-2, ips: [198.18.3.{i % 250}]}}\n".replace(
                "198.18.3.", f"198.18.{3 + i // 250}.")
            write(inv, INVENTORY + pods)
            time.sleep(0.005)
        burst = time.monotonic() - burst_started
        last = rec.wait(lambda i: isinstance(i, Snapshot) and len(i.inventory.endpoints) == 302, before)
        assert isinstance(last, Snapshot)
        time.sleep(2.5)  # longer than the longest wait: nothing more comes
        # ~1.5 s on a quiet machine: 5 reloads. A loaded machine stretches the
        # burst, and the policy then allows one reload per max_delay more.
        allowed = reloads_allowed(burst, CoalescePolicy())
        assert rec.count() - before <= allowed, (rec.count() - before, allowed, round(burst, 2))
    finally:
        source.stop()
