"""Performance work must not change what the compiler emits, byte for byte.

Two guards:

* digests pinned BEFORE any optimisation (commit be56ea6's compiler) for a few
  seeded synthetic clusters from ``bench/synth.py``, with a fingerprint of the
  generated input so that a change to the generator is told apart from a
  change to the compiler;
* the optimised compiler against a frozen copy of the original
  (``bench/reference``), on the same clusters for every node and on random
  hypothesis inputs (selectors of every operator, named ports, ipBlocks).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings

from bench.reference.compile import Compiler as ReferenceCompiler
from bench.synth import Spec, generate, to_model
from callgate.compiler.compile import Compiler
from callgate.policy.model import Inventory, PolicySet
from tests.strategies import inventories, policy_sets

# spec, sha256 of the generated documents, {node: RuleSet digest}
PINNED: list[tuple[Spec, str, dict[str, str]]] = [
    (Spec(pods=300, namespaces=20, policies=120, hot=30, seed=1),
     "4ad6311a35053e65eba04dbe7aa873df300f00bc02f11c851f1bd7c196a8db9c",
     {"node-0": "0b52d55056d06985560cf9fa2ced2cb5d63e360cf4d8aedbf30978439d96a51f",
      "node-1": "fc42a362b637049e0f70f982799fb670a7119d7a2ad16906864e4904330ed1a3"}),
    (Spec(pods=600, namespaces=12, policies=200, hot=60, seed=2, nodes=3),
     "009919cbc4a1b2dcf0662b7002923d1396171c7753723f48b89cbab3411f5dee",
     {"node-0": "e95bf4da385a3f13fc5be2e571a7a00e3db1194d401fad7fd82030731a878a22",
      "node-1": "42bf1130edd7f3024eed3c6f4036e2d5e08fe472cfe9f8d7156c0fd4c3bc56c5"}),
    (Spec(pods=2000, namespaces=100, policies=400, hot=100, seed=3),
     "7b0ce9e308e91eb5b8d183605ae33ea83a9cbbe2e7a32d625a92f58fc3e7e425",
     {"node-0": "db8b3125cde8a2ad4f48cc2dda20a095ad1b6ec34fbf99291768cf5a4daeacd6",
      "node-1": "00178a9b092c6714658f1a690363da013755f8ab48b9ed7ea3faf3404b8d829e"}),
]


def _fingerprint(spec: Spec) -> str:
    cluster = generate(spec)
    return hashlib.sha256(json.dumps([cluster.inventory, cluster.policies], sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize(("spec", "inputs", "digests"), PINNED, ids=[f"seed{s.seed}" for s, _, _ in PINNED])
def test_pinned_digests(spec: Spec, inputs: str, digests: dict[str, str]) -> None:
    assert _fingerprint(spec) == inputs, (
        "bench/synth.py now generates different input for this spec: re-pin the digests, computing "
        "them with bench.reference.compile.Compiler (the pre-optimisation compiler), not the current one")
    inventory, policies = to_model(generate(spec))
    compiler = Compiler(policies, inventory)
    assert {node: compiler.compile(node).digest() for node in digests} == digests


@pytest.mark.parametrize("spec", [s for s, _, _ in PINNED], ids=[f"seed{s.seed}" for s, _, _ in PINNED])
def test_same_ir_as_reference_on_every_node(spec: Spec) -> None:
    inventory, policies = to_model(generate(spec))
    new, old = Compiler(policies, inventory), ReferenceCompiler(policies, inventory)
    for node in inventory.nodes():
        got, want = new.compile(node), old.compile(node)
        assert got.to_json() == want.to_json(), node
        assert got.digest() == want.digest()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), policy_sets())
def test_same_ir_as_reference_on_random_inputs(inventory: Inventory, policies: PolicySet) -> None:
    new, old = Compiler(policies, inventory), ReferenceCompiler(policies, inventory)
    for node in inventory.nodes():
        assert new.compile(node).to_json() == old.compile(node).to_json()
