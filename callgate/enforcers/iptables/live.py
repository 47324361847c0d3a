"""What callgate owns in the kernel now, read back with ``ipset save`` and
``iptables-save`` and parsed into the same values a plan is made of."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from callgate.enforcers.iptables.kernel import Runner, Tools
from callgate.enforcers.iptables.layout import (
    CHAIN_PREFIX,
    DIGEST_PREFIX,
    ENTRY_CHAINS,
    SET_PREFIX,
    SOURCE_SET_TYPE,
    TMP_PREFIX,
    VERSIONS,
    Version,
)
from callgate.enforcers.iptables.rules import Table, chain_order
from callgate.enforcers.iptables.sets import IpSet, canonical_element, net_elements, sort_port_elements
from callgate.errors import KernelError

_CREATE = re.compile(r"create (\S+) (\S+)(.*)")
# A jump from a built-in chain into one of callgate's entry chains, as iptables-save prints it.
_JUMP = re.compile(r"-A (FORWARD|INPUT|OUTPUT) -j (" + "|".join(ENTRY_CHAINS) + ")")


def parse_ipset_save(text: str) -> dict[str, IpSet]:
    """callgate's sets (``cg-``/``cg+`` prefixes) from ``ipset save`` output,
    without what the kernel adds (hash size, initval, ...)."""
    headers: dict[str, tuple[str, str, int]] = {}
    elements: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("create "):
            m = _CREATE.match(line)
            if not m or not m.group(1).startswith((SET_PREFIX, TMP_PREFIX)):
                continue
            opts = m.group(3).split()
            kv = dict(zip(opts[::2], opts[1::2], strict=False))
            headers[m.group(1)] = (m.group(2), kv.get("family", "inet"), int(kv.get("maxelem", "65536")))
            elements[m.group(1)] = []
        elif line.startswith("add "):
            _, name, elem = [*line.split(" ", 2), ""][:3]
            if name in headers:
                # ipset prints some options after the element ("timeout" ...): not ours
                elements[name].append(canonical_element(headers[name][0], elem.split(" ")[0]))
    out = {}
    for name, (typ, family, maxelem) in headers.items():
        elems = elements[name]
        if typ == "hash:net":
            canon = net_elements(elems)
        elif typ == SOURCE_SET_TYPE:
            canon = tuple(sorted(elems))  # written as ipset prints them back (see sets.source_sets)
        else:
            try:
                canon = sort_port_elements(elems)
            except ValueError:
                canon = tuple(sorted(elems))
        out[name] = IpSet(name, typ, family, canon, maxelem)
    return out


@dataclass
class LiveTable:
    """callgate's part of one filter table as ``iptables-save`` shows it."""

    version: Version
    chains: dict[str, list[str]] = field(default_factory=dict)  # CG-* chain -> its -A lines
    # (built-in chain, entry chain) -> how many rules of the built-in jump there
    jumps: dict[tuple[str, str], int] = field(default_factory=dict)

    def digest(self) -> str | None:
        """The digest the entry chains' established rule carries."""
        for chain in ENTRY_CHAINS:
            for line in self.chains.get(chain, []):
                m = re.search(r'--comment "' + re.escape(DIGEST_PREFIX) + r'([0-9a-f]+)"', line)
                if m:
                    return m.group(1)
        return None

    def table(self) -> Table:
        order = chain_order(self.chains)
        jumps = tuple(j for j in sorted(self.jumps, key=lambda j: ENTRY_CHAINS.index(j[1])) for _ in range(self.jumps[j]))
        return Table(self.version, tuple(order), tuple(r for c in order for r in self.chains[c]), jumps)

    @property
    def empty(self) -> bool:
        return not self.chains and not self.jumps


def parse_iptables_save(text: str, version: Version) -> LiveTable:
    live = LiveTable(version)
    in_filter = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_filter = line == "*filter"
        elif not in_filter or line.startswith("#"):
            continue
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name.startswith(CHAIN_PREFIX):
                live.chains.setdefault(name, [])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            if chain.startswith(CHAIN_PREFIX):
                live.chains.setdefault(chain, []).append(line)
            elif (jump := _JUMP.fullmatch(line)) is not None:
                key = (jump.group(1), jump.group(2))
                live.jumps[key] = live.jumps.get(key, 0) + 1
    return live


@dataclass
class LiveState:
    sets: dict[str, IpSet]
    tables: dict[Version, LiveTable]
    # callgate's chains in the OTHER iptables variant (left there by an apply
    # with another CALLGATE_IPTABLES): removed by the next apply or remove.
    foreign: dict[Version, LiveTable] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.sets and all(t.empty for t in (*self.tables.values(), *self.foreign.values()))


def read_live(runner: Runner, tools: Tools, other: Tools | None = None) -> LiveState:
    sets = parse_ipset_save(runner.run(["ipset", "save"]))
    tables = {v: parse_iptables_save(runner.run([tools.save(v), "-t", "filter"]), v) for v in VERSIONS}
    foreign: dict[Version, LiveTable] = {}
    if other is not None:
        for v in VERSIONS:
            try:
                found = parse_iptables_save(runner.run([other.save(v), "-t", "filter"]), v)
            except KernelError:  # that variant is not usable here: nothing of ours can be in it
                continue
            if not found.empty:
                foreign[v] = found
    return LiveState(sets, tables, foreign)
