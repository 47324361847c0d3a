"""The watchers' local cache: converted API objects, per kind, behind one lock.

Reflectors (one per kind) write into it: a full :meth:`ClusterCache.replace`
after each list, then :meth:`upsert`/:meth:`remove` per watch event. Readers
take :meth:`state`, which assembles a :class:`ClusterState` under the same lock,
so a state never mixes half of one update with half of another. The cache also
knows whether every kind has completed its first list (:attr:`synced`): before
that, a state would be a partial picture of the cluster (pods without their
policies) and must not be published.

Objects are converted once, on arrival (see :mod:`k8s_convert`); the raw dicts are
not kept, which keeps memory at what callgate actually uses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from callgate.policy.documents import gc_paused
from callgate.watchers.k8s_convert import KINDS, ClusterState, Converted, assemble, convert, object_ref

Key = tuple[str, str]  # (namespace or "", name)


def _key(entry: Converted) -> Key:
    return entry.ref.namespace or "", entry.ref.name


@dataclass
class Listed:
    """A full list of one kind, converted as it arrives: a reflector adds each page
    while the server prepares the next one, and the raw page is dropped at once."""

    kind: str
    entries: dict[Key, Converted] = field(default_factory=dict)
    ignored: int = 0  # objects that could not even be keyed

    def add(self, objects: Iterable[Any]) -> None:
        for obj in objects:
            entry = convert(self.kind, obj)
            if entry is None:
                self.ignored += 1
            else:
                self.entries[_key(entry)] = entry


class ClusterCache:
    """Thread-safe store of converted objects with per-kind sync state."""

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self._lock = threading.Lock()
        self._kinds = tuple(kinds)
        self._entries: dict[str, dict[Key, Converted]] = {k: {} for k in self._kinds}
        self._synced: set[str] = set()
        self._versions: dict[str, str] = {}
        self._changes = 0  # counts content changes; lets readers detect "anything new?"
        self._ignored = 0  # events that could not even be keyed (no usable metadata.name)

    @property
    def synced(self) -> bool:
        """True once every kind has completed its first list."""
        with self._lock:
            return self._synced.issuperset(self._kinds)

    @property
    def changes(self) -> int:
        with self._lock:
            return self._changes

    @property
    def ignored(self) -> int:
        with self._lock:
            return self._ignored

    def resource_version(self, kind: str) -> str | None:
        """Where the next watch of ``kind`` resumes (None before the first list)."""
        with self._lock:
            return self._versions.get(kind)

    def replace(self, kind: str, objects: Iterable[Any], resource_version: str) -> bool:
        """Swap in the result of a full list; returns whether the content changed."""
        listed = Listed(kind)
        listed.add(objects)
        return self.install(listed, resource_version)

    def install(self, listed: Listed, resource_version: str) -> bool:
        """Swap in a full list converted beforehand (outside the lock, so readers are
        not held up); returns whether the content changed."""
        kind, fresh = listed.kind, listed.entries
        with self._lock:
            old = self._entries[kind]
            changed = kind not in self._synced or {k: e.digest for k, e in old.items()} != {
                k: e.digest for k, e in fresh.items()}
            self._entries[kind] = fresh
            self._synced.add(kind)
            self._versions[kind] = resource_version
            self._ignored += listed.ignored
            if changed:
                self._changes += 1
            return changed

    def absent(self, kind: str) -> bool:
        """The server does not serve ``kind`` (an optional kind without its CRD): it
        counts as listed and empty, with nowhere to resume a watch. Returns whether
        the content changed."""
        with self._lock:
            changed = kind not in self._synced or bool(self._entries[kind])
            self._entries[kind] = {}
            self._synced.add(kind)
            self._versions.pop(kind, None)
            if changed:
                self._changes += 1
            return changed

    def upsert(self, kind: str, obj: Any, resource_version: str | None) -> bool:
        """Apply an ADDED/MODIFIED event; returns whether the content changed."""
        entry = convert(kind, obj)
        with self._lock:
            if resource_version:
                self._versions[kind] = resource_version
            if entry is None:
                self._ignored += 1
                return False
            old = self._entries[kind].get(_key(entry))
            self._entries[kind][_key(entry)] = entry
            if old is not None and old.digest == entry.digest:
                return False  # e.g. a pod status heartbeat: nothing callgate uses changed
            self._changes += 1
            return True

    def remove(self, kind: str, obj: Any, resource_version: str | None) -> bool:
        """Apply a DELETED event; returns whether the content changed."""
        ref = object_ref(kind, obj)  # only the name matters for a deletion
        with self._lock:
            if resource_version:
                self._versions[kind] = resource_version
            if ref is None:
                self._ignored += 1
                return False
            if self._entries[kind].pop((ref.namespace or "", ref.name), None) is None:
                return False
            self._changes += 1
            return True

    def bookmark(self, kind: str, resource_version: str) -> None:
        """A BOOKMARK moves the resume point without changing content."""
        with self._lock:
            self._versions[kind] = resource_version

    def forget_version(self, kind: str) -> None:
        """The resume point expired (410 Gone): the next watch needs a fresh list."""
        with self._lock:
            self._versions.pop(kind, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: len(v) for k, v in self._entries.items()}

    def state(self) -> ClusterState:
        """A consistent state of everything cached (call only once :attr:`synced`)."""
        with self._lock:
            # Entries are immutable, so a shallow copy of the dicts is a frozen picture.
            entries = {k: dict(v) for k, v in self._entries.items()}
        with gc_paused():
            return assemble(entries)
