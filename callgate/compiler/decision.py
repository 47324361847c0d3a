"""One decision per packet: an endpoint direction's tiers lowered to address × port cells.

The IR says what an endpoint direction enforces as tiers of rules tried in
order (first match; PASS hands over to the next tier; after the last tier,
allow). A backend that walks those rules pays one set look-up per rule per
packet. This module computes, at compile time, what the walk would decide for
every (peer address, protocol, destination port) of one address family, as
disjoint cells, so that a backend can answer each packet with one look-up:

* :class:`Program` — the rules of one endpoint direction and family as the
  decision sees them (:func:`programs` builds them from the IR), or of one
  tier of it (:func:`tier_programs`: each but the last decides PASS where the
  tier passes on, and the next tier's program takes the packet; the nft
  backend gives each tier a map of its own, so endpoints whose tiers are
  equal share it whatever their other tiers hold). Its
  :attr:`~Program.name` hashes its structure (rules, set names, verdicts,
  rule ids, position), not the sets' elements: pod churn changes cells, never
  names, and endpoints whose programs are equal share one decision.
* :func:`lower` — the program over the current set elements: ``rest``, the
  decision by address alone for packets that only rules without ports match
  (other protocols, ports no rule names), where it is not the program's
  default; and ``ported``, cells of (address interval, protocol, port range)
  where a ported rule makes the decision differ from ``rest`` (or the
  default). Every cell carries the :class:`Decision`: ALLOW or DENY and the
  rule id that decided (None: a tier's default or the end of the tiers), or
  PASS for a tier's program that passes on.
* :func:`lookup` runs a lowered table for one packet (ported cell, else
  ``rest``, else the default) and :meth:`Program.decide` runs the program
  rule by rule: property tests hold the two equal, and the program equal to
  the IR interpreter and the evaluator.

A PASS rule never decides, so its hits are not counted apart: a packet is
counted once, at the rule that decided it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from callgate.compiler import addresses
from callgate.compiler.ir import Chain, EndpointRules, Family, L4Match, L4Protocol, RuleSet, Verdict, short_hash

Interval = addresses.Interval
PROTOCOL_NUMBERS: dict[L4Protocol, int] = {"tcp": 6, "udp": 17, "sctp": 132}
PORTS = (0, 65535)
_VERSIONS: dict[Family, int] = {"ip": 4, "ip6": 6}


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict  # ALLOW or DENY; PASS only from a tier's program that passes on (see Program.passes_on)
    rule: str | None = None  # the id of the rule that decided; None: a default

    def __str__(self) -> str:
        return f"{self.verdict.value}:{self.rule or 'default'}"


@dataclass(frozen=True, slots=True)
class Step:
    """One rule as the decision sees it. ``peers`` names an address set (None:
    any address); ``pairs`` names an (address, port) set instead; ``l4`` None:
    any protocol and port."""

    verdict: Verdict
    rule: str
    peers: str | None
    pairs: str | None
    l4: L4Match | None

    def covers(self, cls: PortClass) -> bool:
        """Whether every packet of ``cls`` passes the step's L4 match."""
        if self.l4 is None:
            return True
        if self.l4.protocol != cls.protocol:
            return False
        if self.pairs is not None:
            # Its ports come from the pairs; every one of them is a class of its own.
            return cls.first == cls.last
        if not self.l4.ports:
            return True
        return any(r.first <= cls.first and cls.last <= r.last for r in self.l4.ports)


@dataclass(frozen=True, slots=True)
class Tier:
    steps: tuple[Step, ...]
    default: Verdict


@dataclass(frozen=True, slots=True, order=True)
class PortClass:
    """Destination ports ``first``..``last`` of one protocol, through which no rule's port range has a border."""

    protocol: L4Protocol
    first: int
    last: int


