"""A storm of denied packets at one pod, with deny logging on (issue #16's benchmark).

One node namespace, four pods (bench/lab.py's routed design): ``attacker``
sends UDP at ``victim`` (a deny-all policy isolates it), paced at ``--pps``
(the issue's 100,000 packets a second; 0 = as fast as bench/loadgen.c can),
while ``cli`` sends UDP to ``srv`` (allowed) as fast as it can. Per round,
three measurements of cli → srv, each ``seconds`` long, in an order that
rotates from round to round so that a drift of the machine's load hits them
alike: without a storm, with the storm and the flow log on (callgate's table
with ``FlowLogging``, the agent's flow-log service reading NFLOG in this
process), and with the same storm but no flow log (the same table without
logging: the control, since on a two-core machine the storm's own sending
and forwarding take CPU from everyone, logged or not).

Each measurement of cli → srv is done twice: as fast as cli can send (its
throughput, which on two cores any other CPU load takes from), and paced at
50,000 packets a second (what it delivers: lost only if the datapath starves).

What it reports (medians over the rounds): the storm's denied packet rate
(every denied packet passes either the rate limit's counted rule or the log
rule, so logged + limited = denied), the records written, the flow-log
service's CPU (this process's user + system time over the storm: it only
waits for subprocesses otherwise), the whole machine's busy cores under
each storm (/proc/stat), and the others' rate under the storm as a fraction
of their rate without it, with and without logging.

Run as root: ``python -m bench.flowlog_storm --seconds 5 --rounds 3 --pps 100000``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datapath import build_loadgen, measure_udp
from bench.lab import TwoPodLab, _pod, ns_exec, start_ready, stop_group, two_pod_lab
from bench.synth import HOT_UDP_PORT
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
OTHERS_PPS = 50_000  # the paced pair: well below what one core forwards, so only a starved datapath loses packets

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


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat's first line)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def measure_paced(lab: TwoPodLab, loadgen: Path, seconds: float, pps: float) -> float:
    """cli → srv paced at ``pps``: the rate the sink received (packets a second)."""
    sink = start_ready(ns_exec(lab.server.netns, str(loadgen), "udp-sink", str(HOT_UDP_PORT), str(seconds)))
    try:
        subprocess.run(ns_exec(lab.client.netns, str(loadgen), "udp-blast", lab.server.ip, str(HOT_UDP_PORT),
                               str(seconds + 1), "64", f"{pps:g}"),
                       capture_output=True, text=True, check=True, timeout=seconds + 60)
        out, _ = sink.communicate(timeout=seconds + 30)
    finally:
        stop_group(sink)
    count, elapsed = out.split()
    return int(count) / float(elapsed) if float(elapsed) > 0 else 0.0


def _storm(attacker: str, loadgen: Path, seconds: float, pps: float) -> subprocess.Popen[str]:
    return subprocess.Popen(ns_exec(attacker, str(loadgen), "udp-blast", IPS["victim"], str(STORM_PORT),
                                    str(seconds), "64", f"{pps:g}"),
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)


ORDERS = (("quiet", "unlogged", "logged"), ("unlogged", "logged", "quiet"), ("logged", "quiet", "unlogged"))


def run(seconds: float, rounds: int, pps: float) -> dict[str, Any]:
    loadgen = build_loadgen()
    tmp = Path(tempfile.mkdtemp(prefix="cgb-flowlog-"))
    (tmp / "inventory.yaml").write_text(_inventory())
    (tmp / "policies.yaml").write_text(POLICIES)
    inventory, policies = load_inventory(tmp / "inventory.yaml"), load_policies(tmp / "policies.yaml")
    ruleset = compile_node(policies, inventory, NODE)
    logging = FlowLogging(GROUP)
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "storm_pps": pps, "others_paced_pps": OTHERS_PPS,
                           "rate_limit": logging.rate,
                           "cpus": os.cpu_count(), "load_before": os.getloadavg(), "samples": []}
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

        def records() -> float:
            return sum(metrics.value("callgate_flow_log_records_total", verdict=v)
                       for v in ("deny", "allow", "would-deny"))

        def measure(kind: str, sample: dict[str, Any]) -> None:
            if kind == "quiet":
                plain_table.apply(ruleset, incremental=False)
                sample["others_pps_quiet"] = measure_udp(lab, loadgen, seconds)
                sample["paced_pps_quiet"] = measure_paced(lab, loadgen, seconds, OTHERS_PPS)
                return
            table = logged_table if kind == "logged" else plain_table
            table.apply(ruleset, incremental=False)
            storm = _storm(attacker.netns, loadgen, 2 * seconds + 5, pps)
            try:
                time.sleep(0.5)
                # Counted over the same window as the CPU: from the storm's steady state on.
                records_before = records()
                limited_before = logged_table.rule_counters().flow_log_limited if kind == "logged" else 0
                cpu, wall, busy = _cpu(), time.monotonic(), _machine_busy()
                others = measure_udp(lab, loadgen, seconds)
                sample[f"paced_pps_storm_{kind}"] = measure_paced(lab, loadgen, seconds, OTHERS_PPS)
                cpu, wall = _cpu() - cpu, time.monotonic() - wall
                busy_after = _machine_busy()
                sample[f"others_pps_storm_{kind}"] = others
                sample[f"machine_busy_cores_{kind}"] = ((busy_after[0] - busy[0]) / (busy_after[1] - busy[1])
                                                        * (os.cpu_count() or 1))
                if kind == "logged":
                    limited = logged_table.rule_counters().flow_log_limited - limited_before
                    time.sleep(0.1)  # the kernel's last batch (it flushes every 50 ms)
                    written = records() - records_before
                    sample.update({"denied_pps": (limited + written) / wall, "records": written,
                                   "records_per_s": written / wall, "flowlog_cpu_cores": cpu / wall,
                                   "overruns": metrics.value("callgate_flow_log_overruns_total")})
            finally:
                stop_group(storm)

        try:
            for n in range(rounds):
                sample: dict[str, Any] = {"order": list(ORDERS[n % len(ORDERS)])}
                for kind in ORDERS[n % len(ORDERS)]:
                    measure(kind, sample)
                quiet = sample["others_pps_quiet"]
                sample["ratio_unlogged"] = sample["others_pps_storm_unlogged"] / quiet if quiet else 0.0
                sample["ratio_logged"] = sample["others_pps_storm_logged"] / quiet if quiet else 0.0
                paced = sample["paced_pps_quiet"]
                sample["paced_ratio_unlogged"] = sample["paced_pps_storm_unlogged"] / paced if paced else 0.0
                sample["paced_ratio_logged"] = sample["paced_pps_storm_logged"] / paced if paced else 0.0
                out["samples"].append(sample)
        finally:
            flows.stop()
            plain_table.remove()
            kernel.close()
    for key in ("ratio_logged", "ratio_unlogged", "denied_pps", "flowlog_cpu_cores", "records_per_s",
                "others_pps_quiet", "others_pps_storm_logged", "others_pps_storm_unlogged",
                "machine_busy_cores_logged", "machine_busy_cores_unlogged", "paced_ratio_logged",
                "paced_ratio_unlogged", "paced_pps_quiet"):
        out[key] = statistics.median(s[key] for s in out["samples"])
    out["load_after"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.flowlog_storm", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pps", type=float, default=100_000.0,
                    help="the storm's rate in packets a second (0: as fast as the sender can)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.seconds, args.rounds, args.pps)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))  # one line: python -m bench reads the last line


if __name__ == "__main__":
    main()
