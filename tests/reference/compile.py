"""Compile policies and an inventory into one node's :class:`RuleSet`.

The compiler reads the policy model and writes the IR; it never imports a
backend. It is deterministic: inputs are walked in sorted order and every name
in the output is derived from content.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from callgate.compiler.ir import (
    AddressPortSet,
    AddressSet,
    Chain,
    EndpointRules,
    Family,
    L4Match,
    L4Protocol,
    Origin,
    PortRange,
    Rule,
    RuleSet,
    Verdict,
    short_hash,
)
from callgate.policy.model import (
    Direction,
    Endpoint,
    Inventory,
    Peer,
    Policy,
    PolicySet,
    PortSpec,
)
from tests.reference import addresses
from tests.reference.resolve import Resolver

FAMILIES: tuple[tuple[Family, int], ...] = (("ip", 4), ("ip6", 6))
ANY_PEER = None  # a rule without from/to: every peer

PeerKey = frozenset[Peer] | None


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
        self._policies_by_ns: dict[str, list[Policy]] = defaultdict(list)
        for p in sorted(policies.policies, key=lambda p: (p.namespace, p.name, p.kind)):
            self._policies_by_ns[p.namespace].append(p)

    # -- selection ---------------------------------------------------------

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

    def _peer_intervals(self, peers: frozenset[Peer]) -> dict[int, list[addresses.Interval]]:
        cached = self._union_cache.get(peers)
        if cached is not None:
            return cached
        out: dict[int, list[addresses.Interval]] = {4: [], 6: []}
        for peer in peers:
            if peer.ip_block is not None:
                out[peer.ip_block.cidr.version].extend(addresses.block_intervals(peer.ip_block))
            else:
                for ep in self.resolver.peer_endpoints(peer):
                    for ip in ep.ips:
                        out[ip.version].append(addresses.address_interval(ip))
        merged = {v: addresses.merge(iv) for v, iv in out.items()}
        self._union_cache[peers] = merged
        return merged

    def _endpoints_with_port(self, name: str) -> list[Endpoint]:
        if self._by_port_name is None:
            index: dict[str, list[Endpoint]] = defaultdict(list)
            for ep in self.inventory.endpoints:
                for port_name in {p.name for p in ep.ports if p.name}:
                    index[port_name].append(ep)
            self._by_port_name = index
        return self._by_port_name.get(name, [])

    def _named_port_targets(self, peers: PeerKey, name: str) -> list[Endpoint]:
        """Endpoints a named-port egress rule can reach: the peers that declare it."""
        candidates = self._endpoints_with_port(name)
        if peers is ANY_PEER:
            return candidates
        found: dict[str, Endpoint] = {}
        for peer in peers:
            if peer.ip_block is not None:
                block = peer.ip_block
                for ep in candidates:
                    if any(block.contains(ip) for ip in ep.ips):
                        found[ep.key] = ep
            else:
                selected = {e.key for e in self.resolver.peer_endpoints(peer)}
                for ep in candidates:
                    if ep.key in selected:
                        found[ep.key] = ep
        return [found[k] for k in sorted(found)]

    # -- chains ------------------------------------------------------------

    def _chain(self, ep: Endpoint, direction: Direction, policies: list[Policy],
               builder: _SetBuilder) -> Chain:
        groups: dict[L4Match | None, _Group] = defaultdict(_Group)
        # egress named ports: protocol -> (peer key, port name) -> origins
        named: dict[L4Protocol, dict[tuple[PeerKey, str], set[Origin]]] = defaultdict(lambda: defaultdict(set))
        label = direction.value.lower()
        for policy in policies:
            for index, rule in enumerate(policy.rules(direction)):
                origin = Origin(policy.display, label, index)
                peers: PeerKey = frozenset(rule.peers) if rule.peers else ANY_PEER
                for l4 in self._l4_matches(ep, direction, rule.ports, peers, origin, named):
                    group = groups[l4]
                    group.origins.add(origin)
                    if peers is ANY_PEER:
                        group.any_peer = True
                    else:
                        group.peers.update(peers)

        rules: list[Rule] = []
        for l4, group in groups.items():
            origins = tuple(sorted(group.origins))
            if group.any_peer:
                rules.append(Rule(Verdict.ALLOW, l4=l4, origins=origins))
                continue
            peer_key = frozenset(group.peers)
            unions = self._peer_intervals(peer_key)
            for family, version in FAMILIES:
                if unions[version]:
                    name = builder.address_set(family, version, peer_key, unions[version])
                    rules.append(Rule(Verdict.ALLOW, family=family, peer_set=name, l4=l4, origins=origins))
        for protocol, entries in named.items():
            for family, version in FAMILIES:
                pairs: set[tuple[str, int]] = set()
                for (peers, port_name), _ in entries.items():
                    for target in self._named_port_targets(peers, port_name):
                        numbers = target.resolve_port(port_name, protocol.upper())  # type: ignore[arg-type]
                        for ip in target.ips:
                            if ip.version == version and (
                                peers is ANY_PEER or self._peer_admits(peers, target, ip)
                            ):
                                pairs.update((str(ip), n) for n in numbers)
                if pairs:
                    origins = tuple(sorted(set().union(*entries.values())))
                    name = builder.port_set(family, protocol, entries.keys(), pairs)
                    rules.append(Rule(Verdict.ALLOW, family=family, peer_port_set=name,
                                      l4=L4Match(protocol), origins=origins))
        rules.sort(key=_rule_order)
        prefix = "in" if direction is Direction.INGRESS else "out"
        return Chain(f"{prefix}_{short_hash(ep.key)}", tuple(rules), Verdict.DENY)

    def _peer_admits(self, peers: frozenset[Peer], target: Endpoint, ip: object) -> bool:
        """Does some peer admit this address of ``target``? (ipBlock peers admit
        only the addresses inside the block, selector peers all of them.)"""
        for peer in peers:
            if peer.ip_block is not None:
                if peer.ip_block.contains(ip):  # type: ignore[arg-type]
                    return True
            elif self.resolver.peer_matches(peer, target):
                return True
        return False

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

    def compile(self, node: str) -> RuleSet:
        local = sorted((ep for ep in self.inventory.endpoints if ep.node == node), key=lambda e: e.key)
        selecting = self._selecting(local)
        builder = _SetBuilder()
        endpoints: list[EndpointRules] = []
        unbound: list[tuple[str, str]] = []
        for ep in local:
            policies = selecting.get(ep.key, [])
            tiers: dict[Direction, tuple[Chain, ...]] = {}
            for direction in (Direction.INGRESS, Direction.EGRESS):
                isolating = [p for p in policies if direction in p.policy_types]
                tiers[direction] = (self._chain(ep, direction, isolating, builder),) if isolating else ()
            if not tiers[Direction.INGRESS] and not tiers[Direction.EGRESS]:
                continue
            if ep.interface is None:
                unbound.append((ep.key, "no interface known for this endpoint; its policies are not enforced"))
                continue
            endpoints.append(EndpointRules(
                endpoint=ep.key, interface=ep.interface, ips=tuple(str(ip) for ip in ep.ips),
                ingress=tiers[Direction.INGRESS], egress=tiers[Direction.EGRESS]))
        return RuleSet(
            node=node,
            address_sets=tuple(sorted(builder.address_sets.values(), key=lambda s: s.name)),
            port_sets=tuple(sorted(builder.port_sets.values(), key=lambda s: s.name)),
            endpoints=tuple(endpoints),
            unbound=tuple(unbound),
        )


def _rule_order(rule: Rule) -> tuple[str, str, str, str]:
    return (str(rule.l4 or ""), rule.family or "", rule.peer_set or "", rule.peer_port_set or "")


class _SetBuilder:
    """Deduplicates sets across the node; names come from the peer definitions."""

    def __init__(self) -> None:
        self.address_sets: dict[str, AddressSet] = {}
        self.port_sets: dict[str, AddressPortSet] = {}

    def address_set(self, family: Family, version: int, peers: frozenset[Peer],
                    intervals: list[addresses.Interval]) -> str:
        definitions = sorted(p.canonical() for p in peers)
        name = f"peers{version}_{short_hash(family, *definitions)}"
        if name not in self.address_sets:
            comment = "; ".join(definitions)
            self.address_sets[name] = AddressSet(
                name, family, addresses.canonical_elements(intervals, version), comment)
        return name

    def port_set(self, family: Family, protocol: L4Protocol, keys: Iterable[tuple[PeerKey, str]],
                 pairs: set[tuple[str, int]]) -> str:
        definitions = sorted(
            f"{'any' if peers is None else ' | '.join(sorted(p.canonical() for p in peers))} port {name}"
            for peers, name in keys)
        name = f"named{4 if family == 'ip' else 6}_{protocol}_{short_hash(family, protocol, *definitions)}"
        if name not in self.port_sets:
            import ipaddress

            elements = tuple(sorted(pairs, key=lambda ap: (int(ipaddress.ip_address(ap[0])), ap[1])))
            self.port_sets[name] = AddressPortSet(name, family, protocol, elements, "; ".join(definitions))
        return name


def compile_node(policies: PolicySet, inventory: Inventory, node: str) -> RuleSet:
    """Compile the RuleSet for ``node``."""
    return Compiler(policies, inventory).compile(node)
