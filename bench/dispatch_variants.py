"""Where the forward hook's dispatch costs: hand-written table variants, 64-byte UDP.

    sudo .venv/bin/python -m bench.dispatch_variants [ROUNDS [VARIANT...]]   # default 6, all
    sudo .venv/bin/python -m bench.dispatch_variants --per-rule [ROUNDS [RULE...]]

In the datapath benchmark's two-pod lab (a remote client, a local server with
chains), each variant is a small ``inet`` table shaped like the dispatch part
of callgate's (the same sets and maps with the server's elements, its ingress a
chain with two port rules), loaded in turn and measured with the same load
generator, rotating per round so that machine load hits them alike. Ratios are
per round against ``conntrack`` (one rule: ``ct state established,related
accept``), then the median. Written to find out whether reordering or trimming
the dispatch rules could bring callgate to 95% of that floor
(docs/performance.md, Datapath); it is an experiment, not part of ``python -m
bench``.

``--per-rule`` prices single rules instead: each is repeated :data:`AMPLIFY`
times (none of them matches the load generator's packets) before the
established rule, so that its cost shows through the noise of a shared machine:
ns per rule = (1/pps - 1/pps of ``conntrack``) / AMPLIFY, per round, then the
median.
"""

from __future__ import annotations

import ipaddress
import re
import statistics
import subprocess
import sys
from pathlib import Path

from bench.datapath import build_loadgen, measure_udp
from bench.lab import TwoPodLab, ns_exec, two_pod_lab

SERVER, CLIENT = "198.18.0.10", "198.18.5.7"
HOOK = "type filter hook forward priority 0; policy accept;"
CT = "ct state established,related accept"
SOURCE4 = "iifname . ip saddr != @source4 iifname @endpoint_iface drop"
SOURCE6 = "iifname . ip6 saddr != @source6 iifname @endpoint_iface drop"
ICMP6 = "icmpv6 type . ip6 hoplimit { mld-listener-query . 1 } accept"
V4 = ["ip saddr vmap @from4", "ip daddr vmap @to4"]
V6 = ["ip6 saddr vmap @from6", "ip6 daddr vmap @to6"]
SOURCE4_INTERFACE_FIRST = "iifname @endpoint_iface iifname . ip saddr != @source4 drop"
FLOOR = "table inet t { chain forward { " + HOOK + "\n" + CT + "\n}\n}\n"  # conntrack only
INGRESS = "udp dport 5001 accept; tcp dport 80 accept; drop;"
MARK = "ct mark 0x00010000 accept"
GUARD = "iifname vmap @source_guard"
MARKED_INGRESS = "udp dport 5001 ct mark set 0x00010000 accept; tcp dport 80 ct mark set 0x00010000 accept; drop;"


def _spoofed4(server_if: str, others: int = 77) -> str:
    """The complement of each endpoint interface's own address, as (interface, range)
    elements: the server's, and ``others`` made-up endpoints' like a node's worth."""
    own = [(server_if, SERVER)] + [(f"cgx{i}", f"198.19.{i // 250}.{i % 250 + 1}") for i in range(others)]
    elements = []
    for iface, address in own:
        below, above = ipaddress.IPv4Address(address) - 1, ipaddress.IPv4Address(address) + 1
        elements += [f'"{iface}" . 0.0.0.0-{below}', f'"{iface}" . {above}-255.255.255.255']
    return ", ".join(elements)


