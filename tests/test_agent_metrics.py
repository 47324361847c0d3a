"""Per-policy counters read from the kernel at scrape time (fake kernel)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from callgate.agent.metrics import AgentMetrics
from callgate.compiler import Compiler, RuleSet
from callgate.enforcers.iptables.enforcer import IptablesEnforcer
from callgate.enforcers.iptables.fake import FakeIptables
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.fake import FakeNftKernel
from tests.helpers import policies_from, standard

# The longest a NetworkPolicy name may be is 253 characters (a DNS subdomain).
LONG = "allow-from-y-" + "x" * 230
POLICIES = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {LONG}, namespace: x}}
spec:
  podSelector: {{}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]
    ports: [{{port: 80}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: short, namespace: x}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}]
"""


class CountingKernel(FakeNftKernel):
    """Every rule has matched 3 packets of 100 bytes."""

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        listed = super().list_table(family, name)
        for obj in listed or []:
            for expr in obj.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    expr["counter"] = {"packets": 3, "bytes": 300}
        return listed


def scrape(metrics: AgentMetrics) -> dict[tuple[str, str, str], float]:
    """(metric, policy, direction) -> value, for the per-policy series."""
    out = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.startswith("callgate_policy_"):
                out[(sample.name, sample.labels["policy"], sample.labels["direction"])] = sample.value
    return out


def test_policy_counters_survive_a_policy_name_longer_than_a_rule_comment(tmp_path: Path) -> None:
    inv = standard()
    ruleset = Compiler(policies_from(tmp_path, POLICIES), inv).compile("node-1")
    enforcer = NftablesEnforcer(CountingKernel())
    enforcer.apply(ruleset)
    metrics = AgentMetrics()
    metrics.watch_enforcer(enforcer)
    series = scrape(metrics)
    # node-1 runs x/a and x/c; each policy rule decides for both (and both
    # families) through one counting chain: one counter of 3 packets each.
    assert series[("callgate_policy_packets_total", f"NetworkPolicy x/{LONG}", "ingress")] == 3
    assert series[("callgate_policy_bytes_total", f"NetworkPolicy x/{LONG}", "ingress")] == 300
    assert series[("callgate_policy_packets_total", "NetworkPolicy x/short", "egress")] == 3
    assert len(series) == 4
    assert b"callgate_fail_closed_dropped_packets_total 0.0" in generate_latest(metrics.registry)
    # The source checks are counted apart: the drop of each of the five local interfaces'
    # source chains, two in the bridge table (seven counters of 3 packets).
    assert b"callgate_spoofed_dropped_packets_total 21.0" in generate_latest(metrics.registry)


def test_a_backend_without_counters_exports_no_policy_series(tmp_path: Path) -> None:
    ruleset = Compiler(policies_from(tmp_path, POLICIES), standard()).compile("node-1")
    enforcer = IptablesEnforcer(FakeIptables())
    enforcer.apply(ruleset)
    metrics = AgentMetrics()
    metrics.watch_enforcer(enforcer)
    assert scrape(metrics) == {}
    assert b"callgate_fail_closed_dropped_packets" not in generate_latest(metrics.registry)


def test_rule_ids_from_another_ruleset_are_not_counted(tmp_path: Path) -> None:
    """Live rules the applied RuleSet does not know (applied by someone else,
    or before the mapping the agent holds) are left out, not mislabelled."""
    enforcer = NftablesEnforcer(CountingKernel())
    enforcer.apply(Compiler(policies_from(tmp_path, POLICIES), standard()).compile("node-1"))
    metrics = AgentMetrics()
    metrics.watch_enforcer(enforcer)
    enforcer.applied = dataclasses.replace(enforcer.applied, ruleset=RuleSet(node="node-1"))  # type: ignore[arg-type]
    assert scrape(metrics) == {}


def test_the_metrics_port_does_not_answer_for_the_cni_gate() -> None:
    """The metrics port is on the node address, reachable from every pod: /metrics and
    the probes are there, /programmed (pod names, the gate) only on the unix socket."""
    import urllib.error
    import urllib.request

    from callgate.agent.metrics import StatusServer

    class Alive:
        def healthy(self) -> tuple[bool, str]:
            return True, "ok"

        def ready(self) -> tuple[bool, str]:
            return True, "ok"

    server = StatusServer("127.0.0.1:0", AgentMetrics(), Alive())
    server.start()
    try:
        base = f"http://{server.address}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/programmed?pod=x/d", timeout=5)
        assert refused.value.code == 404
    finally:
        server.stop()
