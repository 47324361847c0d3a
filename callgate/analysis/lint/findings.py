"""What lint reports: findings, and the result of a run."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from callgate.analysis.lint.rules import BY_ID, Severity

DocumentKey = tuple[str, int, tuple[str | int, ...]]  # (file, document index, path inside it)


@dataclass(frozen=True)
class Finding:
    """One lint finding: what rule, how bad, where, and how to fix it."""

    rule: str
    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    object: str | None = None
    field: str | None = None
    hint: str | None = None
    # Which document it is about: for annotation-based suppression.
    doc_key: DocumentKey | None = dc_field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return BY_ID[self.rule].name

    def placed(self, line: int | None, column: int | None) -> Finding:
        """The same finding at ``line`` and ``column`` (``dataclasses.replace`` took twice
        as long: 13,000 findings are placed at once)."""
        return Finding(self.rule, self.severity, self.message, self.file, line, column, self.object, self.field,
                       self.hint, self.doc_key)

    def location(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def sort_key(self) -> tuple[Any, ...]:
        return (self.file or "", self.line or 0, self.column or 0, self.rule, self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "name": self.name, "severity": self.severity.label, "message": self.message,
            "file": self.file, "line": self.line, "column": self.column, "object": self.object,
            "field": self.field, "hint": self.hint,
        }


@dataclass
class LintResult:
    findings: list[Finding]
    files: list[str]  # policy files read
    inventory_files: list[str] = dc_field(default_factory=list)
    skipped: list[str] = dc_field(default_factory=list)  # files without policies (--skip-other-kinds)

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in reversed(Severity)}
        for f in self.findings:
            out[f.severity.label] += 1
        return out

    def failed(self, fail_on: Severity) -> bool:
        return any(f.severity >= fail_on for f in self.findings)
