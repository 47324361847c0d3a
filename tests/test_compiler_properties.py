"""The compiled IR, run by the Python interpreter, agrees with the evaluator.

Random inventories and policy sets; every (source, destination, port,
protocol) tuple over both families, plus addresses outside the inventory.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.compiler import Compiler
from callgate.compiler.addresses import address_text, address_value
from callgate.compiler.interpret import Interpreter
from callgate.policy import Evaluator
from callgate.policy.model import Inventory, PolicySet
from tests.strategies import PORTS, inventories, inventories_with_nodes, policy_sets, tiered_policy_sets

EXTERNAL = ("198.18.0.200", "203.0.113.7", "fd00::ff", "2001:db8::1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets())
def test_ir_agrees_with_evaluator(inventory: Inventory, policies: PolicySet) -> None:
    check_every_tuple(inventory, policies, EXTERNAL)


def check_every_tuple(inventory: Inventory, policies: PolicySet, external: tuple[str, ...]) -> None:
    compiler = Compiler(policies, inventory)
    rulesets = [compiler.compile(node) for node in inventory.nodes()]
    ir = Interpreter(rulesets)
    ev = Evaluator(policies, inventory)
    addresses = [str(ip) for ep in inventory.endpoints for ip in ep.ips] + list(external)
    for src in addresses:
        for dst in addresses:
            if src == dst or (":" in src) != (":" in dst):
                continue
            for port in (*PORTS, 79, 1000):
                for proto in ("TCP", "UDP", "SCTP"):
                    expected = ev.allowed(src, dst, port, proto)
                    got = ir.allowed(src, dst, port, proto)
                    assert got == expected, (src, dst, port, proto, ev.evaluate(src, dst, port, proto).reasons())


@settings(max_examples=40, deadline=None)
@given(inventories(), policy_sets())
def test_compile_is_deterministic(inventory: Inventory, policies: PolicySet) -> None:
    for node in inventory.nodes():
        first = Compiler(policies, inventory).compile(node)
        reversed_policies = PolicySet(list(reversed(policies.policies)))
        second = Compiler(reversed_policies, inventory).compile(node)
        assert first.digest() == second.digest()
        assert first.to_json() == second.to_json()


def test_element_arithmetic_agrees_with_ipaddress() -> None:
    """The IR's element parser (plain arithmetic, for speed) and address count."""
    import ipaddress

    from callgate.compiler.addresses import elements_size, parse_element
    from callgate.compiler.ir import AddressSet

    def reference(text: str) -> tuple[int, int]:
        if "-" in text:
            lo, hi = text.split("-")
            return int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))
        net = ipaddress.ip_network(text, strict=False)
        return int(net.network_address), int(net.broadcast_address)

    samples = ["198.18.0.1", "198.18.0.0/31", "198.18.4.0/22", "0.0.0.0/0", "198.18.0.3-198.18.0.9",
               "198.18.0.7/30", "fd00::1", "fd00::/127", "fd00:18:2::/47", "::/0", "fd00::5-fd00::9",
               "::ffff:198.18.0.1"]
    for text in samples:
        assert parse_element(text) == reference(text), text
    v4 = samples[:5]
    want = sum(hi - lo + 1 for lo, hi in map(reference, v4))
    assert elements_size(v4) == want
    assert AddressSet("s", "ip", tuple(v4)).address_count == want  # counted when the builder did not say


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories_with_nodes(), tiered_policy_sets())
def test_tiered_ir_agrees_with_evaluator(inventory: Inventory, policies: PolicySet) -> None:
    """The same with ClusterNetworkPolicies of both tiers in the mix: ordered
    Accept/Deny/Pass rules, priorities, networks over pod addresses, node peers,
    unresolvable peers failing closed, named ports."""
    check_every_tuple(inventory, policies, (*EXTERNAL, "198.18.0.1", "198.18.0.2", "fd00::1"))


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_address_text_and_value_are_inverses_and_agree_with_ipaddress(ip: IPv4Address | IPv6Address) -> None:
    """The IR's address text (address_text) and its reading back (address_value,
    which the nft backend sorts dispatch elements by) are what ipaddress says."""
    text = address_text(int(ip), ip.version)
    assert text == str(ip)
    assert address_value(text) == (ip.version, int(ip))
