"""The fast paths (endpoint classes, port segments, bitsets) against the reference evaluator.

Random inventories and policy sets (tests/strategies.py) on purpose hit the
cases classes could get wrong: named ports with different numbers per pod,
ipBlocks that cut through pod addresses, matchExpressions, both families.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.analysis import connectivity
from callgate.analysis.connectivity import Connectivity, Partition
from callgate.analysis.diff import connectivity_diff, shared_with
from callgate.analysis.groups import group_matrix
from callgate.policy import Evaluator
from callgate.policy.model import Endpoint, Inventory, PolicySet
from tests.helpers import policies_from, standard
from tests.strategies import inventories, inventories_with_nodes, policy_sets, tiered_policy_sets

PROBES = [(53, "UDP"), (53, "TCP"), (79, "TCP"), (80, "TCP"), (80, "UDP"), (81, "TCP"), (82, "TCP"),
          (81, "SCTP"), (1000, "UDP")]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def truth(inv: Inventory, ps: PolicySet, family: int) -> dict[tuple[str, str, int, str], bool]:
    ev = Evaluator(ps, inv)
    out = {}
    for a in inv.endpoints:
        for b in inv.endpoints:
            ia = next(i for i in a.ips if i.version == family)
            ib = next(i for i in b.ips if i.version == family)
            for port, proto in PROBES:
                out[(a.key, b.key, port, proto)] = ev.allowed(ia, ib, port, proto)  # type: ignore[arg-type]
    return out


@SETTINGS
@given(inventories(), policy_sets())
def test_class_matrix_equals_evaluator(inv: Inventory, ps: PolicySet) -> None:
    for family in (4, 6):
        conn = Connectivity(Partition(inv, [ps], family), ps)
        eps = {e.key: e for e in inv.endpoints}
        for (a, b, port, proto), want in truth(inv, ps, family).items():
            assert conn.allowed(eps[a], eps[b], port, proto) == want, (a, b, port, proto, family)  # type: ignore[arg-type]


@SETTINGS
@given(inventories_with_nodes(), tiered_policy_sets())
def test_class_matrix_with_cluster_tiers_equals_evaluator(inv: Inventory, ps: PolicySet) -> None:
    """A pod a ClusterNetworkPolicy selects has verdicts NetworkPolicy alone does not
    determine: Admin rules before it, Baseline rules after it (when nothing
    isolates the pod), networks and node addresses as blocks."""
    test_class_matrix_equals_evaluator.hypothesis.inner_test(inv, ps)  # type: ignore[attr-defined]


@SETTINGS
@given(inventories_with_nodes(), tiered_policy_sets())
def test_group_counts_with_cluster_tiers_equal_evaluator(inv: Inventory, ps: PolicySet) -> None:
    """Groups count per kind of class: cluster policies make kinds that NetworkPolicy alone does not."""
    test_group_counts_equal_evaluator.hypothesis.inner_test(inv, ps)  # type: ignore[attr-defined]


@SETTINGS
@given(inventories(), policy_sets())
def test_group_counts_equal_evaluator(inv: Inventory, ps: PolicySet) -> None:
    """Pairs of different pods counted per group and port, over all pairs and over the pairs
    whose destination serves the port; with every group shown, and with the smallest merged."""
    conn = Connectivity(Partition(inv, [ps], 4), ps)
    t = truth(inv, ps, 4)
    ports = ((80, "TCP"), (53, "UDP"))
    for group_by, max_groups in (("namespace", 0), ("endpoint", 0), ("endpoint", 3)):
        gm = group_matrix(conn, ports, group_by, max_groups=max_groups)
        for g in gm.groups:
            for h in gm.groups:
                for k, (port, proto) in enumerate(ports):
                    pairs = [(a, b) for a in gm.members[g] for b in gm.members[h] if a.key != b.key]
                    allowed = sum(t[(a.key, b.key, port, proto)] for a, b in pairs)
                    assert gm.cell(g, h, f"{port}/{proto}") == (allowed, len(pairs))
                    served = [(a, b) for a, b in pairs if any(p.port == port and p.protocol == proto for p in b.ports)]
                    i, j = gm.index[g], gm.index[h]
                    assert gm.served_pairs(k, i, j) == len(served)
                    assert gm.served_allowed[k, i, j] == sum(t[(a.key, b.key, port, proto)] for a, b in served)


@SETTINGS
@given(inventories(), policy_sets(), policy_sets())
def test_diff_equals_evaluator(inv: Inventory, old: PolicySet, new: PolicySet) -> None:
    """Every probe whose verdict differs is in the diff, with the right direction,
    and the diff claims nothing at those probes that did not change."""
    result = connectivity_diff(inv, old, new, group_by="endpoint")
    claimed: dict[tuple[str, str, int, str, int], bool] = {}
    for change in result.changes:
        for fam in change.families:
            for a, b in change.pairs:
                for port, proto in PROBES:
                    if any(r.protocol == proto and r.lo <= port <= r.hi for r in change.ports):
                        claimed.setdefault((a, b, port, proto, fam), change.gained)
    truths = {f: (truth(inv, old, f), truth(inv, new, f)) for f in (4, 6)}
    for family in (4, 6):
        t_old, t_new = truths[family]
        for key, before in t_old.items():
            after = t_new[key]
            k = (*key, family)
            if before != after:
                assert claimed.get(k) == after, (k, before, after)
    # Conversely, every claimed change at a probe is a real change (endpoint grouping:
    # a change record is one pod pair, its port ranges exact per family).
    for (a, b, port, proto, family), gained in claimed.items():
        before = truths[family][0][(a, b, port, proto)]
        after = truths[family][1][(a, b, port, proto)]
        assert (before, after) == (not gained, gained), (a, b, port, proto, family)


@SETTINGS
@given(inventories(), policy_sets(), policy_sets(), st.data())
def test_diff_of_sets_sharing_policies_equals_evaluator(inv: Inventory, old: PolicySet, other: PolicySet,
                                                        data: st.DataObject) -> None:
    """The usual diff: most of old's policies again (equal, but other objects, as when
    read from another file), some dropped, others added. The diff computes a policy
    both sides hold once (shared_with); its verdicts must not change for that."""
    kept = [dataclasses.replace(p) for p in old.policies if data.draw(st.booleans())]
    new = PolicySet((*kept, *other.policies), other.cluster)
    test_diff_equals_evaluator.hypothesis.inner_test(inv, old, new)  # type: ignore[attr-defined]


@SETTINGS
@given(policy_sets())
def test_shared_with_hands_back_old_objects_in_new_order(ps: PolicySet) -> None:
    copies = PolicySet(tuple(dataclasses.replace(p) for p in reversed(ps.policies)))
    shared = shared_with(ps, copies)
    assert shared.policies == copies.policies
    assert all(any(p is q for q in ps.policies) for p in shared.policies)


# -- ipBlocks present in one policy set only, or in one family only ------------------------------
#
# Regression tests for a KeyError on an IPBlock reported from connectivity_diff when
# old and new differ in their ipBlocks. Old and new share one Partition per family,
# built from both sets' blocks; a block of the other family contains no pod of this
# one. Endpoints here may have one family only, which the strategies above never draw.


def _mixed_truth(inv: Inventory, ps: PolicySet, family: int) -> dict[tuple[str, str, int, str], bool]:
    ev = Evaluator(ps, inv)
    eps = [(e.key, next((i for i in e.ips if i.version == family), None)) for e in inv.endpoints]
    return {(a, b, port, proto): ev.allowed(ia, ib, port, proto)  # type: ignore[arg-type]
            for a, ia in eps if ia is not None for b, ib in eps if ib is not None for port, proto in PROBES}


def _check_diff(inv: Inventory, old: PolicySet, new: PolicySet, forks: bool = False) -> None:
    result = connectivity_diff(inv, old, new, group_by="endpoint", forks=forks)
    claimed: dict[tuple[str, str, int, str, int], bool] = {}
    for change in result.changes:
        for fam in change.families:
            for a, b in change.pairs:
                for port, proto in PROBES:
                    if any(r.protocol == proto and r.lo <= port <= r.hi for r in change.ports):
                        claimed[(a, b, port, proto, fam)] = change.gained
    for family in (4, 6):
        t_old, t_new = _mixed_truth(inv, old, family), _mixed_truth(inv, new, family)
        for key, before in t_old.items():
            k = (*key, family)
            if before != t_new[key]:
                assert claimed.get(k) == t_new[key], (k, before)
            else:
                assert k not in claimed, k


def _one_family(inv: Inventory, v4_only: int, v6_only: int) -> Inventory:
    def only(ep: Endpoint, version: int) -> Endpoint:
        return dataclasses.replace(ep, ips=tuple(ip for ip in ep.ips if ip.version == version))

    return Inventory(inv.namespaces, tuple(
        only(ep, 4) if i == v4_only else only(ep, 6) if i == v6_only else ep for i, ep in enumerate(inv.endpoints)))


@SETTINGS
@given(inventories_with_nodes(), tiered_policy_sets(), tiered_policy_sets())
def test_diff_with_cluster_tiers_equals_evaluator(inv: Inventory, old: PolicySet, new: PolicySet) -> None:
    _check_diff(inv, old, new)


@pytest.mark.parametrize("fork_from", [connectivity.FORK_FROM_ENDPOINTS, 0])
def test_diff_ipblock_only_in_new_and_only_one_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fork_from: int) -> None:
    """fork_from=0: IPv6 compared in a forked child."""
    monkeypatch.setattr(connectivity, "FORK_FROM_ENDPOINTS", fork_from)
    inv = _one_family(standard(), v4_only=1, v6_only=2)
    old = policies_from(tmp_path, """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: a, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress, Egress]
          ingress:
          - from: [{podSelector: {}}]
          egress:
          - to: [{namespaceSelector: {}}]
        """, "old.yaml")
    new = policies_from(tmp_path, """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: a, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress, Egress]
          ingress:
          - from: [{ipBlock: {cidr: 'fd00:18:1::/120', except: ['fd00:18:1::11/128']}}]
          egress:
          - to: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.1.12/32]}}]
            ports: [{port: 80, protocol: TCP}]
        """, "new.yaml")
    empty = PolicySet([])
    for a, b in ((old, new), (new, old), (empty, new), (new, empty)):
        _check_diff(inv, a, b, forks=True)


@SETTINGS
@given(inventories(), policy_sets(), policy_sets(), st.integers(0, 6), st.integers(0, 6))
def test_diff_equals_evaluator_with_single_family_pods(inv: Inventory, old: PolicySet, new: PolicySet,
                                                       v4_only: int, v6_only: int) -> None:
    _check_diff(_one_family(inv, v4_only, v6_only), old, new)


def test_connectivity_refuses_blocks_its_partition_was_not_built_from(tmp_path: Path) -> None:
    """Answering "no pod" for a same-family block the partition never saw would be a
    silently wrong verdict (its classes may straddle the block): say so instead."""
    inv = standard()
    new = policies_from(tmp_path, """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: a, namespace: x}
        spec:
          podSelector: {}
          policyTypes: [Ingress]
          ingress:
          - from: [{ipBlock: {cidr: 198.18.1.0/24}}]
        """)
    part = Partition(inv, [PolicySet([])], 4)
    with pytest.raises(ValueError, match="not in the partition"):
        Connectivity(part, new).matrix("TCP", 80)
    # A block of the other family contains no pod of this one: no error, and over IPv6
    # nothing reaches the pods of x (isolated, allowed from IPv4 addresses only).
    conn6 = Connectivity(Partition(inv, [PolicySet([])], 6), new)
    eps = {e.key: e for e in inv.endpoints}
    assert not any(conn6.allowed(eps[s], eps[d], 80, "TCP") for s in eps for d in eps
                   if d.startswith("x/") and s != d)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.data())
def test_both_ways_of_summing_the_class_matrix_agree(n: int, data: st.DataObject) -> None:
    """groups._factored (through the distinct rows) and groups._blocked (row blocks of the
    matrix) compute Σ w_src[s,g]·w_dst[d,h]·E[s][d]·I[d][s] exactly as the definition does."""
    import numpy as np

    from callgate.analysis.groups import _blocked, _factored

    def rows() -> tuple[list[int], np.ndarray]:
        kinds = data.draw(st.lists(st.integers(0, (1 << n) - 1), min_size=1, max_size=4))
        index = np.array(data.draw(st.lists(st.integers(0, len(kinds) - 1), min_size=n, max_size=n)), dtype=np.intp)
        return kinds, index

    egress, ingress = rows(), rows()
    w_src = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=n,
                                        max_size=n)), dtype=np.float32)
    w_dst = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=3, max_size=3), min_size=n,
                                        max_size=n)), dtype=np.float32)
    e = [egress[0][k] for k in egress[1]]
    i = [ingress[0][k] for k in ingress[1]]
    want = np.zeros((2, 3))
    for s in range(n):
        for d in range(n):
            if (e[s] >> d) & (i[d] >> s) & 1:
                want += np.outer(w_src[s], w_dst[d])
    assert np.array_equal(_factored(egress, ingress, w_src, w_dst, n), want)
    assert np.array_equal(_blocked(egress, ingress, w_src, w_dst, n), want)


def test_blocked_sum_across_blocks() -> None:
    """More classes than one block (and not a multiple of 8): every block's rows and the
    ingress bits they need are read from the right bytes."""
    import random

    import numpy as np

    from callgate.analysis.groups import BLOCK, _blocked, _factored

    n = 2 * BLOCK + 77
    rng = random.Random(7)
    rows = [rng.getrandbits(n) for _ in range(n)]
    cols = [rng.getrandbits(n) for _ in range(n)]
    index = np.arange(n, dtype=np.intp)
    w_src = np.array([[rng.randrange(3), rng.randrange(2)] for _ in range(n)], dtype=np.float32)
    w_dst = np.array([[rng.randrange(2)] for _ in range(n)], dtype=np.float32)
    e = np.array([[(r >> d) & 1 for d in range(n)] for r in rows], dtype=np.float64)
    i = np.array([[(c >> s) & 1 for s in range(n)] for c in cols], dtype=np.float64)
    want = w_src.T.astype(np.float64) @ (e * i.T) @ w_dst.astype(np.float64)
    assert np.array_equal(_blocked((rows, index), (cols, index), w_src, w_dst, n), want)
    assert np.array_equal(_factored((rows[:5], index % 5), (cols[:3], index % 3), w_src, w_dst, n),
                          w_src.T.astype(np.float64) @ (e[index % 5] * i[index % 3].T) @ w_dst.astype(np.float64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets(), policy_sets(), st.integers(0, 6), st.integers(0, 6))
def test_diff_with_the_second_family_in_a_forked_child_is_the_same(inv: Inventory, old: PolicySet, new: PolicySet,
                                                                  v4_only: int, v6_only: int) -> None:
    """Big dual-stack inventories compare IPv6 in a forked child (callgate.forked): its
    groups are numbered on their own and renumbered here, so groups found in one family
    only must land on the same names, counts and pairs as when both are compared here."""
    inv = _one_family(inv, v4_only, v6_only)
    here = connectivity_diff(inv, old, new, group_by="endpoint")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(connectivity, "FORK_FROM_ENDPOINTS", 0)
        _check_diff(inv, old, new, forks=True)
        forked = connectivity_diff(inv, old, new, group_by="endpoint", forks=True)
    assert forked.changes == here.changes
    assert [c.pairs for c in forked.changes] == [c.pairs for c in here.changes]


def test_groups_of_one_family_only_keep_their_names_from_a_forked_child(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """x/b has IPv4 only, x/c IPv6 only: the child comparing IPv6 numbers x/c where x/b
    is numbered here, and x/c's lost access must still be reported as x/c's."""
    monkeypatch.setattr(connectivity, "FORK_FROM_ENDPOINTS", 0)
    inv = _one_family(standard(), v4_only=1, v6_only=2)
    only_itself = policies_from(tmp_path, """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: a, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress]
          ingress:
          - from: [{podSelector: {matchLabels: {pod: a}}}]
        """, "new.yaml")
    _check_diff(inv, PolicySet([]), only_itself, forks=True)
    lost = {(c.src, c.dst): c.families
            for c in connectivity_diff(inv, PolicySet([]), only_itself, "endpoint", forks=True).changes}
    assert lost["x/c", "x/a"] == {6} and lost["x/b", "x/a"] == {4}
