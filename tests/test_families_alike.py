"""When IPv6 would answer as IPv4 does, lint and diff compute one family
(``connectivity.families_alike``): the claim behind that, held against computing both."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.analysis.connectivity import Connectivity, Partition, families_alike
from callgate.analysis.diff import _family_cells, shared_with
from callgate.analysis.lint.checks import redundancy
from callgate.policy.model import Endpoint, Inventory, IPBlock, Peer, PolicyRule, PolicySet
from callgate.policy.resolve import Resolver
from tests.helpers import policies_from, standard
from tests.strategies import inventories_with_nodes, tiered_policy_sets

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_family(inv: Inventory, index: int, version: int) -> Inventory:
    """Endpoint ``index`` keeps its addresses of ``version`` only (-1: nobody changes)."""
    def only(ep: Endpoint) -> Endpoint:
        return dataclasses.replace(ep, ips=tuple(ip for ip in ep.ips if ip.version == version))

    return dataclasses.replace(inv, endpoints=tuple(only(ep) if i == index else ep
                                                    for i, ep in enumerate(inv.endpoints)))


def _classes(part: Partition) -> list[list[int]]:
    return [[id(ep) for ep in members] for members in part.members]


@SETTINGS
@given(inventories_with_nodes(), tiered_policy_sets(), st.integers(-1, 7), st.sampled_from([4, 6]))
def test_alike_families_have_one_partition_and_the_same_answers(inv: Inventory, ps: PolicySet, index: int,
                                                                version: int) -> None:
    inv = _one_family(inv, index, version)
    resolver = Resolver(inv)
    v4, v6 = (Partition(inv, [ps], family, resolver) for family in (4, 6))
    same = (_classes(v4) == _classes(v6)
            and all(not bits for bits in (*v4.block_bits.values(), *v6.block_bits.values())))
    if not families_alike(inv, [ps]):
        return
    assert same
    answers = [redundancy._redundancy(Connectivity(part, ps)) for part in (v4, v6)]
    assert answers[0] == answers[1]


@SETTINGS
@given(inventories_with_nodes(), tiered_policy_sets(), tiered_policy_sets())
def test_alike_families_change_the_same_cells_in_a_diff(inv: Inventory, old: PolicySet, new: PolicySet) -> None:
    new = shared_with(old, new)
    if not families_alike(inv, [old, new]):
        return
    resolver = Resolver(inv)
    v4, v6 = (_family_cells(inv, old, new, family, resolver, "endpoint", lambda steps: None) for family in (4, 6))
    assert (v4.size, v4.segments, v4.groups) == (v6.size, v6.segments, v6.groups)
    assert np.array_equal(v4.keys, v6.keys) and np.array_equal(v4.masks, v6.masks)
    for name in ("group", "count", "a", "b", "ab", "first"):
        assert np.array_equal(getattr(v4.pieces, name), getattr(v6.pieces, name)), name
    assert v4.pieces.members == v6.pieces.members


def test_what_makes_families_differ(tmp_path: Path) -> None:
    inv = standard()
    assert all(len({ip.version for ip in ep.ips}) == 2 for ep in inv.endpoints)
    pod = inv.endpoints[0]
    v4 = next(ip for ip in pod.ips if ip.version == 4)
    v6 = next(ip for ip in pod.ips if ip.version == 6)
    external = policies_from(tmp_path, """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: out, namespace: x}
        spec:
          podSelector: {}
          policyTypes: [Egress]
          egress:
          - to: [{ipBlock: {cidr: 198.19.250.0/24}}, {ipBlock: {cidr: 'fd00:ffff::/64'}}]
        """)
    assert families_alike(inv, [external])

    def holding(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> PolicySet:
        (pol,) = external.policies
        block = IPBlock(ipaddress.ip_network(f"{address}/{address.max_prefixlen}"))
        return PolicySet([dataclasses.replace(pol, egress=(PolicyRule((Peer(ip_block=block),), ()),))])

    assert not families_alike(inv, [holding(v4)])  # an IPv4 block over a pod: IPv4 splits a class
    assert not families_alike(inv, [holding(v6)])
    assert not families_alike(inv, [external, holding(v6)])  # either policy set counts
    assert not families_alike(_one_family(inv, 0, 4), [external])  # a pod without IPv6
    assert not families_alike(_one_family(inv, 3, 6), [external])
