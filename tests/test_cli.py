"""The command line as a first-day user meets it: help, exit codes, every problem at once,
explain pointing at the YAML, the inventory beside the policies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from callgate import __version__
from callgate.cli.main import app
from tests.helpers import ROOT, SHOP, STANDARD_INVENTORY, write

SHOP_ARGS = ["-i", str(SHOP / "inventory.yaml"), "-p", str(SHOP / "apps.yaml")]
STD = str(STANDARD_INVENTORY)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _commands() -> list[list[str]]:
    """Every command and sub-command, as argv prefixes."""
    root = typer.main.get_command(app)
    out: list[list[str]] = [[]]
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        out.append([name])
        out.extend([name, sub] for sub in getattr(cmd, "commands", {}))
    return out


@pytest.mark.parametrize("argv", _commands(), ids=lambda argv: " ".join(argv) or "callgate")
def test_help_is_tidy(argv: list[str]) -> None:
    """-h works everywhere; no type tags (<bool>, <str>, <list[str]>), no braces around
    arguments, no summary cut off with '...'."""
    code, out, _ = invoke(*argv, "-h")
    assert code == 0 and out.startswith("Usage: callgate")
    assert out == invoke(*argv, "--help")[1]
    assert not re.search(r"<(bool|str|int|float|list\[\w+\]|path)>", out), out
    assert "{" not in out.splitlines()[0], out.splitlines()[0]
    commands = out.split("Commands:\n", 1)
    if len(commands) == 2:
        assert "..." not in commands[1], commands[1]


def test_version() -> None:
    assert invoke("--version") == (0, f"callgate {__version__}\n", "")


def test_help_states_the_exit_codes() -> None:
    out = invoke("-h")[1]
    assert "0 ok, 1 bad input or a negative answer (see each command), 2 usage mistake" in " ".join(out.split())


# -- exit codes: 2 for usage mistakes, 1 for bad input, as README says -----------------------------

USAGE_MISTAKES = [
    ["matrix", "-p", "examples/shop"],  # no --inventory
    ["explain", "-i", "examples/shop/inventory.yaml", "edge/storefront", "shop/cart-1", "80"],  # no -p
    ["explain", *SHOP_ARGS, "edge/storefront", "shop/cart-1"],  # no PORT
    ["explain", *SHOP_ARGS, "edge/storefront", "shop/cart-1", "99999"],
    ["explain", *SHOP_ARGS, "edge/storefront", "shop/cart-1", "80/ICMP"],
    ["explain", *SHOP_ARGS, "edge/storefront", "shop/cart-1", "80", "--expect", "maybe"],
    ["matrix", *SHOP_ARGS, "--format", "xlsx"],
    ["matrix", *SHOP_ARGS, "--family", "5"],
    ["matrix", *SHOP_ARGS, "--max-groups", "1"],
    ["matrix", "-i", "examples/shop/inventori.yaml", "-p", "examples/shop"],  # a path that does not exist
    ["graph", *SHOP_ARGS, "--kind", "pie"],
    ["graph", *SHOP_ARGS, "--kind", "heatmap", "--format", "dot"],
    ["lint"],
    ["lint", "examples/lint/bad.yaml", "--format", "xml"],
    ["lint", "examples/lint/bad.yaml", "--disable", "CG999"],
    ["diff", "-i", STD, "examples/lint/good.yaml"],  # one path
    ["diff", "examples/lint/good.yaml", "examples/lint/good.yaml"],  # no inventory
    ["convert", "examples/shop/apps.yaml", "--to", "yaml"],
    ["compile", *SHOP_ARGS, "--node", "node-1", "--backend", "pf"],
    ["apply", *SHOP_ARGS, "--node", "node-1", "--backend", "pf"],
    ["test", *SHOP_ARGS],  # no FILE
    ["test", *SHOP_ARGS, "--live", "examples/shop/connectivity.cgtest"],  # --live without --node
    ["frobnicate"],
    ["agent", "--node", "node-1", "-i", STD, "--log-level", "loud"],
    ["agent", "--node", "node-1", "--source", "nfs"],
    ["agent", "--node", "node-1", "-i", "examples/shop/inventori.yaml"],
    ["controller", "--min-severity", "fatal", "--once"],
    ["lab", "probe", "-i", STD, "-p", STD, "--port", "80/SCTP"],
    ["lab", "up", "-i", STD, "--topology", "mesh"],
    ["doctor", "--node", "node-1"],  # no --inventory
    ["doctor", "--node", "node-1", "-i", "examples/shop/inventori.yaml"],
    ["doctor", "--node", "node-1", "-i", STD, "--backend", "pf"],
]


@pytest.mark.parametrize("argv", USAGE_MISTAKES, ids=lambda argv: " ".join(argv))
def test_usage_mistakes_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code, _, err = invoke(*argv)
    assert code == 2, err
    assert "Traceback" not in err and err.strip(), "a usage mistake says what is wrong"


BAD_INPUT = [
    ["explain", *SHOP_ARGS, "shop/nosuch", "shop/cart-1", "80"],
    ["compile", *SHOP_ARGS, "--node", "node-9"],
    ["matrix", "-i", STD, "-p", "examples/lint/bad.yaml"],
    ["explain", "-i", STD, "-p", "examples/lint/bad.yaml", "x/a", "x/b", "80"],
    ["convert", "examples/lint/bad.yaml", "--to", "app"],
    ["doctor", "-i", STD, "--node", "node-9"],
]


@pytest.mark.parametrize("argv", BAD_INPUT, ids=lambda argv: " ".join(argv))
def test_bad_input_exits_1_with_a_message(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code, _, err = invoke(*argv)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_docs_state_the_same_exit_codes() -> None:
    """README and docs/analysis.md carry one paragraph about exit codes, word for word."""
    def paragraph(path: Path) -> str:
        text = path.read_text()
        found = re.search(r"<!-- exit-codes -->\n(.*?)\n<!-- /exit-codes -->", text, re.S)
        assert found, f"{path.name} has no exit-codes paragraph"
        return found.group(1)

    readme = paragraph(ROOT / "README.md")
    assert readme == paragraph(ROOT / "docs" / "analysis.md")
    for words in ("`0`", "`1`", "`2` a usage mistake", "`callgate diff` exits 2"):
        assert words in readme


# -- every problem of every file at once -------------------------------------------------------

BROKEN_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0}}]
"""


