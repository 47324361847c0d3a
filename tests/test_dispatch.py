"""Dispatch by address, anti-spoofing and placement, without a kernel.

What the nft and iptables backends put around the per-endpoint chains: which
address goes to which chain, which (interface, address) pairs may send, and
how a node's RuleSet is split between the node's namespace and the
namespaces of endpoints that have no host-side interface. The kernel tests
(tests/test_topologies.py, tests/test_e2e_kernel.py) send the packets.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from callgate.compiler import Compiler
from callgate.compiler.ir import RuleSet
from callgate.enforcers.base import Enforcer, Placement
from callgate.enforcers.iptables.enforcer import IptablesEnforcer
from callgate.enforcers.iptables.fake import FakeIptables
from callgate.enforcers.iptables.transaction import plan
from callgate.enforcers.nft.dispatch import dispatch_elements, guard_chain, guard_chains
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from callgate.enforcers.nft.transaction import replace_table
from callgate.enforcers.nft.update import NftUpdate
from callgate.enforcers.placement import NodeEnforcer, NodeTransaction, split, without
from callgate.policy import Inventory, load_policies
from tests.helpers import standard

NODE = "node-1"
S01 = "tests/scenarios/01-deny-all-ingress-x.yaml"  # x isolated for ingress (x/a, x/c local here)
S06 = "tests/scenarios/06-egress.yaml"


def compile_(inventory: Inventory, scenario: str = S01) -> RuleSet:
    return Compiler(load_policies(scenario), inventory).compile(NODE)


def in_netns(inventory: Inventory, *keys: str) -> Inventory:
    """``inventory`` with these endpoints moved into namespaces of their own (macvlan)."""
    return Inventory(inventory.namespaces, tuple(
        dataclasses.replace(ep, interface=None, netns=f"/run/netns/cgt-{ep.name}-{ep.namespace}")
        if ep.key in keys else ep for ep in inventory.endpoints))


def test_node_dispatch_is_by_address_and_every_local_endpoint_is_held_to_its_own() -> None:
    rs = compile_(standard())
    elements = dispatch_elements(rs, None, "node")
    xa = next(ep for ep in rs.endpoints if ep.endpoint == "x/a")
    assert elements[("inet", "to_endpoint4")][0] == ["198.18.1.10", {"jump": {"target": xa.ingress[0].name}}]
    assert [e[0] for e in elements[("inet", "to_endpoint6")]] == ["fd00:18:1::10", "fd00:18:1::12"]
    assert elements[("inet", "from_endpoint4")] == []  # nobody isolated for egress
    # Anti-spoofing covers all five local endpoints, isolated (x/a, x/c) or not, in both tables.
    local = ["cgxa0", "cgxc0", "cgyb0", "cgza0", "cgzc0"]
    # The inet table: a base chain on each interface's own ingress hook; no look-up anywhere.
    assert ("inet", "endpoint_guard") not in elements
    tx = replace_table(rs)
    hooked = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in tx.commands
              if c.get("add", {}).get("chain", {}).get("hook") == "ingress"}
    assert {name: chain["dev"] for name, chain in hooked.items()} == {guard_chain(i): i for i in local}
    assert len(hooked) == len(local)
    assert ("inet", "endpoint_source4") not in elements and ("inet", "endpoint_iface") not in elements
    # The bridge table: (interface, address) pairs, which its chain looks up.
    assert elements[("bridge", "endpoint_iface")] == local
    assert {"concat": ["cgyb0", "198.18.2.11"]} in elements[("bridge", "endpoint_source4")]
    assert {"concat": ["cgyb0", "fd00:18:2::11"]} in elements[("bridge", "endpoint_source6")]
    text = tx.text()
    assert "ip daddr vmap @to_endpoint4" in text
    lines = text.splitlines()
    at = lines.index(f"\tchain {guard_chain('cgyb0')} {{")
    source = lines[at:]
    assert lines[at - 1] == "\t# source check of cgyb0, on its ingress hook"
    assert source[1:4] == ['\t\ttype filter hook ingress device "cgyb0" priority 0; policy accept;',
                           "\t\tip saddr 198.18.2.11 accept", "\t\tip6 saddr fd00:18:2::11 accept"]
    # Link-local sources from one named set that every source chain shares: an anonymous
    # set per chain cost every later transaction a dump of its elements (libnftables' cache).
    assert source[4].startswith("\t\tip6 saddr @link_sources6 icmpv6 type . ip6 hoplimit { mld-listener-query . 1")
    assert "\tset link_sources6 {" in lines
    declared = lines[lines.index("\tset link_sources6 {"):]
    assert declared[1:3] == ["\t\ttype ipv6_addr", "\t\tflags interval"] and "fe80::/10" in declared[4]
    assert source[5] == '\t\tcounter drop comment "callgate anti-spoofing"'
    assert "table bridge callgate {" in text and "iifname . arp saddr ip @endpoint_source4 return" in text
    assert "ether type != { ip, arp, ip6 } counter drop" in text  # a bridge port sends no VLAN-tagged frames
    # Spoofed packets never reach the forward hook: established flows leave first, then dispatch.
    forward = text[text.index("chain forward {"):]
    rules = [line.strip() for line in forward.splitlines()[2:] if line.strip() and line.strip() != "}"]
    assert rules[0] == "ct state established,related accept" and "endpoint_guard" not in text


def test_on_an_older_kernel_the_forward_chain_looks_the_interface_up() -> None:
    """guard="forward": a verdict map on the input interface, first in the forward
    chain, jumps to the interface's (regular) source chain."""
    rs = compile_(standard())
    local = ["cgxa0", "cgxc0", "cgyb0", "cgza0", "cgzc0"]
    elements = dispatch_elements(rs, None, "node", "forward")
    assert elements[("inet", "endpoint_guard")] == [[i, {"jump": {"target": guard_chain(i)}}] for i in local]
    tx = replace_table(rs, guard="forward")
    assert not [c for c in tx.commands if c.get("add", {}).get("chain", {}).get("hook") == "ingress"]
    assert tx.digest != replace_table(rs).digest  # another table: never adopted as the other
    text = tx.text()
    source = text[text.index(f"chain {guard_chain('cgyb0')} {{"):]
    assert source.splitlines()[1:3] == [
        '\t\tip saddr != 198.18.2.11 counter drop comment "callgate anti-spoofing"',
        '\t\tip6 saddr != fd00:18:2::11 counter drop comment "callgate anti-spoofing"']
    # The source checks first (a spoofed packet must not ride the impersonated pod's
    # flow), then established flows leave, then dispatch.
    forward = text[text.index("chain forward {"):]
    rules = [line.strip() for line in forward.splitlines()[2:] if line.strip() and line.strip() != "}"]
    assert rules[:2] == ['iifname vmap @endpoint_guard comment "callgate anti-spoofing"',
                         "ct state established,related accept"]


