"""Turn Docker containers (``GET /containers/{id}/json``, hostile) into endpoints.

The mapping (README, "Docker hosts"):

* every running container attached to a network callgate enforces on (a
  ``bridge``, ``macvlan`` or ``ipvlan`` network) is an endpoint on this node;
* **name**: the container's name; one that is not a DNS-1123 subdomain
  (Docker's generated names have ``_``) is lower-cased and every other
  character becomes ``-``, with a warning;
* **namespace**: the label ``callgate.io/namespace``, else the Compose project
  (``com.docker.compose.project``), else ``default``; a value that is not a
  DNS-1123 label is skipped with a warning (and the next source is used);
* **labels**: the container's labels; keys or values that are not valid
  Kubernetes labels are skipped, with one warning per container, never
  passed on (``callgate.io/ports`` is read, not passed on);
* **IPs**: the IPv4 and IPv6 addresses of every network the container is on;
* **where**: on a bridge network, ``interface`` is the host side of the
  container's veth, found from the container's interface link index (see
  :mod:`callgate.watchers.docker_links`); the first bridge network by name
  decides when there are several. On a macvlan or ipvlan network (no
  host-side interface: callgate enforces inside the container's namespace),
  ``netns`` is ``/proc/PID/ns/net`` and there is no ``interface``; the rules
  there cover every network the container is on;
* **ports**: the exposed ports, named by the label ``callgate.io/ports``
  (``http=8080/TCP,metrics=9100/TCP``), else ``<port>-<proto>``;
* **host network**: a container that shares the host's network stack has no
  interface of its own to filter: it is *not enforceable*, reported (log,
  metric, ``callgate doctor``), never an endpoint that looks enforced.

Everything here is a pure function of the inspected container, the engine's
networks and the interface look-up it is handed, so it is tested without an
engine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from callgate.policy.documents import as_mapping
from callgate.policy.model import PROTOCOLS, Endpoint, IPAddress, NamedPort, PortProtocol
from callgate.policy.validation import dns_label, dns_subdomain, interface_name, label_key, label_value, port_name
from callgate.watchers.base import clip

NAMESPACE_LABEL = "callgate.io/namespace"
PORTS_LABEL = "callgate.io/ports"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
DEFAULT_NAMESPACE = "default"

# Network drivers callgate enforces on, and how: a bridge network's containers
# through their host-side veth; macvlan and ipvlan containers have none.
BRIDGE_DRIVERS = frozenset({"bridge"})
NAMESPACE_DRIVERS = frozenset({"macvlan", "ipvlan"})
MANAGED_DRIVERS = BRIDGE_DRIVERS | NAMESPACE_DRIVERS

# Docker's default capabilities that matter here (moby's oci/caps/defaults.go):
# NET_RAW is granted by default, NET_ADMIN is not.
DOCKER_DEFAULT_CAPABILITIES = frozenset({"NET_RAW"})

_MAX_LISTED = 5  # skipped label keys named in one warning


@dataclass(frozen=True)
class Network:
    """What callgate needs to know of one Docker network."""

    id: str
    name: str
    driver: str


# (container's PID, MAC address of its interface on the network) -> the host-side
# interface, or None when it cannot be found (yet).
HostInterface = Callable[[int, str], str | None]


@dataclass(frozen=True)
class Container:
    """One running container as callgate sees it."""

    id: str
    name: str  # as the engine names it (clipped: it ends up in messages)
    pid: int
    endpoint: Endpoint | None
    not_enforceable: str | None = None  # why, when it has traffic callgate cannot filter
    warnings: tuple[str, ...] = ()
    # True when the endpoint should have an interface and the look-up found none:
    # the watcher asks again later (the veth may not be there yet).
    unresolved: bool = False

    @property
    def display(self) -> str:
        return f"container {self.name}"

    @property
    def digest(self) -> str:
        """Changes when anything callgate uses from the container changes."""
        ep = self.endpoint
        fields: list[Any] = [self.id, self.name, self.not_enforceable, list(self.warnings)]
        if ep is not None:
            fields += [ep.name, ep.namespace, sorted(ep.labels.items()), ep.node, [str(i) for i in ep.ips],
                       ep.interface, ep.netns, [(p.name, p.port, p.protocol) for p in ep.ports]]
        text = json.dumps(fields, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def endpoint_name(container_name: str) -> str | None:
    """The endpoint name for a container name: itself when it is a DNS-1123
    subdomain; else lower-case with every character other than a-z, 0-9, '.'
    and '-' as '-' (``focused_turing`` -> ``focused-turing``); None when even
    that is no valid name."""
    if not dns_subdomain(container_name):
        return container_name
    name = re.sub(r"[^a-z0-9.-]", "-", container_name.lower()).strip("-.")
    return None if not name or dns_subdomain(name) else name


def parse_ports_label(value: str) -> tuple[dict[tuple[int, PortProtocol], str], list[str]]:
    """``http=8080/TCP,metrics=9100/TCP`` -> {(8080, TCP): http, …}, and what was
    wrong with it (each bad entry is skipped, the rest applies). The protocol
    defaults to TCP, as for a Kubernetes container port."""
    names: dict[tuple[int, PortProtocol], str] = {}
    problems: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, eq, spec = entry.partition("=")
        number, _, proto = spec.partition("/")
        protocol = (proto or "TCP").upper()
        if not eq or not number.isdigit() or not 1 <= int(number) <= 65535 or protocol not in PROTOCOLS:
            problems.append(f"{clip(entry, 60)!r} is not NAME=PORT/PROTOCOL")
            continue
        if err := port_name(name):
            problems.append(clip(err, 160))
            continue
        key = (int(number), protocol)
        if key in names or name in names.values():
            problems.append(f"{clip(entry, 60)!r} names a port or uses a name twice")
            continue
        names[key] = name  # type: ignore[assignment]  # protocol is one of PROTOCOLS (checked above)
    return names, problems


def exposed_ports(config: dict[str, Any]) -> tuple[list[tuple[int, PortProtocol]], list[str]]:
    """The image's and container's exposed ports (``{"80/tcp": {}}``), and the keys
    that are no port."""
    ports: list[tuple[int, PortProtocol]] = []
    bad: list[str] = []
    for key in as_mapping(config.get("ExposedPorts")):
        number, _, proto = str(key).partition("/")
        protocol = (proto or "tcp").upper()
        if number.isdigit() and 1 <= int(number) <= 65535 and protocol in PROTOCOLS:
            ports.append((int(number), protocol))  # type: ignore[arg-type]  # checked above
        else:
            bad.append(clip(str(key), 40))
    return sorted(set(ports)), bad


def _namespace(labels: Mapping[str, str], warnings: list[str]) -> str:
    for key in (NAMESPACE_LABEL, COMPOSE_PROJECT_LABEL):
        value = labels.get(key)
        if value is None:
            continue
        if not dns_label(value):
            return value
        warnings.append(f"label {key}={clip(value, 70)!r} is not a namespace name (a DNS-1123 label); ignored")
    return DEFAULT_NAMESPACE


def _labels(raw: dict[str, Any], warnings: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    skipped: list[str] = []
    for key, value in raw.items():
        if key == PORTS_LABEL:
            continue  # read for the port names, not a label to select on
        if not isinstance(key, str) or not isinstance(value, str) or label_key(key) or label_value(value):
            skipped.append(clip(str(key), 60))
            continue
        labels[key] = value
    if skipped:
        shown = ", ".join(repr(k) for k in sorted(skipped)[:_MAX_LISTED])
        more = f" and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
        warnings.append(f"{len(skipped)} label(s) skipped, not valid as Kubernetes labels (key or value): {shown}{more}")
    return labels


def _ips(entry: dict[str, Any], network: str, warnings: list[str]) -> list[IPAddress]:
    ips: list[IPAddress] = []
    for field in ("IPAddress", "GlobalIPv6Address"):
        text = _text(entry.get(field))
        if not text:
            continue
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            warnings.append(f"network {clip(network, 60)}: {field} {clip(text, 60)!r} is not an IP address; skipped")
    return ips


def convert_container(info: Any, networks: Mapping[str, Network], node: str,
                      host_interface: HostInterface) -> Container | None:
    """One inspected container as callgate sees it; None when it holds nothing to
    enforce (not running, or on no network at all)."""
    info = as_mapping(info)
    cid, name = _text(info.get("Id")), clip(_text(info.get("Name")).lstrip("/"), 128)
    state = as_mapping(info.get("State"))
    pid = state.get("Pid")
    if not cid or state.get("Running") is not True or not isinstance(pid, int) or pid <= 0:
        return None
    mode = _text(as_mapping(info.get("HostConfig")).get("NetworkMode"))
    attached = as_mapping(as_mapping(info.get("NetworkSettings")).get("Networks"))
    if mode == "host" or "host" in attached:
        return Container(cid, name, pid, None, not_enforceable=(
            "uses the host's network stack (network mode host): it has no interface of its own, so callgate "
            "cannot filter its traffic"))
    if mode.startswith("container:"):
        return None  # shares another container's stack: enforced as that container
    warnings: list[str] = []
    config = as_mapping(info.get("Config"))
    labels = _labels(as_mapping(config.get("Labels")), warnings)
    namespace = _namespace(labels, warnings)
    ips: list[IPAddress] = []
    bridges: list[tuple[str, str]] = []  # (network name, MAC)
    in_namespace: list[str] = []
    unmanaged: list[str] = []
    for net_name in sorted(k for k in attached if isinstance(k, str)):
        entry = as_mapping(attached[net_name])
        network = networks.get(_text(entry.get("NetworkID"))) or next(
            (n for n in networks.values() if n.name == net_name), None)
        driver = network.driver if network is not None else "unknown"
        if driver not in MANAGED_DRIVERS:
            if net_name != "none":
                unmanaged.append(f"{clip(net_name, 60)} (driver {clip(driver, 30)})")
            continue
        ips += _ips(entry, net_name, warnings)
        if driver in BRIDGE_DRIVERS:
            bridges.append((net_name, _text(entry.get("MacAddress")).lower()))
        else:
            in_namespace.append(net_name)
    if not bridges and not in_namespace:
        if not unmanaged:
            return None  # network mode none: nothing reaches it
        return Container(cid, name, pid, None, not_enforceable=(
            f"is only on network(s) callgate does not enforce on: {', '.join(unmanaged)} "
            "(callgate enforces on bridge, macvlan and ipvlan networks)"))
    if unmanaged:
        warnings.append(f"not enforced on network(s) {', '.join(unmanaged)}: only bridge, macvlan and ipvlan are")
    ep_name = endpoint_name(name)
    if ep_name is None:
        return Container(cid, name, pid, None, not_enforceable=(
            "its name cannot be made an endpoint name (a DNS-1123 subdomain of at most 253 characters)"),
            warnings=tuple(warnings))
    if ep_name != name:
        warnings.append(f"endpoint named {ep_name!r}: the container name is not a DNS-1123 subdomain")
    ports = _ports(labels_raw=as_mapping(config.get("Labels")), config=config, warnings=warnings)
    if in_namespace:
        # No host-side interface to filter on: the rules go into the container's own
        # namespace (input and output hooks), which also covers its bridge networks.
        # They hold only while the container cannot change that namespace's rules.
        host_config = as_mapping(info.get("HostConfig"))
        if untrusted := _namespace_admin(host_config):
            return Container(cid, name, pid, None, not_enforceable=(
                f"is on macvlan/ipvlan network(s) {', '.join(clip(n, 60) for n in in_namespace)}, where callgate "
                f"enforces inside its network namespace, and {untrusted}: it could remove the rules there"),
                warnings=tuple(warnings))
        if _has_capability(host_config, "NET_RAW"):
            warnings.append("on a macvlan/ipvlan network with CAP_NET_RAW (Docker's default): packet sockets "
                            "skip the output hook, so its egress is not enforced (its ingress is); drop NET_RAW")
        endpoint = Endpoint(name=ep_name, namespace=namespace, labels=labels, node=node, ips=tuple(ips),
                            netns=f"/proc/{pid}/ns/net", ports=ports)
        return Container(cid, name, pid, endpoint, warnings=tuple(warnings))
    net_name, mac = bridges[0]
    interface = host_interface(pid, mac) if mac else None
    if interface is not None and interface_name(interface):
        interface = None  # never pass on a name the kernel could not have given
    if len(bridges) > 1:
        warnings.append(f"on {len(bridges)} bridge networks: its addresses are in the rules on every one, but only "
                        f"its interface on {clip(net_name, 60)} is checked for spoofing (on the others it could send "
                        "from addresses not its own)")
    endpoint = Endpoint(name=ep_name, namespace=namespace, labels=labels, node=node, ips=tuple(ips),
                        interface=interface, ports=ports)
    return Container(cid, name, pid, endpoint, warnings=tuple(warnings), unresolved=interface is None)


def _capabilities(values: Any) -> set[str]:
    names = values if isinstance(values, list) else []
    return {n.upper().removeprefix("CAP_") for n in names if isinstance(n, str)}


def _has_capability(host_config: dict[str, Any], capability: str) -> bool:
    """Whether the container runs with ``capability`` (Docker's default set has
    NET_RAW, not NET_ADMIN; a privileged container has every one)."""
    if host_config.get("Privileged") is True:
        return True
    added, dropped = _capabilities(host_config.get("CapAdd")), _capabilities(host_config.get("CapDrop"))
    if capability in added or "ALL" in added:
        return True
    return capability in DOCKER_DEFAULT_CAPABILITIES and not ({capability, "ALL"} & dropped)


def _namespace_admin(host_config: dict[str, Any]) -> str | None:
    """Why the container may change its own namespace's netfilter rules, or None."""
    if host_config.get("Privileged") is True:
        return "it is privileged"
    if _has_capability(host_config, "NET_ADMIN"):
        return "it has CAP_NET_ADMIN"
    return None


def _ports(labels_raw: dict[str, Any], config: dict[str, Any], warnings: list[str]) -> tuple[NamedPort, ...]:
    exposed, bad = exposed_ports(config)
    if bad:
        warnings.append(f"exposed port(s) {', '.join(repr(b) for b in bad)} are not PORT/PROTOCOL; skipped")
    names: dict[tuple[int, PortProtocol], str] = {}
    value = labels_raw.get(PORTS_LABEL)
    if isinstance(value, str):
        names, problems = parse_ports_label(value)
        unexposed = [f"{p}/{proto}" for (p, proto) in sorted(names) if (p, proto) not in exposed]
        if unexposed:
            problems.append(f"names port(s) the container does not expose: {', '.join(unexposed)}")
        if problems:
            warnings.append(f"label {PORTS_LABEL}: " + "; ".join(problems))
    return tuple(NamedPort(names.get((port, proto), f"{port}-{proto.lower()}"), port, proto) for port, proto in exposed)
