"""One local endpoint's chains compiled again, against the kept set state.

A pod starting, stopping or changing on the node changes its own chains and
nothing else's: the other endpoints' chains depend on it only through the
sets it is a member of, which the peer patches keep current. So the
incremental compiler compiles that one endpoint with the compiler's own chain
builder (:meth:`Compiler.compile_endpoint`) and a :class:`StateBuilder`, which
names sets as the compiler does but takes them from the state; a set the
state has never seen (the first pod of an application on this node) is
computed from the current endpoints and joins the state, to be patched from
then on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from callgate.compiler import addresses
from callgate.compiler.compile import Candidate, Pair, PeerKey, SetBuilder, address_set_name, port_set_definitions, port_set_name
from callgate.compiler.incremental.priming import Admitted, ChainRecord, State
from callgate.compiler.incremental.setstate import AddressState, selects
from callgate.compiler.ir import Chain, Family, L4Protocol
from callgate.policy.model import Direction, Endpoint, Peer


class StateBuilder(SetBuilder):
    """A SetBuilder over the incremental state: set contents come from the
    state (never from the compiler's intervals, which are not computed), and
    built chains are recorded into it."""

    def __init__(self, state: State, endpoints: Collection[Endpoint], admitted: Admitted) -> None:
        super().__init__()
        self.state = state
        self.endpoints = endpoints  # the current inventory's endpoints, for sets the state lacks
        self.admitted = admitted
        self.memo = state.memo  # kept until the next full compile, as the sets are
        self._counts: dict[frozenset[Peer], dict[int, dict[int, int]]] = {}  # a set's two families share it

    def non_empty(self, name: str) -> bool:
        return self.state.non_empty(name)

    def address_set(self, family: Family, version: int, peers: frozenset[Peer],
                    intervals: Callable[[], list[addresses.Interval]]) -> str:
        name = address_set_name(family, version, peers)
        if name not in self.state.address:
            if peers not in self._counts:
                self._counts[peers] = self._member_counts(peers)
            self.state.add_address(AddressState.of(name, family, version, peers, self._counts[peers][version]),
                                   self.admitted)
        return name

    def port_set(self, family: Family, protocol: L4Protocol, keys: Iterable[tuple[PeerKey, str]],
                 pairs: Callable[[], set[Pair]]) -> str:
        keys = tuple(keys)
        name = port_set_name(family, protocol, port_set_definitions(keys))
        if name not in self.state.ports:
            port_names = {port_name for _, port_name in keys}
            targets = [ep for ep in self.endpoints if any(p.name in port_names for p in ep.ports)]
            self.state.add_ports(name, family, protocol, keys, targets, self.admitted)
        return name

    def chain_built(self, endpoint: str, direction: Direction, chain: Chain, candidates: list[Candidate]) -> None:
        self.state.add_chain(chain.name, ChainRecord(endpoint, list(candidates)))

    def _member_counts(self, peers: frozenset[Peer]) -> dict[int, dict[int, int]]:
        """Per IP version, address -> how many current endpoints selected by
        ``peers`` hold it (one pass over the endpoints, namespaces first)."""
        selectors = [(p, self.admitted(p)) for p in peers if p.ip_block is None]
        spaces = set().union(*(ns for _, ns in selectors if ns is not None))
        counts: dict[int, dict[int, int]] = {4: {}, 6: {}}
        for ep in self.endpoints:
            if ep.namespace in spaces and any(selects(p, ns, ep) for p, ns in selectors):
                for ip in ep.ips:
                    found = counts[ip.version]
                    found[int(ip)] = found.get(int(ip), 0) + 1
        return counts
