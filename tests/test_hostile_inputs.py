"""Hostile inputs the fuzzer (tests/fuzz/) found or the limits are about, each pinned as
a plain test: the command ends with exit 1 and one clear message naming the file, the
object and the field, never a traceback, and within bounded time and memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.errors import InputError
from tests.fuzz.oracle import run_cli
from tests.helpers import STANDARD_INVENTORY, write

POLICY_HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n"


@pytest.mark.parametrize("kind", ["{a: 1}", "[NetworkPolicy]"])
@pytest.mark.parametrize("command", ["compile", "lint"])
def test_kind_that_is_not_a_string(tmp_path: Path, kind: str, command: str) -> None:
    """Issue #17's crash: `kind` a mapping or a list was a TypeError traceback in the
    loader's look-up of inventory kinds."""
    path = write(tmp_path, "p.yaml", f"apiVersion: networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: a}}\nspec: {{}}\n")
    args = (["compile", "-i", str(STANDARD_INVENTORY), "-p", str(path), "--node", "node-1"] if command == "compile"
            else ["lint", str(path)])
    result = run_cli(args)
    assert result.exit_code == 1, result
    text = result.stderr if command == "compile" else result.stdout
    assert f"{path}:2:7" in text and "kind" in text and "expected networking.k8s.io/v1 NetworkPolicy" in text, text


def test_problem_texts_are_one_bounded_printable_line() -> None:
    from callgate.errors import Problem

    problem = Problem("bad\nvalue " + "v" * 5000, file="a\x1b[31m.yaml", object="NetworkPolicy x/\u202eevil", field="spec\x00")
    text = str(problem)
    assert text.isprintable() and len(text) < 1500
    assert "\\x1b[31m" in text and "\\u202e" in text and "\\x00" in text and text.endswith("…")


