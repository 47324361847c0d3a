"""Inventory: who runs where.

Two formats are accepted: callgate's own ``callgate/v1 Inventory`` (see
README.md, "The inventory") and Kubernetes ``Pod``/``Namespace``/``Node`` objects as
``kubectl get -o yaml`` prints them (a ``List`` or several documents). Both may be
mixed. Nodes are optional: only ClusterNetworkPolicy ``nodes`` peers need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from callgate.errors import InputError, Problem
from callgate.policy import validation as v
from callgate.policy.documents import POLICY_KINDS, Document, gc_paused, read_all
from callgate.policy.model import (
    ENFORCEMENT_KEY,
    NAMESPACE_NAME_LABEL,
    Endpoint,
    Inventory,
    IPAddress,
    NamedPort,
    Namespace,
    Node,
)
from callgate.policy.networkpolicy import object_name, problems_from

# Pod annotations that say where a pod's traffic can be seen on its node.
INTERFACE_ANNOTATION = "callgate.io/interface"  # the host-side interface (veth)
NETNS_ANNOTATION = "callgate.io/netns"  # the pod's network namespace file (macvlan, ipvlan)


class PortModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: v.PortName | None = None
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class EndpointModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: v.DnsSubdomain
    namespace: v.DnsLabel
    labels: v.Labels = Field(default_factory=dict)
    node: str | None = None
    interface: v.InterfaceName | None = None
    netns: v.NetnsPath | None = None
    ips: list[str] = Field(default_factory=list)
    ports: list[PortModel] = Field(default_factory=list)

    @field_validator("ips")
    @classmethod
    def _ips(cls, ips: list[str]) -> list[str]:
        return _ips(ips)


class NamespaceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: v.Labels = Field(default_factory=dict)


def _ips(ips: list[str]) -> list[str]:
    for ip in ips:
        try:
            v.parse_ip(ip)
        except ValueError:
            raise ValueError(f"{ip!r} is not an IPv4 or IPv6 address") from None
    return ips


class NodeModel(BaseModel):
    """A node: its labels and addresses (what ClusterNetworkPolicy ``nodes`` peers select)."""

    model_config = ConfigDict(extra="forbid")
    labels: v.Labels = Field(default_factory=dict)
    addresses: list[str] = Field(default_factory=list)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        return _ips(addresses)


class InventoryModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_version: Literal["callgate/v1"] = Field(alias="apiVersion")
    kind: Literal["Inventory"]
    namespaces: dict[str, NamespaceModel | None] = Field(default_factory=dict)
    endpoints: list[EndpointModel] = Field(default_factory=list)
    nodes: dict[str, NodeModel | None] = Field(default_factory=dict)

    @field_validator("namespaces")
    @classmethod
    def _ns_names(cls, namespaces: dict[str, Any]) -> dict[str, Any]:
        for name in namespaces:
            if err := v.dns_label(name):
                raise ValueError(f"namespace {name!r}: {err}")
        return namespaces

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, nodes: dict[str, Any]) -> dict[str, Any]:
        for name in nodes:
            if err := v.dns_subdomain(name):
                raise ValueError(f"node {name!r}: {err}")
        return nodes


class InventoryBuilder:
    """Accumulates namespaces and endpoints from any number of documents."""

    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.endpoints: list[Endpoint] = []
        self.nodes: dict[str, Node] = {}
        self.problems: list[Problem] = []
        self.seen_ips: dict[IPAddress, str] = {}
        self.seen_keys: set[str] = set()

    def namespace(self, name: str, labels: Mapping[str, str], enforcement: str | None = None) -> None:
        labels = dict(labels)
        # The API server guarantees this label; inventories may leave it out.
        labels.setdefault(NAMESPACE_NAME_LABEL, name)
        self.namespaces[name] = Namespace(name, labels, labels.get(ENFORCEMENT_KEY, enforcement))

    def node(self, node: Node, doc: Document, obj: str, field_path: tuple[str | int, ...]) -> None:
        if node.name in self.nodes:
            self.problems.append(doc.problem(f"node {node.name} is defined twice", obj=obj, field="name",
                                             field_path=field_path))
            return
        self.nodes[node.name] = node

    def endpoint(self, ep: Endpoint, doc: Document, obj: str, field_path: tuple[str | int, ...]) -> None:
        if ep.key in self.seen_keys:
            self.problems.append(doc.problem(f"endpoint {ep.key} is defined twice", obj=obj,
                                             field="name", field_path=field_path))
            return
        for ip in ep.ips:
            if ip in self.seen_ips:
                self.problems.append(doc.problem(
                    f"IP {ip} is already used by endpoint {self.seen_ips[ip]}", obj=obj,
                    field="ips", field_path=field_path))
                return
            self.seen_ips[ip] = ep.key
        self.seen_keys.add(ep.key)
        self.endpoints.append(ep)

    def add_native(self, doc: Document) -> None:
        try:
            model = InventoryModel.model_validate(doc.data)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, doc, "Inventory"))
            return
        for name, ns in model.namespaces.items():
            self.namespace(name, ns.labels if ns else {})
        for name, node in model.nodes.items():
            spec = node or NodeModel()
            self.node(Node(name, spec.labels, tuple(v.parse_ip(a) for a in spec.addresses)), doc,
                      f"node {name}", ("nodes", name))
        for i, e in enumerate(model.endpoints):
            ep = Endpoint(
                name=e.name, namespace=e.namespace, labels=e.labels, node=e.node,
                ips=tuple(v.parse_ip(ip) for ip in e.ips), interface=e.interface, netns=e.netns,
                ports=tuple(NamedPort(p.name, p.port, p.protocol) for p in e.ports),
            )
            self.endpoint(ep, doc, f"endpoint {ep.key}", ("endpoints", i))

    def add_k8s_namespace(self, doc: Document) -> None:
        meta = doc.data.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or v.dns_label(name):
            self.problems.append(doc.problem("Namespace needs metadata.name, a DNS-1123 label",
                                             obj="Namespace", field="metadata.name",
                                             field_path=("metadata", "name")))
            return
        labels = meta.get("labels") or {}
        try:
            v.check_labels({str(k): str(val) for k, val in labels.items()})
        except ValueError as exc:
            self.problems.append(doc.problem(str(exc), obj=f"Namespace {name}", field="metadata.labels",
                                             field_path=("metadata", "labels")))
            return
        annotations = meta.get("annotations")
        enforcement = annotations.get(ENFORCEMENT_KEY) if isinstance(annotations, dict) else None
        self.namespace(name, {str(k): str(val) for k, val in labels.items()},
                       None if enforcement is None else str(enforcement))

    def add_k8s_node(self, doc: Document) -> None:
        """A v1 Node: its name, labels and the IP addresses in ``status.addresses``
        (entries that are no IP, such as Hostname, are skipped)."""
        meta = doc.data.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or v.dns_subdomain(name):
            self.problems.append(doc.problem("Node needs metadata.name, a DNS-1123 subdomain", obj="Node",
                                             field="metadata.name", field_path=("metadata", "name")))
            return
        labels = {str(k): str(val) for k, val in (meta.get("labels") or {}).items()}
        try:
            v.check_labels(labels)
        except ValueError as exc:
            self.problems.append(doc.problem(str(exc), obj=f"Node {name}", field="metadata.labels",
                                             field_path=("metadata", "labels")))
            return
        addresses: list[IPAddress] = []
        for entry in (doc.data.get("status") or {}).get("addresses") or []:
            text = entry.get("address") if isinstance(entry, dict) else None
            try:
                ip = v.parse_ip(text) if isinstance(text, str) else None
            except ValueError:
                ip = None  # a Hostname or InternalDNS entry
            if ip is not None and ip not in addresses:
                addresses.append(ip)
        self.node(Node(name, labels, tuple(addresses)), doc, f"Node {name}", ())

    def add_pod(self, doc: Document) -> None:
        data = doc.data
        obj = object_name(data, "Pod")
        meta, spec, status = (data.get(k) or {} for k in ("metadata", "spec", "status"))
        if status.get("phase") in ("Succeeded", "Failed"):
            return  # finished pods hold no IP that policy applies to
        try:
            ips = [p["ip"] for p in status.get("podIPs") or []] or (
                [status["podIP"]] if status.get("podIP") else [])
            ports = [
                PortModel(name=p.get("name"), port=p["containerPort"], protocol=p.get("protocol", "TCP"))
                for c in (spec.get("containers") or []) for p in (c.get("ports") or [])
            ]
            annotations = meta.get("annotations") or {}
            model = EndpointModel(name=meta.get("name", ""), namespace=meta.get("namespace", "default"),
                                  labels=meta.get("labels") or {}, node=spec.get("nodeName"),
                                  ips=ips, ports=ports, interface=annotations.get(INTERFACE_ANNOTATION),
                                  netns=annotations.get(NETNS_ANNOTATION))
        except (ValidationError, KeyError, TypeError, AttributeError) as exc:
            message = str(exc).splitlines()[-1] if isinstance(exc, ValidationError) else f"malformed Pod: {exc}"
            if isinstance(exc, ValidationError):
                message = "; ".join(
                    f"{'.'.join(str(x) for x in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors())
            self.problems.append(doc.problem(message, obj=obj))
            return
        ep = Endpoint(name=model.name, namespace=model.namespace, labels=model.labels,
                      node=model.node, ips=tuple(v.parse_ip(i) for i in model.ips),
                      interface=model.interface, netns=model.netns,
                      ports=tuple(NamedPort(p.name, p.port, p.protocol) for p in model.ports))
        self.endpoint(ep, doc, obj, ())

    def finish(self) -> Inventory:
        if self.problems:
            raise InputError(self.problems)
        # Namespaces that endpoints use but nobody declared still exist, with only
        # the label the API server would give them.
        for ep in self.endpoints:
            if ep.namespace not in self.namespaces:
                self.namespace(ep.namespace, {})
        return Inventory(self.namespaces, tuple(self.endpoints), self.nodes)


def load_inventory(paths: str | Path | Iterable[str | Path]) -> Inventory:
    """Load an inventory from files (or directories) in either accepted format."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    builder = InventoryBuilder()
    with gc_paused():
        docs, builder.problems = read_all(paths)
        for doc in docs:
            data = doc.data
            kind = data.get("kind") if isinstance(data, dict) else None
            api = data.get("apiVersion") if isinstance(data, dict) else None
            if kind == "Inventory":
                builder.add_native(doc)
            elif kind == "Namespace" and api == "v1":
                builder.add_k8s_namespace(doc)
            elif kind == "Pod" and api == "v1":
                builder.add_pod(doc)
            elif kind == "Node" and api == "v1":
                builder.add_k8s_node(doc)
            elif (api, kind) not in POLICY_KINDS:  # policies may sit beside the inventory
                builder.problems.append(doc.problem(
                    f"expected a callgate/v1 Inventory or v1 Pod/Namespace/Node, got {api}/{kind}",
                    obj=str(kind), field="kind", field_path=("kind",)))
        return builder.finish()


