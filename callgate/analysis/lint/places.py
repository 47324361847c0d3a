"""Where findings are written: namespaces in the inventory files, findings in their documents.

Placing findings reads files again (positions are found only for what is
reported, see :mod:`callgate.policy.positions`). For big inputs that is a
fifth of a lint: the 15 MB inventory read again for the namespaces' places,
and 13,000 findings looked up in a 4 MB List of policies. Neither needs the
checks' results to start: where each namespace is declared is known before any
check runs, and the document checks' findings (most of them: a port without a
protocol is reported on every such port) are reported before the others.

So :class:`PlacesAhead` has a forked child (:mod:`callgate.forked`) find both
while this process runs the other checks; :meth:`Linter.place` then looks up
only the findings reported after the fork. The child reads the files itself
and sends back plain tuples; it touches little of this process's memory, so
the two do not slow each other down copying shared pages. Nothing depends on
the child: whatever it did not send is found here, the same way, with the same
answers (positions are a function of the file and the path alone).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from callgate.forked import Child, Send
from callgate.policy.documents import Document, files_under, read_documents
from callgate.policy.positions import FieldPath, Position, Positions

# Where a finding is written: file, line, column (each may be unknown).
Place = tuple[str | None, int | None, int | None]
# Paths in documents, by file and document index; and their positions, the same way.
Wanted = dict[str, dict[int, list[FieldPath]]]
Found = dict[str, dict[int, dict[FieldPath, Position]]]

# Below this many bytes of files to read, a child costs more than it saves.
AHEAD_MIN_BYTES = 1 << 20


@dataclass
class NamespacePlaces:
    """Where each namespace is declared in the inventory files, if anywhere.

    The files are read once for all namespaces (reading them per namespace was
    35 s of a 44 s lint at 400 namespaces). Same answers as a scan per namespace
    that stops at the first declaration: files and documents in order, the first
    declaration wins; a file that cannot be read ends the scan, and namespaces not
    found before it get no position at all (the per-namespace scan would have
    failed on that file too)."""

    positions: Positions
    first_file: str | None = None
    failed: bool = False

    def __post_init__(self) -> None:
        self.found: dict[str, tuple[Document, FieldPath]] = {}  # ns -> (document, path)
        self._marks: dict[tuple[str, int], dict[FieldPath, Position]] = {}

    @classmethod
    def read(cls, inventory_paths: Sequence[str], positions: Positions) -> NamespacePlaces:
        places = cls(positions)
        try:
            files = files_under(inventory_paths)
            places.first_file = str(files[0]) if files else None
            for path in files:
                for doc in read_documents(path):
                    data = _mapping(doc.data)
                    if data.get("kind") == "Inventory":
                        for ns in _mapping(data.get("namespaces")):
                            if isinstance(ns, str):
                                places.found.setdefault(ns, (doc, (*doc.path, "namespaces", ns)))
                    if data.get("kind") == "Namespace":
                        name = _mapping(data.get("metadata")).get("name")
                        if isinstance(name, str):
                            places.found.setdefault(name, (doc, doc.path))
        except Exception:
            places.failed = True
        return places

    def find(self, ns: str) -> Place:
        hit = self.found.get(ns)
        if hit is None:
            return (None, None, None) if self.failed else (self.first_file, None, None)
        doc, path = hit
        where = (doc.file, doc.index)
        if where not in self._marks:
            # Every namespace declared in that document at once: one pass over the file.
            paths = [p for d, p in self.found.values() if (d.file, d.index) == where]
            try:
                self._marks[where] = self.positions.many(doc.file, doc.index, paths)
            except Exception:
                self._marks[where] = {}
        line_col = self._marks[where].get(path)
        if line_col is None:
            return None, None, None
        return doc.file, line_col[0], line_col[1]

    def every(self) -> tuple[dict[str, Place], Place]:
        """Every declared namespace's place, and the place of those not declared."""
        return {ns: self.find(ns) for ns in self.found}, self.find_undeclared()

    def find_undeclared(self) -> Place:
        return (None, None, None) if self.failed else (self.first_file, None, None)


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def positions_of(wanted: Wanted, positions: Positions) -> Found:
    """The positions of the paths in ``wanted``: a pass over each file."""
    return {file: positions.in_documents(file, by_doc) for file, by_doc in wanted.items()}


class PlacesAhead:
    """Namespace places and the positions of ``wanted``, found by a forked child;
    see the module docstring. Each is asked for at most once, in either order; what
    the child did not send is found here."""

    def __init__(self, inventory_paths: Sequence[str], wanted: Wanted) -> None:
        self._inventory_paths = list(inventory_paths)
        self._wanted = wanted
        self._child: Child | None = Child(lambda send: _find(self._inventory_paths, wanted, send))
        self._received: Iterator[Any] = self._child.received()
        self._sent: dict[str, Any] = {}

    @classmethod
    @contextlib.contextmanager
    def started(cls, inventory_paths: Sequence[str], wanted: Wanted) -> Iterator[PlacesAhead | None]:
        """A child finding them when the files to read are worth it (None when not, or
        when the fork fails), stopped and reaped however the block ends."""
        try:
            files = [*map(str, files_under(inventory_paths)), *wanted]
            worth = sum(os.stat(file).st_size for file in files) >= AHEAD_MIN_BYTES
            ahead = cls(inventory_paths, wanted) if worth else None
        except Exception:  # a path that cannot be read (reported elsewhere), a failed fork
            ahead = None
        try:
            yield ahead
        finally:
            if ahead is not None:
                ahead.close()

    def namespaces(self, positions: Positions) -> tuple[Mapping[str, Place], Place]:
        """Every declared namespace's place, and the place of the others."""
        sent = self._take("namespaces")
        if isinstance(sent, tuple) and len(sent) == 2 and isinstance(sent[0], dict) and isinstance(sent[1], tuple):
            return sent
        return NamespacePlaces.read(self._inventory_paths, positions).every()

    def found(self, positions: Positions) -> Found:
        """The positions of the paths wanted when the child started."""
        sent = self._take("found")
        return sent if isinstance(sent, dict) else positions_of(self._wanted, positions)

    def _take(self, kind: str) -> Any:
        while kind not in self._sent and self._child is not None:
            sent = next(self._received, None)
            if not (isinstance(sent, tuple) and len(sent) == 2 and isinstance(sent[0], str)):
                self.close()  # the child is done, or died: the rest is found here
                break
            self._sent[sent[0]] = sent[1]
        return self._sent.pop(kind, None)

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None


def _find(inventory_paths: Sequence[str], wanted: Wanted, send: Send) -> None:
    """In the child: the namespaces' places, then the positions of ``wanted``."""
    positions = Positions()
    send(("namespaces", NamespacePlaces.read(inventory_paths, positions).every()))
    send(("found", positions_of(wanted, positions)))


def unplaced_paths(unplaced: Iterable[tuple[int, Document, FieldPath]]) -> Wanted:
    """(finding index, document, path) entries as paths by file and document index."""
    paths: Wanted = {}
    for _, doc, path in unplaced:
        paths.setdefault(doc.file, {}).setdefault(doc.index, []).append(path)
    return paths