def _broken_inputs(tmp_path: Path) -> tuple[Path, Path]:
    policies = tmp_path / "policies"
    write(policies, "a-syntax.yaml", "kind: [\n")
    write(policies, "b-invalid.yaml", BROKEN_POLICY)
    inventory = write(tmp_path, "inventory.yaml", (STANDARD_INVENTORY.read_text()
                                                   + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
                                                   "spec: {containers: [{ports: [{containerPort: 99999}]}]}\n"))
    return inventory, policies


@pytest.mark.parametrize("command", [
    ["compile", "--node", "node-1"],
    ["explain", "x/a", "x/b", "80"],
    ["matrix"],
    ["graph"],
])
def test_every_problem_of_every_file_at_once(tmp_path: Path, command: list[str]) -> None:
    """A YAML syntax error in one file hides neither the invalid policy in another nor the
    inventory's problem."""
    inventory, policies = _broken_inputs(tmp_path)
    code, _, err = invoke(command[0], "-i", str(inventory), "-p", str(policies), *command[1:])
    assert code == 1
    assert "a-syntax.yaml:2:1: invalid YAML" in err
    assert "b-invalid.yaml:7:22: NetworkPolicy x/web: spec.ingress[0].from[0].ipBlock: '10.0.0.0' is not a CIDR" in err
    assert ("inventory.yaml:116:46: Pod p: spec.containers[0].ports[0].containerPort: "
            "Input should be less than or equal to 65535") in err


def test_every_problem_at_once_for_diff_and_test(tmp_path: Path) -> None:
    inventory, policies = _broken_inputs(tmp_path)
    good = write(tmp_path, "good.yaml", BROKEN_POLICY.replace("10.0.0.0", "10.0.0.0/8"))
    code, _, err = invoke("diff", "-i", STD, str(policies), str(good))
    assert code == 2 and "a-syntax.yaml" in err and "b-invalid.yaml" in err
    cases = write(tmp_path, "cases.cgtest", "x/a -> x/b: allow\nx/a => x/b: deny\n")
    code, _, err = invoke("test", "-i", str(inventory), "-p", str(policies), str(cases))
    assert code == 1 and "a-syntax.yaml" in err and "b-invalid.yaml" in err and "Pod p" in err


