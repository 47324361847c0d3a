"""The incremental compiler equals a fresh full compile after every change.

Random policy sets and inventories (tests/strategies.py) and random sequences
of endpoint changes on and off the node: adds, removes, relabels, new ports,
new or shared addresses, moves between nodes. After each change the
incremental RuleSet must be ``==`` to ``Compiler(...).compile(node)`` of the
same inventory and have the same digest. Then explicit cases for what the
random search may reach only rarely: named ports on egress, ipBlocks covering
pods, IPv6-only pods, sets becoming empty and non-empty, object reuse, and
each fallback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from callgate.compiler import Compiler, IncrementalCompiler
from callgate.compiler.addresses import elements_size
from callgate.compiler.ir import AddressSet, Chain, EndpointRules, Origin, Rule, RuleSet, Verdict
from callgate.policy import Evaluator
from callgate.policy.model import (
    ClusterPolicy,
    Direction,
    Endpoint,
    Inventory,
    IPBlock,
    LabelSelector,
    NamedPort,
    Namespace,
    Node,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortSpec,
    Tier,
)
from tests.strategies import (
    NAMESPACES,
    PORT_NAMES,
    PORTS,
    cluster_policies,
    inventories,
    inventories_with_nodes,
    labels_st,
    policy_sets,
    rules,
)

NODES = ("n1", "n2", "n3")


def full(policies: PolicySet, endpoints: list[Endpoint], namespaces: Mapping[str, Namespace], node: str,
         nodes: Mapping[str, Node] | None = None) -> RuleSet:
    return Compiler(policies, Inventory(namespaces, list(endpoints), nodes or {})).compile(node)


def assert_same(got: RuleSet, want: RuleSet) -> None:
    assert got.to_json() == want.to_json()
    assert got == want
    assert got.digest() == want.digest()
    # The address count each set carries (not compared by ==): patched point by
    # point here, taken from the intervals by the compiler; both must be the
    # count of the elements.
    for s, w in zip(got.address_sets, want.address_sets, strict=True):
        assert s.address_count == w.address_count == elements_size(s.elements), s.name


# -- random change sequences ---------------------------------------------------

# Addresses from a small pool, consecutive (so runs merge and split) and inside
# the strategies' ipBlocks (198.18.0.0/24, /28 except .12/30, fd00::/120 ...),
# shared between pods on purpose.
V4_POOL = [ipaddress.ip_address(f"198.18.0.{i}") for i in range(8, 22)]
V6_POOL = [ipaddress.ip_address(f"fd00::{i:x}") for i in range(8, 22)]


@st.composite
def addresses(draw: Any) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["v4", "v6", "both", "none"]))
    v4 = (draw(st.sampled_from(V4_POOL)),) if kind in ("v4", "both") else ()
    v6 = (draw(st.sampled_from(V6_POOL)),) if kind in ("v6", "both") else ()
    return v4 + v6


@st.composite
def ports(draw: Any) -> tuple[NamedPort, ...]:
    out = []
    for name in PORT_NAMES:
        if draw(st.booleans()):
            out.append(NamedPort(name, draw(st.sampled_from(PORTS)), draw(st.sampled_from(["TCP", "UDP"]))))
    return tuple(out)


def change(draw: Any, endpoints: list[Endpoint], serial: int) -> tuple[Endpoint | None, Endpoint | None]:
    """One random change against the current endpoints: (old, new)."""
    kinds = ["add"] + (["remove", "relabel", "ports", "ips", "move"] if endpoints else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "add":
        return None, Endpoint(
            name=f"q{serial}", namespace=draw(st.sampled_from(NAMESPACES)), labels=draw(labels_st),
            node=draw(st.sampled_from(NODES)), ips=draw(addresses()), interface=f"cgq{serial}", ports=draw(ports()))
    old = draw(st.sampled_from(endpoints))
    if kind == "remove":
        return old, None
    if kind == "relabel":
        new = dataclasses.replace(old, labels=draw(labels_st))
    elif kind == "ports":
        new = dataclasses.replace(old, ports=draw(ports()))
    elif kind == "ips":
        new = dataclasses.replace(old, ips=draw(addresses()))
    else:
        new = dataclasses.replace(old, node=draw(st.sampled_from(NODES)))
    return old, new


@st.composite
def broad_policy_sets(draw: Any) -> PolicySet:
    """policy_sets() plus policies selecting every pod of a namespace, with
    random peers and ports: random selectors alone often select no local pod,
    and then no change has a set to touch."""
    extra = []
    for i, ns in enumerate(draw(st.lists(st.sampled_from(NAMESPACES), min_size=1, max_size=3))):
        extra.append(Policy(
            namespace=ns, name=f"broad{i}", pod_selector=LabelSelector(),
            policy_types=draw(st.sampled_from([(Direction.INGRESS,), (Direction.EGRESS,),
                                               (Direction.INGRESS, Direction.EGRESS)])),
            ingress=tuple(draw(st.lists(rules(ns), min_size=1, max_size=3))),
            egress=tuple(draw(st.lists(rules(ns), min_size=1, max_size=3)))))
    return PolicySet([*draw(policy_sets()).policies, *extra])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), broad_policy_sets(), st.sampled_from(["n1", "n2"]), st.data())
def test_every_change_equals_a_full_compile(inventory: Inventory, policies: PolicySet, node: str,
                                            data: st.DataObject) -> None:
    inc = IncrementalCompiler(policies, inventory, node)
    endpoints = list(inventory.endpoints)
    assert_same(inc.ruleset, full(policies, endpoints, inventory.namespaces, node))
    for serial in range(data.draw(st.integers(1, 12), label="changes")):
        old, new = change(data.draw, endpoints, serial)
        got = inc.update(old, new)
        if old is not None:
            endpoints.remove(old)
        if new is not None:
            endpoints.append(new)
        assert_same(got, full(policies, endpoints, inventory.namespaces, node))
        event(inc.last_path.split(":")[0])
        # Every change is patched: a remote pod's sets, and a local pod's sets
        # and its own chains. (Keys here are unique and known.)
        assert inc.last_path in ("incremental", "unchanged"), inc.last_path
    assert inc.full_compiles == 1


@st.composite
def tiered_broad_policy_sets(draw: Any) -> PolicySet:
    """broad_policy_sets() with cluster policies of both tiers around them."""
    return PolicySet(draw(broad_policy_sets()).policies,
                     tuple(draw(cluster_policies(i)) for i in range(draw(st.integers(1, 4)))))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories_with_nodes(), tiered_broad_policy_sets(), st.sampled_from(["n1", "n2"]), st.data())
def test_every_change_with_cluster_tiers_equals_a_full_compile(inventory: Inventory, policies: PolicySet,
                                                              node: str, data: st.DataObject) -> None:
    """Pod churn that changes the peer sets of ClusterNetworkPolicy rules (ordered,
    with Deny and Pass) patches sets like any other; a local pod a cluster
    policy's subject holds has its own chains compiled again."""
    inc = IncrementalCompiler(policies, inventory, node)
    endpoints = list(inventory.endpoints)
    nodes = inventory.node_info
    assert_same(inc.ruleset, full(policies, endpoints, inventory.namespaces, node, nodes))
    for serial in range(data.draw(st.integers(1, 12), label="changes")):
        old, new = change(data.draw, endpoints, serial)
        got = inc.update(old, new)
        if old is not None:
            endpoints.remove(old)
        if new is not None:
            endpoints.append(new)
        assert_same(got, full(policies, endpoints, inventory.namespaces, node, nodes))
        event(inc.last_path.split(":")[0])
        local_with_chains = any(ep is not None and ep.node == node and (
            any(p.namespace == ep.namespace and p.pod_selector.matches(ep.labels) for p in policies.policies)
            or any(Evaluator(policies, Inventory(inventory.namespaces, [ep])).cluster_subjects(ep, tier)
                   for tier in Tier))
            for ep in (old, new))
        event("a local pod with chains" if local_with_chains else "a peer only")
        assert inc.last_path in ("incremental", "unchanged"), inc.last_path
    assert inc.full_compiles == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), broad_policy_sets(), st.sampled_from(["n1", "n2"]), st.data())
