"""Big YAML inputs parsed on a second core while this process reads.

Parsing YAML is most of what a command reading big YAML inputs does (libyaml's
events and a Python object per scalar: 1.5 s for a 50,000-pod inventory of
15 MB, 0.4 s for its 10,000 policies; 4.2 s for the 32 MB of policies at
Antrea's scale point), and one process parses on one core. :class:`YamlAhead`
forks a child that parses while this process reads the inventory:

* the policy files, whole, with the function the reader uses
  (:func:`callgate.policy.yamlfast.load_all`); the policy loader then takes
  their documents instead of parsing;
* first, the tail of the inventory when it is one big YAML file: cut before an
  item of its list of endpoints (:func:`callgate.policy.yamlfast.cut_point`),
  the reader parses the head while the child parses the tail, and the two join
  into the whole file's documents (see yamlfast for when they may). Where to
  cut shares the parsing out so that both cores end together.

Nothing depends on the child. A file it could not parse (an error), a file
that changed since it read it (other bytes), a head or a tail that cannot be
joined, or a child that died: the reader parses that file itself, as it would
have, so every value and every error message stays the reader's own. The
child only parses and pickles (:class:`callgate.forked.Child`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callgate.errors import InputError
from callgate.forked import Child, Send
from callgate.policy import yamlfast
from callgate.policy.documents import files_under
from callgate.policy.limits import MAX_FILE_BYTES

# Below this many bytes of YAML the fork, the pickling and the wait cost more than they save.
AHEAD_MIN_BYTES = 1 << 20
_YAML_SUFFIXES = (".yaml", ".yml")
# What this process does with each byte of the inventory beyond parsing it, as a share of
# the parse: building the endpoints from the documents, and unpickling what the child sent.
# Measured (compile from YAML at 50,000 pods / 10,000 policies): 0.2 to 0.5 alike.
_HEAD_EXTRA = 0.35
# A head of more than this share leaves the child too little of the file to be worth a cut.
_MAX_HEAD = 0.9


def digest(raw: bytes) -> bytes:
    """What identifies the bytes a file's documents were parsed from."""
    return hashlib.blake2b(raw, digest_size=16).digest()


@dataclass
class Split:
    """A YAML file this process reads the head of (up to ``cut``) and the child the rest."""

    path: Path
    raw: bytes
    text: str
    cut: int


class YamlAhead:
    """Documents of YAML files, parsed by a forked child; see the module docstring."""

    def __init__(self, files: list[Path], split: Split | None = None) -> None:
        self._split = split
        self._sent: dict[tuple[str, str], Any] = {}
        self._child = Child(lambda send: _parse(files, split, send))
        self._messages = self._child.received()

    @classmethod
    @contextlib.contextmanager
    def started(cls, paths: Iterable[str | Path], split: Iterable[str | Path] = ()) -> Iterator[YamlAhead | None]:
        """A child parsing the YAML files under ``paths``, and the tail of the first big YAML
        file under ``split``, when they are worth it (None when not); stopped and reaped
        however the block ends."""
        try:
            files = [p for p in files_under(paths) if p.suffix in _YAML_SUFFIXES]
            sizes = [p.stat().st_size for p in files]
            cut = _split(split, sum(sizes)) if max(sizes, default=0) <= MAX_FILE_BYTES else None
            worth = cut is not None or (files and sum(sizes) >= AHEAD_MIN_BYTES)
            ahead = cls(files, cut) if worth else None
        except (InputError, OSError):  # the reader reports what cannot be read; a failed fork: parse here
            ahead = None
        if ahead is None:
            yield None
            return
        try:
            yield ahead
        finally:
            ahead.close()

    def documents(self, path: Path, raw: bytes) -> list[Any] | None:
        """The documents of ``path`` if the child parsed exactly ``raw`` (or its tail, then
        this process parses the head and joins them); None: parse it here."""
        split = self._split
        if split is not None and split.path == path:
            self._split = None
            if raw != split.raw:
                return None
            head = yamlfast.load_head(split.text[:split.cut])
            tail = self._message("tail", path) if head is not None else None
            return yamlfast.joined(head, tail) if head is not None and isinstance(tail, yamlfast.Tail) else None
        found = self._message("whole", path)
        if not (isinstance(found, tuple) and len(found) == 2) or found[0] != digest(raw):
            return None
        docs: list[Any] | None = found[1]
        return docs

    def _message(self, kind: str, path: Path) -> Any:
        """What the child sent of ``kind`` for ``path`` (handed over once), reading on as far
        as needed; None when it sent nothing for it."""
        key = (kind, str(path))
        while key not in self._sent:
            sent = next(self._messages, None)  # None: the child is done or died (the rest is parsed here)
            if not (isinstance(sent, tuple) and len(sent) == 3 and isinstance(sent[1], str)):
                break
            self._sent[(sent[0], sent[1])] = sent[2]
        return self._sent.pop(key, None)

    def close(self) -> None:
        self._child.close()


def _split(paths: Iterable[str | Path], others: int) -> Split | None:
    """The first big YAML file under ``paths`` and where to cut it (None: nowhere). The head
    takes what leaves both cores the same work: the child parses the tail and ``others``
    bytes of policies; this process parses the head and builds the inventory from it all."""
    for path in files_under(paths):
        if path.suffix not in _YAML_SUFFIXES:
            continue
        size = path.stat().st_size
        if size < AHEAD_MIN_BYTES or size > MAX_FILE_BYTES:
            continue  # not worth it, or refused by the reader
        share = (size + others) / (size * (2 + _HEAD_EXTRA))
        if share > _MAX_HEAD:
            return None
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        cut = yamlfast.cut_point(text, int(len(text) * share))
        return Split(path, raw, text, cut) if cut is not None else None
    return None


def _parse(files: list[Path], split: Split | None, send: Send) -> None:
    """In the child: the tail of the split file first (the reader needs it first), then every
    file whole: send (kind, name, what), each kind and name once."""
    if split is not None:
        send(("tail", str(split.path), yamlfast.load_tail(split.text[split.cut:])))
    for path in files:
        try:
            raw = path.read_bytes()
            found: tuple[bytes, list[Any]] | None = (digest(raw), yamlfast.load_all(raw.decode("utf-8")))
        except Exception:  # the reader parses it again and says what is wrong
            found = None
        send(("whole", str(path), found))
