"""What every source of truth hands the agent: consistent snapshots.

A source (the Kubernetes API, or files on disk) watches its inputs and, after
each burst of changes, publishes a :class:`Snapshot` — a complete, consistent
view of who runs where and who may call whom. Sources never talk to the kernel
and the agent never talks to the API: the snapshot is the only thing that
crosses.

When a source cannot produce a valid snapshot (the API server is down, a file
is bad) it reports a :class:`SourceProblem` instead; the agent then keeps the
rules it last applied. It never flushes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from callgate.errors import Problem
from callgate.policy.model import Inventory, PolicySet

log = logging.getLogger("callgate.watchers")
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    inventory: Inventory
    policies: PolicySet
    version: str  # opaque; changes whenever the content may have changed
    origin: str  # "kubernetes https://…", "files inventory.yaml + policies/" …
    # Objects the source skipped because they are invalid (the rest still applies):
    # one bad object from a shared source must not block the whole cluster.
    problems: list[Problem] = field(default_factory=list)
    # Workloads the source sees running but that cannot be enforced (a Docker
    # container on the host's network stack): not endpoints, and never silent.
    not_enforceable: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class SourceProblem:
    """The source is unavailable or its input is invalid; keep the last rules."""

    message: str
    problems: list[Problem] = field(default_factory=list)


def clip(text: str, limit: int = 512) -> str:
    """A single printable line of at most ``limit`` characters: strings from a
    source (API objects, container labels) end up in messages and logs, and are
    hostile; one object must not flood a log or forge a line of it."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


SnapshotHandler = Callable[[Snapshot | SourceProblem], None]


def hand_over(handler: Callable[[T], None] | None, item: T, what: str) -> None:
    """Give a watcher's ``item`` to its consumer. The watcher's thread outlives
    any one item: a consumer's bug is logged and must not stop the source."""
    assert handler is not None, "the source was not started"
    try:
        handler(item)
    except Exception:
        log.exception("%s handler failed", what)


class Source(Protocol):
    def start(self, handler: SnapshotHandler) -> None:
        """Begin watching; call ``handler`` with the first snapshot (or problem)
        as soon as possible and again after every change. Runs in background
        threads; returns immediately."""

    def stop(self) -> None:
        """Stop watching and release connections/threads."""
