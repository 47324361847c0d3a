"""Incremental compile: one endpoint change in, the node's new RuleSet out.

A fresh :class:`~callgate.compiler.compile.Compiler` costs ~0.4 s on the
50,000-pod target cluster; the performance aim is 20 ms from an event to the
kernel. Most events are pods elsewhere in the cluster appearing, going away or
being relabelled, and such a pod can only change the node's RuleSet through
the **address sets** and **(address, port) sets** whose peers select it: chains
are built from local pods and policies only, except that a rule whose set is
empty is left out (so a set becoming empty or non-empty re-filters the chains
that use it). :class:`IncrementalCompiler` therefore

* compiles the node once in full, recording through a :class:`SetBuilder`
  subclass every set a rule could use (empty or not), the peers it is the
  union of, and each chain's candidate rules;
* indexes the selector peers of those sets by the namespaces they admit, so
  a change looks at the few peers of the pod's namespace;
* keeps per address set a reference count per address (how many member pods
  hold it) and the union as maximal intervals with their element text, and
  patches them point by point: adding an address joins at most two
  neighbours, removing one splits at most one interval;
* keeps per (address, port) set each endpoint's contribution and a count per
  pair, elements in order;
* builds the new RuleSet from the same objects as before except the sets (and
  endpoints, when a set flipped between empty and non-empty) that changed, so
  the compositional :meth:`RuleSet.digest` hashes only those.

Everything it is not sure about falls back to a full compile of the current
inventory, which also re-primes the state: an endpoint on this node that a
policy of its namespace selects (its chains, interface and named ports depend
on it; a local endpoint no policy selects has no chains and counts only as a
peer, like a remote one), an unknown or duplicate endpoint key, an inventory
with duplicate keys. Policy and namespace changes
are not endpoint changes: call :meth:`IncrementalCompiler.rebase`.

The result is always equal (``==`` and digest) to ``Compiler(policies,
inventory).compile(node)`` of the current inventory; tests/test_incremental_compile.py
checks that on random inputs and change sequences.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from callgate.compiler import addresses
from callgate.compiler.compile import (
    ANY_PEER,
    Candidate,
    Compiler,
    PeerKey,
    SetBuilder,
    address_set_comment,
    address_set_name,
    pair_order,
    port_set_definitions,
    present_rules,
)
from callgate.compiler.ir import (
    AddressPortSet,
    AddressSet,
    Chain,
    EndpointRules,
    Family,
    L4Protocol,
    RuleSet,
    Verdict,
)
from callgate.policy.model import Direction, Endpoint, Inventory, IPAddress, Peer, Policy, PolicySet

Pair = tuple[str, int]  # (address text, port)
Change = tuple[Endpoint | None, Endpoint | None]  # (old, new) of one endpoint
PortKeys = tuple[tuple[PeerKey, str], ...]  # a port set's (peers, port name) entries


# -- recording the full compile -----------------------------------------------


@dataclass
class _ChainRecord:
    name: str
    candidates: list[Candidate]


class _RecordingBuilder(SetBuilder):
    """A SetBuilder that also remembers every set a rule could use (with the
    peers it was built from) and every chain's candidate rules."""

    def __init__(self) -> None:
        super().__init__()
        self.address_refs: dict[str, tuple[Family, int, frozenset[Peer]]] = {}
        self.port_refs: dict[str, tuple[Family, L4Protocol, PortKeys]] = {}
        self.chains: dict[tuple[str, Direction], _ChainRecord] = {}

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
                 pairs: set[tuple[str, int]]) -> str:
        keys = tuple(keys)
        had = len(self.port_sets)
        name = super().port_set(family, protocol, keys, pairs)
        if name not in self.port_refs or len(self.port_sets) > had:
            self.port_refs[name] = (family, protocol, keys)
        return name

    def chain_built(self, endpoint: str, direction: Direction, chain: Chain, candidates: list[Candidate]) -> None:
        self.chains[(endpoint, direction)] = _ChainRecord(chain.name, list(candidates))


# -- per-set state ------------------------------------------------------------


