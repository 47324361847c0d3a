"""Well-formed endpoints and pods, checked without building pydantic models.

A 50,000-pod inventory is 50,000 endpoint objects that are nearly always
right. Building a pydantic model for each (and then the Endpoint from the
model) was ~0.9 s of every command that loads it. The functions here check the
same rules (the same memoised checks of :mod:`callgate.policy.validation`) by
hand and build the Endpoint directly, but only for input of exactly the types
the models take without converting anything. Anything else (a wrong or
convertible type, a broken rule, an unknown field, a missing one) gives None,
and the loader validates that object with its pydantic model as before: every
message about bad input is still the model's, and what the model accepts is
unchanged. ``tests/test_fastvalid.py`` holds them to that, value for value.
"""

from __future__ import annotations

from typing import Any

from callgate.policy import validation as v
from callgate.policy.model import Endpoint, IPAddress, NamedPort

_ENDPOINT_FIELDS = frozenset({"name", "namespace", "labels", "node", "interface", "netns", "ips", "ports"})
_PORT_FIELDS = frozenset({"name", "port", "protocol"})
_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})


def _labels(labels: Any) -> dict[str, str] | None:
    if type(labels) is not dict:
        return None
    for key, value in labels.items():
        if type(key) is not str or type(value) is not str or v.label_key(key) or v.label_value(value):
            return None
    return labels


def _ips(ips: Any) -> tuple[IPAddress, ...] | None:
    if type(ips) is not list:
        return None
    out = []
    for ip in ips:
        if type(ip) is not str:
            return None
        try:
            out.append(v.parse_ip(ip))
        except ValueError:
            return None
    return tuple(out)


# Checked ports by (name, number, protocol): a big inventory declares the same few
# ports on thousands of pods, and a NamedPort is a value (frozen), so one is shared.
_PORTS: dict[tuple[Any, Any, Any], NamedPort] = {}


def _port(name: Any, number: Any, protocol: Any) -> NamedPort | None:
    # The types first: a value of another type goes to the model (a list or a dict
    # cannot even be a cache key), and equal values of other types (1.0 == True == 1)
    # never find a cached port.
    if type(number) is not int or type(protocol) is not str or not (name is None or type(name) is str):
        return None
    key = (name, number, protocol)
    found = _PORTS.get(key)
    if found is not None:
        return found
    if name is not None and v.port_name(name):
        return None
    if not 1 <= number <= 65535 or protocol not in _PROTOCOLS:
        return None
    if len(_PORTS) < 65536:  # bounded: hostile input cannot grow it without end
        _PORTS[key] = found = NamedPort(name, number, protocol)  # type: ignore[arg-type]  # one of _PROTOCOLS
        return found
    return NamedPort(name, number, protocol)  # type: ignore[arg-type]


def _optional(value: Any, check: Any) -> bool:
    """None, or a string that ``check`` finds nothing wrong with."""
    return value is None or (type(value) is str and not check(value))


def native_endpoint(data: Any) -> Endpoint | None:
    """An Inventory's endpoint entry, as ``EndpointModel`` would give it; None: ask the model."""
    if type(data) is not dict or not _ENDPOINT_FIELDS.issuperset(data):
        return None
    name, namespace = data.get("name"), data.get("namespace")
    if type(name) is not str or v.dns_subdomain(name) or type(namespace) is not str or v.dns_label(namespace):
        return None
    labels = _labels(data.get("labels", {}))
    ips = _ips(data.get("ips", []))
    node, interface, netns = data.get("node"), data.get("interface"), data.get("netns")
    if labels is None or ips is None or not (node is None or type(node) is str):
        return None
    if not _optional(interface, v.interface_name) or not _optional(netns, v.netns_path):
        return None
    raw_ports = data.get("ports", [])
    if type(raw_ports) is not list:
        return None
    ports = []
    for p in raw_ports:
        if type(p) is not dict or not _PORT_FIELDS.issuperset(p):
            return None
        port = _port(p.get("name"), p.get("port"), p.get("protocol", "TCP"))
        if port is None:
            return None
        ports.append(port)
    return Endpoint(name=name, namespace=namespace, labels=dict(labels), node=node, ips=ips, interface=interface,
                    netns=netns, ports=tuple(ports))


def pod_endpoint(data: dict[str, Any], interface_key: str, netns_key: str) -> Endpoint | None:
    """A v1 Pod as ``PodModel`` (unknown fields ignored) would give it; None: ask the model.
    ``interface_key``/``netns_key``: the annotations that place the pod."""
    meta, spec, status = data.get("metadata"), data.get("spec"), data.get("status")
    if type(meta) is not dict or not (spec is None or type(spec) is dict) or not (status is None or type(status) is dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    if type(name) is not str or v.dns_subdomain(name) or type(namespace) is not str or v.dns_label(namespace):
        return None
    labels = meta.get("labels")
    if labels is not None and _labels(labels) is None:
        return None
    annotations = meta.get("annotations")
    if annotations is not None:
        if type(annotations) is not dict or any(type(k) is not str or type(x) is not str
                                                for k, x in annotations.items()):
            return None
        if not _optional(annotations.get(interface_key), v.interface_name):
            return None
        if not _optional(annotations.get(netns_key), v.netns_path):
            return None
    node = spec.get("nodeName") if spec else None
    if not (node is None or type(node) is str):
        return None
    ports = _container_ports(spec.get("containers") if spec else None)
    ips = _pod_ips(status) if status else ()
    if ports is None or ips is None:
        return None
    return Endpoint(name=name, namespace=namespace, labels=dict(labels or {}), node=node, ips=ips,
                    interface=annotations.get(interface_key) if annotations else None,
                    netns=annotations.get(netns_key) if annotations else None, ports=ports)


def _container_ports(containers: Any) -> tuple[NamedPort, ...] | None:
    if containers is None:
        return ()
    if type(containers) is not list:
        return None
    ports = []
    for c in containers:
        if type(c) is not dict:
            return None
        listed = c.get("ports")
        if listed is None:
            continue
        if type(listed) is not list:
            return None
        for p in listed:
            if type(p) is not dict:
                return None
            port = _port(p.get("name"), p.get("containerPort"), p.get("protocol", "TCP"))
            if port is None:
                return None
            ports.append(port)
    return tuple(ports)


def _pod_ips(status: dict[str, Any]) -> tuple[IPAddress, ...] | None:
    """``status.podIPs`` when it lists any, else ``status.podIP``, as the loader picks them."""
    phase = status.get("phase")
    if not (phase is None or type(phase) is str):
        return None
    pod_ip, pod_ips = status.get("podIP"), status.get("podIPs")
    single = None
    if pod_ip is not None:
        if type(pod_ip) is not str:
            return None
        parsed = _ips([pod_ip])
        if parsed is None:
            return None
        single = parsed
    if pod_ips is None:
        return single or ()
    if type(pod_ips) is not list:
        return None
    texts = []
    for entry in pod_ips:
        if type(entry) is not dict or type(entry.get("ip")) is not str:
            return None
        texts.append(entry["ip"])
    listed = _ips(texts)
    if listed is None:
        return None
    return listed or single or ()
