"""The compiled IR, run by the Python interpreter, agrees with the evaluator.

Random inventories and policy sets; every (source, destination, port,
protocol) tuple over both families, plus addresses outside the inventory.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from callgate.compiler import Compiler
from callgate.compiler.interpret import Interpreter
from callgate.policy import Evaluator
from callgate.policy.model import Inventory, PolicySet
from tests.strategies import PORTS, inventories, policy_sets

EXTERNAL = ("198.18.0.200", "203.0.113.7", "fd00::ff", "2001:db8::1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets())
def test_ir_agrees_with_evaluator(inventory: Inventory, policies: PolicySet) -> None:
    compiler = Compiler(policies, inventory)
    rulesets = [compiler.compile(node) for node in inventory.nodes()]
    ir = Interpreter(rulesets)
    ev = Evaluator(policies, inventory)
    addresses = [str(ip) for ep in inventory.endpoints for ip in ep.ips] + list(EXTERNAL)
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
