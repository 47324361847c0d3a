"""What `callgate compile` prints, per scenario × node × output form, pinned in golden files.

One table-driven test: each case (every policy file in tests/scenarios/ over the
standard inventory, and the shop example over its own) is compiled for every
node of its inventory, and every output form is compared in the same call with
its reference file, ``tests/golden/compile/<case>/<node>.<form>`` (one reference
file per backend form, as aerleon keeps one per platform). No kernel is
needed. A refactoring of the compiler or a backend that changes a byte of
what a user would see fails here; a deliberate change is accepted with
``CALLGATE_UPDATE_GOLDEN=1`` (see tests/golden_util.py) and shows up in review
as a diff of these files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from callgate.cli.engine import CompileFormat, render
from callgate.cli.main import app
from callgate.compiler import Compiler, RuleSet
from callgate.policy import load_inventory, load_policies
from tests.golden_util import GOLDEN, golden_mismatch
from tests.helpers import SHOP, STANDARD_INVENTORY

ROOT = GOLDEN / "compile"
SCENARIOS = Path(__file__).parent / "scenarios"
# case name -> (inventory, policies): a scenario file is a case by being there.
CASES: dict[str, tuple[Path, Path]] = {
    **{path.stem: (STANDARD_INVENTORY, path) for path in sorted(SCENARIOS.glob("*.yaml"))},
    "shop": (SHOP / "inventory.yaml", SHOP),
}


# form (the golden file's suffix) -> (backend, --format) of `callgate compile`
FORMS: dict[str, tuple[str, CompileFormat]] = {
    "ir.json": ("nft", CompileFormat.IR),
    "nft": ("nft", CompileFormat.TEXT),
    "nft.json": ("nft", CompileFormat.JSON),
    "iptables": ("iptables", CompileFormat.TEXT),
    "iptables.json": ("iptables", CompileFormat.JSON),
}


def render_form(form: str, ruleset: RuleSet) -> str:
    """The bytes `callgate compile --backend B --format F` prints (the CLI's own render)."""
    backend, fmt = FORMS[form]
    return render(ruleset, backend, fmt)


def rulesets(case: str) -> dict[str, RuleSet]:
    inventory_path, policies_path = CASES[case]
    inventory = load_inventory(inventory_path)
    compiler = Compiler(load_policies(policies_path), inventory)
    return {node: compiler.compile(node) for node in inventory.nodes()}


@pytest.mark.parametrize("case", CASES)
def test_compile_output_matches_golden(case: str) -> None:
    problems = [problem
                for node, ruleset in rulesets(case).items()
                for form in FORMS
                if (problem := golden_mismatch(f"compile/{case}/{node}.{form}", render_form(form, ruleset))) is not None]
    assert not problems, "\n\n".join(problems)


def test_no_golden_file_without_a_case() -> None:
    """A golden file no case produces any more (a scenario renamed, a node gone) is stale, not kept."""
    expected = {f"{case}/{node}.{form}" for case in CASES for node in rulesets(case) for form in FORMS}
    present = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and p.suffix != ".actual"}
    assert present - expected == set(), "stale golden files under tests/golden/compile/"


def test_cli_prints_what_the_golden_file_holds() -> None:
    """render() is what the CLI prints: checked for the default form."""
    inventory, policies = CASES["shop"]
    result = CliRunner().invoke(app, ["compile", "-i", str(inventory), "-p", str(policies), "--node", "node-1"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (ROOT / "shop" / "node-1.nft").read_text(encoding="utf-8")
