"""Selector resolution against an inventory, indexed and cached.

Resolving is the expensive step of compilation at scale (tens of thousands of
pods, thousands of distinct selectors), so endpoints are indexed by label and
each distinct selector is resolved once.
"""

from __future__ import annotations

from collections import defaultdict

from callgate.policy.model import Endpoint, Inventory, LabelSelector, Peer, Policy


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
        self._ns_cache: dict[LabelSelector, frozenset[str]] = {}
        self._peer_cache: dict[Peer, tuple[Endpoint, ...]] = {}
        self._target_cache: dict[tuple[str, LabelSelector], tuple[Endpoint, ...]] = {}

    def namespaces(self, selector: LabelSelector) -> frozenset[str]:
        found = self._ns_cache.get(selector)
        if found is None:
            found = frozenset(
                name for name, ns in self.inventory.namespaces.items() if selector.matches(ns.labels)
            )
            self._ns_cache[selector] = found
        return found

    def _select(self, namespaces: frozenset[str] | None, selector: LabelSelector | None) -> tuple[Endpoint, ...]:
        eps = self.inventory.endpoints
        if selector is not None and selector.match_labels:
            candidates: list[int] = min(
                (self._by_label.get(item, []) for item in selector.match_labels), key=len)
        elif namespaces is not None:
            candidates = sorted(i for ns in namespaces for i in self._by_ns.get(ns, ()))
        else:
            candidates = list(range(len(eps)))
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
