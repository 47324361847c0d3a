"""The guard: every local endpoint placed, and what defeats enforcement fixed or refused.

Here against host views made by hand (the kernel's side is read by
callgate.enforcers.host; tests/test_topologies.py runs the guard on real labs).
"""

from __future__ import annotations

import ipaddress

import pytest

from callgate.compiler.ir import LocalEndpoint, RuleSet
from callgate.enforcers.guard import Fix, Report, check
from callgate.enforcers.host import HostView, Link, NetnsProbe, _link

ON = {"bridge-nf-call-iptables": 1, "bridge-nf-call-ip6tables": 1, "bridge-nf-filter-vlan-tagged": 0}


def host(*links: Link, sysctls: dict[str, int] | None = None, addresses: tuple[str, ...] = ("198.19.255.1",),
         ) -> HostView:
    return HostView("cgn", {link.name: link for link in links}, frozenset(ipaddress.ip_address(a) for a in addresses),
                    dict(ON if sysctls is None else sysctls))


def ruleset(*local: LocalEndpoint) -> RuleSet:
    return RuleSet("node-1", local=local)


A = LocalEndpoint("x/a", ("198.18.1.10", "fd00:18:1::10"), interface="cgxa0")
B6 = LocalEndpoint("x/b", ("fd00:18:1::11",), interface="cgxb0")  # IPv6 only
M = LocalEndpoint("x/m", ("198.18.1.20",), netns="/run/netns/cgm")
BRIDGE = Link("br0", "bridge", bridge_flags={"nf_call_iptables": 0, "nf_call_ip6tables": 0})


def run(view: HostView, *local: LocalEndpoint, backend: str = "nft",
        probe: NetnsProbe | None = None) -> Report:
    return check(ruleset(*local), "cgn", backend, read=lambda _ns: view,
                 probe=lambda path, _node: probe or NetnsProbe(path, None, addresses=frozenset(
                     ipaddress.ip_address(a) for a in M.ips)))


def test_routed_veth_bridge_port_and_namespace_are_placed() -> None:
    report = run(host(Link("cgxa0", "veth"), Link("cgxb0", "veth", "br0", "bridge"), BRIDGE), A, B6, M)
    assert [(p.endpoint, p.kind, p.where) for p in report.placed] == [
        ("x/a", "routed veth", "cgxa0"), ("x/b", "bridge port", "cgxb0 of bridge br0"),
        ("x/m", "in-namespace", "/run/netns/cgm")]
    assert not report.defeated and report.refused() == {} and report.fixes == ()


def test_bridge_netfilter_off_is_fixed_on_that_bridge_for_the_families_in_use() -> None:
    off = {**ON, "bridge-nf-call-iptables": 0, "bridge-nf-call-ip6tables": 0}
    port = Link("cgxb0", "veth", "br0", "bridge")
    report = run(host(port, BRIDGE, sysctls=off), B6)
    # x/b has IPv6 only: only the IPv6 flag is needed.
    assert report.fixes == (Fix("cgn", "br0", "nf_call_ip6tables",
                                "bridged IPv6 on br0 did not reach callgate's rules"),)
    assert report.refused() == {} and report.defeated
    assert "bridge-nf-call-ip6tables is off in network namespace cgn and bridge br0's own nf_call_ip6tables too" \
        in report.findings[0].problem
    assert report.fixes[0].describe().startswith(
        "turned on nf_call_ip6tables on bridge br0 in network namespace cgn")
    # The bridge's own flag alone is enough, as is the namespace's sysctl alone.
    flagged = Link("br0", "bridge", bridge_flags={"nf_call_iptables": 1, "nf_call_ip6tables": 1})
    assert not run(host(port, flagged, sysctls=off), B6).defeated
    assert not run(host(port, BRIDGE), B6).defeated


def test_iptables_also_needs_vlan_tagged_ip_filtered() -> None:
    port = Link("cgxb0", "veth", "br0", "bridge")
    assert not run(host(port, BRIDGE), B6, backend="nft").defeated
    report = run(host(port, BRIDGE), B6, backend="iptables")
    assert report.fixes == (Fix("cgn", "", "bridge-nf-filter-vlan-tagged",
                                "VLAN-tagged IP from a bridge port would pass iptables unfiltered"),)
    assert report.fixes[0].describe().startswith("set net.bridge.bridge-nf-filter-vlan-tagged=1")


@pytest.mark.parametrize(("links", "sysctls", "problem", "keep"), [
    ((), ON, "interface cgxa0 does not exist in network namespace cgn", True),
    ((Link("cgxa0", ""),), ON, "interface cgxa0 is a physical device, not a container's host-side veth", False),
    ((Link("cgxa0", "bridge"),), ON, "interface cgxa0 is a bridge device", False),
    ((Link("cgxa0", "veth", "ovs-system", "openvswitch"),), ON,
     "interface cgxa0 is a port of openvswitch device ovs-system: traffic it switches never reaches netfilter",
     False),
    ((Link("cgxa0", "veth", "br0", "bridge"), BRIDGE), {}, "br_netfilter is not loaded", False),
])
def test_what_nothing_can_fix_is_refused(links: tuple[Link, ...], sysctls: dict[str, int], problem: str,
                                         keep: bool) -> None:
    report = run(host(*links, sysctls=sysctls), A)
    assert problem in report.refused()["x/a"]
    assert report.fixes == () and report.findings[0].keep is keep


def test_host_networking_is_refused_never_enforced() -> None:
    """An endpoint with the node's own address (Docker's host network) has no stack of its own."""
    hostnet = LocalEndpoint("x/h", ("198.19.255.1",), interface="cgxh0")
    report = run(host(Link("cgxh0", "veth")), hostnet)
    assert "198.19.255.1 belong to the node itself (host networking)" in report.refused()["x/h"]
    same = run(host(), M, probe=NetnsProbe(M.netns or "", None, host=True))
    assert "is the node's own network namespace (host networking)" in same.refused()["x/m"]


@pytest.mark.parametrize(("probe", "problem"), [
    (NetnsProbe("/run/netns/cgm", "network namespace /run/netns/cgm does not exist"), "does not exist"),
    (NetnsProbe("/run/netns/cgm", None, addresses=frozenset({ipaddress.ip_address("198.18.9.9")})),
     "does not hold the endpoint's address(es) 198.18.1.20: it is not the endpoint's"),
])
def test_a_namespace_that_is_not_the_endpoints_is_refused(probe: NetnsProbe, problem: str) -> None:
    report = run(host(), M, probe=probe)
    assert problem in report.refused()["x/m"] and not report.findings[0].keep


def test_links_are_read_from_ip_json() -> None:
    """What `ip -j -d link show` prints for a bridge port and a bridge (kernel 6.18, iproute2 6.1)."""
    port = _link({"ifname": "cgxa0", "master": "br0", "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge",
                                                                    "info_slave_data": {"state": "forwarding"}}})
    assert port == Link("cgxa0", "veth", "br0", "bridge")
    bridge = _link({"ifname": "br0", "linkinfo": {"info_kind": "bridge", "info_data": {
        "nf_call_iptables": 1, "nf_call_ip6tables": 0, "nf_call_arptables": 0, "stp_state": 0}}})
    assert bridge.bridge_flags == {"nf_call_iptables": 1, "nf_call_ip6tables": 0}
    assert _link({"ifname": "eth0"}) == Link("eth0", "")
