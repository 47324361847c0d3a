"""Who reaches whom, fast: the connectivity matrix shared by matrix, diff, graph and lint.

Evaluating every (source, destination, port) with the reference evaluator is
O(pods² × ports × policies): hopeless at 10,000 pods. Two observations make it
cheap without changing the semantics:

* **Endpoint classes.** A policy looks at an endpoint only through its
  namespace (and that namespace's labels), its labels, its declared ports (for
  named ports) and which ipBlocks contain its address. Endpoints equal in all
  of these get the same verdicts, so we evaluate one representative per class.
* **Port segments.** Per protocol, a verdict changes only at the edges of the
  numeric ports/ranges that policies name and of the ports pods declare (named
  ports resolve to those). The port space splits into segments; one
  representative port per segment stands for all of it.

Per class and segment, each side is a bitset (a Python int) of peer classes:
``egress[s]`` = destinations s's egress allows, ``ingress[d]`` = sources d's
ingress allows. The class matrix is their AND after transposing ingress;
:mod:`callgate.analysis.groups` aggregates it into groups block by block and
:mod:`callgate.analysis.diff` compares only the rows and columns that changed,
so neither ever holds all classes × classes (10,000 pods can make 10,000
classes: pods with their own labels, ipBlocks over pod ranges).
``tests/test_diff_properties.py`` checks all of this against the Evaluator.

One exception to "same class, same verdict": a pod always reaches itself. Two
*different* pods of one class get the class verdict; a pod and itself are
always allowed. :meth:`Connectivity.allowed` handles that.

ClusterNetworkPolicies make a side's bits a composition of tiers: the Admin
tier's rules, in precedence order, split the peer classes into accepted,
denied and undecided (Pass, or no match); the undecided ones get the
NetworkPolicy tier's bits when that isolates the class, else the Baseline
tier's verdict (split the same way; undecided: allowed). A CNP selects by
namespace labels and pod labels, which classes already keep apart; its
networks and the addresses of its nodes peers are blocks of the partition,
like ipBlocks.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from callgate.policy.evaluator import port_matches
from callgate.policy.model import (
    PROTOCOLS,
    Action,
    ClusterPolicy,
    ClusterRule,
    Direction,
    Endpoint,
    Inventory,
    IPAddress,
    IPBlock,
    IPNetwork,
    LabelSelector,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortProtocol,
    PortSpec,
    Tier,
)
from callgate.policy.resolve import Resolver

Progress = Callable[[int, int], None]  # (done, total)
# A side's memo key: isolating policies, their ids (and the cluster policies'), whether an
# ingress named port resolves on the class, the segments its rules' ports touch.
_SideKey = tuple[list[Policy], tuple[int, ...], bool, frozenset[int]]


@dataclass(frozen=True, order=True)
class ProtocolPortRange:
    """A protocol and an inclusive port range; one segment or a merge of several."""

    protocol: PortProtocol
    lo: int
    hi: int

    def text(self) -> str:
        if self.lo == 1 and self.hi == 65535:
            return f"any/{self.protocol}"
        if self.lo == self.hi:
            return f"{self.lo}/{self.protocol}"
        return f"{self.lo}-{self.hi}/{self.protocol}"


def merge_ranges(ranges: Iterable[ProtocolPortRange]) -> list[ProtocolPortRange]:
    """Join adjacent or overlapping ranges of the same protocol."""
    out: list[ProtocolPortRange] = []
    for r in sorted(ranges):
        if out and out[-1].protocol == r.protocol and r.lo <= out[-1].hi + 1:
            last = out[-1]
            out[-1] = ProtocolPortRange(r.protocol, last.lo, max(last.hi, r.hi))
        else:
            out.append(r)
    return out


# From this many endpoints, a dual-stack inventory's second family is worth a forked
# child (callgate.forked) in lint and diff: below, the fork costs more than it saves.
FORK_FROM_ENDPOINTS = 2_000


def families_present(inventory: Inventory) -> list[int]:
    """The IP families (4, 6) of which some endpoint has an address."""
    return [family for family in (4, 6) if any(family_ip(e, family) for e in inventory.endpoints)]


def second_family_forked(inventory: Inventory, families: Sequence[int], forks: bool) -> bool:
    """Should the second of ``families`` be computed by a forked child? Only when the
    caller may fork at all (``forks``: one-shot commands), the inventory is dual-stack
    and big enough for the fork to pay."""
    return forks and len(families) == 2 and len(inventory.endpoints) >= FORK_FROM_ENDPOINTS


def families_alike(inventory: Inventory, policy_sets: Iterable[PolicySet]) -> bool:
    """Would the IPv6 :class:`Partition` over ``policy_sets`` be the IPv4 one, class for
    class and bit for bit, so that every answer over it is the same?

    A partition depends on its family only through which endpoints have an address
    of it and which address blocks hold those addresses (ipBlocks, cluster networks,
    nodes peers' addresses; a block of the other family holds none). When the
    endpoints with an IPv4 address are those with an IPv6 address, and no block
    holds an endpoint's address of its own family, both partitions class the same
    endpoints by namespace, labels and ports alone, number the classes alike (in key
    order) and give every block no class: the same bits everywhere. A dual-stack
    cluster whose ipBlocks name external networks is like that."""
    addresses: dict[int, list[int]] = {4: [], 6: []}
    for ep in inventory.endpoints:
        v4, v6 = family_ip(ep, 4), family_ip(ep, 6)
        if (v4 is None) != (v6 is None):
            return False
        if v4 is not None and v6 is not None:
            addresses[4].append(int(v4))
            addresses[6].append(int(v6))
    for found in addresses.values():
        found.sort()
    for block in _blocks(policy_sets, inventory):
        lo, hi = _address_span(addresses[block.cidr.version], block.cidr)
        if lo < hi:
            return False  # the block holds an address (its excepts may not matter: not looked at)
    return True


def _address_span(ordered: Sequence[int], net: IPNetwork) -> tuple[int, int]:
    """Where the addresses of ``net`` are in ``ordered`` (sorted addresses as numbers)."""
    return (bisect.bisect_left(ordered, int(net.network_address)),
            bisect.bisect_right(ordered, int(net.broadcast_address)))


def family_ip(ep: Endpoint, family: int) -> IPAddress | None:
    """The endpoint's first address of ``family`` (4 or 6), if any."""
    for ip in ep.ips:
        if ip.version == family:
            return ip
    return None


def _blocks(policy_sets: Iterable[PolicySet], inventory: Inventory) -> list[IPBlock]:
    seen: dict[IPBlock, None] = {}
    for ps in policy_sets:
        for pol in ps.policies:
            for rule in (*pol.ingress, *pol.egress):
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        seen[peer.ip_block] = None
        for cnp in ps.cluster:
            for crule in (*cnp.ingress, *cnp.egress):
                seen.update((block, None) for block in cluster_rule_blocks(crule, inventory))
    return list(seen)


def cluster_rule_blocks(rule: ClusterRule, inventory: Inventory) -> list[IPBlock]:
    """The address blocks a cluster rule's peers hold: its networks, and its
    nodes peers' node addresses (one block per address)."""
    out = [block for peer in rule.peers for block in peer.networks]
    for peer in rule.peers:
        if peer.nodes is not None:
            out.extend(IPBlock(ipaddress.ip_network(ip)) for ip in inventory.node_addresses(peer.nodes))
    return out


def _port_specs(policy_sets: Iterable[PolicySet]) -> Iterable[PortSpec]:
    for ps in policy_sets:
        for pol in ps.policies:
            for rule in (*pol.ingress, *pol.egress):
                yield from rule.ports
        for cnp in ps.cluster:
            for crule in (*cnp.ingress, *cnp.egress):
                yield from crule.ports


def _segments(inventory: Inventory, policy_sets: Iterable[PolicySet]) -> dict[PortProtocol, list[int]]:
    """Per protocol, the sorted segment start ports (each segment runs to the next start - 1)."""
    edges: dict[PortProtocol, set[int]] = {p: {1} for p in PROTOCOLS}
    # Each port object once: the loaders share one per (name, number, protocol), so 50,000
    # pods' 124,000 ports are a handful of objects.
    for declared in {id(p): p for ep in inventory.endpoints for p in ep.ports}.values():
        edges[declared.protocol].update((declared.port, declared.port + 1))
    for spec in _port_specs(policy_sets):
        if isinstance(spec.port, int):
            end = spec.end_port if spec.end_port is not None else spec.port
            edges[spec.protocol].update((spec.port, end + 1))
    return {p: sorted(e for e in edges[p] if e <= 65535) for p in PROTOCOLS}


@dataclass
class _Cache:
    """What depends only on the partition, not on a policy set: shared by every
    :class:`Connectivity` over it (diff's old and new resolve each peer once, and new
    reuses old's side bits wherever the same policies isolate a class).

    Rules and policies are keyed by ``id`` (hashing them hashes every selector inside,
    a third of the time); ``pinned`` holds each one so an id is never reused while
    its entries live."""

    resolver: Resolver
    peer_bits: dict[Peer, int] = field(default_factory=dict)
    rule_peers: dict[int, int] = field(default_factory=dict)  # id(rule) -> OR of its peers' classes
    side: dict[tuple[object, ...], int] = field(default_factory=dict)
    named: dict[tuple[str, PortProtocol, int], int] = field(default_factory=dict)
    declared: dict[tuple[str, PortProtocol, int], list[int]] | None = None
    pinned: dict[int, object] = field(default_factory=dict)
    touched: dict[int, frozenset[int]] = field(default_factory=dict)  # id(rule) -> Partition.touched
    target_classes: dict[tuple[str, LabelSelector], frozenset[int]] = field(default_factory=dict)
    side_touched: dict[tuple[tuple[int, ...], Direction], frozenset[int]] = field(default_factory=dict)


class Partition:
    """Endpoints of one IP family in classes, and the port space in segments.

    Built from *all* policy sets that will be compared (diff builds one
    partition for old and new), so their matrices line up class by class.
    """

    def __init__(self, inventory: Inventory, policy_sets: Sequence[PolicySet], family: int = 4,
                 resolver: Resolver | None = None) -> None:
        """``resolver``: one over ``inventory`` to share (peers resolve the same in both
        families, and lint's other checks resolve them too)."""
        self.inventory = inventory
        self.family = family
        self.endpoints = sorted((e for e in inventory.endpoints if family_ip(e, family) is not None),
                                key=lambda e: e.key)
        self.ip: dict[str, IPAddress] = {e.key: family_ip(e, family) for e in self.endpoints}  # type: ignore[misc]
        blocks = [b for b in _blocks(policy_sets, inventory) if b.cidr.version == family]
        inside = self._block_membership(blocks)
        block_classes: list[list[int]] = [[] for _ in blocks]
        index: dict[tuple[object, ...], int] = {}
        self.members: list[list[Endpoint]] = []
        self.class_of: dict[str, int] = {}
        # The same by id(endpoint), for endpoints of this inventory (held by self.endpoints):
        # resolved peers map thousands of endpoints, and formatting each one's key was slower.
        self.class_by_id: dict[int, int] = {}
        for ep, row in zip(self.endpoints, inside, strict=True):
            # Sets, not sorted tuples: only equality matters here, and sorting each pod's
            # ports by repr was most of the partition's time at 50,000 pods.
            key = (ep.namespace, frozenset(ep.labels.items()), frozenset(ep.ports), row.tobytes())
            c = index.get(key)
            if c is None:
                c = index[key] = len(self.members)
                self.members.append([])
                for k in np.flatnonzero(row).tolist():
                    block_classes[k].append(c)
            self.members[c].append(ep)
            self.class_of[ep.key] = c
            self.class_by_id[id(ep)] = c
        self.starts = _segments(inventory, policy_sets)
        # Where each protocol's segments begin in segments().
        self._first: dict[PortProtocol, int] = {}
        for proto in PROTOCOLS:
            self._first[proto] = sum(len(self.starts[p]) for p in PROTOCOLS[:PROTOCOLS.index(proto)])
        self._declared: dict[tuple[str, PortProtocol], set[int]] | None = None  # built on first use
        self.block_bits = {b: self.bits(cs) for b, cs in zip(blocks, block_classes, strict=True)}
        assert resolver is None or resolver.inventory is inventory, "classes are found by endpoint identity"
        self.cache = _Cache(resolver or Resolver(inventory))

    def _block_membership(self, blocks: list[IPBlock]) -> np.ndarray:
        """``m[e, b]``: does block ``b`` contain endpoint ``e``'s address (``IPBlock.contains``)?

        Per block a binary search in the sorted addresses rather than a
        ``contains`` per endpoint and block (1.2 million calls, most of the
        partition's time at 10,000 pods and 121 blocks)."""
        n = len(self.endpoints)
        inside = np.zeros((n, len(blocks)), dtype=bool)
        if not blocks or not n:
            return inside
        addrs = [int(self.ip[e.key]) for e in self.endpoints]
        order = sorted(range(n), key=addrs.__getitem__)
        ordered = [addrs[i] for i in order]
        rows = np.array(order, dtype=np.intp)

        def span(net: IPNetwork) -> np.ndarray:
            lo, hi = _address_span(ordered, net)
            return rows[lo:hi]

        for k, block in enumerate(blocks):
            inside[span(block.cidr), k] = True
            for exc in block.excepts:
                if exc.version == self.family:  # an except of the other family excludes nothing
                    inside[span(exc), k] = False
        return inside

    def bits(self, classes: Iterable[int]) -> int:
        """A set of class numbers as a bitset (built through bytes: one big-int OR per
        class would be quadratic)."""
        buf = bytearray((len(self.members) + 7) // 8)
        for c in classes:
            buf[c >> 3] |= 1 << (c & 7)
        return int.from_bytes(buf, "little")

    @property
    def size(self) -> int:
        return len(self.members)

    def rep(self, c: int) -> Endpoint:
        return self.members[c][0]

    def segments(self) -> list[ProtocolPortRange]:
        out = []
        for proto in PROTOCOLS:
            starts = self.starts[proto]
            for i, lo in enumerate(starts):
                hi = starts[i + 1] - 1 if i + 1 < len(starts) else 65535
                out.append(ProtocolPortRange(proto, lo, hi))
        return out

    def segment_of(self, port: int, protocol: PortProtocol) -> ProtocolPortRange:
        starts = self.starts[protocol]
        i = bisect.bisect_right(starts, port) - 1
        hi = starts[i + 1] - 1 if i + 1 < len(starts) else 65535
        return ProtocolPortRange(protocol, starts[i], hi)

    def segment_number(self, protocol: PortProtocol, port: int) -> int | None:
        """The index in :meth:`segments` of the segment holding ``port`` (None below the first)."""
        i = bisect.bisect_right(self.starts[protocol], port) - 1
        return None if i < 0 else self._first[protocol] + i

    def touched(self, ports: Iterable[PortSpec]) -> frozenset[int]:
        """Numbers of the segments on which one of ``ports`` can match a port.

        A spec without port touches its protocol's segments, a number or range the
        segments it overlaps, a named port the segments of the ports some class
        declares under that name (the only numbers it resolves to, on the class
        itself for ingress or on a peer class for egress). On any other segment a
        rule with these ports matches nothing, so the segments no rule of a side
        touches all give that side the same bits."""
        out: set[int] = set()
        for spec in ports:
            starts, first = self.starts[spec.protocol], self._first[spec.protocol]
            if spec.port is None:
                out.update(range(first, first + len(starts)))
            elif isinstance(spec.port, str):
                for number in self._declared_numbers().get((spec.port, spec.protocol), ()):
                    k = self.segment_number(spec.protocol, number)
                    if k is not None:
                        out.add(k)
            else:
                end = spec.end_port if spec.end_port is not None else spec.port
                lo = max(bisect.bisect_right(starts, spec.port) - 1, 0)
                out.update(range(first + lo, first + bisect.bisect_right(starts, end)))
        return frozenset(out)

    def _declared_numbers(self) -> dict[tuple[str, PortProtocol], set[int]]:
        """Port numbers the classes declare, by name and protocol."""
        if self._declared is None:
            self._declared = {}
            for members in self.members:
                for declared in members[0].ports:
                    if declared.name is not None:
                        self._declared.setdefault((declared.name, declared.protocol), set()).add(declared.port)
        return self._declared


@dataclass
class _RowKinds:
    """The kinds of class of one side (classes whose bits are equal on every port) for
    :meth:`Connectivity.side_rows`."""

    reps: list[int] = field(default_factory=list)  # a class of each kind
    of_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))  # each class's kind
    touched: list[frozenset[int]] = field(default_factory=list)  # segments each kind's rules touch
    touching: dict[int, list[int]] = field(default_factory=dict)  # segment -> kinds touching it
    base: list[int | None] = field(default_factory=list)  # each kind's bits off its segments, once known
    missing: set[int] = field(default_factory=set)  # kinds whose base is not known yet


