"""The decision part of the nft layout: one verdict-map look-up per packet.

Each isolated endpoint direction is one chain (named after its first tier):

    chain in_<endpoint> {                                # out_<endpoint>: daddr, allow = return
        ip saddr . meta l4proto . th dport vmap @dec4_<h>     # cells of ported rules
        ip6 saddr . meta l4proto . th dport vmap @dec6_<h>
        ip saddr vmap @any4_<h>                              # rules without ports (any protocol)
        ip6 saddr vmap @any6_<h>
        counter drop                                         # the tiers' default
    }

The maps hold the cells of the direction's lowered program
(:mod:`callgate.compiler.decision`: tiers with ALLOW/DENY/PASS composed at
compile time); a map exists when the program has rules of its kind. An element
``goto``s the chain of the rule that decided, which counts and acts::

    chain allow_in_<rule id> { counter accept comment "<rule id> <origin>" }   # allow_out_…: return
    chain deny_<rule id> { counter drop comment "…" }
    chain default_deny / default_allow_in / default_allow_out   (a default that a cell must state)

so per-rule counters keep working (and flow logs can go there), and a packet
costs one look-up whatever the number of policies, port specifications or
tiers (a second one only when it misses the ported map and rules without
ports exist).

Form: a map whose elements can be enumerated (single addresses × single
ports, at most :data:`EXPAND_MAX`) is a hash map — the cheapest look-up, and
the common case, since pod selectors yield single pod addresses. Otherwise
(wide ipBlocks, port ranges, protocol-wide rules) it is an interval map of the
cells as they are. Maps are named by the program's structure, so endpoints
with equal rules share them and pod churn changes elements only.

:class:`Layout` is everything this part of the table holds; the enforcer keeps
the one it applied, and :func:`update_layout` patches it for a new RuleSet by
re-deciding only the addresses whose set membership changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from callgate.compiler import addresses
from callgate.compiler.decision import (
    Decision,
    PortClass,
    Program,
    Sources,
    decisions_at,
    lower,
    programs,
)
from callgate.compiler.ir import AddressPortSet, AddressSet, EndpointRules, Family, Rule, RuleSet, Verdict, short_hash
from callgate.enforcers.base import FlowLogging, rule_comment
from callgate.enforcers.nft.actions import (
    DEFAULT_DENY,
    ENFORCED,
    ChainRules,
    Style,
    decision_chain,
    default_chains,
    default_rule,
    target,
)
from callgate.enforcers.nft.layout import COMMENT_MAX, obj

EXPAND_MAX = 131_072  # elements of one hash-form map (~95 bytes of kernel memory each)
# And no single cell is enumerated into more elements than this: pod
# selectors give single addresses and runs of them (the widest run at 50k pods
# in bench/synth.py's cluster: 1,376), but a wide ipBlock or a protocol-wide
# rule stays an interval map. (At 65,536, a policy adding a /16 ipBlock
# rendered and loaded 65,536 elements per map naming it: 1-2.6 s to the kernel.)
CELL_EXPAND_MAX = 4_096
_VERSION: dict[Family, int] = {"ip": 4, "ip6": 6}
_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}
Expr = dict[str, Any]
Key = Any  # hash form: (address, protocol, port) / address; interval form: cells as intervals


@dataclass
class DecisionMap:
    """One verdict map as rendered: its cells, keyed as its form needs."""

    name: str
    direction: str
    program: Program
    ported: bool  # key address . protocol . port (else: address)
    hashed: bool
    classes: tuple[PortClass, ...]
    elements: dict[Key, str] = field(default_factory=dict)  # key -> target chain
    style: Style = ENFORCED  # how its endpoints act on a decision: the chains its elements name

    @property
    def family(self) -> Family:
        return self.program.family

    def command(self) -> dict[str, Any]:
        """``add map`` with every element."""
        typ: Any = [_ADDR_TYPE[self.family], "inet_proto", "inet_service"] if self.ported else _ADDR_TYPE[self.family]
        body = obj(name=self.name, type=typ, map="verdict")
        if not self.hashed:
            body["flags"] = ["interval"]
        if self.elements:
            body["elem"] = self.element_json(sorted(self.elements.items()))
        return {"add": {"map": body}}

    def element_json(self, items: Iterable[tuple[Key, str]]) -> list[Any]:
        return [[self.key_json(key), {"goto": {"target": chain}}] for key, chain in items]

    def key_json(self, key: Key) -> Any:
        version = _VERSION[self.family]
        if self.hashed:
            if self.ported:
                address, protocol, port = key
                return {"concat": [addresses.address_text(address, version), protocol, port]}
            return addresses.address_text(key, version)
        if self.ported:
            lo, hi, protocol, first, last = key
            ports: Any = first if first == last else {"range": [first, last]}
            return {"concat": [_interval(lo, hi, version), protocol, ports]}
        return _interval(key[0], key[1], version)


def _interval(lo: int, hi: int, version: int) -> Any:
    text = addresses.interval_text(lo, hi, version)
    if "/" in text:
        addr, length = text.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in text:
        first, last = text.split("-", 1)
        return {"range": [first, last]}
    return text


@dataclass
class Layout:
    """The decision part of the table: maps, endpoint chains, verdict chains,
    and the peer sets the rule walks look up."""

    maps: dict[str, DecisionMap]
    chains: dict[str, list[list[Expr]]]  # endpoint chain -> its rules' expressions
    verdicts: dict[str, ChainRules]  # verdict chain -> its rules (expressions, comment)
    sets: dict[str, AddressSet] = field(default_factory=dict)  # peer sets of the rule walks
    logging: FlowLogging | None = None  # the table's flow log, if any (see .actions)


def map_name(kind: str, direction: str, program: Program, style: Style = ENFORCED) -> str:
    """Named by structure; an audited endpoint's maps name other chains, so other maps."""
    extra = ("audit",) if style.audit else ()
    return f"{kind}{_VERSION[program.family]}_{short_hash(direction, program.name, *extra)}"