@dataclass(frozen=True)
class Program:
    """What one endpoint direction (or one tier of it) decides for one address family.

    ``passes_on``: this is the tier at that position of a direction that has
    more tiers after it, and a pass (no rule deciding) is its decision
    (Decision PASS, no rule id): the next tier takes the packet. None: a pass
    through the last tier allows."""

    family: Family
    tiers: tuple[Tier, ...]
    passes_on: int | None = None

    @cached_property
    def name(self) -> str:
        parts: list[str] = [self.family]
        if self.passes_on is not None:
            parts.append(f"passes on {self.passes_on}")
        for tier in self.tiers:
            parts.append(f"tier {tier.default.value}")
            parts.extend(f"{s.verdict.value} {s.rule} {s.peers} {s.pairs} {s.l4}" for s in tier.steps)
        return short_hash("decision", *parts)

    @cached_property
    def default(self) -> Decision:
        """The decision when no rule matches."""
        return self.decide(lambda _step: False)

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        return tuple(s for tier in self.tiers for s in tier.steps)

    def decide(self, matches: Callable[[Step], bool]) -> Decision:
        """First match across the tiers; ``matches`` says whether a step matches the packet."""
        for tier in self.tiers:
            verdict, rule = tier.default, None
            for step in tier.steps:
                if matches(step):
                    verdict, rule = step.verdict, step.rule
                    break
            if verdict is not Verdict.PASS:
                return Decision(verdict, rule)
        return Decision(Verdict.PASS if self.passes_on is not None else Verdict.ALLOW)

    def decide_packet(self, sources: Sources, address: int, protocol: str | None, port: int) -> Decision:
        """The decision for one packet, rule by rule (``protocol`` None: one that is not TCP, UDP or SCTP)."""
        def matches(step: Step) -> bool:
            if step.l4 is not None:
                if step.l4.protocol != protocol:
                    return False
                if step.l4.ports and step.pairs is None and not any(r.first <= port <= r.last for r in step.l4.ports):
                    return False
            if step.pairs is not None:
                return address in sources.pair_addresses(step.pairs, port)
            return step.peers is None or _contains(sources.intervals(step.peers), address)
        return self.decide(matches)

    def port_classes(self, sources: Sources) -> list[PortClass]:
        """The port classes in which some step with an L4 match applies (elsewhere only
        steps without one do, which is what ``rest`` answers)."""
        borders: dict[L4Protocol, set[int]] = {}
        for step in self.steps:
            if step.l4 is None:
                continue
            cuts = borders.setdefault(step.l4.protocol, set())
            if step.pairs is not None:
                for port in sources.pair_ports(step.pairs):
                    cuts.update((port, port + 1))
            for r in step.l4.ports:
                cuts.update((r.first, r.last + 1))
        classes = []
        for protocol, cuts in sorted(borders.items()):
            points = sorted({PORTS[0], *(c for c in cuts if PORTS[0] < c <= PORTS[1])})
            bounds = [*points, PORTS[1] + 1]
            for first, nxt in itertools.pairwise(bounds):
                cls = PortClass(protocol, first, nxt - 1)
                if any(s.l4 is not None and s.covers(cls) for s in self.steps):
                    classes.append(cls)
        return classes


