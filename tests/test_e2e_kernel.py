"""End to end on the real kernel: the standard model in a two-node lab.

For every scenario in tests/scenarios/ and every backend, compile for each
node, apply inside that node's network namespace, send real TCP and UDP
probes between all nine pods over IPv4 and IPv6 (576 probes), and require
the observed matrix to equal the reference evaluator's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from callgate.compiler import Compiler
from callgate.enforcers import get_enforcer
from callgate.lab import Lab, probe_matrix
from callgate.policy import Evaluator, Inventory, PolicySet, load_policies
from tests.helpers import ROOT, STANDARD_INVENTORY, standard, write

pytestmark = pytest.mark.kernel

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.yaml"))
BACKENDS = ("nft", "iptables")
INV = standard()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("cge").running(INV) as running:
        yield running


def clear(lab: Lab) -> None:
    """Remove what any backend left behind, so each case starts from nothing."""
    for node in INV.nodes():
        for backend in BACKENDS:
            get_enforcer(backend, netns=lab.node_netns(node)).remove()


def apply_everywhere(lab: Lab, policies: PolicySet, backend: str) -> None:
    compiler = Compiler(policies, INV)
    for node in INV.nodes():
        get_enforcer(backend, netns=lab.node_netns(node)).apply(compiler.compile(node))


def mismatches(lab: Lab, policies: PolicySet, inventory: Inventory = INV) -> list[str]:
    observed = probe_matrix(lab, inventory)
    ev = Evaluator(policies, inventory)
    ips = {ep.key: {ip.version: ip for ip in ep.ips} for ep in inventory.endpoints}
    out = []
    for (src, dst, family, port, proto), ok in sorted(observed.items()):
        expected = ev.allowed(ips[src][family], ips[dst][family], port, proto)  # type: ignore[arg-type]
        if ok != expected:
            out.append(f"{src} -> {dst} IPv{family} {port}/{proto}: observed {ok}, expected {expected}")
    assert len(observed) == 9 * 8 * 4 * 2, "every pair, port and family was probed"
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_matches_evaluator(lab: Lab, backend: str, scenario: Path) -> None:
    clear(lab)
    policies = load_policies(scenario)
    apply_everywhere(lab, policies, backend)
    assert mismatches(lab, policies) == []


def test_without_policies_everything_flows(lab: Lab) -> None:
    clear(lab)
    assert all(probe_matrix(lab, INV, families=(4,)).values())


def test_scenarios_are_not_trivial() -> None:
    """Each scenario both allows and denies something, or the e2e test proves little."""
    ips = [(ep.key, str(ep.ips[0])) for ep in INV.endpoints]
    for scenario in SCENARIOS:
        ev = Evaluator(load_policies(scenario), INV)
        verdicts = {ev.allowed(s, d, port, proto)
                    for _, s in ips for _, d in ips if s != d for port in (80, 81) for proto in ("TCP", "UDP")}
        assert verdicts == {True, False}, scenario.name


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callgate", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_bad_input_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    clear(lab)
    good = SCENARIOS[1]
    netns = lab.node_netns("node-1")
    first = cli("apply", "-i", str(STANDARD_INVENTORY), "-p", str(good), "--node", "node-1", "--netns", netns)
    assert first.returncode == 0, first.stderr
    before = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "callgate"],
                            capture_output=True, text=True, check=True).stdout
    bad = write(tmp_path, "bad.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: broken, namespace: x}
        spec:
          podSelector: {}
          ingress:
            - ports: [{port: http, endPort: 90}]
    """)
    result = cli("apply", "-i", str(STANDARD_INVENTORY), "-p", str(good), "-p", str(bad), "--node", "node-1",
                 "--netns", netns)
    assert result.returncode == 1
    assert f"{bad}:7:" in result.stderr and "NetworkPolicy x/broken" in result.stderr
    assert "endPort needs a numeric port" in result.stderr
    assert "Traceback" not in result.stderr
    after = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "callgate"],
                           capture_output=True, text=True, check=True).stdout
    assert after == before
    again = cli("apply", "-i", str(STANDARD_INVENTORY), "-p", str(good), "--node", "node-1", "--netns", netns)
    assert again.returncode == 0 and "unchanged" in again.stderr


def test_switching_policies_is_atomic_and_complete(lab: Lab) -> None:
    """Apply one scenario, then another on top: the second fully replaces the
    first (no leftovers from the old table)."""
    clear(lab)
    apply_everywhere(lab, load_policies(SCENARIOS[0]), "nft")
    second = load_policies(SCENARIOS[5])
    apply_everywhere(lab, second, "nft")
    assert mismatches(lab, second) == []