def test_the_enforcer_asks_the_kernel_where_the_source_checks_go() -> None:
    rs = compile_(standard())
    modern, older = FakeNftKernel(), FakeNftKernel()
    older.hooks_by_name = False
    assert NftablesEnforcer(modern).guard == "ingress"
    enforcer = NftablesEnforcer(older)
    assert enforcer.guard == "forward"
    enforcer.apply(rs)  # the older kernel takes the forward layout
    assert older.transactions == 1 and enforcer.in_sync(rs)
    assert "endpoint_guard" in json.dumps(older.list_table("inet", "callgate"))
    assert modern.transactions == 0  # asking commits nothing


def test_a_source_chain_holds_every_address_of_its_interface_and_none_of_a_missing_family() -> None:
    """Several endpoints (or addresses) on one interface: any of theirs; an interface
    without an address of a family sends none of that family."""
    inv = standard()
    eps = list(inv.endpoints)
    xa = next(i for i, ep in enumerate(eps) if ep.key == "x/a")
    eps[xa] = dataclasses.replace(eps[xa], ips=("198.18.1.10", "198.18.1.99"))  # IPv4 only, two of them
    rs = compile_(Inventory(inv.namespaces, tuple(eps)))
    mine = {"payload": {"protocol": "ip", "field": "saddr"}}, {"set": ["198.18.1.10", "198.18.1.99"]}
    rules = guard_chains(rs, "node")[guard_chain("cgxa0")].rules
    assert rules[0] == ({"match": {"op": "==", "left": mine[0], "right": mine[1]}}, {"accept": None})
    # No IPv6 of its own: only neighbour discovery and MLD from link-local sources, then the drop.
    assert all("@link_sources6" in json.dumps(r) for r in rules[1:-1]) and rules[-1] == ({"counter": None}, {"drop": None})
    rules = guard_chains(rs, "node", "forward")[guard_chain("cgxa0")].rules
    assert rules[0][0] == {"match": {"op": "!=", "left": mine[0], "right": mine[1]}}
    assert rules[1][0] == {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}
    assert guard_chains(rs, "netns") == {}


