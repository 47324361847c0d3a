"""Where the forward hook's dispatch costs: hand-written table variants, 64-byte UDP.

    sudo .venv/bin/python -m bench.dispatch_variants [ROUNDS]      # default 6

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
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys

from bench.datapath import build_loadgen, measure_udp
from bench.lab import ns_exec, two_pod_lab

SERVER, CLIENT = "198.18.0.10", "198.18.5.7"
HOOK = "type filter hook forward priority 0; policy accept;"
CT = "ct state established,related accept"
SOURCE4 = "iifname . ip saddr != @source4 iifname @endpoint_iface drop"
SOURCE6 = "iifname . ip6 saddr != @source6 iifname @endpoint_iface drop"
ICMP6 = "icmpv6 type . ip6 hoplimit { mld-listener-query . 1 } accept"
V4 = ["ip saddr vmap @from4", "ip daddr vmap @to4"]
V6 = ["ip6 saddr vmap @from6", "ip6 daddr vmap @to6"]


def variants(server_if: str) -> dict[str, str | None]:
    objects = f"""
 set endpoint_iface {{ type ifname; elements = {{ "{server_if}" }} }}
 set source4 {{ type ifname . ipv4_addr; elements = {{ "{server_if}" . {SERVER} }} }}
 set source6 {{ type ifname . ipv6_addr; }}
 set address4 {{ type ipv4_addr; elements = {{ {SERVER} }} }}
 map from4 {{ type ipv4_addr : verdict; elements = {{ {SERVER} : jump egress }} }}
 map to4 {{ type ipv4_addr : verdict; elements = {{ {SERVER} : jump ingress }} }}
 map from6 {{ type ipv6_addr : verdict; }}
 map to6 {{ type ipv6_addr : verdict; }}
 map from_iface {{ type ifname : verdict; elements = {{ "{server_if}" : jump egress }} }}
 chain egress {{ accept; }}
 chain ingress {{ udp dport 5001 accept; tcp dport 80 accept; drop; }}
 chain forward4 {{ {"; ".join([SOURCE4, CT, *V4])}; }}
 chain forward6 {{ {"; ".join([SOURCE6, CT, ICMP6, *V6])}; }}
"""

    # Every set and map with a size: the kernel may then choose its fixed-size hash
    # (nft_hash, for 4-byte keys nft_hash_fast) over the resizable rhashtable it must use
    # for a set without one.
    sized = re.sub(r"(\b(?:set|map) \w+ \{ type [^;}]*;)", r"\1 size 65536;", objects)

    def table(*rules: str, held: str = objects) -> str:
        return "table inet t {" + held + " chain forward { " + HOOK + "\n" + "\n".join(rules) + "\n}\n}\n"

    return {
        "none": None,
        "conntrack": "table inet t { chain forward { " + HOOK + "\n" + CT + "\n}\n}\n",
        # callgate's forward chain today (nft layout 6)
        "callgate": table(SOURCE4, SOURCE6, CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "callgate, sets with a size": table(SOURCE4, SOURCE6, CT, ICMP6, V4[0], V6[0], V4[1], V6[1], held=sized),
        "ipv4 rules only": table(SOURCE4, CT, *V4),
        "interface test first": table("iifname @endpoint_iface iifname . ip saddr != @source4 drop",
                                      SOURCE6, CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "split by family": table("meta nfproto vmap { ipv4 : goto forward4, ipv6 : goto forward6 }"),
        "no source check": table(CT, ICMP6, V4[0], V6[0], V4[1], V6[1]),
        "no source check, sets with a size": table(CT, ICMP6, V4[0], V6[0], V4[1], V6[1], held=sized),
        "source by address only": table("ip saddr @address4 drop", CT, *V4),
        # Egress dispatch by interface: three rules, but blind on a bridge (iif = the bridge).
        "by interface (no bridges)": table("iifname vmap @from_iface", CT, V4[1], V6[1]),
    }


def load(netns: str, text: str | None) -> None:
    subprocess.run(ns_exec(netns, "nft", "delete", "table", "inet", "t"), capture_output=True, check=False)
    if text is not None:
        subprocess.run(ns_exec(netns, "nft", "-f", "-"), input=text, text=True, check=True)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    loadgen = build_loadgen()
    with two_pod_lab(SERVER, CLIENT) as lab:
        tables = variants(lab.server.host_if)
        names = list(tables)
        pps: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                load(lab.node, tables[name])
                pps[name].append(measure_udp(lab, loadgen, 3))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {pps[n][-1]:,.0f}" for n in names), flush=True)
        print(f"{'variant':28s} {'pps (median)':>12s}  {'/ conntrack':>11s}  per round")
        for name in names:
            ratios = [a / b for a, b in zip(pps[name], pps["conntrack"], strict=True)]
            print(f"{name:28s} {statistics.median(pps[name]):12,.0f}  {statistics.median(ratios):11.1%}  "
                  f"{min(ratios):.0%}-{max(ratios):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