def test_sync_of_whole_snapshots_equals_a_full_compile(inventory: Inventory, policies: PolicySet, node: str,
                                                       data: st.DataObject) -> None:
    """The agent's path: whole inventories, diffed by key, several changes per snapshot."""
    inc = IncrementalCompiler(policies, inventory, node)
    endpoints = list(inventory.endpoints)
    for batch in range(data.draw(st.integers(1, 4), label="snapshots")):
        for serial in range(data.draw(st.integers(0, 4), label="changes")):
            old, new = change(data.draw, endpoints, 100 * batch + serial)
            if old is not None and new is not None:
                endpoints[endpoints.index(old)] = new  # in place: sync's positional diff
            elif old is not None:
                endpoints.remove(old)
            elif new is not None:
                endpoints.insert(data.draw(st.integers(0, len(endpoints)), label="at"), new)
        if data.draw(st.booleans(), label="shuffle"):
            endpoints = list(data.draw(st.permutations(endpoints), label="order"))
        if endpoints and data.draw(st.integers(0, 9), label="duplicate") == 0:
            endpoints.append(data.draw(st.sampled_from(endpoints)))  # the same object twice
        got = inc.sync(policies, Inventory(inventory.namespaces, list(endpoints)))
        assert_same(got, full(policies, endpoints, inventory.namespaces, node))
        event(inc.last_path.split(":")[0])