def test_netns_placement_owns_only_its_namespace_input_and_output() -> None:
    inv = in_netns(standard(), "x/a")
    parts = split(compile_(inv))
    assert list(parts) == [None, "/run/netns/cgt-a-x"]
    pod = parts["/run/netns/cgt-a-x"]
    assert [ep.endpoint for ep in pod.endpoints] == ["x/a"] and [le.endpoint for le in pod.local] == ["x/a"]
    assert "x/a" not in {ep.endpoint for ep in parts[None].endpoints} | {le.endpoint for le in parts[None].local}
    # Each part keeps only the sets its own chains use.
    used = {r.peer_set for ep in pod.endpoints for c in ep.ingress for r in c.rules if r.peer_set}
    assert {s.name for s in pod.address_sets} == used
    tx = replace_table(pod, placement="netns")
    text = tx.text()
    assert "table bridge" not in text and "hook forward" not in text
    assert "type filter hook output priority 0; policy accept;" in text and 'oifname "lo" accept' in text
    assert "ip saddr @endpoint_address4 return" in text
    assert {c["add"]["table"]["family"] for c in tx.commands if "table" in c.get("add", {})} == {"inet"}
    with pytest.raises(ValueError, match="fail-closed"):
        NftablesEnforcer(FakeNftKernel(), fail_closed_prefix="cg", placement="netns")


def test_without_is_no_rule_no_dispatch_no_set() -> None:
    rs = compile_(standard(), S06)
    gone = without(rs, ["z/c"])
    assert "z/c" not in {ep.endpoint for ep in gone.endpoints} | {le.endpoint for le in gone.local}
    used = {r.peer_set for ep in gone.endpoints for c in (*ep.ingress, *ep.egress) for r in c.rules} | {
        r.peer_port_set for ep in gone.endpoints for c in (*ep.ingress, *ep.egress) for r in c.rules}
    assert {s.name for s in gone.address_sets} | {s.name for s in gone.port_sets} <= used
    assert without(rs, []) is rs


@pytest.mark.parametrize("guard", ["ingress", "forward"])
def test_a_local_pod_coming_is_element_commands_in_both_tables(guard: str) -> None:
    inv = standard()
    fewer = Inventory(inv.namespaces, tuple(ep for ep in inv.endpoints if ep.key != "y/b"))
    enforcer = NftablesEnforcer(FakeNftKernel(), guard=guard)  # type: ignore[arg-type]
    enforcer.apply(compile_(fewer))
    result = enforcer.apply(compile_(inv))  # y/b (local, not isolated) arrives
    assert isinstance(result.transaction, NftUpdate) and result.mode == "incremental"
    added = {(c["add"]["element"]["family"], c["add"]["element"]["name"]): c["add"]["element"]["elem"]
             for c in result.transaction.commands if "element" in c.get("add", {})}
    assert added[("bridge", "endpoint_iface")] == ["cgyb0"]
    assert added[("bridge", "endpoint_source4")] == [{"concat": ["cgyb0", "198.18.2.11"]}]
    text = result.transaction.text().splitlines()
    chain = f"add chain inet callgate {guard_chain('cgyb0')}"
    declared = next(c["add"]["chain"] for c in result.transaction.commands
                    if c.get("add", {}).get("chain", {}).get("name") == guard_chain("cgyb0"))
    if guard == "ingress":  # a base chain on the new interface, with its rules
        assert declared["hook"] == "ingress" and declared["dev"] == "cgyb0"
        assert ("inet", "endpoint_guard") not in added
        assert text.index(chain) < text.index(f"add rule inet callgate {guard_chain('cgyb0')}")
    else:  # the source chain, filled before the map element that jumps to it
        assert "hook" not in declared
        assert added[("inet", "endpoint_guard")] == [["cgyb0", {"jump": {"target": guard_chain("cgyb0")}}]]
        element = next(i for i, line in enumerate(text) if line.startswith("add element inet callgate endpoint_guard"))
        assert text.index(chain) < text.index(f"add rule inet callgate {guard_chain('cgyb0')}") < element
    assert enforcer.in_sync(compile_(inv))
    # And it goes again (after the element that jumped to it, if any).
    gone = enforcer.apply(compile_(fewer))
    assert isinstance(gone.transaction, NftUpdate)
    lines = gone.transaction.text().splitlines()
    assert f"delete chain inet callgate {guard_chain('cgyb0')}" in lines
    if guard == "forward":
        assert lines.index(f"delete chain inet callgate {guard_chain('cgyb0')}") > next(
            i for i, line in enumerate(lines) if line.startswith("delete element inet callgate endpoint_guard"))
    assert enforcer.in_sync(compile_(fewer))


