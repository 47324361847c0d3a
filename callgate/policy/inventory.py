"""Inventory: who runs where.

Two formats are accepted: callgate's own ``callgate/v1 Inventory`` (see
README.md, "The inventory") and Kubernetes ``Pod``/``Namespace``/``Node`` objects as
``kubectl get -o yaml`` prints them (a ``List`` or several documents). Both may be
mixed. Nodes are optional: only ClusterNetworkPolicy ``nodes`` peers need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from callgate.errors import InputError, Problem, shown
from callgate.policy import validation as v
from callgate.policy.documents import POLICY_KINDS, Document, format_path, gc_paused, is_kind, read_all, shown_kind
from callgate.policy.fastvalid import native_endpoint, pod_endpoint
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
from callgate.policy.positions import FieldPath

if TYPE_CHECKING:
    from callgate.policy.ahead import YamlAhead

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
    ips: list[v.IPAddressValue] = Field(default_factory=list)
    ports: list[PortModel] = Field(default_factory=list)


# Kubernetes objects as `kubectl get -o yaml` prints them: only the fields callgate
# reads are modelled, with the API server's rules; everything else is ignored.


class K8sObjectModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ContainerPortModel(K8sObjectModel):
    name: v.PortName | None = None
    containerPort: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class ContainerModel(K8sObjectModel):
    ports: list[ContainerPortModel] | None = None


class PodSpecModel(K8sObjectModel):
    nodeName: str | None = None
    containers: list[ContainerModel] | None = None


class PodIPModel(K8sObjectModel):
    ip: v.IPAddressValue


class PodStatusModel(K8sObjectModel):
    phase: str | None = None
    podIP: v.IPAddressValue | None = None
    podIPs: list[PodIPModel] | None = None


class PodMetadataModel(K8sObjectModel):
    name: v.DnsSubdomain
    namespace: v.DnsLabel = "default"
    labels: v.Labels | None = None
    annotations: dict[str, str] | None = None

    @field_validator("annotations")
    @classmethod
    def _placement(cls, annotations: dict[str, str] | None) -> dict[str, str] | None:
        """The annotations that say where the pod's traffic is seen are checked as the
        inventory's own fields are."""
        iface = (annotations or {}).get(INTERFACE_ANNOTATION)
        if iface is not None and (err := v.interface_name(iface)):
            raise ValueError(f"{INTERFACE_ANNOTATION}: {err}")
        netns = (annotations or {}).get(NETNS_ANNOTATION)
        if netns is not None and (err := v.netns_path(netns)):
            raise ValueError(f"{NETNS_ANNOTATION}: {err}")
        return annotations


class PodModel(K8sObjectModel):
    metadata: PodMetadataModel
    spec: PodSpecModel | None = None
    status: PodStatusModel | None = None


class K8sNamespaceMetadataModel(K8sObjectModel):
    name: v.DnsLabel
    labels: v.Labels | None = None
    # Read for callgate.io/enforcement only; the API server holds their values to strings.
    annotations: dict[str, Any] | None = None


class K8sNamespaceModel(K8sObjectModel):
    metadata: K8sNamespaceMetadataModel


class K8sNodeMetadataModel(K8sObjectModel):
    name: v.DnsSubdomain
    labels: v.Labels | None = None


class NodeAddressModel(K8sObjectModel):
    address: str | None = None


class NodeStatusModel(K8sObjectModel):
    addresses: list[NodeAddressModel] | None = None


class K8sNodeModel(K8sObjectModel):
    metadata: K8sNodeMetadataModel
    status: NodeStatusModel | None = None


class NamespaceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: v.Labels = Field(default_factory=dict)