def variants(server_if: str) -> dict[str, str | None]:
    spoofed = _spoofed4(server_if)
    objects = f"""
 set endpoint_iface {{ type ifname; elements = {{ "{server_if}" }} }}
 set source4 {{ type ifname . ipv4_addr; elements = {{ "{server_if}" . {SERVER} }} }}
 set source6 {{ type ifname . ipv6_addr; }}
 set address4 {{ type ipv4_addr; elements = {{ {SERVER} }} }}
 set spoofed4 {{ type ifname . ipv4_addr; flags interval; elements = {{ {spoofed} }} }}
 map from4 {{ type ipv4_addr : verdict; elements = {{ {SERVER} : jump egress }} }}
 map to4 {{ type ipv4_addr : verdict; elements = {{ {SERVER} : jump ingress }} }}
 map from6 {{ type ipv6_addr : verdict; }}
 map to6 {{ type ipv6_addr : verdict; }}
 map from_iface {{ type ifname : verdict; elements = {{ "{server_if}" : jump egress }} }}
 map source_guard {{ type ifname : verdict; elements = {{ "{server_if}" : jump source_server }} }}
 chain source_server {{ ip saddr != {SERVER} drop; meta nfproto ipv6 drop; }}
 chain egress {{ accept; }}
 chain ingress {{ {INGRESS} }}
 chain forward4 {{ {"; ".join([SOURCE4, CT, *V4])}; }}
 chain forward6 {{ {"; ".join([SOURCE6, CT, ICMP6, *V6])}; }}
"""

    # Every set and map with a size: the kernel may then choose its fixed-size hash
    # (nft_hash, for 4-byte keys nft_hash_fast) over the resizable rhashtable it must use
    # for a set without one.
    sized = re.sub(r"(\b(?:set|map) \w+ \{ type [^;}]*;)", r"\1 size 65536;", objects)
    # The ingress chain's accepts remember the verdict in the flow's ct mark.
    marked = objects.replace(INGRESS, MARKED_INGRESS)

    def table(*rules: str, held: str = objects) -> str:
        return "table inet t {" + held + " chain forward { " + HOOK + "\n" + "\n".join(rules) + "\n}\n}\n"

    return {
        "none": None,
        "conntrack": FLOOR,
        # callgate's forward chain of nft layouts 6 and 7 (layout 8 is the "source by
        # interface map, verdict in ct mark" shape below, the established rule before the mark)
        "layout 7": table(SOURCE4, SOURCE6, CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "layout 7, sets with a size": table(SOURCE4, SOURCE6, CT, ICMP6, V4[0], V6[0], V4[1], V6[1], held=sized),
        "ipv4 rules only": table(SOURCE4, CT, *V4),
        "interface test first": table(SOURCE4_INTERFACE_FIRST, SOURCE6, CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "split by family": table("meta nfproto vmap { ipv4 : goto forward4, ipv6 : goto forward6 }"),
        "no source check": table(CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "no source check, sets with a size": table(CT, ICMP6, V4[0], V6[0], V4[1], V6[1], held=sized),
        "source by address only": table("ip saddr @address4 drop", CT, *V4),
        # Egress dispatch by interface: three rules, but blind on a bridge (iif = the bridge).
        "by interface (no bridges)": table("iifname vmap @from_iface", CT, V4[1], V6[1]),
        # The source checks and the established rule alone: what a packet of a flow whose
        # verdict conntrack remembered would pay.
        "source checks, then conntrack": table(SOURCE4, SOURCE6, CT),
        # The source check as a verdict map by interface into a chain per endpoint that
        # compares the source with the endpoint's own address: a packet from outside the
        # node's pods pays one miss instead of two.
        "source by interface map": table(GUARD, CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "source by interface map, verdict in ct mark": table(GUARD, MARK, CT, ICMP6, V4[0], V6[0], V4[1], V6[1],
                                                             held=marked),
        # The ingress verdict remembered in the flow's ct mark: later packets of a flow
        # conntrack still holds as NEW (unreplied UDP) leave at the mark.
        "verdict in ct mark": table(SOURCE4, SOURCE6, MARK, CT, ICMP6, V4[0], V6[0], V4[1], V6[1], held=marked),
    }


AMPLIFY = 32  # copies of a rule in the --per-rule tables


def single_rules(server_if: str) -> dict[str, str]:
    """Tables for ``--per-rule``: the same sets and maps, the forward chain one rule
    repeated, then the established rule (the floor itself is ``conntrack``)."""
    layout7 = variants(server_if)["layout 7"]
    assert layout7 is not None
    head = layout7[:layout7.index(" chain forward {")]

    def repeated(rule: str) -> str:
        return head + " chain forward { " + HOOK + "\n" + "\n".join([rule] * AMPLIFY) + "\n" + CT + "\n}\n}\n"

    return {
        "conntrack": FLOOR,
        "source check (ipv4, as layout 7)": repeated(SOURCE4),
        "source check, interface first": repeated(SOURCE4_INTERFACE_FIRST),
        "source check (ipv6) on ipv4": repeated(SOURCE6),
        "ip saddr vmap, a miss": repeated(V4[0]),
        "ip saddr in a set, a miss": repeated("ip saddr @address4 drop"),
        "source check, one interval look-up": repeated("iifname . ip saddr @spoofed4 drop"),
        "meta mark compare": repeated("meta mark 0x1234 drop"),
        "ct mark compare": repeated("ct mark 0x00010000 drop"),
    }


def rotate(lab: TwoPodLab, loadgen: Path, tables: dict[str, str | None], rounds: int) -> dict[str, list[float]]:
    """64-byte UDP packets/s through each table, rotating the order per round so that
    the machine's load hits them alike."""
    names = list(tables)
    pps: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            load(lab.node, tables[name])
            pps[name].append(measure_udp(lab, loadgen, 3))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {pps[n][-1]:,.0f}" for n in names), flush=True)
    return pps


def only(tables: dict[str, str | None], names: list[str]) -> dict[str, str | None]:
    """The tables named (all when none is), and the floor always: the ratios need it."""
    return {name: text for name, text in tables.items() if not names or name in {"conntrack", *names}}


def load(netns: str, text: str | None) -> None:
    subprocess.run(ns_exec(netns, "nft", "delete", "table", "inet", "t"), capture_output=True, check=False)
    if text is not None:
        subprocess.run(ns_exec(netns, "nft", "-f", "-"), input=text, text=True, check=True)


def main() -> int:
    args = sys.argv[1:]
    per_rule = args[:1] == ["--per-rule"]
    if per_rule:
        args = args[1:]
    rounds = int(args[0]) if args else 6
    loadgen = build_loadgen()
    with two_pod_lab(SERVER, CLIENT) as lab:
        if per_rule:
            pps = rotate(lab, loadgen, only(dict(single_rules(lab.server.host_if)), args[1:]), rounds)
            print(f"{'rule':36s} {'pps (median)':>12s}  {'ns per rule':>11s}  per round")
            for name, samples in pps.items():
                ns = [(1 / a - 1 / b) / AMPLIFY * 1e9 for a, b in zip(samples, pps["conntrack"], strict=True)]
                print(f"{name:36s} {statistics.median(samples):12,.0f}  {statistics.median(ns):11.0f}  "
                      f"{min(ns):.0f}-{max(ns):.0f}")
            return 0
        pps = rotate(lab, loadgen, only(variants(lab.server.host_if), args[1:]), rounds)
        print(f"{'variant':32s} {'pps (median)':>12s}  {'/ conntrack':>11s}  per round")
        for name, samples in pps.items():
            ratios = [a / b for a, b in zip(samples, pps["conntrack"], strict=True)]
            print(f"{name:32s} {statistics.median(samples):12,.0f}  {statistics.median(ratios):11.1%}  "
                  f"{min(ratios):.0%}-{max(ratios):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
