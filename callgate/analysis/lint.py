"""``callgate lint``: every problem in a set of policy files, as findings.

The loaders stop at the first broken file (they raise :class:`InputError`);
lint must instead report everything and keep going. So it reads documents one
by one, turns schema problems into findings (severity error), and runs the
semantic checks (``checks.py``) on whatever did parse. Some checks need the raw
document (a port *written* without a protocol looks the same as ``protocol:
TCP`` once parsed), so parsed objects keep their document.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import yaml

from callgate.analysis.rules import BY_ID, Severity, lookup
from callgate.errors import InputError, Problem
from callgate.policy.documents import Document, files_under, format_path, read_documents
from callgate.policy.model import Inventory, Policy
from callgate.policy.native import ParsedApp, apps_to_policies, parse_app
from callgate.policy.networkpolicy import parse_network_policy

# Documents that describe who runs where; they may sit beside policies.
_INVENTORY_KINDS = {("callgate/v1", "Inventory"), ("v1", "Pod"), ("v1", "Namespace")}
DISABLE_ANNOTATION = "callgate.io/lint-disable"
_COMMENT = re.compile(r"#\s*callgate:\s*disable(-file)?=([A-Za-z0-9_,\- ]+)")

try:  # pragma: no cover - depends on how PyYAML was built
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


@dataclass
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
    # Which document it is about (file, index, path): for annotation-based suppression.
    doc_key: tuple[str, int, tuple[str | int, ...]] | None = dc_field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return BY_ID[self.rule].name

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


class Positions:
    """(line, column) of fields, composing each file once (documents.locate re-reads per call)."""

    def __init__(self) -> None:
        self._nodes: dict[str, list[Any] | None] = {}

    def __call__(self, file: str, index: int, path: Sequence[str | int]) -> tuple[int | None, int | None]:
        if file not in self._nodes:
            try:
                self._nodes[file] = list(yaml.compose_all(Path(file).read_text(encoding="utf-8"), Loader=_Loader))
            except Exception:
                self._nodes[file] = None
        nodes = self._nodes[file]
        if not nodes or index >= len(nodes) or nodes[index] is None:
            return None, None
        node = nodes[index]
        for step in path:
            nxt = None
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if k.value == step), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
                nxt = node.value[step]
            if nxt is None:
                break
            node = nxt
        return node.start_mark.line + 1, node.start_mark.column + 1


    def many(self, file: str, index: int, paths: Sequence[Sequence[str | int]]
             ) -> dict[tuple[str | int, ...], tuple[int | None, int | None]]:
        """:meth:`__call__` for many paths of one document, from one pass over the parser's
        events instead of composing the file: composing a 3 MB inventory was 1.3 s
        (node objects), its events 0.2 s. The events carry the same marks the nodes
        would; whatever the walk cannot vouch for (anchors, aliases, a parse error,
        a file already composed) goes the composing way."""
        wanted = [tuple(p) for p in paths]
        if file not in self._nodes:
            try:
                found = _event_marks(Path(file).read_text(encoding="utf-8"), index, wanted)
            except Exception:
                found = None
            if found is not None:
                return found
        return {p: self(file, index, p) for p in wanted}


class _Unsure(Exception):
    """The event walk met something only the composer answers exactly."""


def _event_marks(text: str, index: int, paths: list[tuple[str | int, ...]]
                 ) -> dict[tuple[str | int, ...], tuple[int | None, int | None]]:
    trie: dict[Any, Any] = {}
    for path in paths:
        node = trie
        for step in path:
            node = node.setdefault(step, {})
    if "&" in text or "*" in text:
        raise _Unsure  # maybe anchors or aliases: the composer resolves those
    marks: dict[tuple[str | int, ...], tuple[int, int]] = {}
    events = iter(yaml.parse(text, Loader=_Loader))
    doc = -1
    for ev in events:  # the whole stream, so a later syntax error surfaces as it would when composing
        if type(ev) is yaml.DocumentStartEvent:
            doc += 1
            if doc == index:
                _walk(events, next(events), trie, (), marks)
    out: dict[tuple[str | int, ...], tuple[int | None, int | None]] = {}
    for path in paths:
        if () not in marks:
            out[path] = (None, None)  # no such document
            continue
        depth = len(path)
        while path[:depth] not in marks:
            depth -= 1
        out[path] = marks[path[:depth]]
    return out


def _walk(events: Iterator[Any], ev: Any, trie: dict[Any, Any], prefix: tuple[str | int, ...],
          marks: dict[tuple[str | int, ...], tuple[int, int]]) -> None:
    """Record the (line, column) of the node starting with ``ev`` and of the nodes the
    trie asks for under it, consuming its events (a mapping key matches its first
    scalar key of that value, as in :meth:`Positions.__call__`)."""
    if isinstance(ev, yaml.AliasEvent) or (isinstance(ev, yaml.NodeEvent) and ev.anchor is not None):
        raise _Unsure
    marks[prefix] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
    if isinstance(ev, yaml.MappingStartEvent):
        seen: set[str] = set()
        while True:
            key = next(events)
            if isinstance(key, yaml.MappingEndEvent):
                return
            if isinstance(key, yaml.NodeEvent) and key.anchor is not None:
                raise _Unsure
            name = key.value if isinstance(key, yaml.ScalarEvent) else None
            if name is None:
                _skip(events, key)
            value = next(events)
            if name is not None and name not in seen and name in trie:
                seen.add(name)
                _walk(events, value, trie[name], (*prefix, name), marks)
            else:
                if name is not None:
                    seen.add(name)
                _skip(events, value)
    elif isinstance(ev, yaml.SequenceStartEvent):
        i = 0
        while True:
            item = next(events)
            if isinstance(item, yaml.SequenceEndEvent):
                return
            if i in trie:
                _walk(events, item, trie[i], (*prefix, i), marks)
            else:
                _skip(events, item)
            i += 1


_DEPTH = {yaml.MappingStartEvent: 1, yaml.SequenceStartEvent: 1, yaml.MappingEndEvent: -1,
          yaml.SequenceEndEvent: -1}


def _skip(events: Iterator[Any], ev: Any) -> None:
    """Consume the rest of the node starting with ``ev`` (most of a big file goes through
    here: a type look-up per event, nothing more)."""
    depth = _DEPTH.get(type(ev), 0)
    while depth > 0:
        depth += _DEPTH.get(type(next(events)), 0)


@dataclass
class Item:
    """One parsed policy object with its document."""

    doc: Document
    kind: str  # "NetworkPolicy" or "App"
    obj: str  # display name, e.g. "NetworkPolicy x/web"
    policy: Policy | None = None  # the compiled policy (Apps: set after compiling all Apps)
    app: ParsedApp | None = None
    # Apps: compiled ingress rule i came from spec.callers[caller_index[i]].
    caller_index: list[int] = dc_field(default_factory=list)


class Linter:
    """Collects findings; checks call :meth:`report`."""

    def __init__(self, inventory: Inventory | None = None, inventory_paths: Sequence[str] = ()) -> None:
        self.inventory = inventory
        self.inventory_paths = list(inventory_paths)
        self.findings: list[Finding] = []
        self.items: list[Item] = []
        self.files: list[str] = []
        self.positions = Positions()

    def report(self, rule: str, message: str, item: Item | None = None, path: Sequence[str | int] = (),
               hint: str | None = None, severity: Severity | None = None, file: str | None = None,
               obj: str | None = None, line: int | None = None, column: int | None = None) -> None:
        doc_key = None
        if item is not None:
            doc = item.doc
            file = doc.file
            line, column = self.positions(doc.file, doc.index, doc.path + tuple(path))
            obj = obj or item.obj
            doc_key = (doc.file, doc.index, doc.path)
        self.findings.append(Finding(
            rule, severity or BY_ID[rule].severity, message, file, line, column, obj,
            format_path(path) or None, hint or None, doc_key))

    def problem(self, p: Problem, doc: Document | None = None) -> None:
        """A loader problem (schema / API-server validation) as a finding."""
        text, fld = p.message, p.field or ""
        rule, hint = "CG001", "fix the field as the message says; `kubectl apply --dry-run=server` would refuse it too"
        if fld.endswith("endPort") or "endPort" in text:
            rule, hint = "CG004", "endPort needs a numeric port and must be >= port"
        elif "is not a known App" in text:
            rule, hint = "CG005", "check the caller's name and namespace (it defaults to the callee's namespace)"
        elif "defined twice" in text or "also defined in" in text:
            rule, hint = "CG003", "rename one of them or merge their rules"
        elif text.startswith("expected networking.k8s.io/v1"):
            rule, hint = "CG002", "use apiVersion networking.k8s.io/v1 kind NetworkPolicy, or callgate/v1 App"
        elif text == "unknown field":
            hint = "remove the field or fix its spelling (names are camelCase, e.g. podSelector, endPort)"
        elif text == "required field is missing":
            hint = "add the field"
        doc_key = (doc.file, doc.index, doc.path) if doc is not None else None
        self.findings.append(Finding(rule, BY_ID[rule].severity, text, p.file, p.line, p.column, p.object,
                                     p.field, hint, doc_key))

    # -- reading -----------------------------------------------------------

    def read(self, paths: Iterable[str | Path]) -> None:
        for path in files_under(paths):
            self.files.append(str(path))
            try:
                docs = list(read_documents(path))
            except InputError as err:
                for p in err.problems:
                    self.problem(p)
                continue
            for doc in docs:
                self._read_doc(doc)

    def _read_doc(self, doc: Document) -> None:
        data = doc.data
        if not isinstance(data, dict):
            self.problem(doc.problem("expected a mapping with apiVersion and kind"), doc)
            return
        api, kind = data.get("apiVersion"), data.get("kind")
        try:
            if api == "networking.k8s.io/v1" and kind == "NetworkPolicy":
                policy = parse_network_policy(doc)
                self.items.append(Item(doc, "NetworkPolicy", policy.display, policy=policy))
            elif api == "callgate/v1" and kind == "App":
                app = parse_app(doc)
                self.items.append(Item(doc, "App", f"App {app.key}", app=app))
            elif (api, kind) not in _INVENTORY_KINDS:
                self.problem(doc.problem(
                    f"expected networking.k8s.io/v1 NetworkPolicy or callgate/v1 App, got {api}/{kind}",
                    obj=str(kind), field="kind", field_path=("kind",)), doc)
        except InputError as err:
            for p in err.problems:
                self.problem(p, doc)

    def duplicates(self) -> None:
        seen: dict[tuple[str, str], Item] = {}
        kept: list[Item] = []
        for item in self.items:
            key = (item.kind, item.policy.key if item.policy else item.app.key)  # type: ignore[union-attr]
            first = seen.get(key)
            if first is not None:
                self.report("CG003", f"{item.obj} is also defined in {first.doc.file} "
                            f"(document {first.doc.index + 1}); the later one would replace it",
                            item, ("metadata", "name"), hint="rename one of them or merge their rules")
                continue
            seen[key] = item
            kept.append(item)
        self.items = kept

    def compile_apps(self) -> None:
        """Compile Apps together; callers that cannot compile are reported and left out,
        so the rest can still be checked."""
        apps = [i for i in self.items if i.app is not None]
        by_key = {i.app.key: i for i in apps}  # type: ignore[union-attr]
        kept: dict[str, list[int]] = {k: list(range(len(i.app.model.spec.callers))) for k, i in by_key.items()}  # type: ignore[union-attr]
        for _ in range(3):
            parsed = []
            for key, item in by_key.items():
                assert item.app is not None
                spec = item.app.model.spec
                callers = [spec.callers[j] for j in kept[key]]
                model = item.app.model.model_copy(update={"spec": spec.model_copy(update={"callers": callers})})
                parsed.append(ParsedApp(model, item.app.doc))
            try:
                policies = apps_to_policies(parsed)
            except InputError as err:
                for p in err.problems:
                    self.problem(p, by_key[p.object[4:]].doc if p.object and p.object[4:] in by_key else None)
                    m = re.match(r"spec\.callers\[(\d+)\]", p.field or "")
                    key = (p.object or "")[4:]
                    if m and key in kept:
                        # Problems name original indices on the first pass only; we
                        # drop every failing caller at once, so one retry suffices.
                        original = kept[key][int(m.group(1))] if int(m.group(1)) < len(kept[key]) else None
                        kept[key] = [j for j in kept[key] if j != original]
                continue
            for pol in policies:
                item = by_key[pol.key]
                item.policy = pol
                item.caller_index = kept[pol.key]
            return

    def apply_suppressions(self, config: LintConfig) -> None:
        """Drop disabled findings (config, annotations, comments); apply severity overrides."""
        comments: dict[str, tuple[dict[int, set[str]], set[str]]] = {}
        for file in {f.file for f in self.findings if f.file}:
            comments[file] = _comment_suppressions(file)
        annotations: dict[tuple[str, int, tuple[str | int, ...]], set[str]] = {}
        for item in self.items:
            meta = item.doc.data.get("metadata") if isinstance(item.doc.data, dict) else None
            ann = (meta or {}).get("annotations") or {}
            if isinstance(ann, dict) and DISABLE_ANNOTATION in ann:
                annotations[(item.doc.file, item.doc.index, item.doc.path)] = _rule_ids(str(ann[DISABLE_ANNOTATION]))
        kept = []
        for f in self.findings:
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
                f.severity = config.severity[f.rule]
            kept.append(f)
        self.findings = kept


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
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return by_line, whole
    for n, text in enumerate(lines, start=1):
        for m in _COMMENT.finditer(text):
            ids = _rule_ids(m.group(2))
            if m.group(1):
                whole |= ids
            else:
                by_line.setdefault(n, set()).update(ids)
    return by_line, whole


@dataclass
class LintResult:
    findings: list[Finding]
    files: list[str]

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in reversed(Severity)}
        for f in self.findings:
            out[f.severity.label] += 1
        return out

    def failed(self, fail_on: Severity) -> bool:
        return any(f.severity >= fail_on for f in self.findings)


def lint(paths: Iterable[str | Path], inventory: Inventory | None = None, config: LintConfig | None = None,
         inventory_paths: Sequence[str] = ()) -> LintResult:
    """Lint policy files and directories; never raises for problems *in* the files
    (only for paths that do not exist)."""
    from callgate.analysis import checks

    linter = Linter(inventory, inventory_paths)
    linter.read(paths)
    linter.duplicates()
    linter.compile_apps()
    checks.run_all(linter)
    linter.apply_suppressions(config or LintConfig())
    findings = sorted(linter.findings, key=Finding.sort_key)
    return LintResult(findings, linter.files)
