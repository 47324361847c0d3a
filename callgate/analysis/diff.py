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

import dataclasses
import hashlib
import io
import itertools
import json
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callgate.analysis.connectivity import (
    Connectivity,
    Partition,
    Progress,
    ProtocolPortRange,
    families_alike,
    families_present,
    merge_ranges,
    second_family_forked,
)
from callgate.analysis.groups import BLOCK, group_key, group_sizes, packed_rows, unpack_bits
from callgate.errors import InputError, Problem
from callgate.forked import Forked
from callgate.policy.model import ClusterPolicy, Direction, Inventory, Policy, PolicySet
from callgate.policy.resolve import Resolver

# Pod pairs listed per change in JSON; beyond, they are counted (a default-deny removed
# at 10,000 pods changes millions of pairs, which no reviewer reads and no memory holds).
MAX_PAIRS = 100


@dataclass
class Change:
    """Access that one group gained (or lost) to another."""

    src: str
    dst: str
    gained: bool
    ports: list[ProtocolPortRange]
    families: set[int] = field(default_factory=set)
    total_pairs: int = 0  # pod pairs between the two groups
    pair_count: int = 0  # pod pairs that changed
    # Lists the pairs when asked: only JSON wants them, and listing costs.
    listing: Callable[[], list[tuple[str, str]]] = field(default=list, repr=False, compare=False)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(source pod, destination pod) of the first MAX_PAIRS pairs that changed, sorted."""
        return sorted(self.listing())

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


@dataclass(frozen=True)
class _Pieces:
    """The classes of one family split by group: a piece is the members of one class in one
    group (one piece per class, since a class's members share namespace and labels, except
    with endpoint grouping, which puts every member in a group of its own).

    A pair (x, y) is fingerprinted as a(x)·b(y) mod 2⁶⁴, a and b two hashes of the pod, so
    the pairs of two pieces sum to (Σa)·(Σb) without listing them: two families that
    changed the same pairs have the same count and fingerprint."""

    group: np.ndarray  # per piece: the group's index in ``names``
    count: np.ndarray  # pods
    a: np.ndarray  # Σ a(x), uint64
    b: np.ndarray  # Σ b(x), uint64
    ab: np.ndarray  # Σ a(x)·b(x): the pairs of a pod with itself
    members: list[list[str]]
    first: np.ndarray  # per class: its first piece
    pieces: np.ndarray  # per class: how many pieces it has


def _hash(key: str) -> tuple[int, int]:
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _pieces(part: Partition | None, group_by: str, index: dict[str, int]) -> _Pieces:
    """The pieces of ``part``'s classes (None: of no class)."""
    group: list[int] = []
    count: list[int] = []
    a: list[int] = []
    b: list[int] = []
    ab: list[int] = []
    members: list[list[str]] = []
    first: list[int] = []
    pieces: list[int] = []
    mask = (1 << 64) - 1
    for class_members in part.members if part is not None else []:
        by_group: dict[str, list[str]] = {}
        for ep in class_members:
            by_group.setdefault(group_key(ep, group_by), []).append(ep.key)
        first.append(len(group))
        pieces.append(len(by_group))
        for g, keys in by_group.items():
            hashes = [_hash(k) for k in keys]
            group.append(index.setdefault(g, len(index)))
            count.append(len(keys))
            a.append(sum(x for x, _ in hashes) & mask)
            b.append(sum(y for _, y in hashes) & mask)
            ab.append(sum(x * y for x, y in hashes) & mask)
            members.append(keys)
    return _Pieces(np.array(group, dtype=np.int64), np.array(count, dtype=np.int64),
                   np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64), np.array(ab, dtype=np.uint64),
                   members, np.array(first, dtype=np.int64), np.array(pieces, dtype=np.int64))


@dataclass(frozen=True)
class _Entry:
    """One family's change from one group to another, in one direction."""

    masks: tuple[int, ...]  # segment mask words
    count: int
    fingerprint: int
    listing: Callable[[], list[tuple[str, str]]]


