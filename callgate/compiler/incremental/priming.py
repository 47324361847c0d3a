"""The full compile, recorded, and the per-set state primed from it.

:func:`prime` compiles the node with a :class:`RecordingBuilder`, which
remembers every set a rule could use (empty or not), the peers it is the union
of, and each chain's candidate rules; from that it builds a :class:`State`:
reference-counted set state, the index from namespaces to the selector peers
admitting them, and which endpoints use which set. :meth:`State.rebuild` makes
the next RuleSet from that state after sets were patched (and, for a local
endpoint, its chains compiled again).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from callgate.compiler import addresses
from callgate.compiler.compile import (
    Candidate,
    CandidatesKey,
    Compiler,
    Pair,
    PeerKey,
    SetBuilder,
    Unbound,
    address_set_name,
    chain_names,
    local_endpoint,
    present_rules,
)
from callgate.compiler.incremental.setstate import (
    AddressState,
    NamespacesOf,
    PortKeys,
    PortState,
    member_counts,
)
from callgate.compiler.ir import Chain, EndpointRules, Family, L4Protocol, LocalEndpoint, RuleSet
from callgate.policy.model import Direction, Endpoint, Inventory, Peer, PolicySet

T = TypeVar("T")
# The namespaces a selector peer admits (resolved once per peer: see admission()).
Admitted = Callable[[Peer], frozenset[str] | None]


@dataclass
class ChainRecord:
    """One tier chain as compiled: whose it is, and every rule it could hold."""

    endpoint: str
    candidates: list[Candidate]


class RecordingBuilder(SetBuilder):
    """A SetBuilder that also remembers every set a rule could use (with the
    peers it was built from) and every chain's candidate rules."""

    def __init__(self) -> None:
        super().__init__()
        self.address_refs: dict[str, tuple[Family, int, frozenset[Peer]]] = {}
        self.port_refs: dict[str, tuple[Family, L4Protocol, PortKeys]] = {}
        self.chains: dict[str, ChainRecord] = {}  # by chain name (one per endpoint, direction and tier)

    def address_set(self, family: Family, version: int, peers: frozenset[Peer],
                    intervals: Callable[[], list[addresses.Interval]]) -> str:
        had = address_set_name(family, version, peers) in self.address_sets
        name = super().address_set(family, version, peers, intervals)
        # The peers whose union gave the set its content (the first non-empty
        # registration, as in SetBuilder) are the ones to track.
        if name not in self.address_refs or (not had and name in self.address_sets):
            self.address_refs[name] = (family, version, peers)
        return name

    def port_set(self, family: Family, protocol: L4Protocol, keys: Iterable[tuple[PeerKey, str]],
                 pairs: Callable[[], set[Pair]]) -> str:
        keys = tuple(keys)
        had = len(self.port_sets)
        name = super().port_set(family, protocol, keys, pairs)
        if name not in self.port_refs or len(self.port_sets) > had:
            self.port_refs[name] = (family, protocol, keys)
        return name

    def chain_built(self, endpoint: str, direction: Direction, chain: Chain, candidates: list[Candidate]) -> None:
        self.chains[chain.name] = ChainRecord(endpoint, list(candidates))