def style_of(ep: EndpointRules, logging: FlowLogging | None) -> Style:
    return Style(audit=ep.audit, logging=logging)


def build_layout(ruleset: RuleSet, logging: FlowLogging | None = None) -> Layout:
    """The whole decision part for ``ruleset`` (with the flow log ``logging``, if any)."""
    sources = Sources(ruleset)
    layout = Layout({}, {}, verdict_chains(ruleset, logging), logging=logging)
    for ep in ruleset.endpoints:
        progs = programs(ep)
        style = style_of(ep, logging)
        for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
            if not tiers:
                continue
            family_programs = [progs[(direction, family)] for family in ("ip", "ip6")]
            layout.chains[tiers[0].name] = _part(ep, style).chains[tiers[0].name]
            for program in family_programs:
                layout.sets.update((name, ruleset.address_set(name)) for name in walk_sets(program))
                if any(map_name(kind, direction, program, style) not in layout.maps for kind in _kinds(program)):
                    layout.maps.update((m.name, m) for m in _maps(direction, program, sources, style))
    return layout


def _walks(program: Program) -> bool:
    """Whether the program's rules without ports are answered by a walk over
    shared peer sets (one tier: the walk's first match is the decision)
    rather than by a map of their own (tiers with PASS between them)."""
    return len(program.tiers) == 1


def walk_sets(program: Program) -> list[str]:
    """The peer sets a program's walk looks up."""
    if not _walks(program):
        return []
    return [s.peers for s in program.steps if s.l4 is None and s.peers is not None]


def _kinds(program: Program) -> list[str]:
    """The maps a program's rules call for: "dec" (rules with ports), "any"
    (rules without, when they are not walked)."""
    kinds = []
    if any(s.l4 is not None for s in program.steps):
        kinds.append("dec")
    if any(s.l4 is None for s in program.steps) and not _walks(program):
        kinds.append("any")
    return kinds


def _maps(direction: str, program: Program, sources: Sources, style: Style) -> list[DecisionMap]:
    """The maps of one program (those its rules call for), with their elements."""
    kinds = _kinds(program)
    ported, rest = "dec" in kinds, "any" in kinds
    if not kinds:
        return []
    table = lower(program, sources, rest_cells=rest)
    out = []
    if ported:
        classes = tuple(program.port_classes(sources))
        cells = [(cls, lo, hi, target(direction, d, style)) for cls, lo, hi, d in table.ported]
        hashed = _enumerable([(hi - lo + 1) * (cls.last - cls.first + 1) for cls, lo, hi, _ in cells])
        m = DecisionMap(map_name("dec", direction, program, style), direction, program, True, hashed, classes,
                        style=style)
        for cls, lo, hi, chain in cells:
            if hashed:
                m.elements.update(((a, cls.protocol, p), chain) for a in range(lo, hi + 1)
                                  for p in range(cls.first, cls.last + 1))
            else:
                m.elements[(lo, hi, cls.protocol, cls.first, cls.last)] = chain
        out.append(m)
    if rest:
        cells_rest = [(lo, hi, target(direction, d, style)) for lo, hi, d in table.rest]
        hashed = _enumerable([hi - lo + 1 for lo, hi, _ in cells_rest])
        m = DecisionMap(map_name("any", direction, program, style), direction, program, False, hashed, (),
                        style=style)
        for lo, hi, chain in cells_rest:
            if hashed:
                m.elements.update((a, chain) for a in range(lo, hi + 1))
            else:
                m.elements[(lo, hi)] = chain
        out.append(m)
    return out


