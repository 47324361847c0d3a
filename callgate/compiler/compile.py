"""Compile policies and an inventory into one node's :class:`RuleSet`.

The compiler reads the policy model and writes the IR; it never imports a
backend. It is deterministic: inputs are walked in sorted order and every name
in the output is derived from content.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby

from callgate.compiler import addresses
from callgate.compiler.clustertiers import TIER_SUFFIX, LoweredRule, lower_policy, subject_selects
from callgate.compiler.ir import (
    AddressPortSet,
    AddressSet,
    Chain,
    EndpointRules,
    Family,
    L4Match,
    L4Protocol,
    LocalEndpoint,
    Origin,
    PortRange,
    Rule,
    RuleSet,
    Verdict,
    short_hash,
)
from callgate.policy.model import (
    ClusterPolicy,
    Direction,
    Endpoint,
    Inventory,
    IPAddress,
    NamedPort,
    Peer,
    Policy,
    PolicySet,
    PortSpec,
    Tier,
)
from callgate.policy.resolve import Resolver

FAMILIES: tuple[tuple[Family, int], ...] = (("ip", 4), ("ip6", 6))
ANY_PEER = None  # a rule without from/to: every peer

PeerKey = frozenset[Peer] | None
# One policy rule as a chain takes it: where it came from, its peers, its ports.
Entry = tuple[Origin, PeerKey, tuple[PortSpec, ...]]
Pair = tuple[str, int]  # (address text, port): an element of an AddressPortSet
Unbound = tuple[str, str]  # (endpoint key, why its policies are not enforced)
# What a chain's candidate rules depend on besides the policy set: direction,
# cluster tier (None: the NetworkPolicy tier), the ids of the policies in it
# (of one policy set, which outlives the key), and the endpoint's own ports
# (ingress named ports resolve on them).
CandidatesKey = tuple[Direction, Tier | None, tuple[int, ...], tuple[NamedPort, ...]]
# Whether a selector peer selects an endpoint (the compiler asks its resolver;
# the incremental compiler its own index of the namespaces each peer admits).
Selects = Callable[[Peer, Endpoint], bool]


@dataclass
class _Group:
    """Rule atoms that share one L4 match, to be merged into one rule per family."""

    peers: set[Peer] = field(default_factory=set)
    any_peer: bool = False
    origins: set[Origin] = field(default_factory=set)


def _merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    out: list[PortRange] = []
    for r in sorted(ranges):
        if out and r.first <= out[-1].last + 1:
            if r.last > out[-1].last:
                out[-1] = PortRange(out[-1].first, r.last)
        else:
            out.append(r)
    return tuple(out)


class Compiler:
    """Compiles for one node. Reusable across nodes of the same inputs (it
    caches selector resolution and address unions)."""

    def __init__(self, policies: PolicySet, inventory: Inventory, resolver: Resolver | None = None) -> None:
        self.policies = policies
        self.inventory = inventory
        self.resolver = resolver or Resolver(inventory)
        self._union_cache: dict[frozenset[Peer], dict[int, list[addresses.Interval]]] = {}
        self._by_port_name: dict[str, list[Endpoint]] | None = None
        self._ids_by_port_name: dict[str, frozenset[int]] = {}
        # Per selector peer: its addresses as intervals by IP version. A peer is
        # usually part of several peer unions (one per port spec and endpoint).
        self._peer_iv_cache: dict[Peer, dict[int, list[addresses.Interval]]] = {}
        self._lowered_cache: dict[tuple[int, Direction], list[LoweredRule]] = {}
        # compile_endpoint's selection by (namespace, labels)
        self._selection_memo: dict[tuple[str, frozenset[tuple[str, str]]],
                                   tuple[list[Policy], dict[Tier, list[ClusterPolicy]]]] = {}
        self._policies_by_ns: dict[str, list[Policy]] = defaultdict(list)
        for p in sorted(policies.policies, key=_policy_order):
            self._policies_by_ns[p.namespace].append(p)

    def with_policies(self, policies: PolicySet, namespaces: Iterable[str]) -> Compiler:
        """A compiler of the same inventory for ``policies``, which differ from
        this one's only in ``namespaces``' NetworkPolicies and Apps (the
        incremental compiler's path for a policy change: sorting 10,000
        policies again was most of it)."""
        other = Compiler(PolicySet(), self.inventory, self.resolver)
        other.policies = policies
        other._policies_by_ns = defaultdict(list, self._policies_by_ns)
        changed = set(namespaces)
        for ns in changed:
            other._policies_by_ns.pop(ns, None)
        for p in policies.policies:
            if p.namespace in changed:
                other._policies_by_ns[p.namespace].append(p)
        for ns in changed & other._policies_by_ns.keys():
            other._policies_by_ns[ns].sort(key=_policy_order)
        return other

    # -- selection ---------------------------------------------------------

    def _cluster_subjects(self, local: list[Endpoint]) -> dict[tuple[str, Tier], list[ClusterPolicy]]:
        """For each local endpoint and cluster tier, the cluster policies whose subject
        holds it, in precedence order."""
        # Only the local endpoints matter: match them against each subject by
        # namespace first. Resolving each subject over the whole cluster (a
        # cluster-wide guardrail selects all 50,000 pods) cost a second per compile.
        by_ns: dict[str, list[Endpoint]] = defaultdict(list)
        for ep in local:
            by_ns[ep.namespace].append(ep)
        found: dict[tuple[str, Tier], list[ClusterPolicy]] = defaultdict(list)
        for tier in Tier:
            for policy in self.policies.tier(tier):
                selector = policy.subject.namespace_selector
                assert selector is not None, "a subject always has a namespace selector"
                namespaces = self.resolver.namespaces(selector)
                pods = policy.subject.pod_selector
                for ns in (namespaces & by_ns.keys() if len(namespaces) < len(by_ns) else
                           [n for n in by_ns if n in namespaces]):
                    for ep in by_ns[ns]:
                        if pods is None or pods.matches(ep.labels):
                            found[(ep.key, tier)].append(policy)
        return found

    def _selecting(self, local: list[Endpoint]) -> dict[str, list[Policy]]:
        """For each local endpoint, the policies (of its namespace) that select it."""
        keys = {ep.key for ep in local}
        selecting: dict[str, list[Policy]] = defaultdict(list)
        for ns in sorted({ep.namespace for ep in local}):
            for policy in self._policies_by_ns.get(ns, ()):
                for target in self.resolver.targets(policy):
                    if target.key in keys:
                        selecting[target.key].append(policy)
        return selecting

    # -- peers -------------------------------------------------------------

    def peer_intervals(self, peers: frozenset[Peer]) -> dict[int, list[addresses.Interval]]:
        cached = self._union_cache.get(peers)
        if cached is not None:
            return cached
        out: dict[int, list[addresses.Interval]] = {4: [], 6: []}
        for peer in peers:
            if peer.ip_block is not None:
                out[peer.ip_block.cidr.version].extend(addresses.block_intervals(peer.ip_block))
            else:
                for version, intervals in self._selector_intervals(peer).items():
                    out[version].extend(intervals)
        merged = {v: addresses.merge(iv) for v, iv in out.items()}
        self._union_cache[peers] = merged
        return merged

    def version_union(self, peers: frozenset[Peer], version: int) -> list[addresses.Interval]:
        return self.peer_intervals(peers)[version]

    def _selector_intervals(self, peer: Peer) -> dict[int, list[addresses.Interval]]:
        found = self._peer_iv_cache.get(peer)
        if found is None:
            found = {4: [], 6: []}
            for ep in self.resolver.peer_endpoints(peer):
                for ip in ep.ips:
                    value = int(ip)
                    found[ip.version].append((value, value))
            self._peer_iv_cache[peer] = found
        return found

    def _endpoints_with_port(self, name: str) -> list[Endpoint]:
        if self._by_port_name is None:
            index: dict[str, list[Endpoint]] = defaultdict(list)
            for ep in self.inventory.endpoints:
                for port_name in {p.name for p in ep.ports if p.name}:
                    index[port_name].append(ep)
            self._by_port_name = index
        return self._by_port_name.get(name, [])

    def _ids_with_port(self, name: str) -> frozenset[int]:
        found = self._ids_by_port_name.get(name)
        if found is None:
            found = frozenset(id(ep) for ep in self._endpoints_with_port(name))
            self._ids_by_port_name[name] = found
        return found

    def named_port_targets(self, peers: PeerKey, name: str) -> list[Endpoint]:
        """Endpoints a named-port egress rule can reach: the peers that declare it."""
        candidates = self._endpoints_with_port(name)
        if peers is ANY_PEER:
            return candidates
        # Membership by id(): building "namespace/name" keys for every candidate
        # of every peer was the third hot spot at the 100k-pod scale.
        found: dict[int, Endpoint] = {}
        for peer in peers:
            if peer.ip_block is not None:
                block = peer.ip_block
                for ep in candidates:
                    if any(block.contains(ip) for ip in ep.ips):
                        found[id(ep)] = ep
            else:
                # Walk the smaller side: the peer's pods, or the pods with the port.
                members = self.resolver.peer_endpoints(peer)
                if len(members) < len(candidates):
                    having = self._ids_with_port(name)
                    found.update((id(ep), ep) for ep in members if id(ep) in having)
                else:
                    selected = self.resolver.peer_endpoint_ids(peer)
                    found.update((id(ep), ep) for ep in candidates if id(ep) in selected)
        return sorted(found.values(), key=lambda ep: ep.key)

    # -- chains ------------------------------------------------------------

    def _chain(self, ep: Endpoint, direction: Direction, policies: list[Policy],
               builder: SetBuilder) -> Chain:
        """The NetworkPolicy tier: every rule of the isolating policies allows; the
        default denies."""
        def compute() -> list[Candidate]:
            label = direction.value.lower()
            entries = [(Origin(policy.display, label, index), frozenset(rule.peers) if rule.peers else ANY_PEER,
                        rule.ports)
                       for policy in policies for index, rule in enumerate(policy.rules(direction))]
            return self._candidates(ep, direction, entries, Verdict.ALLOW, builder)

        candidates = builder.candidates((direction, None, tuple(map(id, policies)), ep.ports), compute)
        return self._finish_chain(ep, direction, chain_name(ep.key, direction), candidates, Verdict.DENY, builder)

    def _cluster_chain(self, ep: Endpoint, direction: Direction, tier: Tier, policies: list[ClusterPolicy],
                       builder: SetBuilder) -> Chain | None:
        """A cluster tier: the policies' rules in precedence order (priority, then
        written order), each with its own verdict; the default passes to the next
        tier. None when no rule of theirs can match in this direction."""
        lowered = [rule for policy in policies for rule in self._lowered(policy, direction)]
        if not lowered:
            return None

        def compute() -> list[Candidate]:
            out: list[Candidate] = []
            # A run of rules with one verdict can be merged: whichever of them matches
            # first, the verdict is the same. A rule of another verdict ends the run.
            for verdict, run in groupby(lowered, key=lambda r: r.verdict):
                entries = [(r.origin, r.peers, r.ports) for r in run]
                out.extend(self._candidates(ep, direction, entries, verdict, builder))
            return out

        candidates = builder.candidates((direction, tier, tuple(map(id, policies)), ep.ports), compute)
        return self._finish_chain(ep, direction, chain_name(ep.key, direction, tier), candidates, Verdict.PASS,
                                  builder)

    def _lowered(self, policy: ClusterPolicy, direction: Direction) -> list[LoweredRule]:
        key = (id(policy), direction)
        found = self._lowered_cache.get(key)
        if found is None:
            found = self._lowered_cache[key] = lower_policy(policy, direction, self.inventory)
        return found

    @staticmethod
    def _finish_chain(ep: Endpoint, direction: Direction, name: str, candidates: list[Candidate],
                      default: Verdict, builder: SetBuilder) -> Chain:
        chain = Chain(name, present_rules(candidates, builder.non_empty), default)
        builder.chain_built(ep.key, direction, chain, candidates)
        return chain

    def _candidates(self, ep: Endpoint, direction: Direction, entries: Iterable[Entry], verdict: Verdict,
                    builder: SetBuilder) -> list[Candidate]:
        """Every rule that ``entries`` (policy rules of one verdict, whose order
        does not matter) could give a chain, merged per L4 match, each with the
        set it needs non-empty (None: unconditional). Which rules are present
        then depends only on which sets are empty: the incremental compiler
        keeps these candidates and re-filters them when a pod change empties or
        fills a set."""
        groups: dict[L4Match | None, _Group] = defaultdict(_Group)
        # egress named ports: protocol -> (peer key, port name) -> origins
        named: dict[L4Protocol, dict[tuple[PeerKey, str], set[Origin]]] = defaultdict(lambda: defaultdict(set))
        for origin, peers, ports in entries:
            for l4 in self._l4_matches(ep, direction, ports, peers, origin, named):
                group = groups[l4]
                group.origins.add(origin)
                if peers is ANY_PEER:
                    group.any_peer = True
                else:
                    group.peers.update(peers)

        candidates: list[Candidate] = []
        for l4, group in groups.items():
            origins = tuple(sorted(group.origins))
            if group.any_peer:
                candidates.append(Candidate(Rule(verdict, l4=l4, origins=origins), None))
                continue
            peer_key = frozenset(group.peers)
            for family, version in FAMILIES:
                # The content is computed only when the builder asks for it: the
                # incremental compiler keeps the sets it knows up to date itself.
                name = builder.address_set(family, version, peer_key, partial(self.version_union, peer_key, version))
                candidates.append(Candidate(
                    Rule(verdict, family=family, peer_set=name, l4=l4, origins=origins), name))
        for protocol, named_entries in named.items():
            origins = tuple(sorted(set().union(*named_entries.values())))
            for family, version in FAMILIES:
                name = builder.port_set(family, protocol, named_entries.keys(),
                                        partial(self._named_pairs, protocol, version, named_entries))
                candidates.append(Candidate(Rule(verdict, family=family, peer_port_set=name,
                                                 l4=L4Match(protocol), origins=origins), name))
        # Sorting before filtering gives the same order as after: the sort is stable.
        candidates.sort(key=lambda c: _rule_order(c.rule))
        return candidates

    def _named_pairs(self, protocol: L4Protocol, version: int,
                     entries: dict[tuple[PeerKey, str], set[Origin]]) -> set[Pair]:
        """(address, port) pairs of one protocol and IP version for a chain's named egress ports."""
        pairs: set[Pair] = set()
        for peers, port_name in entries:
            for target in self.named_port_targets(peers, port_name):
                pairs.update(named_port_pairs(target, peers, port_name, protocol, version,
                                              self.resolver.peer_matches))
        return pairs

    @staticmethod
    def _l4_matches(ep: Endpoint, direction: Direction, ports: tuple[PortSpec, ...], peers: PeerKey,
                    origin: Origin, named: dict[L4Protocol, dict[tuple[PeerKey, str], set[Origin]]],
                    ) -> list[L4Match | None]:
        """The L4 matches of one rule, one per protocol; named egress ports are
        set aside in ``named`` because they resolve per destination."""
        if not ports:
            return [None]
        ranges: dict[L4Protocol, list[PortRange] | None] = {}
        for spec in ports:
            protocol: L4Protocol = spec.protocol.lower()  # type: ignore[assignment]
            if spec.port is None:
                ranges[protocol] = None  # every port of the protocol
                continue
            if isinstance(spec.port, str):
                if direction is Direction.EGRESS:
                    named[protocol][(peers, spec.port)].add(origin)
                    continue
                numbers = [PortRange(n, n) for n in ep.resolve_port(spec.port, spec.protocol)]
                if not numbers:
                    continue  # this pod does not declare the port: nothing to allow
            else:
                numbers = [PortRange(spec.port, spec.end_port or spec.port)]
            if protocol in ranges and ranges[protocol] is None:
                continue
            ranges.setdefault(protocol, []).extend(numbers)  # type: ignore[union-attr]
        return [L4Match(proto, _merge_ranges(r) if r is not None else ()) for proto, r in sorted(ranges.items())]

    # -- entry point -------------------------------------------------------

    def compile(self, node: str, builder: SetBuilder | None = None) -> RuleSet:
        """The node's RuleSet. ``builder`` (default: a fresh :class:`SetBuilder`)
        collects its sets; the incremental compiler passes one that records more."""
        builder = builder if builder is not None else SetBuilder()
        local = sorted((ep for ep in self.inventory.endpoints if ep.node == node), key=lambda e: e.key)
        selecting = self._selecting(local)
        subjects = self._cluster_subjects(local)
        endpoints: list[EndpointRules] = []
        unbound: list[Unbound] = []
        for ep in local:
            compiled = self._endpoint_rules(ep, selecting.get(ep.key, []),
                                            {tier: subjects.get((ep.key, tier), []) for tier in Tier}, builder)
            if isinstance(compiled, EndpointRules):
                endpoints.append(compiled)
            elif compiled is not None:
                unbound.append(compiled)
        return RuleSet(
            node=node,
            address_sets=tuple(sorted(builder.address_sets.values(), key=lambda s: s.name)),
            port_sets=tuple(sorted(builder.port_sets.values(), key=lambda s: s.name)),
            endpoints=tuple(endpoints),
            unbound=tuple(unbound),
            local=tuple(le for ep in local if (le := local_endpoint(ep)) is not None),
        )

    def compile_endpoint(self, ep: Endpoint, builder: SetBuilder) -> EndpointRules | Unbound | None:
        """One local endpoint's part of :meth:`compile`, selected directly
        rather than through the resolver: the incremental compiler's path for a
        pod starting, stopping or changing on its node (the inventory this
        compiler was made with need not hold ``ep``; only its namespaces and
        nodes are read)."""
        return self._endpoint_rules(ep, *self.selection(ep), builder)

    def selection(self, ep: Endpoint) -> tuple[list[Policy], dict[Tier, list[ClusterPolicy]]]:
        """The policies of its namespace that select ``ep``, and the cluster
        policies whose subject holds it per tier, directly (not through the
        resolver). Remembered by namespace and labels, all it depends on:
        replicas of an application select once (3,000 selectors at the
        bench's hot pods)."""
        key = (ep.namespace, frozenset(ep.labels.items()))
        found = self._selection_memo.get(key)
        if found is None:
            namespaces = self.inventory.namespaces
            found = self._selection_memo[key] = (
                [p for p in self._policies_by_ns.get(ep.namespace, ()) if p.pod_selector.matches(ep.labels)],
                {tier: [p for p in self.policies.tier(tier) if subject_selects(p, ep, namespaces)] for tier in Tier})
        return found

    def _endpoint_rules(self, ep: Endpoint, policies: list[Policy], subjects: dict[Tier, list[ClusterPolicy]],
                        builder: SetBuilder) -> EndpointRules | Unbound | None:
        """``ep``'s chains, given the policies selecting it and the cluster
        policies holding it per tier: its EndpointRules; why it is not
        enforced (no place known); or None when nothing applies to it."""
        tiers: dict[Direction, tuple[Chain, ...]] = {}
        for direction in (Direction.INGRESS, Direction.EGRESS):
            isolating = [p for p in policies if direction in p.policy_types]
            chains = [self._cluster_chain(ep, direction, Tier.ADMIN, subjects[Tier.ADMIN], builder)]
            if isolating:
                chains.append(self._chain(ep, direction, isolating, builder))
            else:  # an isolated endpoint's NetworkPolicy tier decides every packet: no Baseline after it
                chains.append(self._cluster_chain(ep, direction, Tier.BASELINE, subjects[Tier.BASELINE], builder))
            tiers[direction] = tuple(c for c in chains if c is not None)
        if not tiers[Direction.INGRESS] and not tiers[Direction.EGRESS]:
            return None
        if ep.interface is None and ep.netns is None:
            return ep.key, "no interface known for this endpoint; its policies are not enforced"
        namespace = self.inventory.namespaces.get(ep.namespace)
        return EndpointRules(
            endpoint=ep.key, interface=ep.interface, ips=tuple(str(ip) for ip in ep.ips),
            ingress=tiers[Direction.INGRESS], egress=tiers[Direction.EGRESS], netns=ep.netns,
            audit=namespace is not None and namespace.audit)


