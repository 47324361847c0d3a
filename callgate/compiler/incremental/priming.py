"""The full compile, recorded, and the per-set state primed from it.

:func:`prime` compiles the node with a :class:`RecordingBuilder`, which
remembers every set a rule could use (empty or not), the peers it is the union
of, and each chain's candidate rules; from that it builds a :class:`State`:
reference-counted set state, the index from namespaces to the selector peers
admitting them, and which endpoints use which set. :meth:`State.rebuild` makes
the next RuleSet from that state after sets were patched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from callgate.compiler import addresses
from callgate.compiler.compile import (
    Candidate,
    Compiler,
    Pair,
    PeerKey,
    SetBuilder,
    address_set_comment,
    address_set_name,
    local_endpoint,
    pair_order,
    port_set_definitions,
    present_rules,
)
from callgate.compiler.incremental.setstate import (
    AddressState,
    NamespacesOf,
    PortKeys,
    PortState,
    member_counts,
    port_pairs,
)
from callgate.compiler.ir import Chain, EndpointRules, Family, L4Protocol, LocalEndpoint, RuleSet
from callgate.policy.model import Direction, Endpoint, Inventory, Peer, PolicySet


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
                    intervals: list[addresses.Interval]) -> str:
        had = address_set_name(family, version, peers) in self.address_sets
        name = super().address_set(family, version, peers, intervals)
        # The peers whose union gave the set its content (the first non-empty
        # registration, as in SetBuilder) are the ones to track.
        if name not in self.address_refs or (intervals and not had):
            self.address_refs[name] = (family, version, peers)
        return name

    def port_set(self, family: Family, protocol: L4Protocol, keys: Iterable[tuple[PeerKey, str]],
                 pairs: set[Pair]) -> str:
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
    """Everything primed by one full compile."""

    ruleset: RuleSet
    address: dict[str, AddressState] = field(default_factory=dict)  # by set name, sorted
    ports: dict[str, PortState] = field(default_factory=dict)  # by set name, sorted
    peers_by_ns: dict[str, list[Peer]] = field(default_factory=dict)  # namespace -> selector peers (of address sets) admitting it
    sets_of_peer: dict[Peer, list[str]] = field(default_factory=dict)  # selector peer -> address sets it is part of
    namespaces_of: NamespacesOf = field(default_factory=dict)  # selector peer -> namespaces it admits
    chains: dict[str, ChainRecord] = field(default_factory=dict)  # by chain name
    users: dict[str, set[str]] = field(default_factory=dict)  # set name -> endpoints whose chains use it
    local: dict[str, LocalEndpoint] = field(default_factory=dict)  # the RuleSet's local endpoints, by key

    def __post_init__(self) -> None:
        if not self.local:
            self.local = {le.endpoint: le for le in self.ruleset.local}

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

    def rebuild(self, changed: list[str]) -> None:
        """The new RuleSet: changed sets are new objects, chains re-filtered
        only for endpoints using a set that became empty or non-empty, local
        endpoints as :meth:`update_local` left them."""
        old = self.ruleset
        present = {s.name for s in old.address_sets} | {s.name for s in old.port_sets}
        flipped = [name for name in changed if (name in present) != self.non_empty(name)]
        endpoints = old.endpoints
        touched = {ep for name in flipped for ep in self.users.get(name, ())}
        if touched:
            endpoints = tuple(self._endpoint_rules(er) if er.endpoint in touched else er for er in endpoints)
        self.ruleset = RuleSet(
            node=old.node,
            address_sets=tuple(s.current for s in self.address.values() if s.current is not None),
            port_sets=tuple(s.current for s in self.ports.values() if s.current is not None),
            endpoints=endpoints,
            unbound=old.unbound,
            local=tuple(self.local[key] for key in sorted(self.local)),
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
    namespaces_of: NamespacesOf = {}

    def admitted(peer: Peer) -> frozenset[str] | None:
        if peer not in namespaces_of:
            if peer.namespace_selector is not None:
                namespaces_of[peer] = compiler.resolver.namespaces(peer.namespace_selector)
            else:
                namespaces_of[peer] = frozenset((peer.namespace,)) if peer.namespace else None
        return namespaces_of[peer]

    members: dict[frozenset[Peer], dict[int, dict[int, int]]] = {}  # shared by a set's two families
    address = {name: _address_state(compiler, name, *builder.address_refs[name], builder, members)
               for name in sorted(builder.address_refs)}
    peers_by_ns: dict[str, list[Peer]] = {}
    sets_of_peer: dict[Peer, list[str]] = {}
    for name, state in address.items():
        for peer in state.peers:
            if peer.ip_block is not None:
                continue
            if peer not in sets_of_peer:
                sets_of_peer[peer] = []
                for ns in admitted(peer) or ():
                    peers_by_ns.setdefault(ns, []).append(peer)
            sets_of_peer[peer].append(name)
    ports = {}
    for name in sorted(builder.port_refs):
        family, protocol, keys = builder.port_refs[name]
        for peers, _ in keys:
            for peer in peers or ():
                if peer.ip_block is None:
                    admitted(peer)
        ports[name] = _port_state(compiler, name, family, protocol, keys, builder, namespaces_of)
    users: dict[str, set[str]] = {}
    for record in builder.chains.values():
        for candidate in record.candidates:
            if candidate.needs is not None:
                users.setdefault(candidate.needs, set()).add(record.endpoint)
    return State(ruleset, address, ports, peers_by_ns, sets_of_peer, namespaces_of, builder.chains, users)


def _address_state(compiler: Compiler, name: str, family: Family, version: int, peers: frozenset[Peer],
                   builder: SetBuilder, members: dict[frozenset[Peer], dict[int, dict[int, int]]],
                   ) -> AddressState:
    blocks = addresses.merge(iv for p in peers if p.ip_block is not None and p.ip_block.cidr.version == version
                             for iv in addresses.block_intervals(p.ip_block))
    if peers not in members:
        members[peers] = member_counts(compiler, peers)
    counts = members[peers][version]
    union = compiler.peer_intervals(peers)[version]  # cached by the compile just made
    current = builder.address_sets.get(name)
    texts = list(current.elements) if current is not None else []
    if len(texts) != len(union):
        raise AssertionError(f"{name}: the recorded union does not match the compiled set")
    return AddressState(name, family, version, peers, address_set_comment(peers), blocks, dict(counts),
                        [lo for lo, _ in union], [hi for _, hi in union], texts, addresses.intervals_size(union),
                        current)


def _port_state(compiler: Compiler, name: str, family: Family, protocol: L4Protocol, keys: PortKeys,
                builder: SetBuilder, namespaces_of: NamespacesOf) -> PortState:
    current = builder.port_sets.get(name)
    elements = list(current.elements) if current is not None else []
    state = PortState(name, family, protocol, 4 if family == "ip" else 6, keys,
                      "; ".join(port_set_definitions(keys)), {}, {},
                      [pair_order(p) for p in elements], elements, current)
    targets: dict[str, Endpoint] = {}
    for peers, port_name in keys:
        # The compiler's own candidate search (fast at scale); each
        # candidate's pairs are then worked out as for a single endpoint.
        targets.update((ep.key, ep) for ep in compiler.named_port_targets(peers, port_name))
    for key, ep in targets.items():
        pairs = port_pairs(ep, state, namespaces_of)
        if pairs:
            state.contrib[key] = pairs
            for pair in pairs:
                state.counts[pair] = state.counts.get(pair, 0) + 1
    if set(state.counts) != set(elements):
        raise AssertionError(f"{name}: the recorded pairs do not match the compiled set")
    return state
