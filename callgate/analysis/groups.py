"""Connectivity between groups of endpoints (apps, namespaces...): what matrix and graph print.

The class matrix of :mod:`callgate.analysis.connectivity` is aggregated into
groups without ever holding a classes × classes matrix: per port, blocks of
source classes are unpacked from the side bitsets (``egress[s] has d and
ingress[d] has s``), summed into destination groups, then into source groups.
Memory is O(block × classes + groups²) per port, so 10,000 classes cost tens of
MiB, not the gigabytes of 10,000² integers.

What is printed is bounded too: at most ``max_groups`` groups, the largest ones,
and the rest merged into one ``(other: N …)`` group. A 400 × 400 table is no
answer to "who reaches whom", and 10,000 × 10,000 would not fit in memory.

Counting rules, the same for every view:

* a cell counts ordered pairs of *different* pods; a pod and itself are no
  pair (it always reaches itself), so a one-pod group has no pairs with itself;
* per port, ``allowed`` is the policy's verdict over all pairs; ``served_allowed``
  counts only pairs whose destination pod declares (serves) that port, which is
  what a summary over ports (the heatmap, the call graph) is about.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from callgate.analysis.connectivity import Connectivity, Progress
from callgate.policy.model import Direction, Endpoint, Inventory, PortProtocol

# Labels that name an application, most specific first; used to group endpoints.
# The last is the service Compose puts on every container of a Docker host's stack.
APP_LABELS = ("app.kubernetes.io/name", "app", "k8s-app", "com.docker.compose.service")

DEFAULT_MAX_GROUPS = 40  # groups a table, a heatmap or a call graph shows before merging the rest
AUTO_ENDPOINTS = 30  # 'auto' shows endpoints one by one up to this many
BLOCK = 512  # source classes unpacked at a time (a multiple of 8: blocks start on a byte)
MAX_CELLS = 4_000_000  # ports × groups²: 2 × 8 bytes each, ~64 MiB


def group_key(ep: Endpoint, group_by: str) -> str:
    """Name of the group an endpoint is drawn in.

    ``app``: namespace/app-label (falling back to the pod name);
    ``namespace``: the namespace; ``endpoint``: each endpoint alone; anything
    else is a label key: namespace/value of that label.
    """
    if group_by == "endpoint":
        return ep.key
    if group_by == "namespace":
        return ep.namespace
    keys = APP_LABELS if group_by == "app" else (group_by,)
    for key in keys:
        if key in ep.labels:
            return f"{ep.namespace}/{ep.labels[key]}"
    return ep.key


def choose_grouping(endpoints: Sequence[Endpoint], group_by: str, max_groups: int) -> str:
    """``auto``: endpoints one by one for a small inventory, else apps, else (when
    there are more apps than fit) namespaces."""
    if group_by != "auto":
        return group_by
    if len(endpoints) <= AUTO_ENDPOINTS:
        return "endpoint"
    if not max_groups or len({group_key(e, "app") for e in endpoints}) <= max_groups:
        return "app"
    return "namespace"


def declared_ports(inventory: Inventory) -> list[tuple[int, PortProtocol]]:
    """Every (port, protocol) some endpoint declares: the default ports of a matrix."""
    return sorted({(p.port, p.protocol) for ep in inventory.endpoints for p in ep.ports})


@dataclass
class GroupMatrix:
    """Connectivity between groups, per port (see the module docstring for what is counted)."""

    group_by: str
    groups: list[str]
    members: dict[str, list[Endpoint]]
    ports: list[str]
    allowed: np.ndarray  # (ports, groups, groups): pairs of different pods allowed
    served_allowed: np.ndarray  # (ports, groups, groups): of those, pairs whose destination serves the port
    serving: np.ndarray  # (ports, groups): pods of the group that serve the port
    merged: int = 0  # groups merged into the last one ("(other: ...)"), 0 if none

    def __post_init__(self) -> None:
        self.index = {g: i for i, g in enumerate(self.groups)}
        self.sizes = np.array([len(self.members[g]) for g in self.groups], dtype=np.int64)

    def pairs(self, i: int, j: int) -> int:
        """Ordered pairs of different pods from group i to group j."""
        return int(self.sizes[i] * self.sizes[j] - (self.sizes[i] if i == j else 0))

    def served_pairs(self, k: int, i: int, j: int) -> int:
        """Of those, the pairs whose destination pod serves port k."""
        return int(self.sizes[i] * self.serving[k, j] - (self.serving[k, i] if i == j else 0))

    def cell(self, g: str, h: str, port: str) -> tuple[int, int]:
        """(allowed pairs, pairs) from group g to group h on ``port``, by the policies alone."""
        i, j = self.index[g], self.index[h]
        return int(self.allowed[self.ports.index(port), i, j]), self.pairs(i, j)

    def verdict(self, g: str, h: str, port: str) -> bool | float | None:
        """True (every pair allowed), False (none), the share allowed, or None (no pairs:
        a one-pod group and itself)."""
        allowed, total = self.cell(g, h, port)
        if total == 0:
            return None
        return True if allowed == total else False if allowed == 0 else round(allowed / total, 4)

    def served_fraction(self, g: str, h: str) -> float | None:
        """Share of (pod pair, port the destination serves) allowed, over all ports; None
        when there is no such combination (nobody in h serves any of the ports, or no pairs)."""
        i, j = self.index[g], self.index[h]
        total = sum(self.served_pairs(k, i, j) for k in range(len(self.ports)))
        if total == 0:
            return None
        return float(self.served_allowed[:, i, j].sum()) / total

    def served_ports(self, g: str, h: str) -> list[str]:
        """Ports on which some pod of g may call a pod of h that serves it."""
        i, j = self.index[g], self.index[h]
        return [p for k, p in enumerate(self.ports) if self.served_allowed[k, i, j] > 0]


def _groups(endpoints: Sequence[Endpoint], group_by: str, max_groups: int
            ) -> tuple[list[str], dict[str, list[Endpoint]], dict[str, int], int]:
    """Group names (largest kept, the rest merged into one), members, key -> group index,
    and how many groups were merged."""
    by_key: dict[str, list[Endpoint]] = {}
    for ep in endpoints:
        by_key.setdefault(group_key(ep, group_by), []).append(ep)
    keys = sorted(by_key)
    if not max_groups or len(keys) <= max_groups:
        return keys, by_key, {k: i for i, k in enumerate(keys)}, 0
    kept = sorted(sorted(keys, key=lambda k: (-len(by_key[k]), k))[:max_groups - 1])
    rest = [k for k in keys if k not in set(kept)]
    plural = {"endpoint": "endpoints", "app": "apps", "namespace": "namespaces"}.get(group_by, f"{group_by} groups")
    other = f"(other: {len(rest)} {plural})"
    members = {k: by_key[k] for k in kept}
    members[other] = [ep for k in rest for ep in by_key[k]]
    names = [*kept, other]
    index = {k: i for i, k in enumerate(kept)} | {k: len(kept) for k in rest}
    return names, members, index, len(rest)


def packed_rows(rows: list[int], n: int) -> np.ndarray:
    """Bitset rows -> (rows, ceil(n/8)) bytes, bit c of row r at byte c//8, bit c%8."""
    width = (n + 7) // 8
    return np.frombuffer(b"".join(r.to_bytes(width, "little") for r in rows), dtype=np.uint8).reshape(len(rows),
                                                                                                       width)