class Sources:
    """The set elements a program looks at, parsed once: address sets as
    sorted intervals, (address, port) sets as addresses per port."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._pairs: dict[str, dict[int, list[int]]] = {}

    def intervals(self, name: str) -> list[Interval]:
        return self.ruleset.address_set(name).intervals

    def _by_port(self, name: str) -> dict[int, list[int]]:
        found = self._pairs.get(name)
        if found is None:
            found = {}
            for address, port in self.ruleset.port_set(name).elements:
                found.setdefault(port, []).append(addresses.address_int(address))
            for values in found.values():
                values.sort()
            self._pairs[name] = found
        return found

    def pair_ports(self, name: str) -> list[int]:
        return sorted(self._by_port(name))

    def pair_addresses(self, name: str, port: int) -> list[int]:
        return self._by_port(name).get(port, [])


def _contains(intervals: Sequence[Interval], value: int) -> bool:
    i = bisect.bisect_right(intervals, (value, float("inf"))) - 1
    return i >= 0 and intervals[i][1] >= value


@dataclass(frozen=True)
class DecisionTable:
    """A program lowered over the current set elements (see the module docstring)."""

    program: Program
    rest: tuple[tuple[int, int, Decision], ...]  # (first, last address, decision), sorted, disjoint
    ported: tuple[tuple[PortClass, int, int, Decision], ...]  # (class, first, last address, decision)

    @property
    def default(self) -> Decision:
        return self.program.default


def lookup(table: DecisionTable, address: int, protocol: str | None, port: int) -> Decision:
    """What a backend holding ``table`` decides for one packet: its ported cell, else ``rest``, else the default."""
    for cls, first, last, decision in table.ported:
        if cls.protocol == protocol and cls.first <= port <= cls.last and first <= address <= last:
            return decision
    for first, last, decision in table.rest:
        if first <= address <= last:
            return decision
    return table.default


def decisions_at(program: Program, classes: Sequence[PortClass], sources: Sources,
                 address: int) -> tuple[Decision, list[Decision]]:
    """For one address: the ``rest`` decision and each class's decision, as
    :func:`lower` computes them for the cell holding it (how a backend updates
    the cells of the few addresses a pod change touched, without lowering the
    whole program again)."""
    def member(step: Step, cls: PortClass | None) -> bool:
        if step.pairs is not None:
            return cls is not None and _contains_sorted(sources.pair_addresses(step.pairs, cls.first), address)
        return step.peers is None or _contains(sources.intervals(step.peers), address)

    def in_class(cls: PortClass) -> Callable[[Step], bool]:
        return lambda step: step.covers(cls) and member(step, cls)

    rest = program.decide(lambda step: step.l4 is None and member(step, None))
    return rest, [program.decide(in_class(cls)) for cls in classes]


def _contains_sorted(values: Sequence[int], value: int) -> bool:
    i = bisect.bisect_left(values, value)
    return i < len(values) and values[i] == value


def lower(program: Program, sources: Sources, rest_cells: bool = True) -> DecisionTable:
    """The cells of ``program`` over the sets' current elements.

    ``rest_cells`` False: leave ``rest`` empty (a backend that answers it
    another way, e.g. walking the rules without ports over shared sets); the
    ported cells are the same, and only the addresses that some rule with
    ports can match are visited, which spares sweeping large sets of rules
    without ports for every endpoint that has them."""
    classes = program.port_classes(sources)
    # What each step tests in each context: an address set, the addresses of
    # an (address, port) set with one port, or nothing (any address).
    keys: dict[tuple[str, str, int], int] = {}

    def key(kind: str, name: str, port: int = 0) -> int:
        return keys.setdefault((kind, name, port), len(keys))

    def tests(steps: Iterable[Step], cls: PortClass | None) -> list[tuple[Step, int | None]]:
        out: list[tuple[Step, int | None]] = []
        for step in steps:
            if step.pairs is not None:
                assert cls is not None
                out.append((step, key("pairs", step.pairs, cls.first)))
            else:
                out.append((step, None if step.peers is None else key("set", step.peers)))
        return out

    rest_tests = tests((s for s in program.steps if s.l4 is None), None)
    class_tests = [(cls, tests((s for s in program.steps if s.covers(cls)), cls)) for cls in classes]
    intervals: dict[int, Sequence[Interval]] = {}
    for (kind, name, port), index in keys.items():
        intervals[index] = sources.intervals(name) if kind == "set" else [(a, a) for a in
                                                                          sources.pair_addresses(name, port)]
    ported_mask = 0  # the sources of rules with ports
    for _cls, checks in class_tests:
        for step, k in checks:
            if step.l4 is not None and k is not None:
                ported_mask |= 1 << k
    narrow = not rest_cells and not any(s.l4 is not None and s.peers is None and s.pairs is None
                                        for s in program.steps)
    if narrow:
        # Where no rule with ports matches, every class decides as `rest`:
        # only the addresses of their sets need visiting.
        within = addresses.merge(iv for k, ivs in intervals.items() if ported_mask >> k & 1 for iv in ivs)
        intervals = {k: ivs if ported_mask >> k & 1 else _clip(ivs, within) for k, ivs in intervals.items()}
    rest_memo: dict[int, Decision] = {}
    class_memo: list[dict[int, Decision]] = [{} for _ in class_tests]

    def decide(checks: list[tuple[Step, int | None]], mask: int) -> Decision:
        # Equal steps test the same thing, so a step's value identifies it.
        members = frozenset(s for s, k in checks if k is None or mask >> k & 1)
        return program.decide(members.__contains__)

    rest: list[tuple[int, int, Decision]] = []
    ported: list[tuple[PortClass, int, int, Decision]] = []
    last_cell: list[tuple[int, int, Decision] | None] = [None] * len(class_tests)
    for first, last, mask in _sweep(intervals, _VERSIONS[program.family]):
        if narrow and not mask & ported_mask:
            continue
        fallback = rest_memo.get(mask)
        if fallback is None:
            fallback = rest_memo[mask] = decide(rest_tests, mask)
        if rest_cells and fallback != program.default:
            _append(rest, first, last, fallback)
        for i, (cls, checks) in enumerate(class_tests):
            decision = class_memo[i].get(mask)
            if decision is None:
                decision = class_memo[i][mask] = decide(checks, mask)
            if decision != fallback:
                previous = last_cell[i]
                if previous is not None and previous[1] + 1 == first and previous[2] == decision:
                    last_cell[i] = (previous[0], last, decision)
                else:
                    if previous is not None:
                        ported.append((cls, *previous))
                    last_cell[i] = (first, last, decision)
    for i, (cls, _checks) in enumerate(class_tests):
        if (cell := last_cell[i]) is not None:
            ported.append((cls, *cell))
    ported.sort(key=lambda c: (c[0], c[1]))
    return DecisionTable(program, tuple(rest), tuple(ported))


def _clip(intervals: Sequence[Interval], within: Sequence[Interval]) -> list[Interval]:
    """The parts of sorted disjoint ``intervals`` inside sorted disjoint ``within``."""
    out: list[Interval] = []
    for lo, hi in within:
        i = max(bisect.bisect_right(intervals, (lo, float("inf"))) - 1, 0)
        while i < len(intervals) and intervals[i][0] <= hi:
            a, b = intervals[i]
            if b >= lo:
                out.append((max(a, lo), min(b, hi)))
            i += 1
    return out


def _append(cells: list[tuple[int, int, Decision]], first: int, last: int, decision: Decision) -> None:
    if cells and cells[-1][1] + 1 == first and cells[-1][2] == decision:
        cells[-1] = (cells[-1][0], last, decision)
    else:
        cells.append((first, last, decision))


def _sweep(intervals: Mapping[int, Sequence[Interval]], version: int) -> Iterable[tuple[int, int, int]]:
    """The whole address space of ``version`` as consecutive (first, last, mask)
    pieces: bit k of the mask is set where source k holds the addresses."""
    top = (1 << (32 if version == 4 else 128)) - 1
    # (position, bit, +1 entering / -1 leaving); leaving sorts before entering at one position
    streams = [[(pos, delta, k) for lo, hi in ivs for pos, delta in ((lo, 1), (hi + 1, -1))]
               for k, ivs in intervals.items()]
    mask = 0
    start = 0
    for pos, delta, k in heapq.merge(*streams):
        if pos > start:
            yield start, pos - 1, mask
            start = pos
        mask = mask | (1 << k) if delta > 0 else mask & ~(1 << k)
    if start <= top:
        yield start, top, mask


# Programs by endpoint object: the incremental compiler hands on the very
# EndpointRules objects of endpoints that did not change, and computing rule
# ids (a hash over every origin merged into a rule: 3,000 for the hottest rule
# at 50k pods) for every endpoint on every pod change cost ~40 ms. The entry
# holds the endpoint, so its id cannot be reused while it is cached.
_PROGRAMS: dict[tuple[int, bool], tuple[EndpointRules, dict[tuple[str, Family], tuple[Program, ...]]]] = {}
_PROGRAMS_MAX = 4096


def programs(endpoint: EndpointRules) -> dict[tuple[str, Family], Program]:
    """(direction, family) -> the program of each isolated direction of
    ``endpoint``: all its tiers, first match, a pass going on to the next tier."""
    return {key: found[0] for key, found in _cached(endpoint, False).items()}


def tier_programs(endpoint: EndpointRules) -> dict[tuple[str, Family], tuple[Program, ...]]:
    """(direction, family) -> a program per tier of each isolated direction,
    in order; each but the last passes on (its Decision PASS: the next one
    decides). Run in order they decide as :func:`programs`' one does, and a
    tier's program is equal for every endpoint the same policies select in
    that tier, whatever its other tiers hold."""
    return _cached(endpoint, True)


def _cached(endpoint: EndpointRules, per_tier: bool) -> dict[tuple[str, Family], tuple[Program, ...]]:
    key = (id(endpoint), per_tier)
    hit = _PROGRAMS.get(key)
    if hit is not None and hit[0] is endpoint:
        return hit[1]
    if len(_PROGRAMS) >= _PROGRAMS_MAX:
        _PROGRAMS.clear()
    out: dict[tuple[str, Family], tuple[Program, ...]] = {}
    for direction, chains in (("ingress", endpoint.ingress), ("egress", endpoint.egress)):
        if not chains:
            continue
        for family in ("ip", "ip6"):
            tiers = tuple(_tier(chain, family) for chain in chains)
            if per_tier:
                out[(direction, family)] = tuple(
                    Program(family, (tier,), position if position < len(tiers) - 1 else None)
                    for position, tier in enumerate(tiers))
            else:
                out[(direction, family)] = (Program(family, tiers),)
    _PROGRAMS[key] = (endpoint, out)
    return out


def _tier(chain: Chain, family: Family) -> Tier:
    steps = tuple(Step(rule.verdict, rule.id, rule.peer_set, rule.peer_port_set, rule.l4)
                  for rule in chain.rules if rule.family in (None, family))
    return Tier(steps, chain.default)
