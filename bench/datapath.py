"""Datapath and apply benchmarks in a two-pod network-namespace lab.

Tables in the lab node's ``forward`` hook, measured round-robin in the same
run so that machine load hits them alike:

* ``none``: no table at all (the baseline; no connection tracking either);
* ``conntrack``: a forward chain with only ``ct state established,related
  accept``: the floor of any conntrack-based (stateful) enforcer;
* ``empty``: callgate's table with no endpoints (conntrack + dispatch maps);
* ``callgate``: the node's full compiled RuleSet, as ``replace_table`` emits it
  (layout 5: one decision-map look-up per packet);
* ``walk``: the same RuleSet as layout 3 rendered it (a rule per port
  specification and family, each a peer-set look-up), for the before/after
  comparison in the same rounds;
* ``linear``: the walk with the server's peer sets unrolled into one rule per
  element (``ip saddr 198.18.x.y tcp dport 80 accept`` ...), what a set-less
  (iptables-style) enforcer does. The rules that admit the client are placed
  last in their group, so the client's packets walk every rule before them:
  the worst case, and the one that shows the gap.
* ``callgate-tiers``: the table of the same cluster with ClusterNetworkPolicies
  beside its NetworkPolicies (when given): each tier of the client's egress and
  the server's ingress is one decision-map look-up, a Pass goes on to the next.

Load: ``bench/loadgen.c`` (compiled here with gcc): TCP connect/request/
response/close (netperf's TCP_CRR) for new connections per second, and 64-byte
unreplied UDP for packets per second (every such packet is conntrack NEW and
goes through the decision; established TCP would leave at the first rule).

The same lab times the apply of the full transaction and of incremental
changes through :class:`~callgate.enforcers.nft.enforcer.NftablesEnforcer`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import ipaddress
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import nf_profile
from bench.lab import TwoPodLab, ns_exec, start_ready, stop_group, two_pod_lab
from bench.synth import HOT_TCP_PORT, HOT_UDP_PORT, LABEL_CALLER, V4_BASE, Cluster
from callgate.compiler import Compiler, IncrementalCompiler
from callgate.compiler.addresses import parse_element
from callgate.compiler.ir import Rule, RuleSet, Verdict
from callgate.enforcers.base import ApplyResult
from callgate.enforcers.nft.commands import address_set_command
from callgate.enforcers.nft.decisions import build_layout
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.enforcers.nft.kernel import Command, LibNftables
from callgate.enforcers.nft.layout import DIGEST_SET, FAMILY, FORWARD, TABLE
from callgate.enforcers.nft.transaction import replace_table
from callgate.policy.documents import gc_paused
from callgate.policy.model import (
    Direction,
    Endpoint,
    Inventory,
    IPBlock,
    LabelSelector,
    Peer,
    Policy,
    PolicyRule,
    PolicySet,
    PortSpec,
)

HERE = Path(__file__).resolve().parent


def build_loadgen() -> Path:
    """Compile bench/loadgen.c into a temporary directory (gcc is on every Debian dev machine)."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build bench/loadgen.c (apt-get install gcc)")
    out = Path(tempfile.mkdtemp(prefix="cgb-loadgen-")) / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(HERE / "loadgen.c")], check=True)
    return out


# -- the previous layout (a walk over rules), and the linear table ----------------

def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _walk_verdict(verdict: Verdict, direction: str, next_tier: str | None) -> dict[str, Any]:
    if verdict is Verdict.PASS:
        return {"goto": {"target": next_tier}} if next_tier else _walk_verdict(Verdict.ALLOW, direction, None)
    if verdict is Verdict.DENY:
        return {"drop": None}
    return {"return": None} if direction == "egress" else {"accept": None}


