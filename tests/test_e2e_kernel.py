"""End to end on the real kernel: the standard model in a two-node lab, on every topology.

For every scenario in tests/scenarios/ and every backend, compile for each
node, apply inside that node's network namespace (and, in the macvlan lab,
inside each pod's), send real TCP and UDP probes between all nine pods over
IPv4 and IPv6 (576 probes), and require the observed matrix to equal the
reference evaluator's.

Every topology of the lab (routed, bridge, macvlan) runs with both backends:
the routed lab with every scenario, the others with a seeded sample of
:data:`SAMPLE` scenarios per backend, so the suite's time stays in check.
``CALLGATE_E2E_SEED`` picks another sample (CI can rotate it);
``CALLGATE_E2E_FULL=1`` runs every scenario everywhere.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callgate.compiler import Compiler
from callgate.enforcers import get_enforcer
from callgate.lab import Lab, probe_matrix
from callgate.lab.topology import TOPOLOGIES
from callgate.policy import Evaluator, Inventory, PolicySet, load_policies
from tests.helpers import ROOT, STANDARD_INVENTORY, standard, write

pytestmark = pytest.mark.kernel

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.yaml"))
BACKENDS = ("nft", "iptables")
INV = standard()
FULL_TOPOLOGY = "routed"
SAMPLE = 3
SEED = os.environ.get("CALLGATE_E2E_SEED", "11")
PREFIX = {"routed": "cge", "bridge": "cgeb", "macvlan": "cgem"}


def cases() -> list[object]:
    """(topology, backend, scenario): everything on the routed lab, a seeded sample elsewhere."""
    full = os.environ.get("CALLGATE_E2E_FULL") == "1"
    out: list[object] = []
    for topology in TOPOLOGIES:
        for backend in BACKENDS:
            chosen = SCENARIOS if full or topology == FULL_TOPOLOGY else sorted(
                random.Random(f"{SEED}/{topology}/{backend}").sample(SCENARIOS, SAMPLE))
            out.extend(pytest.param(topology, backend, scenario, id=f"{topology}-{backend}-{scenario.stem}")
                       for scenario in chosen)
    return out


@dataclass
class Running:
    lab: Lab
    inventory: Inventory  # as the lab built it (macvlan: each pod's netns, no interface)
    topology: str

    def node_netns(self, node: str) -> str:
        return self.lab.node_netns(node)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Running]:
    topology = request.param
    with Lab(PREFIX[topology]).running(INV, topology) as running:
        state = running.load_state()
        assert state is not None
        yield Running(running, state.inventory(INV), topology)


def clear(lab: Running) -> None:
    """Remove what any backend left behind, so each case starts from nothing."""
    for node in INV.nodes():
        pods = sorted(ep.netns for ep in lab.inventory.endpoints if ep.node == node and ep.netns and not ep.interface)
        for backend in BACKENDS:
            enforcer = get_enforcer(backend, netns=lab.node_netns(node))
            for netns in pods:  # in the macvlan lab callgate's tables are in the pods' namespaces
                enforcer.part(netns)
            enforcer.remove()
            enforcer.close()


def apply_everywhere(lab: Running, policies: PolicySet, backend: str) -> None:
    compiler = Compiler(policies, lab.inventory)
    for node in INV.nodes():
        enforcer = get_enforcer(backend, netns=lab.node_netns(node))
        enforcer.apply(compiler.compile(node))
        enforcer.close()


def mismatches(lab: Running, policies: PolicySet, inventory: Inventory | None = None) -> list[str]:
    inventory = inventory or lab.inventory
    observed = probe_matrix(lab.lab, inventory)
    ev = Evaluator(policies, inventory)
    ips = {ep.key: {ip.version: ip for ip in ep.ips} for ep in inventory.endpoints}
    out = []
    for (src, dst, family, port, proto), ok in sorted(observed.items()):
        expected = ev.allowed(ips[src][family], ips[dst][family], port, proto)  # type: ignore[arg-type]
        if ok != expected:
            out.append(f"{src} -> {dst} IPv{family} {port}/{proto}: observed {ok}, expected {expected}")
    assert len(observed) == 9 * 8 * 4 * 2, "every pair, port and family was probed"
    return out


@pytest.mark.parametrize(("lab", "backend", "scenario"), cases(), indirect=["lab"])
def test_scenario_matches_evaluator(lab: Running, backend: str, scenario: Path) -> None:
    clear(lab)
    policies = load_policies(scenario)
    apply_everywhere(lab, policies, backend)
    assert mismatches(lab, policies) == []


@pytest.mark.parametrize("lab", TOPOLOGIES, indirect=True)
def test_without_policies_everything_flows(lab: Running) -> None:
    clear(lab)
    assert all(probe_matrix(lab.lab, lab.inventory, families=(4,)).values())


def test_the_sample_is_seeded_and_covers_every_topology_and_backend() -> None:
    chosen = [p.values for p in cases()]  # type: ignore[attr-defined]
    assert chosen == [p.values for p in cases()]  # type: ignore[attr-defined]
    assert {(t, b) for t, b, _ in chosen} == {(t, b) for t in TOPOLOGIES for b in BACKENDS}
    assert {s for t, _, s in chosen if t == FULL_TOPOLOGY} == set(SCENARIOS)


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


@pytest.mark.parametrize("lab", [FULL_TOPOLOGY], indirect=True)
def test_cli_bad_input_changes_nothing(lab: Running, tmp_path: Path) -> None:
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


@pytest.mark.parametrize("lab", [FULL_TOPOLOGY], indirect=True)
def test_switching_policies_is_atomic_and_complete(lab: Running) -> None:
    """Apply one scenario, then another on top: the second fully replaces the
    first (no leftovers from the old table)."""
    clear(lab)
    apply_everywhere(lab, load_policies(SCENARIOS[0]), "nft")
    second = load_policies(SCENARIOS[5])
    apply_everywhere(lab, second, "nft")
    assert mismatches(lab, second) == []