def policy_change(draw: Any, policies: PolicySet, serial: int) -> PolicySet:
    """One random NetworkPolicy change: one added, removed or rewritten (its
    selector, types or rules), the rest the same objects or equal copies."""
    current = list(policies.policies)
    kind = draw(st.sampled_from(["add", "remove", "rewrite", "copy"] if current else ["add"]), label="policy change")
    if kind == "add":
        ns = draw(st.sampled_from(NAMESPACES))
        current.insert(draw(st.integers(0, len(current))), Policy(
            namespace=ns, name=f"new{serial}", pod_selector=draw(st.sampled_from([LabelSelector(), selector(app="a")])),
            policy_types=draw(st.sampled_from([(Direction.INGRESS,), (Direction.EGRESS,),
                                               (Direction.INGRESS, Direction.EGRESS)])),
            ingress=tuple(draw(st.lists(rules(ns), min_size=1, max_size=2))),
            egress=tuple(draw(st.lists(rules(ns), min_size=1, max_size=2)))))
    elif kind == "remove":
        del current[draw(st.integers(0, len(current) - 1))]
    elif kind == "rewrite":
        at = draw(st.integers(0, len(current) - 1))
        old = current[at]
        current[at] = dataclasses.replace(old, ingress=tuple(draw(st.lists(rules(old.namespace), max_size=2))),
                                          pod_selector=draw(st.sampled_from([old.pod_selector, LabelSelector()])))
    else:  # every policy an equal copy, in another order: nothing to do
        current = [dataclasses.replace(p) for p in reversed(current)]
    return PolicySet(current, policies.cluster)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), broad_policy_sets(), st.sampled_from(["n1", "n2"]), st.data())
def test_policy_changes_through_sync_equal_a_full_compile(inventory: Inventory, policies: PolicySet, node: str,
                                                          data: st.DataObject) -> None:
    """A NetworkPolicy added, removed or rewritten (with pod changes in the same
    snapshot or not) compiles again only the chains of the local pods it
    selects, before or after; the result equals a fresh full compile."""
    inc = IncrementalCompiler(policies, inventory, node)
    endpoints = list(inventory.endpoints)
    for serial in range(data.draw(st.integers(1, 6), label="snapshots")):
        policies = policy_change(data.draw, policies, serial)
        if data.draw(st.booleans(), label="with a pod change"):
            old, new = change(data.draw, endpoints, 100 + serial)
            if old is not None and new is not None:
                endpoints[endpoints.index(old)] = new
            elif old is not None:
                endpoints.remove(old)
            elif new is not None:
                endpoints.append(new)
        got = inc.sync(policies, Inventory(inventory.namespaces, list(endpoints)))
        assert_same(got, full(policies, endpoints, inventory.namespaces, node))
        event(inc.last_path.split(":")[0])
        assert not inc.last_path.startswith("full"), inc.last_path
    assert inc.full_compiles == 1


def test_a_policy_change_recompiles_only_the_pods_it_selects() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web)])
    other = ep("other", {"app": "other"}, ("198.18.1.3",), node=NODE)
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, other]), NODE)
    before = {er.endpoint: er for er in inc.ruleset.endpoints}
    # A policy for "other" only: the server's rules stay the very same object.
    extra = Policy("x", "other", selector(app="other"), (Direction.INGRESS,),
                   ingress=(PolicyRule((Peer(pod_selector=selector(app="db"), namespace="x"),),
                                       (PortSpec("TCP", 5432),)),))
    more = PolicySet([*policies.policies, extra])
    rs = inc.sync(more, Inventory(NS, [SERVER, other]))
    assert inc.last_path == "incremental" and inc.full_compiles == 1
    assert_same(rs, full(more, [SERVER, other], NS, NODE))
    assert [er.endpoint for er in rs.endpoints] == ["x/other", "x/server"]
    assert rs.endpoints[1] is before["x/server"]
    # Cluster policies changing: a full compile.
    tiered = PolicySet(more.policies, (ClusterPolicy("guard", Tier.ADMIN, 0, Peer(namespace_selector=LabelSelector())),))
    inc.sync(tiered, Inventory(NS, [SERVER, other]))
    assert inc.last_path.startswith("full")


# -- explicit cases --------------------------------------------------------------

NODE = "n1"
NS = {name: Namespace(name, {"kubernetes.io/metadata.name": name, "env": "prod"}) for name in ("x", "y")}


def ep(name: str, labels: dict[str, str], ips: tuple[str, ...], node: str = "n2", ns: str = "x",
       ports: tuple[NamedPort, ...] = ()) -> Endpoint:
    return Endpoint(name=name, namespace=ns, labels=labels, node=node,
                    ips=tuple(ipaddress.ip_address(i) for i in ips),
                    interface=f"cg{name}" if node == NODE else None, ports=ports)


