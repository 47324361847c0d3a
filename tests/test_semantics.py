"""The reference evaluator against hand-written Kubernetes expectations.

Each case states what the Kubernetes NetworkPolicy documentation says must
happen, written out by hand — not derived from the evaluator — for the
scenarios in tests/scenarios/ over the standard model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.policy import Evaluator, load_policies
from tests.helpers import standard

SCENARIOS = Path(__file__).parent / "scenarios"
INV = standard()


def verdict(scenario: str, src: str, dst: str, port: int, proto: str = "TCP", family: int = 4) -> bool:
    ev = Evaluator(load_policies(SCENARIOS / scenario), INV)
    s, d = INV.endpoint(src), INV.endpoint(dst)
    assert s is not None and d is not None
    sip = next(i for i in s.ips if i.version == family)
    dip = next(i for i in d.ips if i.version == family)
    return ev.allowed(sip, dip, port, proto)  # type: ignore[arg-type]


CASES = [
    # scenario, src, dst, port, proto, family, expected
    ("01-deny-all-ingress-x.yaml", "y/a", "x/a", 80, "TCP", 4, False),
    ("01-deny-all-ingress-x.yaml", "x/b", "x/a", 81, "UDP", 6, False),
    ("01-deny-all-ingress-x.yaml", "x/a", "y/a", 80, "TCP", 4, True),  # egress not isolated
    ("01-deny-all-ingress-x.yaml", "x/a", "x/a", 80, "TCP", 4, True),  # a pod reaches itself
    ("02-same-namespace-pod.yaml", "x/b", "x/a", 80, "TCP", 4, True),
    ("02-same-namespace-pod.yaml", "x/b", "x/a", 80, "UDP", 4, False),  # protocol defaults to TCP
    ("02-same-namespace-pod.yaml", "x/b", "x/a", 81, "TCP", 6, False),
    ("02-same-namespace-pod.yaml", "y/b", "x/a", 80, "TCP", 4, False),  # pod=b but in y
    ("02-same-namespace-pod.yaml", "y/b", "x/c", 80, "TCP", 4, True),  # x/c not selected
    ("03-namespace-and-pod.yaml", "y/a", "x/a", 80, "TCP", 4, True),
    ("03-namespace-and-pod.yaml", "y/c", "x/a", 81, "UDP", 6, True),  # named port
    ("03-namespace-and-pod.yaml", "y/c", "x/a", 81, "TCP", 4, False),
    ("03-namespace-and-pod.yaml", "z/c", "x/a", 80, "TCP", 4, True),  # AND of both selectors
    ("03-namespace-and-pod.yaml", "z/a", "x/a", 80, "TCP", 4, False),
    ("03-namespace-and-pod.yaml", "x/b", "x/a", 80, "TCP", 4, False),
    ("04-ipblock-except.yaml", "z/a", "y/b", 80, "TCP", 4, True),
    ("04-ipblock-except.yaml", "z/c", "y/b", 80, "TCP", 4, False),  # except
    ("04-ipblock-except.yaml", "z/c", "y/b", 80, "TCP", 6, False),
    ("04-ipblock-except.yaml", "y/a", "y/b", 81, "UDP", 6, True),
    ("04-ipblock-except.yaml", "x/a", "y/b", 80, "TCP", 4, False),
    ("05-match-expressions.yaml", "x/a", "z/b", 80, "UDP", 4, True),
    ("05-match-expressions.yaml", "y/b", "z/c", 81, "UDP", 6, True),
    ("05-match-expressions.yaml", "x/c", "z/b", 80, "UDP", 4, False),  # NotIn c
    ("05-match-expressions.yaml", "z/b", "z/c", 80, "UDP", 4, False),  # ns z not In
    ("05-match-expressions.yaml", "x/a", "z/b", 80, "TCP", 4, False),  # UDP range only
    ("05-match-expressions.yaml", "y/b", "z/a", 80, "TCP", 4, True),  # z/a not selected
    ("06-egress.yaml", "y/a", "z/b", 80, "TCP", 4, True),
    ("06-egress.yaml", "y/a", "z/b", 81, "TCP", 4, False),
    ("06-egress.yaml", "y/a", "x/c", 81, "UDP", 6, True),  # named port on the destination
    ("06-egress.yaml", "y/a", "x/b", 81, "UDP", 4, False),
    ("06-egress.yaml", "y/a", "y/b", 80, "TCP", 4, False),
    ("06-egress.yaml", "y/c", "z/a", 80, "TCP", 4, False),  # no egress rules at all
    ("06-egress.yaml", "y/b", "y/a", 80, "TCP", 4, True),  # y/a's ingress is not isolated
    ("07-allow-all-and-both-sides.yaml", "y/c", "x/b", 80, "TCP", 6, True),
    ("07-allow-all-and-both-sides.yaml", "z/b", "x/b", 80, "TCP", 4, False),  # source egress denies
    ("07-allow-all-and-both-sides.yaml", "z/b", "x/b", 80, "UDP", 4, True),
    ("07-allow-all-and-both-sides.yaml", "z/b", "y/b", 81, "UDP", 6, True),
    ("07-allow-all-and-both-sides.yaml", "z/b", "y/a", 81, "UDP", 4, False),
]


@pytest.mark.parametrize(("scenario", "src", "dst", "port", "proto", "family", "expected"), CASES)
def test_kubernetes_semantics(scenario: str, src: str, dst: str, port: int, proto: str, family: int,
                              expected: bool) -> None:
    assert verdict(scenario, src, dst, port, proto, family) is expected


def test_reasons_name_the_policy_and_rule() -> None:
    ev = Evaluator(load_policies(SCENARIOS / "03-namespace-and-pod.yaml"), INV)
    v = ev.evaluate("198.18.3.12", "198.18.1.10", 80, "TCP")
    assert v.allowed
    assert any("NetworkPolicy x/a-from-y-and-zc ingress[0]" in r for r in v.reasons())
    denied = ev.evaluate("198.18.1.11", "198.18.1.10", 80, "TCP")
    assert not denied.allowed
    assert any("isolated by NetworkPolicy x/a-from-y-and-zc; no rule matches" in r for r in denied.reasons())


def test_external_address_only_ipblock_matches() -> None:
    ev = Evaluator(load_policies(SCENARIOS / "04-ipblock-except.yaml"), INV)
    assert ev.allowed("198.18.2.200", "198.18.2.11", 80)  # outside the inventory, inside the block
    assert not ev.allowed("198.18.1.200", "198.18.2.11", 80)
