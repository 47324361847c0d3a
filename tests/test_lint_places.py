"""Findings placed by lint's helper process (PlacesAhead) are placed as this process
places them, and a helper that answers nothing changes nothing."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from callgate.analysis.lint import places
from callgate.analysis.lint.findings import Finding
from callgate.analysis.lint.run import lint
from callgate.policy import load_inventory
from tests.helpers import ROOT

SHOP = ROOT / "examples" / "shop" / "inventory.yaml"
POLICIES = ROOT / "examples" / "lint"


def _inputs(tmp_path: Path, as_json: bool) -> tuple[list[str], list[str]]:
    """The shop's inventory and the lint examples, as written or as JSON (the policies
    then one List)."""
    if not as_json:
        return [str(SHOP)], [str(POLICIES)]
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(yaml.safe_load(SHOP.read_text())), encoding="utf-8")
    items = [doc for file in sorted(POLICIES.iterdir()) for doc in yaml.safe_load_all(file.read_text()) if doc]
    policies = tmp_path / "policies.json"
    policies.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1), encoding="utf-8")
    return [str(inventory)], [str(policies)]


def _findings(inventory: list[str], policies: list[str], forks: bool) -> list[Any]:
    return lint(policies, load_inventory(inventory), inventory_paths=inventory, forks=forks).findings


@pytest.mark.parametrize("as_json", [False, True])
def test_a_child_places_findings_as_this_process_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     as_json: bool) -> None:
    inventory, policies = _inputs(tmp_path, as_json)
    here = _findings(inventory, policies, forks=False)
    started: list[object] = []

    class Recorded(places.PlacesAhead):
        def __init__(self, *args: Any) -> None:
            started.append(args)
            super().__init__(*args)

    monkeypatch.setattr(places, "AHEAD_MIN_BYTES", 0)
    monkeypatch.setattr("callgate.analysis.lint.linter.PlacesAhead", Recorded)
    ahead = _findings(inventory, policies, forks=True)
    assert started, "the helper was not started"
    assert ahead == here
    # Both kinds of place were asked for: namespaces (CG110) and findings on documents.
    assert {f.rule for f in here} >= {"CG110", "CG109", "CG101"}
    assert all(f.line is not None for f in here if f.rule in ("CG110", "CG109"))


_BROKEN = {
    "dies": "import os; os._exit(3)",
    "raises": "raise SystemExit('no')",
    # Answers of the wrong shape: the parent must not take them.
    "answers nonsense": "import pickle, sys; [pickle.dump(a, sys.stdout.buffer) for a in "
                        "(('namespaces', 'not places'), ('found', None))]; sys.stdout.flush()",
    "answers half": "import pickle, sys; pickle.dump(('namespaces', ({}, (None, None))), sys.stdout.buffer)",
    "reads nothing": "import time; time.sleep(0.5)",
}


@pytest.mark.parametrize("helper", sorted(_BROKEN))
def test_what_the_helper_did_not_answer_is_found_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      helper: str) -> None:
    inventory, policies = _inputs(tmp_path, as_json=True)
    here = _findings(inventory, policies, forks=False)
    monkeypatch.setattr(places, "AHEAD_MIN_BYTES", 0)
    monkeypatch.setattr(places, "HELPER", [sys.executable, "-c", _BROKEN[helper]])
    assert _findings(inventory, policies, forks=True) == here


def test_no_helper_for_small_files_no_inventory_or_a_linter_not_told_to_fork(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    inventory, policies = _inputs(tmp_path, as_json=False)
    started: list[object] = []

    class Recorded(places.PlacesAhead):
        def __init__(self, *args: Any) -> None:
            started.append(args)
            super().__init__(*args)

    monkeypatch.setattr(places, "PlacesAhead", Recorded)
    monkeypatch.setattr("callgate.analysis.lint.linter.PlacesAhead", Recorded)
    _findings(inventory, policies, forks=True)  # the shop: a few KB
    monkeypatch.setattr(places, "AHEAD_MIN_BYTES", 0)
    _findings(inventory, policies, forks=False)
    assert started == []
    lint(policies, forks=True)  # no inventory: no inventory checks to run beside a helper
    assert started == []
    _findings(inventory, policies, forks=True)
    assert len(started) == 1


def test_a_placed_finding_keeps_every_other_field() -> None:
    """Finding.placed names the fields one by one (for speed): a field it left out
    would be lost from every placed finding."""
    values = {f.name: f"value of {f.name}" for f in dataclasses.fields(Finding)}
    finding = Finding(**values)  # type: ignore[arg-type]
    assert vars(finding.placed(3, 4)) == vars(dataclasses.replace(finding, line=3, column=4))