def selector(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


SERVER = ep("server", {"app": "server"}, ("198.18.1.1", "fd00::1:1"), node=NODE,
            ports=(NamedPort("http", 80),))


def ingress_from(*peers: Peer, name: str = "in", ports: tuple[PortSpec, ...] = (PortSpec("TCP", 80),)) -> Policy:
    return Policy("x", name, selector(app="server"), (Direction.INGRESS,), ingress=(PolicyRule(peers, ports),))


def egress_to(*peers: Peer, port: str = "http") -> Policy:
    return Policy("x", "out", selector(app="server"), (Direction.EGRESS,),
                  egress=(PolicyRule(peers, (PortSpec("TCP", port),)),))


def check(inc: IncrementalCompiler, policies: PolicySet, endpoints: list[Endpoint], path: str = "not full",
          ) -> RuleSet:
    """Equal to a full compile, made by ``path``: "incremental", "unchanged",
    "not full" (either) or "full"."""
    want = full(policies, endpoints, NS, NODE)
    assert_same(inc.ruleset, want)
    allowed = {"not full": ("incremental", "unchanged")}.get(path, (path,))
    assert inc.last_path in allowed or (path == "full" and inc.last_path.startswith("full:")), inc.last_path
    return inc.ruleset


def test_pod_joining_and_leaving_a_peer_set_reuses_everything_else() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    db = Peer(pod_selector=selector(app="db"), namespace="x")
    policies = PolicySet([ingress_from(web), ingress_from(db, name="db", ports=(PortSpec("TCP", 5432),))])
    pods = [SERVER, ep("w1", {"app": "web"}, ("198.18.1.10",)), ep("d1", {"app": "db"}, ("198.18.1.20",))]
    inc = IncrementalCompiler(policies, Inventory(NS, list(pods)), NODE)
    before = inc.ruleset
    w2 = ep("w2", {"app": "web"}, ("198.18.1.11",))
    inc.update(None, w2)
    after = check(inc, policies, [*pods, w2])
    web_set = next(s for s in after.address_sets if "app=web" in s.comment)
    assert web_set.elements == ("198.18.1.10/31",)  # adjacent addresses merge
    # The db set and the chains are the very same objects: only the web set is new.
    unchanged = [s for s in after.address_sets if s is not web_set]
    assert all(any(s is b for b in before.address_sets) for s in unchanged)
    assert after.endpoints is before.endpoints
    # w1 relabelled away: it leaves the set, the range splits back to one address.
    w1_db = dataclasses.replace(pods[1], labels={"app": "db"})
    inc.update(pods[1], w1_db)
    check(inc, policies, [SERVER, w1_db, pods[2], w2])
    # A label nobody selects on: nothing changes, not even the RuleSet object.
    same = inc.ruleset
    inc.update(w2, dataclasses.replace(w2, labels={"app": "web", "team": "t"}))
    assert inc.ruleset is same and inc.last_path == "unchanged"


def test_local_pods_no_policy_selects_patch_the_local_endpoints() -> None:
    """A local pod no policy selects has no chains, but the node holds it to its
    own addresses (RuleSet.local): coming, going, moving and changing
    address patch that list, without a full compile."""
    policies = PolicySet([ingress_from(Peer(pod_selector=selector(app="web"), namespace="x"))])
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER]), NODE)
    assert [le.endpoint for le in inc.ruleset.local] == ["x/server"]
    local = ep("l1", {"app": "other"}, ("198.18.1.30", "fd00::1:30"), node=NODE)
    inc.update(None, local)
    rs = check(inc, policies, [SERVER, local], path="incremental")
    assert [(le.endpoint, le.interface, le.ips) for le in rs.local] == [
        ("x/l1", "cgl1", ("198.18.1.30", "fd00::1:30")), ("x/server", "cgserver", ("198.18.1.1", "fd00::1:1"))]
    moved = dataclasses.replace(local, ips=(ipaddress.ip_address("198.18.1.31"),))
    inc.update(local, moved)
    check(inc, policies, [SERVER, moved], path="incremental")
    in_netns = dataclasses.replace(moved, interface=None, netns="/run/netns/l1")  # macvlan: its own namespace
    inc.update(moved, in_netns)
    assert check(inc, policies, [SERVER, in_netns], path="incremental").local[0].netns == "/run/netns/l1"
    away = dataclasses.replace(in_netns, node="n2")
    inc.update(in_netns, away)
    assert [le.endpoint for le in check(inc, policies, [SERVER, away], path="incremental").local] == ["x/server"]