def test_a_huge_value_is_quoted_short(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", POLICY_HEAD + "spec: {podSelector: {matchLabels: {k: " + "v" * 200_000 + "}}}\n")
    result = run_cli(["compile", "-i", str(STANDARD_INVENTORY), "-p", str(path), "--node", "node-1"])
    assert result.exit_code == 1
    assert len(result.stderr) < 600, result.stderr
    assert "(200000 characters) must be empty or at most 63 characters" in result.stderr


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """"Billion laughs": 9 levels of 9 aliases is 9^9 nodes from 600 bytes. Validation
    would walk every one of them; the loader refuses as go-yaml (kubectl) does."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write(tmp_path, "bomb.yaml", POLICY_HEAD + "x-laughs:\n" + "".join(f"  {line}\n" for line in lines)
                 + "spec: {podSelector: {}, policyTypes: *a9}\n")
    result = run_cli(["compile", "-i", str(STANDARD_INVENTORY), "-p", str(path), "--node", "node-1"])
    assert result.exit_code == 1
    assert f"error: {path}: YAML aliases expand the document too far" in result.stderr


def test_modest_aliases_are_fine(tmp_path: Path) -> None:
    """Anchors for what is really repeated (a selector used in several rules) stay accepted."""
    path = write(tmp_path, "p.yaml", POLICY_HEAD + (
        "spec:\n  podSelector: &sel {matchLabels: {pod: a}}\n"
        "  ingress:\n" + "".join(f"  - from: [{{podSelector: *sel}}]\n    ports: [{{port: {80 + i}}}]\n" for i in range(200))))
    result = run_cli(["compile", "-i", str(STANDARD_INVENTORY), "-p", str(path), "--node", "node-1", "--format", "json"])
    assert result.exit_code == 0, result.stderr


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", POLICY_HEAD + "spec: &s {podSelector: {matchLabels: *s}}\n")
    with pytest.raises(InputError, match="a YAML alias is used inside the node it refers to"):
        from callgate.policy import load_policies

        load_policies(path)


def test_deep_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    result = run_cli(["lint", str(path)])
    assert result.exit_code == 1
    assert "nested more deeply than callgate reads" in result.stdout


def test_oversized_file_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import callgate.policy.documents as documents

    monkeypatch.setattr(documents, "MAX_FILE_BYTES", 1000)
    path = write(tmp_path, "p.yaml", POLICY_HEAD + "# " + "x" * 2000 + "\nspec: {podSelector: {}}\n")
    result = run_cli(["convert", "--to", "app", str(path)])
    assert result.exit_code == 1
    assert f"error: {path}: the file is 2,114 bytes; callgate reads input files of at most 1,000 bytes" in result.stderr


def test_many_problems_in_one_file_read_it_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 bad labels in a 30 KB file took 34 s: each problem parsed the whole file
    again to find its line. Now the file is parsed for positions once per load."""
    import yaml

    from callgate.policy import load_policies

    labels = ", ".join(f"k{i}: {i}" for i in range(2000))  # numbers where strings belong
    path = write(tmp_path, "p.yaml", POLICY_HEAD + f"spec: {{podSelector: {{matchLabels: {{{labels}}}}}}}\n")
    composed = 0
    real_compose_all = yaml.compose_all

    def counting_compose_all(*args: object, **kwargs: object) -> object:
        nonlocal composed
        composed += 1
        return real_compose_all(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(yaml, "compose_all", counting_compose_all)
    with pytest.raises(InputError) as err:
        load_policies(path)
    assert len(err.value.problems) == 2000
    assert err.value.problems[1999].line == 4 and err.value.problems[1999].field == (
        "spec.podSelector.matchLabels.k1999")
    assert composed == 1


@pytest.mark.parametrize("tagged", ['!!timestamp "web"', "!!float web", "!!int 0x", "!!bool maybe", "!!int 1e999", '!!int ""'])
def test_a_value_that_does_not_fit_its_tag(tmp_path: Path, tagged: str) -> None:
    """PyYAML's constructors for explicit tags raise ValueError, AttributeError or
    KeyError on a value that does not fit (a traceback); now an invalid-YAML problem
    with its position, like any other YAML mistake."""
    path = write(tmp_path, "p.yaml", POLICY_HEAD.replace("name: a", f"name: {tagged}") + "spec: {podSelector: {}}\n")
    result = run_cli(["compile", "-i", str(STANDARD_INVENTORY), "-p", str(path), "--node", "node-1"])
    assert result.exception is None and result.exit_code == 1, result
    tag = tagged.split()[0].removeprefix("!!")
    assert f"error: {path}:3:18: invalid YAML: " in result.stderr and f"is not a valid {tag}" in result.stderr, result


POD = """apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIPs: [{ip: 198.18.0.10}]}
"""


@pytest.mark.parametrize(("change", "field", "message"), [
    (("status: {podIPs: [{ip: 198.18.0.10}]}", "status: [Running]"), "status", "Input should be a valid dictionary"),
    (("status: {podIPs: [{ip: 198.18.0.10}]}", "status: Running"), "status", "Input should be a valid dictionary"),
    (("{name: http, containerPort: 80}", "{name: http}"), "spec.containers[0].ports[0].containerPort",
     "required field is missing"),
    (("containers: [{name: c, ports: [{name: http, containerPort: 80}]}]", "containers: {name: c}"), "spec.containers",
     "Input should be a valid list"),
    (("{ip: 198.18.0.10}", "{ip: 198.18.0.300}"), "status.podIPs[0].ip", "'198.18.0.300' is not an IPv4 or IPv6"),
    (("labels: {pod: a}", "labels: [pod]"), "metadata.labels", "Input should be a valid dictionary"),
    (("labels: {pod: a}", "annotations: {callgate.io/interface: 'a b'}"), "metadata.annotations",
     "callgate.io/interface: interface name 'a b' must be"),
])
def test_a_malformed_pod_names_its_field(tmp_path: Path, change: tuple[str, str], field: str, message: str) -> None:
    """A kubectl Pod whose status is a string was an AttributeError traceback; other
    malformed Pods were one 'malformed Pod' message without a field."""
    path = write(tmp_path, "pods.yaml", POD.replace(*change))
    result = run_cli(["compile", "-i", str(path), "-p", str(path), "--node", "node-1"])
    assert result.exception is None and result.exit_code == 1, result
    assert f"{path}:" in result.stderr and f": Pod x/a: {field}: {message}" in result.stderr, result.stderr


@pytest.mark.parametrize("metadata", ["[x]", "{name: x, labels: [a]}", "{name: X}"])
def test_a_malformed_namespace_names_its_field(tmp_path: Path, metadata: str) -> None:
    path = write(tmp_path, "ns.yaml", f"apiVersion: v1\nkind: Namespace\nmetadata: {metadata}\n")
    result = run_cli(["matrix", "-i", str(path), "-p", str(path)])
    assert result.exception is None and result.exit_code == 1, result
    assert f"{path}:3:" in result.stderr and ": metadata" in result.stderr, result.stderr


@pytest.mark.parametrize("node", ["metadata: [x]", "metadata: {name: n}\nstatus: Ready",
                                  "metadata: {name: n}\nstatus: {addresses: [{address: [1]}]}"])
def test_a_malformed_node_names_its_field(tmp_path: Path, node: str) -> None:
    """Nodes (for ClusterNetworkPolicy node peers) were read with dict.get chains:
    `metadata: [x]` or `status: Ready` was an AttributeError traceback."""
    path = write(tmp_path, "node.yaml", f"apiVersion: v1\nkind: Node\n{node}\n")
    result = run_cli(["matrix", "-i", str(path), "-p", str(path)])
    assert result.exception is None and result.exit_code == 1, result
    assert f"{path}:" in result.stderr and ": Node" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_empty_key_is_still_a_named_field(tmp_path: Path) -> None:
    """An empty key printed as nothing: 'spec.: unknown field', or no field at all at the top."""
    path = write(tmp_path, "p.yaml", POLICY_HEAD + 'spec: {podSelector: {}, "": 1}\n')
    inventory = write(tmp_path, "inv.yaml", 'apiVersion: callgate/v1\nkind: Inventory\n"": 2\n')
    policy_problem = run_cli(["lint", str(path)]).stdout
    inventory_problem = run_cli(["lint", "-i", str(inventory), str(path)]).stderr
    assert 'NetworkPolicy x/a: spec[""]: unknown field' in policy_problem
    assert f'error: {inventory}:3:5: Inventory: [""]: unknown field' in inventory_problem


def test_a_big_value_in_a_message_costs_little(tmp_path: Path) -> None:
    """Messages quote what they got: a list of 100,000 items (or one item repeated through
    aliases) was turned into text whole before being clipped."""
    from callgate.errors import shown

    items = ", ".join(["ab"] * 100_000)
    path = write(tmp_path, "inv.yaml", f"apiVersion: [{items}]\nkind: Inventory\n")
    result = run_cli(["matrix", "-i", str(path), "-p", str(path)])
    assert result.exit_code == 1
    assert "apiVersion: got ['ab', 'ab', 'ab', 'ab', ...]; expected 'callgate/v1'" in result.stderr, result.stderr
    bomb: list[object] = ["lol"] * 9
    for _ in range(12):
        bomb = [bomb] * 9  # 9^13 items if walked
    assert shown(bomb) == "[[[[...], [...], [...], [...], ...], [[...], [...], [...], [...], ...], [[...],…"


def test_dry_run_prints_a_big_transaction_quickly(tmp_path: Path) -> None:
    """`apply --dry-run` printed the transaction through rich, which wraps and expands
    tabs line by line: 21 s for a /16 ipBlock (65,280 set elements), minutes at the
    scale of BENCHMARKS.md. Printed as the plain text it is, it takes well under a second."""
    import time
    from unittest import mock

    from callgate.enforcers.nft.enforcer import NftablesEnforcer
    from callgate.enforcers.nft.fake import FakeNftKernel

    path = write(tmp_path, "p.yaml", POLICY_HEAD + (
        "spec:\n  podSelector: {matchLabels: {pod: a}}\n"
        "  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.5.0/24]}}]}]\n"))
    # The in-memory kernel, and no look at this host's interfaces (the guard would
    # refuse the standard model's endpoints, which have no veths here).
    with mock.patch("callgate.cli.engine.get_enforcer", lambda *_a, **_k: NftablesEnforcer(FakeNftKernel())), \
            mock.patch("callgate.cli.engine.prepare", lambda *_a, **_k: None):
        start = time.perf_counter()
        result = run_cli(["apply", "-i", str(STANDARD_INVENTORY), "-p", str(path), "--node", "node-1", "--dry-run"])
        seconds = time.perf_counter() - start
    assert result.exit_code == 0, result
    assert result.stdout.count("\n") > 65_000 and "198.18.4.255," in result.stdout and "198.18.5.1," not in result.stdout
    assert seconds < 5, f"{seconds:.1f} s"


@pytest.mark.parametrize("items", ["-1", "{a: 1}", "text"])
def test_a_list_whose_items_are_not_a_list(tmp_path: Path, items: str) -> None:
    """`kind: List` with `items: -1` was a TypeError traceback (enumerate(-1))."""
    path = write(tmp_path, "pods.yaml", f"apiVersion: v1\nkind: List\nitems: {items}\n")
    result = run_cli(["matrix", "-i", str(path), "-p", str(path)])
    assert result.exception is None and result.exit_code == 1, result
    assert f"error: {path}:3:8: List: items: expected a list of objects" in result.stderr, result.stderr
