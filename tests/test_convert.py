"""convert: App <-> NetworkPolicy, checked through the evaluator (same matrix before and after)."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

from callgate.analysis.connectivity import Connectivity, Partition
from callgate.analysis.convert import dump_documents, network_policy_dict, to_apps
from callgate.cli.main import app
from callgate.policy import Inventory, PolicySet, load_inventory, load_policies
from tests.golden_util import check_golden
from tests.helpers import SHOP, write
from tests.strategies import inventories, policy_sets

PORTS = [(53, "UDP"), (80, "TCP"), (81, "TCP"), (81, "UDP"), (8080, "TCP"), (9090, "TCP"), (9125, "UDP"), (1, "SCTP")]


def same_matrix(inv: Inventory, a: PolicySet, b: PolicySet) -> None:
    for family in (4, 6):
        part = Partition(inv, [a, b], family)
        ca, cb = Connectivity(part, a), Connectivity(part, b)
        for seg in part.segments():
            assert (ca.matrix(seg.protocol, seg.lo) == cb.matrix(seg.protocol, seg.lo)).all(), (family, seg)


def reload(tmp: Path, text: str) -> PolicySet:
    path = tmp / "converted.yaml"
    path.write_text(text)
    return load_policies(path)


def test_shop_apps_to_networkpolicy_and_back(tmp_path: Path) -> None:
    inv = load_inventory(SHOP / "inventory.yaml")
    apps = load_policies(SHOP / "apps.yaml")
    nps = reload(tmp_path, dump_documents([network_policy_dict(p) for p in apps.policies]))
    assert {p.kind for p in nps.policies} == {"NetworkPolicy"}
    same_matrix(inv, apps, nps)
    back = to_apps(nps.policies)
    assert not back.kept, back.reasons  # App -> NP -> App is exact
    again = reload(tmp_path, dump_documents(back.apps))
    assert {p.kind for p in again.policies} == {"App"}
    same_matrix(inv, apps, again)


def test_cli_convert_golden() -> None:
    result = CliRunner().invoke(app, ["convert", "--to", "networkpolicy", str(SHOP / "apps.yaml")])
    assert result.exit_code == 0, result.output
    check_golden("convert-shop-networkpolicy.yaml", result.stdout)


def test_inexpressible_policy_is_kept_with_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "np.yaml", """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
            ports: [{port: serve-80-tcp, protocol: TCP}]
        """)
    result = CliRunner().invoke(app, ["convert", "--to", "app", str(path), "--strict"])
    assert result.exit_code == 1
    assert "kept as NetworkPolicy: x/web: ingress port serve-80-tcp/TCP is a named port" in result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in docs] == ["NetworkPolicy"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets())
def test_round_trip_keeps_matrix(tmp_path_factory: object, inv: Inventory, ps: PolicySet) -> None:
    """NP -> YAML -> load is exact; NP -> App (+ kept NPs) has the same matrix; App -> NP too."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        nps = reload(Path(tmp), dump_documents([network_policy_dict(p) for p in ps.policies]))
        same_matrix(inv, ps, nps)
        conv = to_apps(nps.policies)
        mixed = reload(Path(tmp), dump_documents(conv.apps + [network_policy_dict(p) for p in conv.kept]))
        same_matrix(inv, ps, mixed)
        back = reload(Path(tmp), dump_documents([network_policy_dict(p) for p in mixed.policies]))
        same_matrix(inv, ps, back)


def test_cluster_policies_pass_through_and_the_tiers_keep_the_matrix(tmp_path: Path) -> None:
    """ClusterNetworkPolicies are neither NetworkPolicy nor App: convert passes them
    through (as v1alpha2), and keeps as NetworkPolicy what an App would change
    because of them (an App isolates both directions, which keeps the Baseline tier
    away from its pods)."""
    from tests.helpers import standard

    inv = standard()
    scenarios = Path(__file__).parent / "scenarios"
    for name in ("08-admin-tier", "09-baseline-tier", "10-apps-and-fail-closed"):
        source = load_policies(scenarios / f"{name}.yaml")
        for to in ("app", "networkpolicy"):
            result = CliRunner().invoke(app, ["convert", "--to", to, str(scenarios / f"{name}.yaml")])
            assert result.exit_code == 0, result.output
            converted = reload(tmp_path, result.stdout)
            assert sorted((p.tier, p.priority, p.subject, p.ingress, p.egress) for p in converted.cluster) == \
                sorted((p.tier, p.priority, p.subject, p.ingress, p.egress) for p in source.cluster), (name, to)
            same_matrix(inv, source, converted)
    kept = CliRunner().invoke(app, ["convert", "--to", "app", str(scenarios / "09-baseline-tier.yaml")])
    assert "has ingress rules in the Baseline tier" in kept.stderr