def _enumerable(cell_sizes: list[int]) -> bool:
    return all(n <= CELL_EXPAND_MAX for n in cell_sizes) and sum(cell_sizes) <= EXPAND_MAX


def chain_rules(direction: str, family_programs: list[Program], style: Style = ENFORCED) -> list[list[Expr]]:
    """An endpoint direction's chain: per family the map look-up, then the
    rules without ports (their walk, or their address map), then the default.

    The map comes first: a packet that a rule with ports decides costs one
    look-up, whatever the number of port specifications. (Walking the rules
    without ports first would spare their packets the map look-up and cost
    everyone else a set look-up per rule that misses; measured in
    docs/performance.md.)"""
    field_name = "saddr" if direction == "ingress" else "daddr"
    rules: list[list[Expr]] = []
    for program in family_programs:
        address = {"payload": {"protocol": program.family, "field": field_name}}
        for kind in _kinds(program):
            key = address if kind == "any" else {"concat": [address, {"meta": {"key": "l4proto"}},
                                                            {"payload": {"protocol": "th", "field": "dport"}}]}
            rules.append([{"vmap": {"key": key, "data": "@" + map_name(kind, direction, program, style)}}])
        rules.extend(_walk(direction, program, address, style))
    default = family_programs[0].default  # the tiers' defaults do not depend on the family
    rules.append(default_rule(direction, default.verdict, style))
    return rules


_NFPROTO = {"ip": "ipv4", "ip6": "ipv6"}


def _walk(direction: str, program: Program, address: Expr, style: Style) -> list[list[Expr]]:
    """The rules without ports of a one-tier program, in order: the first whose
    peer set holds the address decides (where the ported map had no cell, the
    decision is theirs: the map holds cells only where it differs)."""
    if not _walks(program):
        return []
    rules: list[list[Expr]] = []
    for step in program.steps:
        if step.l4 is not None:
            continue
        chain = {"goto": {"target": target(direction, program.decide(step.__eq__), style)}}
        if step.peers is None:  # any address of this family: the walk ends here
            rules.append([{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                                     "right": _NFPROTO[program.family]}}, chain])
            break
        rules.append([{"match": {"op": "==", "left": address, "right": "@" + step.peers}}, chain])
    return rules


@dataclass(frozen=True)
class _EndpointPart:
    """What one endpoint contributes apart from map elements: its chains' rules and its rule chains."""

    chains: dict[str, list[list[Expr]]]
    verdicts: dict[str, ChainRules]


# By endpoint object, as programs are (see decision.programs): unchanged
# endpoints are the same objects from one RuleSet to the next.
_PARTS: dict[int, tuple[EndpointRules, Style, _EndpointPart]] = {}


def _part(ep: EndpointRules, style: Style) -> _EndpointPart:
    hit = _PARTS.get(id(ep))
    if hit is not None and hit[0] is ep and hit[1] == style:
        return hit[2]
    if len(_PARTS) >= 4096:
        _PARTS.clear()
    progs = programs(ep)
    part = _EndpointPart({}, {})
    for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
        if tiers:
            part.chains[tiers[0].name] = chain_rules(direction, [progs[(direction, f)] for f in ("ip", "ip6")], style)
            part.verdicts.update(default_chains(direction, style))
        for chain in tiers:
            for rule in chain.rules:
                if rule.verdict is not Verdict.PASS:
                    decision = Decision(rule.verdict, rule.id)
                    part.verdicts.setdefault(target(direction, decision, style),
                                             decision_chain(direction, decision, style, _comment(rule)))
    _PARTS[id(ep)] = (ep, style, part)
    return part


def verdict_chains(ruleset: RuleSet, logging: FlowLogging | None = None) -> dict[str, ChainRules]:
    """A chain per deciding rule (and direction, for allow), plus the defaults a cell may name."""
    out: dict[str, ChainRules] = {}
    plain = False
    for ep in ruleset.endpoints:
        style = style_of(ep, logging)
        plain = plain or style.plain
        out.update(_part(ep, style).verdicts)
    # Only a PASS rule can leave a cell with a default other than the one the
    # chain ends with (a tier's default after a pass): then cells name these.
    # (Endpoints that are not plain have their defaults' chains anyway.)
    if plain and any(rule.verdict is Verdict.PASS for ep in ruleset.endpoints for chain in (*ep.ingress, *ep.egress)
                     for rule in chain.rules):
        out[DEFAULT_DENY] = decision_chain("ingress", Decision(Verdict.DENY), ENFORCED)
        for direction in ("ingress", "egress"):
            out[target(direction, Decision(Verdict.ALLOW), ENFORCED)] = decision_chain(
                direction, Decision(Verdict.ALLOW), ENFORCED)
    return out


