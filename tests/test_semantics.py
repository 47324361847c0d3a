"""The reference evaluator against hand-written Kubernetes expectations.

Each case states what the Kubernetes NetworkPolicy documentation (and, for
scenarios 08-10, the network-policy-api ClusterNetworkPolicy field
documentation) says must happen, written out by hand — not derived from the
evaluator — for the scenarios in tests/scenarios/ over the standard model.
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
    # Admin tier: first matching rule by priority, then written order; Pass hands over to NetworkPolicy.
    ("08-admin-tier.yaml", "y/a", "x/b", 80, "TCP", 4, True),  # Accept
    ("08-admin-tier.yaml", "y/a", "x/b", 81, "TCP", 4, False),  # Pass, then x's policy (TCP 80 only)
    ("08-admin-tier.yaml", "y/b", "x/a", 80, "TCP", 6, True),  # Pass, then x's policy allows
    ("08-admin-tier.yaml", "y/b", "x/a", 80, "UDP", 4, False),
    ("08-admin-tier.yaml", "z/a", "x/b", 80, "TCP", 4, False),  # Deny beats x's own allow
    ("08-admin-tier.yaml", "z/b", "x/c", 81, "UDP", 6, True),  # priority 5 Accept before priority 10 Deny
    ("08-admin-tier.yaml", "x/a", "x/b", 80, "TCP", 4, True),  # no Admin rule matches
    ("08-admin-tier.yaml", "x/a", "z/c", 81, "UDP", 4, False),  # egress Deny: networks hold pod addresses
    ("08-admin-tier.yaml", "x/a", "z/c", 81, "UDP", 6, False),
    ("08-admin-tier.yaml", "x/a", "z/c", 81, "TCP", 4, True),
    ("08-admin-tier.yaml", "z/a", "y/a", 80, "TCP", 4, True),  # CNPs isolate nothing by themselves
    # Baseline tier: only where no NetworkPolicy isolates the pod in that direction.
    ("09-baseline-tier.yaml", "x/a", "y/b", 80, "TCP", 4, False),  # Baseline Deny
    ("09-baseline-tier.yaml", "y/a", "x/b", 81, "UDP", 6, True),  # Baseline Accept from y
    ("09-baseline-tier.yaml", "x/a", "x/b", 80, "TCP", 4, False),
    ("09-baseline-tier.yaml", "x/a", "z/b", 80, "TCP", 4, True),  # z's own policy overrides the Baseline
    ("09-baseline-tier.yaml", "x/a", "z/b", 81, "UDP", 4, False),  # the source's Baseline egress Deny
    ("09-baseline-tier.yaml", "y/a", "z/b", 81, "UDP", 4, True),  # y/a's egress is isolated: no Baseline
    ("09-baseline-tier.yaml", "y/c", "x/a", 80, "TCP", 4, True),
    ("09-baseline-tier.yaml", "z/a", "z/b", 81, "UDP", 6, False),
    # Apps are in the NetworkPolicy tier; unresolvable peers fail closed.
    ("10-apps-and-fail-closed.yaml", "y/a", "x/a", 80, "TCP", 4, True),  # an App caller
    ("10-apps-and-fail-closed.yaml", "z/a", "x/a", 80, "TCP", 4, False),  # an Admin Deny beats an App caller
    ("10-apps-and-fail-closed.yaml", "y/a", "x/a", 81, "TCP", 4, False),
    ("10-apps-and-fail-closed.yaml", "y/b", "x/b", 80, "TCP", 4, True),  # Pass for cluster pods
    ("10-apps-and-fail-closed.yaml", "y/b", "x/a", 80, "TCP", 6, False),  # passed, then the App says no
    ("10-apps-and-fail-closed.yaml", "z/c", "y/c", 81, "UDP", 4, False),  # Deny via domainNames: deny all
    ("10-apps-and-fail-closed.yaml", "z/c", "y/c", 80, "UDP", 4, True),  # ... on its ports only
    ("10-apps-and-fail-closed.yaml", "x/b", "z/b", 81, "TCP", 4, True),
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


def test_cluster_tiers_reach_addresses_outside_the_inventory() -> None:
    ev = Evaluator(load_policies(SCENARIOS / "10-apps-and-fail-closed.yaml"), INV)
    # y/b's allow-list: the domainNames Accept matches nothing, cluster pods are
    # passed on, anything else is denied by networks 0.0.0.0/0.
    assert not ev.allowed("198.18.2.11", "203.0.113.7", 80)
    assert ev.allowed("198.18.2.12", "203.0.113.7", 80)  # y/c is not the subject


def test_reasons_name_the_deciding_tier_policy_priority_and_rule() -> None:
    ev = Evaluator(load_policies(SCENARIOS / "08-admin-tier.yaml"), INV)
    denied = ev.evaluate("198.18.3.10", "198.18.1.11", 80, "TCP")
    assert not denied.allowed and denied.ingress.decided_by == "Admin"
    assert denied.ingress.reasons() == [
        "ingress of destination: Admin tier: denied by ClusterNetworkPolicy tenant-x (Admin tier, priority 10) "
        "ingress[1] 'no-z'"]
    passed = ev.evaluate("198.18.2.11", "198.18.1.10", 80, "TCP")
    assert passed.allowed and passed.ingress.decided_by == "NetworkPolicy"
    assert passed.ingress.reasons()[0].endswith("passed to the next tier by ClusterNetworkPolicy tenant-x "
                                                "(Admin tier, priority 10) ingress[2] 'y-decides'")
    assert "allowed by NetworkPolicy x/web-from-anywhere ingress[0]" in passed.ingress.reasons()[1]
    baseline = Evaluator(load_policies(SCENARIOS / "09-baseline-tier.yaml"), INV)
    side = baseline.evaluate("198.18.1.10", "198.18.3.11", 81, "UDP").egress
    assert side.decided_by == "Baseline" and not side.allowed
    assert side.reasons()[-1] == ("egress of source: Baseline tier: denied by BaselineAdminNetworkPolicy default "
                                  "(Baseline tier, priority 1000) egress[0] 'no-81-udp-to-z'")
    closed = Evaluator(load_policies(SCENARIOS / "10-apps-and-fail-closed.yaml"), INV)
    side = closed.evaluate("198.18.3.12", "198.18.2.12", 81, "UDP").egress
    assert side.baseline is not None and side.baseline.fail_closed
    assert "a peer callgate cannot resolve fails closed" in side.reasons()[-1]


def test_external_address_only_ipblock_matches() -> None:
    ev = Evaluator(load_policies(SCENARIOS / "04-ipblock-except.yaml"), INV)
    assert ev.allowed("198.18.2.200", "198.18.2.11", 80)  # outside the inventory, inside the block
    assert not ev.allowed("198.18.1.200", "198.18.2.11", 80)