def _policy_order(p: Policy) -> tuple[str, str, str]:
    return p.namespace, p.name, p.kind


def local_endpoint(ep: Endpoint) -> LocalEndpoint | None:
    """Where a local endpoint is enforced and what it may send from; None
    when the inventory gives no place (no interface, no namespace)."""
    if ep.interface is None and ep.netns is None:
        return None
    return LocalEndpoint(ep.key, tuple(str(ip) for ip in ep.ips), ep.interface, ep.netns)


def chain_name(endpoint: str, direction: Direction, tier: Tier | None = None) -> str:
    """``in_<hash>`` / ``out_<hash>`` for the NetworkPolicy tier; ``ina_``/``inb_``
    (``outa_``/``outb_``) for the Admin and Baseline tiers."""
    prefix = "in" if direction is Direction.INGRESS else "out"
    return f"{prefix}{TIER_SUFFIX[tier] if tier is not None else ''}_{short_hash(endpoint)}"


def chain_names(endpoint: str) -> list[str]:
    """Every chain name an endpoint can have: both directions, every tier."""
    return [chain_name(endpoint, direction, tier) for direction in (Direction.INGRESS, Direction.EGRESS)
            for tier in (None, *TIER_SUFFIX)]


def chain_tier(name: str) -> Tier | None:
    """The cluster tier a chain named by :func:`chain_name` belongs to (None: the
    NetworkPolicy tier, or a name of another kind)."""
    head = name.partition("_")[0]
    for tier, suffix in TIER_SUFFIX.items():
        if head in ("in" + suffix, "out" + suffix):
            return tier
    return None


