"""YAML policy files parsed on a second core while the inventory is read.

Parsing YAML is most of what a command reading big YAML inputs does (libyaml's
events and a Python object per scalar: 4.2 s for the 32 MB of policies at
Antrea's scale point, 3.8 s more for its inventory), and one process parses on
one core. :class:`YamlAhead` forks a child that parses the policy files with the
same function the reader uses (:func:`callgate.policy.yamlfast.load_all`) and
sends each file's documents back pickled, while this process reads the
inventory; the policy loader then takes the documents instead of parsing.

Nothing depends on the child. A file it could not parse (an error), a file
that changed since it read it (the digest of the bytes differs), or a child
that died: the reader parses that file itself, as it would have, so every value
and every error message stays the reader's own. The child only parses and
pickles (:class:`callgate.forked.Child`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
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


def digest(raw: bytes) -> bytes:
    """What identifies the bytes a file's documents were parsed from."""
    return hashlib.blake2b(raw, digest_size=16).digest()


class YamlAhead:
    """The documents of YAML files, parsed by a forked child; see the module docstring."""

    def __init__(self, files: list[Path]) -> None:
        self._results: dict[str, tuple[bytes, list[Any]]] | None = None
        self._child = Child(lambda send: _parse(files, send))

    @classmethod
    @contextlib.contextmanager
    def started(cls, paths: Iterable[str | Path]) -> Iterator[YamlAhead | None]:
        """A child parsing the YAML files under ``paths`` when they are worth it
        (None when not), stopped and reaped however the block ends."""
        try:
            files = [p for p in files_under(paths) if p.suffix in _YAML_SUFFIXES]
            sizes = [p.stat().st_size for p in files]
            ahead = (cls(files) if files and sum(sizes) >= AHEAD_MIN_BYTES and max(sizes) <= MAX_FILE_BYTES
                     else None)
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
        """The documents the child parsed from ``path``, if it parsed exactly ``raw``;
        None: parse it here."""
        if self._results is None:
            self._results = self._receive()
        found = self._results.pop(str(path), None)
        if found is None or found[0] != digest(raw):
            return None
        return found[1]

    def _receive(self) -> dict[str, tuple[bytes, list[Any]]]:
        results: dict[str, tuple[bytes, list[Any]]] = {}
        for sent in self._child.received():  # until the child is done or died (the rest is parsed here)
            if not (isinstance(sent, tuple) and len(sent) == 3):
                break
            name, raw_digest, docs = sent
            if docs is not None:
                results[name] = (raw_digest, docs)
        return results

    def close(self) -> None:
        self._child.close()


def _parse(files: list[Path], send: Send) -> None:
    """In the child: parse every file and send (name, digest, documents or None)."""
    for path in files:
        try:
            raw = path.read_bytes()
            docs: list[Any] | None = yamlfast.load_all(raw.decode("utf-8"))
            raw_digest = digest(raw)
        except Exception:  # the reader parses it again and says what is wrong
            docs, raw_digest = None, b""
        send((str(path), raw_digest, docs))
