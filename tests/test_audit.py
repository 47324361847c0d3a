"""Audit enforcement in the model, the compiler and explain (the kernel side is in test_flowlog_kernel.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from callgate.cli.main import build_app
from callgate.compiler import compile_node
from callgate.policy import load_inventory
from tests.helpers import policies_from, write

INVENTORY = """
apiVersion: callgate/v1
kind: Inventory
namespaces:
  x: {labels: {callgate.io/enforcement: audit}}
  y: {labels: {callgate.io/enforcement: enforce}}
endpoints:
- {name: a, namespace: x, node: n1, interface: cgxa0, ips: [198.18.0.1], labels: {app: a}}
- {name: b, namespace: y, node: n1, interface: cgyb0, ips: [198.18.0.2], labels: {app: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: w, annotations: {callgate.io/enforcement: audit}}
---
apiVersion: v1
kind: Namespace
metadata: {name: v, labels: {callgate.io/enforcement: enforce}, annotations: {callgate.io/enforcement: audit}}
"""

DENY_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


def test_label_or_annotation_puts_a_namespace_in_audit(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, "inv.yaml", INVENTORY))
    modes = {name: (ns.enforcement, ns.audit) for name, ns in inventory.namespaces.items()}
    assert modes == {"x": ("audit", True), "y": ("enforce", False), "w": ("audit", True),
                     "v": ("enforce", False)}  # the label wins over the annotation


def test_the_compiler_marks_audited_endpoints_and_only_them(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, "inv.yaml", INVENTORY))
    ruleset = compile_node(policies_from(tmp_path, DENY_ALL), inventory, "n1")
    assert {ep.endpoint: ep.audit for ep in ruleset.endpoints} == {"x/a": True, "y/b": False}
    assert ruleset.endpoints[0].to_json()["audit"] is True
    assert "audit" not in ruleset.endpoints[1].to_json()  # an enforced endpoint's IR is what it always was
    node_wide = ruleset.in_audit()
    assert all(ep.audit for ep in node_wide.endpoints)
    assert node_wide.digest() != ruleset.digest()
    assert node_wide.endpoints[0] is ruleset.endpoints[0]  # already in audit: the same object


def test_explain_says_a_side_is_in_audit(tmp_path: Path) -> None:
    inv = write(tmp_path, "inv.yaml", INVENTORY)
    pols = write(tmp_path, "p.yaml", DENY_ALL)
    runner = CliRunner()
    result = runner.invoke(build_app("explain"), ["explain", "-i", str(inv), "-p", str(pols), "y/b", "x/a", "80"])
    assert result.exit_code == 0, result.output
    assert ("    - namespace x is in audit (callgate.io/enforcement): what this side denies is logged as "
            "would-deny and passes") in result.output.splitlines()
    result = runner.invoke(build_app("explain"), ["explain", "-i", str(inv), "-p", str(pols), "x/a", "y/b", "80"])
    assert "in audit" not in result.output