def walk_rule_exprs(rule: Rule, direction: str, next_tier: str | None) -> list[dict[str, Any]]:
    """One IR rule as layout 3 (before decision maps) rendered it: the peer set
    look-up, then the port match, then counter and verdict."""
    field = "saddr" if direction == "ingress" else "daddr"
    exprs: list[dict[str, Any]] = []
    if rule.peer_set is not None:
        exprs.append(_match(_payload(str(rule.family), field), "@" + rule.peer_set))
    elif rule.family is not None and rule.peer_port_set is None:
        exprs.append(_match({"meta": {"key": "nfproto"}}, {"ip": "ipv4", "ip6": "ipv6"}[rule.family]))
    if rule.peer_port_set is not None:
        assert rule.l4 is not None
        left = {"concat": [_payload(str(rule.family), field), _payload(rule.l4.protocol, "dport")]}
        exprs.append(_match(left, "@" + rule.peer_port_set))
    elif rule.l4 is not None:
        if rule.l4.ports:
            items: list[Any] = [p.first if p.first == p.last else {"range": [p.first, p.last]} for p in rule.l4.ports]
            exprs.append(_match(_payload(rule.l4.protocol, "dport"), items[0] if len(items) == 1 else {"set": items}))
        else:
            exprs.append(_match({"meta": {"key": "l4proto"}}, rule.l4.protocol))
    exprs.append({"counter": None})
    exprs.append(_walk_verdict(rule.verdict, direction, next_tier))
    return exprs


