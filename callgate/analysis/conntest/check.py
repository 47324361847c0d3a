"""Checking expectations: with the reference evaluator, or against one node's live table.

Pairs are many (``* -> *`` over 10,000 pods is 10^8 of them) but verdicts are
few: endpoints of one class of :class:`~callgate.analysis.connectivity.Partition`
get the same verdicts, and a verdict is constant over each port segment. So
each expectation is evaluated once per (source class, destination class, port
segment), on a representative pair, and a failure counts the pod pairs it
stands for. Sources are also split by ``except``, which looks at names.

``--live``: the node's table is read back and compared with the one compiled
from the same inputs (the enforcer's own drift check, exact on the table's
normal form). In sync, the compiled IR *is* what the kernel holds, and it is
interpreted (:class:`~callgate.compiler.interpret.Interpreter`) for the sides
the node enforces (its local endpoints; the other side of a pair is enforced
elsewhere and taken from the evaluator). Out of sync, the table's verdicts are
no policy's: that is the failure, with the diff. Reading the table back into
IR instead would be a second parser of our own layout for each backend, with
no oracle to test it against but this comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from callgate.analysis.connectivity import Partition, ProtocolPortRange
from callgate.analysis.conntest.spec import Expectation, Selector
from callgate.compiler.interpret import Interpreter
from callgate.policy.evaluator import Decision, Evaluator
from callgate.policy.model import Endpoint, Inventory, IPAddress, PolicySet

MAX_SHOWN = 3  # failing (class pair, port) cases explained per expectation; the rest are counted


@dataclass(frozen=True)
class Case:
    """One representative connection that did not go as expected."""

    src_name: str
    dst_name: str
    decision: Decision
    expected: bool
    got: bool
    families: tuple[int, ...]
    pairs: int  # pod pairs this case stands for

    def same(self, other: Case) -> bool:
        """The same connection gone the same way (in another IP family)."""
        d, e = self.decision, other.decision
        return (self.src_name, self.dst_name, d.port, d.protocol, self.got) == \
            (other.src_name, other.dst_name, e.port, e.protocol, other.got)


@dataclass
class Outcome:
    expectation: Expectation
    checked: int = 0  # (pod pair, port segment) combinations checked, counted per pair
    families: dict[int, int] = field(default_factory=dict)  # IP family -> pod (or address) pairs checked
    failures: list[Case] = field(default_factory=list)
    failed_pairs: int = 0
    problem: str | None = None  # the expectation could not be checked (e.g. selects nothing)
    skipped: str | None = None  # nothing of it is on the node (--live)

    @property
    def pairs(self) -> int:
        """Pairs checked, the most of any family (a pair is checked once per family both have)."""
        return max(self.families.values(), default=0)

    @property
    def passed(self) -> bool:
        return self.problem is None and not self.failures


@dataclass(frozen=True)
class _Member:
    key: str  # endpoint key, or the address
    ip: IPAddress
    endpoint: Endpoint | None


def _selected(part: Partition, sel: Selector, family: int) -> list[_Member]:
    if sel.ip is not None:
        if sel.ip.version != family:
            return []
        ep = next((e for e in part.endpoints if sel.ip in e.ips), None)
        return [_Member(ep.key if ep else str(sel.ip), sel.ip, ep)]
    return [_Member(e.key, part.ip[e.key], e) for e in part.endpoints if sel.matches(e)]


def _ports(part: Partition, ranges: tuple[ProtocolPortRange, ...], dst: _Member, allow: bool
           ) -> list[ProtocolPortRange]:
    """The port segments to check for one destination: within the given ranges, else the
    ports it serves (allow) or every port (deny). One port per segment decides it."""
    if not ranges:
        if allow:
            served = dst.endpoint.ports if dst.endpoint is not None else ()
            return sorted({part.segment_of(p.port, p.protocol) for p in served})
        return part.segments()
    out: set[ProtocolPortRange] = set()
    for r in ranges:
        seg = part.segment_of(r.lo, r.protocol)
        while seg.lo <= r.hi:
            out.add(ProtocolPortRange(r.protocol, max(seg.lo, r.lo), min(seg.hi, r.hi)))
            if seg.hi >= 65535:
                break
            seg = part.segment_of(seg.hi + 1, r.protocol)
    return sorted(out)


K = TypeVar("K")


def _classes(part: Partition, members: list[_Member], key: Callable[[_Member], K]
             ) -> dict[tuple[object, K], list[_Member]]:
    """Members by class (an address outside the inventory is a class of its own) and ``key``."""
    out: dict[tuple[object, K], list[_Member]] = {}
    for m in members:
        cls = part.class_of[m.endpoint.key] if m.endpoint is not None else ("ip", m.key)
        out.setdefault((cls, key(m)), []).append(m)
    return out


def _pair(sources: list[_Member], destinations: list[_Member]) -> tuple[_Member, _Member, int] | None:
    """A representative pair of different members, and how many such pairs there are."""
    dst_keys = {d.key for d in destinations}
    same = sum(1 for s in sources if s.key in dst_keys)
    count = len(sources) * len(destinations) - same
    if count == 0:
        return None
    for s in sources:
        for d in destinations:
            if s.key != d.key:
                return s, d, count
    return None  # pragma: no cover - count > 0 means a pair exists


class Checker:
    """Checks expectations against one inventory and policy set (optionally one node's live table)."""

    def __init__(self, inventory: Inventory, policies: PolicySet, live: tuple[str, Interpreter] | None = None
                 ) -> None:
        self.inventory = inventory
        self.evaluator = Evaluator(policies, inventory)
        self.parts = {f: Partition(inventory, [policies], f) for f in (4, 6)}
        self.live = live

    def check(self, exp: Expectation) -> Outcome:
        outcome = Outcome(exp)
        for sel, side in ((exp.sources, "source"), (exp.destinations, "destination"),
                          *((s, "except") for s in exp.exceptions)):
            if sel.ip is None and not any(sel.matches(e) for e in self.inventory.endpoints):
                outcome.problem = f"{side} {sel.text} selects no endpoint of the inventory"
                return outcome
        for family, part in self.parts.items():
            self._family(exp, part, family, outcome)
        if outcome.pairs == 0 and outcome.problem is None:
            if self.live is not None:
                outcome.skipped = f"no pair of it has an endpoint on {self.live[0]}"
            else:
                outcome.problem = "no pair to check (source and destination are one pod, or share no IP family)"
        if outcome.problem is None and outcome.pairs and outcome.checked == 0:
            outcome.problem = "no port to check: name the ports (the destinations serve none)"
        return outcome

    def _groups(self, exp: Expectation, part: Partition, family: int
                ) -> Iterator[tuple[list[_Member], list[_Member], bool]]:
        node = self.live[0] if self.live else None

        def local(m: _Member) -> bool:
            return m.endpoint is not None and m.endpoint.node == node

        sources = _classes(part, _selected(part, exp.sources, family),
                           lambda m: (exp.expected(m.endpoint, m.ip), local(m)))
        dests = _classes(part, _selected(part, exp.destinations, family), local)
        for (_, (expected, src_local)), srcs in sources.items():
            for (_, dst_local), dsts in dests.items():
                if node is not None and not (src_local or dst_local):
                    continue  # enforced on other nodes only
                yield srcs, dsts, expected

    def _family(self, exp: Expectation, part: Partition, family: int, outcome: Outcome) -> None:
        for srcs, dsts, expected in self._groups(exp, part, family):
            found = _pair(srcs, dsts)
            if found is None:
                continue
            src, dst, count = found
            outcome.families[family] = outcome.families.get(family, 0) + count
            for seg in _ports(part, exp.ports, dst, expected):
                outcome.checked += count
                decision = self.evaluator.evaluate(src.ip, dst.ip, seg.lo, seg.protocol)
                got = decision.allowed if self.live is None else self._live(decision, src, dst)
                if got != expected:
                    outcome.failed_pairs += count
                    case = Case(src.key, dst.key, decision, expected, got, (family,), count)
                    alike = next((i for i, c in enumerate(outcome.failures) if c.same(case)), None)
                    if alike is not None:  # shown once, for both families
                        c = outcome.failures[alike]
                        outcome.failures[alike] = dataclasses.replace(c, families=(*c.families, family))
                    elif len(outcome.failures) < MAX_SHOWN:
                        outcome.failures.append(case)

    def _live(self, decision: Decision, src: _Member, dst: _Member) -> bool:
        """The node's table for the sides it enforces; the evaluator for the others."""
        assert self.live is not None
        node, interpreter = self.live
        src_local = src.endpoint is not None and src.endpoint.node == node
        dst_local = dst.endpoint is not None and dst.endpoint.node == node
        if decision.self_traffic:
            return True
        local_ok = interpreter.allowed(str(src.ip), str(dst.ip), decision.port, decision.protocol)
        return local_ok and (src_local or decision.egress.allowed) and (dst_local or decision.ingress.allowed)

