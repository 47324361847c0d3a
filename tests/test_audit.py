"""Audit enforcement in the model, the compiler, explain and doctor (the datapath side is in test_flowlog_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from callgate.cli.main import build_app
from callgate.compiler import compile_node
from callgate.enforcers import get_enforcer
from callgate.policy import load_inventory, load_policies
from tests.helpers import policies_from, write
from tests.netns import host_interfaces

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


@pytest.mark.kernel
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_doctor_says_which_namespaces_and_whether_the_node_are_in_audit(netns: str, tmp_path: Path,
                                                                        backend: str) -> None:
    host_interfaces(netns, ["cgxa0", "cgyb0"])
    inv = write(tmp_path, "inv.yaml", INVENTORY)
    pols = write(tmp_path, "p.yaml", DENY_ALL)
    runner = CliRunner()

    def doctor(inventory: Path) -> list[str]:
        result = runner.invoke(build_app("doctor"), ["doctor", "-i", str(inventory), "--node", "n1",
                                                     "--netns", netns, "--backend", backend])
        assert result.exit_code == 0, result.output  # audit is no defeat
        return result.output.splitlines()

    before = doctor(inv)
    assert "  x/a  routed veth: cgxa0  ok, in audit" in before
    assert "  y/b  routed veth: cgyb0  ok" in before
    assert ("namespace x is in audit (callgate.io/enforcement): its pods' denials are recorded as would-deny "
            "and let through") in before
    assert not any("namespace y" in line for line in before)
    enforcer = get_enforcer(backend, netns)
    try:
        # x/a's denials go through audit in the live rules, because of its namespace.
        enforcer.apply(compile_node(load_policies(pols), load_inventory(inv), "n1"), known_interfaces=["cgxa0", "cgyb0"])
        [table] = [line for line in doctor(inv) if line.startswith(f"callgate's {backend} rules in the node")]
        assert table.endswith("; they let denials through for audit (recorded as would-deny)"), table
        # Nothing in audit: the rules say nothing of it.
        enforced = write(tmp_path, "enforced.yaml", INVENTORY.replace("x: {labels: {callgate.io/enforcement: audit}}",
                                                                      "x: {labels: {callgate.io/enforcement: dry-run}}"))
        ruleset = compile_node(load_policies(pols), load_inventory(enforced), "n1")
        enforcer.apply(ruleset, known_interfaces=["cgxa0", "cgyb0"])
        lines = doctor(enforced)
        assert "  x/a  routed veth: cgxa0  ok" in lines
        assert ("namespace x: callgate.io/enforcement 'dry-run' is neither enforce nor audit, so it is enforced "
                "(lint CG117)") in lines
        assert not any("audit (recorded" in line for line in lines)
        # The node in audit (the agent's --enforcement audit): the live rules audit although no namespace does.
        enforcer.apply(ruleset.in_audit(), known_interfaces=["cgxa0", "cgyb0"])
        [table] = [line for line in doctor(enforced) if line.startswith(f"callgate's {backend} rules in the node")]
        assert table.endswith("no local endpoint's namespace is in audit, so the agent runs with "
                              "--enforcement audit"), table
    finally:
        enforcer.remove()
        enforcer.close()
