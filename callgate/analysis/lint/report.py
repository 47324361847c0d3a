"""Lint results as text, JSON, SARIF 2.1.0 and JUnit XML.

SARIF is what GitHub code scanning and most CI dashboards ingest; JUnit XML is
what every CI shows as a test report. Both are validated in the tests (SARIF
against the OASIS JSON schema, JUnit by parsing it back).
"""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.control import strip_control_codes
from rich.text import Text

from callgate import __version__
from callgate.analysis.lint.findings import Finding, LintResult
from callgate.analysis.lint.rules import RULES, Severity, lookup, rule_markdown

_COLOURS = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _files(n: int, what: str = "") -> str:
    return f"{n} {what}file{'s' if n != 1 else ''}"


def summary(result: LintResult) -> str:
    c = result.counts()
    files = _files(len(result.files), "policy " if result.inventory_files else "")
    if result.inventory_files:
        files += f" and {_files(len(result.inventory_files), 'inventory ')}"
    skipped = f"; {_files(len(result.skipped))} without policies skipped" if result.skipped else ""
    return f"{c['error']} error(s), {c['warning']} warning(s), {c['info']} info in {files}{skipped}"


def _lines(f: Finding) -> list[Text]:
    """A finding's line (and its hint's), built as styled text: every string in it
    comes from the input or from callgate, and none is read as rich markup (a name
    such as ``[x]`` or ``[/`` stays as written; a markup string lost the rule's name
    and raised on a field ``[/`` before a message ``]``) or as an emoji code."""
    head, label, rest = _parts(f)
    line = Text.assemble(head, (label, _COLOURS[f.severity]), rest)
    if not f.hint:
        return [line]
    return [line, Text.assemble("    ", ("hint:", "dim"), f" {f.hint}")]


def _parts(f: Finding) -> tuple[str, str, str]:
    """A finding's line: location, severity (the coloured part), rule and message."""
    where = ": ".join(x for x in (f.object, f.field) if x)
    return f"{f.location()}: ", f.severity.label, f" {f.rule}[{f.name}] {where + ': ' if where else ''}{f.message}"


def text(result: LintResult, console: Console) -> None:
    """One finding per line (file:line:col first, so editors can jump to it), hint below."""
    if console.is_terminal or console.color_system is not None:
        for f in result.findings:
            for line in _lines(f):
                console.print(line, highlight=False, soft_wrap=True)
    elif result.findings:
        # Not a terminal and no colours (a pipe, a file, CI): written at once, since a
        # print per line was 1.5 s of a lint with 15,000 findings.
        console.file.write("\n".join(_plain(f, console.tab_size) for f in result.findings) + "\n")
    console.print(summary(result), highlight=False, markup=False, emoji=False)


def _plain(f: Finding, tab_size: int) -> str:
    """A finding's lines as :func:`_lines` renders them without colours. Formatted as
    one string (a third of the styled text's time) unless rich would change something
    in it: it expands tabs to its cell widths and drops terminal control codes."""
    text = "".join(_parts(f))
    if f.hint:
        text += f"\n    hint: {f.hint}"
    if "\t" not in text and strip_control_codes(text) == text:
        return text
    lines = _lines(f)
    for line in lines:
        line.expand_tabs(tab_size)
    return "\n".join(line.plain for line in lines)


def to_json(result: LintResult) -> str:
    return json.dumps({"findings": [f.to_json() for f in result.findings], "files": result.files,
                       "inventory_files": result.inventory_files, "skipped": result.skipped,
                       "counts": result.counts()}, indent=2)


def _uri(file: str) -> str:
    path = Path(file)
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(Path.cwd().resolve())
    return path.as_posix()


def _sarif_result(f: Finding, index: dict[str, int]) -> dict[str, Any]:
    text = f.message + (f" (hint: {f.hint})" if f.hint else "")
    result: dict[str, Any] = {
        "ruleId": f.rule, "ruleIndex": index[f.rule], "level": _SARIF_LEVEL[f.severity],
        "message": {"text": text},
    }
    if f.file:
        physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.file)}}
        if f.line is not None:
            region: dict[str, Any] = {"startLine": f.line}
            if f.column is not None:
                region["startColumn"] = f.column
            physical["region"] = region
        location: dict[str, Any] = {"physicalLocation": physical}
        name = " ".join(x for x in (f.object, f.field) if x)
        if name:
            location["logicalLocations"] = [{"fullyQualifiedName": name, "kind": "object"}]
        result["locations"] = [location]
    return result


def sarif(result: LintResult) -> str:
    index = {r.id: i for i, r in enumerate(RULES)}
    rules = [{
        "id": r.id, "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.explanation},
        "defaultConfiguration": {"level": _SARIF_LEVEL[r.severity]},
        "help": {"text": f"{r.explanation}\n\nReported:\n{r.bad}\n\nFine:\n{r.good}"},
        "properties": {"needsInventory": r.needs_inventory},
    } for r in RULES]
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "callgate", "version": __version__, "rules": rules}},
            "columnKind": "unicodeCodePoints",
            "artifacts": [{"location": {"uri": _uri(file)}} for file in result.files],
            "results": [_sarif_result(f, index) for f in result.findings],
        }],
    }
    return json.dumps(doc, indent=2)


def junit(result: LintResult, fail_on: Severity) -> str:
    """One testcase per finding (a failure when it reaches ``fail_on``) and one
    passing testcase per clean file, so the report lists every file checked."""
    suite = ET.Element("testsuite", name="callgate lint")
    failures = tests = 0
    by_file: dict[str, list[Finding]] = {}
    for f in result.findings:
        by_file.setdefault(f.file or "<input>", []).append(f)
    for file in [*result.files, *(k for k in by_file if k not in result.files)]:
        found = by_file.get(file, [])
        if not found:
            tests += 1
            ET.SubElement(suite, "testcase", classname=file, name="lint")
            continue
        for f in found:
            tests += 1
            name = f"{f.rule} {f.name} at {f.location()}" + (f" ({f.object})" if f.object else "")
            case = ET.SubElement(suite, "testcase", classname=file, name=name)
            body = "\n".join(x for x in (
                f"{f.location()}: {f.severity.label} {f.rule}[{f.name}]",
                f"object: {f.object}" if f.object else "", f"field: {f.field}" if f.field else "",
                f.message, f"hint: {f.hint}" if f.hint else "") if x)
            if f.severity >= fail_on:
                failures += 1
                failure = ET.SubElement(case, "failure", message=f.message, type=f.severity.label)
                failure.text = body
            else:
                out = ET.SubElement(case, "system-out")
                out.text = body
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    root = ET.Element("testsuites", name="callgate lint", tests=str(tests), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def explain(ref: str) -> str | None:
    """The documentation of one rule (by id or name), as markdown text."""
    rule = lookup(ref)
    return None if rule is None else rule_markdown(rule)
