"""callgate test: connectivity expectations beside the policies, checked like CI needs."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from callgate.analysis.conntest.check import Checker
from callgate.analysis.conntest.spec import load_expectations, parse_line, parse_selector
from callgate.cli.main import app
from callgate.errors import InputError
from callgate.policy import Evaluator, load_inventory
from callgate.policy.model import Inventory, PolicySet
from tests.helpers import ROOT, SHOP, STANDARD_INVENTORY, write
from tests.netns import host_interfaces
from tests.strategies import NAMESPACES, inventories, policy_sets

SHOP_ARGS = ["-i", str(SHOP / "inventory.yaml"), "-p", str(SHOP / "apps.yaml")]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["test", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_shop_example_holds() -> None:
    code, out, _ = run(*SHOP_ARGS, str(SHOP / "connectivity.cgtest"))
    assert code == 0 and out.splitlines()[-1] == "7 expectation(s): 7 passed, 0 failed"


def test_a_failure_names_its_line_and_explains_the_verdict(tmp_path: Path) -> None:
    cases = write(tmp_path, "shop.cgtest", """
        # the ledger must be reachable from the storefront (it is not)
        edge/storefront -> shop/ledger 9090: allow
        shop/cart -> shop/ledger: allow
        """)
    code, out, _ = run(*SHOP_ARGS, str(cases))
    lines = out.splitlines()
    assert code == 1
    assert lines[0] == f"{cases}:2: FAIL  edge/storefront -> shop/ledger 9090: allow"
    assert lines[1] == "    edge/storefront -> shop/ledger 9090/TCP (IPv4, IPv6): DENIED, expected allow"
    assert "App shop/ledger (examples/shop/apps.yaml:28:18): no ingress rule matches; nearest:" in out \
        or f"App shop/ledger ({SHOP / 'apps.yaml'}:28:18): no ingress rule matches; nearest:" in out
    assert "allows 9090/TCP, but from pods app=cart in namespace shop, not edge/storefront" in out
    assert lines[-2].startswith(f"{cases}:3: ok    shop/cart -> shop/ledger: allow  (2 pairs, IPv4, IPv6)")
    assert lines[-1] == "2 expectation(s): 1 passed, 1 failed"


def test_except_and_selectors(tmp_path: Path) -> None:
    """except flips the verdict for the sources it names; a selector that selects nothing
    fails the expectation instead of passing it vacuously."""
    cases = write(tmp_path, "c.cgtest", """
        * -> shop/ledger 9090: deny except shop/cart
        * -> shop/ledger 9090: deny except app=cart
        * -> shop/ledger 9090: deny
        shop/* -> shop/cart-1: deny except shop/cart-2
        ledger -> shop/cart: deny
        nosuch/app -> shop/ledger: deny
        198.18.0.9 -> edge/storefront 80/TCP: allow
        198.18.20.30 -> edge/storefront 80/TCP: deny
        """)
    code, out, _ = run(*SHOP_ARGS, str(cases))
    verdicts = [line.split()[1] for line in out.splitlines() if line.startswith(str(cases))]
    assert code == 1
    assert verdicts == ["ok", "ok", "FAIL", "FAIL", "ok", "FAIL", "ok", "ok"]
    assert "source nosuch/app selects no endpoint of the inventory" in out
    assert "shop/cart-2 -> shop/cart-1" in out  # cart-2 reaches cart-1? no: excepted, so expected allow


def test_syntax_errors_are_all_reported_with_their_line(tmp_path: Path) -> None:
    a = write(tmp_path, "a.cgtest", "x/a -> x/b 80: allow\nx/a => x/b: deny\n* -> *: maybe\n")
    b = write(tmp_path, "b.cgtest", "x/a -> x/b 99999: allow\nx/a -> x/b 80/ICMP: deny\n")
    with pytest.raises(InputError) as err:
        load_expectations([str(a), str(b)])
    assert [str(p) for p in err.value.problems] == [
        f"{a}:2: expected SOURCE -> DESTINATION [PORTS]: allow|deny [except SOURCE, ...]",
        f"{a}:3: the verdict is allow or deny, not 'maybe'",
        f"{b}:1: port '99999': ports run from 1 to 65535, low to high",
        f"{b}:2: port '80/ICMP': the protocol must be one of TCP, UDP, SCTP",
    ]
    code, _, err_text = run("-i", str(STANDARD_INVENTORY), "-p", str(STANDARD_INVENTORY), str(a), str(b))
    assert code == 1 and err_text.count("error: ") == 4


def test_selectors_parse() -> None:
    assert parse_selector("shop/cart").name == "cart"
    assert parse_selector("shop/*").namespace == "shop" and parse_selector("shop/*").name is None
    labels = parse_selector("x/app=web,tier!=db,canary,!legacy").labels
    assert labels is not None and labels.canonical() == "!legacy,app=web,canary,tier notin (db)"
    assert str(parse_selector("fd00::1").ip) == "fd00::1"
    line = parse_line("f", 1, "fd00::1 -> fd00::2 53/UDP, 8000-8100: allow  # v6")
    assert line is not None and [p.text() for p in line.ports] == ["53/UDP", "8000-8100/TCP"]
    with pytest.raises(ValueError):
        parse_selector("x/app=b a d")


def test_junit_and_sarif(tmp_path: Path) -> None:
    cases = write(tmp_path, "c.cgtest", "edge/storefront -> shop/ledger 9090: allow\n* -> shop/batch: deny\n")
    code, out, _ = run(*SHOP_ARGS, str(cases), "--format", "junit")
    suite = ET.fromstring(out).find("testsuite")
    assert code == 1 and suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("line") for c in failed] == ["1"] and "nearest:" in (failed[0].find("failure").text or "")  # type: ignore[union-attr]
    code, out, _ = run(*SHOP_ARGS, str(cases), "--format", "sarif")
    doc = json.loads(out)
    jsonschema.validate(doc, json.loads((ROOT / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text()))
    results = doc["runs"][0]["results"]
    assert code == 1 and len(results) == 1
    assert results[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 1


# -- the class shortcut against every pair ------------------------------------------------------

PORTS = ((80, "TCP"), (53, "UDP"), (81, "TCP"))


@st.composite
def expectations(draw: st.DrawFn) -> str:
    def side() -> str:
        return draw(st.sampled_from(["*", *(f"{ns}/*" for ns in NAMESPACES), "app=a", "x/tier=b", "tier", "!app"]))

    port = draw(st.sampled_from([f"{p}/{proto}" for p, proto in PORTS]))
    verdict = draw(st.sampled_from(["allow", "deny"]))
    exception = draw(st.sampled_from(["", " except app=b", " except y/*"]))
    return f"{side()} -> {side()} {port}: {verdict}{exception}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets(), expectations())
def test_checker_equals_every_pair(inv: Inventory, ps: PolicySet, text: str) -> None:
    """Checking one representative per class pair finds exactly the pod pairs that every
    pair evaluated one by one would."""
    exp = parse_line("t", 1, text)
    assert exp is not None
    outcome = Checker(inv, ps).check(exp)
    if outcome.problem:
        assert "selects no endpoint" in outcome.problem or "no pair" in outcome.problem
        return
    ev = Evaluator(ps, inv)
    failed = 0
    for family in (4, 6):
        for s in inv.endpoints:
            if not exp.sources.matches(s):
                continue
            for d in inv.endpoints:
                if s.key == d.key or not exp.destinations.matches(d):
                    continue
                si = next(i for i in s.ips if i.version == family)
                di = next(i for i in d.ips if i.version == family)
                for r in exp.ports:
                    failed += ev.allowed(si, di, r.lo, r.protocol) != exp.expected(s, si)
    assert outcome.failed_pairs == failed


# -- against a node's live table -------------------------------------------------------------------


@pytest.mark.kernel
def test_live_table_in_sync_and_drifted(netns: str) -> None:
    """--live: the node's table must be what the policies compile to; then the expectations
    hold on it for the pairs the node enforces. A tampered table fails with its diff."""
    host_interfaces(netns, [ep.interface for ep in load_inventory(SHOP / "inventory.yaml").endpoints
                            if ep.node == "node-1" and ep.interface])  # the node's veths: apply refuses absent ones
    applied = CliRunner().invoke(app, ["apply", *SHOP_ARGS, "--node", "node-1", "--netns", netns])
    assert applied.exit_code == 0, applied.output
    live = [*SHOP_ARGS, "--live", "--node", "node-1", "--netns", netns]
    code, out, err = run(*live, str(SHOP / "connectivity.cgtest"))
    assert code == 0, out + err
    assert "skip  shop/cart -> shop/ledger: allow" not in out  # cart-1 is on node-1
    cases = write(Path(f"/tmp/{netns}.d"), "ledger.cgtest", "shop/ledger -> shop/cart-2 8080: deny\n")
    try:
        code, out, _ = run(*live, str(cases))
        assert code == 0 and "skip  shop/ledger -> shop/cart-2 8080: deny  (no pair of it has an endpoint on " \
            "node-1)" in out
    finally:
        cases.unlink()
        cases.parent.rmdir()
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "callgate"], check=True)
    code, _, err = run(*live, str(SHOP / "connectivity.cgtest"))
    assert code == 1 and "the live table on node-1 (nft) is not what these policies compile to" in err