# -- peers admitting addresses, named ports (shared with the incremental compiler) --

def peer_admits(peers: frozenset[Peer], target: Endpoint, ip: IPAddress, selects: Selects) -> bool:
    """Does some peer admit this address of ``target``? (ipBlock peers admit
    only the addresses inside the block, selector peers all of them.)"""
    for peer in peers:
        if peer.ip_block is not None:
            if peer.ip_block.contains(ip):
                return True
        elif selects(peer, target):
            return True
    return False


def named_port_pairs(target: Endpoint, peers: PeerKey, port_name: str, protocol: L4Protocol, version: int,
                     selects: Selects) -> list[Pair]:
    """The (address, port) pairs ``target`` puts into a named-port set for one
    (peers, port name) entry: its addresses of ``version`` that the peers
    admit, with every number it declares for the port name and protocol."""
    numbers = target.resolve_port(port_name, protocol.upper())  # type: ignore[arg-type]
    if not numbers:
        return []
    return [(str(ip), n) for ip in target.ips
            if ip.version == version and (peers is ANY_PEER or peer_admits(peers, target, ip, selects))
            for n in numbers]


def _rule_order(rule: Rule) -> tuple[str, str, str, str]:
    return (str(rule.l4 or ""), rule.family or "", rule.peer_set or "", rule.peer_port_set or "")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A rule a chain holds when ``needs`` (a set name) is non-empty, or always (None)."""

    rule: Rule
    needs: str | None


def present_rules(candidates: Iterable[Candidate], non_empty: Callable[[str], bool]) -> tuple[Rule, ...]:
    return tuple(c.rule for c in candidates if c.needs is None or non_empty(c.needs))


class SetBuilder:
    """Deduplicates sets across the node; names come from the peer definitions.

    Only non-empty sets are kept (a rule whose set is empty is left out). The
    incremental compiler subclasses this to record every set a rule could use,
    empty or not, and each chain's candidate rules.
    """

    def __init__(self) -> None:
        self.address_sets: dict[str, AddressSet] = {}
        self.port_sets: dict[str, AddressPortSet] = {}
        self.memo: dict[CandidatesKey, list[Candidate]] = {}

    def non_empty(self, name: str) -> bool:
        return name in self.address_sets or name in self.port_sets

    def chain_built(self, endpoint: str, direction: Direction, chain: Chain, candidates: list[Candidate]) -> None:
        """Hook: a chain is complete (nothing to do for a one-off compile)."""

    def candidates(self, key: CandidatesKey, compute: Callable[[], list[Candidate]]) -> list[Candidate]:
        """A chain's candidate rules, computed once per ``key`` (which
        determines them, given the policies): the pods of one application
        share them, and their rule objects. Safe because sets are only ever
        added to a builder: those the first computation registered stay."""
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = compute()
        return found

    def address_set(self, family: Family, version: int, peers: frozenset[Peer],
                    intervals: Callable[[], list[addresses.Interval]]) -> str:
        """The name of the set of ``peers``' addresses of one family, kept when
        non-empty; ``intervals`` computes its content (once per name here)."""
        name = address_set_name(family, version, peers)
        if name not in self.address_sets and (content := intervals()):
            self.address_sets[name] = address_set_of(name, family, version, peers, content)
        return name

    def port_set(self, family: Family, protocol: L4Protocol, keys: Iterable[tuple[PeerKey, str]],
                 pairs: Callable[[], set[Pair]]) -> str:
        """The name of a named-port egress set, kept when non-empty; ``pairs``
        computes its content."""
        definitions = port_set_definitions(keys)
        name = port_set_name(family, protocol, definitions)
        if name not in self.port_sets and (content := pairs()):
            self.port_sets[name] = AddressPortSet(name, family, protocol, sort_pairs(content), "; ".join(definitions))
        return name


def address_set_of(name: str, family: Family, version: int, peers: frozenset[Peer],
                   intervals: list[addresses.Interval]) -> AddressSet:
    """The AddressSet of some intervals (merged here)."""
    merged = addresses.merge(intervals)
    return AddressSet(name, family, addresses.canonical_elements(merged, version), address_set_comment(peers),
                      size=addresses.intervals_size(merged), bounds=merged)


def address_set_name(family: Family, version: int, peers: frozenset[Peer]) -> str:
    return f"peers{version}_{short_hash(family, *sorted(p.canonical() for p in peers))}"


def address_set_comment(peers: frozenset[Peer]) -> str:
    return "; ".join(sorted(p.canonical() for p in peers))


def port_set_definitions(keys: Iterable[tuple[PeerKey, str]]) -> list[str]:
    return sorted(
        f"{'any' if peers is None else ' | '.join(sorted(p.canonical() for p in peers))} port {name}"
        for peers, name in keys)


def port_set_name(family: Family, protocol: L4Protocol, definitions: list[str]) -> str:
    return f"named{4 if family == 'ip' else 6}_{protocol}_{short_hash(family, protocol, *definitions)}"


def pair_order(pair: Pair) -> tuple[int, int]:
    """Sort key of an (address, port) element: address order, then port (the
    incremental compiler keeps its sets in this order by bisection)."""
    return int(ipaddress.ip_address(pair[0])), pair[1]


def sort_pairs(pairs: Iterable[Pair]) -> tuple[Pair, ...]:
    """(address, port) elements in address order, then port."""
    return tuple(sorted(pairs, key=pair_order))


def compile_node(policies: PolicySet, inventory: Inventory, node: str) -> RuleSet:
    """Compile the RuleSet for ``node``."""
    return Compiler(policies, inventory).compile(node)
