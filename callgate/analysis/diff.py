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

import hashlib
import io
import itertools
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
)
from callgate.analysis.groups import BLOCK, group_key, group_sizes, packed_rows, unpack_bits
from callgate.errors import InputError, Problem
from callgate.policy.model import Direction, Inventory, PolicySet

# Pod pairs listed per change in JSON; beyond, they are counted (a default-deny removed
# at 10,000 pods changes millions of pairs, which no reviewer reads and no memory holds).
MAX_PAIRS = 100
_MASK64 = (1 << 64) - 1


@dataclass
class Change:
    """Access that one group gained (or lost) to another."""

    src: str
    dst: str
    gained: bool
    ports: list[ProtocolPortRange]
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (src pod, dst pod): the first MAX_PAIRS
    families: set[int] = field(default_factory=set)
    total_pairs: int = 0  # pod pairs between the two groups
    pair_count: int = 0  # pod pairs that changed

    def ports_text(self) -> str:
        return ", ".join(p.text() for p in self.ports)

    def scope(self) -> str:
        """'' when every pod pair of the groups changed, else 'k of n pod pairs'."""
        return "" if self.pair_count == self.total_pairs else f"{self.pair_count} of {self.total_pairs} pod pairs"

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.src, "to": self.dst, "change": "gained" if self.gained else "lost",
            "ports": [p.text() for p in self.ports], "families": sorted(self.families),
            "pairs": [list(p) for p in self.pairs], "pair_count": self.pair_count,
            "total_pairs": self.total_pairs,
        }


@dataclass
class DiffResult:
    changes: list[Change]
    old_label: str
    new_label: str
    endpoints: int
    group_by: str = "app"

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass
class _Pairs:
    """The pod pairs of one (source group, destination group, direction) in one family,
    without holding them: a count, an order-independent fingerprint (to tell whether
    both families changed the same pairs) and the first MAX_PAIRS."""

    ports: int = 0  # segment mask
    count: int = 0
    fingerprint: int = 0
    sample: list[tuple[str, str]] = field(default_factory=list)


