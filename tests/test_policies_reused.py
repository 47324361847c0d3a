"""Loading mostly the same documents twice (diff's OLD and NEW): unchanged NetworkPolicies
are taken from the first load, everything else is parsed (and reported) as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.errors import InputError
from callgate.policy import load_policies
from callgate.policy.loader import Reused

OLD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c, namespace: y}
spec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}
"""
# b unchanged, a moved after it, c's port another number.
NEW = OLD.split("---\n")[1] + "---\n" + OLD.split("---\n")[0] + "---\n" + OLD.split("---\n")[2].replace(
    "port: 80}", "port: 81}")


def test_unchanged_policies_are_the_first_loads_objects(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    reused = Reused()
    old = load_policies(tmp_path / "old.yaml", reused=reused)
    new = load_policies(tmp_path / "new.yaml", reused=reused)
    assert new == load_policies(tmp_path / "new.yaml")  # the same set as a load of its own
    by_key = {p.key: p for p in old.policies}
    assert [p.key for p in new.policies] == ["x/b", "x/a", "y/c"]
    assert new.policies[0] is by_key["x/b"] and new.policies[1] is by_key["x/a"]
    assert new.policies[2] is not by_key["y/c"] and new.policies[2] != by_key["y/c"]


def test_an_invalid_document_is_reported_in_its_own_file_each_time(tmp_path: Path) -> None:
    bad = OLD.replace("podSelector: {matchLabels: {pod: a}}", "podSelector: {matchLabels: {pod: [a]}}")
    for name in ("old.yaml", "new.yaml"):
        (tmp_path / name).write_text(bad)
    reused = Reused()
    for name in ("old.yaml", "new.yaml"):
        with pytest.raises(InputError) as err:
            load_policies(tmp_path / name, reused=reused)
        assert [(p.file, p.line) for p in err.value.problems] == [(str(tmp_path / name), 5)]
