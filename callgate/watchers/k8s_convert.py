"""Turn raw API objects (dicts, hostile until proven otherwise) into the policy model.

The rules are the file loaders' rules, reused rather than copied: a Pod,
Namespace or Node goes through ``InventoryBuilder``, a NetworkPolicy through
``parse_network_policy`` and a ClusterNetworkPolicy (or a v1alpha1
AdminNetworkPolicy / BaselineAdminNetworkPolicy) through its parser, on a
:class:`Document` built from the dict. So a pod from the API and the same pod
from ``kubectl get -o yaml`` become the same endpoint, and a policy callgate
would reject in a file is rejected here too, with one exception the API
defines: a cluster policy peer whose only field callgate does not know (the
API server validated it against a newer CRD) fails closed instead.

Each object is converted once, when it arrives, into a :class:`Converted`
entry that the cache keeps; a snapshot is assembled from entries, never from
raw objects. An object that cannot be converted becomes an entry with
problems and no value: it is skipped and reported, and the rest still applies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from callgate.errors import InputError, Problem
from callgate.policy import adminnetworkpolicy as anp
from callgate.policy import clusternetworkpolicy as cnp
from callgate.policy.documents import Document
from callgate.policy.inventory import InventoryBuilder
from callgate.policy.model import ClusterPolicy, Endpoint, Inventory, Namespace, Node, Policy, PolicySet
from callgate.policy.networkpolicy import object_name, parse_network_policy
from callgate.watchers.base import clip

PODS, NAMESPACES, POLICIES, NODES = "pods", "namespaces", "networkpolicies", "nodes"
CLUSTER_POLICIES = "clusternetworkpolicies"
ADMIN_POLICIES, BASELINE_POLICIES = "adminnetworkpolicies", "baselineadminnetworkpolicies"
# The cluster-wide kinds, served only where their CRDs are installed (v1alpha1 ones
# on clusters that have not moved to v0.2.0 yet): a cluster without them works as
# one without such policies.
OPTIONAL_KINDS = (CLUSTER_POLICIES, ADMIN_POLICIES, BASELINE_POLICIES)
KINDS = (PODS, NAMESPACES, POLICIES, NODES, *OPTIONAL_KINDS)
KIND_NAMES = {PODS: "Pod", NAMESPACES: "Namespace", POLICIES: "NetworkPolicy", NODES: "Node",
              CLUSTER_POLICIES: cnp.KIND, ADMIN_POLICIES: anp.ADMIN_KIND, BASELINE_POLICIES: anp.BASELINE_KIND}
API_VERSIONS = {PODS: "v1", NAMESPACES: "v1", POLICIES: "networking.k8s.io/v1", NODES: "v1",
                CLUSTER_POLICIES: cnp.API_VERSION, ADMIN_POLICIES: anp.API_VERSION,
                BASELINE_POLICIES: anp.API_VERSION}
# Kinds whose objects lint reads as the API served them.
LINTED_KINDS = (POLICIES, *OPTIONAL_KINDS)
CLUSTER_SCOPED = (NAMESPACES, NODES, *OPTIONAL_KINDS)

ORIGIN = "kubernetes"
# Documents need a file name, and Document.problem() tries to read that file to find
# line numbers. A path below /dev/null can never be read, so no object from the API
# can make us open a file on disk; problems are relabelled ORIGIN afterwards.
_UNREADABLE = "/dev/null/kubernetes-api"


@dataclass(frozen=True)
class ObjectRef:
    """Enough to point at an API object (Events need uid for ``kubectl describe``)."""

    kind: str
    namespace: str | None
    name: str
    uid: str | None = None
    resource_version: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Converted:
    """One API object as the cache keeps it."""

    ref: ObjectRef
    value: Endpoint | Namespace | Node | Policy | ClusterPolicy | None  # None: skipped (invalid, finished, ...)
    problems: tuple[Problem, ...]
    digest: str  # changes when what callgate uses from the object changes
    raw: Any = field(default=None, compare=False)  # kept for policies only (lint reads raw fields)
    # A Pod with a deletionTimestamp: its sandbox may be gone and its address
    # already handed to a new pod (host-local frees it at CNI DEL).
    terminating: bool = False

    @property
    def display(self) -> str:
        return f"{self.ref.kind} {self.ref.key}"


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _relabel(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    return tuple(dataclasses.replace(p, file=ORIGIN, line=None, column=None, message=clip(p.message),
                                     object=clip(p.object) if p.object else None)
                 for p in problems)


def object_ref(kind: str, obj: Any) -> ObjectRef | None:
    """The reference of a raw object, or None when it has no usable name."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        return None
    ns = meta.get("namespace") if kind not in CLUSTER_SCOPED else None
    if ns is not None and not isinstance(ns, str):
        return None

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    return ObjectRef(KIND_NAMES[kind], ns, meta["name"], text(meta.get("uid")), text(meta.get("resourceVersion")))


