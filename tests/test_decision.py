"""The decision lowering: tiers of rules -> one decision per (address, protocol, port).

Held equal, on random inputs, to the rule-by-rule walk (the program), to the
IR interpreter and, for NetworkPolicy inputs, to the reference evaluator:

* hand-built IR with ALLOW / DENY / PASS rules across several tiers, any
  defaults, address sets with prefixes and ranges overlapping each other,
  named-port pairs, port ranges, rules without ports, both families;
* random inventories and NetworkPolicies compiled by the compiler.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.compiler import Compiler
from callgate.compiler.addresses import interval_text, merge
from callgate.compiler.decision import PROTOCOL_NUMBERS, DecisionTable, Sources, lookup, lower, programs
from callgate.compiler.interpret import Interpreter
from callgate.compiler.ir import (
    AddressPortSet,
    AddressSet,
    Chain,
    EndpointRules,
    L4Match,
    Origin,
    PortRange,
    Rule,
    RuleSet,
    Verdict,
)
from callgate.policy import Evaluator
from callgate.policy.model import Inventory, PolicySet
from tests.strategies import PORTS, inventories, inventories_with_nodes, policy_sets, tiered_policy_sets

V4 = int(ipaddress.IPv4Address("198.18.0.0"))
V6 = int(ipaddress.IPv6Address("fd00::"))
BASE = {"ip": V4, "ip6": V6}
PROTOCOLS: tuple[str | None, ...] = ("tcp", "udp", "sctp", None)  # None: another protocol (ICMP)


# -- hand-built IR --------------------------------------------------------------------

@st.composite
def address_sets(draw: Any, family: str, name: str) -> AddressSet:
    base = BASE[family]
    intervals = []
    for _ in range(draw(st.integers(1, 4))):
        lo = draw(st.integers(0, 40))
        intervals.append((base + lo, base + lo + draw(st.sampled_from([0, 0, 1, 3, 7]))))
    version = 4 if family == "ip" else 6
    return AddressSet(name, family, tuple(interval_text(lo, hi, version) for lo, hi in merge(intervals)))  # type: ignore[arg-type]


@st.composite
def port_sets(draw: Any, family: str, protocol: str, name: str) -> AddressPortSet:
    base = BASE[family]
    version = 4 if family == "ip" else 6
    pairs = draw(st.sets(st.tuples(st.integers(0, 40), st.sampled_from([80, 81, 443, 8080])), min_size=1, max_size=5))
    elements = tuple(sorted((interval_text(base + a, base + a, version), p) for a, p in pairs))
    return AddressPortSet(name, family, protocol, elements)  # type: ignore[arg-type]


l4s = st.one_of(
    st.none(),
    st.builds(L4Match, st.sampled_from(["tcp", "udp", "sctp"]), st.just(())),
    st.builds(L4Match, st.sampled_from(["tcp", "udp"]),
              st.lists(st.sampled_from([PortRange(80, 80), PortRange(81, 81), PortRange(80, 443),
                                        PortRange(8000, 8080), PortRange(443, 443)]), min_size=1, max_size=2)
              .map(lambda rs: tuple(sorted(set(rs))))),
)


@st.composite
def hand_built(draw: Any) -> tuple[RuleSet, EndpointRules]:
    sets = [draw(address_sets(f, f"peers{f}_{i}")) for f in ("ip", "ip6") for i in range(3)]
    pair_sets = [draw(port_sets(f, p, f"named{f}_{p}")) for f in ("ip", "ip6") for p in ("tcp", "udp")]
    by_family = {f: [s for s in sets if s.family == f] for f in ("ip", "ip6")}
    tiers = []
    counter = 0
    for t in range(draw(st.integers(1, 3))):
        rules = []
        for _ in range(draw(st.integers(0, 5))):
            counter += 1
            verdict = draw(st.sampled_from(list(Verdict)))
            origins = (Origin(f"Policy p{counter}", "ingress", 0),)
            kind = draw(st.sampled_from(["set", "set", "any", "family", "pairs"]))
            family = draw(st.sampled_from(["ip", "ip6"]))
            if kind == "set":
                rules.append(Rule(verdict, family, draw(st.sampled_from(by_family[family])).name, None, draw(l4s),
                                  origins))
            elif kind == "pairs":
                ps = draw(st.sampled_from([p for p in pair_sets if p.family == family]))
                rules.append(Rule(verdict, family, None, ps.name, L4Match(ps.protocol), origins))
            elif kind == "family":
                rules.append(Rule(verdict, family, None, None, draw(l4s), origins))
            else:
                rules.append(Rule(verdict, None, None, None, draw(l4s), origins))
        tiers.append(Chain(f"in_t{t}", tuple(rules), draw(st.sampled_from(list(Verdict)))))
    endpoint = EndpointRules("x/a", "cga0", ("198.18.9.9", "fd00::9:9"), ingress=tuple(tiers))
    return RuleSet("n", tuple(sets), tuple(pair_sets), (endpoint,)), endpoint


def packets(family: str) -> list[tuple[int, str | None, int]]:
    base = BASE[family]
    return [(base + a, proto, port) for a in (*range(0, 50, 3), 7, 8, 1 << 20) for proto in PROTOCOLS
            for port in (80, 81, 443, 444, 8080, 8081, 1)]


def check_table(table: DecisionTable, sources: Sources, family: str) -> None:
    for address, proto, port in packets(family):
        assert lookup(table, address, proto, port) == table.program.decide_packet(sources, address, proto, port), (
            address - BASE[family], proto, port)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hand_built())
def test_lowered_tiers_decide_as_the_walk_and_the_interpreter(case: tuple[RuleSet, EndpointRules]) -> None:
    ruleset, endpoint = case
    sources = Sources(ruleset)
    interpreter = Interpreter([ruleset])
    for (direction, family), program in programs(endpoint).items():
        assert direction == "ingress"
        table = lower(program, sources)
        check_table(table, sources, family)
        version = 4 if family == "ip" else 6
        for address, proto, port in packets(family):
            if proto is None:
                continue
            want = interpreter.run_tiers(endpoint.ingress, address, version, port, proto)
            assert lookup(table, address, proto, port).verdict is want


def test_a_deny_in_an_earlier_tier_beats_an_allow_and_pass_falls_through() -> None:
    sets = (AddressSet("peers4_a", "ip", ("198.18.0.0/30",)), AddressSet("peers4_b", "ip", ("198.18.0.2",)))
    o = (Origin("AdminNetworkPolicy x", "ingress", 0),)
    p = (Origin("AdminNetworkPolicy y", "ingress", 0),)
    n = (Origin("NetworkPolicy z/allow", "ingress", 0),)
    admin = Chain("in_admin", (Rule(Verdict.DENY, "ip", "peers4_b", l4=L4Match("tcp", (PortRange(80, 80),)), origins=o),
                               Rule(Verdict.PASS, "ip", "peers4_a", origins=p)), Verdict.PASS)
    np = Chain("in_np", (Rule(Verdict.ALLOW, "ip", "peers4_a", l4=L4Match("tcp"), origins=n),), Verdict.DENY)
    ep = EndpointRules("x/a", "cga0", (), ingress=(admin, np))
    rs = RuleSet("n", sets, (), (ep,))
    table = lower(programs(ep)[("ingress", "ip")], Sources(rs))
    b, a, outside = V4 + 2, V4 + 1, V4 + 9
    deny_id, allow_id = admin.rules[0].id, np.rules[0].id
    assert lookup(table, b, "tcp", 80).rule == deny_id and lookup(table, b, "tcp", 80).verdict is Verdict.DENY
    assert lookup(table, b, "tcp", 81).rule == allow_id  # passed by the admin tier, allowed by the NP tier
    assert lookup(table, a, "udp", 53).verdict is Verdict.DENY and lookup(table, a, "udp", 53).rule is None
    assert lookup(table, outside, "tcp", 81).verdict is Verdict.DENY  # admin default PASS, NP default DENY


def test_the_program_name_depends_on_structure_not_on_elements() -> None:
    rule = Rule(Verdict.ALLOW, "ip", "peers4_a", l4=L4Match("tcp", (PortRange(80, 80),)),
                origins=(Origin("NetworkPolicy x/a", "ingress", 0),))
    ep = EndpointRules("x/a", "cga0", (), ingress=(Chain("in_a", (rule,), Verdict.DENY),))
    other = EndpointRules("x/b", "cgb0", (), ingress=(Chain("in_b", (rule,), Verdict.DENY),))
    a = programs(ep)[("ingress", "ip")]
    assert a.name == programs(other)[("ingress", "ip")].name  # shared by endpoints with equal rules
    one = RuleSet("n", (AddressSet("peers4_a", "ip", ("198.18.0.1",)),), (), (ep,))
    two = RuleSet("n", (AddressSet("peers4_a", "ip", ("198.18.0.1", "198.18.0.5")),), (), (ep,))
    assert lower(a, Sources(one)).program.name == lower(a, Sources(two)).program.name
    assert lower(a, Sources(one)).ported != lower(a, Sources(two)).ported


# -- NetworkPolicy inputs, end to end against the evaluator ------------------------

class DecisionInterpreter:
    """Interpreter.allowed, with each endpoint direction answered by its lowered table."""

    def __init__(self, rulesets: list[RuleSet]) -> None:
        self.tables: dict[tuple[int, str, str], DecisionTable] = {}
        self.owner: dict[int, EndpointRules] = {}
        for rs in rulesets:
            sources = Sources(rs)
            for ep in rs.endpoints:
                for ip in ep.ips:
                    self.owner[int(ipaddress.ip_address(ip))] = ep
                    for (direction, family), program in programs(ep).items():
                        self.tables[(int(ipaddress.ip_address(ip)), direction, family)] = lower(program, sources)

    def _side(self, owner_ip: int, direction: str, peer: Any, port: int, proto: str) -> bool:
        family = "ip" if peer.version == 4 else "ip6"
        table = self.tables.get((owner_ip, direction, family))
        ep = self.owner.get(owner_ip)
        if table is None:
            return ep is None or not (ep.ingress if direction == "ingress" else ep.egress)
        return lookup(table, int(peer), proto, port).verdict is Verdict.ALLOW

    def allowed(self, src: str, dst: str, port: int, protocol: str) -> bool:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if self.owner.get(int(s)) is not None and self.owner.get(int(s)) is self.owner.get(int(d)):
            return True
        proto = protocol.lower()
        return self._side(int(s), "egress", d, port, proto) and self._side(int(d), "ingress", s, port, proto)


EXTERNAL = ("198.18.0.200", "203.0.113.7", "fd00::ff", "2001:db8::1")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets())
def test_lowered_network_policies_agree_with_the_evaluator(inventory: Inventory, policies: PolicySet) -> None:
    check_against_the_evaluator(inventory, policies, EXTERNAL)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories_with_nodes(), tiered_policy_sets())
def test_lowered_cluster_tiers_agree_with_the_evaluator(inventory: Inventory, policies: PolicySet) -> None:
    """ClusterNetworkPolicies of both tiers around the NetworkPolicies (ordered
    Accept/Deny/Pass rules, priorities, networks over pod addresses, node peers,
    unresolvable peers failing closed, named ports): the lowered Admin,
    NetworkPolicy and Baseline tiers decide every packet as the evaluator does."""
    check_against_the_evaluator(inventory, policies, (*EXTERNAL, "198.18.0.1", "198.18.0.2", "fd00::1"))


def check_against_the_evaluator(inventory: Inventory, policies: PolicySet, external: tuple[str, ...]) -> None:
    compiler = Compiler(policies, inventory)
    rulesets = [compiler.compile(node) for node in inventory.nodes()]
    tables = DecisionInterpreter(rulesets)
    ev = Evaluator(policies, inventory)
    for rs in rulesets:  # and every table agrees with its own program packet by packet
        sources = Sources(rs)
        for ep in rs.endpoints:
            for (_direction, family), program in programs(ep).items():
                check_table(lower(program, sources), sources, family)
    ips = [str(ip) for ep in inventory.endpoints for ip in ep.ips] + list(external)
    for src in ips:
        for dst in ips:
            if src == dst or (":" in src) != (":" in dst):
                continue
            for port in (*PORTS, 79, 1000):
                for proto in ("TCP", "UDP", "SCTP"):
                    assert tables.allowed(src, dst, port, proto) == ev.allowed(src, dst, port, proto), (
                        src, dst, port, proto, ev.evaluate(src, dst, port, proto).reasons())


def test_protocol_numbers_are_the_iana_ones() -> None:
    import socket

    assert PROTOCOL_NUMBERS == {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hand_built())
def test_decisions_at_one_address_are_the_lowered_cells(case: tuple[RuleSet, EndpointRules]) -> None:
    from callgate.compiler.decision import decisions_at

    ruleset, endpoint = case
    sources = Sources(ruleset)
    for (_direction, family), program in programs(endpoint).items():
        table = lower(program, sources)
        classes = program.port_classes(sources)
        for address in {a for a, _, _ in packets(family)}:
            rest, per_class = decisions_at(program, classes, sources, address)
            assert rest == lookup(table, address, None, 0)
            for cls, decision in zip(classes, per_class, strict=True):
                assert decision == lookup(table, address, cls.protocol, cls.first)