def test_a_set_becoming_empty_and_non_empty_refilters_the_chain() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web)])
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER]), NODE)
    assert inc.ruleset.address_sets == () and inc.ruleset.endpoints[0].ingress[0].rules == ()
    w1 = ep("w1", {"app": "web"}, ("198.18.1.10",))
    inc.update(None, w1)  # the v4 set appears, and the rule that uses it; no v6 set
    rs = check(inc, policies, [SERVER, w1])
    assert [r.family for r in rs.endpoints[0].ingress[0].rules] == ["ip"]
    w1v6 = dataclasses.replace(w1, ips=(ipaddress.ip_address("fd00::1:10"),))
    inc.update(w1, w1v6)  # now IPv6 only: the v4 set goes, the v6 one comes
    rs = check(inc, policies, [SERVER, w1v6])
    assert [s.family for s in rs.address_sets] == ["ip6"]
    inc.update(w1v6, None)  # the last member leaves: no set, no rule
    rs = check(inc, policies, [SERVER])
    assert rs.address_sets == () and rs.endpoints[0].ingress[0].rules == ()


def test_ip_blocks_cover_pods_that_come_and_go() -> None:
    block = Peer(ip_block=IPBlock(ipaddress.ip_network("198.18.1.0/28"), (ipaddress.ip_network("198.18.1.8/30"),)))
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(block, web)])
    pods = [SERVER, ep("w1", {"app": "web"}, ("198.18.1.5",))]  # inside the block
    inc = IncrementalCompiler(policies, Inventory(NS, list(pods)), NODE)
    inc.update(pods[1], None)  # still covered by the block: unchanged
    assert inc.last_path == "unchanged"
    check(inc, policies, [SERVER], path="unchanged")
    edge = [ep("e1", {"app": "web"}, ("198.18.1.9",)), ep("e2", {"app": "web"}, ("198.18.1.16",)),
            ep("e3", {"app": "web"}, ("198.18.1.10",)), ep("e4", {"app": "web"}, ("198.18.1.11",))]
    current = [SERVER]
    for pod in edge:  # into the except hole and just past the block: joins on both sides
        inc.update(None, pod)
        current.append(pod)
        check(inc, policies, current)
    assert inc.ruleset.address_sets[0].elements == ("198.18.1.0/29", "198.18.1.9-198.18.1.16")  # .8 is still out
    for pod in (edge[2], edge[0], edge[3]):  # out of the hole again: splits
        inc.update(pod, None)
        current.remove(pod)
        check(inc, policies, current)


def test_two_pods_sharing_an_address() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web)])
    a, b = ep("a", {"app": "web"}, ("198.18.1.10",)), ep("b", {"app": "web"}, ("198.18.1.10",))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, a, b]), NODE)
    inc.update(a, None)  # b still holds the address
    check(inc, policies, [SERVER, b], path="unchanged")
    inc.update(b, None)
    check(inc, policies, [SERVER])


def test_named_ports_on_egress_resolve_on_each_destination() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace_selector=selector(env="prod"))
    block = Peer(ip_block=IPBlock(ipaddress.ip_network("198.18.2.0/24")))
    policies = PolicySet((egress_to(web), dataclasses.replace(egress_to(block), name="out-block")))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER]), NODE)
    current = [SERVER]
    steps = [
        (None, ep("w1", {"app": "web"}, ("198.18.1.10", "fd00::1:10"), ns="y", ports=(NamedPort("http", 8080),))),
        (None, ep("o1", {"app": "other"}, ("198.18.2.7",), ports=(NamedPort("http", 81), NamedPort("http", 82)))),
        (None, ep("u1", {"app": "web"}, ("198.18.1.11",), ports=(NamedPort("http", 80, "UDP"),))),  # wrong protocol
    ]
    for old, new in steps:
        inc.update(old, new)
        current.append(new)
        check(inc, policies, current)
    assert {s.name[:9] for s in inc.ruleset.port_sets} == {"named4_tc", "named6_tc"}
    w1 = current[1]
    w1b = dataclasses.replace(w1, ports=(NamedPort("http", 9090),))  # the port number changes
    inc.update(w1, w1b)
    current[1] = w1b
    check(inc, policies, current)
    o1 = current[2]
    o1b = dataclasses.replace(o1, ips=(ipaddress.ip_address("198.18.3.7"),))  # leaves the block
    inc.update(o1, o1b)
    current[2] = o1b
    check(inc, policies, current)
    inc.update(w1b, None)  # the last v6 pair goes: the v6 set and its rule with it
    current.remove(w1b)
    rs = check(inc, policies, current)
    assert [s.family for s in rs.port_sets] == [] and rs.endpoints[0].egress[0].rules == ()


