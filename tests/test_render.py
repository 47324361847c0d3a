"""Pictures and tables: golden DOT/SVG/CSV/JSON, a real PNG, and the 10,000-pod speed target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    from callgate.analysis.connectivity import Connectivity, Partition
    from callgate.analysis.groups import group_matrix

    inv, ps = to_model(generate(Spec(pods=10000, policies=1000)))
    start = time.monotonic()
    part = Partition(inv, [ps], 4)
    conn = Connectivity(part, ps)
    gm = group_matrix(conn, [(80, "TCP")], "app")  # the 39 largest apps and one for the rest
    took = time.monotonic() - start
    n = len(part.endpoints)
    pairs = sum(gm.pairs(i, j) for i in range(len(gm.groups)) for j in range(len(gm.groups)))
    assert n == 10000 and pairs == n * (n - 1)  # every ordered pair of distinct pods counted once
    assert 0 < gm.allowed.sum() < pairs
    assert took < 20, f"took {took:.1f}s"


# -- every view says the same thing --------------------------------------------------------------


def test_self_cells_agree_in_every_view() -> None:
    """A one-pod group has no pair with itself, and text, CSV, JSON and the heatmap all say
    so; a two-pod group whose pods may not reach each other is denied in all of them."""
    args = ["matrix", *SHOP, "-g", "app", "--port", "8080/TCP"]
    text = run(*args).splitlines()
    csv_rows = {(r.split(",")[0], r.split(",")[1]): r.split(",")[3:] for r in run(*args, "--format", "csv").splitlines()}
    data = json.loads(run(*args, "--format", "json"))["matrix"]["8080/TCP"]
    svg = run("graph", *SHOP, "--kind", "heatmap", "--format", "svg", "-g", "app", "--port", "8080/TCP")
    assert text[2].split()[1:] == ["edge/storefront", "—", "✗", "✓", "✗"]
    assert text[4].split()[1:] == ["shop/cart", "✗", "✗", "✗", "✗"]
    assert csv_rows[("edge/storefront", "edge/storefront")] == ["none", "0", "0"]
    assert csv_rows[("shop/cart", "shop/cart")] == ["false", "0", "2"]
    assert data["edge/storefront"]["edge/storefront"] is None and data["shop/cart"]["shop/cart"] is False
    assert "edge/storefront -&gt; edge/storefront: no pod pairs (one pod, which always reaches itself)" in svg
    assert "shop/cart -&gt; shop/cart: 0% of (pod pair, served port) allowed" in svg


def test_heatmap_counts_only_the_ports_a_destination_serves() -> None:
    """storefront may call cart on every port cart serves: 100%, not 1 of 4 ports = 25%."""
    svg = run("graph", *SHOP, "--kind", "heatmap", "--format", "svg", "-g", "app")
    assert "edge/storefront -&gt; shop/cart: 100% of (pod pair, served port) allowed" in svg
    assert "shop/cart -&gt; shop/ledger: 100% of (pod pair, served port) allowed" in svg
    assert "shop/batch -&gt; shop/cart: 0% of (pod pair, served port) allowed" in svg


MUTUAL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: {dst}}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {src}}}}}}}], ports: [{{port: {port}, protocol: TCP}}]}}]
"""


def _edges(tmp_path: Path, ports: tuple[int, int]) -> tuple[str, list[tuple[float, float, float]]]:
    """The DOT graph and the label boxes (x, y, width) of the SVG for x/a <-> x/b on ``ports``."""
    policy = tmp_path / "p.yaml"
    policy.write_text("---".join([
        MUTUAL.format(name="a-from-b", dst="a", src="b", port=ports[0]),
        MUTUAL.format(name="b-from-a", dst="b", src="a", port=ports[1]),
        MUTUAL.format(name="c", dst="c", src="nobody", port=80)]))
    args = ["graph", "-i", "examples/standard/inventory.yaml", "-p", str(policy), "-g", "endpoint",
            "--port", "80/TCP", "--port", "81/TCP"]
    dot = run(*args, "--format", "dot")
    svg = ET.fromstring(run(*args, "--format", "svg"))
    boxes = []
    for group in svg.iter("{http://www.w3.org/2000/svg}g"):
        rect, text = group.find("{http://www.w3.org/2000/svg}rect"), group.find("{http://www.w3.org/2000/svg}text")
        path = group.find("{http://www.w3.org/2000/svg}path")
        if path is not None and rect is not None and text is not None and text.text in ("80/TCP", "81/TCP"):
            boxes.append((float(rect.get("x", 0)), float(rect.get("y", 0)), float(rect.get("width", 0))))
    return dot, boxes


