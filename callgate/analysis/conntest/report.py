"""Connectivity test results as text, JUnit XML and SARIF 2.1.0 (as lint writes them)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from callgate import __version__
from callgate.analysis.conntest.check import Case, Outcome
from callgate.analysis.explain import Explainer, text_lines

RULE_ID = "connectivity"


def _verdict(allowed: bool) -> str:
    return "ALLOWED" if allowed else "DENIED"


def case_lines(case: Case, explainer: Explainer, live: str | None) -> list[str]:
    """A failing connection, and why the policies decide it so (the explain trace)."""
    d = case.decision
    where = f" on {live}'s table" if live else ""
    others = case.pairs - 1
    more = f" (and {others} more pod pair{'s' if others > 1 else ''} like it)" if others else ""
    families = ", ".join(f"IPv{f}" for f in case.families)
    head = (f"{case.src_name} -> {case.dst_name} {d.port}/{d.protocol} ({families}): "
            f"{_verdict(case.got)}{where}, expected {'allow' if case.expected else 'deny'}{more}")
    return [head, *(line for line in text_lines(explainer.explain(d)))]


def failure_text(outcome: Outcome, explainer: Explainer, live: str | None) -> list[str]:
    if outcome.problem:
        return [outcome.problem]
    lines: list[str] = []
    for case in outcome.failures:
        lines.extend(case_lines(case, explainer, live))
    shown = sum(c.pairs * len(c.families) for c in outcome.failures)
    if outcome.failed_pairs > shown:
        lines.append(f"... {outcome.failed_pairs - shown} more failing (pod pair, port) combinations")
    return lines


def text(outcomes: list[Outcome], explainer: Explainer, live: str | None) -> list[str]:
    out: list[str] = []
    for o in outcomes:
        e = o.expectation
        if o.skipped:
            out.append(f"{e.where}: skip  {e.text}  ({o.skipped})")
        elif o.passed:
            families = ", ".join(f"IPv{f}" for f in sorted(o.families) if o.families[f])
            out.append(f"{e.where}: ok    {e.text}  ({o.pairs} pair{'s' if o.pairs != 1 else ''}, {families})")
        else:
            out.append(f"{e.where}: FAIL  {e.text}")
            out.extend("    " + line for line in failure_text(o, explainer, live))
    out.append(summary(outcomes))
    return out


def summary(outcomes: list[Outcome]) -> str:
    failed = sum(1 for o in outcomes if not o.passed and not o.skipped)
    skipped = sum(1 for o in outcomes if o.skipped)
    passed = len(outcomes) - failed - skipped
    tail = f", {skipped} skipped" if skipped else ""
    return f"{len(outcomes)} expectation(s): {passed} passed, {failed} failed{tail}"


def junit(outcomes: list[Outcome], explainer: Explainer, live: str | None) -> str:
    """One testsuite per file, one testcase per expectation."""
    root = ET.Element("testsuites", name="callgate test")
    by_file: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_file.setdefault(o.expectation.file, []).append(o)
    total = failures = 0
    for file, found in by_file.items():
        suite = ET.SubElement(root, "testsuite", name=file)
        suite_failures = skipped = 0
        for o in found:
            e = o.expectation
            case = ET.SubElement(suite, "testcase", classname=file, name=f"line {e.line}: {e.text}")
            case.set("file", e.file)
            case.set("line", str(e.line))
            if o.skipped:
                skipped += 1
                ET.SubElement(case, "skipped", message=o.skipped)
            elif not o.passed:
                suite_failures += 1
                lines = failure_text(o, explainer, live)
                failure = ET.SubElement(case, "failure", message=lines[0], type="connectivity")
                failure.text = f"{e.where}: {e.text}\n" + "\n".join(lines)
        suite.set("tests", str(len(found)))
        suite.set("failures", str(suite_failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped))
        total += len(found)
        failures += suite_failures
    root.set("tests", str(total))
    root.set("failures", str(failures))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def sarif(outcomes: list[Outcome], explainer: Explainer, live: str | None) -> str:
    """A SARIF result per failed expectation, located at its line."""
    results: list[dict[str, Any]] = []
    for o in outcomes:
        if o.passed or o.skipped:
            continue
        e = o.expectation
        results.append({
            "ruleId": RULE_ID, "ruleIndex": 0, "level": "error",
            "message": {"text": f"{e.text}: " + "\n".join(failure_text(o, explainer, live))},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": e.file},
                                                "region": {"startLine": e.line, "startColumn": 1}}}],
        })
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "callgate test", "version": __version__, "rules": [{
                "id": RULE_ID, "name": "connectivity-expectation",
                "shortDescription": {"text": "A connectivity expectation does not hold."},
                "fullDescription": {"text": "The policies (or a node's live table) allow a connection the "
                                            "expectation denies, or deny one it allows."},
                "defaultConfiguration": {"level": "error"},
            }]}},
            "columnKind": "unicodeCodePoints",
            "artifacts": [{"location": {"uri": f}} for f in dict.fromkeys(o.expectation.file for o in outcomes)],
            "results": results,
        }],
    }
    return json.dumps(doc, indent=2)
