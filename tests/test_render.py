"""Pictures and tables: golden DOT/SVG/CSV/JSON, a real PNG, and the 10,000-pod speed target."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callgate.cli.main import app
from tests.golden_util import check_golden
from tests.helpers import ROOT

SHOP = ["-i", "examples/shop/inventory.yaml", "-p", "examples/shop/apps.yaml"]


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_graph_dot_and_svg_golden(tmp_path: Path) -> None:
    check_golden("shop-calls.dot", run("graph", *SHOP, "--format", "dot"))
    svg = run("graph", *SHOP, "--format", "svg")
    check_golden("shop-calls.svg", svg)
    root = ET.fromstring(svg)  # well-formed XML
    texts = "".join(root.itertext())
    assert "shop/cart (2)" in texts and "9090/TCP, 9125/UDP" in texts


def test_heatmap_svg_golden() -> None:
    svg = run("graph", *SHOP, "--kind", "heatmap", "--format", "svg", "-g", "endpoint")
    check_golden("shop-heatmap.svg", svg)
    ET.fromstring(svg)


def test_png_is_a_png(tmp_path: Path) -> None:
    for kind in ("calls", "heatmap"):
        out = tmp_path / f"{kind}.png"
        run("graph", *SHOP, "--kind", kind, "-o", str(out))
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_matrix_formats_golden() -> None:
    std = ["-i", "examples/standard/inventory.yaml", "-p", "tests/scenarios/03-namespace-and-pod.yaml"]
    check_golden("matrix-standard.csv", run("matrix", *std, "--port", "80/TCP", "--format", "csv"))
    data = json.loads(run("matrix", *std, "--port", "80/TCP", "--format", "json"))
    check_golden("matrix-standard.json", json.dumps(data, indent=2) + "\n")
    # Hand-checked against tests/test_semantics.py: y/a -> x/a allowed, x/b -> x/a denied.
    assert data["matrix"]["80/TCP"]["y/a"]["x/a"] is True and data["matrix"]["80/TCP"]["x/b"]["x/a"] is False
    check_golden("matrix-shop-app.txt", run("matrix", *SHOP, "-g", "app", "--port", "8080/TCP"))


def test_explain_json_golden() -> None:
    out = run("explain", *SHOP, "shop/cart-1", "shop/ledger", "9125/UDP", "--format", "json")
    check_golden("explain-cart-ledger.json", out)
    assert json.loads(out)["allowed"] is True
    outside = json.loads(run("explain", *SHOP, "edge/storefront", "203.0.113.9", "443", "--format", "json"))
    assert outside["allowed"] is False and outside["ingress"]["endpoint"] is None


def test_ten_thousand_pods_in_seconds() -> None:
    """The issue's scale target: 10,000 pods / 1,000 policies, grouped matrix for one port."""
    from bench.synth import Spec, generate, to_model
    from callgate.analysis.connectivity import Connectivity, Partition, group_matrix

    inv, ps = to_model(generate(Spec(pods=10000, policies=1000)))
    start = time.monotonic()
    part = Partition(inv, [ps], 4)
    conn = Connectivity(part, ps)
    gm = group_matrix(conn, [(80, "TCP")], "app")
    took = time.monotonic() - start
    n = len(part.endpoints)
    assert n == 10000 and gm.totals.sum() == n * (n - 1)  # every ordered pair of distinct pods counted once
    assert 0 < gm.allowed.sum() < gm.totals.sum()
    assert took < 20, f"took {took:.1f}s"


def test_explain_names_the_deciding_tier_policy_priority_and_rule() -> None:
    std = ["-i", "examples/standard/inventory.yaml", "-p", "tests/scenarios/08-admin-tier.yaml"]
    text = run("explain", *std, "z/a", "x/b", "80/TCP")
    assert "DENIED" in text
    assert ("ingress of destination: Admin tier: denied by ClusterNetworkPolicy tenant-x (Admin tier, priority 10) "
            "ingress[1] 'no-z'") in text
    assert "is in tests/scenarios/08-admin-tier.yaml, document 2" in text
    data = json.loads(run("explain", *std, "y/b", "x/a", "80/TCP", "--format", "json"))
    side = data["ingress"]
    assert data["allowed"] is True and side["decided_by"] == "NetworkPolicy"
    assert side["admin"] == {"tier": "Admin", "action": "Pass", "policy": "ClusterNetworkPolicy tenant-x",
                             "priority": 10, "direction": "Ingress", "rule": 2, "rule_name": "y-decides",
                             "fail_closed": False, "file": "tests/scenarios/08-admin-tier.yaml"}
    assert side["allowed_by"][0]["policy"] == "NetworkPolicy x/web-from-anywhere"
