"""Checks that need an inventory: selectors and named ports against the pods.

Semantics follow the reference evaluator exactly (that is the point of these
checks over a generic YAML linter): ``{}`` selects everything, a peer without
namespaceSelector means the policy's own namespace, matchExpressions count,
named ports resolve on each destination pod, protocol defaults to TCP.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from callgate.analysis.lint.linter import Item, Linter
from callgate.policy.model import (
    ENFORCEMENT_KEY,
    ENFORCEMENT_MODES,
    Action,
    ClusterPolicy,
    Direction,
    Endpoint,
    Peer,
    Policy,
)
from callgate.policy.resolve import Resolver


def check(linter: Linter, items: list[Item], cluster: Sequence[ClusterPolicy] = ()) -> None:
    """Selector, named-port and default-deny checks of compiled ``items`` (``cluster``:
    the ClusterNetworkPolicies beside them, which may guard pods no policy isolates)."""
    inv = linter.inventory
    assert inv is not None
    resolver = linter.resolver
    assert resolver is not None
    for item in items:
        pol = item.policy
        assert pol is not None
        targets = resolver.targets(pol)
        if not targets:
            where = ("namespace " + pol.namespace + " has no pods in the inventory"
                     if not any(e.namespace == pol.namespace for e in inv.endpoints)
                     else "no pod of namespace " + pol.namespace + " matches " + pol.pod_selector.canonical())
            linter.report("CG101", f"the selector selects no pod: {where}", item, item.selector_path(),
                          hint=_elsewhere(resolver, pol))
        if item.kind == "NetworkPolicy":
            _peer_checks(linter, resolver, item)
            _named_ports(linter, resolver, item, targets)
    _default_deny(linter, resolver, items, cluster)
    _enforcement(linter)


def _guards_ingress(policy: ClusterPolicy) -> bool:
    """Can the cluster policy deny ingress (a Deny rule, or a Pass rule failing closed)?"""
    return any(r.action is Action.DENY or (r.action is Action.PASS and any(not p.resolvable for p in r.peers))
               for r in policy.ingress)


def _elsewhere(resolver: Resolver, pol: Policy) -> str:
    found = sorted({e.namespace for e in resolver.inventory.endpoints
                    if e.namespace != pol.namespace and pol.pod_selector.matches(e.labels)})
    if found:
        return f"matching pods exist in namespace(s) {', '.join(found)}: a policy only selects pods of its own namespace"
    return "check the label keys and values against the inventory's pods"


def _iter_peers(pol: Policy) -> Iterator[tuple[Direction, int, int, Peer]]:
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for i, rule in enumerate(pol.rules(direction)):
            for j, peer in enumerate(rule.peers):
                yield direction, i, j, peer


def _peer_checks(linter: Linter, resolver: Resolver, item: Item) -> None:
    pol = item.policy
    assert pol is not None
    inv = resolver.inventory
    for direction, i, j, peer in _iter_peers(pol):
        if peer.ip_block is not None:
            continue
        path = item.peer_path(direction, i, j)
        if peer.namespace_selector is not None and not resolver.namespaces(peer.namespace_selector):
            labels = "; ".join(f"{n}: {','.join(f'{k}={v}' for k, v in sorted(ns.labels.items()))}"
                               for n, ns in sorted(inv.namespaces.items())[:5])
            linter.report("CG103", f"namespaceSelector {peer.namespace_selector.canonical()} matches no namespace",
                          item, (*path, "namespaceSelector"),
                          hint=f"namespaces are selected by *their* labels ({labels}); "
                          "kubernetes.io/metadata.name=<name> names one reliably")
            continue
        if resolver.peer_endpoints(peer):
            continue
        sel = peer.pod_selector
        if peer.namespace_selector is None:
            others = sorted({e.namespace for e in inv.endpoints
                             if e.namespace != pol.namespace and (sel is None or sel.matches(e.labels))})
            hint = (f"a podSelector without namespaceSelector selects pods of {pol.namespace} only; matching "
                    f"pods exist in {', '.join(others)}: add a namespaceSelector" if others
                    else "check the label keys and values against the inventory's pods")
            msg = f"podSelector {sel.canonical() if sel else '{}'} selects no pod in the policy's namespace {pol.namespace}"
        else:
            spaces = ", ".join(sorted(resolver.namespaces(peer.namespace_selector)))
            msg = f"no pod matching {sel.canonical() if sel else '{}'} runs in the selected namespaces ({spaces})"
            hint = "check the podSelector against the pods of those namespaces"
        linter.report("CG102", msg, item, path, hint=hint)


def _named_ports(linter: Linter, resolver: Resolver, item: Item, targets: tuple[Endpoint, ...]) -> None:
    pol = item.policy
    assert pol is not None
    inv = resolver.inventory
    for direction in (Direction.INGRESS, Direction.EGRESS):
        for i, rule in enumerate(pol.rules(direction)):
            named = [(k, s) for k, s in enumerate(rule.ports) if isinstance(s.port, str)]
            if not named:
                continue
            if direction is Direction.INGRESS:
                dests: list[Endpoint] = list(targets)
                whose = "pods this policy selects"
            elif not rule.peers:
                dests, whose = list(inv.endpoints), "pods"
            else:
                seen: dict[str, Endpoint] = {}
                for peer in rule.peers:
                    if peer.ip_block is not None:
                        block = peer.ip_block
                        seen.update((e.key, e) for e in inv.endpoints if any(block.contains(ip) for ip in e.ips))
                    else:
                        seen.update((e.key, e) for e in resolver.peer_endpoints(peer))
                dests, whose = list(seen.values()), "destination pods"
            if not dests:
                continue  # reported as selects-nothing
            for k, spec in named:
                if any(e.resolve_port(spec.port, spec.protocol) for e in dests):  # type: ignore[arg-type]
                    continue
                other = sorted({p.protocol for e in dests for p in e.ports if p.name == spec.port})
                hint = (f"the {whose} declare {spec.port!r} as {'/'.join(other)}: set protocol: {other[0]}"
                        if other else f"declare a container port named {spec.port!r} on the {whose}, or fix the name")
                linter.report("CG104", f"named port {spec.port}/{spec.protocol} is declared by none of the "
                              f"{len(dests)} {whose}", item, (*item.rule_path(direction, i), "ports", k),
                              hint=hint)


def _default_deny(linter: Linter, resolver: Resolver, items: list[Item], cluster: Sequence[ClusterPolicy]) -> None:
    inv = resolver.inventory
    # Pods a cluster policy can deny ingress to do not "accept traffic from anywhere".
    guarded = {id(ep) for p in cluster if _guards_ingress(p) for ep in resolver.peer_endpoints(p.subject)}
    by_ns: dict[str, list[Policy]] = {}
    for item in items:
        assert item.policy is not None
        by_ns.setdefault(item.policy.namespace, []).append(item.policy)
    # One pass over the endpoints, not one per namespace (400 x 10,000 at bench size).
    eps_by_ns: dict[str, list[Endpoint]] = {}
    for e in inv.endpoints:
        eps_by_ns.setdefault(e.namespace, []).append(e)
    for ns in sorted(eps_by_ns):
        pols = [p for p in by_ns.get(ns, []) if Direction.INGRESS in p.policy_types]
        if any(p.pod_selector.is_empty for p in pols):
            continue
        # The pods each policy selects are resolved already (CG101), once per selector.
        isolated = {id(e) for p in pols for e in resolver.targets(p)}
        open_eps = [e.key for e in eps_by_ns[ns] if id(e) not in guarded and id(e) not in isolated]
        if not open_eps:
            continue
        file, line, column = linter.namespace_place(ns)
        shown = ", ".join(open_eps[:5]) + (f" and {len(open_eps) - 5} more" if len(open_eps) > 5 else "")
        linter.report("CG110", f"namespace {ns} has no default-deny policy; {len(open_eps)} pod(s) accept "
                      f"traffic from anywhere: {shown}", file=file, line=line, column=column,
                      obj=f"Namespace {ns}",
                      hint="add a NetworkPolicy with podSelector: {} and policyTypes: [Ingress] in " + ns)


def _enforcement(linter: Linter) -> None:
    """Namespaces in audit (said, info) and enforcement values that mean nothing (an error, enforced)."""
    inv = linter.inventory
    assert inv is not None
    for name in sorted(inv.namespaces):
        ns = inv.namespaces[name]
        if ns.enforcement is None or ns.enforcement == "enforce":
            continue
        file, line, column = linter.namespace_place(name)
        if ns.audit:
            linter.report("CG118", f"namespace {name} is in audit: its policies' denials are logged as "
                          "would-deny and let through", file=file, line=line, column=column, obj=f"Namespace {name}")
        else:
            linter.report("CG117", f"namespace {name}: {ENFORCEMENT_KEY} is {ns.enforcement!r}; expected "
                          f"{' or '.join(ENFORCEMENT_MODES)} (treated as enforce)", file=file, line=line,
                          column=column, obj=f"Namespace {name}", hint=f"{ENFORCEMENT_KEY}: audit")
