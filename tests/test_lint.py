"""lint: every rule has a positive and a negative example; formats, config, suppression, exit codes."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from callgate.analysis import connectivity
from callgate.analysis.lint.checks import redundancy
from callgate.analysis.lint.config import LintConfig
from callgate.analysis.lint.rules import BY_ID, RULES, Severity, rules_markdown
from callgate.analysis.lint.run import lint
from callgate.cli.main import app
from callgate.errors import ProblemCode
from callgate.policy.model import Endpoint, Inventory
from tests.golden_util import check_golden
from tests.helpers import ROOT, STANDARD_INVENTORY, standard, write

HEAD = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
DENY = {ns: HEAD + f"metadata: {{name: default-deny, namespace: {ns}}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n"
        for ns in "xyz"}


def np_(name: str, ns: str, spec: str) -> str:
    return HEAD + f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n" + textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n"


def cnp(name: str, spec: str, tier: str = "Admin", priority: int = 10) -> str:
    return (f"apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n"
            f"spec:\n  tier: {tier}\n  priority: {priority}\n"
            + textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n")


X = "subject: {namespaces: {matchLabels: {ns: x}}}\n"


def app_(name: str, ns: str, spec: str) -> str:
    return (f"apiVersion: callgate/v1\nkind: App\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n")


# rule -> (bad documents, good documents). Every case is linted with the standard
# inventory and a default-deny in each namespace (so CG110 stays quiet unless tested).
CASES: dict[str, tuple[list[str], list[str]]] = {
    "CG001": ([np_("a", "x", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0}}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}}]")]),
    "CG002": (["apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\n"],
              [np_("a", "x", "podSelector: {}")]),
    "CG003": ([np_("a", "x", "podSelector: {matchLabels: {pod: a}}"), np_("a", "x", "podSelector: {matchLabels: {pod: b}}")],
              [np_("a", "x", "podSelector: {matchLabels: {pod: a}}"), np_("b", "x", "podSelector: {matchLabels: {pod: b}}")]),
    "CG004": ([np_("a", "x", "podSelector: {}\negress:\n- ports: [{port: http, endPort: 90}]")],
              [np_("a", "x", "podSelector: {}\negress:\n- ports: [{port: 80, endPort: 90, protocol: TCP}]")]),
    "CG005": ([app_("web", "x", "selector: {matchLabels: {pod: a}}\ncallers: [{app: nosuch}]")],
              [app_("web", "x", "selector: {matchLabels: {pod: a}}\ncallers: [{app: cli}]"),
               app_("cli", "x", "selector: {matchLabels: {pod: b}}")]),
    "CG101": ([np_("a", "x", "podSelector: {matchExpressions: [{key: pod, operator: In, values: [q]}]}")],
              [np_("a", "x", "podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}")]),
    "CG102": ([np_("a", "x", "podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {pod: zz}}}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {pod: a}}}]")]),
    "CG103": ([np_("a", "x", "podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {name: y}}}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- from: [{namespaceSelector: {matchLabels: {ns: y}}}]")]),
    "CG104": ([np_("a", "x", "podSelector: {}\ningress:\n- ports: [{port: serve-80-tcp, protocol: UDP}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- ports: [{port: serve-80-udp, protocol: UDP}]")]),
    "CG105": ([np_("a", "x", "podSelector: {}\npolicyTypes: [Egress]\ningress:\n- {}\negress:\n- {}")],
              [np_("a", "x", "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress:\n- {}\negress:\n- {}")]),
    "CG106": ([np_("a", "x", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: '::/0'}}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 'fd00::/64'}}]")]),
    "CG107": ([np_("a", "x", "podSelector: {}\ningress:\n- from: [{podSelector: {}}]\n- from: [{podSelector: {matchLabels: {pod: a}}}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {pod: b}}}]\n"
                   "- from: [{podSelector: {matchLabels: {pod: a}}}]")]),
    "CG108": ([np_("a", "y", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- {}")],
              [np_("a", "y", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {}}]")]),
    "CG109": ([np_("a", "x", "podSelector: {}\ningress:\n- ports: [{port: 80}]")],
              [np_("a", "x", "podSelector: {}\ningress:\n- ports: [{port: 80, protocol: TCP}]")]),
    "CG110": ([], []),  # built below: it is about the absence of a default-deny
    "CG111": ([app_("web", "x", "selector: {matchLabels: {pod: a}}\nports: [{name: http, port: 80, protocol: TCP}]")],
              [app_("web", "x", "selector: {matchLabels: {pod: a}}\nports: [{name: http, port: 80, protocol: TCP}]\n"
                    "callers: [{app: cli}]"),
               app_("cli", "x", "selector: {matchLabels: {pod: b}}")]),
    "CG112": ([cnp("a", X + "ingress:\n- {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}"),
               cnp("b", "subject: {pods: {podSelector: {matchLabels: {pod: a}}}}\n"
                   "ingress:\n- {action: Accept, from: [{pods: {podSelector: {matchLabels: {pod: b}}}}]}")],
              [cnp("a", X + "ingress:\n- {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}"),
               cnp("b", "subject: {pods: {podSelector: {matchLabels: {pod: a}}}}\n"
                   "ingress:\n- {action: Accept, from: [{pods: {podSelector: {matchLabels: {pod: b}}}}]}",
                   priority=11)]),
    "CG113": ([cnp("a", X + "egress:\n- {action: Pass, to: [{namespaces: {}}]}\n"
                   "- {action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}")],
              [cnp("a", X + "egress:\n- {action: Deny, to: [{namespaces: {matchLabels: {ns: y}}}]}\n"
                   "- {action: Pass, to: [{namespaces: {}}]}")]),
    "CG114": ([cnp("a", X + "egress:\n- {action: Deny, to: [{networks: [198.18.0.0/16]}]}")],
              [cnp("a", X + "egress:\n- {action: Pass, to: [{namespaces: {}}]}\n"
                   "- {action: Deny, to: [{networks: [198.18.0.0/16]}]}")]),
    "CG115": ([cnp("a", X + "egress:\n- {action: Pass, to: [{namespaces: {}}]}", tier="Baseline")],
              [cnp("a", X + "egress:\n- {action: Accept, to: [{namespaces: {}}]}", tier="Baseline")]),
    "CG116": ([cnp("a", X + "egress:\n- {action: Accept, to: [{domainNames: [api.example.com]}]}")],
              [cnp("a", X + "egress:\n- {action: Accept, to: [{networks: [203.0.113.10/32]}]}")]),
    "CG117": ([], []),  # built below: they are about the inventory's namespaces
    "CG118": ([], []),
}


def run(tmp: Path, docs: list[str], deny: str = "xyz", **kw: object) -> list[str]:
    text = "---\n".join(docs + [DENY[ns] for ns in deny])
    path = write(tmp, "p.yaml", text)
    return [f.rule for f in lint([path], standard(), inventory_paths=[str(STANDARD_INVENTORY)], **kw).findings]  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", [r.id for r in RULES if r.id not in ("CG110", "CG117", "CG118")])
def test_rule_positive_and_negative(tmp_path: Path, rule: str) -> None:
    bad, good = CASES[rule]
    assert rule in run(tmp_path, bad), f"{rule} not reported for its bad example"
    assert run(tmp_path, good) == [], f"good example of {rule} is not clean"


def test_default_deny_rule(tmp_path: Path) -> None:
    assert run(tmp_path, [], deny="xy") == ["CG110"]  # z has pods and no default-deny
    assert run(tmp_path, [], deny="xyz") == []


def test_cluster_tiers_in_default_deny_and_changes_nothing(tmp_path: Path) -> None:
    """CG110 and CG108 count the tiers: a Baseline Deny guards pods no NetworkPolicy
    isolates; an isolating allow-everything policy is not dead weight when,
    without it, a Baseline policy would decide."""
    baseline = cnp("guard", "subject: {namespaces: {matchLabels: {ns: z}}}\n"
                   "ingress:\n- {action: Deny, from: [{namespaces: {}}]}", tier="Baseline")
    assert run(tmp_path, [baseline], deny="xy") == []
    allow_all = np_("a", "y", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- {}")
    assert "CG108" in run(tmp_path, [allow_all])
    baseline_egress = cnp("b", "subject: {namespaces: {matchLabels: {ns: y}}}\n"
                          "egress:\n- {action: Deny, to: [{namespaces: {matchLabels: {ns: z}}}]}", tier="Baseline")
    assert run(tmp_path, [allow_all, baseline_egress]) == []


def test_enforcement_modes_of_namespaces(tmp_path: Path) -> None:
    inventory = write(tmp_path, "inventory.yaml", """
        apiVersion: callgate/v1
        kind: Inventory
        namespaces:
          x: {labels: {callgate.io/enforcement: audit}}
          y: {labels: {callgate.io/enforcement: dry-run}}
          z: {labels: {callgate.io/enforcement: enforce}}
        endpoints:
        - {name: a, namespace: x, node: n1, ips: [198.18.0.1]}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: w, annotations: {callgate.io/enforcement: Audit}}
        """)
    policies = write(tmp_path, "p.yaml", DENY["x"])
    from callgate.policy import load_inventory

    findings = lint([policies], load_inventory([inventory]), inventory_paths=[str(inventory)]).findings
    found = sorted((f.rule, f.severity.label, f.object, f.line, f.message) for f in findings)
    assert found == [
        ("CG117", "error", "Namespace w", 10, "namespace w: callgate.io/enforcement is 'Audit'; expected enforce or "
                                              "audit (treated as enforce)"),
        ("CG117", "error", "Namespace y", 5, "namespace y: callgate.io/enforcement is 'dry-run'; expected enforce or "
                                             "audit (treated as enforce)"),
        ("CG118", "info", "Namespace x", 4, "namespace x is in audit: its policies' denials are logged as would-deny "
                                            "and let through"),
    ]


def test_every_rule_has_a_case_and_docs() -> None:
    docs = (ROOT / "docs" / "lint-rules.md").read_text()
    assert docs == rules_markdown(), "docs/lint-rules.md is generated: callgate lint --explain all > docs/lint-rules.md"
    assert set(CASES) == {r.id for r in RULES}


def test_subtle_semantics(tmp_path: Path) -> None:
    """{} selects all; a podSelector peer means the policy's namespace; named ports per destination."""
    docs = [np_("a", "x", """
        podSelector: {}
        ingress:
        - from: [{podSelector: {}}]                       # all pods of x: fine
        - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]   # c anywhere: fine
        egress:
        - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
          ports: [{port: serve-81-udp, protocol: UDP}]    # resolves on y's pods
        """)]
    assert run(tmp_path, docs) == []
    wrong = write(tmp_path, "w.yaml", np_("w", "x", "podSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {nope: q}}}]"))
    found = [f for f in lint([wrong], standard()).findings if f.rule != "CG110"]
    assert found[0].rule == "CG102" and found[0].line == 7 and found[0].field == "spec.ingress[0].from[0]"


