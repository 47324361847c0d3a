"""Selector resolution against an inventory, indexed and cached.

Resolving is the expensive step of compilation at scale (tens of thousands of
pods, thousands of distinct selectors), so endpoints are indexed by label and
each distinct selector is resolved once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TypeVar

from callgate.policy.model import Endpoint, Inventory, LabelSelector, Peer, Policy

T = TypeVar("T")


class Resolver:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._by_ns: dict[str, list[int]] = defaultdict(list)
        # (key, value) -> endpoint indices carrying that label; narrows candidates
        # for matchLabels selectors before the full check.
        self._by_label: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, ep in enumerate(inventory.endpoints):
            self._by_ns[ep.namespace].append(i)
            for item in ep.labels.items():
                self._by_label[item].append(i)
        self._ns_by_label: dict[tuple[str, str], list[str]] | None = None  # built on first use
        self._by_ns_label: dict[tuple[str, str, str], list[int]] | None = None  # built on first use
        self._ns_cache: dict[LabelSelector, frozenset[str]] = {}
        self._peer_cache: dict[Peer, tuple[Endpoint, ...]] = {}
        self._peer_ids: dict[Peer, frozenset[int]] = {}
        self._target_cache: dict[tuple[str, LabelSelector], tuple[Endpoint, ...]] = {}

    def namespaces(self, selector: LabelSelector) -> frozenset[str]:
        found = self._ns_cache.get(selector)
        if found is None:
            # Scanning every namespace per distinct selector is quadratic at
            # scale (25,000 namespaces x thousands of `kubernetes.io/metadata.name`
            # selectors was 70% of compile time): start from the smallest
            # posting list a selector requires, then check the whole selector.
            spaces = self.inventory.namespaces
            names: Iterable[str] = _narrowest(selector, self._namespace_index(), spaces)
            found = frozenset(name for name in names if selector.matches(spaces[name].labels))
            self._ns_cache[selector] = found
        return found

    def _namespace_index(self) -> dict[tuple[str, str], list[str]]:
        if self._ns_by_label is None:
            index: dict[tuple[str, str], list[str]] = defaultdict(list)
            for name, ns in self.inventory.namespaces.items():
                for item in ns.labels.items():
                    index[item].append(name)
            self._ns_by_label = index
        return self._ns_by_label

    def _namespace_label_index(self) -> dict[tuple[str, str, str], list[int]]:
        """(namespace, key, value) -> endpoint indices, in inventory order."""
        if self._by_ns_label is None:
            index: dict[tuple[str, str, str], list[int]] = defaultdict(list)
            for i, ep in enumerate(self.inventory.endpoints):
                for key, value in ep.labels.items():
                    index[(ep.namespace, key, value)].append(i)
            self._by_ns_label = index
        return self._by_ns_label

    def _select(self, namespaces: frozenset[str] | None, selector: LabelSelector | None) -> tuple[Endpoint, ...]:
        eps = self.inventory.endpoints
        # Candidates are always in inventory order (so the result is too); take
        # the shorter of "pods with the rarest required label" and "pods of the
        # selected namespaces". Label postings are only looked at when shorter
        # than the namespaces' pods: a union of long ``In`` postings built to be
        # thrown away was a fifth of lint's peer resolution.
        candidates: Sequence[int] = range(len(eps))
        in_namespaces = len(eps) if namespaces is None else sum(len(self._by_ns.get(ns, ())) for ns in namespaces)
        if (namespaces is not None and selector is not None and selector.match_labels
                and (len(namespaces) == 1 or len(namespaces) * len(selector.match_labels) < in_namespaces)):
            # One namespace (a policy's pods, a peer without namespaceSelector or naming
            # one), or a few (a namespaceSelector naming a team's): in each, its pods with
            # the rarest required label, often a handful where the namespace has hundreds
            # and the label tens of thousands (scanning a few namespaces' pods was 250
            # label matches per selector at bench size, a quarter of lint's resolving).
            index = self._namespace_label_index()
            postings = [min((index.get((ns, *item), []) for item in selector.match_labels), key=len)
                        for ns in namespaces]
            candidates = postings[0] if len(postings) == 1 else sorted(i for posting in postings for i in posting)
            if len(selector.match_labels) == 1 and not selector.match_expressions:
                return tuple(eps[i] for i in candidates)  # the postings are the answer: one label, per namespace
            return tuple(eps[i] for i in candidates if selector.matches(eps[i].labels))
        narrow = candidates if selector is None else _narrowest(selector, self._by_label, candidates, in_namespaces)
        if narrow is not candidates:
            # A union of posting lists comes back as a set: back to inventory order.
            candidates = narrow if isinstance(narrow, list) else sorted(narrow)
        elif namespaces is not None and in_namespaces < len(candidates):
            candidates = sorted(i for ns in namespaces for i in self._by_ns.get(ns, ()))
        out = []
        for i in candidates:
            ep = eps[i]
            if namespaces is not None and ep.namespace not in namespaces:
                continue
            if selector is None or selector.matches(ep.labels):
                out.append(ep)
        return tuple(out)

    def peer_endpoints(self, peer: Peer) -> tuple[Endpoint, ...]:
        """Endpoints a selector peer stands for (ipBlock peers have none)."""
        if peer.ip_block is not None:
            return ()
        found = self._peer_cache.get(peer)
        if found is None:
            if peer.namespace_selector is None:
                namespaces = frozenset((peer.namespace,)) if peer.namespace else frozenset()
            else:
                namespaces = self.namespaces(peer.namespace_selector)
            found = self._select(namespaces, peer.pod_selector)
            self._peer_cache[peer] = found
        return found

    def peer_endpoint_ids(self, peer: Peer) -> frozenset[int]:
        """``id()`` of each endpoint of :meth:`peer_endpoints`: a cheap membership
        test (endpoints hold a labels mapping, hence are unhashable)."""
        found = self._peer_ids.get(peer)
        if found is None:
            found = frozenset(id(ep) for ep in self.peer_endpoints(peer))
            self._peer_ids[peer] = found
        return found

    def targets(self, policy: Policy) -> tuple[Endpoint, ...]:
        """Endpoints a policy selects (in its own namespace)."""
        key = (policy.namespace, policy.pod_selector)
        found = self._target_cache.get(key)
        if found is None:
            found = self._select(frozenset((policy.namespace,)), policy.pod_selector)
            self._target_cache[key] = found
        return found

    def peer_matches(self, peer: Peer, target: Endpoint | None) -> bool:
        """Does a selector peer select this endpoint? (Used for single queries.)"""
        if peer.ip_block is not None or target is None:
            return False
        if peer.namespace_selector is None:
            if target.namespace != peer.namespace:
                return False
        else:
            ns = self.inventory.namespaces.get(target.namespace)
            if ns is None or not peer.namespace_selector.matches(ns.labels):
                return False
        return peer.pod_selector is None or peer.pod_selector.matches(target.labels)


def _narrowest(selector: LabelSelector, index: Mapping[tuple[str, str], list[T]],
               everything: Collection[T], bound: int | None = None) -> Collection[T]:
    """The fewest candidates that can match ``selector``, from a label index.

    Every matchLabels item and every ``In`` requirement is necessary, so any of
    their posting lists (for ``In``: the union over its values) is a superset of
    the answer; take the shortest. A list is returned as is (it keeps index
    order); a union comes back as a set. Without either kind of requirement, or
    when none is shorter than ``bound`` (the size of a cheaper candidate set the
    caller has), ``everything``.
    """
    best: Collection[T] = everything
    shortest = len(everything) if bound is None else min(bound, len(everything))
    for item in selector.match_labels:
        posting = index.get(item, [])
        if len(posting) < shortest:
            best, shortest = posting, len(posting)
    for req in selector.match_expressions:
        if req.operator == "In":
            size = sum(len(index.get((req.key, v), ())) for v in req.values)
            if size < shortest:
                best, shortest = {x for v in req.values for x in index.get((req.key, v), ())}, size
    return best