@dataclass
class Connectivity:
    """The class-level matrix of one policy set over a :class:`Partition`."""

    partition: Partition
    policies: PolicySet
    resolver: Resolver = field(init=False)

    def __post_init__(self) -> None:
        self._cache = self.partition.cache
        self.resolver = self._cache.resolver
        self.all = (1 << self.partition.size) - 1
        self._isolating: dict[Direction, list[list[Policy]]] = {}  # per class
        # (class, direction) -> (isolating policies, their ids, has an ingress named port,
        # segments touched by the ports of the rules that decide the side)
        self._side_keys: dict[tuple[int, Direction], _SideKey] = {}
        self._matrices: dict[tuple[PortProtocol, int], np.ndarray] = {}
        self._row_kinds: dict[Direction, _RowKinds] = {}  # see side_rows
        self._tiers = {tier: self.policies.tier(tier) for tier in Tier}
        self._subjects: dict[tuple[int, Tier], list[ClusterPolicy]] = {}

    # -- building blocks -------------------------------------------------

    def isolating(self, c: int, direction: Direction) -> list[Policy]:
        """Policies that select class ``c`` for ``direction``, in policy order.

        Found for every class at once, from the pods each policy selects (resolved once
        per namespace and selector): matching each class against every policy of its
        namespace was a second of a diff at 10,000 policies."""
        found = self._isolating.get(direction)
        if found is None:
            found = self._isolating[direction] = [[] for _ in range(self.partition.size)]
            for pol in self.policies.policies:
                if direction in pol.policy_types:
                    for k in self._target_classes(pol):
                        found[k].append(pol)
        return found[c]

    def _target_classes(self, policy: Policy) -> frozenset[int]:
        """The classes a policy selects (its pods' classes: a class's pods share namespace and labels)."""
        key = (policy.namespace, policy.pod_selector)
        found = self._cache.target_classes.get(key)
        if found is None:
            cls = self.partition.class_by_id
            found = self._cache.target_classes[key] = frozenset(
                cls[id(e)] for e in self.resolver.targets(policy) if id(e) in cls)
        return found

    def cluster_subjects(self, c: int, tier: Tier) -> list[ClusterPolicy]:
        """Cluster policies of ``tier`` whose subject holds class ``c``, in precedence order."""
        key = (c, tier)
        found = self._subjects.get(key)
        if found is None:
            rep = self.partition.rep(c)
            # Namespaces first (resolved once per selector): thousands of classes
            # times a thousand cluster policies would otherwise match every label.
            found = self._subjects[key] = [p for p in self._tiers[tier] if self._subject_holds(p, rep)]
        return found

    def _subject_holds(self, policy: ClusterPolicy, ep: Endpoint) -> bool:
        selector = policy.subject.namespace_selector
        assert selector is not None, "a subject always has a namespace selector"
        pods = policy.subject.pod_selector
        return ep.namespace in self.resolver.namespaces(selector) and (pods is None or pods.matches(ep.labels))

    def peer_bits(self, peer: Peer) -> int:
        """Classes a peer stands for (ipBlock: classes whose address it contains)."""
        bits = self._cache.peer_bits.get(peer)
        if bits is None:
            part = self.partition
            if peer.ip_block is not None:
                block = peer.ip_block
                if block.cidr.version != part.family:
                    bits = 0  # a block of the other family contains no address of this one
                elif block in part.block_bits:
                    bits = part.block_bits[block]
                else:
                    # Classes are only exact for the blocks the partition was built
                    # from: answering 0 here would be a silently wrong verdict.
                    raise ValueError(f"ipBlock {block.canonical()} is not in the partition: build the "
                                     "Partition from every policy set evaluated over it")
            else:
                # The resolver's label index finds the endpoints; classes follow.
                cls = part.class_by_id
                bits = part.bits(cls[id(e)] for e in self.resolver.peer_endpoints(peer) if id(e) in cls)
            self._cache.peer_bits[peer] = bits
        return bits

    def named_bits(self, name: str, protocol: PortProtocol, port: int) -> int:
        """Classes on which the named port ``name``/``protocol`` resolves to ``port``."""
        cache = self._cache
        if cache.declared is None:
            # One pass over the classes' declared ports instead of one per (name, port).
            declared: dict[tuple[str, PortProtocol, int], list[int]] = {}
            for c in range(self.partition.size):
                for p in set(self.partition.rep(c).ports):
                    if p.name is not None:
                        declared.setdefault((p.name, p.protocol, p.port), []).append(c)
            cache.declared = declared
        key = (name, protocol, port)
        bits = cache.named.get(key)
        if bits is None:
            bits = cache.named[key] = self.partition.bits(cache.declared.get(key, ()))
        return bits

    def _peers_of(self, rule: PolicyRule) -> int:
        """OR of a rule's peer classes (all classes when it has no peers), per rule object:
        hashing Peers (selectors inside) on every call was a third of rule_bits."""
        cache = self._cache
        bits = cache.rule_peers.get(id(rule))
        if bits is None:
            if rule.peers:
                bits = 0
                for p in rule.peers:
                    bits |= self.peer_bits(p)
            else:
                bits = self.all
            cache.rule_peers[id(rule)] = bits
            cache.pinned[id(rule)] = rule
        return bits

    def rule_bits(self, policy: Policy, direction: Direction, index: int, target: int,
                  protocol: PortProtocol, port: int) -> int:
        """Peer classes that rule ``index`` of ``policy`` allows for class ``target``."""
        rule = policy.rules(direction)[index]
        peers = self._peers_of(rule)
        if not rule.ports:
            return peers
        return peers & self._port_bits(rule.ports, direction, target, protocol, port)

    def _port_bits(self, ports: tuple[PortSpec, ...], direction: Direction, target: int,
                   protocol: PortProtocol, port: int) -> int:
        """Peer classes for which one of ``ports`` matches (named ports resolve on
        the destination: ``target`` on ingress, each peer class on egress)."""
        if direction is Direction.INGRESS:
            dst = self.partition.rep(target)
            return self.all if any(port_matches(s, port, protocol, dst) for s in ports) else 0
        ok = 0
        for spec in ports:
            if spec.protocol != protocol:
                continue
            if isinstance(spec.port, str):
                ok |= self.named_bits(spec.port, protocol, port)
            elif port_matches(spec, port, protocol, None):
                return self.all
        return ok

    def cluster_rule_bits(self, rule: ClusterRule, direction: Direction, target: int, protocol: PortProtocol,
                          port: int) -> tuple[Action, int]:
        """What a cluster rule does for class ``target``: its action and the peer
        classes it matches. A peer callgate cannot resolve fails closed: an
        Accept rule matches nothing through it, a Deny or Pass rule denies every
        peer (on its ports)."""
        ports = self._port_bits(rule.ports, direction, target, protocol, port) if rule.ports else self.all
        if rule.action is not Action.ACCEPT and any(not p.resolvable for p in rule.peers):
            return Action.DENY, ports
        cache = self._cache
        peers = cache.rule_peers.get(id(rule))
        if peers is None:
            peers = 0
            for p in rule.peers:
                if p.selector is not None:
                    peers |= self.peer_bits(p.selector)
            for block in cluster_rule_blocks(rule, self.partition.inventory):
                peers |= self.peer_bits(Peer(ip_block=block))
            cache.rule_peers[id(rule)] = peers
            cache.pinned[id(rule)] = rule
        return rule.action, peers & ports

    def tier_bits(self, c: int, direction: Direction, tier: Tier, protocol: PortProtocol,
                  port: int) -> tuple[int, int]:
        """(accepted, denied) peer classes of one cluster tier for class ``c``: the
        first matching rule decides each peer class; Pass and no match leave it to
        the next tier."""
        accepted = denied = 0
        remaining = self.all
        for policy in self.cluster_subjects(c, tier):
            for rule in policy.rules(direction):
                action, bits = self.cluster_rule_bits(rule, direction, c, protocol, port)
                bits &= remaining
                if action is Action.ACCEPT:
                    accepted |= bits
                elif action is Action.DENY:
                    denied |= bits
                remaining &= ~bits
                if not remaining:
                    return accepted, denied
        return accepted, denied

    def _side_key(self, c: int, direction: Direction) -> _SideKey:
        key = (c, direction)
        found = self._side_keys.get(key)
        if found is None:
            policies = self.isolating(c, direction)
            ids, named = self._memo_key(policies, direction, c)
            # The same policies touch the same segments: once per set of them (ids are pinned).
            touched = self._cache.side_touched.get((ids, direction))
            if touched is None:
                rules: list[PolicyRule | ClusterRule] = [r for p in policies for r in p.rules(direction)]
                for tier in (Tier.ADMIN, Tier.BASELINE):
                    rules.extend(r for cp in self.cluster_subjects(c, tier) for r in cp.rules(direction))
                touched = self._cache.side_touched[(ids, direction)] = self.touched(rules)
            found = self._side_keys[key] = (policies, ids, named, touched)
        return found

    def decided_otherwise(self, other: Connectivity, direction: Direction) -> list[int]:
        """Classes whose ``direction`` side ``other`` (another policy set over the same
        partition) decides with other policies. Only theirs can differ: a side's bits are
        a function of the policies that decide it (isolating, and cluster policies of
        both tiers, by id) and of the port, memoised as such in the shared cache."""
        assert other.partition is self.partition, "sides compare over one partition"
        return [c for c in range(self.partition.size)
                if self._side_key(c, direction)[1] != other._side_key(c, direction)[1]]

    def touched(self, rules: Iterable[PolicyRule | ClusterRule]) -> frozenset[int]:
        """:meth:`Partition.touched` by the ports of all ``rules``, each rule's looked up once."""
        cache = self._cache
        out: frozenset[int] = frozenset()
        for rule in rules:
            found = cache.touched.get(id(rule))
            if found is None:
                found = cache.touched[id(rule)] = self.partition.touched(rule.ports)
                cache.pinned[id(rule)] = rule
            out |= found
        return out

    def _memo_key(self, policies: list[Policy], direction: Direction, c: int) -> tuple[tuple[int, ...], bool]:
        """What a side's bits depend on besides the port: the isolating policies and
        the cluster policies of both tiers (by id), and whether an ingress named
        port resolves on the class itself."""
        cluster = [*self.cluster_subjects(c, Tier.ADMIN), None, *self.cluster_subjects(c, Tier.BASELINE)]
        for p in (*policies, *cluster):
            if p is not None:
                self._cache.pinned[id(p)] = p
        named = direction is Direction.INGRESS and (
            any(isinstance(s.port, str) for p in policies for r in p.rules(direction) for s in r.ports)
            or any(isinstance(s.port, str) for cp in cluster if cp is not None
                   for cr in cp.rules(direction) for s in cr.ports))
        return (*map(id, policies), -1, *(id(p) if p is not None else -1 for p in cluster)), named

    def side_bits(self, c: int, direction: Direction, protocol: PortProtocol, port: int,
                  without: Policy | None = None) -> int:
        """Peer classes that class ``c``'s ``direction`` side allows, through all tiers.

        ``without`` leaves one NetworkPolicy-tier policy out (lint uses it to ask
        "does this policy change anything?")."""
        policies, ids, named, touched = self._side_key(c, direction)
        if without is not None:
            policies = [p for p in policies if p is not without]
            ids, named = self._memo_key(policies, direction, c)
        # Off the touched segments the bits are the same on every port (of every
        # protocol): one entry for all of them. (Fewer policies touch fewer segments,
        # so the whole side's are a superset for ``without`` too.)
        number = self.partition.segment_number(protocol, port)
        where = (protocol, port) if number is None or number in touched else None
        memo = (ids, direction, where, self.partition.rep(c).ports if named else None)
        side = self._cache.side
        bits = side.get(memo)
        if bits is None:
            bits = side[memo] = self._tiered_bits(c, direction, protocol, port, policies)
        return bits

    def _tiered_bits(self, c: int, direction: Direction, protocol: PortProtocol, port: int,
                     policies: list[Policy]) -> int:
        if not self._tiers[Tier.ADMIN] and not self._tiers[Tier.BASELINE]:
            return self._policy_bits(c, direction, protocol, port, policies)
        accepted, denied = self.tier_bits(c, direction, Tier.ADMIN, protocol, port)
        undecided = self.all & ~(accepted | denied)
        if policies:
            return accepted | (undecided & self._policy_bits(c, direction, protocol, port, policies))
        _, baseline_denied = self.tier_bits(c, direction, Tier.BASELINE, protocol, port)
        return accepted | (undecided & ~baseline_denied)

    def _policy_bits(self, c: int, direction: Direction, protocol: PortProtocol, port: int,
                     policies: list[Policy]) -> int:
        """The NetworkPolicy tier's bits: all when no policy isolates the class."""
        if not policies:
            return self.all
        bits = 0
        for pol in policies:
            for i in range(len(pol.rules(direction))):
                bits |= self.rule_bits(pol, direction, i, c, protocol, port)
                if bits == self.all:
                    return bits
        return bits

    def side_rows(self, direction: Direction, protocol: PortProtocol, port: int) -> tuple[list[int], np.ndarray]:
        """Every class's :meth:`side_bits`, as the bitsets of its few kinds of class and,
        per class, the index of its own: classes isolated by the same policies share their
        bits, so a port has tens to hundreds of rows, not one per class (10,000 calls of
        side_bits cost more than everything done with the rows). A kind's bits are only
        computed on the segments its rules touch, and once for all the others."""
        kinds = self._row_kinds.get(direction)
        if kinds is None:
            kinds = self._row_kinds[direction] = self._kinds(direction)
        number = self.partition.segment_number(protocol, port)
        if number is None:  # below every segment: nothing is shared there
            values = [self.side_bits(c, direction, protocol, port) for c in kinds.reps]
        else:
            found: list[int | None] = list(kinds.base)
            for k in kinds.touching.get(number, ()):
                found[k] = self.side_bits(kinds.reps[k], direction, protocol, port)
            for k in [k for k in kinds.missing if number not in kinds.touched[k]]:
                found[k] = kinds.base[k] = self.side_bits(kinds.reps[k], direction, protocol, port)
                kinds.missing.discard(k)
            values = [v for v in found if v is not None]
            assert len(values) == len(found), "every kind is touched here or has its bits off its segments"
        # Kinds of class may still have equal bits on this port: one row each.
        distinct: dict[int, int] = {}
        row_of_kind = np.array([distinct.setdefault(v, len(distinct)) for v in values], dtype=np.intp)
        return list(distinct), row_of_kind[kinds.of_class]

    def _kinds(self, direction: Direction) -> _RowKinds:
        kinds: dict[object, int] = {}
        out = _RowKinds()
        of_class = []
        for c in range(self.partition.size):
            # ids name the isolating policies and the cluster policies of both tiers
            # (none of either: one kind for all such classes).
            _, ids, named, touched = self._side_key(c, direction)
            kind = (ids, self.partition.rep(c).ports if named else None)
            k = kinds.get(kind)
            if k is None:
                k = kinds[kind] = len(out.reps)
                out.reps.append(c)
                out.touched.append(touched)
                for number in touched:
                    out.touching.setdefault(number, []).append(k)
            of_class.append(k)
        out.of_class = np.array(of_class, dtype=np.intp)
        out.base = [None] * len(out.reps)
        out.missing = set(range(len(out.reps)))
        return out

    # -- the matrix ------------------------------------------------------

    def matrix(self, protocol: PortProtocol, port: int) -> np.ndarray:
        """``m[s, d]``: does class ``s`` reach class ``d`` on port/protocol (distinct pods)?"""
        seg = self.partition.segment_of(port, protocol)
        key = (protocol, seg.lo)
        found = self._matrices.get(key)
        if found is None:
            n = self.partition.size
            egress = self._unpack([self.side_bits(s, Direction.EGRESS, protocol, seg.lo) for s in range(n)])
            ingress = self._unpack([self.side_bits(d, Direction.INGRESS, protocol, seg.lo) for d in range(n)])
            found = egress & ingress.T
            self._matrices[key] = found
        return found

    def _unpack(self, rows: list[int]) -> np.ndarray:
        return unpack_rows(rows, self.partition.size)

    def class_allowed(self, s: int, d: int, protocol: PortProtocol, port: int) -> bool:
        return bool(self.matrix(protocol, port)[s, d])

    def allowed(self, src: Endpoint, dst: Endpoint, port: int, protocol: PortProtocol) -> bool:
        """The verdict for two endpoints of the inventory (a pod always reaches itself)."""
        if src.key == dst.key:
            return True
        cls = self.partition.class_of
        return self.class_allowed(cls[src.key], cls[dst.key], protocol, port)


def unpack_rows(rows: list[int], n: int) -> np.ndarray:
    """Bitset rows -> a boolean matrix (bit c of row r -> m[r, c]), ``n`` columns."""
    width = (n + 7) // 8
    buf = b"".join(r.to_bytes(width, "little") for r in rows)
    packed = np.frombuffer(buf, dtype=np.uint8).reshape(len(rows), width)
    # 0/1 bytes viewed as bool: no copy.
    return np.unpackbits(packed, axis=1, count=n, bitorder="little").view(bool)
