"""``--flow-log PATH``: where records go, checked at start.

``-`` is standard output. A file is opened for appending when the agent
starts, so an unwritable path is a clear error before anything else happens
(the CLI exits 1), not a failure on the first denied packet. Each record is
one ``write`` of one line, flushed: a reader following the file never sees
half a record, and a crash loses at most the record being written.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from callgate.agent.flowlog.record import FlowRecord


class FlowLogError(ValueError):
    """The flow log cannot be written (the message names the path and why)."""


class FlowLogWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path == "-":
            self._stream: TextIO = sys.stdout
            self._owned = False
        else:
            try:
                self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the writer
            except OSError as exc:
                raise FlowLogError(f"--flow-log {path}: cannot open for writing: {exc.strerror or exc}") from None
            self._owned = True

    def write(self, records: list[FlowRecord]) -> None:
        if not records:
            return
        text = "".join(r.line() for r in records)
        with self._lock:
            self._stream.write(text)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._owned and not self._stream.closed:
                self._stream.close()
