"""YAML policy files parsed by a forked child while the inventory is read (callgate.policy.ahead).

The child is an optimisation only: the policies, every problem and every
message must be what reading in one process gives, whether the child parsed
everything, failed on a file, saw other bytes, or died.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from callgate.cli.common import load_inputs
from callgate.cli.main import app
from callgate.compiler import Compiler
from callgate.errors import InputError
from callgate.forked import Send
from callgate.policy import ahead as ahead_module
from callgate.policy import documents, load_inventory, load_policies, yamlfast
from callgate.policy.ahead import YamlAhead
from tests.helpers import ROOT, STANDARD_INVENTORY

SCENARIOS = ROOT / "tests" / "scenarios"
INVENTORY = str(STANDARD_INVENTORY)


@pytest.fixture
def always(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child parses any YAML, however small."""
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 0)


@pytest.fixture
def parsed_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts this process parses as YAML (the child's calls are its own)."""
    texts: list[str] = []
    real = yamlfast.load_all

    def spy(text: str) -> list[Any]:
        texts.append(text)
        return real(text)
    monkeypatch.setattr(documents.yamlfast, "load_all", spy)
    yield texts


def _alone(policies: list[str]) -> tuple[Any, Any]:
    """(inventory, policies) read in this process only."""
    return load_inputs([INVENTORY], policies)


def test_the_child_parses_the_policies_and_the_result_is_the_same(always: None, parsed_here: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    files = [str(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
    inv, pols = load_inputs([INVENTORY], files)
    # This process parsed the inventory only: every policy file came from the child.
    assert parsed_here == [STANDARD_INVENTORY.read_text()]
    parsed_here.clear()
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 1 << 60)  # now without the child
    inv_alone, pols_alone = _alone(files)
    assert len(parsed_here) == len(files) + 1
    assert pols == pols_alone
    for node in inv.nodes():
        assert Compiler(pols, inv).compile(node).digest() == Compiler(pols_alone, inv_alone).compile(node).digest()


def _problems(err: InputError) -> list[tuple[Any, ...]]:
    return [(p.message, p.file, p.line, p.column, p.field, p.object) for p in err.problems]


def test_a_broken_file_gives_the_same_problems(always: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good.yaml"
    shutil.copy(SCENARIOS / "03-namespace-and-pod.yaml", good)
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x\n  spec: [\n")
    invalid = tmp_path / "invalid.yaml"  # parses, but is no valid policy
    invalid.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: y, namespace: x}\n"
                       "spec: {podSelector: {matchLabels: {pod: [a]}}}\n")
    with pytest.raises(InputError) as with_child:
        load_inputs([INVENTORY], [str(tmp_path)])
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 1 << 60)
    with pytest.raises(InputError) as alone:
        load_inputs([INVENTORY], [str(tmp_path)])
    assert _problems(with_child.value) == _problems(alone.value)
    assert {p.file for p in alone.value.problems} == {str(broken), str(invalid)}


def test_other_bytes_than_the_child_read_are_parsed_here(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    shutil.copy(SCENARIOS / "03-namespace-and-pod.yaml", path)
    raw = path.read_bytes()
    child = YamlAhead([path])
    try:
        assert child.documents(path, raw + b"\n# edited since\n") is None
    finally:
        child.close()
    child = YamlAhead([path])
    try:
        assert child.documents(path, raw) == yamlfast.load_all(raw.decode())
        assert child.documents(path, raw) is None  # handed over once
    finally:
        child.close()


def _dies(files: list[Path], split: Any, send: Send) -> None:
    os._exit(1)


def _garbles(files: list[Path], split: Any, send: Send) -> None:
    send("not (name, digest, documents)")


@pytest.mark.parametrize("child", [_dies, _garbles])
def test_a_child_that_dies_or_garbles_changes_nothing(always: None, monkeypatch: pytest.MonkeyPatch,
                                                      child: Any) -> None:
    files = [str(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
    expected = load_policies(files)
    monkeypatch.setattr(ahead_module, "_parse", child)
    assert load_inputs([INVENTORY], files)[1] == expected


def test_the_child_is_reaped_however_the_block_ends(always: None) -> None:
    pids = []
    with pytest.raises(RuntimeError), YamlAhead.started([SCENARIOS]) as child:
        assert child is not None
        pids.append(child._child._pid)
        raise RuntimeError("the inventory failed")
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)


def test_small_or_json_inputs_start_no_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with YamlAhead.started([SCENARIOS]) as child:
        assert child is None  # a few KiB: not worth a fork
    (tmp_path / "p.json").write_text("{}" + " " * (2 << 20))
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 0)
    with YamlAhead.started([tmp_path]) as child:
        assert child is None  # JSON is parsed in C already


def test_compile_prints_the_same_with_the_child(always: None, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["compile", "-i", INVENTORY, "-p", str(SCENARIOS), "-n", "node-1", "--format", "json"]
    with_child = CliRunner().invoke(app, args)
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 1 << 60)
    alone = CliRunner().invoke(app, args)
    assert with_child.exit_code == alone.exit_code == 0, with_child.output
    assert with_child.stdout == alone.stdout


# -- a big YAML inventory: the head read here, the tail by the child -------------------

def _inventory_yaml(tmp_path: Path, endpoints: int = 300, broken_at: int | None = None) -> Path:
    eps = [{"name": f"p{i}", "namespace": f"ns-{i % 3}", "node": "node-1", "labels": {"app": f"a{i % 5}"},
            "ips": [f"198.18.{i // 250}.{i % 250 + 1}"], "ports": [{"name": "http", "port": 80}]}
           for i in range(endpoints)]
    if broken_at is not None:
        eps[broken_at]["ips"] = ["999.1.1.1"]
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "callgate/v1", "kind": "Inventory", "endpoints": eps,
                                    "namespaces": {"ns-0": {"labels": {"team": "a"}}}}))
    return path


