"""The incremental compiler: decides per change between patching sets and a full compile.

See :mod:`callgate.compiler.incremental` for the design.
"""

from __future__ import annotations

from collections.abc import Sequence

from callgate.compiler.compile import Compiler
from callgate.compiler.incremental.local import StateBuilder
from callgate.compiler.incremental.priming import State, admission, prime
from callgate.compiler.incremental.setstate import address_values, port_pairs
from callgate.compiler.incremental.snapshot import Held, diff_by_identity, diff_by_position
from callgate.compiler.ir import RuleSet
from callgate.policy.model import Endpoint, Inventory, Peer, Policy, PolicySet

PolicyKey = tuple[str, str, str]  # namespace, name, kind
# The NetworkPolicies and Apps that changed, (old, new) each, and the new ones by key.
PolicyDiff = tuple[list[tuple[Policy | None, Policy | None]], dict[PolicyKey, Policy] | None]


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
        self.node_info = inventory.node_info
        self.full_compiles = 0
        self.incremental_updates = 0
        self.last_path = "full: first compile"
        self._last_list: list[Endpoint] | None = None
        # Policies by namespace, name and kind (None when a key is there twice:
        # then only an equal policy set is sure).
        self._policy_keys: dict[PolicyKey, Policy] | None = None
        # Compiles one local endpoint's chains: it reads the policies (a
        # policy change replaces it), the namespaces and the nodes (a rebase).
        self._endpoint_compiler: Compiler
        self._prime(inventory.endpoints)

    @property
    def ruleset(self) -> RuleSet:
        return self._state.ruleset

    @property
    def inventory(self) -> Inventory:
        """The current inventory (endpoints in insertion order)."""
        if self._duplicates is not None:
            return Inventory(self.namespaces, tuple(self._duplicates), self.node_info)
        return Inventory(self.namespaces, tuple(self._endpoints.values()), self.node_info)

    def rebase(self, policies: PolicySet, inventory: Inventory) -> RuleSet:
        """Anything but an endpoint change (policies, namespaces, nodes): compile in full."""
        self.policies = policies
        self.namespaces = inventory.namespaces
        self.node_info = inventory.node_info
        self._prime(inventory.endpoints)
        self.last_path = "full: rebase"
        return self.ruleset

    def sync(self, policies: PolicySet, inventory: Inventory, max_changes: int = 256,
             max_local_changes: int = 32, max_policy_changes: int = 16) -> RuleSet:
        """The RuleSet for a whole new snapshot (the agent's path).

        Same namespaces and nodes (equal, not necessarily the same objects):
        first the NetworkPolicies and Apps that changed, if at most
        ``max_policy_changes`` did (the local endpoints they select, before or
        after, have their chains compiled again), then one :meth:`update` per
        changed endpoint (diffed by identity, key and ``==``). Anything else
        (cluster policies, namespaces or nodes changed), more than
        ``max_changes`` endpoint changes (a resync after a long gap), or more
        than ``max_local_changes`` of endpoints with chains here (each compiles
        its chains again: a node's pods restarting together): :meth:`rebase`.
        """
        changes = policy_diff = None
        if (self._duplicates is None and inventory.namespaces == self.namespaces
                and inventory.node_info == self.node_info):
            policy_diff = self._policy_changes(policies, max_policy_changes)
        if policy_diff is not None:
            held = Held(self._endpoints, self._held_ids)
            sure, changes = diff_by_position(held, self._last_list, inventory.endpoints, max_changes)
            if not sure:
                changes = diff_by_identity(held, inventory.endpoints, max_changes)
        if changes is not None and sum(
                1 for old, new in changes if not (old is not None and old == new)
                and (self._has_chains(old) or self._has_chains(new))) > max_local_changes:
            changes = None
        if changes is None or policy_diff is None:
            return self.rebase(policies, inventory)
        paths = set()
        policy_changes, self._policy_keys = policy_diff
        if policy_changes:
            self._change_policies(policies, policy_changes)
            paths.add(self.last_path)
        # Equal (or just taken): hold the newest objects.
        self.policies, self.namespaces, self.node_info = policies, inventory.namespaces, inventory.node_info
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
        st = self._state
        # As a peer: the sets it leaves and joins (local or remote alike).
        changed, flipped = self._patch_sets(held, new)
        moved = st.update_local(held, new, self.node)
        self._store(old, new)
        # With chains here (before or after): its own chains, compiled again.
        recompiled = self._compile_chains(held, new) if self._has_chains(held) or self._has_chains(new) else False
        # A set no chain uses any more is patched all the same, but is not in the RuleSet.
        seen = recompiled or moved or any(st.users.get(name) for name in changed)
        if seen:
            st.rebuild(flipped)
        self.incremental_updates += 1
        self.last_path = "incremental" if seen else "unchanged"
        return self.ruleset

    # -- policy changes ----------------------------------------------------------

    def _policy_changes(self, policies: PolicySet, limit: int) -> PolicyDiff | None:
        """(old, new) per NetworkPolicy or App that differs, by namespace, name
        and kind, with the new policies keyed so (to hold from then on); None
        when that is not the whole change or not worth it (cluster policies
        differ, a key twice, more than ``limit``)."""
        if policies is self.policies:
            return [], self._policy_keys
        if policies.cluster != self.policies.cluster:
            return None
        new = _by_key(policies.policies)
        old = self._policy_keys
        if new is None or old is None:  # a key twice: only "equal" is sure
            return ([], new) if policies == self.policies else None
        keys = [key for key, p in new.items() if (was := old.get(key)) is not p and was != p]
        keys.extend(key for key in old.keys() - new.keys())
        if len(keys) > limit:
            return None
        return [(old.get(key), new.get(key)) for key in sorted(keys)], new

    def _change_policies(self, policies: PolicySet, changed: list[tuple[Policy | None, Policy | None]]) -> None:
        """Take the new policies; compile again the chains of the local
        endpoints that a changed policy selects before or after. (Other
        chains do not depend on it; sets depend on endpoints only.)"""
        self.policies = policies
        touched = [p for pair in changed for p in pair if p is not None]
        st = self._state
        st.memo.clear()  # keyed by the ids of the policies it was computed from
        self._endpoint_compiler = self._endpoint_compiler.with_policies(policies, {p.namespace for p in touched})
        affected = sorted(ep.key for ep in self._endpoints.values() if ep.node == self.node and any(
            p.namespace == ep.namespace and p.pod_selector.matches(ep.labels) for p in touched))
        recompiled = False
        for key in affected:
            recompiled |= self._compile_chains(self._endpoints[key], None)
        if recompiled:
            st.rebuild([])
        self.last_path = "incremental" if recompiled else "unchanged"

    # -- when to compile in full ------------------------------------------------

    def _needs_full(self, old: Endpoint | None, new: Endpoint | None) -> str | None:
        if self._duplicates is not None:
            return "the inventory has duplicate endpoint keys"
        if old is not None and old.key not in self._endpoints:
            return f"unknown endpoint {old.key}"
        if new is not None and new.key in self._endpoints and (old is None or old.key != new.key):
            return f"endpoint {new.key} already exists"
        return None

    def _has_chains(self, ep: Endpoint | None) -> bool:
        """Could ``ep`` have chains on this node? Only a local endpoint that a
        policy of its namespace selects, or a cluster policy's subject holds, has
        any (or is listed as unbound); any other endpoint, local ones included,
        matters only as a peer, like a remote one. (Conservative: policy types
        and rule directions are not looked at.)"""
        if ep is None or ep.node != self.node:
            return False
        policies, subjects = self._endpoint_compiler.selection(ep)
        return bool(policies) or any(subjects.values())

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
        self._policy_keys = _by_key(self.policies.policies)
        # With duplicate keys every change compiles in full (_needs_full):
        # only the result is kept.
        self._state: State = prime(self.policies, Inventory(self.namespaces, tuple(endpoints), self.node_info),
                                   self.node, track=self._duplicates is None)
        self._endpoint_compiler = Compiler(self.policies, Inventory(self.namespaces, (), self.node_info))
        self.full_compiles += 1

    # -- the incremental path ----------------------------------------------------

    def _selected_by(self, ep: Endpoint | None) -> set[Peer]:
        """The address sets' selector peers that select ``ep``."""
        if ep is None:
            return set()
        return {p for p in self._state.peers_by_ns.get(ep.namespace, ())
                if p.pod_selector is None or p.pod_selector.matches(ep.labels)}

    def _patch_sets(self, old: Endpoint | None, new: Endpoint | None) -> tuple[list[str], list[str]]:
        """Patch the sets ``old`` leaves and ``new`` joins: the sets that
        changed, and those of them that became empty or non-empty."""
        st = self._state
        in_old, in_new = self._selected_by(old), self._selected_by(new)
        affected = sorted({name for p in in_old | in_new for name in st.sets_of_peer[p]})
        changed: list[str] = []
        flipped: list[str] = []
        for name in affected:
            state = st.address[name]
            removed = address_values(old, state.version) if not in_old.isdisjoint(state.peers) else []
            added = address_values(new, state.version) if not in_new.isdisjoint(state.peers) else []
            was = state.current is not None
            if state.update(removed, added):
                changed.append(name)
                if was != (state.current is not None):
                    flipped.append(name)
        for name, port in st.ports.items():
            pairs = port_pairs(new, port, st.namespaces_of)
            was = port.current is not None
            if port.update(old.key if old is not None else None, new.key if new is not None else None, pairs):
                changed.append(name)
                if was != (port.current is not None):
                    flipped.append(name)
        return changed, flipped

    def _compile_chains(self, old: Endpoint | None, new: Endpoint | None) -> bool:
        """Compile the chains of the endpoint(s) under ``old``'s and ``new``'s
        keys again (after :meth:`_store`); True if the RuleSet's endpoints changed."""
        st = self._state
        builder = StateBuilder(st, self._endpoints.values(), admission(self._endpoint_compiler, st.namespaces_of))
        changed = False
        for key in sorted({ep.key for ep in (old, new) if ep is not None}):
            st.drop_chains(key)
            ep = self._endpoints.get(key)
            compiled = (self._endpoint_compiler.compile_endpoint(ep, builder)
                        if ep is not None and ep.node == self.node else None)
            changed |= st.set_endpoint(key, compiled)
        return changed


def _by_key(policies: Sequence[Policy]) -> dict[PolicyKey, Policy] | None:
    """Policies by namespace, name and kind; None when a key is there twice."""
    out = {(p.namespace, p.name, p.kind): p for p in policies}
    return out if len(out) == len(policies) else None