def inventory_document(inventory: Inventory) -> dict[str, Any]:
    """``inventory`` as a callgate/v1 Inventory document (what load_inventory reads back)."""
    def endpoint(ep: Endpoint) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": ep.name, "namespace": ep.namespace, "labels": dict(ep.labels)}
        if ep.node is not None:
            doc["node"] = ep.node
        if ep.interface is not None:
            doc["interface"] = ep.interface
        if ep.netns is not None:
            doc["netns"] = ep.netns
        doc["ips"] = [str(ip) for ip in ep.ips]
        doc["ports"] = [{**({"name": p.name} if p.name else {}), "port": p.port, "protocol": p.protocol}
                        for p in ep.ports]
        return doc

    doc: dict[str, Any] = {
        "apiVersion": "callgate/v1", "kind": "Inventory",
        "namespaces": {name: {"labels": dict(ns.labels)} for name, ns in sorted(inventory.namespaces.items())},
        "endpoints": [endpoint(ep) for ep in inventory.endpoints]}
    if inventory.node_info:  # ClusterNetworkPolicy nodes peers select through them
        doc["nodes"] = {name: {"labels": dict(node.labels), "addresses": [str(a) for a in node.addresses]}
                        for name, node in sorted(inventory.node_info.items())}
    return doc


def inventory_from_dict(data: dict[str, Any], name: str = "<inventory>") -> Inventory:
    """Build an inventory from an in-memory callgate/v1 document (tests, generators)."""
    builder = InventoryBuilder()
    builder.add_native(Document(name, 0, data))
    return builder.finish()
