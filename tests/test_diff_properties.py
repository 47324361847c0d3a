"""The fast paths (endpoint classes, port segments, bitsets) against the reference evaluator.

Random inventories and policy sets (tests/strategies.py) on purpose hit the
cases classes could get wrong: named ports with different numbers per pod,
ipBlocks that cut through pod addresses, matchExpressions, both families.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from callgate.analysis.connectivity import Connectivity, Partition, group_matrix
from callgate.analysis.diff import connectivity_diff
from callgate.policy import Evaluator
from callgate.policy.model import Inventory, PolicySet
from tests.strategies import inventories, policy_sets

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
@given(inventories(), policy_sets())
def test_group_counts_equal_evaluator(inv: Inventory, ps: PolicySet) -> None:
    conn = Connectivity(Partition(inv, [ps], 4), ps)
    gm = group_matrix(conn, [(80, "TCP"), (53, "UDP")], "namespace")
    t = truth(inv, ps, 4)
    for g in gm.groups:
        for h in gm.groups:
            for port, proto in ((80, "TCP"), (53, "UDP")):
                pairs = [(a.key, b.key) for a in gm.members[g] for b in gm.members[h] if a.key != b.key]
                allowed = sum(t[(a, b, port, proto)] for a, b in pairs)
                assert gm.cell(g, h, f"{port}/{proto}") == (allowed, len(pairs))


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