def test_fallbacks_compile_in_full() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web)])
    w1 = ep("w1", {"app": "web"}, ("198.18.1.10",))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, w1]), NODE)
    assert inc.full_compiles == 1
    # A local endpoint a policy selects: its own chains, compiled again.
    s2 = ep("server2", {"app": "server"}, ("198.18.1.2",), node=NODE)
    inc.update(None, s2)
    check(inc, policies, [SERVER, w1, s2], path="incremental")
    # A remote pod moving onto the node, selected by no policy: no chains, only a peer.
    w1_local = dataclasses.replace(w1, node=NODE, interface="cgw1")
    inc.update(w1, w1_local)
    check(inc, policies, [SERVER, s2, w1_local], path="not full")
    # The same local pod now selected by a policy: chains, and back.
    w1_server = dataclasses.replace(w1_local, labels={"app": "server"})
    inc.update(w1_local, w1_server)
    check(inc, policies, [SERVER, s2, w1_server], path="incremental")
    inc.update(w1_server, w1_local)
    check(inc, policies, [SERVER, s2, w1_local], path="incremental")
    assert inc.full_compiles == 1
    # An unknown endpoint removed, an existing key added again.
    ghost = ep("ghost", {"app": "web"}, ("198.18.1.99",))
    inc.update(ghost, None)
    check(inc, policies, [SERVER, s2, w1_local], path="full")
    again = ep("server2", {"app": "web"}, ("198.18.1.3",))
    inc.update(None, again)
    check(inc, policies, [SERVER, w1_local, again], path="full")
    # New policies: rebase.
    more = PolicySet([*policies.policies, ingress_from(Peer(pod_selector=None, namespace="y"), name="from-y")])
    inc.rebase(more, Inventory(NS, [SERVER, w1_local, again]))
    check(inc, more, [SERVER, w1_local, again], path="full")
    assert inc.full_compiles == 4
    # Then the incremental path again.
    y1 = ep("y1", {}, ("198.18.1.50",), ns="y")
    inc.update(None, y1)
    check(inc, more, [SERVER, w1_local, again, y1])


def test_a_local_pod_starting_compiles_its_own_chains_and_reuses_the_rest() -> None:
    """The event a node sees most: a pod of an application that already runs
    here starts and stops. Its chains are compiled on their own; every other
    endpoint's rules stay the very same objects (the enforcer caches per object)."""
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web), egress_to(web)])
    w1 = ep("w1", {"app": "web"}, ("198.18.1.10", "fd00::1:10"), ports=(NamedPort("http", 80),))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, w1]), NODE)
    base = inc.ruleset
    before = {er.endpoint: er for er in base.endpoints}
    s2 = ep("server2", {"app": "server"}, ("198.18.1.2",), node=NODE)
    rs = inc.update(None, dataclasses.replace(s2, interface="cgs2"))
    check(inc, policies, [SERVER, w1, dataclasses.replace(s2, interface="cgs2")], path="incremental")
    assert [er.endpoint for er in rs.endpoints] == ["x/server", "x/server2"]
    assert rs.endpoints[0] is before["x/server"]
    # server2 is in no peer set: the sets are the same objects too.
    assert len(rs.address_sets) == len(base.address_sets) > 0
    assert all(a is b for a, b in zip(rs.address_sets, base.address_sets, strict=True))
    inc.update(dataclasses.replace(s2, interface="cgs2"), None)
    rs = check(inc, policies, [SERVER, w1], path="incremental")
    assert rs.endpoints == (before["x/server"],) and rs.endpoints[0] is before["x/server"]
    assert inc.full_compiles == 1


def test_a_local_pod_of_a_new_application_brings_its_sets() -> None:
    """The first pod of an application on this node needs sets no chain here
    used: they are computed from the current endpoints, then patched like the
    others; when its last pod here goes they leave the RuleSet, and they are
    still current when a pod comes back."""
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    db_from_web = Policy("x", "db", selector(app="db"), (Direction.INGRESS, Direction.EGRESS),
                         ingress=(PolicyRule((web,), (PortSpec("TCP", 5432),)),),
                         egress=(PolicyRule((Peer(pod_selector=selector(app="web"), namespace="x"),),
                                            (PortSpec("TCP", "http"),)),))
    policies = PolicySet([ingress_from(Peer(pod_selector=selector(app="other"), namespace="y")), db_from_web])
    w1 = ep("w1", {"app": "web"}, ("198.18.1.10", "fd00::1:10"), ports=(NamedPort("http", 80),))
    w2 = ep("w2", {"app": "web"}, ("198.18.1.11",), ports=(NamedPort("http", 8080),))
    current = [SERVER, w1, w2]
    inc = IncrementalCompiler(policies, Inventory(NS, current), NODE)
    assert not any("app=web" in s.comment for s in inc.ruleset.address_sets)
    db = ep("db", {"app": "db"}, ("198.18.1.5",), node=NODE)
    inc.update(None, db)
    current.append(db)
    rs = check(inc, policies, current, path="incremental")
    assert any("app=web" in s.comment for s in rs.address_sets) and rs.port_sets
    inc.update(db, None)
    current.remove(db)
    rs = check(inc, policies, current, path="incremental")
    assert not any("app=web" in s.comment for s in rs.address_sets) and not rs.port_sets
    # While no chain uses them, the sets are still patched ...
    inc.update(w2, None)
    current.remove(w2)
    check(inc, policies, current, path="unchanged")
    # ... so the pod coming back finds them current.
    inc.update(None, db)
    current.append(db)
    check(inc, policies, current, path="incremental")
    assert inc.full_compiles == 1