def _typed(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    # List items come without kind/apiVersion; the parsers want them.
    return {**obj, "kind": KIND_NAMES[kind], "apiVersion": API_VERSIONS[kind]}


def _malformed(ref: ObjectRef, obj: dict[str, Any], exc: Exception) -> Converted:
    problem = Problem(f"malformed object: {type(exc).__name__}: {exc}", object=object_name(obj, ref.kind))
    return Converted(ref, None, _relabel([problem]), _digest("malformed", str(exc)))


def _build(ref: ObjectRef, obj: dict[str, Any], kind: str,
           add: Callable[[InventoryBuilder, Document], None]) -> InventoryBuilder | Converted:
    """One object through the inventory parser: the builder holding it, or the
    Converted that reports why it could not be read."""
    builder = InventoryBuilder()
    try:
        add(builder, Document(_UNREADABLE, 0, _typed(kind, obj)))
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        return _malformed(ref, obj, exc)
    if builder.problems:
        problems = _relabel(builder.problems)
        return Converted(ref, None, problems, _digest([p.message for p in problems]))
    return builder


def convert_pod(ref: ObjectRef, obj: dict[str, Any]) -> Converted:
    spec = obj.get("spec")
    if isinstance(spec, dict) and spec.get("hostNetwork") is True:
        # Host-network pods share the node's IPs and NetworkPolicy does not apply to
        # them; as endpoints they would collide with each other on the node address.
        return Converted(ref, None, (), _digest("hostNetwork"))
    builder = _build(ref, obj, PODS, InventoryBuilder.add_pod)
    if isinstance(builder, Converted):
        return builder
    if not builder.endpoints:
        return Converted(ref, None, (), _digest("finished"))  # Succeeded/Failed: holds no IP policy applies to
    ep = builder.endpoints[0]
    meta = obj.get("metadata")
    terminating = isinstance(meta, dict) and bool(meta.get("deletionTimestamp"))
    digest = _digest(ep.namespace, ep.name, dict(ep.labels), ep.node, [str(ip) for ip in ep.ips], ep.interface,
                     [(p.name, p.port, p.protocol) for p in ep.ports], ep.netns, terminating)
    return Converted(ref, ep, (), digest, terminating=terminating)


def convert_namespace(ref: ObjectRef, obj: dict[str, Any]) -> Converted:
    builder = _build(ref, obj, NAMESPACES, InventoryBuilder.add_k8s_namespace)
    if isinstance(builder, Converted):
        return builder
    ns = next(iter(builder.namespaces.values()))
    return Converted(ref, ns, (), _digest(ns.name, dict(ns.labels), ns.enforcement))


def _parse_policy(ref: ObjectRef, obj: dict[str, Any], kind: str,
                  parse: Callable[[Document], Policy | ClusterPolicy]) -> Converted:
    """One policy object through its parser, kept raw for lint: the policy, or the
    Converted that reports why it could not be read."""
    typed = _typed(kind, obj)
    # The digest covers what lint reads too (annotations may disable lint rules).
    digest = _digest(ref.namespace, ref.name, obj.get("spec"), (obj.get("metadata") or {}).get("annotations"))
    try:
        policy = parse(Document(_UNREADABLE, 0, typed))
    except InputError as err:
        return Converted(ref, None, _relabel(err.problems), digest, raw=typed)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        return dataclasses.replace(_malformed(ref, obj, exc), raw=typed)
    policy = dataclasses.replace(policy, origin=dataclasses.replace(policy.origin, file=ORIGIN))
    return Converted(ref, policy, (), digest, raw=typed)


def convert_policy(ref: ObjectRef, obj: dict[str, Any]) -> Converted:
    return _parse_policy(ref, obj, POLICIES, parse_network_policy)


def convert_node(ref: ObjectRef, obj: dict[str, Any]) -> Converted:
    builder = _build(ref, obj, NODES, InventoryBuilder.add_k8s_node)
    if isinstance(builder, Converted):
        return builder
    node = next(iter(builder.nodes.values()))
    # Only labels and addresses: node status heartbeats do not wake anyone.
    return Converted(ref, node, (), _digest(node.name, dict(node.labels), [str(a) for a in node.addresses]))


_CLUSTER_PARSERS: dict[str, Callable[[Document, bool], ClusterPolicy]] = {
    CLUSTER_POLICIES: cnp.parse_cluster_network_policy,
    ADMIN_POLICIES: anp.parse_admin_network_policy,
    BASELINE_POLICIES: anp.parse_baseline_admin_network_policy,
}


def _cluster_converter(kind: str) -> Callable[[ObjectRef, dict[str, Any]], Converted]:
    parse = _CLUSTER_PARSERS[kind]

    def convert_cluster_policy(ref: ObjectRef, obj: dict[str, Any]) -> Converted:
        # The API server validated the object against its CRD: a peer whose only
        # field callgate does not know fails closed instead of failing the policy.
        return _parse_policy(ref, obj, kind, lambda doc: parse(doc, True))

    return convert_cluster_policy


CONVERTERS: dict[str, Callable[[ObjectRef, dict[str, Any]], Converted]] = {
    PODS: convert_pod, NAMESPACES: convert_namespace, POLICIES: convert_policy, NODES: convert_node,
    **{kind: _cluster_converter(kind) for kind in OPTIONAL_KINDS},
}


def convert(kind: str, obj: Any) -> Converted | None:
    """Convert one raw object; None when it cannot even be named (nothing to key it by)."""
    ref = object_ref(kind, obj)
    if ref is None:
        return None
    return CONVERTERS[kind](ref, obj)


@dataclass(frozen=True)
class ClusterState:
    """A consistent view of the cluster, as of one moment of the cache."""

    inventory: Inventory
    policies: PolicySet
    problems: tuple[Problem, ...]  # every skipped object, with why
    version: str  # a digest of the content: equal versions mean equal content
    problems_by_object: Mapping[ObjectRef, tuple[Problem, ...]]
    # Every policy and Namespace object by display name ("NetworkPolicy x/p",
    # "ClusterNetworkPolicy p", "Namespace x"), valid or not: what the controller
    # attaches Events to.
    refs: Mapping[str, ObjectRef]
    # Policies as the API served them (valid or not), for lint: NetworkPolicies by
    # "ns/name", cluster policies by "Kind/name" (their model keys).
    raw_policies: Mapping[str, tuple[ObjectRef, dict[str, Any]]]


def assemble(entries: Mapping[str, Mapping[tuple[str, str], Converted]]) -> ClusterState:
    """Build inventory, policies and problems from converted entries.

    Entries are visited in (namespace, name) order so that a conflict between two
    objects (two pods claiming one IP) is resolved the same way every time;
    terminating pods come after all others, so a pod that got a freed address
    keeps it against the terminating pod the API still shows with it.
    """
    builder = InventoryBuilder()
    problems_by_object: dict[ObjectRef, tuple[Problem, ...]] = {}
    hasher = hashlib.sha256()
    for kind in KINDS:
        for key, entry in sorted(entries.get(kind, {}).items()):
            hasher.update(f"{kind}\0{key[0]}\0{key[1]}\0{entry.digest}\n".encode())
            if entry.problems:
                problems_by_object[entry.ref] = entry.problems
    for _, entry in sorted(entries.get(NAMESPACES, {}).items()):
        if isinstance(entry.value, Namespace):
            builder.namespaces[entry.value.name] = entry.value
    for _, entry in sorted(entries.get(PODS, {}).items(), key=lambda kv: (kv[1].terminating, kv[0])):
        if isinstance(entry.value, Endpoint):
            before = len(builder.problems)
            builder.endpoint(entry.value, Document(_UNREADABLE, 0, {}), object_name(
                {"metadata": {"name": entry.ref.name, "namespace": entry.ref.namespace}}, "Pod"),
                ("metadata", "name"), ("status", "podIPs"))
            if len(builder.problems) > before:
                problems_by_object[entry.ref] = _relabel(builder.problems[before:])
    for _, entry in sorted(entries.get(NODES, {}).items()):
        if isinstance(entry.value, Node):
            builder.nodes[entry.value.name] = entry.value
    builder.problems.clear()  # reported per object above; finish() only adds implied namespaces
    inventory = builder.finish()
    policies = tuple(e.value for _, e in sorted(entries.get(POLICIES, {}).items()) if isinstance(e.value, Policy))
    cluster = tuple(e.value for kind in OPTIONAL_KINDS for _, e in sorted(entries.get(kind, {}).items())
                    if isinstance(e.value, ClusterPolicy))
    refs = {e.display: e.ref for kind in (*LINTED_KINDS, NAMESPACES) for e in entries.get(kind, {}).values()}
    raw = {(e.ref.key if kind == POLICIES else f"{e.ref.kind}/{e.ref.name}"): (e.ref, e.raw)
           for kind in LINTED_KINDS for e in entries.get(kind, {}).values() if isinstance(e.raw, dict)}
    problems = tuple(p for _, ps in sorted(problems_by_object.items(), key=lambda kv: (kv[0].kind, kv[0].key))
                     for p in ps)
    return ClusterState(inventory, PolicySet(policies, cluster), problems, hasher.hexdigest()[:16],
                        problems_by_object, refs, raw)