class _Hashes:
    """Two 64-bit hashes per pod: a pair (x, y) is fingerprinted as a(x)·b(y), so a cross
    product of pods sums to (Σa)·(Σb) without listing its pairs."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, int]] = {}

    def __call__(self, key: str) -> tuple[int, int]:
        found = self._cache.get(key)
        if found is None:
            digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
            found = self._cache[key] = (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
        return found


def connectivity_diff(inventory: Inventory, old: PolicySet, new: PolicySet, group_by: str = "app",
                      old_label: str = "old", new_label: str = "new",
                      progress: Progress | None = None) -> DiffResult:
    raw: dict[tuple[str, str, bool], dict[int, _Pairs]] = {}
    families = [f for f in (4, 6) if any(family_ip(e, f) for e in inventory.endpoints)]
    done = 0
    parts = [Partition(inventory, [old, new], f) for f in families]
    # One step per segment and family, and one per family for expanding pod pairs.
    steps = sum(len(p.segments()) + 1 for p in parts)
    merged: dict[tuple[int, int], list[ProtocolPortRange]] = {}  # (family, segment mask) -> port ranges
    hashes = _Hashes()
    for part in parts:
        a, b = Connectivity(part, old), Connectivity(part, new)
        segments = part.segments()
        n = part.size
        # First which class pairs changed, in which direction and on which segments (as a
        # bit mask per pair); only then pod pairs, once per (class pair, direction).
        # Expanding pod pairs segment by segment repeated the same pairs for every
        # segment they changed on (19 segments at bench size: 50 s instead of 4).
        masks_so_far = _SegmentMasks(len(segments))
        for k, seg in enumerate(segments):
            masks_so_far.add(k, _changed_cells(a, b, seg))
            done += 1
            if progress:
                progress(done, steps)
        keys, masks = masks_so_far.result()
        sources, rest = np.divmod(keys, 2 * n)
        dests, gains = np.divmod(rest, 2)
        groups = _class_groups(part, group_by, set(sources.tolist()) | set(dests.tolist()), hashes)
        fam = part.family
        for s, d, g, mask in zip(sources.tolist(), dests.tolist(), gains.tolist(), masks, strict=True):
            for gx, xs, (xa, _, xab) in groups[s]:
                for gy, ys, (_, yb, _) in groups[d]:
                    count, fingerprint = len(xs) * len(ys), xa * yb
                    if s == d and gx == gy:
                        # A pod always reaches itself: leave out (x, x).
                        count -= len(xs)
                        fingerprint -= xab
                    if count == 0:
                        continue
                    entry = raw.setdefault((gx, gy, bool(g)), {}).setdefault(fam, _Pairs())
                    entry.ports |= mask
                    entry.count += count
                    entry.fingerprint = (entry.fingerprint + fingerprint) & _MASK64
                    if len(entry.sample) < MAX_PAIRS:
                        wanted = MAX_PAIRS - len(entry.sample)
                        entry.sample.extend(itertools.islice(
                            ((x, y) for x in xs for y in ys if x != y), wanted))
        done += 1
        if progress:
            progress(done, steps)
        for per_family in raw.values():
            found = per_family.get(fam)
            if found is not None and (fam, found.ports) not in merged:
                merged[(fam, found.ports)] = merge_ranges(segments[k] for k in range(len(segments))
                                                          if found.ports >> k & 1)
    sizes = group_sizes(inventory.endpoints, group_by)
    changes = []
    for (src, dst, gained), per_family in raw.items():
        total = sizes[src] * sizes[dst] - (sizes[src] if src == dst else 0)
        ranges = {f: merged[(f, e.ports)] for f, e in per_family.items()}
        if len({(tuple(ranges[f]), e.count, e.fingerprint) for f, e in per_family.items()}) == 1:
            # The same change in both families (the usual case): one line.
            entry = next(iter(per_family.values()))
            changes.append(Change(src, dst, gained, next(iter(ranges.values())), sorted(entry.sample),
                                  set(per_family), total, entry.count))
        else:
            changes.extend(Change(src, dst, gained, ranges[f], sorted(e.sample), {f}, total, e.count)
                           for f, e in sorted(per_family.items()))
    changes.sort(key=lambda c: (not c.gained, c.dst, c.src))
    return DiffResult(changes, old_label, new_label, len(inventory.endpoints), group_by)


def _columns(packed: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Bits ``columns`` of every packed row: (rows, len(columns)) booleans, no full unpack."""
    return ((packed[:, columns >> 3] >> (columns & 7).astype(np.uint8)) & 1).view(bool)


