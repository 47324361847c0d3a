"""Where findings are written: namespaces in the inventory files, findings in their documents.

Placing findings reads files again (positions are found only for what is
reported, see :mod:`callgate.policy.positions`). For big inputs that is a
fifth of a lint: the 15 MB inventory read again for the namespaces' places,
and 13,000 findings looked up in a 4 MB List of policies. Neither needs the
checks' results to start: where each namespace is declared is known before any
check runs, and the document checks' findings (most of them: a port without a
protocol is reported on every such port) are reported before the others.

So :class:`PlacesAhead` asks a helper process (``python -m
callgate.analysis.lint.places``) for both while this one reads the policies and
runs the inventory checks; it is asked too where the later checks report on
each policy (its name, selector, rules, peers and named ports:
:meth:`Item.check_paths`), since a YAML file's places take a walk over all its
events however few are asked for. :meth:`Linter.place` then looks up only the
findings reported elsewhere (none, in the usual case).

The helper is a new interpreter, not a fork: it reads the files itself and
needs nothing of this process's memory, and a fork would make every page this
process then writes a copy-on-write fault (~0.1 s of the checks after it at
bench size). Requests and answers are pickled plain values over its
stdin and stdout. Nothing depends on the helper: whatever it did not answer
(it could not start, died, answered something else) is found here, the same way
and with the same answers (positions are a function of the file and the path
alone).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from callgate.policy.documents import Document, as_mapping, files_under, read_documents
from callgate.policy.positions import FieldPath, Position, Positions

# Where a finding is written: file, line, column (each may be unknown).
Place = tuple[str | None, int | None, int | None]
# Paths in documents, by file and document index; and their positions, the same way.
Wanted = dict[str, dict[int, list[FieldPath]]]
Found = dict[str, dict[int, dict[FieldPath, Position]]]

# Below this many bytes of files to read, a helper costs more than it saves.
AHEAD_MIN_BYTES = 1 << 20
HELPER = [sys.executable, "-m", __name__]  # the helper process: this module's serve()


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
                    data = as_mapping(doc.data)
                    if data.get("kind") == "Inventory":
                        for ns in as_mapping(data.get("namespaces")):
                            if isinstance(ns, str):
                                places.found.setdefault(ns, (doc, (*doc.path, "namespaces", ns)))
                    if data.get("kind") == "Namespace":
                        name = as_mapping(data.get("metadata")).get("name")
                        if isinstance(name, str):
                            places.found.setdefault(name, (doc, doc.path))
        except Exception:
            places.failed = True
        return places

    def find(self, ns: str) -> Place:
        hit = self.found.get(ns)
        if hit is None:
            return self.find_undeclared()
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
        """A namespace no file declares: the first file, unless reading the files failed."""
        return (None, None, None) if self.failed else (self.first_file, None, None)


def positions_of(wanted: Wanted, positions: Positions) -> Found:
    """The positions of the paths in ``wanted``: a pass over each file."""
    return {file: positions.in_documents(file, by_doc) for file, by_doc in wanted.items()}


class PlacesAhead:
    """Namespace places and the positions of wanted paths, found by a helper process;
    see the module docstring. Each is asked for at most once; what the helper does
    not answer is found here."""

    def __init__(self, inventory_paths: Sequence[str]) -> None:
        self._inventory_paths = list(inventory_paths)
        self._wanted: Wanted = {}
        self._answers: dict[str, Any] = {}
        self._asking: threading.Thread | None = None
        # A new interpreter (see the module docstring); stderr: a helper that fails
        # says nothing, its work is done here.
        self._helper: subprocess.Popen[bytes] | None = subprocess.Popen(
            HELPER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._ask("namespaces", self._inventory_paths)

    @classmethod
    @contextlib.contextmanager
    def started(cls, inventory_paths: Sequence[str], paths: Iterable[str | Path]) -> Iterator[PlacesAhead | None]:
        """A helper when the files to read (the inventory's, and the policies under
        ``paths``) are worth it: None when not, or when it cannot start. Stopped however
        the block ends."""
        try:
            files = [*files_under(inventory_paths), *files_under(paths)]
            worth = sum(os.stat(file).st_size for file in files) >= AHEAD_MIN_BYTES
            ahead = cls(inventory_paths) if worth else None
        except Exception:  # a path that cannot be read (reported elsewhere), no helper
            ahead = None
        try:
            yield ahead
        finally:
            if ahead is not None:
                ahead.close()

    def want(self, wanted: Wanted) -> None:
        """Ask for the positions of ``wanted`` (once): :meth:`found` gives them. The
        request is written by a thread: the helper reads it only once it has answered
        the namespaces, and a pipe holds 64 KiB, so writing it here would hold the
        checks back until then."""
        self._wanted = wanted
        self._asking = threading.Thread(target=self._ask, args=("found", wanted), daemon=True)
        self._asking.start()

    def namespaces(self, positions: Positions) -> tuple[Mapping[str, Place], Place]:
        """Every declared namespace's place, and the place of the others."""
        sent = self._answer("namespaces")
        if (isinstance(sent, tuple) and len(sent) == 2 and isinstance(sent[0], dict) and _is_place(sent[1])
                and all(isinstance(ns, str) and _is_place(place) for ns, place in sent[0].items())):
            return sent
        return NamespacePlaces.read(self._inventory_paths, positions).every()

    def found(self, positions: Positions) -> Found:
        """The positions of the paths :meth:`want` asked for."""
        sent = self._answer("found")
        return sent if _is_found(sent, self._wanted) else positions_of(self._wanted, positions)

    def _ask(self, kind: str, argument: object) -> None:
        helper = self._helper
        if helper is None or helper.stdin is None:
            return
        # A helper that died (or was stopped) takes no request: answered here.
        with contextlib.suppress(OSError, ValueError):
            pickle.dump((kind, argument), helper.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            helper.stdin.flush()

    def _answer(self, kind: str) -> Any:
        while kind not in self._answers and self._helper is not None and self._helper.stdout is not None:
            try:
                sent = pickle.load(self._helper.stdout)
            except Exception:  # it ended, or died mid-answer
                sent = None
            if not (isinstance(sent, tuple) and len(sent) == 2 and isinstance(sent[0], str)):
                self.close()  # the rest is found here
                break
            self._answers[sent[0]] = sent[1]
        return self._answers.pop(kind, None)

    def close(self) -> None:
        """Stop the helper, if it still runs (safe to call twice)."""
        helper, self._helper = self._helper, None
        if helper is None:
            return
        with contextlib.suppress(OSError):
            helper.kill()
        helper.wait()
        if self._asking is not None:  # its write fails once the helper is gone
            self._asking.join()
        for pipe in (helper.stdin, helper.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _is_place(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 3


def _is_found(value: object, wanted: Wanted) -> bool:
    """Is ``value`` a position for every path of ``wanted``, as :func:`positions_of` gives?"""
    if not isinstance(value, dict):
        return False
    for file, by_doc in wanted.items():
        found = value.get(file)
        if not isinstance(found, dict):
            return False
        for index, paths in by_doc.items():
            positions = found.get(index)
            if not isinstance(positions, dict) or not all(
                    isinstance(p := positions.get(path), tuple) and len(p) == 2 for path in paths):
                return False
    return True


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The helper: answer each pickled (kind, argument) request until there are no more."""
    positions = Positions()
    while True:
        try:
            kind, argument = pickle.load(requests)
        except EOFError:
            return
        if kind == "namespaces":
            answer: Any = NamespacePlaces.read(argument, positions).every()
        else:
            answer = positions_of(argument, positions)
        pickle.dump((kind, answer), answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def unplaced_paths(unplaced: Iterable[tuple[int, Document, FieldPath]]) -> Wanted:
    """(finding index, document, path) entries as paths by file and document index."""
    paths: Wanted = {}
    for _, doc, path in unplaced:
        paths.setdefault(doc.file, {}).setdefault(doc.index, []).append(path)
    return paths


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