def walk_commands(ruleset: RuleSet) -> list[Command]:
    """The table as layout 3 built it behind today's dispatch: every peer set
    (hash sets where the addresses can be enumerated) and, per endpoint
    direction, a chain per tier walking one rule per port specification and
    family, instead of the decision part. Measured in the same rounds as the
    decision maps that replaced it."""
    current = list(replace_table(ruleset).commands)
    layout = build_layout(ruleset)
    decision = layout.names()

    def is_decision(cmd: Command) -> bool:
        (_verb, body), = cmd.items()
        (kind, obj), = body.items()
        name = obj.get("chain") if kind == "rule" else obj.get("name")
        return obj.get("family") == FAMILY and kind in ("map", "set", "chain", "rule") and name in decision

    digest_at = next(i for i, c in enumerate(current) if c.get("add", {}).get("set", {}).get("name") == DIGEST_SET)
    walk: list[Command] = [address_set_command(s) for s in ruleset.address_sets]
    for s in ruleset.port_sets:
        body = {"family": FAMILY, "table": TABLE, "name": s.name,
                "type": [{"ip": "ipv4_addr", "ip6": "ipv6_addr"}[s.family], "inet_service"]}
        if s.elements:
            body["elem"] = [{"concat": [a, p]} for a, p in s.elements]
        walk.append({"add": {"set": body}})
    for ep in ruleset.endpoints:
        for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
            walk.extend({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": c.name}}} for c in tiers)
            for i, chain in enumerate(tiers):
                next_tier = tiers[i + 1].name if i + 1 < len(tiers) else None
                walk.extend(_rule_cmd(chain.name, walk_rule_exprs(r, direction, next_tier)) for r in chain.rules)
                walk.append(_rule_cmd(chain.name, [{"counter": None},
                                                   _walk_verdict(chain.default, direction, next_tier)]))
    rest = [c for c in current[digest_at + 1:] if not is_decision(c)]  # the dispatch part
    return [*current[:digest_at + 1], *walk, *rest]


def _element_value(text: str) -> Any:
    if "/" in text:
        addr, length = text.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in text:
        lo, hi = text.split("-", 1)
        return {"range": [lo, hi]}
    return text


def linear_commands(ruleset: RuleSet, server_iface: str, client_ip: str) -> tuple[list[Command], int]:
    """The walk layout with the server's ingress peer sets unrolled into one
    rule per element. Returns (commands, rules in that chain)."""
    commands = walk_commands(ruleset)
    server = next(e for e in ruleset.endpoints if e.interface == server_iface)
    chain = server.ingress[0]
    client = int(ipaddress.ip_address(client_ip))
    rules: list[Command] = []
    for rule in chain.rules:
        if rule.peer_set is None:
            rules.append(_rule_cmd(chain.name, walk_rule_exprs(rule, "ingress", None)))
            continue
        template = walk_rule_exprs(rule, "ingress", None)
        elements = list(ruleset.address_set(rule.peer_set).elements)
        # The client's element last: its packets walk all the others first.
        elements.sort(key=lambda e: _contains(e, client))
        for element in elements:
            exprs = copy.deepcopy(template)
            exprs[0]["match"]["right"] = _element_value(element)
            rules.append(_rule_cmd(chain.name, exprs))
    rules.append(_rule_cmd(chain.name, [{"counter": None}, {"drop": None}]))
    out: list[Command] = []
    for cmd in commands:
        body = cmd.get("add", {})
        if "rule" in body and body["rule"]["chain"] == chain.name:
            continue
        out.append(cmd)
        if "chain" in body and body["chain"]["name"] == chain.name:
            out.extend(rules)
    return out, len(rules)


def conntrack_only(commands: list[Command]) -> list[Command]:
    """A table's transaction cut down to the inet table and, in its forward
    hook, ``ct state established,related accept`` alone: the floor any
    conntrack-based (stateful) enforcer pays, measured apart from callgate's
    dispatch maps and anti-spoofing. (The rule sits in a per-family chain
    behind the dispatch; here it goes into the base chain itself.)"""
    out: list[Command] = []
    established: list[Any] | None = None
    for cmd in commands:
        (_verb, body), = cmd.items()
        (kind, obj), = body.items()
        if obj.get("family") != FAMILY:
            continue
        if kind == "rule" and any("ct" in e.get("match", {}).get("left", {}) for e in obj["expr"]):
            established = established or obj["expr"]
        elif kind == "table" or (kind == "chain" and obj["name"] == FORWARD):
            out.append(cmd)
    assert established is not None, "no ct state rule in the table"
    out.append(_rule_cmd(FORWARD, established))
    return out


def _contains(element: str, value: int) -> bool:
    if ":" in element:
        return False
    lo, hi = parse_element(element)
    return lo <= value <= hi


def _rule_cmd(chain: str, exprs: list[Any]) -> Command:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": exprs}}}


# -- load ------------------------------------------------------------------------

def measure_crr(lab: TwoPodLab, loadgen: Path, seconds: float, procs: int = 2) -> float:
    server = start_ready(ns_exec(lab.server.netns, str(loadgen), "crr-server", str(HOT_TCP_PORT), str(procs)))
    try:
        out = subprocess.run(ns_exec(lab.client.netns, str(loadgen), "crr-client", lab.server.ip,
                                     str(HOT_TCP_PORT), str(seconds), str(procs)),
                             capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        stop_group(server)
    count, elapsed = out.split()
    return int(count) / float(elapsed)


def measure_udp(lab: TwoPodLab, loadgen: Path, seconds: float, size: int = 64) -> float:
    sink = start_ready(ns_exec(lab.server.netns, str(loadgen), "udp-sink", str(HOT_UDP_PORT), str(seconds)))
    try:
        subprocess.run(ns_exec(lab.client.netns, str(loadgen), "udp-blast", lab.server.ip, str(HOT_UDP_PORT),
                               str(seconds + 1), str(size)),
                       capture_output=True, text=True, check=True, timeout=seconds + 60)
        out, _ = sink.communicate(timeout=seconds + 30)
    finally:
        stop_group(sink)
    count, elapsed = out.split()
    return int(count) / float(elapsed) if float(elapsed) > 0 else 0.0


# -- the run ---------------------------------------------------------------------

AMPLIFY = 32  # decisions per packet in the decision-cost measurement


def amplified(commands: list[Command], chain: str) -> list[Command]:
    """A table whose forward hook makes every new packet go through ``chain``
    (the server's ingress decision) :data:`AMPLIFY` times: the same sets, maps
    and chains, every accept or drop turned into a return so that the next
    pass runs, and the forward chain cut to ``ct state`` + the jumps. The
    decision then dominates a packet's cost, so its price shows through the
    noise of a shared machine: ns per decision = (1/pps - 1/pps of an empty
    probe) / AMPLIFY."""
    out: list[Command] = []
    for cmd in commands:
        body = cmd.get("add", {})
        if "rule" in body:
            rule = body["rule"]
            if rule["chain"] == FORWARD:
                continue
            exprs = [{"return": None} if ("accept" in e or "drop" in e) else e for e in rule["expr"]]
            cmd = {"add": {"rule": {**rule, "expr": exprs}}}
        elif "chain" in body and body["chain"]["name"] == FORWARD:
            continue
        out.append(cmd)
    table = {"family": FAMILY, "table": TABLE}
    out.append({"add": {"chain": {**table, "name": FORWARD, "type": "filter", "hook": "forward", "prio": 0,
                                  "policy": "accept"}}})
    established = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
    out.append(_rule_cmd(FORWARD, [established, {"accept": None}]))
    out.extend(_rule_cmd(FORWARD, [{"jump": {"target": chain}}]) for _ in range(AMPLIFY))
    return out


def empty_probe() -> list[Command]:
    """The amplified baseline: the same jumps into a chain that only returns."""
    table = {"family": FAMILY, "name": TABLE}
    cmds: list[Command] = [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
                           {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": "probe"}}},
                           _rule_cmd("probe", [{"return": None}])]
    return amplified(cmds, "probe")


def decision_cost(lab: TwoPodLab, loadgen: Path, tables: dict[str, list[Command]], kernel: LibNftables,
                  rounds: int, seconds: float, log: Any) -> dict[str, list[float]]:
    """UDP packets/s through each amplified table, rotating per round."""
    samples: dict[str, list[float]] = {name: [] for name in tables}
    names = list(tables)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            kernel.run(tables[name])
            samples[name].append(measure_udp(lab, loadgen, seconds))
        log(f"  decision cost round {r + 1}/{rounds}: " + ", ".join(f"{n} {samples[n][-1]:,.0f} pps" for n in names))
    return samples


def ported_client(cluster: Cluster, inventory: Inventory, policies: PolicySet) -> str:
    """The IPv4 address of a pod on another node that only rules with ports
    admit to the server (the hot policies' TCP 80 / UDP 5001 rules), the
    highest such: the case this benchmark is about. A pod that a rule without
    ports admits is decided by that rule, first in both layouts; one admitted
    by the ported rules alone is where layout 3 walked a rule per port
    specification and family (three set look-ups for UDP) and layout 5 looks
    one cell up."""
    ruleset = Compiler(policies, inventory).compile(cluster.node)
    server = next(e for e in ruleset.endpoints if e.endpoint == cluster.server)
    rules = [r for r in server.ingress[0].rules if r.family == "ip" and r.peer_set is not None]
    anywhere = [ruleset.address_set(r.peer_set).intervals for r in rules if r.l4 is None and r.peer_set]
    ported = [ruleset.address_set(r.peer_set).intervals for r in rules
              if r.l4 is not None and r.l4.protocol == "udp" and r.peer_set]

    def held(value: int, sets: list[list[tuple[int, int]]]) -> bool:
        return any(lo <= value <= hi for ivs in sets for lo, hi in ivs)

    for ep in reversed(inventory.endpoints):
        v4 = [ip for ip in ep.ips if ip.version == 4]
        if ep.node != cluster.node and v4 and held(int(v4[0]), ported) and not held(int(v4[0]), anywhere):
            return str(v4[0])
    raise RuntimeError("no pod is admitted to the server by its ported rules alone")


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


class _TimingKernel:
    """Wraps a kernel to time each transaction that reaches it."""

    def __init__(self, inner: LibNftables) -> None:
        self.inner = inner
        self.runs: list[tuple[float, int]] = []  # (seconds, commands)

    def run(self, commands: list[Command], check: bool = False) -> None:
        start = time.perf_counter()
        self.inner.run(commands, check)
        self.runs.append((time.perf_counter() - start, len(commands)))

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        return self.inner.list_table(family, name)

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        return self.inner.list_set(family, table, name)

    def list_tables(self) -> list[tuple[str, str]]:
        return self.inner.list_tables()

    def generation(self) -> int | None:
        return self.inner.generation()

    def close(self) -> None:
        pass  # the inner kernel belongs to the caller


def run(cluster: Cluster, inventory: Inventory, policies: PolicySet, *, rounds: int, seconds: float,
        apply_repeats: int, changes: int, log: Any = print, tiered: PolicySet | None = None) -> dict[str, Any]:
    """Build the lab, measure everything, tear the lab down. Returns raw samples.
    ``tiered``: the same cluster's policies with ClusterNetworkPolicies (the
    ``callgate-tiers`` table)."""
    server_ep = cluster.endpoint(cluster.server)
    server_ip = next(ip for ip in server_ep["ips"] if ":" not in ip)
    client_ip = ported_client(cluster, inventory, policies)
    loadgen = build_loadgen()
    results: dict[str, Any] = {"seconds_per_sample": seconds, "rounds": rounds}
    with two_pod_lab(server_ip, client_ip) as lab:
        # The inventory's interfaces for the two lab pods are the lab's veths.
        veths = {cluster.server: lab.server.host_if}  # the client is a remote pod: no chains of its own
        inventory = Inventory(inventory.namespaces, tuple(
            dataclasses.replace(ep, interface=veths[ep.key]) if ep.key in veths else ep for ep in inventory.endpoints))
        ruleset = Compiler(policies, inventory).compile(cluster.node)
        kernel = LibNftables(netns=lab.node)
        try:
            full_tx = replace_table(ruleset)
            full = list(full_tx.commands)
            assert full_tx.layout is not None
            tx_layout = full_tx.layout
            linear, linear_rules = linear_commands(ruleset, lab.server.host_if, client_ip)
            server_rules = next(e for e in ruleset.endpoints if e.interface == lab.server.host_if).ingress[0].rules
            results["table"] = {
                "address_sets": len(ruleset.address_sets),
                "set_elements": sum(len(s.elements) for s in ruleset.address_sets),
                "endpoints_with_chains": len(ruleset.endpoints),
                "server_ingress_rules": len(server_rules),
                "server_ingress_policies": len({o for r in server_rules for o in r.origins}),
                "server_peer_elements": sum(len(ruleset.address_set(r.peer_set).elements)
                                            for r in server_rules if r.peer_set and r.l4
                                            and r.l4.protocol == "tcp"),
                "server_peer_addresses": sum(hi - lo + 1 for r in server_rules if r.peer_set and r.l4
                                             and r.l4.protocol == "tcp"
                                             for lo, hi in map(parse_element,
                                                               ruleset.address_set(r.peer_set).elements)),
                "linear_server_rules": linear_rules,
                "decision_elements": sum(len(m.elements) for m in tx_layout.maps.values()),
                "walk_set_elements": sum(len(s.elements) for s in tx_layout.sets.values()),
                "commands_full": len(full),
                "commands_linear": len(linear),
            }
            log(f"  table: {results['table']}")
            delete = [{"add": {"table": {"family": FAMILY, "name": TABLE}}},
                      {"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
            # "empty": callgate's table enforcing nothing (the forward chain's
            # conntrack rule and dispatch maps only). Without any table the
            # namespace does not even track connections, so this separates the
            # cost of conntrack from the cost of the policy itself.
            empty = list(replace_table(RuleSet(node=cluster.node)).commands)
            configs = {"none": delete, "conntrack": conntrack_only(empty), "empty": empty, "callgate": full,
                       "walk": walk_commands(ruleset), "linear": linear}
            if tiered is not None:
                tiers = Compiler(tiered, inventory).compile(cluster.node)
                # Before `linear` in the rotation: the table loaded after `linear` also pays
                # for removing its 133,000 rules in the same transaction.
                linear_last = configs.pop("linear")
                configs["callgate-tiers"] = list(replace_table(tiers).commands)
                configs["linear"] = linear_last
                results["tiers_table"] = _tiers_table(tiers, lab.server.host_if, lab.client.host_if)
                log(f"  tiers table: {results['tiers_table']}")
            samples: dict[str, dict[str, list[float]]] = {c: {"crr": [], "udp": [], "load_s": []} for c in configs}
            names = list(configs)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]  # rotate: spread drift evenly
                for name in order:
                    samples[name]["load_s"].append(_timed(kernel.run, configs[name]))
                    samples[name]["crr"].append(measure_crr(lab, loadgen, seconds))
                    samples[name]["udp"].append(measure_udp(lab, loadgen, seconds))
                    log(f"  round {r + 1}/{rounds} {name}: {samples[name]['crr'][-1]:,.0f} conn/s, "
                        f"{samples[name]['udp'][-1]:,.0f} pps (load avg {os.getloadavg()[0]:.2f})")
            results["datapath"] = samples
            chain = next(e for e in ruleset.endpoints if e.interface == lab.server.host_if).ingress[0].name
            results["decision_cost"] = decision_cost(lab, loadgen, {
                "none": empty_probe(), "callgate": amplified(full, chain), "walk": amplified(configs["walk"], chain),
            }, kernel, rounds, seconds, log)
            results["amplify"] = AMPLIFY
            why_not = nf_profile.possible()
            if why_not is None:
                results["profile"] = nf_profile.measure(lab, loadgen, {
                    "conntrack": configs["conntrack"], "callgate": full,
                    "callgate-forward-guard": list(replace_table(ruleset, guard="forward").commands),
                    "callgate-no-guard": nf_profile.without_guard(full),
                }, kernel, rounds, seconds, log)
            else:
                results["profile_skipped"] = why_not

            # Apply: the full transaction into an empty namespace table, timed
            # as plan (IR -> JSON commands) and kernel (libnftables + commit).
            plan_s, kernel_s = [], []
            for _ in range(apply_repeats):
                kernel.run(delete)
                start = time.perf_counter()
                commands = list(replace_table(ruleset).commands)
                plan_s.append(time.perf_counter() - start)
                kernel_s.append(_timed(kernel.run, commands))
            results["apply_full"] = {"plan_s": plan_s, "kernel_s": kernel_s,
                                     "total_s": [a + b for a, b in zip(plan_s, kernel_s, strict=True)]}
            log(f"  full apply: kernel {min(kernel_s):.3f}-{max(kernel_s):.3f} s")
            results["incremental"] = _incremental(cluster, inventory, policies, kernel, changes, log)
            results["local_pod"] = _local_pod(cluster, inventory, policies, kernel, max(2, min(changes, 100)), log)
            results["policy_change"] = _policy_change(cluster, inventory, policies, kernel,
                                                      max(2, min(changes, 40)), log)
        finally:
            kernel.close()
            gc.unfreeze()  # the change measurements froze their models (_applied)
    shutil.rmtree(loadgen.parent, ignore_errors=True)
    return results


def _incremental(cluster: Cluster, inventory: Inventory, policies: PolicySet, kernel: LibNftables,
                 changes: int, log: Any) -> dict[str, Any]:
    """One pod added / one label changed, alternately: compile, then the
    enforcer's apply, timed per stage.

    The compile goes the agent's way: an :class:`IncrementalCompiler` given the
    whole new inventory (``sync``), which diffs it against the previous one and
    patches only the sets the changed pod can be in; the apply is the agent's
    ``NftablesEnforcer.apply`` (incremental planner). The last RuleSet is checked
    against a fresh full compile, so a fast wrong answer cannot pass as a figure."""
    timing, enforcer, compiler = _applied(cluster, inventory, policies, kernel)
    by_ns: dict[str, Endpoint] = {}
    for ep in inventory.endpoints:
        by_ns.setdefault(ep.namespace, ep)
    even_ns = sorted(ns for ns in by_ns if int(ns[3:]) % 2 == 0)  # the hot peers' namespaces
    current = inventory
    samples: dict[str, list[Any]] = {"kind": [], "compile_s": [], "apply_s": [], "kernel_s": [],
                                     "commands": [], "incremental": []}
    free = V4_BASE + len(inventory.endpoints) + 1
    for k in range(changes):
        if k % 2 == 0:
            ns = even_ns[k % len(even_ns)]
            template = by_ns[ns]
            new = dataclasses.replace(template, name=f"bench-added-{k}", node="node-1", interface=None,
                                      ips=(ipaddress.IPv4Address(free + 2 * k),), labels=dict(template.labels))
            current = Inventory(current.namespaces, [*current.endpoints, new])
            kind = "pod added"
        else:
            # Toggle bench-caller=yes on one remote pod of an odd namespace (not a
            # hot peer otherwise): it joins or leaves the server's peer set.
            endpoints = list(current.endpoints)
            i = next(j for j, ep in enumerate(endpoints) if ep.node != cluster.node and int(ep.namespace[3:]) % 2)
            old: Endpoint = endpoints[i]
            labels = dict(old.labels)
            if labels.pop(LABEL_CALLER, None) is None:
                labels[LABEL_CALLER] = "yes"
            endpoints[i] = dataclasses.replace(old, labels=labels)
            current = Inventory(current.namespaces, endpoints)
            kind = "label changed"
        result = _timed_change(compiler, enforcer, timing, policies, current, kind, samples)
        samples["commands"].append(len(result.transaction.commands))
        samples["incremental"].append(result.mode == "incremental")
        log(f"  change {k + 1}/{changes} ({kind}): compile {samples['compile_s'][-1]:.3f} s, "
            f"apply {samples['apply_s'][-1]:.3f} s "
            f"(kernel {samples['kernel_s'][-1] * 1000:.1f} ms, {samples['commands'][-1]} commands, "
            f"{'incremental' if samples['incremental'][-1] else 'full replace'}; compile path {compiler.last_path})")
    _check_against_full(compiler, policies, current, samples, "pod churn")
    return samples


def _local_pod(cluster: Cluster, inventory: Inventory, policies: PolicySet, kernel: LibNftables,
               changes: int, log: Any) -> dict[str, Any]:
    """A pod starting on this node and stopping again (alternately), with a veth
    and the labels of a local pod that policies select (one of the hot
    servers: 3,000 policies select it): the event a node sees most, timed as
    ``_incremental`` times its changes (compile, then the enforcer's apply).
    The incremental compiler compiles that pod's own chains and patches the
    sets it joins; the last RuleSet is checked against a full compile."""
    timing, enforcer, compiler = _applied(cluster, inventory, policies, kernel)
    template = next(ep for ep in inventory.endpoints if ep.node == cluster.node)  # its labels, a veth of its own
    address = ipaddress.IPv4Address(V4_BASE + len(inventory.endpoints) + 10_000)
    started = dataclasses.replace(template, name="bench-local", interface="cgblocal0", ips=(address,))
    samples: dict[str, list[Any]] = {"kind": [], "compile_s": [], "apply_s": [], "kernel_s": [], "compile_path": []}
    for k in range(changes):
        kind = "pod started" if k % 2 == 0 else "pod stopped"
        current = inventory if k % 2 else Inventory(inventory.namespaces, (*inventory.endpoints, started))
        result = _timed_change(compiler, enforcer, timing, policies, current, kind, samples)
        log(f"  local pod {k + 1}/{changes} ({kind}): compile {samples['compile_s'][-1]:.3f} s "
            f"({compiler.last_path}), apply {samples['apply_s'][-1]:.3f} s ({result.mode})")
    final = inventory if changes % 2 == 0 else Inventory(inventory.namespaces, (*inventory.endpoints, started))
    _check_against_full(compiler, policies, final, samples, "a local pod")
    return samples


def _policy_change(cluster: Cluster, inventory: Inventory, policies: PolicySet, kernel: LibNftables,
                   changes: int, log: Any) -> dict[str, Any]:
    """A NetworkPolicy added and removed again (alternately), selecting one
    local pod by its labels and allowing it a port from 198.19.0.0/16: on an
    ordinary local pod (``changes`` times), then on the hot server that 3,000
    policies select (a quarter as often: its new decision map holds 50,000
    peer addresses). Timed as ``_incremental`` times its changes; the last
    RuleSet of each is checked against a full compile."""
    out: dict[str, Any] = {}
    server = next(ep for ep in inventory.endpoints if ep.key == cluster.server)
    ordinary = next(ep for ep in inventory.endpoints if ep.node == cluster.node and ep.labels != server.labels)
    for label, target, n in (("ordinary", ordinary, changes), ("hot", server, max(2, changes // 4))):
        timing, enforcer, compiler = _applied(cluster, inventory, policies, kernel)
        extra = Policy(target.namespace, "bench-extra", LabelSelector(tuple(sorted(target.labels.items()))),
                       (Direction.INGRESS,), ingress=(PolicyRule(
                           (Peer(ip_block=IPBlock(ipaddress.ip_network("198.19.0.0/16"))),), (PortSpec("TCP", 443),)),))
        more = PolicySet((*policies.policies, extra), policies.cluster)
        samples: dict[str, Any] = {}
        for k in range(n):
            current = more if k % 2 == 0 else policies
            result = _timed_change(compiler, enforcer, timing, current, inventory,
                                   "policy added" if k % 2 == 0 else "policy removed", samples)
            log(f"  policy change ({label} pod) {k + 1}/{n}: compile {samples['compile_s'][-1]:.3f} s "
                f"({compiler.last_path}), apply {samples['apply_s'][-1]:.3f} s ({result.mode})")
        _check_against_full(compiler, more if n % 2 else policies, inventory, samples, "a policy change")
        samples["target"] = target.key
        out[label] = samples
    return out


def _applied(cluster: Cluster, inventory: Inventory, policies: PolicySet,
             kernel: LibNftables) -> tuple[_TimingKernel, NftablesEnforcer, IncrementalCompiler]:
    """The starting point of a change measurement: an incremental compiler of
    the node and its RuleSet applied (that cost is the full apply, measured
    apart), through a kernel that times its transactions."""
    timing = _TimingKernel(kernel)
    enforcer = NftablesEnforcer(timing)
    compiler = IncrementalCompiler(policies, inventory, cluster.node)
    enforcer.apply(compiler.ruleset)
    gc.freeze()  # as the agent does after its first sync: the model and caches stay for good
    return timing, enforcer, compiler


def _check_against_full(compiler: IncrementalCompiler, policies: PolicySet, inventory: Inventory,
                        samples: dict[str, Any], what: str) -> None:
    """Record whether the last RuleSet equals a fresh full compile, and refuse
    the figures if not: a fast wrong answer must not pass as a figure."""
    full = Compiler(policies, inventory).compile(compiler.node)
    samples["equals_full_compile"] = full == compiler.ruleset and full.digest() == compiler.ruleset.digest()
    if not samples["equals_full_compile"]:
        raise RuntimeError(f"incremental compile of {what} differs from a full compile: its figures are void")


def _timed_change(compiler: IncrementalCompiler, enforcer: NftablesEnforcer, timing: _TimingKernel,
                  policies: PolicySet, current: Inventory, kind: str, samples: dict[str, list[Any]]) -> ApplyResult:
    """One change from the moment the engine has seen it to the kernel: the
    compile (digest included), then the enforcer's apply, appended to ``samples``."""
    # As the agent's reactor runs a sync: with the cyclic collector held
    # (callgate.policy.documents.gc_paused), which then runs after the commit.
    # Without that, 2-3 collections a change each traversed the new RuleSet's
    # 25,000-element containers: ~3 ms a change the agent does not pay.
    with gc_paused():
        start = time.perf_counter()
        ruleset = compiler.sync(policies, current)
        ruleset.digest()  # part of compiling: the enforcer needs it, and it is cached on the RuleSet
        compiled = time.perf_counter()
        timing.runs.clear()
        result = enforcer.apply(ruleset)
        done = time.perf_counter()
    for key, value in (("kind", kind), ("compile_s", compiled - start), ("apply_s", done - compiled),
                       ("kernel_s", sum(s for s, _ in timing.runs)), ("compile_path", compiler.last_path)):
        samples.setdefault(key, []).append(value)
    return result


def _tiers_table(ruleset: RuleSet, server_if: str, client_if: str) -> dict[str, Any]:
    """What the hot path walks in the tiered table: the chains and their rules."""
    server = next(e for e in ruleset.endpoints if e.interface == server_if)
    client = next((e for e in ruleset.endpoints if e.interface == client_if), None)
    layout = build_layout(ruleset)
    return {
        "endpoints_with_chains": len(ruleset.endpoints),
        "decision_maps": len(layout.maps),
        "decision_elements": sum(len(m.elements) for m in layout.maps.values()),
        "address_sets": len(ruleset.address_sets),
        "set_elements": sum(len(s.elements) for s in ruleset.address_sets),
        "server_ingress_chains": [len(c.rules) for c in server.ingress],
        "client_egress_chains": [len(c.rules) for c in client.egress] if client is not None else [],
        "cluster_policies_on_server": len({o.policy for c in server.ingress for r in c.rules for o in r.origins
                                           if o.tier}),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}
