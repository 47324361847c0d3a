"""What to skip and how strict to be: the config file, and suppressions in the inputs.

Four ways to silence a rule, from broad to narrow: the config
(``[tool.callgate.lint]`` in pyproject.toml or ``lint:`` in .callgate.yaml, or
``--disable``), the annotation ``callgate.io/lint-disable`` on an object, a
``# callgate: disable-file=...`` comment anywhere in a file, and a ``# callgate:
disable=...`` comment on the finding's line or the line above it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import yaml

from callgate.analysis.lint.findings import DocumentKey, Finding
from callgate.analysis.lint.rules import Severity, lookup
from callgate.errors import InputError, Problem
from callgate.policy.documents import Document

DISABLE_ANNOTATION = "callgate.io/lint-disable"
_COMMENT = re.compile(r"#\s*callgate:\s*disable(-file)?=([A-Za-z0-9_,\- ]+)")


@dataclass
class LintConfig:
    """What to skip and how strict to be, from pyproject.toml / .callgate.yaml / the command line."""

    disable: set[str] = dc_field(default_factory=set)  # rule ids
    severity: dict[str, Severity] = dc_field(default_factory=dict)  # rule id -> severity override
    fail_on: Severity | None = None
    source: str | None = None  # the file it came from, for messages

    @classmethod
    def from_mapping(cls, data: Any, source: str, where: str) -> LintConfig:
        """Validate a config mapping; every mistake names the file and the key."""
        def bad(key: str, msg: str) -> InputError:
            return InputError([Problem(msg, file=source, object=where, field=key)])

        if not isinstance(data, dict):
            raise bad(where, "expected a mapping with disable, severity, fail-on")
        cfg = cls(source=source)
        for key, value in data.items():
            if key == "disable":
                if not isinstance(value, list):
                    raise bad(key, "expected a list of rule ids or names, e.g. [CG109, broad-ipblock]")
                for ref in value:
                    rule = lookup(str(ref))
                    if rule is None:
                        raise bad(key, f"unknown lint rule {ref!r} (see `callgate lint --explain all`)")
                    cfg.disable.add(rule.id)
            elif key == "severity":
                if not isinstance(value, dict):
                    raise bad(key, "expected a mapping of rule to error|warning|info")
                for ref, sev in value.items():
                    rule = lookup(str(ref))
                    if rule is None:
                        raise bad(f"{key}.{ref}", f"unknown lint rule {ref!r}")
                    try:
                        cfg.severity[rule.id] = Severity.parse(str(sev))
                    except ValueError as exc:
                        raise bad(f"{key}.{ref}", str(exc)) from None
            elif key in ("fail-on", "fail_on"):
                try:
                    cfg.fail_on = Severity.parse(str(value))
                except ValueError as exc:
                    raise bad(key, str(exc)) from None
            else:
                raise bad(key, "unknown key; expected disable, severity or fail-on")
        return cfg


def find_config(start: Path, explicit: str | None = None) -> LintConfig:
    """The lint config: ``explicit``, else the nearest .callgate.yaml or pyproject.toml
    with [tool.callgate.lint], looking in ``start`` and its parents."""
    candidates: list[Path] = []
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise InputError.single("no such config file", file=explicit)
        candidates = [path]
    else:
        for folder in (start, *start.parents):
            candidates += [folder / ".callgate.yaml", folder / "pyproject.toml"]
    for path in candidates:
        if not path.is_file():
            continue
        if path.name == "pyproject.toml":
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InputError.single(f"cannot read TOML: {exc}", file=str(path)) from None
            section = data.get("tool", {}).get("callgate", {}).get("lint")
            if section is None:
                if explicit:
                    return LintConfig(source=str(path))
                continue
            return LintConfig.from_mapping(section, str(path), "[tool.callgate.lint]")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError.single(f"cannot read YAML: {exc}", file=str(path)) from None
        if not isinstance(data, dict):
            raise InputError.single("expected a mapping with a 'lint' key", file=str(path))
        return LintConfig.from_mapping(data.get("lint", {}), str(path), "lint")
    return LintConfig()


def apply_suppressions(findings: Iterable[Finding], documents: Iterable[Document],
                       config: LintConfig) -> list[Finding]:
    """The findings no one disabled (config, annotations on ``documents``, comments in
    the files), with the config's severity overrides applied."""
    findings = list(findings)
    comments: dict[str, tuple[dict[int, set[str]], set[str]]] = {}
    for file in {f.file for f in findings if f.file}:
        comments[file] = _comment_suppressions(file)
    annotations: dict[DocumentKey, set[str]] = {}
    for doc in documents:
        meta = doc.data.get("metadata") if isinstance(doc.data, dict) else None
        ann = (meta or {}).get("annotations") or {}
        if isinstance(ann, dict) and DISABLE_ANNOTATION in ann:
            annotations[(doc.file, doc.index, doc.path)] = _rule_ids(str(ann[DISABLE_ANNOTATION]))
    kept = []
    for f in findings:
        if f.rule in config.disable:
            continue
        if f.doc_key is not None and f.rule in annotations.get(f.doc_key, set()):
            continue
        if f.file in comments:
            by_line, whole = comments[f.file]
            if f.rule in whole:
                continue
            if f.line is not None and (f.rule in by_line.get(f.line, set())
                                       or f.rule in by_line.get(f.line - 1, set())):
                continue
        if f.rule in config.severity:
            f = dataclasses.replace(f, severity=config.severity[f.rule])
        kept.append(f)
    return kept


def _rule_ids(text: str) -> set[str]:
    out = set()
    for ref in re.split(r"[,\s]+", text):
        rule = lookup(ref) if ref else None
        if rule is not None:
            out.add(rule.id)
    return out


def _comment_suppressions(file: str) -> tuple[dict[int, set[str]], set[str]]:
    """``# callgate: disable=...`` per line, and ``# callgate: disable-file=...``."""
    by_line: dict[int, set[str]] = {}
    whole: set[str] = set()
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return by_line, whole
    if "callgate:" not in text:  # no such comment (most files; a 15 MB inventory in ms)
        return by_line, whole
    for n, line in enumerate(text.splitlines(), start=1):
        for m in _COMMENT.finditer(line):
            ids = _rule_ids(m.group(2))
            if m.group(1):
                whole |= ids
            else:
                by_line.setdefault(n, set()).update(ids)
    return by_line, whole