def test_many_local_changes_in_one_snapshot_rebase() -> None:
    """A node's pods restarting together: past ``max_local_changes`` a full
    compile is the cheaper answer."""
    policies = PolicySet([ingress_from(Peer(pod_selector=selector(app="web"), namespace="x"))])
    servers = [ep(f"s{i}", {"app": "server"}, (f"198.18.2.{i}",), node=NODE) for i in range(4)]
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER]), NODE)
    inc.sync(policies, Inventory(NS, [SERVER, *servers[:2]]), max_local_changes=2)
    check(inc, policies, [SERVER, *servers[:2]], path="incremental")
    inc.sync(policies, Inventory(NS, [SERVER, *servers]), max_local_changes=1)
    check(inc, policies, [SERVER, *servers], path="full")


def test_duplicate_keys_always_compile_in_full() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web)])
    a, a2 = ep("a", {"app": "web"}, ("198.18.1.10",)), ep("a", {"app": "web"}, ("198.18.1.11",))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, a, a2]), NODE)
    b = ep("b", {"app": "web"}, ("198.18.1.12",))
    inc.update(None, b)
    check(inc, policies, [SERVER, a, a2, b], path="full")


def test_duplicate_keys_with_a_named_port_egress_set() -> None:
    """Found by the sync property test: two different endpoints under one key
    that an egress named-port set reaches. The per-set bookkeeping is keyed by
    endpoint, so priming it raised; with duplicate keys there is none to prime."""
    policies = PolicySet([egress_to(Peer(pod_selector=selector(app="web"), namespace="x"))])
    a = ep("a", {"app": "web"}, ("198.18.1.10", "fd00::1:10"), ports=(NamedPort("http", 80),))
    a2 = dataclasses.replace(a, ips=(ipaddress.ip_address("198.18.1.8"),))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, a, a2]), NODE)
    check(inc, policies, [SERVER, a, a2], path="full")
    inc.sync(policies, Inventory(NS, [SERVER, a2, a, a2]))
    check(inc, policies, [SERVER, a2, a, a2], path="full")


def test_digest_is_per_set_and_tells_sets_apart() -> None:
    one = AddressSet("s", "ip", ("198.18.0.1",))
    assert one.digest == AddressSet("s", "ip", ("198.18.0.1",)).digest
    assert one.digest != AddressSet("s", "ip", ("198.18.0.1", "198.18.0.3")).digest
    assert AddressSet("s", "ip", ()).digest != AddressSet("s", "ip", ("",)).digest
    assert AddressSet("s", "ip", ("a\nb",)).digest != AddressSet("s", "ip", ("a", "b")).digest
    assert RuleSet("n", (one,)).digest() != RuleSet("n", (AddressSet("t", "ip", ("198.18.0.1",)),)).digest()


hostile_text = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(hostile_text, st.one_of(st.none(), hostile_text), st.one_of(st.none(), hostile_text), st.booleans(),
       st.lists(st.tuples(hostile_text, st.sampled_from(list(Verdict)), hostile_text, st.booleans()), max_size=4))
def test_endpoint_digest_is_the_hash_of_its_json(endpoint: str, interface: str | None, netns: str | None,
                                                 audit: bool, chains: list[tuple[str, Verdict, str, bool]]) -> None:
    """The digest put together from each rule's cached JSON text is the hash of
    the canonical JSON of the whole endpoint, for any strings (quotes, control
    characters, non-ASCII), so pinned digests and live tables keep matching."""
    built = [Chain(name, (Rule(verdict, "ip", f"peers4_{i}", origins=(Origin(policy, "ingress", i),)),) if some
                   else (), verdict) for i, (name, verdict, policy, some) in enumerate(chains)]
    er = EndpointRules(endpoint, interface, ("198.18.0.1", "fd00::1"), tuple(built[::2]), tuple(built[1::2]),
                       netns=netns, audit=audit)
    assert er.digest == hashlib.sha256(json.dumps(er.to_json(), sort_keys=True, separators=(",", ":"))
                                       .encode()).hexdigest()