def test_iptables_in_a_namespace_hooks_input_and_output() -> None:
    pod = split(compile_(in_netns(standard(), "x/a")))["/run/netns/cgt-a-x"]
    tx = plan(pod, placement="netns")
    for version, own in ((4, "198.18.1.10/32"), (6, "fd00:18:1::10/128")):
        table = tx.table(version)
        assert table.jumps == (("INPUT", "CG-INPUT"), ("OUTPUT", "CG-OUTPUT"))
        assert table.chains[:2] == ("CG-INPUT", "CG-OUTPUT")
        assert f"-A CG-INPUT -d {own} -j CG-in_5356176b92c3" in table.rules
        source = [r for r in table.rules if r.startswith("-A CG-src_")]
        assert source[0].endswith(f"-s {own} -j RETURN") and source[-1].endswith("-j DROP")
    fake = FakeIptables()
    enforcer = IptablesEnforcer(fake, placement="netns")
    assert enforcer.apply(pod).changed and not enforcer.apply(pod).changed
    assert fake.tables[4]["INPUT"] == ["-j CG-INPUT"] and fake.tables[4]["OUTPUT"] == ["-j CG-OUTPUT"]
    assert "FORWARD" not in json.dumps(fake.tables[4]["INPUT"])
    assert enforcer.remove() and fake.tables[4]["INPUT"] == [] and fake.sets == {}


def fake_node(backend: str) -> tuple[NodeEnforcer, dict[str | None, Any]]:
    """A NodeEnforcer over fake kernels, one per namespace; and the fakes."""
    kernels: dict[str | None, Any] = {}

    def factory(netns: str | None, placement: Placement) -> Enforcer:
        if backend == "nft":
            kernels[netns] = FakeNftKernel()
            return NftablesEnforcer(kernels[netns], placement=placement)
        kernels[netns] = FakeIptables()
        return IptablesEnforcer(kernels[netns], placement=placement)

    return NodeEnforcer(factory, backend), kernels


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_node_enforcer_applies_each_namespace_and_forgets_the_ones_that_left(backend: str) -> None:
    inv = standard()
    enforcer, kernels = fake_node(backend)
    two = compile_(in_netns(inv, "x/a", "x/c"))
    result = enforcer.apply(two)
    assert result.changed and set(kernels) == {None, "/run/netns/cgt-a-x", "/run/netns/cgt-c-x"}
    assert isinstance(result.transaction, NodeTransaction)
    assert "# inside network namespace /run/netns/cgt-a-x" in result.transaction.text()
    assert set(result.transaction.to_json()["netns"]) == {"/run/netns/cgt-a-x", "/run/netns/cgt-c-x"}
    assert enforcer.in_sync(two) and enforcer.diff(two) == []
    assert not enforcer.apply(two).changed
    assert enforcer.live_digest() == enforcer.applied.digest == result.digest  # type: ignore[union-attr]
    # x/c back on a veth: its namespace loses callgate's tables, the node gains its rules.
    one = compile_(in_netns(inv, "x/a"))
    assert enforcer.apply(one).changed
    assert enforcer.in_sync(one)
    gone = kernels["/run/netns/cgt-c-x"]
    assert (gone.tables == {}) if backend == "nft" else (gone.tables[4]["INPUT"] == [] and gone.sets == {})
    # Drift in one namespace shows and is repaired by a full apply of that part only.
    pod_kernel = kernels["/run/netns/cgt-a-x"]
    if backend == "nft":
        pod_kernel.tables.clear()
    else:
        pod_kernel.tables[4]["INPUT"].clear()
    assert not enforcer.in_sync(one)
    repaired = enforcer.apply(one, incremental=False)
    assert repaired.changed and enforcer.in_sync(one)
    assert enforcer.remove() and enforcer.live_text() is None


def test_without_namespace_endpoints_the_node_part_is_the_ruleset_itself() -> None:
    rs = compile_(standard())
    assert split(rs) == {None: rs} and split(rs)[None] is rs
    enforcer, _ = fake_node("nft")
    assert enforcer.apply(rs).digest == NftablesEnforcer(FakeNftKernel()).apply(rs).digest


def test_compile_json_names_each_namespace_part() -> None:
    enforcer, kernels = fake_node("iptables")
    out = enforcer.plan(compile_(in_netns(standard(), "x/a"))).to_json()
    assert out["iptables"]["jumps"] == ["FORWARD -> CG-FORWARD"]
    assert out["netns"]["/run/netns/cgt-a-x"]["iptables"]["jumps"] == ["INPUT -> CG-INPUT", "OUTPUT -> CG-OUTPUT"]
    assert all(fake.calls == [] for fake in kernels.values())  # planning touches no kernel