def _member_counts(compiler: Compiler, peers: frozenset[Peer]) -> dict[int, dict[int, int]]:
    """Per IP version, address -> how many endpoints selected by ``peers`` hold it."""
    members: dict[int, Endpoint] = {}
    for peer in peers:
        if peer.ip_block is None:
            members.update((id(ep), ep) for ep in compiler.resolver.peer_endpoints(peer))
    counts: dict[int, dict[int, int]] = {4: {}, 6: {}}
    for ep in members.values():
        for ip in ep.ips:
            found = counts[ip.version]
            value = int(ip)
            found[value] = found.get(value, 0) + 1
    return counts


def _change_key(change: Change) -> str:
    old, new = change
    return (new or old).key  # type: ignore[union-attr]


def _values(ep: Endpoint | None, version: int) -> list[int]:
    return [int(ip) for ip in ep.ips if ip.version == version] if ep is not None else []


@dataclass
class _AddressState:
    """One address set: the union of its peers, kept as maximal intervals."""

    name: str
    family: Family
    version: int
    peers: frozenset[Peer]
    comment: str
    blocks: list[addresses.Interval]  # the ipBlock peers' union (pods do not change it)
    counts: dict[int, int]  # address -> member endpoints holding it
    los: list[int]  # the union as maximal intervals, in order ...
    his: list[int]
    texts: list[str]  # ... and each one's element text
    current: AddressSet | None

    def update(self, removed: list[int], added: list[int]) -> bool:
        """Apply one endpoint's addresses leaving and joining; True if the union changed."""
        delta: dict[int, int] = {}
        for v in removed:
            delta[v] = delta.get(v, 0) - 1
        for v in added:
            delta[v] = delta.get(v, 0) + 1
        changed = False
        for v, d in delta.items():
            before = self.counts.get(v, 0)
            after = before + d
            if after < 0:
                raise AssertionError(f"{self.name}: address {v} counted below zero")
            if after:
                self.counts[v] = after
            else:
                self.counts.pop(v, None)
            if before == 0 and after > 0:
                changed |= self._add_point(v)
            elif before > 0 and after == 0:
                changed |= self._remove_point(v)
        if changed:
            self.current = (AddressSet(self.name, self.family, tuple(self.texts), self.comment)
                            if self.texts else None)
        return changed

    def _text(self, i: int) -> str:
        return addresses.interval_text(self.los[i], self.his[i], self.version)

    def _add_point(self, v: int) -> bool:
        i = bisect.bisect_right(self.los, v) - 1  # the last interval starting at or before v
        if i >= 0 and self.his[i] >= v:
            return False  # already covered (an ipBlock, or a run of addresses)
        joins_left = i >= 0 and self.his[i] == v - 1
        joins_right = i + 1 < len(self.los) and self.los[i + 1] == v + 1
        if joins_left and joins_right:
            self.his[i] = self.his[i + 1]
            del self.los[i + 1], self.his[i + 1], self.texts[i + 1]
            self.texts[i] = self._text(i)
        elif joins_left:
            self.his[i] = v
            self.texts[i] = self._text(i)
        elif joins_right:
            self.los[i + 1] = v
            self.texts[i + 1] = self._text(i + 1)
        else:
            self.los.insert(i + 1, v)
            self.his.insert(i + 1, v)
            self.texts.insert(i + 1, self._text(i + 1))
        return True

    def _remove_point(self, v: int) -> bool:
        """v has no member left: unless an ipBlock covers it, split its interval
        around it (the union is a point set, so the two sides stay covered)."""
        b = bisect.bisect_right(self.blocks, (v, v)) - 1
        for lo, hi in self.blocks[max(b, 0):b + 2]:
            if lo <= v <= hi:
                return False
        i = bisect.bisect_right(self.los, v) - 1
        if i < 0 or not self.los[i] <= v <= self.his[i]:
            raise AssertionError(f"{self.name}: address {v} missing from the union")
        lo, hi = self.los[i], self.his[i]
        pieces = [(a, b) for a, b in ((lo, v - 1), (v + 1, hi)) if a <= b]
        self.los[i:i + 1] = [a for a, _ in pieces]
        self.his[i:i + 1] = [b for _, b in pieces]
        self.texts[i:i + 1] = [addresses.interval_text(a, b, self.version) for a, b in pieces]
        return True


