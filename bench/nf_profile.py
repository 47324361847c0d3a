"""Where a new TCP connection's (or an unreplied UDP packet's) CPU goes: netfilter's share, per table, by profile.

The rotation's conn/s ratios move by ±10% from one 5-second sample to the next
on a shared 2-core VM, and an A/A pair (the same table twice) is no steadier;
the gap the datapath target is about (2%) is smaller than that noise. A
profile does not depend on how fast the machine happened to be in a sample:
with the TCP connect/request/response/close load pinned to one CPU, which it
keeps busy, ``perf record -e cpu-clock`` on that CPU samples where its time
goes, and the share of samples with ``nf_hook_slow`` on the stack is the share
of a connection's CPU time spent in netfilter (conntrack and every nft hook,
the ingress hook included). The rest of a connection's work (sockets, TCP,
routing, veths, scheduling) is the same whatever the table, so two tables'
throughput ratio follows from their shares alone::

    conn/s(table) / conn/s(conntrack) = (1 - share(table)) / (1 - share(conntrack))

The same for 64-byte unreplied UDP (sender and sink on that CPU): packets/s.

Measured in rotation per round like the throughput, with perf itself kept off
the loaded CPU. Beside ``conntrack`` and ``callgate`` (the table as applied
here: the source checks on each veth's ingress hook), built from the same
RuleSet: ``callgate-forward-guard``, the layout for kernels older than 6.16
(the input interface looked up first in the forward chain, then the
interface's source chain), and ``callgate-no-guard``, the table without any
source check (what the check costs; attribution only, never applied).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.lab import TwoPodLab, ns_exec, start_ready, stop_group
from bench.synth import HOT_TCP_PORT, HOT_UDP_PORT
from callgate.enforcers.nft.dispatch import ENDPOINT_GUARD
from callgate.enforcers.nft.kernel import Command, LibNftables
from callgate.enforcers.nft.layout import FORWARD

NETFILTER = "nf_hook_slow"  # every netfilter hook's entry: conntrack, nft chains, ingress alike
NFT_CHAIN = "nft_do_chain"  # the nft rule interpreter (and its callees) alone
SETTLE_S = 0.5  # after a table load: the previous table's release runs in a kernel worker
LOAD_CPU = 0
IDLE = "do_idle"  # on the stack of a sample taken while the CPU waited


def possible() -> str | None:
    """Why the profile cannot be taken here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (apt-get install linux-perf)"
    if shutil.which("taskset") is None:
        return "taskset is not installed (util-linux)"
    return None


def _is_guard_rule(cmd: Command) -> bool:
    rule = cmd.get("add", {}).get("rule")
    if rule is None or rule["chain"] != FORWARD:
        return False
    first = rule["expr"][0]
    return "vmap" in first and first["vmap"]["data"] == "@" + ENDPOINT_GUARD


def without_guard(commands: list[Command]) -> list[Command]:
    """The table without its source checks: the forward chain's look-up, and
    the ingress base chains with their rules (attribution only)."""
    hooked = {c["add"]["chain"]["name"] for c in commands if c.get("add", {}).get("chain", {}).get("hook") == "ingress"}
    out = []
    for cmd in commands:
        body = cmd.get("add", {})
        if _is_guard_rule(cmd) or body.get("chain", {}).get("name") in hooked or (
                body.get("rule", {}).get("chain") in hooked):
            continue
        out.append(cmd)
    return out


def shares(perf_data: Path) -> tuple[int, float, float]:
    """(busy samples, share of them with ``nf_hook_slow`` on the stack, with
    ``nft_do_chain*``). Idle samples (the CPU waiting for a wake-up) are left
    out: the shares are of the CPU's work."""
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "ip,sym"], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    total = netfilter = nft = 0
    for block in out.split("\n\n"):
        frames = block.split()
        if not frames or IDLE in frames:
            continue
        total += 1
        netfilter += any(f.startswith(NETFILTER) for f in frames)
        nft += any(f.startswith(NFT_CHAIN) for f in frames)
    return total, netfilter / max(total, 1), nft / max(total, 1)


