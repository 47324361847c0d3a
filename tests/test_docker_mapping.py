"""Docker containers to endpoints, without an engine: the mapping of issue #14
(name, namespace, labels, IPs, interface, ports, host network), hostile values,
conflicts between containers, and the veth look-up on recorded `ip -j` output."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import pytest

from callgate.watchers.docker_convert import (
    Network,
    convert_container,
    endpoint_name,
    parse_ports_label,
)
from callgate.watchers.docker_engine import assemble
from callgate.watchers.docker_links import VethResolver
from tests.fake_docker import container_info

NETWORKS = {
    "net-bridge": Network("net-bridge", "bridge", "bridge"),
    "net-back": Network("net-back", "backend", "bridge"),
    "net-front": Network("net-front", "frontend", "bridge"),
    "net-host": Network("net-host", "host", "host"),
    "net-ovl": Network("net-ovl", "mesh", "overlay"),
    "net-mv": Network("net-mv", "lan", "macvlan"),
    "net-ipv": Network("net-ipv", "l3", "ipvlan"),
}


class Interfaces:
    """host_interface for tests: answers from a table and records what it was asked."""

    def __init__(self, table: dict[tuple[int, str], str] | None = None) -> None:
        self.table = table or {}
        self.asked: list[tuple[int, str]] = []

    def __call__(self, pid: int, mac: str) -> str | None:
        self.asked.append((pid, mac))
        return self.table.get((pid, mac))


def convert(info: dict[str, Any], interfaces: Interfaces | None = None) -> Any:
    return convert_container(info, NETWORKS, "docker-1", interfaces or Interfaces())


def test_a_compose_container_becomes_an_endpoint() -> None:
    info = container_info("shop-web-1", "198.18.200.2", ipv6="fd00:200::2", pid=77, exposed=("8080/tcp", "9100/tcp"),
                          labels={"app": "web", "com.docker.compose.project": "shop",
                                  "com.docker.compose.service": "web",
                                  "com.docker.compose.config-hash": "a" * 64,  # 64 characters: no label value
                                  "com.docker.compose.project.working_dir": "/srv/shop",
                                  "callgate.io/ports": "http=8080/TCP"})
    interfaces = Interfaces({(77, "02:42:c6:12:c8:02"): "veth1a2b3c4"})
    c = convert(info, interfaces)
    ep = c.endpoint
    assert ep is not None and c.not_enforceable is None
    assert (ep.name, ep.namespace, ep.node, ep.interface) == ("shop-web-1", "shop", "docker-1", "veth1a2b3c4")
    assert dict(ep.labels) == {"app": "web", "com.docker.compose.project": "shop", "com.docker.compose.service": "web"}
    assert ep.ips == (ipaddress.ip_address("198.18.200.2"), ipaddress.ip_address("fd00:200::2"))
    assert [(p.name, p.port, p.protocol) for p in ep.ports] == [("http", 8080, "TCP"), ("9100-tcp", 9100, "TCP")]
    assert interfaces.asked == [(77, "02:42:c6:12:c8:02")]  # by the MAC the engine reports for the network
    # The two labels that are no Kubernetes labels: skipped, with ONE warning that names them.
    assert len(c.warnings) == 1 and "2 label(s) skipped" in c.warnings[0]
    assert "config-hash" in c.warnings[0] and "working_dir" in c.warnings[0]
    assert not c.unresolved


@pytest.mark.parametrize(("labels", "namespace", "warned"), [
    ({"callgate.io/namespace": "payments", "com.docker.compose.project": "shop"}, "payments", False),
    ({"com.docker.compose.project": "shop"}, "shop", False),
    ({}, "default", False),
    ({"callgate.io/namespace": "Not_A_Namespace", "com.docker.compose.project": "shop"}, "shop", True),
    ({"com.docker.compose.project": "my_stack"}, "default", True),  # Compose allows '_', namespaces do not
])
def test_namespace_from_label_then_compose_project_then_default(labels: dict[str, str], namespace: str,
                                                               warned: bool) -> None:
    c = convert(container_info("c", "198.18.200.3", labels=labels))
    assert c.endpoint.namespace == namespace
    assert any("is not a namespace name" in w for w in c.warnings) == warned


def test_ports_named_by_label_else_port_and_protocol() -> None:
    c = convert(container_info("c", "198.18.200.4", exposed=("53/udp", "53/tcp", "9100/tcp", "132/sctp"),
                               labels={"callgate.io/ports": "dns=53/UDP, metrics=9100"}))
    assert [(p.name, p.port, p.protocol) for p in c.endpoint.ports] == [
        ("53-tcp", 53, "TCP"), ("dns", 53, "UDP"), ("132-sctp", 132, "SCTP"), ("metrics", 9100, "TCP")]
    assert c.warnings == ()
    # A name for a port the container does not expose names nothing (and says so).
    c = convert(container_info("c", "198.18.200.4", exposed=("80/tcp",), labels={"callgate.io/ports": "http=8080/TCP"}))
    assert [(p.name, p.port) for p in c.endpoint.ports] == [("80-tcp", 80)]
    assert c.warnings == ("label callgate.io/ports: names port(s) the container does not expose: 8080/TCP",)


@pytest.mark.parametrize(("value", "names", "problems"), [
    ("http=8080/TCP,metrics=9100/TCP", {(8080, "TCP"): "http", (9100, "TCP"): "metrics"}, 0),
    ("http=8080", {(8080, "TCP"): "http"}, 0),
    ("dns=53/udp", {(53, "UDP"): "dns"}, 0),
    ("http=80/TCP,http=81/TCP", {(80, "TCP"): "http"}, 1),  # a name twice
    ("http=0/TCP,x=70000,y=80/ICMP,=80,80", {}, 5),
    ("Http=80/TCP,a--b=81,123=82,toolongportname1=83", {}, 4),  # not IANA service names
    ('x"; flush ruleset; "=80/TCP', {}, 1),
])
def test_ports_label_parsing(value: str, names: dict[tuple[int, str], str], problems: int) -> None:
    got, found = parse_ports_label(value)
    assert got == names
    assert len(found) == problems


def test_hostile_labels_never_reach_the_endpoint() -> None:
    """nft syntax, newlines and control characters in keys and values: skipped (one
    warning, itself one printable line), never passed on as labels, names or ports."""
    hostile = '"; flush ruleset; add rule inet callgate forward accept; "\n'
    labels = {hostile: "x", "ok": hostile, "app": "web", "callgate.io/namespace": hostile,
              "callgate.io/ports": f"{hostile}=80/TCP", "k\u0000ey": "v", "e" * 300: "v"}
    c = convert(container_info("c", "198.18.200.5", labels=labels))
    ep = c.endpoint
    assert dict(ep.labels) == {"app": "web"}
    assert ep.namespace == "default" and [p.name for p in ep.ports] == ["80-tcp"]
    everything = json.dumps([ep.name, ep.namespace, dict(ep.labels), ep.interface, [p.name for p in ep.ports]])
    assert "flush" not in everything and "ruleset" not in everything
    assert sum("label(s) skipped" in w for w in c.warnings) == 1
    for warning in c.warnings:
        assert warning.isprintable() and len(warning) < 1000


def test_an_interface_name_the_kernel_could_not_have_given_is_dropped() -> None:
    info = container_info("c", "198.18.200.6", pid=9)
    c = convert(info, Interfaces({(9, "02:42:c6:12:c8:06"): "veth0; drop"}))
    assert c.endpoint.interface is None and c.unresolved


def test_host_network_is_reported_not_enforceable() -> None:
    info = container_info("monitor", "", network="host", network_id="net-host", mode="host")
    c = convert(info)
    assert c.endpoint is None
    assert c.not_enforceable and "host's network stack" in c.not_enforceable


def test_containers_with_nothing_to_enforce() -> None:
    stopped = container_info("c", "198.18.200.7")
    stopped["State"] = {"Status": "exited", "Running": False, "Pid": 0}
    assert convert(stopped) is None
    none = container_info("c", "", network="none", network_id="net-none", mode="none")
    assert convert(none) is None
    shared = container_info("sidecar", "", mode="container:abc")
    shared["NetworkSettings"]["Networks"] = {}
    assert convert(shared) is None
    for broken in ({}, {"Id": 5}, {"Id": "x", "State": "running"}, None, []):
        assert convert(broken) is None  # type: ignore[arg-type]


def test_networks_callgate_does_not_enforce_on() -> None:
    only = container_info("c", "10.0.0.2", network="mesh", network_id="net-ovl")
    c = convert(only)
    assert c.endpoint is None and "mesh (driver overlay)" in c.not_enforceable
    both = container_info("c", "198.18.200.8", network="bridge")
    both["NetworkSettings"]["Networks"]["mesh"] = {"NetworkID": "net-ovl", "IPAddress": "198.18.99.8"}
    c = convert(both)
    assert c.endpoint is not None
    assert [str(ip) for ip in c.endpoint.ips] == ["198.18.200.8"]  # only managed networks' addresses
    assert any("not enforced on network(s) mesh" in w for w in c.warnings)


def test_addresses_from_every_bridge_network_interface_from_the_first() -> None:
    info = container_info("c", "198.18.201.2", network="frontend", network_id="net-front", pid=5)
    info["NetworkSettings"]["Networks"]["backend"] = {"NetworkID": "net-back", "IPAddress": "198.18.202.2",
                                                      "GlobalIPv6Address": "fd00:202::2", "MacAddress": "02:42:00:00:02:02"}
    interfaces = Interfaces({(5, "02:42:00:00:02:02"): "vethback", (5, "02:42:c6:12:c9:02"): "vethfront"})
    c = convert(info, interfaces)
    assert [str(i) for i in c.endpoint.ips] == ["198.18.202.2", "fd00:202::2", "198.18.201.2"]
    assert c.endpoint.interface == "vethback"  # "backend" sorts first
    assert any("on 2 bridge networks" in w for w in c.warnings)


@pytest.mark.parametrize(("network", "network_id"), [("lan", "net-mv"), ("l3", "net-ipv")])
def test_macvlan_and_ipvlan_containers_are_enforced_in_their_own_namespace(network: str, network_id: str) -> None:
    interfaces = Interfaces({(77, "02:42:c6:12:c8:05"): "vethbridge"})
    c = convert(container_info("db", "198.18.203.5", network=network, network_id=network_id, pid=77,
                               ipv6="fd00:203::5"), interfaces)
    assert c.endpoint is not None and not c.unresolved
    assert (c.endpoint.netns, c.endpoint.interface) == ("/proc/77/ns/net", None)
    assert [str(i) for i in c.endpoint.ips] == ["198.18.203.5", "fd00:203::5"]
    assert interfaces.asked == []  # no host-side interface to look for
    # Also on a bridge: the rules in its namespace cover both networks, and no veth is needed.
    both = container_info("db", "198.18.200.5", pid=77)
    both["NetworkSettings"]["Networks"][network] = {"NetworkID": network_id, "IPAddress": "198.18.203.5"}
    c = convert(both, interfaces)
    assert (c.endpoint.netns, c.endpoint.interface) == ("/proc/77/ns/net", None)
    assert [str(i) for i in c.endpoint.ips] == ["198.18.200.5", "198.18.203.5"]
    # A restarted container has a new process, so a new namespace path: the view changes.
    moved = convert(container_info("db", "198.18.203.5", network=network, network_id=network_id, pid=78))
    assert moved.endpoint.netns == "/proc/78/ns/net" and moved.digest != convert(
        container_info("db", "198.18.203.5", network=network, network_id=network_id, pid=77)).digest


@pytest.mark.parametrize(("host_config", "verdict"), [
    ({}, "raw"),  # Docker's defaults: NET_RAW, no NET_ADMIN
    ({"CapDrop": ["NET_RAW"]}, "ok"),
    ({"CapDrop": ["ALL"]}, "ok"),
    ({"CapDrop": ["cap_net_raw"]}, "ok"),
    ({"CapAdd": ["NET_ADMIN"], "CapDrop": ["NET_RAW"]}, "untrusted"),
    ({"CapAdd": ["CAP_NET_ADMIN"]}, "untrusted"),
    ({"CapAdd": ["ALL"]}, "untrusted"),
    ({"Privileged": True, "CapDrop": ["ALL"]}, "untrusted"),
])
def test_in_namespace_enforcement_needs_a_container_without_net_admin(host_config: dict[str, Any],
                                                                       verdict: str) -> None:
    info = container_info("db", "198.18.203.5", network="lan", network_id="net-mv", pid=77)
    info["HostConfig"].update(host_config)
    c = convert(info)
    if verdict == "untrusted":
        assert c.endpoint is None and "could remove the rules there" in c.not_enforceable
        return
    assert c.endpoint is not None and c.endpoint.netns == "/proc/77/ns/net"
    assert any("CAP_NET_RAW" in w for w in c.warnings) == (verdict == "raw")
    # On a bridge the rules are on the host: capabilities do not matter.
    bridged = container_info("web", "198.18.200.5", pid=78)
    bridged["HostConfig"].update(host_config)
    assert not any("CAP_NET_RAW" in w for w in convert(bridged).warnings)


@pytest.mark.parametrize(("name", "expected"), [
    ("web", "web"), ("shop-web-1", "shop-web-1"), ("focused_turing", "focused-turing"), ("Web_1", "web-1"),
    ("a.b", "a.b"), ("_x_", "x"), ("x" * 254, None), ("___", None),
])
def test_endpoint_names(name: str, expected: str | None) -> None:
    assert endpoint_name(name) == expected


def test_assemble_reports_conflicts_and_is_order_independent() -> None:
    a = convert(container_info("a", "198.18.200.10"))
    b = convert(container_info("b", "198.18.200.10"))  # the same address (two engines' networks overlap)
    host = convert(container_info("h", "", network="host", network_id="net-host", mode="host"))
    one, two = assemble([a, b, host]), assemble([host, b, a])
    assert one.version == two.version and one.inventory == two.inventory
    assert [e.name for e in one.inventory.endpoints] == ["a"]
    assert [(p.object, "already used" in p.message) for p in one.not_enforceable] == [
        ("container b", True), ("container h", False)]
    assert assemble([a]).version != one.version


# ---- the veth look-up, on `ip -j link show` as iproute2 prints it --------------------------------

INSIDE = [{"ifindex": 1, "ifname": "lo", "address": "00:00:00:00:00:00"},
          {"ifindex": 3, "link_index": 4, "ifname": "eth0", "address": "02:42:c6:12:c8:02", "link_netnsid": 0}]
HOST = [{"ifindex": 1, "ifname": "lo"}, {"ifindex": 2, "ifname": "docker0"},
        {"ifindex": 4, "link_index": 3, "ifname": "veth14f3137", "master": "docker0", "link_netnsid": 1},
        {"ifindex": 7, "link_index": 3, "ifname": "veth007ffc4", "master": "br-x", "link_netnsid": 2}]


class Runner:
    def __init__(self, inside: list[dict[str, Any]], host: list[dict[str, Any]]) -> None:
        self.inside, self.host = inside, host
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.argvs.append(list(argv))
        return json.dumps(self.inside if argv[0] == "nsenter" else self.host)


def test_veth_found_by_the_peer_link_index_both_ways() -> None:
    runner = Runner(INSIDE, HOST)
    resolver = VethResolver("cgd-lab", runner)
    assert resolver(28327, "02:42:C6:12:C8:02") == "veth14f3137"
    assert runner.argvs == [["nsenter", "--net=/proc/28327/ns/net", "ip", "-j", "link", "show"],
                            ["ip", "-n", "cgd-lab", "-j", "link", "show"]]
    assert resolver(28327, "02:42:c6:12:c8:02") == "veth14f3137"
    assert len(runner.argvs) == 3  # the host's links are cached while they answer


def test_veth_not_trusted_unless_the_peer_points_back() -> None:
    # Host index 4 exists but is the peer of another namespace's interface 5: no answer.
    host = [{"ifindex": 4, "link_index": 5, "ifname": "vethother"}]
    assert VethResolver(None, Runner(INSIDE, host))(1, "02:42:c6:12:c8:02") is None
    assert VethResolver(None, Runner(INSIDE, HOST))(1, "02:42:00:00:00:99") is None  # no such MAC inside
    not_veth = [{"ifindex": 3, "ifname": "eth0", "address": "02:42:c6:12:c8:02"}]  # macvlan: no link index
    assert VethResolver(None, Runner(not_veth, HOST))(1, "02:42:c6:12:c8:02") is None
    hostile = [{"ifindex": 4, "link_index": 3, "ifname": "veth;drop"}]
    assert VethResolver(None, Runner(INSIDE, hostile))(1, "02:42:c6:12:c8:02") is None
    assert VethResolver(None, lambda argv: None)(1, "02:42:c6:12:c8:02") is None  # the container is gone
    assert VethResolver(None, lambda argv: "not json")(1, "02:42:c6:12:c8:02") is None


def test_a_stale_host_cache_is_read_again() -> None:
    runner = Runner(INSIDE, [{"ifindex": 4, "link_index": 9, "ifname": "vethold"}])
    resolver = VethResolver(None, runner)
    assert resolver(1, "02:42:c6:12:c8:02") is None
    runner.host = HOST  # the old veth went, a new container's took its index
    assert resolver(1, "02:42:c6:12:c8:02") == "veth14f3137"
