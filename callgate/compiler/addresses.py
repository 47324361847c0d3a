"""Address arithmetic for peer sets: union, ``except`` holes, canonical text.

nftables interval sets reject overlapping elements, and reading a set back
prints each interval as an address, a prefix or a range. We therefore merge
everything into disjoint integer intervals here and print each interval the way
nft would, so that what we send and what we read back compare equal.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

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


_V6_EMBEDDED_V4 = 1 << 48  # below this, inet_ntop may print a dotted quad (::a.b.c.d, ::ffff:a.b.c.d)


def address_text(value: int, version: int) -> str:
    """``str(ipaddress.ip_address(value))`` without building the object.

    Formatting set elements through ``ipaddress`` objects was the second hot
    spot of compilation at scale. IPv4 is a plain dotted quad. For IPv6, glibc's
    ``inet_ntop`` follows RFC 5952 exactly as ``ipaddress`` does (longest run
    of two or more zero groups compressed, first one on ties, lower-case hex)
    except for addresses whose top 80 bits are zero, which it may print with an
    embedded IPv4 part; those go through ``ipaddress``.
    """
    if version == 4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    if value < _V6_EMBEDDED_V4:
        return str(ipaddress.IPv6Address(value))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def address_value(text: str) -> tuple[int, int]:
    """(version, integer) of an address as the IR writes it, without building an
    ``ipaddress`` object: the nft backend sorts every endpoint address into its
    dispatch maps on each change (ipaddress took ~10 ms of a 50 ms event-to-kernel
    budget at 300 pods). IR addresses are ``address_text``'s canonical forms, which
    ``inet_pton`` reads exactly."""
    if ":" in text:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")


def interval_text(lo: int, hi: int, version: int) -> str:
    """Print an interval as nft lists it: address, prefix, or range."""
    if lo == hi:
        return address_text(lo, version)
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        bits = 32 if version == 4 else 128
        return f"{address_text(lo, version)}/{bits - size.bit_length() + 1}"
    return f"{address_text(lo, version)}-{address_text(hi, version)}"


def canonical_elements(intervals: Iterable[Interval], version: int) -> tuple[str, ...]:
    return tuple(interval_text(lo, hi, version) for lo, hi in merge(intervals))


def address_int(text: str) -> int:
    """An address as printed in the IR, as an integer."""
    # Through ipaddress objects this cost ~25 us a prefix, which made counting
    # a 50k-element set take 0.2 s. The IR's text is canonical, so plain
    # arithmetic (IPv4) or inet_pton (IPv6) is enough.
    if ":" in text:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    a, b, c, d = text.split(".")
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)


def parse_element(text: str) -> Interval:
    """Inverse of :func:`interval_text`: an IR element (address, prefix or
    range "a-b") as inclusive bounds. Host bits of a prefix are ignored."""
    if "/" in text:
        addr, length = text.split("/")
        bits = 128 if ":" in addr else 32
        size = 1 << (bits - int(length))
        lo = address_int(addr) & ~(size - 1)
        return lo, lo + size - 1
    if "-" in text:
        lo_text, hi_text = text.split("-", 1)
        return address_int(lo_text), address_int(hi_text)
    value = address_int(text)
    return value, value


def intervals_size(intervals: Iterable[Interval]) -> int:
    """How many addresses disjoint intervals hold."""
    return sum(hi - lo + 1 for lo, hi in intervals)


def elements_size(elements: Sequence[str]) -> int:
    """How many addresses an IR set's elements (disjoint by construction) hold."""
    ranged = [e for e in elements if "/" in e or "-" in e]  # most elements are single pod IPs
    return len(elements) - len(ranged) + intervals_size(map(parse_element, ranged))


def address_interval(ip: IPAddress) -> Interval:
    value = int(ip)
    return value, value