def _comment(rule: Rule) -> str | None:
    return rule_comment(rule, COMMENT_MAX)


# -- incremental ---------------------------------------------------------------------

@dataclass
class MapChange:
    gone: list[Key]
    came: list[tuple[Key, str]]


def update_layout(old: Layout, old_rs: RuleSet, new_rs: RuleSet) -> tuple[Layout, dict[str, MapChange]] | None:
    """``old`` (the layout of ``old_rs``) patched for ``new_rs``, and the element
    changes of the maps both hold; None when a map must change form (hash ↔
    interval) or its port classes, which only a rebuild gets right. The flow
    log stays ``old``'s: it belongs to the table (a change replaces it in full)."""
    sources = Sources(new_rs)
    logging = old.logging
    fresh = Layout({}, {}, verdict_chains(new_rs, logging), logging=logging)
    changes: dict[str, MapChange] = {}
    changed_sets = _changed_sets(old_rs, new_rs)
    for ep in new_rs.endpoints:
        progs = programs(ep)
        style = style_of(ep, logging)
        for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
            if not tiers:
                continue
            family_programs = [progs[(direction, family)] for family in ("ip", "ip6")]
            fresh.chains[tiers[0].name] = _part(ep, style).chains[tiers[0].name]
            for program in family_programs:
                fresh.sets.update((name, new_rs.address_set(name)) for name in walk_sets(program))
                names = [map_name(kind, direction, program, style) for kind in _kinds(program)]
                if any(n not in old.maps and n not in fresh.maps for n in names):  # a new program: build it
                    fresh.maps.update((m.name, m) for m in _maps(direction, program, sources, style)
                                      if m.name not in old.maps)
                for name in names:
                    if name in fresh.maps or name not in old.maps:
                        continue
                    patched = _patch(old.maps[name], changed_sets, sources)
                    if patched is None:
                        return None
                    fresh.maps[name], change = patched
                    if change.gone or change.came:
                        changes[name] = change
    return fresh, changes


AnySet = AddressSet | AddressPortSet


def _changed_sets(old: RuleSet, new: RuleSet) -> dict[str, tuple[AnySet | None, AnySet | None]]:
    """Sets whose elements differ between the two RuleSets: name -> (old, new) (None: absent)."""
    before: dict[str, AnySet] = {s.name: s for s in old.address_sets}
    before.update((s.name, s) for s in old.port_sets)
    after: dict[str, AnySet] = {s.name: s for s in new.address_sets}
    after.update((s.name, s) for s in new.port_sets)
    out: dict[str, tuple[AnySet | None, AnySet | None]] = {}
    for name in before.keys() | after.keys():
        a, b = before.get(name), after.get(name)
        if a is b or (a is not None and b is not None and a.digest == b.digest):
            continue
        out[name] = (a, b)
    return out


def _patch(m: DecisionMap, changed_sets: dict[str, tuple[AnySet | None, AnySet | None]],
           sources: Sources) -> tuple[DecisionMap, MapChange] | None:
    names = {n for s in m.program.steps for n in (s.peers, s.pairs) if n is not None}
    touched = names & changed_sets.keys()
    if not touched:
        return m, MapChange([], [])
    if not m.hashed:  # interval cells (few): rebuild the map and compare
        rebuilt = next(x for x in _maps(m.direction, m.program, sources, m.style) if x.ported == m.ported)
        if rebuilt.hashed:
            return None
        gone = [k for k in m.elements if rebuilt.elements.get(k) != m.elements[k]]
        came = [(k, v) for k, v in rebuilt.elements.items() if m.elements.get(k) != v]
        return rebuilt, MapChange(gone, came)
    if m.ported and tuple(m.program.port_classes(sources)) != m.classes:
        return None  # a named port number came or went: the classes move
    moved: set[int] = set()
    for name in touched:
        moved.update(_moved_addresses(*changed_sets[name]))
    return _patch_addresses(m, sorted(moved), sources)