@pytest.mark.parametrize("fork_from", [0, connectivity.FORK_FROM_ENDPOINTS])
def test_redundancy_with_ipblocks_of_one_family_and_single_family_pods(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_from: int) -> None:
    """The exact redundancy checks build one partition per family from every policy's
    ipBlocks; blocks of one family only, and pods with one family only, must neither
    break them nor make an ipBlock rule look redundant (it reaches outside addresses).
    The same verdicts with the second family checked by a forked child (fork_from=0)."""
    monkeypatch.setattr(connectivity, "FORK_FROM_ENDPOINTS", fork_from)
    def only(ep: Endpoint, version: int) -> Endpoint:
        return dataclasses.replace(ep, ips=tuple(ip for ip in ep.ips if ip.version == version))

    inv = standard()
    inv = Inventory(inv.namespaces, tuple(
        only(ep, 4) if ep.key == "x/b" else only(ep, 6) if ep.key == "y/a" else ep for ep in inv.endpoints))
    docs = [np_("a", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Ingress]
        ingress:
        - from: [{ipBlock: {cidr: 'fd00:18:1::/120', except: ['fd00:18:1::11/128']}}]
        - from: [{podSelector: {}}]
        - from: [{podSelector: {matchLabels: {pod: b}}}]
        """), np_("b", "x", """
        podSelector: {matchLabels: {pod: a}}
        policyTypes: [Ingress]
        ingress:
        - from: [{ipBlock: {cidr: 198.18.0.0/16}}]
        """)]
    path = write(tmp_path, "p.yaml", "---\n".join(docs + [DENY[ns] for ns in "xyz"]))
    found = [(f.rule, f.object, f.field) for f in lint([path], inv, forks=True).findings
             if f.rule in ("CG107", "CG108")]
    # Rule 1 (all pods of x) is covered by the two blocks in both families; rule 2 allows
    # nothing over IPv6 (x/b has no IPv6 address), so it is not redundant there.
    assert found == [("CG107", "NetworkPolicy x/a", "spec.ingress[1]")]


def test_without_inventory_only_document_checks(tmp_path: Path) -> None:
    bad, _ = CASES["CG102"]
    path = write(tmp_path, "p.yaml", bad[0])
    assert [f.rule for f in lint([path]).findings] == []


def test_failing_callers_are_reported_once_where_they_are_written(tmp_path: Path) -> None:
    """Callers that cannot compile are each reported once, at their own field, and nothing
    else is: leaving caller 0 out must not shift which caller index 2 names (it used to,
    so a good caller got a phantom error and the broken one a second report)."""
    path = write(tmp_path, "apps.yaml", app_("web", "x", """
        selector: {matchLabels: {pod: a}}
        ports: [{name: http, port: 80, protocol: TCP}]
        callers:
        - {app: nosuch-0}
        - {cidr: 198.18.0.0/24, ports: [http]}
        - {app: nosuch-2}
        - {cidr: 198.18.1.0/24, ports: [http]}
        """))
    found = [(f.rule, f.field, f.line) for f in lint([path]).findings]
    assert found == [("CG005", "spec.callers[0].app", 8), ("CG005", "spec.callers[2].app", 10)]


def test_apps_keep_their_semantic_checks_however_many_callers_fail(tmp_path: Path) -> None:
    """An App with broken callers is still checked with the callers that compile, and a
    finding on a compiled rule points at the caller it came from. (Lint used to retry
    compiling three times and, when every try failed, silently check no App at all.)"""
    path = write(tmp_path, "apps.yaml", app_("web", "x", """
        selector: {matchLabels: {pod: a}}
        ports: [{name: http, port: 80, protocol: TCP}]
        callers:
        - {app: nosuch-0}
        - {cidr: 198.18.0.0/24, ports: [http]}
        - {app: nosuch-2}
        - {app: nosuch-3}
        - {app: nosuch-4}
        - {app: nosuch-5}
        - {app: nosuch-6}
        - {cidr: 198.18.0.0/24, ports: [http]}
        """))
    found = [(f.rule, f.field) for f in lint([path]).findings]
    assert found == [("CG005", f"spec.callers[{i}].app") for i in (0, 2, 3, 4, 5, 6)] + [
        ("CG107", "spec.callers[7]")]  # the second cidr caller repeats the first


def test_problems_map_to_rules_by_code_not_by_message(tmp_path: Path) -> None:
    """A problem's rule comes from the parser that found it: a label value that happens
    to spell 'endPort' is an invalid object (CG001), not an endPort misuse (CG004)."""
    path = write(tmp_path, "p.yaml", np_("a", "x", "podSelector: {matchLabels: {pod: 'endPort-'}}"))
    assert [(f.rule, f.field) for f in lint([path]).findings] == [("CG001", "spec.podSelector.matchLabels")]


def test_problem_codes_are_rules_of_the_table() -> None:
    """Every code a parser can give a problem is a documented rule about input objects."""
    for code in ProblemCode:
        rule = BY_ID[code.value]
        assert rule.severity is Severity.ERROR and not rule.needs_inventory, rule


def test_suppressions(tmp_path: Path) -> None:
    body = np_("a", "x", "podSelector: {}\ningress:\n- ports:\n  # callgate: disable=port-without-protocol\n  - {port: 80}\n  - {port: 81}")
    path = write(tmp_path, "p.yaml", body)
    assert [f.line for f in lint([path]).findings] == [10]  # only the second port
    path.write_text("# callgate: disable-file=CG109\n" + body)
    assert lint([path]).findings == []
    annotated = body.replace("metadata: {name: a, namespace: x}",
                             "metadata: {name: a, namespace: x, annotations: {callgate.io/lint-disable: CG109}}")
    path.write_text(annotated)
    assert lint([path]).findings == []
    path.write_text(body)
    assert lint([path], config=LintConfig(disable={"CG109"})).findings == []


def test_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "p.yaml", np_("a", "x", "podSelector: {}\ningress:\n- ports: [{port: 80}]"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["lint", str(path), "--fail-on", "info"]).exit_code == 1
    (tmp_path / "pyproject.toml").write_text('[tool.callgate.lint]\ndisable = ["port-without-protocol"]\n')
    assert runner.invoke(app, ["lint", str(path), "--fail-on", "info"]).exit_code == 0
    (tmp_path / ".callgate.yaml").write_text("lint:\n  severity: {CG109: error}\n")
    assert runner.invoke(app, ["lint", str(path)]).exit_code == 1
    (tmp_path / ".callgate.yaml").write_text("lint:\n  disable: [CG999]\n")
    bad = runner.invoke(app, ["lint", str(path)])
    assert bad.exit_code == 1 and "unknown lint rule 'CG999'" in bad.stderr and ".callgate.yaml" in bad.stderr


BAD = ROOT / "examples" / "lint" / "bad.yaml"
GOOD = ROOT / "examples" / "lint" / "good.yaml"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["lint", "-i", "examples/standard/inventory.yaml", *args])
    return result.exit_code, result.stdout


def test_formats_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for fmt, suffix in (("text", "txt"), ("json", "json"), ("sarif", "sarif"), ("junit", "xml")):
        code, out = cli("examples/lint/bad.yaml", "--format", fmt)
        assert code == 1
        check_golden(f"lint-bad.{suffix}", out)
    assert cli("examples/lint/good.yaml") == (0, "0 error(s), 0 warning(s), 0 info in 1 policy file and "
                                                 "1 inventory file\n")


def test_sarif_matches_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    schema = json.loads((ROOT / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())
    _, out = cli("examples/lint/bad.yaml", "--format", "sarif")
    doc = json.loads(out)
    jsonschema.validate(doc, schema)
    results = doc["runs"][0]["results"]
    assert {r["ruleId"] for r in results} >= {"CG001", "CG004", "CG102", "CG103", "CG104", "CG105", "CG106", "CG109"}
    first = results[0]["locations"][0]["physicalLocation"]
    assert first["artifactLocation"]["uri"] == "examples/lint/bad.yaml" and first["region"]["startLine"] > 0


def test_junit_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    _, out = cli("examples/lint/bad.yaml", "examples/lint/good.yaml", "--format", "junit", "--fail-on", "warning")
    root = ET.fromstring(out)
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("tests", "0")) == len(cases) and int(suite.get("failures", "0")) == len(failures)
    assert any(c.get("classname") == "examples/lint/good.yaml" and c.find("failure") is None for c in cases)
    assert {f.find("failure").get("type") for f in failures} == {"error", "warning"}  # type: ignore[union-attr]


def test_explain_and_usage_errors() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["lint", "--explain", "unresolved-named-port"])
    assert out.exit_code == 0 and out.stdout.startswith("## CG104 `unresolved-named-port` (warning)")
    assert runner.invoke(app, ["lint", "--explain", "nope"]).exit_code == 2
    assert runner.invoke(app, ["lint", "examples/lint/bad.yaml", "--format", "xml"]).exit_code == 2
    assert runner.invoke(app, ["lint", "examples/lint/bad.yaml", "--fail-on", "fatal"]).exit_code == 2
    missing = runner.invoke(app, ["lint", "does/not/exist.yaml", "also/missing"])
    assert missing.exit_code == 2 and "no such file or directory: does/not/exist.yaml, also/missing" in missing.stderr


def test_yaml_syntax_error_is_a_finding(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", "kind: [\n")
    good = write(tmp_path, "ok.yaml", np_("a", "x", "podSelector: {}\ningress:\n- ports: [{port: 80}]"))
    rules = [(Path(f.file or "").name, f.rule) for f in lint([broken, good]).findings]
    assert rules == [("broken.yaml", "CG001"), ("ok.yaml", "CG109")]  # still checks the file that parsed


def test_an_app_without_ports_gets_no_phantom_caller_error(tmp_path: Path) -> None:
    """The issue's case: an App that serves no ports, a good caller between two that fail.
    Only the failing callers are reported, once each (before #10, compile_apps removed
    entries from the list it iterated: the good caller got an error and the first broken
    one a second report)."""
    path = write(tmp_path, "apps.yaml", "---\n".join([
        app_("web", "x", """
            selector: {matchLabels: {pod: a}}
            callers:
            - {app: nosuch}
            - {app: cli}
            - {app: nosuch}
            """),
        app_("cli", "x", "selector: {matchLabels: {pod: b}}")]))
    assert [(f.rule, f.field) for f in lint([path]).findings] == [("CG005", "spec.callers[0].app"),
                                                                   ("CG005", "spec.callers[2].app")]


def test_endport_equal_to_port_is_reported_as_documented(tmp_path: Path) -> None:
    """CG004: endPort below port or after a named port is refused (error); equal to port
    it is valid Kubernetes (the API server only requires endPort >= port) and reported as
    info, in NetworkPolicies and in App egress alike."""
    path = write(tmp_path, "p.yaml", "---\n".join([
        np_("eq", "x", "podSelector: {}\negress:\n- ports: [{port: 8080, endPort: 8080, protocol: TCP}]"),
        app_("a", "x", "selector: {matchLabels: {pod: a}}\n"
                       "egress: [{cidr: 198.18.0.0/24, ports: [{port: 53, endPort: 53, protocol: UDP}]}]"),
        np_("below", "x", "podSelector: {}\negress:\n- ports: [{port: 90, endPort: 80, protocol: TCP}]")]))
    found = [(f.rule, f.severity.label, f.object, f.field) for f in lint([path]).findings if f.rule == "CG004"]
    assert found == [
        ("CG004", "info", "NetworkPolicy x/eq", "spec.egress[0].ports[0].endPort"),
        ("CG004", "info", "App x/a", "spec.egress[0].ports[0].endPort"),
        ("CG004", "error", "NetworkPolicy x/below", "spec.egress[0].ports[0]"),
    ]
    assert "equal to port (info)" in BY_ID["CG004"].summary


def test_pre_commit_hook_skips_files_that_are_not_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook gets every YAML/JSON file of a repository: CI workflows, Helm values,
    other Kubernetes kinds and JSON with comments are skipped, not CG002 errors; a
    NetworkPolicy under a wrong apiVersion is still reported."""
    repo = tmp_path / "repo"
    write(repo, ".github/workflows/ci.yml", "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n")
    write(repo, "chart/values.yaml", "replicaCount: 2\nimage: {repository: web}\n")
    write(repo, "deploy/web.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n"
          + np_("web", "x", "podSelector: {}\npolicyTypes: [Ingress]"))
    write(repo, "tsconfig.json", '{ // comments are not JSON\n  "compilerOptions": {}\n}\n')
    write(repo, "policies/typo.yaml", "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\n"
          "metadata: {name: a, namespace: x}\n")
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    entry = next(h for h in hooks if h["id"] == "callgate-lint")["entry"].split()
    assert entry[:2] == ["callgate", "lint"]
    monkeypatch.chdir(repo)
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    result = CliRunner().invoke(app, [*entry[1:], *files])
    assert result.exit_code == 1, result.output  # the typo is an error
    findings = [line.split(": ", 1)[0] + " " + line.split()[2] for line in result.stdout.splitlines()
                if line.startswith(("policies", "deploy", "chart", ".github", "tsconfig"))]
    assert findings == ["policies/typo.yaml:2:7 CG002[unknown-kind]"]
    assert result.stdout.splitlines()[-1] == ("1 error(s), 0 warning(s), 0 info in 2 files; "
                                              "3 files without policies skipped")
    # Without the hook's flag, the same files are all reported: lint of a policy path is strict.
    strict = CliRunner().invoke(app, ["lint", *files])
    assert "ci.yml:1:1: error CG002" in strict.stdout and "tsconfig.json:1:3: error CG001" in strict.stdout


def test_a_directory_without_policy_files_is_an_error(tmp_path: Path) -> None:
    """lint of an empty (or misnamed-and-created) directory must not pass CI with rc 0."""
    (tmp_path / "empty").mkdir()
    write(tmp_path, "notes/readme.txt", "not a policy\n")
    result = CliRunner().invoke(app, ["lint", str(tmp_path / "empty"), str(tmp_path / "notes")])
    assert result.exit_code == 1
    assert f"no policy files (*.yaml, *.yml, *.json) in {tmp_path / 'empty'}, {tmp_path / 'notes'}" in result.stderr


def test_json_output_is_the_object_the_docs_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    _, out = cli("examples/lint/bad.yaml", "--format", "json")
    data = json.loads(out)
    assert isinstance(data, dict) and list(data) == ["findings", "files", "inventory_files", "skipped", "counts"]
    docs = (ROOT / "docs" / "analysis.md").read_text()
    assert "`--format json` an object:" in docs and "a plain list" not in docs
    for key in data:
        assert f"`{key}`" in docs, f"docs/analysis.md does not describe the JSON key {key!r}"


@pytest.mark.parametrize(("forks", "alike"), [(False, False), (True, False), (True, True)])
def test_only_a_linter_told_so_forks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forks: bool,
                                     alike: bool) -> None:
    """``callgate lint`` may hand IPv6 to a forked child; the controller, which lints with
    its watch threads alive (a fork would copy the locks they hold), never does. When
    IPv6 would answer as IPv4 does (every pod dual-stack, no ipBlock over a pod), it is
    not computed at all."""
    started: list[object] = []
    inv = standard()
    if not alike:  # x/b without IPv6
        inv = Inventory(inv.namespaces, tuple(
            dataclasses.replace(ep, ips=tuple(ip for ip in ep.ips if ip.version == 4)) if ep.key == "x/b" else ep
            for ep in inv.endpoints))

    class Recorded(redundancy.Forked):  # type: ignore[type-arg]
        def __init__(self, work: object) -> None:
            started.append(work)
            super().__init__(work)  # type: ignore[arg-type]

    monkeypatch.setattr(connectivity, "FORK_FROM_ENDPOINTS", 0)
    monkeypatch.setattr(redundancy, "Forked", Recorded)
    path = write(tmp_path, "p.yaml", "---\n".join([DENY[ns] for ns in "xyz"]))
    lint([path], inv, forks=forks)
    assert len(started) == (1 if forks and not alike else 0)
