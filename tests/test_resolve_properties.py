"""The indexed resolver selects what matching every pod one by one selects, in inventory order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.policy.model import Inventory, Peer
from callgate.policy.resolve import Resolver
from tests.strategies import NAMESPACES, inventories, peers


@settings(max_examples=300, deadline=None)
@given(inventories(), st.lists(st.sampled_from(NAMESPACES).flatmap(peers), min_size=1, max_size=6))
def test_peer_endpoints_match_a_scan(inventory: Inventory, chosen: list[Peer]) -> None:
    resolver = Resolver(inventory)
    for peer in chosen:
        scanned = tuple(e for e in inventory.endpoints if resolver.peer_matches(peer, e))
        assert resolver.peer_endpoints(peer) == scanned

