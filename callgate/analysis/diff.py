"""Semantic connectivity diff: who gained or lost access between two policy sets.

A textual diff of YAML says what was edited; this says what it *does*. Both
sets are evaluated over one inventory, with one :class:`Partition` built from
both (so classes and port segments line up), per IP family. Port segments make
the diff exact over all 65,535 ports of each protocol, not just declared ones.

Changes are reported per (source group, destination group) — apps by default —
with the ports merged into ranges, so a reviewer reads "y/frontend -> x/db
gained 5432/TCP" instead of a list of pod pairs. JSON keeps the pod pairs.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callgate.analysis.connectivity import (
    Connectivity,
    Partition,
    Progress,
    ProtocolPortRange,
    family_ip,
    merge_ranges,
    unpack_rows,
)
from callgate.analysis.groups import group_key
from callgate.errors import InputError, Problem
from callgate.policy.model import Direction, Inventory, PolicySet


@dataclass
class Change:
    """Access that one group gained (or lost) to another."""

    src: str
    dst: str
    gained: bool
    ports: list[ProtocolPortRange]
    pairs: set[tuple[str, str]] = field(default_factory=set)  # (src pod, dst pod)
    families: set[int] = field(default_factory=set)
    total_pairs: int = 0  # pod pairs between the two groups

    def ports_text(self) -> str:
        return ", ".join(p.text() for p in self.ports)

    def scope(self) -> str:
        """'' when every pod pair of the groups changed, else 'k of n pod pairs'."""
        return "" if len(self.pairs) == self.total_pairs else f"{len(self.pairs)} of {self.total_pairs} pod pairs"

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.src, "to": self.dst, "change": "gained" if self.gained else "lost",
            "ports": [p.text() for p in self.ports], "families": sorted(self.families),
            "pairs": [list(p) for p in sorted(self.pairs)], "total_pairs": self.total_pairs,
        }


@dataclass
class DiffResult:
    changes: list[Change]
    old_label: str
    new_label: str
    endpoints: int

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def connectivity_diff(inventory: Inventory, old: PolicySet, new: PolicySet, group_by: str = "app",
                      old_label: str = "old", new_label: str = "new",
                      progress: Progress | None = None) -> DiffResult:
    raw: dict[tuple[str, str, bool], dict[str, Any]] = {}
    families = [f for f in (4, 6) if any(family_ip(e, f) for e in inventory.endpoints)]
    steps = done = 0
    parts = [Partition(inventory, [old, new], f) for f in families]
    # One step per segment and family, and one per family for expanding pod pairs.
    steps = sum(len(p.segments()) + 1 for p in parts)
    merged: dict[tuple[int, int], list[ProtocolPortRange]] = {}  # (family, segment mask) -> port ranges
    for part in parts:
        a, b = Connectivity(part, old), Connectivity(part, new)
        segments = part.segments()
        n = part.size
        # First which class pairs changed, in which direction and on which segments (as a
        # bit mask per pair); only then pod pairs, once per (class pair, direction).
        # Expanding pod pairs segment by segment repeated the same pairs for every
        # segment they changed on (19 segments at bench size: 50 s instead of 4).
        flat_parts, seg_parts = [], []
        for k, seg in enumerate(segments):
            flat = _changed_cells(a, b, seg)
            flat_parts.append(flat)
            seg_parts.append(np.full(len(flat), k, dtype=np.int64))
            done += 1
            if progress:
                progress(done, steps)
        keys, masks = _segment_masks(np.concatenate(flat_parts or [np.empty(0, np.int64)]),
                                     np.concatenate(seg_parts or [np.empty(0, np.int64)]))
        sources, rest = np.divmod(keys, 2 * n)
        dests, gains = np.divmod(rest, 2)
        groups = _class_groups(part, group_by, set(sources.tolist()) | set(dests.tolist()))
        fam = part.family
        for s, d, g, mask in zip(sources.tolist(), dests.tolist(), gains.tolist(), masks, strict=True):
            gained = bool(g)
            for gx, xs in groups[s]:
                for gy, ys in groups[d]:
                    if s == d:
                        # A pod always reaches itself: leave out (x, x).
                        pairs = [(x, y) for x in xs for y in ys if x != y]
                        if not pairs:
                            continue
                    else:
                        pairs = [(x, y) for x in xs for y in ys]
                    entry = raw.setdefault((gx, gy, gained), {"ports": {}, "pairs": {}})
                    entry["ports"][fam] = entry["ports"].get(fam, 0) | mask
                    entry["pairs"].setdefault(fam, set()).update(pairs)
        done += 1
        if progress:
            progress(done, steps)
        for entry in raw.values():
            m = entry["ports"].get(fam)
            if m is not None and (fam, m) not in merged:
                merged[(fam, m)] = merge_ranges(segments[k] for k in range(len(segments)) if m >> k & 1)
    sizes: dict[str, int] = {}
    for ep in inventory.endpoints:
        name = group_key(ep, group_by)
        sizes[name] = sizes.get(name, 0) + 1
    changes = []
    for (src, dst, gained), entry in raw.items():
        total = sizes[src] * sizes[dst] - (sizes[src] if src == dst else 0)
        per_family = {f: (merged[(f, entry["ports"][f])], entry["pairs"][f]) for f in sorted(entry["ports"])}
        if len({(tuple(r), frozenset(p)) for r, p in per_family.values()}) == 1:
            # The same change in both families (the usual case): one line.
            ranges, pairs = next(iter(per_family.values()))
            changes.append(Change(src, dst, gained, ranges, set(pairs), set(per_family), total))
        else:
            changes.extend(Change(src, dst, gained, r, set(p), {f}, total) for f, (r, p) in per_family.items())
    changes.sort(key=lambda c: (not c.gained, c.dst, c.src))
    return DiffResult(changes, old_label, new_label, len(inventory.endpoints))


def _changed_cells(a: Connectivity, b: Connectivity, seg: ProtocolPortRange) -> np.ndarray:
    """The cells of one segment's class matrix that differ between ``a`` and ``b``, as
    ``(source * n + destination) * 2 + gained``.

    ``m[s, d] = egress[s] has d and ingress[d] has s``. A cell can only change where
    the source's egress bits or the destination's ingress bits differ, so only those
    rows and columns are compared: no full matrices, and no transposed AND of n x n
    booleans per segment (the cost that grew with classes² once the rest was fast)."""
    n = a.partition.size
    sides = [[conn.side_bits(c, direction, seg.protocol, seg.lo) for c in range(n)]
             for conn in (a, b) for direction in (Direction.EGRESS, Direction.INGRESS)]
    ea, ia, eb, ib = sides
    rows = [s for s in range(n) if ea[s] != eb[s]]
    cols = [d for d in range(n) if ia[d] != ib[d]]
    out = []
    if rows:
        r = np.array(rows, dtype=np.int64)
        # Rows whose egress changed, every column: ingress[d] has s is column s of ingress.
        new = unpack_rows([eb[s] for s in rows], n) & unpack_rows(ib, n)[:, r].T
        old = unpack_rows([ea[s] for s in rows], n) & unpack_rows(ia, n)[:, r].T
        ri, d = np.nonzero(old ^ new)
        out.append((r[ri] * n + d) * 2 + new[ri, d])
    if cols:
        c = np.array(cols, dtype=np.int64)
        # Columns whose ingress changed, the rows not done above: egress[s] has d is
        # column d of egress.
        new = unpack_rows(eb, n)[:, c] & unpack_rows([ib[d] for d in cols], n).T
        old = unpack_rows(ea, n)[:, c] & unpack_rows([ia[d] for d in cols], n).T
        changed = old ^ new
        if rows:
            changed[rows, :] = False
        s, cj = np.nonzero(changed)
        out.append((s * n + c[cj]) * 2 + new[s, cj])
    if not out:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def _segment_masks(keys: np.ndarray, segs: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Group (key, segment) records by key: the distinct keys, sorted, and for each the
    segments it occurs on as a bit mask (a Python int: any number of segments). Done
    in numpy in 62-segment words, as there are ~10^6 records at bench size."""
    if len(keys) == 0:
        return keys, []
    order = np.argsort(keys, kind="stable")
    keys, segs = keys[order], segs[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    masks = [0] * len(starts)
    for word in range(int(segs.max()) // 62 + 1):
        lo = word * 62
        inside = (segs >= lo) & (segs < lo + 62)
        bits = np.where(inside, np.left_shift(np.int64(1), np.clip(segs - lo, 0, 61)), 0)
        for i, w in enumerate(np.bitwise_or.reduceat(bits, starts).tolist()):
            if w:
                masks[i] |= w << lo
    return keys[starts], masks


def _class_groups(part: Partition, group_by: str, classes: set[int]) -> dict[int, list[tuple[str, list[str]]]]:
    """Per class: its members' keys by group, groups in order of first member."""
    out: dict[int, list[tuple[str, list[str]]]] = {}
    for c in classes:
        by_group: dict[str, list[str]] = {}
        for ep in part.members[c]:
            by_group.setdefault(group_key(ep, group_by), []).append(ep.key)
        out[c] = list(by_group.items())
    return out


# -- output ------------------------------------------------------------------------


def _family_note(c: Change, families: int) -> str:
    if families > 1 and len(c.families) == 1:
        return f" (IPv{next(iter(c.families))} only)"
    return ""


def text(result: DiffResult) -> str:
    if not result.changed:
        return f"no change in access between {result.old_label} and {result.new_label} " \
               f"({result.endpoints} endpoints)\n"
    fams = len({f for c in result.changes for f in c.families})
    lines = [f"access changes from {result.old_label} to {result.new_label} ({result.endpoints} endpoints):"]
    for gained in (True, False):
        group = [c for c in result.changes if c.gained is gained]
        if not group:
            continue
        lines.append("")
        lines.append(("GAINED" if gained else "LOST") + f" ({len(group)}):")
        width = max(len(c.src) for c in group)
        for c in group:
            scope = c.scope()
            lines.append(f"  {'+' if gained else '-'} {c.src:<{width}} -> {c.dst}  {c.ports_text()}"
                         f"{_family_note(c, fams)}{'  [' + scope + ']' if scope else ''}")
    return "\n".join(lines) + "\n"


def markdown(result: DiffResult) -> str:
    if not result.changed:
        return f"**No change in access** between `{result.old_label}` and `{result.new_label}`.\n"
    fams = len({f for c in result.changes for f in c.families})
    gained = sum(c.gained for c in result.changes)
    out = [f"### Access changes: `{result.old_label}` → `{result.new_label}`", "",
           f"{gained} gained, {len(result.changes) - gained} lost ({result.endpoints} endpoints).", "",
           "| | from | to | ports | scope |", "|---|---|---|---|---|"]
    for c in result.changes:
        scope = c.scope() or "all pod pairs"
        out.append(f"| {'➕ gained' if c.gained else '➖ lost'} | `{c.src}` | `{c.dst}` | "
                   f"{c.ports_text()}{_family_note(c, fams)} | {scope} |")
    return "\n".join(out) + "\n"


def to_json(result: DiffResult) -> str:
    return json.dumps({"old": result.old_label, "new": result.new_label, "changed": result.changed,
                       "changes": [c.to_json() for c in result.changes]}, indent=2)


# -- git revisions ------------------------------------------------------------------


def _git(args: Sequence[str], cwd: Path) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise InputError.single("git is not installed") from None
    if done.returncode != 0:
        raise InputError.single(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}",
                                file=str(cwd))
    return done.stdout


def parse_revisions(spec: str) -> tuple[str, str | None]:
    """``A..B`` -> (A, B); ``A`` -> (A, None) meaning A against the working tree."""
    if ".." in spec:
        old, _, new = spec.partition("..")
        if not old or not new or "." in new[:1]:
            raise InputError.single(f"--git {spec!r}: expected REV..REV (e.g. main..HEAD) or one REV")
        return old, new
    return spec, None


@dataclass(frozen=True)
class Revisions:
    """The policy paths as they are at two revisions (or one and the working tree)."""

    old_label: str
    new_label: str
    old_paths: list[Path]
    new_paths: list[Path]


def at_revisions(spec: str, paths: Sequence[str], into: Path) -> Revisions:
    """Materialise ``paths`` at the revisions of ``spec`` (``A..B`` or ``A``: A against
    the working tree) under ``into``. A path absent at one side is an empty policy
    set there (a directory added or removed); a path absent at both is a mistake,
    reported, as is a revision that does not exist."""
    old_rev, new_rev = parse_revisions(spec)
    old = materialise(old_rev, paths, into / "old")
    if new_rev is not None:
        new = materialise(new_rev, paths, into / "new")
    else:
        new = {raw: Path(raw) if Path(raw).exists() else None for raw in paths}
    new_label = new_rev or "working tree"
    missing = [raw for raw in paths if old[raw] is None and new[raw] is None]
    if missing:
        raise InputError([Problem(f"no such path at {old_rev}, nor {'at ' if new_rev else 'in the '}{new_label}",
                                  file=raw) for raw in missing])
    return Revisions(old_rev, new_label, [p for p in old.values() if p is not None],
                     [p for p in new.values() if p is not None])


def materialise(rev: str, paths: Sequence[str], into: Path) -> dict[str, Path | None]:
    """Extract ``paths`` as they are at ``rev`` into ``into`` (git archive, argv lists,
    no shell): each given path -> its extracted copy, or None when ``rev`` does not
    have it."""
    out: dict[str, Path | None] = {}
    for raw in paths:
        path = Path(raw).resolve()
        anchor = path if path.is_dir() else path.parent
        while not anchor.exists():
            anchor = anchor.parent
        root = Path(_git(["rev-parse", "--show-toplevel"], anchor).decode().strip())
        rel = path.relative_to(root).as_posix()
        if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
                          capture_output=True, check=False).returncode != 0:
            raise InputError.single(f"--git: {rev!r} is not a commit (branch, tag or revision) of the "
                                    f"repository at {root}")
        listed = _git(["ls-tree", "-r", "--name-only", rev, "--", rel], root).decode().split("\n")
        if not any(listed):
            out[raw] = None
            continue
        data = _git(["archive", "--format=tar", rev, "--", rel], root)
        _extract(data, into)
        out[raw] = into / rel
    return out


def _extract(data: bytes, target: Path) -> None:
    """Extract regular files and directories of a git archive, refusing anything that
    would land outside ``target`` (tarfile's ``filter="data"`` is not in every 3.11)."""
    root = target.resolve()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            dest = (root / member.name).resolve()
            if root not in dest.parents and dest != root:
                raise InputError.single(f"git archive entry {member.name!r} points outside the target")
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is not None:
                    dest.write_bytes(source.read())
