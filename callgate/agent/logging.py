"""Structured logs: one JSON object per line on stderr.

Log collectors (journald, fluent-bit, kubectl logs | jq) parse these without
regexes. Every record has ``ts``, ``level``, ``logger`` and ``msg``; whatever a
call passes in ``extra={"fields": {...}}`` is merged in at the top level, so an
event reads as ``{"msg": "applied", "mode": "incremental", "seconds": 0.004}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER = "callgate.agent"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(str(key), value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # default=str: a stray Path or exception in fields must not kill logging.
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    """Send the agent's logs (and the watchers') as JSON lines to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("callgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return logging.getLogger(LOGGER)


def log(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """``logger.log`` with structured fields."""
    logger.log(level, msg, extra={"fields": fields})