def _perf(perf_data: Path) -> subprocess.Popen[bytes]:
    """perf sampling LOAD_CPU, itself on the other CPUs."""
    others = ",".join(str(c) for c in range(os.cpu_count() or 1) if c != LOAD_CPU) or str(LOAD_CPU)
    perf = subprocess.Popen(["taskset", "-c", others, "perf", "record", "-q", "-e", "cpu-clock", "-F", "2999",
                             "-C", str(LOAD_CPU), "-g", "-o", str(perf_data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)  # sampling before the load starts
    return perf


def _stop_perf(perf: subprocess.Popen[bytes]) -> None:
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=60)


PIN = ["taskset", "-c", str(LOAD_CPU)]


def profiled_crr(lab: TwoPodLab, loadgen: Path, seconds: float, perf_data: Path) -> tuple[float, int, float, float]:
    """One TCP client and one server process on LOAD_CPU, perf sampling that
    CPU: (conn/s, samples, netfilter share, nft share)."""
    server = start_ready(ns_exec(lab.server.netns, *PIN, str(loadgen), "crr-server", str(HOT_TCP_PORT), "1"))
    try:
        perf = _perf(perf_data)
        try:
            out = subprocess.run(ns_exec(lab.client.netns, *PIN, str(loadgen), "crr-client", lab.server.ip,
                                         str(HOT_TCP_PORT), str(seconds), "1"),
                                 capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        finally:
            _stop_perf(perf)
    finally:
        stop_group(server)
    count, elapsed = out.split()
    return (int(count) / float(elapsed), *shares(perf_data))


def profiled_udp(lab: TwoPodLab, loadgen: Path, seconds: float, perf_data: Path) -> tuple[float, int, float, float]:
    """64-byte unreplied UDP (every packet "new" to conntrack) from a sender to a
    sink, both on LOAD_CPU, perf sampling it: (packets/s received, samples,
    netfilter share, nft share)."""
    sink = start_ready(ns_exec(lab.server.netns, *PIN, str(loadgen), "udp-sink", str(HOT_UDP_PORT), str(seconds)))
    try:
        perf = _perf(perf_data)
        try:
            subprocess.run(ns_exec(lab.client.netns, *PIN, str(loadgen), "udp-blast", lab.server.ip,
                                   str(HOT_UDP_PORT), str(seconds + 1), "64"),
                           capture_output=True, text=True, check=True, timeout=seconds + 60)
        finally:
            _stop_perf(perf)
        out, _ = sink.communicate(timeout=seconds + 30)
    finally:
        stop_group(sink)
    count, elapsed = out.split()
    return (int(count) / float(elapsed) if float(elapsed) > 0 else 0.0, *shares(perf_data))


LOADS = {"crr": profiled_crr, "udp": profiled_udp}


def measure(lab: TwoPodLab, loadgen: Path, tables: dict[str, list[Command]], kernel: LibNftables,
            rounds: int, seconds: float, log: Any) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per load (``crr``: new TCP connections, ``udp``: 64-byte unreplied UDP)
    and table: the rate, samples, netfilter and nft shares per round, rotating
    the tables' order."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {
        load: {name: {"rate": [], "samples": [], "netfilter": [], "nft": []} for name in tables} for load in LOADS}
    names = list(tables)
    scratch = Path(tempfile.mkdtemp(prefix="cgb-perf-"))
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                kernel.run(tables[name])
                time.sleep(SETTLE_S)
                for load, profiled in LOADS.items():
                    rate, n, nf, nft = profiled(lab, loadgen, seconds, scratch / "perf.data")
                    for key, value in (("rate", rate), ("samples", n), ("netfilter", nf), ("nft", nft)):
                        out[load][name][key].append(value)
            log(f"  profile round {r + 1}/{rounds}: " + "; ".join(
                f"{n} netfilter {out['crr'][n]['netfilter'][-1]:.2%} (TCP), {out['udp'][n]['netfilter'][-1]:.2%} (UDP)"
                for n in names))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def implied_ratio(table: float, floor: float) -> float:
    """A table's rate (conn/s, packets/s) relative to the floor's, from their
    netfilter shares: the rest of the work, ``time * (1 - share)``, is the same."""
    return (1 - table) / (1 - floor)