@pytest.fixture
def heads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The heads this process parsed."""
    texts: list[str] = []
    real = yamlfast.load_head

    def spy(text: str) -> Any:
        texts.append(text)
        return real(text)
    monkeypatch.setattr(ahead_module.yamlfast, "load_head", spy)
    yield texts


def test_a_big_inventory_is_read_in_two_parts_and_the_result_is_the_same(
        always: None, parsed_here: list[str], heads: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = _inventory_yaml(tmp_path)
    files = [str(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
    inv, pols = load_inputs([str(inventory)], files)
    text = inventory.read_text()
    assert parsed_here == [] and len(heads) == 1  # this process parsed the inventory's head only
    assert text.startswith(heads[0]) and len(text) * 0.3 < len(heads[0]) < len(text) * 0.9
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 1 << 60)
    inv_alone, pols_alone = load_inputs([str(inventory)], files)
    assert parsed_here == [text, *(Path(f).read_text() for f in files)] and len(heads) == 1
    assert inv == inv_alone and pols == pols_alone


@pytest.mark.parametrize("broken", ["tail", "head"])
def test_a_problem_in_either_part_is_reported_as_by_the_whole(
        always: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    inventory = _inventory_yaml(tmp_path, broken_at=280 if broken == "tail" else 5)
    with pytest.raises(InputError) as split:
        load_inputs([str(inventory)], [str(SCENARIOS)])
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 1 << 60)
    with pytest.raises(InputError) as alone:
        load_inputs([str(inventory)], [str(SCENARIOS)])
    assert _problems(split.value) == _problems(alone.value)
    assert [p.line for p in alone.value.problems] == [p.line for p in split.value.problems] != [None]


def test_a_tail_that_does_not_parse_is_parsed_whole_here(always: None, tmp_path: Path, parsed_here: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = _inventory_yaml(tmp_path)
    inventory.write_text(inventory.read_text() + "kind: [unclosed\n")
    with pytest.raises(InputError) as split:
        load_inputs([str(inventory)], [str(SCENARIOS)])
    assert parsed_here[0] == inventory.read_text()
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", 1 << 60)
    with pytest.raises(InputError) as alone:
        load_inputs([str(inventory)], [str(SCENARIOS)])
    assert _problems(split.value) == _problems(alone.value) and "invalid YAML" in _problems(alone.value)[0][0]


def _garbles_the_tail(files: list[Path], split: Any, send: Send) -> None:
    send(("tail", str(split.path), "not a tail"))


def _dies_before_the_tail(files: list[Path], split: Any, send: Send) -> None:
    os._exit(1)


@pytest.mark.parametrize("child", [_garbles_the_tail, _dies_before_the_tail])
def test_a_child_that_garbles_the_tail_or_dies_changes_nothing(
        always: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: Any) -> None:
    inventory = _inventory_yaml(tmp_path)
    expected = load_inventory(inventory)
    monkeypatch.setattr(ahead_module, "_parse", child)
    assert load_inputs([str(inventory)], [str(SCENARIOS)])[0] == expected


def test_an_inventory_edited_since_the_cut_is_parsed_here(always: None, tmp_path: Path) -> None:
    inventory = _inventory_yaml(tmp_path)
    with YamlAhead.started([], split=[inventory]) as ahead:
        assert ahead is not None
        inventory.write_text(inventory.read_text().replace("p1", "q1"))
        assert ahead.documents(inventory, inventory.read_bytes()) is None


def test_where_the_inventory_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = _inventory_yaml(tmp_path)
    size = inventory.stat().st_size
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", size)
    alone = ahead_module._split([inventory], 0)
    assert alone is not None and alone.text[alone.cut:].startswith("- ")
    with_policies = ahead_module._split([inventory], size // 2)
    assert with_policies is not None and with_policies.cut > alone.cut  # the child has policies to parse too
    assert ahead_module._split([inventory], 10 * size) is None  # the child's share would be too small to cut
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", size + 1)
    assert ahead_module._split([inventory], 0) is None  # too small to be worth it
    (tmp_path / "inventory.json").write_text("{}")
    assert ahead_module._split([tmp_path / "inventory.json"], 0) is None
    monkeypatch.setattr(ahead_module, "AHEAD_MIN_BYTES", size)
    (tmp_path / "a-namespaces.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    in_a_directory = ahead_module._split([tmp_path], 0)  # a small file first, then the big one
    assert in_a_directory is not None and in_a_directory.path == inventory and in_a_directory.cut == alone.cut
