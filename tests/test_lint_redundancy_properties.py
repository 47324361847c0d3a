"""The exact redundancy check looks at the port segments the rules touch (plus one for
all the others): it must learn what looking at every segment learns."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from callgate.analysis.connectivity import Connectivity, Partition
from callgate.analysis.lint.checks import redundancy
from callgate.policy.model import Direction, Inventory, PolicySet, Tier
from tests.strategies import inventories, tiered_policy_sets


def _every_class_and_segment(conn: Connectivity) -> redundancy._FamilyRedundancy:
    """The check without sharing: every segment, every selector-only rule, at every class."""
    out = redundancy._FamilyRedundancy()
    for c in range(conn.partition.size):
        for direction in (Direction.INGRESS, Direction.EGRESS):
            iso = conn.isolating(c, direction)
            if not iso:
                continue
            out.selected.update(id(p) for p in iso)
            if len(iso) == 1:
                if not any(not r.peers and not r.ports for r in iso[0].rules(direction)) or any(
                        p.rules(direction) for p in conn.cluster_subjects(c, Tier.BASELINE)):
                    out.changes.add(id(iso[0]))
            else:
                for p in iso:
                    if any(not r.peers or any(q.ip_block is not None for q in r.peers) for r in p.rules(direction)):
                        out.changes.add(id(p))
            checked = [[(id(p), direction, i) if r.peers and all(q.ip_block is None for q in r.peers) else None
                        for i, r in enumerate(p.rules(direction))] for p in iso]
            for seg in conn.partition.segments():
                redundancy._segment(conn, out, iso, checked, direction, c, seg)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), tiered_policy_sets())
def test_shared_segments_learn_what_every_segment_would(inv: Inventory, ps: PolicySet) -> None:
    for family in (4, 6):
        part = Partition(inv, [ps], family)
        assert redundancy._redundancy(Connectivity(part, ps)) == _every_class_and_segment(Connectivity(part, ps))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), tiered_policy_sets())
def test_the_second_family_asked_only_what_the_first_left_open_gives_the_same_verdicts(
        inv: Inventory, ps: PolicySet) -> None:
    """A policy (rule) is reported when both families call it redundant: the second family,
    told what the first settled, must give the same reports as both families on their own."""
    first = redundancy._redundancy(Connectivity(Partition(inv, [ps], 4), ps))
    alone = redundancy._redundancy(Connectivity(Partition(inv, [ps], 6), ps))
    told = redundancy._redundancy(Connectivity(Partition(inv, [ps], 6), ps), first)
    for pol in ps.policies:
        assert (first.noop(pol) and alone.noop(pol)) == (first.noop(pol) and told.noop(pol)), pol.key
        for direction in pol.policy_types:
            for i in range(len(pol.rules(direction))):
                both = first.rule_redundant(pol, direction, i) and alone.rule_redundant(pol, direction, i)
                assert both == (first.rule_redundant(pol, direction, i) and told.rule_redundant(pol, direction, i))