def _changed_cells(a: Connectivity, b: Connectivity, seg: ProtocolPortRange) -> np.ndarray:
    """The cells of one segment's class matrix that differ between ``a`` and ``b``, as
    ``(source * n + destination) * 2 + gained``.

    ``m[s, d] = egress[s] has d and ingress[d] has s``. A cell can only change where
    the source's egress bits or the destination's ingress bits differ, so only those
    rows and columns are compared, :data:`BLOCK` of them at a time from the packed
    bits: memory grows with the classes, not with their square."""
    n = a.partition.size
    # e/i: egress/ingress; a/b: old/new.
    sides = {f"{side}{name}": conn.side_rows(direction, seg.protocol, seg.lo)
             for name, conn in (("a", a), ("b", b))
             for side, direction in (("e", Direction.EGRESS), ("i", Direction.INGRESS))}
    rows = _differ(sides["ea"], sides["eb"])
    cols = _differ(sides["ia"], sides["ib"])
    out = []
    if len(rows) or len(cols):
        packed = {key: packed_rows(bits, n)[index] for key, (bits, index) in sides.items()}
    for lo in range(0, len(rows), BLOCK):
        r = rows[lo:lo + BLOCK]
        # Rows whose egress changed, every column: ingress[d] has s is bit s of ingress row d.
        new = unpack_bits(packed["eb"][r], 0, n) & _columns(packed["ib"], r).T
        old = unpack_bits(packed["ea"][r], 0, n) & _columns(packed["ia"], r).T
        ri, d = np.nonzero(old ^ new)
        out.append((r[ri] * n + d) * 2 + new[ri, d])
    row_set = np.zeros(n, dtype=bool)
    row_set[rows] = True
    for lo in range(0, len(cols), BLOCK):
        c = cols[lo:lo + BLOCK]
        # Columns whose ingress changed, the rows not done above: egress[s] has d is bit d
        # of egress row s.
        new = _columns(packed["eb"], c) & unpack_bits(packed["ib"][c], 0, n).T
        old = _columns(packed["ea"], c) & unpack_bits(packed["ia"][c], 0, n).T
        changed = old ^ new
        changed[row_set, :] = False
        s, cj = np.nonzero(changed)
        out.append((s * n + c[cj]) * 2 + new[s, cj])
    if not out:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def _differ(old: tuple[list[int], np.ndarray], new: tuple[list[int], np.ndarray]) -> np.ndarray:
    """Classes whose bits differ between two :meth:`Connectivity.side_rows`, comparing
    each (old row, new row) combination once."""
    combos = old[1] * len(new[0]) + new[1]
    kinds, which = np.unique(combos, return_inverse=True)
    differs = np.array([old[0][k // len(new[0])] != new[0][k % len(new[0])] for k in kinds.tolist()], dtype=bool)
    return np.flatnonzero(differs[which]).astype(np.int64)


class _SegmentMasks:
    """For each changed cell, the segments it changed on, as a bit mask: merged one
    segment at a time into sorted distinct cells with a 62-bit word per 62 segments
    (16 bytes a cell), instead of sorting (cell, segment) records of every segment at
    once (10 million of them, 800 MiB at 10,000 classes)."""

    def __init__(self, segments: int) -> None:
        self.words = segments // 62 + 1
        self.keys = np.empty(0, dtype=np.int64)
        self.masks = np.zeros((self.words, 0), dtype=np.int64)

    def add(self, segment: int, cells: np.ndarray) -> None:
        """``cells``: distinct cells that changed on ``segment``. (Sorting and comparing
        neighbours, not np.unique: its hashing path is ten times slower here.)"""
        if not len(cells):
            return
        cells = np.sort(cells)
        keys = np.sort(np.concatenate([self.keys, cells]), kind="stable")  # two sorted runs: linear
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
        masks = np.zeros((self.words, len(keys)), dtype=np.int64)
        masks[:, np.searchsorted(keys, self.keys)] = self.masks
        masks[segment // 62, np.searchsorted(keys, cells)] |= np.int64(1) << np.int64(segment % 62)
        self.keys, self.masks = keys, masks

    def result(self) -> tuple[np.ndarray, list[int]]:
        """The distinct cells, sorted, and each one's mask (a Python int: any number of segments)."""
        masks = [0] * len(self.keys)
        for word in range(self.words):
            for i, w in enumerate(self.masks[word].tolist()):
                if w:
                    masks[i] |= w << (62 * word)
        return self.keys, masks


def _class_groups(part: Partition, group_by: str, classes: set[int], hashes: _Hashes
                  ) -> dict[int, list[tuple[str, list[str], tuple[int, int, int]]]]:
    """Per class: its members' keys by group, groups in order of first member, with the
    sums over the members of their two hashes and of the hashes' product (the pairs of
    a pod with itself, left out)."""
    out: dict[int, list[tuple[str, list[str], tuple[int, int, int]]]] = {}
    for c in classes:
        by_group: dict[str, list[str]] = {}
        for ep in part.members[c]:
            by_group.setdefault(group_key(ep, group_by), []).append(ep.key)
        out[c] = []
        for g, keys in by_group.items():
            ab = [hashes(k) for k in keys]
            out[c].append((g, keys, (sum(a for a, _ in ab), sum(b for _, b in ab), sum(a * b for a, b in ab))))
    return out


# -- output ------------------------------------------------------------------------


# Changes alike (same direction, ports and destination, or same source) from this many
# groups on are one line: at 10,000 pods a removed default-deny is thousands of changes
# that say one thing. JSON keeps every change.
COLLAPSE = 4
NAMED = 3  # groups named on a collapsed line; the rest are counted


def _family_note(c: Change, families: int) -> str:
    if families > 1 and len(c.families) == 1:
        return f" (IPv{next(iter(c.families))} only)"
    return ""


@dataclass(frozen=True)
class _Line:
    """One line of the report: a change, or changes alike collapsed into one."""

    gained: bool
    src: str
    dst: str
    ports: str  # ports text with the family note
    pairs: int
    total: int
    many: tuple[str, ...] = ()  # the groups a collapsed side stands for
    many_side: str = ""  # "from" or "to"

    def scope(self) -> str:
        return "" if self.pairs == self.total else f"{self.pairs} of {self.total} pod pairs"

    def many_text(self, quote: str = "") -> str:
        named = ", ".join(f"{quote}{g}{quote}" for g in self.many[:NAMED])
        more = f" and {len(self.many) - NAMED} more" if len(self.many) > NAMED else ""
        return f"{self.many_side} {named}{more}"


def _lines(result: DiffResult) -> list[_Line]:
    fams = len({f for c in result.changes for f in c.families})
    plural = {"endpoint": "endpoints", "app": "apps", "namespace": "namespaces"}.get(result.group_by, "groups")

    def ports(c: Change) -> str:
        return c.ports_text() + _family_note(c, fams)

    out: list[_Line] = []
    by_dst: dict[tuple[bool, str, str], list[Change]] = {}
    for c in result.changes:
        by_dst.setdefault((c.gained, c.dst, ports(c)), []).append(c)
    rest: list[Change] = []
    for (gained, dst, text_), alike in by_dst.items():
        if len(alike) >= COLLAPSE:
            out.append(_Line(gained, f"{len(alike)} {plural}", dst, text_, sum(c.pair_count for c in alike),
                             sum(c.total_pairs for c in alike), tuple(c.src for c in alike), "from"))
        else:
            rest.extend(alike)
    by_src: dict[tuple[bool, str, str], list[Change]] = {}
    for c in rest:
        by_src.setdefault((c.gained, c.src, ports(c)), []).append(c)
    for (gained, src, text_), alike in by_src.items():
        if len(alike) >= COLLAPSE:
            out.append(_Line(gained, src, f"{len(alike)} {plural}", text_, sum(c.pair_count for c in alike),
                             sum(c.total_pairs for c in alike), tuple(c.dst for c in alike), "to"))
        else:
            out.extend(_Line(c.gained, c.src, c.dst, text_, c.pair_count, c.total_pairs) for c in alike)
    out.sort(key=lambda line: (not line.gained, line.dst, line.src))
    return out


def text(result: DiffResult) -> str:
    if not result.changed:
        return f"no change in access between {result.old_label} and {result.new_label} " \
               f"({result.endpoints} endpoints)\n"
    lines = [f"access changes from {result.old_label} to {result.new_label} ({result.endpoints} endpoints):"]
    every = _lines(result)
    for gained in (True, False):
        count = sum(1 for c in result.changes if c.gained is gained)
        group = [line for line in every if line.gained is gained]
        if not group:
            continue
        lines.append("")
        lines.append(("GAINED" if gained else "LOST") + f" ({count}):")
        width = max(len(line.src) for line in group)
        for line in group:
            scope = line.scope()
            lines.append(f"  {'+' if gained else '-'} {line.src:<{width}} -> {line.dst}  {line.ports}"
                         f"{'  [' + scope + ']' if scope else ''}")
            if line.many:
                lines.append(f"      {line.many_text()}")
    return "\n".join(lines) + "\n"


def markdown(result: DiffResult) -> str:
    if not result.changed:
        return f"**No change in access** between `{result.old_label}` and `{result.new_label}`.\n"
    gained = sum(c.gained for c in result.changes)
    out = [f"### Access changes: `{result.old_label}` → `{result.new_label}`", "",
           f"{gained} gained, {len(result.changes) - gained} lost ({result.endpoints} endpoints).", "",
           "| | from | to | ports | scope |", "|---|---|---|---|---|"]
    for line in _lines(result):
        scope = line.scope() or "all pod pairs"
        src = f"{line.src}: {line.many_text('`')}" if line.many_side == "from" else f"`{line.src}`"
        dst = f"{line.dst}: {line.many_text('`')}" if line.many_side == "to" else f"`{line.dst}`"
        out.append(f"| {'➕ gained' if line.gained else '➖ lost'} | {src} | {dst} | {line.ports} | {scope} |")
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
