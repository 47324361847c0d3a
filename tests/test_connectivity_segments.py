"""What sharing a side's bits across port segments rests on: a rule matches nothing on
the segments its ports do not touch (Partition.touched)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from callgate.analysis.connectivity import Connectivity, Partition
from callgate.policy.model import Direction, Inventory, PolicySet
from tests.strategies import inventories_with_nodes, tiered_policy_sets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories_with_nodes(), tiered_policy_sets())
def test_rules_match_nothing_off_the_segments_they_touch(inv: Inventory, ps: PolicySet) -> None:
    for family in (4, 6):
        part = Partition(inv, [ps], family)
        conn = Connectivity(part, ps)
        segments = part.segments()
        for k, seg in enumerate(segments):
            assert part.segment_number(seg.protocol, seg.lo) == k
            assert part.segment_number(seg.protocol, seg.hi) == k
        for direction in Direction:
            for pol in ps.policies:
                for i, rule in enumerate(pol.rules(direction)):
                    if not rule.ports:
                        continue
                    off = [seg for k, seg in enumerate(segments) if k not in part.touched(rule.ports)]
                    for c in range(part.size):
                        for seg in off:
                            assert conn.rule_bits(pol, direction, i, c, seg.protocol, seg.lo) == 0
            for cp in ps.cluster:
                for crule in cp.rules(direction):
                    if not crule.ports:
                        continue
                    off = [seg for k, seg in enumerate(segments) if k not in part.touched(crule.ports)]
                    for c in range(part.size):
                        for seg in off:
                            assert conn.cluster_rule_bits(crule, direction, c, seg.protocol, seg.lo)[1] == 0