@dataclass
class _PortState:
    """One (address, port) set: each endpoint's pairs, counted, in order."""

    name: str
    family: Family
    protocol: L4Protocol
    version: int
    keys: PortKeys
    comment: str
    contrib: dict[str, frozenset[Pair]]  # endpoint key -> its pairs (non-empty only)
    counts: dict[Pair, int]
    order: list[tuple[int, int]]  # sort keys of the elements ...
    elements: list[Pair]  # ... and the elements, in address then port order
    current: AddressPortSet | None

    def update(self, old_key: str | None, new_key: str | None, new_pairs: frozenset[Pair]) -> bool:
        old_pairs = self.contrib.pop(old_key, frozenset()) if old_key is not None else frozenset()
        if new_key is not None and new_pairs:
            self.contrib[new_key] = new_pairs
        if old_pairs == new_pairs:
            return False
        changed = False
        for pair in old_pairs - new_pairs:
            left = self.counts[pair] - 1
            if left:
                self.counts[pair] = left
                continue
            del self.counts[pair]
            i = bisect.bisect_left(self.order, pair_order(pair))
            del self.order[i], self.elements[i]
            changed = True
        for pair in new_pairs - old_pairs:
            had = self.counts.get(pair, 0)
            self.counts[pair] = had + 1
            if had == 0:
                key = pair_order(pair)
                i = bisect.bisect_left(self.order, key)
                self.order.insert(i, key)
                self.elements.insert(i, pair)
                changed = True
        if changed:
            self.current = (AddressPortSet(self.name, self.family, self.protocol, tuple(self.elements), self.comment)
                            if self.elements else None)
        return changed


def _admits(peers: frozenset[Peer], namespaces_of: dict[Peer, frozenset[str] | None], ep: Endpoint,
            ip: IPAddress) -> bool:
    """Does some peer admit this address of ``ep``? (As Compiler._peer_admits.)"""
    for peer in peers:
        if peer.ip_block is not None:
            if peer.ip_block.contains(ip):
                return True
        elif _selects(peer, namespaces_of[peer], ep):
            return True
    return False


def _selects(peer: Peer, namespaces: frozenset[str] | None, ep: Endpoint) -> bool:
    """Does a selector peer select ``ep``? ``namespaces``: those it admits."""
    if namespaces is None or ep.namespace not in namespaces:
        return False
    return peer.pod_selector is None or peer.pod_selector.matches(ep.labels)


def _port_pairs(ep: Endpoint | None, state: _PortState, namespaces_of: dict[Peer, frozenset[str] | None],
                ) -> frozenset[Pair]:
    """The pairs ``ep`` puts into a port set (as Compiler._named_pairs, for one target)."""
    if ep is None:
        return frozenset()
    out: set[Pair] = set()
    for peers, port_name in state.keys:
        numbers = ep.resolve_port(port_name, state.protocol.upper())  # type: ignore[arg-type]
        if not numbers:
            continue
        for ip in ep.ips:
            if ip.version == state.version and (peers is ANY_PEER or _admits(peers, namespaces_of, ep, ip)):
                out.update((str(ip), n) for n in numbers)
    return frozenset(out)


# -- the compiler -------------------------------------------------------------


@dataclass
class _State:
    """Everything primed by one full compile."""

    ruleset: RuleSet
    address: dict[str, _AddressState]  # by set name, sorted
    ports: dict[str, _PortState]  # by set name, sorted
    peers_by_ns: dict[str, list[Peer]]  # namespace -> selector peers (of address sets) admitting it
    sets_of_peer: dict[Peer, list[str]]  # selector peer -> address sets it is part of
    namespaces_of: dict[Peer, frozenset[str] | None]  # selector peer -> namespaces it admits
    chains: dict[tuple[str, Direction], _ChainRecord]
    users: dict[str, set[str]] = field(default_factory=dict)  # set name -> endpoints whose chains use it