@dataclass
class State:
    """Everything primed by one full compile, kept up to date by the patches.

    A set stays here once known, even when no chain uses it any more (it is
    patched like the others, so a pod that needs it again finds it current);
    the RuleSet holds the non-empty sets some chain uses, as a full compile does.
    """

    ruleset: RuleSet
    address: dict[str, AddressState] = field(default_factory=dict)  # by set name, sorted
    ports: dict[str, PortState] = field(default_factory=dict)  # by set name, sorted
    peers_by_ns: dict[str, list[Peer]] = field(default_factory=dict)  # namespace -> selector peers (of address sets) admitting it
    sets_of_peer: dict[Peer, list[str]] = field(default_factory=dict)  # selector peer -> address sets it is part of
    namespaces_of: NamespacesOf = field(default_factory=dict)  # selector peer -> namespaces it admits
    chains: dict[str, ChainRecord] = field(default_factory=dict)  # by chain name
    users: dict[str, set[str]] = field(default_factory=dict)  # set name -> endpoints whose chains use it
    local: dict[str, LocalEndpoint] = field(default_factory=dict)  # the RuleSet's local endpoints, by key
    endpoints: dict[str, EndpointRules] = field(default_factory=dict)  # the RuleSet's endpoints, by key
    unbound: dict[str, str] = field(default_factory=dict)  # the RuleSet's unbound endpoints: key -> why
    # Chains' candidate rules by what determines them (SetBuilder.candidates):
    # a pod starting beside others of its application compiles nothing.
    memo: dict[CandidatesKey, list[Candidate]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.local = self.local or {le.endpoint: le for le in self.ruleset.local}
        self.endpoints = self.endpoints or {er.endpoint: er for er in self.ruleset.endpoints}
        self.unbound = self.unbound or dict(self.ruleset.unbound)

    def update_local(self, old: Endpoint | None, new: Endpoint | None, node: str) -> bool:
        """Take ``old`` out of the local endpoints and put ``new`` in (each
        only when it is on ``node``); True if that changed them."""
        before = dict(self.local)
        if old is not None and old.node == node:
            self.local.pop(old.key, None)
        if new is not None and new.node == node and (le := local_endpoint(new)) is not None:
            self.local[new.key] = le
        return self.local != before

    def non_empty(self, name: str) -> bool:
        state = self.address.get(name) or self.ports.get(name)
        return state is not None and state.current is not None

    # -- sets and chains joining or leaving the state ---------------------------

    def add_address(self, state: AddressState, admitted: Admitted) -> None:
        """Track a new address set, and index its selector peers by the namespaces they admit."""
        self.address = _added(self.address, state.name, state)
        for peer in state.peers:
            if peer.ip_block is not None:
                continue
            if peer not in self.sets_of_peer:
                self.sets_of_peer[peer] = []
                for ns in admitted(peer) or ():
                    self.peers_by_ns.setdefault(ns, []).append(peer)
            self.sets_of_peer[peer].append(state.name)

    def add_ports(self, name: str, family: Family, protocol: L4Protocol, keys: PortKeys,
                  targets: Iterable[Endpoint], admitted: Admitted) -> PortState:
        """Track a new named-port set over ``targets`` (the endpoints that can
        put pairs into it; a superset does no harm), its selector peers'
        namespaces resolved first (its pairs are selected by them)."""
        for key_peers, _ in keys:
            for peer in key_peers or ():
                if peer.ip_block is None:
                    admitted(peer)
        state = PortState.of(name, family, protocol, keys, targets, self.namespaces_of)
        self.ports = _added(self.ports, name, state)
        return state

    def add_chain(self, name: str, record: ChainRecord) -> None:
        self.chains[name] = record
        for candidate in record.candidates:
            if candidate.needs is not None:
                self.users.setdefault(candidate.needs, set()).add(record.endpoint)

    def drop_chains(self, endpoint: str) -> None:
        """Forget ``endpoint``'s chains: the sets they used lose it as a user."""
        for name in chain_names(endpoint):
            record = self.chains.pop(name, None)
            for candidate in record.candidates if record is not None else ():
                if candidate.needs is not None:
                    self.users.get(candidate.needs, set()).discard(endpoint)

    def set_endpoint(self, key: str, compiled: EndpointRules | Unbound | None) -> bool:
        """``key``'s part of the RuleSet is now ``compiled`` (None: it has none);
        True if that changed it. An equal EndpointRules keeps the held object
        (backends cache their work per object)."""
        had_rules, had_unbound = self.endpoints.pop(key, None), self.unbound.pop(key, None)
        if isinstance(compiled, EndpointRules):
            self.endpoints[key] = had_rules if had_rules == compiled else compiled
            return had_rules != compiled or had_unbound is not None
        if compiled is not None:
            self.unbound[key] = compiled[1]
            return had_rules is not None or had_unbound != compiled[1]
        return had_rules is not None or had_unbound is not None

    # -- the RuleSet ------------------------------------------------------------

    def rebuild(self, flipped: list[str]) -> None:
        """The new RuleSet from the state (patched sets are new objects, the
        others the same ones): chains re-filtered only for endpoints using a
        set that became empty or non-empty (``flipped``); endpoints and local
        endpoints as the patches left them."""
        for key in {ep for name in flipped for ep in self.users.get(name, ())}:
            if key in self.endpoints:
                self.endpoints[key] = self._endpoint_rules(self.endpoints[key])
        old = self.ruleset
        endpoints = tuple(self.endpoints[key] for key in sorted(self.endpoints))
        if len(endpoints) == len(old.endpoints) and all(map(operator.is_, endpoints, old.endpoints)):
            endpoints = old.endpoints  # the same objects: keep the tuple (and what is cached on it)
        local = tuple(self.local[key] for key in sorted(self.local))
        if len(local) == len(old.local) and all(map(operator.is_, local, old.local)):
            local = old.local  # likewise: backends tell an unchanged dispatch by it
        self.ruleset = RuleSet(
            node=old.node,
            address_sets=tuple(s.current for name, s in self.address.items()
                               if s.current is not None and self.users.get(name)),
            port_sets=tuple(s.current for name, s in self.ports.items()
                            if s.current is not None and self.users.get(name)),
            endpoints=endpoints,
            unbound=tuple((key, self.unbound[key]) for key in sorted(self.unbound)),
            local=local,
        )

    def _endpoint_rules(self, er: EndpointRules) -> EndpointRules:
        def tiers(current: tuple[Chain, ...]) -> tuple[Chain, ...]:
            return tuple(self._chain(chain) for chain in current)

        return replace(er, ingress=tiers(er.ingress), egress=tiers(er.egress))

    def _chain(self, chain: Chain) -> Chain:
        record = self.chains.get(chain.name)
        if record is None:
            return chain
        return Chain(chain.name, present_rules(record.candidates, self.non_empty), chain.default)


def prime(policies: PolicySet, inventory: Inventory, node: str, track: bool = True) -> State:
    """Compile ``node`` in full, recorded. ``track`` False: keep only the
    result (when endpoint keys are not unique, the per-set bookkeeping, keyed
    by endpoint, would be wrong as well as unused)."""
    compiler = Compiler(policies, inventory)
    builder = RecordingBuilder()
    ruleset = compiler.compile(node, builder)
    if not track:
        return State(ruleset)
    state = State(ruleset, memo=builder.memo)
    admitted = admission(compiler, state.namespaces_of)
    members: dict[frozenset[Peer], dict[int, dict[int, int]]] = {}  # shared by a set's two families
    for name in sorted(builder.address_refs):
        family, version, peers = builder.address_refs[name]
        if peers not in members:
            members[peers] = member_counts(compiler, peers)
        address = AddressState.of(name, family, version, peers, members[peers][version],
                                  compiler.peer_intervals(peers)[version])  # cached by the compile just made
        compiled = builder.address_sets.get(name)
        if address.current != compiled:
            raise AssertionError(f"{name}: the recorded union does not match the compiled set")
        address.current = compiled  # the RuleSet's own object: unchanged sets stay the same objects
        state.add_address(address, admitted)
    for name in sorted(builder.port_refs):
        family, protocol, keys = builder.port_refs[name]
        targets: dict[str, Endpoint] = {}
        for key_peers, port_name in keys:
            # The compiler's own candidate search (fast at scale); each
            # candidate's pairs are then worked out as for a single endpoint.
            targets.update((ep.key, ep) for ep in compiler.named_port_targets(key_peers, port_name))
        port = state.add_ports(name, family, protocol, keys, targets.values(), admitted)
        compiled_ports = builder.port_sets.get(name)
        if port.current != compiled_ports:
            raise AssertionError(f"{name}: the recorded pairs do not match the compiled set")
        port.current = compiled_ports
    for chain_name_, record in builder.chains.items():
        state.add_chain(chain_name_, record)
    return state


def admission(compiler: Compiler, namespaces_of: NamespacesOf) -> Admitted:
    """The namespaces a selector peer admits, by ``compiler``'s resolver,
    remembered in ``namespaces_of``."""
    def admitted(peer: Peer) -> frozenset[str] | None:
        if peer not in namespaces_of:
            if peer.namespace_selector is not None:
                namespaces_of[peer] = compiler.resolver.namespaces(peer.namespace_selector)
            else:
                namespaces_of[peer] = frozenset((peer.namespace,)) if peer.namespace else None
        return namespaces_of[peer]

    return admitted


def _added(states: dict[str, T], name: str, state: T) -> dict[str, T]:
    """``states`` with ``state`` added, still in name order (the order of the
    RuleSet's sets): re-sorted only when it does not come last (prime adds in
    order; a local endpoint's new set mostly does not)."""
    last = next(reversed(states), None)
    states[name] = state
    return states if last is None or last < name else dict(sorted(states.items()))