def _patch_addresses(m: DecisionMap, moved: list[int], sources: Sources) -> tuple[DecisionMap, MapChange] | None:
    """A hash-form map with the cells of ``moved`` addresses decided anew."""
    elements = dict(m.elements)
    change = MapChange([], [])
    for address in moved:
        rest, per_class = decisions_at(m.program, m.classes, sources, address)
        wanted: dict[Key, str] = {}
        have: set[Key] = set()
        if m.ported:
            for cls, decision in zip(m.classes, per_class, strict=True):
                ports = range(cls.first, cls.last + 1)
                if decision != rest:
                    wanted.update(((address, cls.protocol, p), target(m.direction, decision, m.style)) for p in ports)
                # A hash map holds a cell for all of its class's ports or none.
                if decision != rest or (address, cls.protocol, cls.first) in elements:
                    have.update((address, cls.protocol, p) for p in ports)
        else:
            if rest != m.program.default:
                wanted[address] = target(m.direction, rest, m.style)
            have.add(address)
        for key in sorted(have):
            before, after = elements.get(key), wanted.get(key)
            if before == after:
                continue
            if before is not None:
                change.gone.append(key)
                del elements[key]
            if after is not None:
                change.came.append((key, after))
                elements[key] = after
    if len(elements) > EXPAND_MAX or any(_run(m, elements, key) > CELL_EXPAND_MAX for key, _ in change.came):
        return None  # a full render would make it an interval map
    return DecisionMap(m.name, m.direction, m.program, m.ported, m.hashed, m.classes, elements, m.style), change


def _run(m: DecisionMap, elements: dict[Key, str], key: Key) -> int:
    """The size of the cell holding ``key`` in the lowered table (its class's
    ports × the run of neighbouring addresses with the same target), as far
    as it matters: up to just past :data:`CELL_EXPAND_MAX`."""
    if m.ported:
        address, protocol, port = key
        cls = next(c for c in m.classes if c.protocol == protocol and c.first <= port <= c.last)
        width = cls.last - cls.first + 1

        def at(a: int) -> Key:
            return (a, protocol, cls.first)
    else:
        address, width = key, 1

        def at(a: int) -> Key:
            return a
    chain = elements[at(address)]
    run = 1
    for step in (-1, 1):
        a = address + step
        while run * width <= CELL_EXPAND_MAX and elements.get(at(a)) == chain:
            run += 1
            a += step
    return run * width


def _moved_addresses(old: AnySet | None, new: AnySet | None) -> set[int]:
    """Addresses whose membership in the set may differ between the two versions."""
    if isinstance(old, AddressPortSet) or isinstance(new, AddressPortSet):
        a = set(old.elements) if isinstance(old, AddressPortSet) else set()
        b = set(new.elements) if isinstance(new, AddressPortSet) else set()
        return {addresses.address_int(address) for address, _port in a ^ b}
    # The elements in one version only (a pod joining a run of addresses
    # replaces one element by a longer one); within them, the addresses held
    # by one version only.
    gone, came = elements_diff(old.elements if old is not None else (), new.elements if new is not None else ())
    out: set[int] = set()
    held = _sweep_two(sorted(map(addresses.parse_element, gone)), sorted(map(addresses.parse_element, came)))
    for lo, hi in held:
        out.update(range(lo, hi + 1))
    return out


def _first_difference(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):  # stops at the shorter
        if x != y:
            return i
    return min(len(a), len(b))


def elements_diff(before: tuple[Any, ...], after: tuple[Any, ...]) -> tuple[list[Any], list[Any]]:
    """(gone, came) between two element tuples: tuple equality first (the
    common case), sets only when they differ, and then only of the part
    between the common head and tail (a pod coming or going changes one spot
    of a sorted set). Sound for any order: elements are unique within a
    tuple, so one in a common head or tail is in both."""
    if before == after:
        return [], []
    head = _first_difference(before, after)
    tail = _first_difference(before[head:][::-1], after[head:][::-1])
    b, a = set(before[head:len(before) - tail]), set(after[head:len(after) - tail])
    return sorted(b - a), sorted(a - b)


def _sweep_two(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The addresses covered by exactly one of two lists of disjoint intervals."""
    events = sorted([(lo, 1) for lo, _ in a] + [(hi + 1, -1) for _, hi in a]
                    + [(lo, 2) for lo, _ in b] + [(hi + 1, -2) for _, hi in b])
    out: list[tuple[int, int]] = []
    state = 0  # bit 1: in a, bit 2: in b
    start = 0
    for pos, delta in events:
        if state in (1, 2) and pos > start:
            out.append((start, pos - 1))
        state = state | delta if delta > 0 else state & ~(-delta)
        start = pos
    return out