def unpack_bits(packed: np.ndarray, start_bit: int, count: int) -> np.ndarray:
    """Bits ``start_bit .. start_bit+count`` of every packed row, as booleans."""
    lo = start_bit >> 3
    bits = np.unpackbits(packed[:, lo:(start_bit + count + 7) >> 3], axis=1, bitorder="little")
    return bits[:, start_bit - (lo << 3):start_bit - (lo << 3) + count].view(bool)


# A side of every class: a few distinct bitsets, and per class the index of its own
# (:meth:`Connectivity.side_rows`).
Rows = tuple[list[int], np.ndarray]


def _factored(egress: Rows, ingress: Rows, w_src: np.ndarray, w_dst: np.ndarray, n: int) -> np.ndarray:
    """``Σ_s Σ_d w_src[s, g] · w_dst[d, h] · E[s][d] · I[d][s]`` through the distinct rows.

    Classes isolated by the same policies have the same side bits, so a port has few
    distinct egress rows E_a and ingress rows I_b (tens to hundreds, at 10,000 classes).
    With a(s), b(d) the row of each class, the sum is Σ_{a,b} X[a,b,g] · Y[a,b,h] where
    X[a,b,g] = Σ_{s: a(s)=a} w_src[s,g] · I_b[s] and Y[a,b,h] = Σ_{d: b(d)=b} w_dst[d,h] · E_a[d]:
    O((A + B) · classes · groups) instead of O(classes² · groups)."""
    e_rows, a_of = egress
    i_rows, b_of = ingress
    e_bits = unpack_bits(packed_rows(e_rows, n), 0, n).astype(np.float32)  # (A, classes)
    i_bits = unpack_bits(packed_rows(i_rows, n), 0, n).astype(np.float32)  # (B, classes)
    x = np.zeros((len(e_rows), len(i_rows), w_src.shape[1]), dtype=np.float64)
    y = np.zeros((len(e_rows), len(i_rows), w_dst.shape[1]), dtype=np.float64)
    for a in range(len(e_rows)):
        sources = np.flatnonzero(a_of == a)
        x[a] = i_bits[:, sources] @ w_src[sources]
    for b in range(len(i_rows)):
        dests = np.flatnonzero(b_of == b)
        y[:, b] = e_bits[:, dests] @ w_dst[dests]
    flat = len(e_rows) * len(i_rows)
    return np.asarray(x.reshape(flat, -1).T @ y.reshape(flat, -1))


