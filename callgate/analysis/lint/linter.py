"""The linter's state: documents read into items, and the findings reported on them.

Reading never stops at a problem: a document that does not parse becomes
findings and the others go on to the semantic checks. Apps are compiled
together (a caller touches two Apps); a caller that cannot compile is reported
and left out, and the rest of its App is still checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from callgate.analysis.lint.findings import Finding
from callgate.analysis.lint.places import (
    Found,
    NamespacePlaces,
    Place,
    PlacesAhead,
    positions_of,
    unplaced_paths,
)
from callgate.analysis.lint.rules import BY_ID, Severity
from callgate.errors import InputError, Problem
from callgate.policy.documents import INVENTORY_KINDS, POLICY_KINDS, Document, files_under, format_path, read_documents
from callgate.policy.loader import parse_policy_document
from callgate.policy.model import ClusterPolicy, Direction, Inventory, Policy
from callgate.policy.native import ParsedApp, compile_apps
from callgate.policy.positions import FieldPath, Positions
from callgate.policy.resolve import Resolver

# Where each direction's rules and their peers are written in a NetworkPolicy.
DIRECTION_KEYS = {Direction.INGRESS: ("ingress", "from"), Direction.EGRESS: ("egress", "to")}
_INVALID_OBJECT_HINT = "fix the field as the message says; `kubectl apply --dry-run=server` would refuse it too"


@dataclass
class Item:
    """One parsed policy object with its document."""

    doc: Document
    kind: str  # "NetworkPolicy", "App", or a cluster policy's kind ("ClusterNetworkPolicy", ...)
    obj: str  # display name, e.g. "NetworkPolicy x/web"
    policy: Policy | None = None  # the compiled policy (Apps: set after compiling all Apps)
    app: ParsedApp | None = None
    # Apps: compiled ingress rule i came from spec.callers[caller_index[i]].
    caller_index: tuple[int, ...] = ()
    cluster: ClusterPolicy | None = None  # a ClusterNetworkPolicy (or a v1alpha1 kind read as one)

    @property
    def key(self) -> tuple[str, str]:
        """What the API server keeps one of: kind, namespace and name."""
        parsed = self.policy if self.policy is not None else self.app if self.app is not None else self.cluster
        assert parsed is not None, "an item is a parsed NetworkPolicy, App or cluster policy"
        return self.kind, parsed.key

    def rule_path(self, direction: Direction, index: int) -> FieldPath:
        """Where compiled rule ``index`` is written in the document."""
        if self.kind == "NetworkPolicy" or self.cluster is not None:
            return ("spec", DIRECTION_KEYS[direction][0], index)
        if direction is Direction.INGRESS and index < len(self.caller_index):
            return ("spec", "callers", self.caller_index[index])
        return ("metadata", "name")  # an App's egress comes from other Apps' callers

    def peer_path(self, direction: Direction, index: int, peer: int) -> FieldPath:
        if self.kind == "NetworkPolicy" or self.cluster is not None:
            key, peers = DIRECTION_KEYS[direction]
            return ("spec", key, index, peers, peer)
        return self.rule_path(direction, index)

    def check_paths(self) -> Iterator[FieldPath]:
        """Where the semantic checks report on a compiled item, in its file: its name
        (a policy that changes nothing, a duplicate), its selector, each rule, each peer
        and each named port of it (a redundant rule, a peer selecting nothing, a port no
        pod declares)."""
        base = self.doc.path
        yield (*base, "metadata", "name")
        yield (*base, *self.selector_path())
        assert self.policy is not None
        for direction in (Direction.INGRESS, Direction.EGRESS):
            for i, rule in enumerate(self.policy.rules(direction)):
                at = (*base, *self.rule_path(direction, i))
                yield at
                yield from ((*base, *self.peer_path(direction, i, j)) for j in range(len(rule.peers)))
                yield from ((*at, "ports", k) for k, spec in enumerate(rule.ports) if isinstance(spec.port, str))

    def selector_path(self) -> FieldPath:
        if self.cluster is not None:
            return ("spec", "subject")
        return ("spec", "podSelector") if self.kind == "NetworkPolicy" else ("spec", "selector")


def other_kind(data: object) -> bool:
    """A document that is neither a policy nor an inventory object, nor a near miss
    of one: a CI workflow, Helm values, a Deployment. Near misses (kind NetworkPolicy
    or App under another apiVersion, any kind of the callgate API group) are still
    linted, so a typo in apiVersion is reported (CG002) rather than skipped."""
    if not isinstance(data, dict):
        return True
    api, kind = data.get("apiVersion"), data.get("kind")
    if (api, kind) in POLICY_KINDS or (api, kind) in INVENTORY_KINDS:
        return False
    near = kind in ("NetworkPolicy", "App") or (isinstance(api, str) and api.split("/")[0] == "callgate")
    return not near


def _mentions_policies(path: Path) -> bool:
    """Whether a file that does not parse is probably meant as a policy file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return "NetworkPolicy" in text or "callgate/" in text


