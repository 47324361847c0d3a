"""Address arithmetic for peer sets: union, ``except`` holes, canonical text.

nftables interval sets reject overlapping elements, and reading a set back
prints each interval as an address, a prefix or a range. We therefore merge
everything into disjoint integer intervals here and print each interval the way
nft would, so that what we send and what we read back compare equal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from callgate.policy.model import IPAddress, IPBlock, IPNetwork

Interval = tuple[int, int]  # inclusive bounds


def block_intervals(block: IPBlock) -> list[Interval]:
    """cidr minus every except, as disjoint intervals."""
    start, end = int(block.cidr.network_address), int(block.cidr.broadcast_address)
    holes = sorted((int(e.network_address), int(e.broadcast_address)) for e in block.excepts)
    out: list[Interval] = []
    cursor = start
    for lo, hi in holes:
        if lo > cursor:
            out.append((cursor, min(lo - 1, end)))
        cursor = max(cursor, hi + 1)
    if cursor <= end:
        out.append((cursor, end))
    return out


def network_interval(net: IPNetwork) -> Interval:
    return int(net.network_address), int(net.broadcast_address)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge overlapping or adjacent intervals."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def interval_text(lo: int, hi: int, version: int) -> str:
    """Print an interval as nft lists it: address, prefix, or range."""
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if lo == hi:
        return str(make(lo))
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        bits = 32 if version == 4 else 128
        return f"{make(lo)}/{bits - size.bit_length() + 1}"
    return f"{make(lo)}-{make(hi)}"


def canonical_elements(intervals: Iterable[Interval], version: int) -> tuple[str, ...]:
    return tuple(interval_text(lo, hi, version) for lo, hi in merge(intervals))


def parse_element(text: str) -> Interval:
    """Inverse of :func:`interval_text` (used by the IR interpreter and read-back)."""
    if "/" in text:
        return network_interval(ipaddress.ip_network(text, strict=False))
    if "-" in text:
        lo, hi = text.split("-", 1)
        return int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))
    value = int(ipaddress.ip_address(text))
    return value, value


def address_interval(ip: IPAddress) -> Interval:
    value = int(ip)
    return value, value
