"""``callgate convert``: native App YAML <-> Kubernetes NetworkPolicy YAML.

App -> NetworkPolicy is exact: Apps already compile to :class:`Policy`
objects, and each becomes one NetworkPolicy (an App's peers name their
namespace with ``kubernetes.io/metadata.name``).

NetworkPolicy -> App is best effort. The App model is narrower: an App is
isolated in both directions, its callers name other Apps (or CIDRs) on ports
it serves, and a caller relationship opens *both* the callee's ingress and the
caller's egress. A policy is converted when the Apps built from it compile
back to the same rules (compared as sets of (peer, port) atoms, which is
exact); otherwise it stays a NetworkPolicy in the output (mixing both kinds is
valid input) and the reason is reported. The tests check on random policy sets
that the result has the same connectivity matrix as the input.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from callgate.policy.documents import Document
from callgate.policy.model import (
    NAMESPACE_NAME_LABEL,
    ClusterPeer,
    ClusterPolicy,
    Direction,
    IPBlock,
    LabelSelector,
    Peer,
    Policy,
    PolicyRule,
    PortSpec,
    Tier,
)
from callgate.policy.native import apps_to_policies, parse_app

CONVERTED_ANNOTATION = "callgate.io/converted-from"
_ALL_V4 = IPBlock(ipaddress.ip_network("0.0.0.0/0"))
_ALL_V6 = IPBlock(ipaddress.ip_network("::/0"))


# -- model -> YAML dicts -----------------------------------------------------------


def selector_dict(sel: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": sorted(r.values)} if r.values else {})}
            for r in sel.match_expressions]
    return out


def _block_dict(block: IPBlock) -> dict[str, Any]:
    out: dict[str, Any] = {"cidr": str(block.cidr)}
    if block.excepts:
        out["except"] = [str(e) for e in block.excepts]
    return out


def peer_dict(peer: Peer) -> dict[str, Any]:
    if peer.ip_block is not None:
        return {"ipBlock": _block_dict(peer.ip_block)}
    out: dict[str, Any] = {}
    if peer.pod_selector is not None:
        out["podSelector"] = selector_dict(peer.pod_selector)
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = selector_dict(peer.namespace_selector)
    if not out:  # no selector at all: all pods of the policy's namespace
        out["podSelector"] = {}
    return out


def port_dict(spec: PortSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": spec.protocol}
    if spec.port is not None:
        out["port"] = spec.port
    if spec.end_port is not None:
        out["endPort"] = spec.end_port
    return out


def network_policy_dict(pol: Policy) -> dict[str, Any]:
    """A NetworkPolicy document equivalent to ``pol`` (any kind of Policy)."""
    def rules(direction: Direction) -> list[dict[str, Any]]:
        key = "from" if direction is Direction.INGRESS else "to"
        out = []
        for rule in pol.rules(direction):
            entry: dict[str, Any] = {}
            if rule.peers:
                entry[key] = [peer_dict(p) for p in rule.peers]
            if rule.ports:
                entry["ports"] = [port_dict(s) for s in rule.ports]
            out.append(entry)
        return out

    meta: dict[str, Any] = {"name": pol.name, "namespace": pol.namespace}
    if pol.kind != "NetworkPolicy":
        meta["annotations"] = {CONVERTED_ANNOTATION: f"{pol.kind} {pol.key}"}
    spec: dict[str, Any] = {"podSelector": selector_dict(pol.pod_selector),
                            "policyTypes": [t.value for t in pol.policy_types]}
    for direction in (Direction.INGRESS, Direction.EGRESS):
        if direction in pol.policy_types and pol.rules(direction):
            spec[direction.value.lower()] = rules(direction)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def cluster_policy_dict(pol: ClusterPolicy) -> dict[str, Any]:
    """A v1alpha2 ClusterNetworkPolicy document equivalent to ``pol`` (convert passes
    cluster policies through: they are neither NetworkPolicy nor App)."""
    def peer(p: ClusterPeer) -> dict[str, Any]:
        if p.selector is not None:
            ns = selector_dict(p.selector.namespace_selector or LabelSelector())
            if p.selector.pod_selector is None:
                return {"namespaces": ns}
            return {"pods": {"namespaceSelector": ns, "podSelector": selector_dict(p.selector.pod_selector)}}
        if p.networks:
            return {"networks": [str(b.cidr) for b in p.networks]}
        if p.nodes is not None:
            return {"nodes": selector_dict(p.nodes)}
        return {"domainNames": list(p.domain_names)}

    def protocols(ports: tuple[PortSpec, ...]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for spec in ports:
            if isinstance(spec.port, str):
                entry: dict[str, Any] = {"destinationNamedPort": spec.port}
            else:
                port = ({"range": {"start": spec.port, "end": spec.end_port}} if spec.end_port is not None
                        else {"number": spec.port})
                entry = {spec.protocol.lower(): {"destinationPort": port}}
            if entry not in out:  # a named port stands for one spec per protocol
                out.append(entry)
        return out

    def rules(direction: Direction) -> list[dict[str, Any]]:
        key = "from" if direction is Direction.INGRESS else "to"
        out = []
        for rule in pol.rules(direction):
            entry: dict[str, Any] = {"name": rule.name} if rule.name else {}
            entry.update({"action": rule.action.value, key: [peer(p) for p in rule.peers]})
            if rule.ports:
                entry["protocols"] = protocols(rule.ports)
            out.append(entry)
        return out

    subject = peer(ClusterPeer(selector=pol.subject))
    spec: dict[str, Any] = {"tier": pol.tier.value, "priority": pol.priority, "subject": subject}
    for direction in (Direction.INGRESS, Direction.EGRESS):
        if pol.rules(direction):
            spec[direction.value.lower()] = rules(direction)
    meta: dict[str, Any] = {"name": pol.name}
    if pol.kind != "ClusterNetworkPolicy":
        meta["annotations"] = {CONVERTED_ANNOTATION: pol.display}
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": meta,
            "spec": spec}


def dump_documents(docs: list[dict[str, Any]], header: str = "") -> str:
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120) if docs else ""
    return header + body


# -- NetworkPolicy -> App ------------------------------------------------------------

Atom = tuple[Peer, PortSpec | None]  # one peer, one port (None: all ports)


def _norm_peer(peer: Peer) -> Peer:
    """Peers that mean the same written the same way: a podSelector-only peer is the
    App form (namespaceSelector by metadata.name); a missing podSelector is {}."""
    if peer.ip_block is not None:
        return peer
    ns_sel = peer.namespace_selector
    if ns_sel is None:
        ns_sel = LabelSelector(match_labels=((NAMESPACE_NAME_LABEL, peer.namespace or ""),))
    return Peer(pod_selector=peer.pod_selector or LabelSelector(), namespace_selector=ns_sel)


def atoms(pol: Policy, direction: Direction) -> frozenset[Atom]:
    """A direction's rules as a set of (peer, port) atoms. A direction that is not
    isolated is 'everything' (every v4 and v6 address, all ports); a rule without
    peers is every address. Exact: a rule allows iff some peer and some port match."""
    rules = pol.rules(direction) if direction in pol.policy_types else (PolicyRule(),)
    out: set[Atom] = set()
    for rule in rules:
        peers = [_norm_peer(p) for p in rule.peers] or [Peer(ip_block=_ALL_V4), Peer(ip_block=_ALL_V6)]
        ports: list[PortSpec | None] = list(rule.ports) or [None]
        out.update((p, s) for p in peers for s in ports)
    everything = {(Peer(ip_block=_ALL_V4), None), (Peer(ip_block=_ALL_V6), None)}
    if everything <= out:
        return frozenset(everything)  # every address on every port: the rest adds nothing
    return frozenset(out)


def _port_name(spec: PortSpec) -> str:
    return f"p{spec.port}-{spec.protocol.lower()}"


@dataclass
class Conversion:
    apps: list[dict[str, Any]] = field(default_factory=list)
    kept: list[Policy] = field(default_factory=list)  # left as NetworkPolicy
    reasons: dict[str, str] = field(default_factory=dict)  # policy key -> why it was kept


def _app_dict(pol: Policy, apps: dict[tuple[str, LabelSelector], Policy]) -> dict[str, Any] | str:
    """The App for one policy, or the reason it cannot be one."""
    ingress = atoms(pol, Direction.INGRESS)
    served: dict[tuple[int, str], PortSpec] = {}
    for _, spec in ingress:
        if spec is None:
            continue
        if not isinstance(spec.port, int) or spec.end_port is not None:
            return (f"ingress port {spec.canonical()} is a named port or a range; an App serves numbered "
                    "ports only")
        served[(spec.port, spec.protocol)] = spec
    if served and any(spec is None for _, spec in ingress):
        return "ingress allows all ports from some peers but only some ports from others; an App caller " \
               "either lists served ports or takes all of them"
    callers: dict[Peer, list[str] | None] = {}
    for peer, spec in sorted(ingress, key=lambda a: (a[0].canonical(), a[1].canonical() if a[1] else "")):
        if spec is None:
            callers[peer] = None
        else:
            names = callers.setdefault(peer, [])
            if names is not None:
                names.append(_port_name(spec))
    caller_list: list[dict[str, Any]] = []
    for peer, names in callers.items():
        entry: dict[str, Any]
        if peer.ip_block is not None:
            entry = {"cidr": str(peer.ip_block.cidr)}
            if peer.ip_block.excepts:
                entry["except"] = [str(e) for e in peer.ip_block.excepts]
        else:
            assert peer.namespace_selector is not None
            labels = dict(peer.namespace_selector.match_labels)
            if peer.namespace_selector.match_expressions or list(labels) != [NAMESPACE_NAME_LABEL]:
                return (f"ingress peer {peer.canonical()} selects namespaces by labels; an App caller names "
                        "one namespace")
            ns = labels[NAMESPACE_NAME_LABEL]
            other = apps.get((ns, peer.pod_selector or LabelSelector()))
            if other is None:
                return (f"ingress peer {peer.canonical()} is not the selector of any convertible policy in "
                        f"namespace {ns}; App callers must be Apps")
            entry = {"app": other.name, "namespace": ns}
        if names is not None:
            entry["ports"] = names
        caller_list.append(entry)
    egress: dict[Peer, list[dict[str, Any]] | None] = {}
    for peer, spec in atoms(pol, Direction.EGRESS):
        if peer.ip_block is None:
            continue  # to pods: must come from the callee's caller entry (checked by recompiling)
        if spec is None:
            egress[peer] = None
        elif egress.setdefault(peer, []) is not None:
            egress[peer].append(port_dict(spec))  # type: ignore[union-attr]
    egress_list = []
    for peer, ports in sorted(egress.items(), key=lambda kv: kv[0].canonical()):
        assert peer.ip_block is not None
        dest: dict[str, Any] = _block_dict(peer.ip_block)
        if ports is not None:
            dest["ports"] = sorted(ports, key=lambda p: (p["protocol"], str(p.get("port", "")), p.get("endPort", 0)))
        egress_list.append(dest)
    spec_out: dict[str, Any] = {"selector": selector_dict(pol.pod_selector)}
    if served:
        spec_out["ports"] = [{"name": _port_name(s), "port": s.port, "protocol": s.protocol}
                             for _, s in sorted(served.items())]
    if caller_list:
        spec_out["callers"] = caller_list
    if egress_list:
        spec_out["egress"] = egress_list
    return {"apiVersion": "callgate/v1", "kind": "App",
            "metadata": {"name": pol.name, "namespace": pol.namespace,
                         "annotations": {CONVERTED_ANNOTATION: f"NetworkPolicy {pol.key}"}},
            "spec": spec_out}


def to_apps(policies: Sequence[Policy], cluster: Sequence[ClusterPolicy] = ()) -> Conversion:
    """Convert what can be converted exactly; the rest stays NetworkPolicy, with reasons.

    ``cluster``: the ClusterNetworkPolicies beside them. An App isolates both
    directions, and isolating keeps the Baseline tier away from a pod: a policy
    that does not isolate a direction for which a Baseline policy has rules stays
    NetworkPolicy.

    Iterates to a fixed point: a policy that cannot convert may take others down
    with it (their callers or their egress referred to it)."""
    baseline = {d: next((c for c in cluster if c.tier is Tier.BASELINE and c.rules(d)), None) for d in Direction}
    result = Conversion()
    candidates = [p for p in policies if p.kind == "NetworkPolicy"]
    result.kept = [p for p in policies if p.kind != "NetworkPolicy"]  # compiled Apps pass through as policies
    for p in result.kept:
        result.reasons[p.key] = f"{p.kind} objects are not converted"
    while True:
        by_selector: dict[tuple[str, LabelSelector], Policy] = {}
        clash: set[str] = set()
        for p in candidates:
            key = (p.namespace, p.pod_selector)
            if key in by_selector:
                clash.add(p.key)
            else:
                by_selector[key] = p
        failed: dict[str, str] = {
            k: "another policy in the namespace has the same podSelector (Apps need distinct selectors to be "
               "named as callers)" for k in clash}
        # An App isolates both directions. A policy without Egress (Ingress) becomes an
        # App that allows all egress (ingress) — the same as not isolating, but only
        # while no other policy isolates those pods in that direction (then the App's
        # allow-all would open what the other policy closes).
        for p in candidates:
            for d in (Direction.INGRESS, Direction.EGRESS):
                others = [o for o in policies if o is not p and o.namespace == p.namespace and d in o.policy_types]
                if d not in p.policy_types and others and p.key not in failed:
                    failed[p.key] = (f"it does not isolate {d.value.lower()}, but {others[0].key} does in the same "
                                     f"namespace; as an App it would allow all {d.value.lower()} to pods both select")
                found = baseline[d]
                if d not in p.policy_types and found is not None and p.key not in failed:
                    failed[p.key] = (f"it does not isolate {d.value.lower()}, and {found.display} has "
                                     f"{d.value.lower()} rules in the Baseline tier; as an App it would isolate "
                                     f"{d.value.lower()}, which keeps the Baseline tier away from its pods")
        docs: dict[str, dict[str, Any]] = {}
        for p in candidates:
            if p.key in failed:
                continue
            made = _app_dict(p, by_selector)
            if isinstance(made, str):
                failed[p.key] = made
            else:
                docs[p.key] = made
        if not failed:
            compiled = {p.key: p for p in apps_to_policies(
                [parse_app(Document("<converted>", i, d)) for i, d in enumerate(docs.values())])}
            for p in candidates:
                back = compiled[p.key]
                for direction in (Direction.INGRESS, Direction.EGRESS):
                    want, got = atoms(p, direction), atoms(back, direction)
                    if want != got:
                        extra = sorted(_atom_text(a) for a in got - want)
                        missing = sorted(_atom_text(a) for a in want - got)
                        failed[p.key] = (
                            f"as an App its {direction.value.lower()} would differ"
                            + (f": extra {', '.join(extra[:3])}" if extra else "")
                            + (f": missing {', '.join(missing[:3])}" if missing else "")
                            + " (an App's egress to pods comes only from the callers of the destination App)")
                        break
        if not failed:
            result.apps = list(docs.values())
            return result
        for pkey, why in failed.items():
            result.reasons[pkey] = why
        result.kept.extend(p for p in candidates if p.key in failed)
        candidates = [p for p in candidates if p.key not in failed]


def _atom_text(atom: Atom) -> str:
    peer, spec = atom
    return f"{peer.canonical()} on {spec.canonical() if spec else 'all ports'}"
