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
pickles (no kernel, no locks of this process's other threads), then leaves
with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from callgate.errors import InputError
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
        read_end, write_end = os.pipe()
        try:
            self._pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            raise
        if self._pid == 0:  # the child: parse, send, leave
            os.close(read_end)
            _child(files, os.fdopen(write_end, "wb"))
        os.close(write_end)
        self._pipe: BinaryIO = os.fdopen(read_end, "rb")

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
        with self._pipe:
            while True:
                try:
                    name, raw_digest, docs = pickle.load(self._pipe)
                except Exception:  # EOF: all sent, or the child died (the rest is parsed here)
                    break
                if docs is not None:
                    results[name] = (raw_digest, docs)
        self._reap()
        return results

    def close(self) -> None:
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        if not self._pipe.closed:
            self._pipe.close()

    def _reap(self) -> None:
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = 0


def _child(files: list[Path], out: BinaryIO) -> None:
    """Parse every file and send (name, digest, documents or None); never return."""
    try:
        gc.disable()  # acyclic values, and the process ends right after (as gc_paused explains)
        for path in files:
            try:
                raw = path.read_bytes()
                docs: list[Any] | None = yamlfast.load_all(raw.decode("utf-8"))
                raw_digest = digest(raw)
            except Exception:  # the reader parses it again and says what is wrong
                docs, raw_digest = None, b""
            pickle.dump((str(path), raw_digest, docs), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.close()
    finally:
        os._exit(0)