class NodeModel(BaseModel):
    """A node: its labels and addresses (what ClusterNetworkPolicy ``nodes`` peers select)."""

    model_config = ConfigDict(extra="forbid")
    labels: v.Labels = Field(default_factory=dict)
    addresses: list[v.IPAddressValue] = Field(default_factory=list)


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
                raise ValueError(f"namespace {shown(name)}: {err}")
        return namespaces

    @field_validator("nodes")
    @classmethod
    def _node_names(cls, nodes: dict[str, Any]) -> dict[str, Any]:
        for name in nodes:
            if err := v.dns_subdomain(name):
                raise ValueError(f"node {shown(name)}: {err}")
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

    def node(self, node: Node, doc: Document, obj: str, field_path: FieldPath) -> None:
        if node.name in self.nodes:
            self.problems.append(doc.problem(f"node {node.name} is defined twice", obj=obj,
                                             field=format_path(field_path), field_path=field_path))
            return
        self.nodes[node.name] = node

    def endpoint(self, ep: Endpoint, doc: Document, obj: str, name_path: FieldPath, ips_path: FieldPath) -> None:
        """Add ``ep`` unless its key or an address is taken; ``name_path`` and ``ips_path``
        say where the document writes its name and addresses."""
        key = ep.key
        if key in self.seen_keys:
            self.problems.append(doc.problem(f"endpoint {key} is defined twice", obj=obj,
                                             field=format_path(name_path), field_path=name_path))
            return
        for ip in ep.ips:
            if ip in self.seen_ips:
                self.problems.append(doc.problem(
                    f"IP {ip} is already used by endpoint {self.seen_ips[ip]}", obj=obj,
                    field=format_path(ips_path), field_path=ips_path))
                return
            self.seen_ips[ip] = key
        self.seen_keys.add(key)
        self.endpoints.append(ep)

    def add_native(self, doc: Document) -> None:
        # Every endpoint well-formed (the usual case): checked without models, and
        # the model validates the rest of the document. Otherwise the model
        # validates it all, as it always did, and says what is wrong.
        endpoints = _fast_endpoints(doc.data)
        try:
            if endpoints is not None:
                model = InventoryModel.model_validate({**doc.data, "endpoints": []})
            else:
                model = InventoryModel.model_validate(doc.data)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, doc, "Inventory"))
            return
        for name, ns in model.namespaces.items():
            self.namespace(name, ns.labels if ns else {})
        for name, node in model.nodes.items():
            spec = node or NodeModel()
            self.node(Node(name, spec.labels, tuple(spec.addresses)), doc,
                      f"node {name}", ("nodes", name))
        if endpoints is None:
            endpoints = [endpoint_model_endpoint(e) for e in model.endpoints]
        for i, ep in enumerate(endpoints):
            self.endpoint(ep, doc, f"endpoint {ep.key}", ("endpoints", i, "name"), ("endpoints", i, "ips"))

    def add_k8s_namespace(self, doc: Document) -> None:
        try:
            model = K8sNamespaceModel.model_validate(doc.data)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, doc, object_name(doc.data, "Namespace")))
            return
        annotations = model.metadata.annotations or {}
        enforcement = annotations.get(ENFORCEMENT_KEY)
        self.namespace(model.metadata.name, model.metadata.labels or {},
                       None if enforcement is None else str(enforcement))

    def add_k8s_node(self, doc: Document) -> None:
        """A v1 Node: its name, labels and the IP addresses in ``status.addresses``
        (entries that are no IP, such as Hostname, are skipped)."""
        try:
            model = K8sNodeModel.model_validate(doc.data)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, doc, object_name(doc.data, "Node")))
            return
        addresses: list[IPAddress] = []
        for entry in (model.status.addresses if model.status else None) or []:
            try:
                ip = v.parse_ip(entry.address) if entry.address is not None else None
            except ValueError:
                ip = None  # a Hostname or InternalDNS entry
            if ip is not None and ip not in addresses:
                addresses.append(ip)
        name = model.metadata.name
        self.node(Node(name, model.metadata.labels or {}, tuple(addresses)), doc, f"Node {name}",
                  ("metadata", "name"))

    def add_pod(self, doc: Document) -> None:
        status = doc.data.get("status")
        if isinstance(status, dict) and status.get("phase") in ("Succeeded", "Failed"):
            return  # finished pods hold no IP that policy applies to, whatever else they say
        obj = object_name(doc.data, "Pod")
        fast = pod_endpoint(doc.data, INTERFACE_ANNOTATION, NETNS_ANNOTATION)
        if fast is not None:
            listed = status.get("podIPs") if isinstance(status, dict) else None
            self.endpoint(fast, doc, obj, ("metadata", "name"), ("status", "podIPs" if listed else "podIP"))
            return
        try:
            pod = PodModel.model_validate(doc.data)
        except ValidationError as exc:
            self.problems.extend(problems_from(exc, doc, obj))
            return
        state = pod.status or PodStatusModel()
        self.endpoint(pod_model_endpoint(pod), doc, obj, ("metadata", "name"),
                      ("status", "podIPs" if state.podIPs else "podIP"))

    def finish(self) -> Inventory:
        if self.problems:
            raise InputError(self.problems)
        # Namespaces that endpoints use but nobody declared still exist, with only
        # the label the API server would give them.
        for ep in self.endpoints:
            if ep.namespace not in self.namespaces:
                self.namespace(ep.namespace, {})
        return Inventory(self.namespaces, tuple(self.endpoints), self.nodes)


def endpoint_model_endpoint(e: EndpointModel) -> Endpoint:
    """The Endpoint a validated Inventory endpoint entry stands for."""
    return Endpoint(name=e.name, namespace=e.namespace, labels=e.labels, node=e.node, ips=tuple(e.ips),
                    interface=e.interface, netns=e.netns,
                    ports=tuple(NamedPort(p.name, p.port, p.protocol) for p in e.ports))


def pod_model_endpoint(pod: PodModel) -> Endpoint:
    """The Endpoint a validated Pod stands for."""
    meta, spec, state = pod.metadata, pod.spec or PodSpecModel(), pod.status or PodStatusModel()
    ips = [p.ip for p in state.podIPs or []] or ([state.podIP] if state.podIP else [])
    return Endpoint(name=meta.name, namespace=meta.namespace, labels=meta.labels or {}, node=spec.nodeName,
                    ips=tuple(ips),
                    interface=(meta.annotations or {}).get(INTERFACE_ANNOTATION),
                    netns=(meta.annotations or {}).get(NETNS_ANNOTATION),
                    ports=tuple(NamedPort(p.name, p.containerPort, p.protocol)
                                for c in spec.containers or () for p in c.ports or ()))


def _fast_endpoints(data: Any) -> list[Endpoint] | None:
    """The document's endpoints if every one passes :func:`native_endpoint`, else None."""
    raw = data.get("endpoints", []) if isinstance(data, dict) else None
    if type(raw) is not list:
        return None
    out = []
    for entry in raw:
        ep = native_endpoint(entry)
        if ep is None:
            return None
        out.append(ep)
    return out


def load_inventory(paths: str | Path | Iterable[str | Path], ahead: YamlAhead | None = None) -> Inventory:
    """Load an inventory from files (or directories) in either accepted format
    (``ahead``: a YAML file of them in part parsed on another core, see :mod:`.ahead`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    builder = InventoryBuilder()
    with gc_paused():
        docs, builder.problems = read_all(paths, ahead)
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
            elif not is_kind(api, kind, POLICY_KINDS):  # policies may sit beside the inventory
                builder.problems.append(doc.problem(
                    f"expected a callgate/v1 Inventory or v1 Pod/Namespace/Node, got {shown_kind(api, kind)}",
                    obj=kind if isinstance(kind, str) else "object", field="kind", field_path=("kind",)))
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