def test_missing_paths_are_named_together() -> None:
    code, _, err = invoke("explain", "-i", "nope.yaml", "-p", "nada/", "x/a", "x/b", "80")
    assert code == 2 and "no such file or directory: nope.yaml" in err


# -- explain ------------------------------------------------------------------------------------


def test_explain_with_the_inventory_beside_the_policies(tmp_path: Path) -> None:
    """`explain -i . -p .`: each loader skips the other's documents."""
    both = tmp_path / "cluster"
    write(both, "inventory.yaml", (SHOP / "inventory.yaml").read_text())
    write(both, "apps.yaml", (SHOP / "apps.yaml").read_text())
    code, out, err = invoke("explain", "-i", str(both), "-p", str(both), "edge/storefront", "shop/cart-2", "8080")
    assert code == 0, err
    assert out.startswith("edge/storefront (198.18.10.10) -> shop/cart-2 (198.18.20.12) 8080/TCP: ALLOWED")


def test_explain_names_the_app_and_place_a_rule_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """README's storefront sample: storefront's egress rule is written as a caller of App
    shop/cart (document 2, spec.callers[0]), not in storefront's own document."""
    monkeypatch.chdir(ROOT)
    code, out, _ = invoke("explain", "-i", "examples/shop/inventory.yaml", "-p", "examples/shop",
                          "edge/storefront", "shop/cart-2", "8080/TCP")
    lines = out.splitlines()
    assert code == 0
    assert lines[3] == ("      App edge/storefront egress[0] is written at examples/shop/apps.yaml:24:7 "
                        "(App shop/cart spec.callers[0])")
    assert lines[6] == ("      App shop/cart ingress[0] is written at examples/shop/apps.yaml:24:7 "
                        "(App shop/cart spec.callers[0])")
    data = json.loads(invoke("explain", "-i", "examples/shop/inventory.yaml", "-p", "examples/shop",
                             "edge/storefront", "shop/cart-2", "8080/TCP", "--format", "json")[1])
    assert data["egress"]["allowed_by"][0]["where"] == {
        "object": "App shop/cart", "field": "spec.callers[0]", "file": "examples/shop/apps.yaml",
        "line": 24, "column": 7}


def test_explain_a_denial(tmp_path: Path) -> None:
    """A denial names the policies that isolate each side, where they are, and the rules
    that came nearest: the peer matches but not the port, or the port but not the peer."""
    policy = write(tmp_path, "p.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: db, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress]
          ingress:
          - from: [{podSelector: {matchLabels: {pod: b}}}]
            ports: [{port: 81, protocol: TCP}]
          - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
            ports: [{port: 80, protocol: TCP}]
        """)
    code, out, _ = invoke("explain", "-i", STD, "-p", str(policy), "x/b", "x/a", "80")
    assert code == 0
    assert out.splitlines()[-5:] == [
        "  ingress (destination side): denies",
        "    - ingress of destination: x/a is isolated by NetworkPolicy x/db; no rule matches, denied",
        f"      NetworkPolicy x/db ({policy}:3:18): no ingress rule matches; nearest:",
        f"        ingress[0] at {policy}:8:5 (NetworkPolicy x/db spec.ingress[0]): admits x/b, but on 81/TCP, "
        "not 80/TCP",
        f"        ingress[1] at {policy}:10:5 (NetworkPolicy x/db spec.ingress[1]): allows 80/TCP, but from all "
        "pods in namespaces ns=y, not x/b",
    ]


@pytest.mark.parametrize(("expect", "code"), [("allow", 0), ("deny", 1), ("DENY", 1)])
def test_explain_expect(expect: str, code: int) -> None:
    got, out, err = invoke("explain", *SHOP_ARGS, "edge/storefront", "shop/cart-1", "8080", "--expect", expect)
    assert got == code and "ALLOWED" in out
    assert (err == "expected deny, got ALLOWED\n") == (code == 1)
    got, _, _ = invoke("explain", *SHOP_ARGS, "shop/batch", "shop/ledger", "9090", "--expect", "deny")
    assert got == 0