def _entries(cells: np.ndarray, masks: np.ndarray, n: int, pieces: _Pieces, names: list[str]
             ) -> dict[tuple[int, int, bool], _Entry]:
    """Changed cells (class pairs with their segment masks) summed per (source group,
    destination group, gained), in numpy: a cell is a class pair, split into its pieces'
    pairs; pairs of a pod with itself are left out (it always reaches itself)."""
    sources, rest = np.divmod(cells, 2 * n)
    dests, gains = np.divmod(rest, 2)
    fan = pieces.pieces[sources] * pieces.pieces[dests]  # piece pairs per cell (1, but for endpoint grouping)
    cell = np.repeat(np.arange(len(cells)), fan)
    within = np.arange(len(cell)) - np.repeat(np.cumsum(fan) - fan, fan)
    per_dest = pieces.pieces[dests][cell]
    ps = pieces.first[sources][cell] + within // per_dest
    pd = pieces.first[dests][cell] + within % per_dest
    same = ps == pd
    count = pieces.count[ps] * pieces.count[pd] - np.where(same, pieces.count[ps], 0)
    fingerprint = pieces.a[ps] * pieces.b[pd] - np.where(same, pieces.ab[ps], np.uint64(0))
    key = (pieces.group[ps] * len(names) + pieces.group[pd]) * 2 + gains[cell]
    keep = count > 0
    ps, pd, cell, count, fingerprint, key = ps[keep], pd[keep], cell[keep], count[keep], fingerprint[keep], key[keep]
    if not len(key):
        return {}
    order = np.argsort(key, kind="stable")
    key, ps, pd, cell, count, fingerprint = key[order], ps[order], pd[order], cell[order], count[order], fingerprint[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    counts = np.add.reduceat(count, starts)
    prints = np.add.reduceat(fingerprint, starts)
    words = np.stack([np.bitwise_or.reduceat(masks[w][cell], starts) for w in range(len(masks))])

    def listing(lo: int, hi: int) -> Callable[[], list[tuple[str, str]]]:
        def pairs() -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            for x_piece, y_piece in zip(ps[lo:hi].tolist(), pd[lo:hi].tolist(), strict=True):
                found.extend(itertools.islice(((x, y) for x in pieces.members[x_piece]
                                               for y in pieces.members[y_piece] if x != y), MAX_PAIRS - len(found)))
                if len(found) >= MAX_PAIRS:
                    break
            return found

        return pairs

    out: dict[tuple[int, int, bool], _Entry] = {}
    for i, (k, lo, hi) in enumerate(zip(key[starts].tolist(), starts.tolist(), ends.tolist(), strict=True)):
        pair, gained = divmod(k, 2)
        out[(pair // len(names), pair % len(names), bool(gained))] = _Entry(
            tuple(int(w) for w in words[:, i].tolist()), int(counts[i]), int(prints[i]), listing(lo, hi))
    return out


@dataclass
class _FamilyCells:
    """What one family's comparison found: the class pairs that changed with the
    segments they changed on, and the classes' pieces. Plain values (arrays, strings),
    so a forked child can send them."""

    family: int
    segments: list[ProtocolPortRange]
    keys: np.ndarray  # changed cells, see _changed_cells
    masks: np.ndarray  # per cell, its segments (see _SegmentMasks)
    size: int  # classes
    pieces: _Pieces  # groups numbered as in ``groups``
    groups: list[str]


def _family_cells(inventory: Inventory, old: PolicySet, new: PolicySet, family: int, resolver: Resolver,
                  group_by: str, step: Callable[[int], None]) -> _FamilyCells:
    part = Partition(inventory, [old, new], family, resolver)
    a, b = Connectivity(part, old), Connectivity(part, new)
    segments = part.segments()
    # First which class pairs changed, in which direction and on which segments (a
    # mask per pair); only then pod pairs, once per (class pair, direction):
    # expanding pod pairs segment by segment repeated them for every segment.
    masks = _SegmentMasks(len(segments))
    # Only classes decided by other policies can change; a segment where none of their
    # sides does is skipped without computing every kind's (a diff of a few edited
    # policies over 10,000 changes nothing on most segments).
    suspects = {d: a.decided_otherwise(b, d) for d in (Direction.EGRESS, Direction.INGRESS)}
    for k, seg in enumerate(segments):
        if any(a.side_bits(c, d, seg.protocol, seg.lo) != b.side_bits(c, d, seg.protocol, seg.lo)
               for d, classes in suspects.items() for c in classes):
            masks.add(k, _changed_cells(a, b, seg))
        step(len(segments) + 1)
    index: dict[str, int] = {}
    # Pod pairs are only counted for changed cells: none, no pieces needed.
    pieces = _pieces(part if len(masks.keys) else None, group_by, index)
    step(len(segments) + 1)
    return _FamilyCells(family, segments, masks.keys, masks.masks, part.size, pieces, list(index))


def connectivity_diff(inventory: Inventory, old: PolicySet, new: PolicySet, group_by: str = "app",
                      old_label: str = "old", new_label: str = "new",
                      progress: Progress | None = None, forks: bool = False) -> DiffResult:
    """What changed from ``old`` to ``new``. ``forks``: may a big dual-stack inventory's
    second family be compared by a forked child (:mod:`callgate.forked`; one-shot
    commands only)?"""
    families = families_present(inventory)
    new = shared_with(old, new)
    resolver = Resolver(inventory)
    done = [0]

    def step(per_family: int) -> None:
        """One step of a family's ``per_family`` (a step per segment, one for the pod pairs)."""
        done[0] += 1
        if progress:
            progress(done[0], per_family * len(families))

    def compared(family: int, step: Callable[[int], None] = lambda per_family: None) -> _FamilyCells:
        return _family_cells(inventory, old, new, family, resolver, group_by, step)

    results: list[_FamilyCells] = []
    if len(families) == 2 and families_alike(inventory, [old, new]):
        # IPv6's partition would be IPv4's, class for class: the same cells and pieces.
        results.append(compared(families[0], step))
        results.append(dataclasses.replace(results[0], family=families[1]))
        for _ in range(len(results[1].segments) + 1):
            step(len(results[1].segments) + 1)
    elif second_family_forked(inventory, families, forks):
        # Dual-stack and big: the second family on the other core (callgate.forked);
        # its steps are counted when it is done.
        with Forked.started(lambda: compared(families[1])) as second:
            results.append(compared(families[0], step))
            results.append(second.result())
        for _ in range(len(results[1].segments) + 1):
            step(len(results[1].segments) + 1)
    else:
        results.extend(compared(family, step) for family in families)
    index: dict[str, int] = {}  # group name -> number, across families
    per_family: dict[int, tuple[dict[tuple[int, int, bool], _Entry], list[ProtocolPortRange]]] = {}
    for cells in results:
        # The family's groups, numbered in its own order, renumbered across families.
        renumber = np.array([index.setdefault(g, len(index)) for g in cells.groups], dtype=np.int64)
        pieces = dataclasses.replace(cells.pieces, group=renumber[cells.pieces.group])
        per_family[cells.family] = (_entries(cells.keys, cells.masks, cells.size, pieces, list(index)),
                                    cells.segments)
    names = list(index)
    sizes = group_sizes(inventory.endpoints, group_by)
    ranges: dict[tuple[int, tuple[int, ...]], list[ProtocolPortRange]] = {}

    def ports(family: int, entry: _Entry) -> list[ProtocolPortRange]:
        found = ranges.get((family, entry.masks))
        if found is None:
            segments = per_family[family][1]
            found = ranges[(family, entry.masks)] = merge_ranges(
                seg for k, seg in enumerate(segments) if entry.masks[k // 62] >> (k % 62) & 1)
        return found

    keys = sorted({k for entries, _ in per_family.values() for k in entries})
    changes = []
    for g, h, gained in keys:
        src, dst = names[g], names[h]
        total = sizes[src] * sizes[dst] - (sizes[src] if src == dst else 0)
        found = {f: entries[(g, h, gained)] for f, (entries, _) in per_family.items() if (g, h, gained) in entries}
        if len({(tuple(ports(f, e)), e.count, e.fingerprint) for f, e in found.items()}) == 1:
            # The same change in both families (the usual case): one line.
            f, e = next(iter(found.items()))
            changes.append(Change(src, dst, gained, ports(f, e), set(found), total, e.count, e.listing))
        else:
            changes.extend(Change(src, dst, gained, ports(f, e), {f}, total, e.count, e.listing)
                           for f, e in sorted(found.items()))
    changes.sort(key=lambda c: (not c.gained, c.dst, c.src))
    return DiffResult(changes, old_label, new_label, len(inventory.endpoints), group_by)


def shared_with(old: PolicySet, new: PolicySet) -> PolicySet:
    """``new`` with each policy equal to one of ``old`` replaced by that object.

    Side bits are memoised by the ``id`` of the policies that decide them (in
    the partition's cache that both sides share), so a policy both sets hold
    is then computed once, not once per side: a diff of a few edited policies
    over ten thousand costs about one evaluation, not two. Equal policies are
    interchangeable here (``origin``, where each was read, takes no part in
    equality nor in a verdict)."""
    policies: dict[Policy, Policy] = {}
    for p in old.policies:
        policies.setdefault(p, p)
    cluster: dict[ClusterPolicy, ClusterPolicy] = {}
    for c in old.cluster:
        cluster.setdefault(c, c)
    return PolicySet(tuple(policies.get(p, p) for p in new.policies),
                     tuple(cluster.get(c, c) for c in new.cluster))


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
        """``cells``: distinct cells that changed on ``segment``. (One stable sort of the
        kept cells and the new ones, then a scatter: np.unique's hashing path is ten
        times slower here, and searchsorted twice as slow.)"""
        if not len(cells):
            return
        everything = np.concatenate([self.keys, cells])
        order = np.argsort(everything, kind="stable")  # the kept cells are one sorted run already
        ordered = everything[order]
        first = np.r_[True, ordered[1:] != ordered[:-1]]
        where = np.empty(len(everything), dtype=np.intp)
        where[order] = np.cumsum(first) - 1  # each cell's place among the distinct ones
        masks = np.zeros((self.words, int(first.sum())), dtype=np.int64)
        masks[:, where[:len(self.keys)]] = self.masks
        masks[segment // 62, where[len(self.keys):]] |= np.int64(1) << np.int64(segment % 62)
        self.keys, self.masks = ordered[first], masks


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
