"""What libnftables 1.0.6 costs per operation, hash vs interval sets (run as root).

    sudo .venv/bin/python -m bench.nft_costs [ELEMENTS]      # default 50,000

In a scratch network namespace, for a table with one big set (ELEMENTS
addresses, none adjacent) and a small one, once with hash sets and once with
interval sets: listing the table, the forward chain, one set (plain and
terse), and three transactions — one ``add element`` to the big set, the same
plus a ``replace rule`` by handle (how the digest was updated before), and the
same plus a delete/add of one element of the small set (how the digest is
swapped now). Then the kernel memory one element costs (slab + vmalloc growth
when loading 65,536 of them). These figures chose the layout in
``callgate/enforcers/nft/layout.py``: hash sets where possible, the digest in a small
set.
"""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from callgate.enforcers.nft.kernel import Command, LibNftables

TABLE = "t"


def _o(**fields: Any) -> dict[str, Any]:
    return {"family": "inet", "table": TABLE, **fields}


def _addr(i: int) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.0.0")) + 2 * i))


def _table(n: int, interval: bool) -> list[Command]:
    flags = {"flags": ["interval"]} if interval else {}
    established = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    return [
        {"add": {"table": {"family": "inet", "name": TABLE}}},
        {"add": {"set": _o(name="big", type="ipv4_addr", elem=[_addr(i) for i in range(n)], **flags)}},
        {"add": {"set": _o(name="small", type="ipv4_addr", elem=["198.19.0.1"], **flags)}},
        {"add": {"map": _o(name="m", type="ifname", map="verdict")}},
        {"add": {"chain": _o(name="c")}},
        {"add": {"rule": _o(chain="c", expr=[{"match": {"op": "==", "left": saddr, "right": "@big"}},
                                              {"accept": None}])}},
        {"add": {"chain": _o(name="forward", type="filter", hook="forward", prio=0, policy="accept")}},
        {"add": {"rule": _o(chain="forward", expr=[established, {"accept": None}], comment="digest 0")}},
        {"add": {"rule": _o(chain="forward", expr=[{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@m"}}])}},
    ]


def _timed(fn: Callable[[], Any], repeats: int = 5) -> str:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return f"min {min(times) * 1000:8.1f} ms   median {statistics.median(times) * 1000:8.1f} ms"


def _slab_kib() -> int:
    with open("/proc/meminfo") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return fields["Slab"] + fields["VmallocUsed"]


def _listing(kernel: LibNftables, cmd: str, terse: bool = False) -> Callable[[], Any]:
    def run() -> Any:
        nft = kernel._nft()
        nft.set_terse_output(terse)
        try:
            rc, out, err = nft.cmd(cmd)  # our own constant text, nothing from input
        finally:
            nft.set_terse_output(False)
        assert rc == 0, err
        return out
    return lambda: kernel._call(run)


def _measure_form(kernel: LibNftables, n: int, interval: bool) -> None:
    start = time.perf_counter()
    kernel.run(_table(n, interval))
    print(f"== {'interval' if interval else 'hash'} sets, {n:,} elements "
          f"(loaded in {(time.perf_counter() - start) * 1000:.0f} ms)")
    for label, cmd, terse in (("list table", f"list table inet {TABLE}", False),
                              ("list table -t", f"list table inet {TABLE}", True),
                              ("list chain forward", f"list chain inet {TABLE} forward", False),
                              ("list chain forward -t", f"list chain inet {TABLE} forward", True),
                              ("list set (1 element)", f"list set inet {TABLE} small", False),
                              ("list set (big)", f"list set inet {TABLE} big", False)):
        print(f"  {label:32s} {_timed(_listing(kernel, cmd, terse))}")
    listed = kernel.list_table("inet", TABLE) or []
    handle = next(o["rule"]["handle"] for o in listed if "rule" in o and o["rule"].get("comment"))
    counter = [0]
    small = ["198.19.0.1"]
    established = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}

    def add_one() -> Command:
        counter[0] += 1
        return {"add": {"element": _o(name="big", elem=[_addr(n + counter[0])])}}

    def replace_rule() -> list[Command]:
        return [{"replace": {"rule": _o(chain="forward", handle=handle, expr=[established, {"accept": None}],
                                        comment=f"digest {counter[0]}")}}]

    def swap() -> list[Command]:
        old, small[0] = small[0], str(ipaddress.IPv4Address(small[0]) + 1)
        return [{"delete": {"element": _o(name="small", elem=[old])}},
                {"add": {"element": _o(name="small", elem=[small[0]])}}]

    print(f"  {'add element':32s} {_timed(lambda: kernel.run([add_one()]))}")
    print(f"  {'add element + replace rule':32s} {_timed(lambda: kernel.run([add_one(), *replace_rule()]))}")
    print(f"  {'add element + swap in small set':32s} {_timed(lambda: kernel.run([add_one(), *swap()]))}")


def _memory(kernel: LibNftables, drop: list[Command]) -> None:
    print("== kernel memory per element (65,536 loaded; slab + vmalloc growth)")
    for typ, first in (("ipv4_addr", ipaddress.ip_address("198.18.0.0")), ("ipv6_addr", ipaddress.ip_address("fd00::"))):
        for interval in (False, True):
            per = []
            for _ in range(3):
                kernel.run(drop)
                time.sleep(1.0)  # let freed memory settle (RCU)
                before = _slab_kib()
                body = _o(name="s", type=typ, elem=[str(first + 2 * i) for i in range(65_536)])
                if interval:
                    body["flags"] = ["interval"]
                kernel.run([{"add": {"table": {"family": "inet", "name": TABLE}}}, {"add": {"set": body}}])
                time.sleep(1.0)
                per.append((_slab_kib() - before) * 1024 / 65_536)
            print(f"  {typ} {'interval' if interval else 'hash':8s} ~{statistics.median(per):.0f} bytes "
                  f"({', '.join(f'{p:.0f}' for p in per)})")


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 50_000
    ns = f"cgm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    kernel = LibNftables(ns)
    drop: list[Command] = [{"add": {"table": {"family": "inet", "name": TABLE}}},
                           {"delete": {"table": {"family": "inet", "name": TABLE}}}]
    try:
        for interval in (False, True):
            kernel.run(drop)
            _measure_form(kernel, n, interval)
        _memory(kernel, drop)
        kernel.run(drop)
    finally:
        kernel.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