class Linter:
    """Reads documents into items; collects findings (checks call :meth:`report`)."""

    def __init__(self, inventory: Inventory | None = None, inventory_paths: Sequence[str] = (),
                 skip_other_kinds: bool = False, forks: bool = False) -> None:
        self.inventory = inventory
        # May a check hand work to a forked child (callgate.forked)? Only a one-shot
        # command says yes: the controller lints with its watch threads alive.
        self.forks = forks
        # One resolver for every check over the inventory: they resolve the same selectors.
        self.resolver = Resolver(inventory) if inventory is not None else None
        self.inventory_paths = list(inventory_paths)
        # Lint every YAML/JSON file of a repository (the pre-commit hook): documents
        # of other tools and other Kubernetes kinds are not policies, not mistakes.
        self.skip_other_kinds = skip_other_kinds
        self.findings: list[Finding] = []
        self.items: list[Item] = []
        self.files: list[str] = []
        self.skipped: list[str] = []  # files without a policy or inventory document (skip_other_kinds)
        self.positions = Positions()
        # Findings on items still without their line and column: (index in findings,
        # document, path in its file), placed all at once by place().
        self._unplaced: list[tuple[int, Document, FieldPath]] = []
        self._ahead: PlacesAhead | None = None  # see placing_ahead()
        self._namespace_place: Callable[[str], Place] | None = None

    def report(self, rule: str, message: str, item: Item | None = None, path: Sequence[str | int] = (),
               hint: str | None = None, severity: Severity | None = None, file: str | None = None,
               obj: str | None = None, line: int | None = None, column: int | None = None) -> None:
        """A finding: on an item (placed at ``path`` in its document by :meth:`place`), or
        at the given file, line and column."""
        doc_key = None
        if item is not None:
            doc = item.doc
            file, line, column = doc.file, None, None
            obj = obj or item.obj
            doc_key = (doc.file, doc.index, doc.path)
            self._unplaced.append((len(self.findings), doc, doc.path + tuple(path)))
        self.findings.append(Finding(
            rule, severity or BY_ID[rule].severity, message, file, line, column, obj,
            format_path(path) or None, hint or None, doc_key))

    @contextlib.contextmanager
    def placing_ahead(self, paths: Iterable[str | Path]) -> Iterator[None]:
        """Within the block, a helper process finds where the namespaces are declared,
        and where the findings reported before :meth:`want_places` are written, while
        this one reads the policy files under ``paths`` and runs the checks
        (:mod:`callgate.analysis.lint.places`). Only if this linter :attr:`forks` and has
        an inventory: the inventory checks are what runs beside the helper (without
        them this process would only wait for its answer)."""
        if not self.forks or self.inventory is None:
            yield
            return
        with PlacesAhead.started(self.inventory_paths, paths) as ahead:
            self._ahead = ahead
            try:
                yield
            finally:
                self._ahead = None

    def want_places(self) -> None:
        """Have the helper of :meth:`placing_ahead` look up the findings reported so far,
        and the places where the checks still to run report on each policy
        (:meth:`Item.check_paths`). A YAML file's places take a walk over all its events
        however few are asked for: a finding the helper was not asked about would cost
        this process a second walk of the file."""
        if self._ahead is None:
            return
        wanted = unplaced_paths(self._unplaced)
        for item in self.items:
            if item.policy is not None:
                wanted.setdefault(item.doc.file, {}).setdefault(item.doc.index, []).extend(item.check_paths())
        self._ahead.want(wanted)

    def namespace_place(self, ns: str) -> Place:
        """Where namespace ``ns`` is declared in the inventory files: a finding about the
        namespace itself is reported there."""
        if self._namespace_place is None:
            if self._ahead is not None:
                places, undeclared = self._ahead.namespaces(self.positions)
                self._namespace_place = lambda name: places.get(name, undeclared)
            else:
                self._namespace_place = NamespacePlaces.read(self.inventory_paths, self.positions).find
        return self._namespace_place(ns)

    def place(self) -> None:
        """Give the findings on items their line and column. All the paths in a file are
        looked up in one pass over it: a look-up per finding composed the whole file into
        nodes (5 s for a 4 MB List of 10,000 policies). Those the helper of
        :meth:`placing_ahead` found are not looked up again."""
        ahead: Found = self._ahead.found(self.positions) if self._ahead is not None else {}
        missing = unplaced_paths((k, doc, path) for k, doc, path in self._unplaced
                                 if path not in ahead.get(doc.file, {}).get(doc.index, {}))
        found = positions_of(missing, self.positions)
        for k, doc, path in self._unplaced:
            here = found.get(doc.file, {}).get(doc.index, {})
            line, column = here[path] if path in here else ahead[doc.file][doc.index][path]
            self.findings[k] = self.findings[k].placed(line, column)
        self._unplaced = []

    def problem(self, p: Problem, doc: Document | None = None) -> None:
        """A loader problem (schema / API-server validation) as a finding: the rule its
        code names, else invalid-object (CG001)."""
        rule = p.code.value if p.code is not None else "CG001"
        hint = p.hint or (_INVALID_OBJECT_HINT if p.code is None else None)
        doc_key = (doc.file, doc.index, doc.path) if doc is not None else None
        self.findings.append(Finding(rule, BY_ID[rule].severity, p.message, p.file, p.line, p.column, p.object,
                                     p.field, hint, doc_key))

    # -- reading -----------------------------------------------------------

    def read(self, paths: Iterable[str | Path]) -> None:
        for path in files_under(paths):
            try:
                docs = list(read_documents(path))
            except InputError as err:
                if self.skip_other_kinds and not _mentions_policies(path):
                    self.skipped.append(str(path))  # e.g. a tsconfig.json with comments: not ours
                    continue
                self.files.append(str(path))
                for p in err.problems:
                    self.problem(p)
                continue
            if self.skip_other_kinds:
                docs = [d for d in docs if not other_kind(d.data)]
                if not docs:
                    self.skipped.append(str(path))
                    continue
            self.files.append(str(path))
            for doc in docs:
                self._read_doc(doc)

    def _read_doc(self, doc: Document) -> None:
        try:
            parsed = parse_policy_document(doc)
        except InputError as err:
            for p in err.problems:
                self.problem(p, doc)
            return
        if isinstance(parsed, Policy):
            self.items.append(Item(doc, "NetworkPolicy", parsed.display, policy=parsed))
        elif isinstance(parsed, ParsedApp):
            self.items.append(Item(doc, "App", f"App {parsed.key}", app=parsed))
        elif isinstance(parsed, ClusterPolicy):
            self.items.append(Item(doc, parsed.kind, parsed.display, cluster=parsed))

    def drop_duplicates(self) -> None:
        """Report and leave out every object whose kind, namespace and name came before."""
        seen: dict[tuple[str, str], Item] = {}
        kept: list[Item] = []
        for item in self.items:
            first = seen.get(item.key)
            if first is not None:
                self.report("CG003", f"{item.obj} is also defined in {first.doc.file} "
                            f"(document {first.doc.index + 1}); the later one would replace it",
                            item, ("metadata", "name"), hint="rename one of them or merge their rules")
                continue
            seen[item.key] = item
            kept.append(item)
        self.items = kept

    def compile_apps(self) -> None:
        """Compile Apps together; callers that cannot compile are reported and left out,
        so the rest can still be checked. Run after :meth:`drop_duplicates`."""
        items = {i.app.key: i for i in self.items if i.app is not None}
        compiled = compile_apps([i.app for i in items.values() if i.app is not None])
        for app, p in compiled.problems:
            self.problem(p, app.doc)
        for pol in compiled.policies:
            item = items[pol.key]
            item.policy = pol
            item.caller_index = compiled.caller_index[pol.key]