def _blocked(egress: Rows, ingress: Rows, w_src: np.ndarray, w_dst: np.ndarray, n: int) -> np.ndarray:
    """The same sum for classes that share no rows: the class matrix a block of rows at
    a time (``egress[s] has d and ingress[d] has s``), multiplied and dropped."""
    e_packed, i_packed = packed_rows(egress[0], n)[egress[1]], packed_rows(ingress[0], n)[ingress[1]]
    acc = np.zeros((w_src.shape[1], w_dst.shape[1]), dtype=np.float64)
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        m = unpack_bits(e_packed[lo:hi], 0, n) & unpack_bits(i_packed, lo, hi - lo).T
        acc += w_src[lo:hi].T.astype(np.float64) @ (m.astype(np.float32) @ w_dst).astype(np.float64)
    return acc


def group_matrix(conn: Connectivity, ports: Sequence[tuple[int, PortProtocol]], group_by: str,
                 progress: Progress | None = None, max_groups: int = DEFAULT_MAX_GROUPS) -> GroupMatrix:
    """Aggregate the class matrix into groups, port by port, never holding it whole.

    With ``W[c, g]`` = pods of class c in group g, the pairs allowed from group g to
    group h are ``(Wᵀ · M · W)[g, h]``, M the class matrix (computed by
    :func:`_factored`, or :func:`_blocked` when the classes share few rows; float32
    products are exact for counts below 2²⁴ pods). Pods paired with themselves are
    then taken off the diagonal."""
    part = conn.partition
    names, members, index, merged = _groups(part.endpoints, group_by, max_groups)
    n_groups, n_classes = len(names), part.size
    if len(ports) * n_groups * n_groups > MAX_CELLS or n_classes * n_groups > MAX_CELLS * 4:
        raise ValueError(f"{n_groups} groups × {len(ports)} ports is too large a table; group coarser "
                         f"(--group-by namespace) or keep fewer groups (--max-groups)")
    weights = np.zeros((n_classes, n_groups), dtype=np.float32)  # W
    cls = np.array([part.class_of[ep.key] for ep in part.endpoints], dtype=np.intp)
    grp = np.array([index[group_key(ep, group_by)] for ep in part.endpoints], dtype=np.intp)
    np.add.at(weights, (cls, grp), 1)
    labels = [f"{n}/{p}" for n, p in ports]
    shape = (len(ports), n_groups, n_groups)
    allowed, served_allowed = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    serving = np.zeros((len(ports), n_groups), dtype=np.int64)
    for k, (number, proto) in enumerate(ports):
        serves = np.array([any(p.port == number and p.protocol == proto for p in part.rep(c).ports)
                           for c in range(n_classes)], dtype=np.float32)
        both = np.concatenate([weights, weights * serves[:, None]], axis=1)  # all pairs | served pairs
        serving[k] = np.rint(serves @ weights).astype(np.int64)
        seg = part.segment_of(number, proto)
        egress = conn.side_rows(Direction.EGRESS, proto, seg.lo)
        ingress = conn.side_rows(Direction.INGRESS, proto, seg.lo)
        rows = len(egress[0]) * len(ingress[0])
        if rows * 3 * n_groups <= MAX_CELLS * 4 and rows < n_classes * n_classes // 4:
            acc = _factored(egress, ingress, weights, both, n_classes)
        else:
            acc = _blocked(egress, ingress, weights, both, n_classes)
        counts = np.rint(acc).astype(np.int64)
        # A pod paired with itself is not a pair: take those back off the diagonal.
        (e_rows, e_of), (i_rows, i_of) = egress, ingress
        self_ok = np.array([(e_rows[e] >> c) & (i_rows[i] >> c) & 1
                            for c, e, i in zip(range(n_classes), e_of.tolist(), i_of.tolist(), strict=True)],
                           dtype=np.float32)
        allowed[k] = counts[:, :n_groups] - np.diag(np.rint(self_ok @ weights).astype(np.int64))
        served_allowed[k] = counts[:, n_groups:] - np.diag(np.rint((self_ok * serves) @ weights).astype(np.int64))
        if progress:
            progress(k + 1, len(ports))
    return GroupMatrix(group_by, names, members, labels, allowed, served_allowed, serving, merged)


def group_sizes(endpoints: Iterable[Endpoint], group_by: str) -> dict[str, int]:
    """Pods per group (for totals that need no matrix)."""
    sizes: dict[str, int] = {}
    for ep in endpoints:
        name = group_key(ep, group_by)
        sizes[name] = sizes.get(name, 0) + 1
    return sizes
