"""The door to iptables/ip6tables/ipset: argv lists only, never a shell.

Every command callgate runs for this backend goes through a :class:`Runner`:
the real one (:class:`SubprocessRunner`) executes the tools, optionally inside a
named network namespace via ``ip netns exec <name> <tool> ...``; tests plug in
a fake. Input text (restore files) goes to the tool's stdin, never into argv.

Which iptables? ``variant`` (or the environment variable ``CALLGATE_IPTABLES``):

* ``system`` (default): ``iptables-restore`` etc. as the distribution's
  alternatives choose (on Debian 12: iptables-nft);
* ``nft``: ``iptables-nft-restore`` ...: the nf_tables kernel API;
* ``legacy``: ``iptables-legacy-restore`` ...: the old x_tables API.

Use the variant everything else on the host (kube-proxy, docker) uses; rules
of both variants would both be evaluated and be hard to read back together.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from callgate.enforcers.ipt_render import (
    CHAIN_PREFIX,
    DIGEST_PREFIX,
    FORWARD_CHAIN,
    SET_PREFIX,
    TMP_PREFIX,
    VERSIONS,
    IpSet,
    Table,
    Version,
    canonical_element,
    net_elements,
    sort_port_elements,
)
from callgate.errors import KernelError

VARIANTS = ("system", "nft", "legacy")
ENV_VARIANT = "CALLGATE_IPTABLES"
TIMEOUT = 120.0


class Runner(Protocol):
    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run ``argv`` (stdin fed from ``stdin``); return stdout, raise KernelError on failure."""


class SubprocessRunner:
    """Runs the real tools, in the current or a named network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        full = ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)
        try:
            proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except FileNotFoundError as exc:
            raise KernelError(f"{full[0]} is not installed: {exc}") from None
        except subprocess.TimeoutExpired:
            raise KernelError(f"{argv[0]} did not finish within {TIMEOUT:.0f}s") from None
        if proc.returncode != 0:
            raise KernelError(f"{argv[0]} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout


@dataclass(frozen=True)
class Tools:
    """Binary names for one iptables variant."""

    variant: str = "system"

    @classmethod
    def choose(cls, variant: str | None = None) -> Tools:
        chosen = variant or os.environ.get(ENV_VARIANT) or "system"
        if chosen not in VARIANTS:
            raise ValueError(f"iptables variant {chosen!r} (from {'argument' if variant else ENV_VARIANT}) "
                             f"must be one of {', '.join(VARIANTS)}")
        return cls(chosen)

    def _tool(self, version: Version, what: str) -> str:
        base = "iptables" if version == 4 else "ip6tables"
        return f"{base}-{what}" if self.variant == "system" else f"{base}-{self.variant}-{what}"

    def restore(self, version: Version) -> str:
        return self._tool(version, "restore")

    def save(self, version: Version) -> str:
        return self._tool(version, "save")

    def other(self, runner: Runner) -> Tools | None:
        """The variant this one is not (``system`` is resolved by asking
        ``iptables -V``), or None when that cannot be told."""
        variant = self.variant
        if variant == "system":
            try:
                version = runner.run(["iptables", "-V"])
            except KernelError:
                return None
            variant = "nft" if "nf_tables" in version else "legacy" if "legacy" in version else ""
        return {"nft": Tools("legacy"), "legacy": Tools("nft")}.get(variant)


# -- reading the live state back -------------------------------------------------

_CREATE = re.compile(r"create (\S+) (\S+)(.*)")


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
    jumps: int = 0  # how many FORWARD rules jump to CG-FORWARD

    def digest(self) -> str | None:
        for line in self.chains.get(FORWARD_CHAIN, [])[:1]:
            m = re.search(r'--comment "' + re.escape(DIGEST_PREFIX) + r'([0-9a-f]+)"', line)
            if m:
                return m.group(1)
        return None

    def table(self) -> Table:
        order = sorted(self.chains, key=lambda c: (c != FORWARD_CHAIN, c))
        return Table(self.version, tuple(order), tuple(r for c in order for r in self.chains[c]), self.jumps > 0)

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
            elif chain == "FORWARD" and line == f"-A FORWARD -j {FORWARD_CHAIN}":
                live.jumps += 1
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
