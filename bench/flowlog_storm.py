"""A storm of denied packets at one pod, with deny logging on (issue #16's benchmark).

One node namespace, four pods (bench/lab.py's routed design): ``attacker``
blasts UDP at ``victim`` (a deny-all policy isolates it) as fast as
bench/loadgen.c can, while ``cli`` sends UDP to ``srv`` (allowed). Per round,
three measurements of cli → srv, each ``seconds`` long: without a storm,
with the storm and the flow log on (callgate's table with ``FlowLogging``,
the agent's flow-log service reading NFLOG in this process), and with the
storm but no flow log (the same table without logging: the control, since on
a two-core machine the blaster itself takes a core from everyone).

What it reports: the storm's denied packet rate (every denied packet passes
either the rate limit's counted rule or the log rule, so logged + limited =
denied), the records written, the flow-log service's CPU (this process's
user + system time over the storm: it only waits for subprocesses otherwise),
and the others' rate under the storm as a fraction of their rate without it,
with and without logging.

Run as root: ``python -m bench.flowlog_storm --seconds 5 --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datapath import _stop, build_loadgen, measure_udp
from bench.lab import _pod, ns_exec, two_pod_lab
from callgate.agent.flowlog.decode import FlowContext
from callgate.agent.flowlog.service import FlowLogService
from callgate.agent.flowlog.writer import FlowLogWriter
from callgate.agent.metrics import AgentMetrics
from callgate.compiler import compile_node
from callgate.enforcers.base import FlowLogging
from callgate.enforcers.nflog import NflogSocket
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import LibNftables
from callgate.policy import load_inventory, load_policies

GROUP = 62
NODE = "bench"
IPS = {"srv": "198.18.0.2", "cli": "198.18.0.3", "victim": "198.18.0.4", "attacker": "198.18.0.5"}
IFACES = {"srv": "cgbs0", "cli": "cgbc0", "victim": "cgbv0", "attacker": "cgba0"}
STORM_PORT = 9999

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: victim-deny-all, namespace: b}
spec: {podSelector: {matchLabels: {app: victim}}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-from-cli, namespace: b}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress: [{from: [{podSelector: {matchLabels: {app: cli}}}]}]
"""


def _inventory() -> str:
    lines = ["apiVersion: callgate/v1", "kind: Inventory", "namespaces: {b: {labels: {ns: b}}}", "endpoints:"]
    lines += [f"- {{name: {n}, namespace: b, labels: {{app: {n}}}, node: {NODE}, interface: {IFACES[n]}, "
              f"ips: [{IPS[n]}]}}" for n in IPS]
    return "\n".join(lines) + "\n"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _storm(attacker: str, loadgen: Path, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(ns_exec(attacker, str(loadgen), "udp-blast", IPS["victim"], str(STORM_PORT),
                                    str(seconds), "64"), stdout=subprocess.DEVNULL, text=True, start_new_session=True)


def run(seconds: float, rounds: int) -> dict[str, Any]:
    loadgen = build_loadgen()
    tmp = Path(tempfile.mkdtemp(prefix="cgb-flowlog-"))
    (tmp / "inventory.yaml").write_text(_inventory())
    (tmp / "policies.yaml").write_text(POLICIES)
    inventory, policies = load_inventory(tmp / "inventory.yaml"), load_policies(tmp / "policies.yaml")
    ruleset = compile_node(policies, inventory, NODE)
    logging = FlowLogging(GROUP)
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "rate_limit": logging.rate, "samples": []}
    with two_pod_lab(IPS["srv"], IPS["cli"], IFACES["srv"], IFACES["cli"]) as lab:
        _pod(lab.node, "vic", IFACES["victim"], IPS["victim"])  # nothing listens: the packets are dropped before
        attacker = _pod(lab.node, "att", IFACES["attacker"], IPS["attacker"])
        kernel = LibNftables(lab.node)
        metrics = AgentMetrics()
        flows = FlowLogService(NflogSocket(GROUP, lab.node), FlowLogWriter(str(tmp / "flows.jsonl")), metrics)
        flows.update(FlowContext(NODE, ruleset, inventory, policies))
        flows.start()
        logged_table = NftablesEnforcer(kernel, flow_logging=logging)
        plain_table = NftablesEnforcer(kernel)
        try:
            for _ in range(rounds):
                plain_table.apply(ruleset, incremental=False)
                quiet = measure_udp(lab, loadgen, seconds)
                storm = _storm(attacker.netns, loadgen, seconds + 2)
                time.sleep(0.5)
                control = measure_udp(lab, loadgen, seconds)
                _stop(storm)
                logged_table.apply(ruleset, incremental=False)
                records_before = sum(metrics.value("callgate_flow_log_records_total", verdict=v)
                                     for v in ("deny", "allow", "would-deny"))
                limited_before = logged_table.rule_counters().flow_log_limited
                storm = _storm(attacker.netns, loadgen, seconds + 2)
                time.sleep(0.5)
                cpu, wall = _cpu(), time.monotonic()
                logged = measure_udp(lab, loadgen, seconds)
                cpu, wall = _cpu() - cpu, time.monotonic() - wall
                limited = logged_table.rule_counters().flow_log_limited - limited_before
                _stop(storm)
                time.sleep(0.3)  # the last batch of records
                records = sum(metrics.value("callgate_flow_log_records_total", verdict=v)
                              for v in ("deny", "allow", "would-deny")) - records_before
                out["samples"].append({
                    "others_pps_quiet": quiet, "others_pps_storm_unlogged": control, "others_pps_storm_logged": logged,
                    "ratio_unlogged": control / quiet if quiet else 0.0, "ratio_logged": logged / quiet if quiet else 0.0,
                    "denied_pps": (limited + records) / wall, "records": records, "records_per_s": records / wall,
                    "flowlog_cpu_cores": cpu / wall,
                    "overruns": metrics.value("callgate_flow_log_overruns_total")})
        finally:
            flows.stop()
            plain_table.remove()
            kernel.close()
    for key in ("ratio_logged", "ratio_unlogged", "denied_pps", "flowlog_cpu_cores", "records_per_s"):
        out[key] = statistics.median(s[key] for s in out["samples"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.flowlog_storm", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.seconds, args.rounds)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))  # one line: python -m bench reads the last line


if __name__ == "__main__":
    main()