class IncrementalCompiler:
    """The RuleSet of ``node``, kept up to date one endpoint change at a time.

    ``ruleset`` is always what ``Compiler(policies, inventory).compile(node)``
    returns for the current inventory. ``last_path`` says how the latest
    update was made: "incremental", "unchanged" or "full: <why>".
    """

    def __init__(self, policies: PolicySet, inventory: Inventory, node: str) -> None:
        self.node = node
        self.policies = policies
        self.namespaces = inventory.namespaces
        self.full_compiles = 0
        self.incremental_updates = 0
        self.last_path = "full: first compile"
        self._last_list: list[Endpoint] | None = None
        self._prime(inventory.endpoints)

    @property
    def ruleset(self) -> RuleSet:
        return self._state.ruleset

    @property
    def inventory(self) -> Inventory:
        """The current inventory (endpoints in insertion order)."""
        if self._duplicates is not None:
            return Inventory(self.namespaces, tuple(self._duplicates))
        return Inventory(self.namespaces, tuple(self._endpoints.values()))

    def rebase(self, policies: PolicySet, inventory: Inventory) -> RuleSet:
        """Anything but an endpoint change (policies, namespaces): compile in full."""
        self.policies = policies
        self.namespaces = inventory.namespaces
        self._prime(inventory.endpoints)
        self.last_path = "full: rebase"
        return self.ruleset

    def sync(self, policies: PolicySet, inventory: Inventory, max_changes: int = 256) -> RuleSet:
        """The RuleSet for a whole new snapshot (the agent's path).

        Same policies and namespaces (equal, not necessarily the same objects)
        and only endpoints without chains here differing (remote ones, or local
        ones no policy selects; diffed by identity, key and ``==``): one
        :meth:`update` per changed endpoint. Anything else, or more than
        ``max_changes`` changes (a resync after a long gap): :meth:`rebase`.
        """
        changes = None
        if self._duplicates is None and policies == self.policies and inventory.namespaces == self.namespaces:
            sure, changes = self._diff_by_position(inventory.endpoints, max_changes)
            if not sure:
                changes = self._diff(inventory.endpoints, max_changes)
        if changes is None:
            return self.rebase(policies, inventory)
        self.policies, self.namespaces = policies, inventory.namespaces  # equal; keep the newest objects
        paths = set()
        for old, new in changes:
            if old is not None and new is not None and old == new:
                self._store(old, new)  # an equal copy: hold the snapshot's object (the next diff is by identity)
                continue
            self.update(old, new)
            paths.add(self.last_path)
        fulls = sorted(p for p in paths if p.startswith("full"))  # not expected after the diff's checks
        self.last_path = fulls[0] if fulls else "incremental" if "incremental" in paths else "unchanged"
        self._last_list = list(inventory.endpoints)
        return self.ruleset

    def _diff_by_position(self, endpoints: Sequence[Endpoint], limit: int) -> tuple[bool, list[Change] | None]:
        """The fast diff, against the previous snapshot's list, position by
        position and by identity (C-level ``map(operator.is_, ...)``, ~1 ms at
        50,000): a source that replaces, appends or drops at the end leaves
        everything else where it was. (False, None) when that is not what
        happened (an object moved, many changes): then :meth:`_diff` decides.
        """
        prev = self._last_list
        if prev is None:
            return False, None
        same = list(map(operator.is_, prev, endpoints))
        misses = same.count(False)
        n = len(same)
        if misses + abs(len(prev) - len(endpoints)) > limit:
            return False, None
        at: list[int] = []
        for _ in range(misses):
            at.append(same.index(False, at[-1] + 1 if at else 0))
        gone = [prev[i] for i in at] + prev[n:]  # held objects no longer there
        incoming = [endpoints[i] for i in at] + list(endpoints[n:])
        held_ids = self._held_ids
        if any(id(ep) in held_ids for ep in incoming) or len({id(ep) for ep in incoming}) < len(incoming):
            return False, None  # moved or repeated objects
        gone_by_key = {ep.key: ep for ep in gone}
        out: list[Change] = []
        fresh_keys: set[str] = set()
        for ep in incoming:
            key = ep.key
            if key in fresh_keys:
                return True, None  # one new key twice
            fresh_keys.add(key)
            before = self._endpoints.get(key)
            if before is not None and gone_by_key.pop(key, None) is not before:
                return True, None  # the key of an endpoint still there, or twice: duplicate keys
            if not (before is not None and before == ep) and (
                    (before is not None and self._enforced_here(before)) or self._enforced_here(ep)):
                return True, None
            out.append((before, ep))  # equal copies too: sync holds the new object
        for before in gone_by_key.values():
            if self._enforced_here(before):
                return True, None
            out.append((before, None))
        return True, sorted(out, key=_change_key)

    def _diff(self, endpoints: Sequence[Endpoint], limit: int) -> list[Change] | None:
        """(old, new) per changed endpoint key; None when a full compile is the
        better answer (a local endpoint changed, duplicate keys, too many).

        Snapshots mostly carry the very endpoint objects of the last one, so
        identity (``id()``: this compiler holds every endpoint it knows, ids
        stay unique) settles most of them in C-level set operations; keying
        50,000 endpoints one by one cost ~18 ms.
        """
        held, held_ids = self._endpoints, self._held_ids
        by_id = {id(ep): ep for ep in endpoints}
        if len(by_id) < len(endpoints):
            return None  # the same object twice: a duplicate key
        ids = by_id.keys()
        fresh = ids - held_ids
        kept = len(ids) - len(fresh)  # held endpoints still there, as the same object
        out: list[Change] = []
        real = 0  # changes that are not equal copies
        fresh_keys: set[str] = set()
        # Sorted by key: changes are applied in a deterministic order.
        for ep in sorted((by_id[i] for i in fresh), key=lambda e: e.key):
            key = ep.key
            before = held.get(key)
            if key in fresh_keys or (before is not None and id(before) in ids):
                return None  # a duplicate key
            fresh_keys.add(key)
            if before is not None:
                kept += 1
                if before == ep:
                    out.append((before, ep))  # an equal copy: sync holds the new object
                    continue
            if (before is not None and self._enforced_here(before)) or self._enforced_here(ep) or real >= limit:
                return None
            out.append((before, ep))
            real += 1
        if kept < len(held):  # some held endpoints are gone
            for key, before in held.items():
                if id(before) not in ids and key not in fresh_keys:
                    if self._enforced_here(before) or real >= limit:
                        return None
                    out.append((before, None))
                    real += 1
        return out

    def update(self, old: Endpoint | None, new: Endpoint | None) -> RuleSet:
        """Apply one endpoint change and return the new RuleSet.

        ``old`` None: ``new`` was added. ``new`` None: ``old`` was removed.
        Both: ``old`` became ``new`` (labels, addresses, ports, node...). Only
        ``old.key`` is used: the endpoint this compiler holds under that key
        is what is taken out. Adding a key that is already held replaces that
        endpoint (compiled in full); removing an unknown key only recompiles.
        Endpoint objects are not modified (nor may the caller modify them
        afterwards: they are kept).
        """
        if old is None and new is None:
            self.last_path = "unchanged"
            return self.ruleset
        self._last_list = None  # sync() sets it again after its updates
        why = self._needs_full(old, new)
        if why is not None:
            self._store(old, new)
            self._prime(self.inventory.endpoints)
            self.last_path = f"full: {why}"
            return self.ruleset
        held = self._endpoints[old.key] if old is not None else None
        changed = self._patch(held, new)
        self._store(old, new)
        self.incremental_updates += 1
        self.last_path = "incremental" if changed else "unchanged"
        return self.ruleset

    # -- when to compile in full ------------------------------------------------

    def _needs_full(self, old: Endpoint | None, new: Endpoint | None) -> str | None:
        if self._duplicates is not None:
            return "the inventory has duplicate endpoint keys"
        if old is not None and old.key not in self._endpoints:
            return f"unknown endpoint {old.key}"
        if new is not None and new.key in self._endpoints and (old is None or old.key != new.key):
            return f"endpoint {new.key} already exists"
        held = self._endpoints[old.key] if old is not None else None
        if (held is not None and self._enforced_here(held)) or (new is not None and self._enforced_here(new)):
            return "endpoint on this node selected by a policy (its chains may change)"
        return None

    def _enforced_here(self, ep: Endpoint) -> bool:
        """Could ``ep`` have chains on this node? Only a local endpoint that a
        policy of its namespace selects has any (or is listed as unbound); any
        other endpoint, local ones included, matters only as a peer, like a
        remote one. (Conservative: policy types are not looked at.)"""
        return ep.node == self.node and any(
            p.pod_selector.matches(ep.labels) for p in self._policies_by_ns.get(ep.namespace, ()))

    def _store(self, old: Endpoint | None, new: Endpoint | None) -> None:
        if self._duplicates is not None:
            if old is not None:
                at = next((i for i, ep in enumerate(self._duplicates) if ep.key == old.key), None)
                if at is not None:
                    del self._duplicates[at]
            if new is not None:
                self._duplicates.append(new)
            return
        if old is not None:
            gone = self._endpoints.pop(old.key, None)
            if gone is not None:
                self._held_ids.discard(id(gone))
        if new is not None:
            self._endpoints[new.key] = new
            self._held_ids.add(id(new))

    # -- the full compile, recorded ----------------------------------------------

    def _prime(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        for ep in endpoints:
            self._endpoints.setdefault(ep.key, ep)
        # Keys must identify endpoints for updates by key; otherwise keep the
        # list and compile in full on every change.
        self._duplicates: list[Endpoint] | None = list(endpoints) if len(self._endpoints) < len(endpoints) else None
        self._held_ids = {id(ep) for ep in self._endpoints.values()}
        # The endpoint list as last seen whole (sync's fast diff compares
        # positions with it); None after a single update().
        self._last_list = list(endpoints) if self._duplicates is None else None
        self._policies_by_ns: dict[str, list[Policy]] = {}
        for policy in self.policies.policies:
            self._policies_by_ns.setdefault(policy.namespace, []).append(policy)
        inventory = Inventory(self.namespaces, tuple(endpoints))
        compiler = Compiler(self.policies, inventory)
        builder = _RecordingBuilder()
        ruleset = compiler.compile(self.node, builder)
        self.full_compiles += 1
        if self._duplicates is not None:
            # Keys do not identify endpoints, so every change compiles in full
            # (_needs_full) and the per-set bookkeeping, which is keyed by
            # endpoint, would be wrong as well as unused: keep only the result.
            self._state = _State(ruleset, {}, {}, {}, {}, {}, {}, {})
            return
        namespaces_of: dict[Peer, frozenset[str] | None] = {}

        def admitted(peer: Peer) -> frozenset[str] | None:
            if peer not in namespaces_of:
                if peer.namespace_selector is not None:
                    namespaces_of[peer] = compiler.resolver.namespaces(peer.namespace_selector)
                else:
                    namespaces_of[peer] = frozenset((peer.namespace,)) if peer.namespace else None
            return namespaces_of[peer]

        members: dict[frozenset[Peer], dict[int, dict[int, int]]] = {}  # shared by a set's two families
        address = {name: self._address_state(compiler, name, *builder.address_refs[name], builder, members)
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
            ports[name] = self._port_state(compiler, name, family, protocol, keys, builder, namespaces_of)
        users: dict[str, set[str]] = {}
        for (endpoint, _), record in builder.chains.items():
            for candidate in record.candidates:
                if candidate.needs is not None:
                    users.setdefault(candidate.needs, set()).add(endpoint)
        self._state = _State(ruleset, address, ports, peers_by_ns, sets_of_peer, namespaces_of,
                             builder.chains, users)

    @staticmethod
    def _address_state(compiler: Compiler, name: str, family: Family, version: int, peers: frozenset[Peer],
                       builder: SetBuilder, members: dict[frozenset[Peer], dict[int, dict[int, int]]],
                       ) -> _AddressState:
        blocks = addresses.merge(iv for p in peers if p.ip_block is not None and p.ip_block.cidr.version == version
                                 for iv in addresses.block_intervals(p.ip_block))
        if peers not in members:
            members[peers] = _member_counts(compiler, peers)
        counts = members[peers][version]
        union = compiler._peer_intervals(peers)[version]  # cached by the compile just made
        current = builder.address_sets.get(name)
        texts = list(current.elements) if current is not None else []
        if len(texts) != len(union):
            raise AssertionError(f"{name}: the recorded union does not match the compiled set")
        return _AddressState(name, family, version, peers, address_set_comment(peers), blocks, dict(counts),
                             [lo for lo, _ in union], [hi for _, hi in union], texts, current)

    def _port_state(self, compiler: Compiler, name: str, family: Family, protocol: L4Protocol, keys: PortKeys,
                    builder: SetBuilder, namespaces_of: dict[Peer, frozenset[str] | None]) -> _PortState:
        current = builder.port_sets.get(name)
        elements = list(current.elements) if current is not None else []
        state = _PortState(name, family, protocol, 4 if family == "ip" else 6, keys,
                           "; ".join(port_set_definitions(keys)), {}, {},
                           [pair_order(p) for p in elements], elements, current)
        targets: dict[str, Endpoint] = {}
        for peers, port_name in keys:
            # The compiler's own candidate search (fast at scale); each
            # candidate's pairs are then worked out as for a single endpoint.
            targets.update((ep.key, ep) for ep in compiler._named_port_targets(peers, port_name))
        for key, ep in targets.items():
            pairs = _port_pairs(ep, state, namespaces_of)
            if pairs:
                state.contrib[key] = pairs
                for pair in pairs:
                    state.counts[pair] = state.counts.get(pair, 0) + 1
        if set(state.counts) != set(elements):
            raise AssertionError(f"{name}: the recorded pairs do not match the compiled set")
        return state

    # -- the incremental path ----------------------------------------------------

    def _selected_by(self, ep: Endpoint | None) -> set[Peer]:
        """The address sets' selector peers that select ``ep``."""
        if ep is None:
            return set()
        return {p for p in self._state.peers_by_ns.get(ep.namespace, ())
                if p.pod_selector is None or p.pod_selector.matches(ep.labels)}

    def _patch(self, old: Endpoint | None, new: Endpoint | None) -> bool:
        """Patch the sets ``old`` leaves and ``new`` joins; True if the RuleSet changed."""
        st = self._state
        in_old, in_new = self._selected_by(old), self._selected_by(new)
        affected = sorted({name for p in in_old | in_new for name in st.sets_of_peer[p]})
        changed: list[str] = []
        for name in affected:
            state = st.address[name]
            removed = _values(old, state.version) if not in_old.isdisjoint(state.peers) else []
            added = _values(new, state.version) if not in_new.isdisjoint(state.peers) else []
            if state.update(removed, added):
                changed.append(name)
        for name, port in st.ports.items():
            pairs = _port_pairs(new, port, st.namespaces_of)
            if port.update(old.key if old is not None else None, new.key if new is not None else None, pairs):
                changed.append(name)
        if not changed:
            return False
        self._rebuild(changed)
        return True

    def _non_empty(self, name: str) -> bool:
        st = self._state
        state = st.address.get(name) or st.ports.get(name)
        return state is not None and state.current is not None

    def _rebuild(self, changed: list[str]) -> None:
        """The new RuleSet: changed sets are new objects, chains re-filtered
        only for endpoints using a set that became empty or non-empty."""
        st = self._state
        old = st.ruleset
        present = {s.name for s in old.address_sets} | {s.name for s in old.port_sets}
        flipped = [name for name in changed if (name in present) != self._non_empty(name)]
        endpoints = old.endpoints
        touched = {ep for name in flipped for ep in st.users.get(name, ())}
        if touched:
            endpoints = tuple(self._endpoint_rules(er) if er.endpoint in touched else er for er in endpoints)
        st.ruleset = RuleSet(
            node=old.node,
            address_sets=tuple(s.current for s in st.address.values() if s.current is not None),
            port_sets=tuple(s.current for s in st.ports.values() if s.current is not None),
            endpoints=endpoints,
            unbound=old.unbound,
        )

    def _endpoint_rules(self, er: EndpointRules) -> EndpointRules:
        def tiers(direction: Direction, current: tuple[Chain, ...]) -> tuple[Chain, ...]:
            record = self._state.chains.get((er.endpoint, direction))
            if not current or record is None:
                return current
            return (Chain(record.name, present_rules(record.candidates, self._non_empty), Verdict.DENY),)

        return replace(er, ingress=tiers(Direction.INGRESS, er.ingress), egress=tiers(Direction.EGRESS, er.egress))
