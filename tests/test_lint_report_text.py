"""The text report written at once to a pipe is what rich prints line by line."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.control import strip_control_codes

from callgate.analysis.lint import report
from callgate.analysis.lint.findings import Finding, LintResult
from callgate.analysis.lint.rules import RULES

# Markup brackets, backslashes, emoji codes, control characters and tabs: what rich
# rewrites when it renders a line, and what hostile file and object names may hold.
_TRICKY = st.lists(st.sampled_from(["[", "]", "\\", ":", "smile", "/", "a", " ", "\t", "\r", "\x07", "\n", "é",
                                   "[bold]", "[/]", ":+1:", "\\["]), max_size=12).map("".join)

_FINDINGS = st.builds(
    Finding, rule=st.sampled_from([r.id for r in RULES]), severity=st.sampled_from([r.severity for r in RULES]),
    message=_TRICKY, file=st.none() | _TRICKY, line=st.none() | st.integers(1, 99),
    column=st.none() | st.integers(1, 99), object=st.none() | _TRICKY, field=st.none() | _TRICKY,
    hint=st.none() | _TRICKY)


def _printed(findings: list[Finding], terminal: bool) -> str:
    out = io.StringIO()
    # A terminal without colours prints line by line; a pipe takes the one-write path.
    console = Console(file=out, highlight=False, soft_wrap=True, force_terminal=terminal, color_system=None,
                      width=10_000)
    report.text(LintResult(findings, ["a.yaml"]), console)
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.lists(_FINDINGS, max_size=4))
def test_plain_write_matches_rich_printing(findings: list[Finding]) -> None:
    assert _printed(findings, terminal=False) == _printed(findings, terminal=True)


@settings(max_examples=200, deadline=None)
@given(_FINDINGS)
def test_every_string_is_written_as_it_is(finding: Finding) -> None:
    """Nothing from the input is read as markup or as an emoji code: the line is the
    strings as they are (tabs expanded, terminal control codes such as CR dropped),
    the rule's name included."""
    where = ": ".join(x for x in (finding.object, finding.field) if x)
    want = (f"{finding.location()}: {finding.severity.label} {finding.rule}[{finding.name}] "
            f"{where + ': ' if where else ''}{finding.message}")
    printed = _printed([finding], terminal=False)
    assert printed.startswith(strip_control_codes(want).expandtabs(8) + "\n")
    if finding.hint:
        assert strip_control_codes(f"\n    hint: {finding.hint}").expandtabs(8) in printed


def test_brackets_across_fields_are_text() -> None:
    """A field ending in ``[/`` before a message starting with ``]`` raised rich's
    MarkupError (a traceback) when the line was markup."""
    finding = Finding("CG101", RULES[0].severity, "] x", "p.yaml", 1, 1, "NetworkPolicy x/web", "a[/")
    for terminal in (False, True):
        assert "NetworkPolicy x/web: a[/: ] x" in _printed([finding], terminal)


def test_plain_write_keeps_the_lines() -> None:
    finding = Finding("CG101", RULES[0].severity, "no pod: [x]", "p.yaml", 3, 5, "NetworkPolicy x/web", "spec",
                      "check the labels")
    assert _printed([finding], terminal=False).splitlines()[:2] == [
        f"p.yaml:3:5: {RULES[0].severity.label} CG101[selects-nothing] NetworkPolicy x/web: spec: no pod: [x]",
        "    hint: check the labels"]