def test_call_graph_both_directions(tmp_path: Path) -> None:
    """Two apps that call each other on the same ports are one two-headed arrow; on
    different ports, two arrows whose labels do not cover each other."""
    dot, boxes = _edges(tmp_path, (80, 80))
    assert '"x/a" -> "x/b" [label="80/TCP", dir=both];' in dot and '"x/b" -> "x/a"' not in dot
    dot, boxes = _edges(tmp_path, (80, 81))
    assert '"x/b" -> "x/a" [label="80/TCP"];' in dot and '"x/a" -> "x/b" [label="81/TCP"];' in dot
    (x1, y1, w1), (x2, y2, w2) = boxes
    assert abs(y1 - y2) >= 14 or x1 + w1 <= x2 or x2 + w2 <= x1, "the two labels overlap"


def test_piped_matrix_keeps_whole_names(tmp_path: Path) -> None:
    """Through a pipe (80 columns or none), group names are printed whole, never 'shop/cart…'."""
    long_ns = "a-namespace-with-a-rather-long-name"
    inventory = tmp_path / "inv.yaml"
    inventory.write_text((ROOT / "examples/shop/inventory.yaml").read_text().replace("shop", long_ns))
    apps = tmp_path / "apps.yaml"
    apps.write_text((ROOT / "examples/shop/apps.yaml").read_text().replace("shop", long_ns))
    exe = str(Path(sys.executable).with_name("callgate"))
    out = subprocess.run([exe, "matrix", "-i", str(inventory), "-p", str(apps), "-g", "app", "--port", "8080"],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, check=True).stdout
    assert f"{long_ns}/ledger" in out and f"{long_ns}/cart" in out and "…" not in out


def test_explain_names_the_deciding_tier_policy_priority_and_rule() -> None:
    std = ["-i", "examples/standard/inventory.yaml", "-p", "tests/scenarios/08-admin-tier.yaml"]
    text = run("explain", *std, "z/a", "x/b", "80/TCP")
    assert "DENIED" in text
    assert ("ingress of destination: Admin tier: denied by ClusterNetworkPolicy tenant-x (Admin tier, priority 10) "
            "ingress[1] 'no-z'") in text
    assert ("'no-z' is written at tests/scenarios/08-admin-tier.yaml:29:7 (ClusterNetworkPolicy tenant-x "
            "spec.ingress[1])") in text
    assert "nearest" not in text  # a cluster tier's denial is its rule, not NetworkPolicy's near misses
    data = json.loads(run("explain", *std, "y/b", "x/a", "80/TCP", "--format", "json"))
    side = data["ingress"]
    assert data["allowed"] is True and side["decided_by"] == "NetworkPolicy"
    assert side["admin"] == {"tier": "Admin", "action": "Pass", "policy": "ClusterNetworkPolicy tenant-x",
                             "priority": 10, "direction": "Ingress", "rule": 2, "rule_name": "y-decides",
                             "fail_closed": False, "file": "tests/scenarios/08-admin-tier.yaml",
                             "where": {"object": "ClusterNetworkPolicy tenant-x", "field": "spec.ingress[2]",
                                       "file": "tests/scenarios/08-admin-tier.yaml", "line": 32, "column": 7}}
    assert side["baseline"] is None
    assert side["allowed_by"][0]["policy"] == "NetworkPolicy x/web-from-anywhere"