def test_sync_diffs_by_identity_then_key_and_falls_back_when_unsure() -> None:
    web = Peer(pod_selector=selector(app="web"), namespace="x")
    policies = PolicySet([ingress_from(web)])
    a, b = ep("a", {"app": "web"}, ("198.18.1.10",)), ep("b", {"app": "web"}, ("198.18.1.20",))
    inc = IncrementalCompiler(policies, Inventory(NS, [SERVER, a, b]), NODE)
    copy_of_a = dataclasses.replace(a)  # equal, not identical: no change
    inc.sync(policies, Inventory(NS, [SERVER, copy_of_a, b]))
    check(inc, policies, [SERVER, a, b], path="unchanged")
    inc.sync(policies, Inventory(NS, [SERVER, copy_of_a, copy_of_a]))  # the same object twice: b is gone
    check(inc, policies, [SERVER, a, a], path="full")
    inc.sync(policies, Inventory(NS, [SERVER, a]))
    check(inc, policies, [SERVER, a], path="full")  # from duplicate keys back to unique ones: in full
    inc.sync(policies, Inventory(NS, [SERVER, a, dataclasses.replace(a, ips=(ipaddress.ip_address("198.18.1.30"),))]))
    assert inc.last_path.startswith("full:")  # a key twice
    inc.sync(policies, Inventory(NS, [SERVER, b]))
    inc.sync(policies, Inventory(NS, [b, SERVER, a]))  # reordered, a added
    check(inc, policies, [SERVER, a, b], path="incremental")
    inc.sync(policies, Inventory(NS, [dataclasses.replace(SERVER, labels={"app": "other"}), a, b]))
    check(inc, policies, [dataclasses.replace(SERVER, labels={"app": "other"}), a, b], path="incremental")  # local
    # After a sync, positions are compared with its list: same-position replacements,
    # appends and drops at the end are diffed there; anything odd goes to full.
    server = SERVER
    inc.sync(policies, Inventory(NS, [server, a, b]))
    c, c2 = ep("c", {"app": "web"}, ("198.18.1.40",)), ep("c", {"app": "web"}, ("198.18.1.41",))
    inc.sync(policies, Inventory(NS, [server, a, b, c, c2]))  # one new key twice
    assert inc.last_path.startswith("full:")
    inc.sync(policies, Inventory(NS, [server, a, b]))
    a_as_b = dataclasses.replace(b, ips=(ipaddress.ip_address("198.18.1.50"),))
    inc.sync(policies, Inventory(NS, [server, a_as_b, b]))  # a replaced by a second "b"
    assert inc.last_path.startswith("full:")
    inc.sync(policies, Inventory(NS, [server, a, b]))
    inc.sync(policies, Inventory(NS, [server, dataclasses.replace(a, labels={}), b, c]))
    check(inc, policies, [server, dataclasses.replace(a, labels={}), b, c], path="incremental")


def test_random_changes_on_a_synthetic_cluster() -> None:
    """Realistic selectors (namespace selectors, matchExpressions, egress named
    ports on many pods, ipBlocks) from bench/synth.py, 60 seeded random changes."""
    import random

    from bench.synth import Spec, generate, to_model

    cluster = generate(Spec(pods=800, namespaces=20, policies=200, hot=30, v6_every=2, seed=7))
    inventory, policies = to_model(cluster)
    rng = random.Random(7)
    inc = IncrementalCompiler(policies, inventory, cluster.node)
    endpoints = list(inventory.endpoints)
    paths: dict[str, int] = {}
    for k in range(60):
        old = rng.choice(endpoints)
        what = rng.choice(["add", "remove", "relabel", "ips", "ports", "caller"])
        new: Endpoint | None
        if what == "add":
            old, new = None, dataclasses.replace(old, name=f"added-{k}", node=f"node-{rng.randrange(1, 8)}",
                                                 interface=None, labels=dict(old.labels),
                                                 ips=(ipaddress.ip_address(int(old.ips[0]) + 60000 + k),))
        elif what == "remove":
            new = None
        elif what == "relabel":
            new = dataclasses.replace(old, labels={**old.labels, "tier": rng.choice(["web", "api", "db", "cache"])})
        elif what == "ips":
            new = dataclasses.replace(old, ips=old.ips[:1] if len(old.ips) > 1 else
                                      (*old.ips, ipaddress.ip_address(f"fd00:cb::{rng.randrange(1, 900):x}")))
        elif what == "ports":
            new = dataclasses.replace(old, ports=(NamedPort("http", rng.choice([80, 8080, 81])),
                                                  NamedPort("dns", 53, "UDP")))
        else:
            labels = dict(old.labels)
            if labels.pop("bench-caller", None) is None:
                labels["bench-caller"] = "yes"
            new = dataclasses.replace(old, labels=labels)
        got = inc.update(old, new)
        if old is not None:
            endpoints.remove(old)
        if new is not None:
            endpoints.append(new)
        assert_same(got, Compiler(policies, Inventory(inventory.namespaces, list(endpoints))).compile(cluster.node))
        paths[inc.last_path.split(":")[0]] = paths.get(inc.last_path.split(":")[0], 0) + 1
    assert paths.get("incremental", 0) >= 20, paths
