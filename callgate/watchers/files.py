"""The file source: an inventory and policy files on disk, followed as they change.

Inputs are the same paths ``callgate apply`` takes (files, or directories read
recursively); the inventory may be left out when another source says who runs
where (the Docker source takes only the policies from here). The source watches with inotify (through ``watchfiles``) and,
after each burst of changes, reloads everything and publishes either a
:class:`Snapshot` or — when a file is missing, unreadable or invalid — a
:class:`SourceProblem` that names the file, object and field. The agent keeps
its last rules on a problem; the next good write is picked up as usual.

Why it watches directories: editors and ``kubectl``'s ConfigMap mounts replace
a file by renaming another one over it (or by swapping a symlink), which ends
an inotify watch on the file itself. So a file input is watched through its
parent directory (and a change anywhere in that directory triggers a reload);
a directory input is watched recursively. Reloads whose content hash equals
the last published one publish nothing, so unrelated files cost a hash, not a
sync.

Latency: a write is picked up once inotify has been quiet for ``step_ms``
(5 ms: the events of one write or rename, not more) and at most
``debounce_ms`` after the first event of a long stream of them. Reloads are
coalesced as the agent's reactor coalesces syncs (:mod:`callgate.watchers.coalesce`):
the first change after a quiet spell is reloaded at once, further ones in a burst
wait longer and longer, so a burst is a handful of reloads, not one per write.

Edits made between the first load and the moment the watch is in place (and
any inotify event lost to an overflow) would go unseen, so whenever the watch
has been quiet for a second the source re-hashes its inputs (bytes only, no
parsing) and reloads if they differ from what it last published.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from callgate.errors import InputError, Problem
from callgate.policy import Inventory, PolicySet, load_inventory, load_policies
from callgate.policy.documents import files_under
from callgate.watchers.base import Snapshot, SnapshotHandler, SourceProblem
from callgate.watchers.coalesce import CoalescePolicy, Coalescer

log = logging.getLogger("callgate.watchers.files")


@dataclass(frozen=True)
class _Loaded:
    inventory_hash: str
    inventory: Inventory
    policies_hash: str
    policies: PolicySet


class FilesSource:
    """A :class:`~callgate.watchers.base.Source` over inventory and policy paths."""

    def __init__(self, inventory: Sequence[str | Path], policies: Sequence[str | Path],
                 debounce_ms: int = 500, step_ms: int = 5, force_polling: bool = False) -> None:
        for path in (*inventory, *policies):
            if not Path(path).exists():
                # At start a missing path is a typo, not an outage: say so, watch nothing.
                raise InputError.single("no such file or directory", file=str(path))
        self.inventory = [Path(p) for p in inventory]
        self.policies = [Path(p) for p in policies]
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.force_polling = force_polling
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_version: str | None = None
        self._handler: SnapshotHandler | None = None
        self.loads = 0  # reloads done (tests and debugging)
        self._kept: _Loaded | None = None  # the last good load, by the hashes of each side's files
        self._coalescer = Coalescer(CoalescePolicy())  # reloads in a burst (see _reload_coalesced)

    @property
    def origin(self) -> str:
        return "files " + " + ".join(str(p) for p in (*self.inventory, *self.policies))

    # -- loading -------------------------------------------------------------

    def version(self) -> str:
        """A hash of every input file's name and bytes (OSError/InputError if unreadable)."""
        return self._combined(self._hash(self.inventory), self._hash(self.policies))

    @staticmethod
    def _combined(inventory_hash: str, policies_hash: str) -> str:
        return hashlib.sha256(f"{inventory_hash}/{policies_hash}".encode()).hexdigest()[:16]

    @staticmethod
    def _hash(paths: Sequence[Path]) -> str:
        digest = hashlib.sha256()
        for path in files_under(paths):
            digest.update(str(path).encode() + b"\x00")
            digest.update(path.read_bytes())
            digest.update(b"\x00")
        return digest.hexdigest()[:16]

    def load(self) -> Snapshot | SourceProblem:
        """Read every input now. Never raises for bad input.

        The side whose bytes did not change since the last good load is reused
        (models are immutable): a policy edit does not parse a large inventory
        again, nor a pod change the policies. A hash taken before a file changes
        again only makes the next load parse it once more."""
        self.loads += 1
        try:
            inventory_hash, policies_hash = self._hash(self.inventory), self._hash(self.policies)
            version = self._combined(inventory_hash, policies_hash)
            kept = self._kept
            inventory = (kept.inventory if kept is not None and kept.inventory_hash == inventory_hash
                         else load_inventory(self.inventory))
            policies = (kept.policies if kept is not None and kept.policies_hash == policies_hash
                        else load_policies(self.policies))
        except InputError as err:
            return SourceProblem(f"invalid input: {err.problems[0] if err.problems else err}", list(err.problems))
        except OSError as exc:
            return SourceProblem(f"cannot read input: {exc}", [Problem(str(exc), file=exc.filename)])
        self._kept = _Loaded(inventory_hash, inventory, policies_hash, policies)
        return Snapshot(inventory, policies, version, self.origin)

    def _publish(self, event: Snapshot | SourceProblem) -> None:
        if isinstance(event, Snapshot):
            if event.version == self._last_version:
                return  # same bytes as last time: nothing to say
            self._last_version = event.version
        else:
            self._last_version = None  # the next good content is news, even if unchanged
            log.warning("input problem", extra={"fields": {"problem": event.message,
                                                            "details": [str(p) for p in event.problems][:20]}})
        assert self._handler is not None
        self._handler(event)

    # -- watching ------------------------------------------------------------

    def _roots(self) -> tuple[list[Path], set[Path], list[Path]]:
        """Directories to watch; parents of file inputs; directory inputs."""
        parents: set[Path] = set()
        dirs: list[Path] = []
        for path in (*self.inventory, *self.policies):
            resolved = path.resolve()
            if resolved.is_dir():
                dirs.append(resolved)
            else:
                parents.add(resolved.parent)
        roots = sorted({*parents, *dirs})
        # Watching a parent and a directory under it twice would double events; keep the outer one.
        roots = [r for r in roots if not any(o != r and r.is_relative_to(o) for o in roots)]
        return roots, parents, dirs

    def _relevant(self, _change: object, changed: str) -> bool:
        path = Path(changed)
        _, parents, dirs = self._roots()
        if path.parent in parents:
            return True
        return any(path.is_relative_to(d) for d in dirs)

    def _run(self) -> None:
        import watchfiles

        self._publish(self.load())
        while not self._stop.is_set():
            roots, _, _ = self._roots()
            missing = [r for r in roots if not r.is_dir()]
            if missing:
                self._publish(SourceProblem(f"cannot watch {missing[0]}: no such directory"))
                self._stop.wait(1.0)
                continue
            # Recursive only when a directory is an input: a file's parent may be
            # /etc or $HOME, whose subtrees are none of our business.
            recursive = bool(self._roots()[2])
            try:
                for _changes in watchfiles.watch(
                        *roots, watch_filter=self._relevant, debounce=self.debounce_ms, step=self.step_ms,
                        recursive=recursive,
                        stop_event=self._stop, rust_timeout=1000, yield_on_timeout=True,
                        raise_interrupt=False, force_polling=self.force_polling):
                    if self._stop.is_set():
                        return
                    if _changes:
                        self._reload_coalesced()
                    else:
                        # Quiet for a second: make sure nothing was missed (an edit
                        # before the watch was in place, a lost event) and, after a
                        # problem, look again: a fix may come by a path the watch
                        # cannot see (a directory recreated).
                        self._recheck()
            except Exception as exc:  # the watch itself broke (directory removed, inotify limits)
                self._publish(SourceProblem(f"watching {', '.join(map(str, roots))} failed: {exc}"))
                self._stop.wait(1.0)

    def _reload_coalesced(self) -> None:
        """Reload after a change: at once after a quiet spell; inside a burst (a
        generator writing one file or one rename per pod, a ConfigMap sync) only
        after the coalescing wait, so that the burst's further writes go into the
        same reload. inotify's own grouping ends at 5 ms of quiet, and a burst's
        reloads came often and unevenly enough for the reactor to take them for
        separate lone changes (7 transactions for 1,000 renames in 1.3 s)."""
        now = time.monotonic()
        self._coalescer.changed(now)
        due = self._coalescer.due()
        if due is not None and due > now and self._stop.wait(due - now):
            return
        self._coalescer.start(time.monotonic())
        try:
            self._publish(self.load())
        finally:
            self._coalescer.done(time.monotonic())

    def _recheck(self) -> None:
        """Reload when the inputs' bytes differ from the last published ones."""
        try:
            unchanged = self._last_version is not None and self.version() == self._last_version
        except (OSError, InputError):
            unchanged = False
        if not unchanged:
            self._publish(self.load())

    def start(self, handler: SnapshotHandler) -> None:
        self._handler = handler
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="callgate-files", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
