"""The decision part of the nft layout: one verdict-map look-up per tier.

Each tier of an isolated endpoint direction (Admin, NetworkPolicy, Baseline:
the IR's chains, :mod:`callgate.compiler.decision`'s tier programs) is one
chain, named as the IR names the tier::

    chain ina_<endpoint> {                                # out…: daddr, allow = return
        ip saddr . meta l4proto . th dport vmap @dec4_<h>     # cells of the tier's ported rules
        ip6 saddr . meta l4proto . th dport vmap @dec6_<h>
        ip saddr @<peer set> goto <chain of the rule>         # its rules without ports, in order
        …
        goto pass_in0                                     # the tier's default: a pass (last tier: counter drop / accept)
    }

A map holds the cells of one tier's program for one family, and is named by
that program (its rules, set names, verdicts, rule ids, position), not by
the endpoint: every endpoint the same cluster policies select shares the
Admin tier's maps, as endpoints with equal NetworkPolicy rules share theirs,
and the elements are not multiplied by the tiers around them (composing all
tiers into one map cut every endpoint's address space into the union of all
tiers' borders: 1.2 million elements for 1,000 cluster policies). An element
``goto``s the chain of the rule that decided, which counts and acts::

    chain allow_in_<rule id> { counter goto accept_decided comment "<rule id> <origin>" }   # allow_out_…: return
    chain deny_<rule id> { counter drop comment "…" }
    chain default_deny / default_allow_in / default_allow_out   (a default that a cell must state)

(with a flow log or in audit, those chains also log, or let an audited
denial through: :mod:`.actions`; a pass is not a decision and never logs.)

A pass (a Pass rule, or a tier's default) of a tier that is not its
direction's last goes to the next tier, which only the endpoint knows, so
the shared maps name one chain per position, which looks the endpoint up by
its own address::

    chain pass_in0 {
        ip daddr vmap @next_in0_4        # endpoint address -> goto the chain of its next tier
        ip6 daddr vmap @next_in0_6
        goto default_allow_in            # no next tier: a pass allows
    }

(``goto`` all along: an egress allow's ``return`` then goes back to the
dispatch, not into the endpoint's next tier.) Per-rule counters keep
working, and a packet costs one look-up per tier it reaches whatever the
number of policies or port specifications, plus one set look-up per rule
without ports it walks, plus one look-up per pass.

Form: a map whose elements can be enumerated (single addresses × single
ports, at most :data:`EXPAND_MAX`) is a hash map — the cheapest look-up, and
the common case, since pod selectors yield single pod addresses. Otherwise
(wide ipBlocks, port ranges, protocol-wide rules) it is an interval map of the
cells as they are. Pod churn changes elements only.

:class:`Layout` is everything this part of the table holds; the enforcer keeps
the one it applied, and :func:`update_layout` patches it for a new RuleSet by
re-deciding only the addresses whose set membership changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from callgate.compiler import addresses
from callgate.compiler.decision import (
    Decision,
    PortClass,
    Program,
    Sources,
    decisions_at,
    lower,
    tier_programs,
)
from callgate.compiler.ir import (
    AddressPortSet,
    AddressSet,
    EndpointRules,
    Family,
    L4Match,
    Rule,
    RuleSet,
    Verdict,
    short_hash,
)
from callgate.enforcers.base import FlowLogging, equal_sets, rule_comment
from callgate.enforcers.nft import actions
from callgate.enforcers.nft.actions import (
    DEFAULT_DENY,
    ENFORCED,
    ChainRules,
    Style,
    decision_chain,
    default_chains,
    default_rule,
)
from callgate.enforcers.nft.layout import COMMENT_MAX, obj

EXPAND_MAX = 131_072  # elements of one hash-form map (~95 bytes of kernel memory each)
# And no single cell is enumerated into more elements than this: pod
# selectors give single addresses and runs of them (the widest run at 50k pods
# in bench/synth.py's cluster: 1,376), but a wide ipBlock or a protocol-wide
# rule stays an interval map. (At 65,536, a policy adding a /16 ipBlock
# rendered and loaded 65,536 elements per map naming it: 1-2.6 s to the kernel.)
CELL_EXPAND_MAX = 4_096
# A hash-form map of at least this many elements is declared with a size (its
# capacity): the kernel then holds it in a fixed-size hash table instead of a
# resizable one. Why: at every commit that adds a rule or a jump, nf_tables
# walks each verdict map once per path that reaches it, element by element
# (a pod starting on a node adds both), and a fixed table walks ~2x faster
# (a 50,000-element map: 1.9 ms against 4.4 ms; a local pod start at 50k pods:
# ~25 -> ~18 ms in the kernel). The capacity leaves a quarter of headroom, in
# a power of two (the kernel's buckets are twice it: a bigger table walked
# slower than the resizable one); a map that would outgrow it is rendered
# anew by a full replacement. Smaller maps stay resizable: their walk is
# short, and a declared minimum would only add empty buckets to walk.
SIZED_MIN = 4_096
_VERSION: dict[Family, int] = {"ip": 4, "ip6": 6}
_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}
Expr = dict[str, Any]
S = TypeVar("S", list[Any], tuple[Any, ...])  # a sequence slicing keeps as its type
Renames = tuple[tuple[str, str], ...]  # (peer set, the equal one held instead), sorted
Key = Any  # hash form: (address, protocol, port) / address; interval form: cells as intervals


def _side(direction: str) -> str:
    return "in" if direction == "ingress" else "out"


def pass_chain(direction: str, position: int) -> str:
    """Where a pass of the tier at ``position`` goes (see the module docstring)."""
    return f"pass_{_side(direction)}{position}"


def next_map(direction: str, position: int, version: int) -> str:
    """The endpoint addresses -> the chain of their tier after ``position``."""
    return f"next_{_side(direction)}{position}_{version}"


def target(direction: str, decision: Decision, passes_on: int | None = None, style: Style = ENFORCED) -> str:
    """The chain a decision ``goto``s: a PASS one, that of a tier program
    passing on from position ``passes_on`` (no action: a pass decides
    nothing, so it never logs); an allow or deny, its rule's chain as the
    endpoint's style wants it (:func:`.actions.target`)."""
    if decision.verdict is Verdict.PASS:
        assert passes_on is not None, "only a tier that passes on decides PASS"
        return pass_chain(direction, passes_on)
    return actions.target(direction, decision, style)


@dataclass
class DecisionMap:
    """One verdict map (key: address . protocol . port) as rendered: its cells, keyed as its form needs."""

    name: str
    direction: str
    program: Program
    hashed: bool
    classes: tuple[PortClass, ...]
    elements: dict[Key, str] = field(default_factory=dict)  # key -> target chain
    style: Style = ENFORCED  # how its endpoints act on a decision: the chains its elements name
    capacity: int = 0  # the size the kernel's map was declared with (0: none, resizable); see SIZED_MIN

    @property
    def family(self) -> Family:
        return self.program.family

    def command(self) -> dict[str, Any]:
        """``add map`` with every element."""
        body = obj(name=self.name, type=[_ADDR_TYPE[self.family], "inet_proto", "inet_service"], map="verdict")
        if not self.hashed:
            body["flags"] = ["interval"]
        elif self.capacity:
            body["size"] = self.capacity
        if self.elements:
            body["elem"] = self.element_json(sorted(self.elements.items()))
        return {"add": {"map": body}}

    def element_json(self, items: Iterable[tuple[Key, str]]) -> list[Any]:
        return [[self.key_json(key), {"goto": {"target": chain}}] for key, chain in items]

    def key_json(self, key: Key) -> Any:
        version = _VERSION[self.family]
        if self.hashed:
            address, protocol, port = key
            return {"concat": [addresses.address_text(address, version), protocol, port]}
        lo, hi, protocol, first, last = key
        ports: Any = first if first == last else {"range": [first, last]}
        return {"concat": [_interval(lo, hi, version), protocol, ports]}


def capacity_for(elements: int) -> int:
    """The size a new hash-form map of ``elements`` is declared with (0: none)."""
    if elements < SIZED_MIN:
        return 0
    return 1 << (elements + elements // 4 - 1).bit_length()


def adopt_capacities(layout: Layout, live: Iterable[dict[str, Any]]) -> None:
    """Give ``layout``'s maps the sizes the live table's were declared with
    (an adopted table was built by another run, maybe at another size)."""
    for item in live:
        body = item.get("map")
        if body is not None and (m := layout.maps.get(body.get("name"))) is not None and m.hashed:
            m.capacity = int(body.get("size", 0))


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
    """The decision part of the table: maps, endpoint tier chains, verdict
    chains, the peer sets the rule walks look up, and where a pass goes on."""

    maps: dict[str, DecisionMap]
    chains: dict[str, list[list[Expr]]]  # endpoint tier chain -> its rules' expressions
    verdicts: dict[str, ChainRules]  # verdict chain -> its rules (expressions, comment)
    sets: dict[str, AddressSet] = field(default_factory=dict)  # peer sets of the rule walks
    passes: dict[str, list[list[Expr]]] = field(default_factory=dict)  # pass chain -> its rules
    continuations: dict[str, list[Any]] = field(default_factory=dict)  # next map -> its elements (JSON)
    logging: FlowLogging | None = None  # the table's flow log, if any (see .actions)
    renames: Renames = ()  # the peer sets held as an equal one (see _completed)
    built_from: tuple[EndpointRules, ...] = ()  # the RuleSet endpoints its chains come from (compared by identity)

    def names(self) -> set[str]:
        """Every object of the decision part, by name."""
        return {*self.maps, *self.chains, *self.verdicts, *self.sets, *self.passes, *self.continuations}


def map_name(direction: str, program: Program, style: Style = ENFORCED) -> str:
    """Named by structure; an audited endpoint's maps name other chains, so other maps."""
    extra = ("audit",) if style.audit else ()
    return f"dec{_VERSION[program.family]}_{short_hash(direction, program.name, *extra)}"


def style_of(ep: EndpointRules, logging: FlowLogging | None) -> Style:
    return Style(audit=ep.audit, logging=logging)


def _tiers(ep: EndpointRules) -> Iterable[tuple[str, Program]]:
    """(direction, program) of every tier of ``ep`` in both families."""
    progs = tier_programs(ep)
    for (direction, _family), tiers in progs.items():
        for program in tiers:
            yield direction, program


def build_layout(ruleset: RuleSet, logging: FlowLogging | None = None) -> Layout:
    """The whole decision part for ``ruleset`` (with the flow log ``logging``, if any)."""
    sources = Sources(ruleset)
    maps: dict[str, DecisionMap] = {}
    walked_sets: dict[str, AddressSet] = {}
    for ep in ruleset.endpoints:
        style = style_of(ep, logging)
        for direction, program in _tiers(ep):
            walked_sets.update((name, ruleset.address_set(name)) for name in walk_sets(program))
            if _ported(program) and (name := map_name(direction, program, style)) not in maps:
                maps[name] = _map(direction, program, sources, style)
    return _completed(Layout(maps, {}, {}, logging=logging), ruleset, walked_sets)


def _completed(layout: Layout, ruleset: RuleSet, walked_sets: dict[str, AddressSet],
               previous: Layout | None = None) -> Layout:
    """``layout`` (its maps) with its chains, peer sets, pass chains and next maps.

    One kernel set per distinct content (:func:`~callgate.enforcers.base.equal_sets`):
    the walks of equal sets look up the one kept, named after the first of them by
    name. While the members of a content stay together, its set keeps its name and its
    updates stay element by element; when equal sets part or meet, the incremental
    planner sees a set come or go and the chains whose walks look up another one change.

    The chains, rule chains, pass chains and next maps come from the endpoints and
    the renames alone: from ``previous`` (the layout patched) when both are the same
    (a change elsewhere in the cluster), the very objects, which the planner then
    compares at no cost."""
    renames = tuple(sorted(equal_sets(walked_sets.values()).items()))
    instead = dict(renames)
    layout.sets = {name: s for name, s in walked_sets.items() if name not in instead}
    layout.renames, layout.built_from = renames, ruleset.endpoints
    if (previous is not None and previous.built_from is ruleset.endpoints and previous.renames == renames
            and previous.logging == layout.logging):
        layout.verdicts, layout.chains = previous.verdicts, previous.chains
        layout.passes, layout.continuations = previous.passes, previous.continuations
        return layout
    layout.verdicts = verdict_chains(ruleset, layout.logging, renames)
    for ep in ruleset.endpoints:
        layout.chains.update(_part(ep, style_of(ep, layout.logging), renames).chains)
    layout.passes, layout.continuations = continuations(ruleset)
    return layout


def walked(program: Program) -> bool:
    """Whether the tier program is walked rule by rule, the rules with ports
    too, instead of having a map: when a Pass rule comes before a rule with
    ports (and no rule tests named-port pairs). Its cells would be that rule's
    peers minus the pass's, cut into runs: a tenant's "Pass from the team,
    then Deny tcp/22 from every pod" made interval maps of ~50,000 cells each
    (9 s to load the benchmark's tiered table); walked, it is two rules."""
    passed = False
    for step in program.steps:
        if step.verdict is Verdict.PASS:
            passed = True
        elif passed and step.l4 is not None:
            return all(s.pairs is None for s in program.steps)
    return False


def walk_sets(program: Program) -> list[str]:
    """The peer sets a tier program's walk looks up (its rules without ports; all when :func:`walked`)."""
    every = walked(program)
    return [s.peers for s in program.steps if (every or s.l4 is None) and s.peers is not None]


def _ported(program: Program) -> bool:
    """Whether the program has a map: rules with ports, not walked."""
    return any(s.l4 is not None for s in program.steps) and not walked(program)


def _map(direction: str, program: Program, sources: Sources, style: Style) -> DecisionMap:
    """The map of one tier program, with its elements: the cells where a
    rule with ports decides otherwise than the walk of the rules without."""
    table = lower(program, sources, rest_cells=False)
    classes = tuple(program.port_classes(sources))
    cells = [(cls, lo, hi, target(direction, d, program.passes_on, style)) for cls, lo, hi, d in table.ported]
    hashed = _enumerable([(hi - lo + 1) * (cls.last - cls.first + 1) for cls, lo, hi, _ in cells])
    m = DecisionMap(map_name(direction, program, style), direction, program, hashed, classes, style=style)
    for cls, lo, hi, chain in cells:
        if hashed:
            m.elements.update(((a, cls.protocol, p), chain) for a in range(lo, hi + 1)
                              for p in range(cls.first, cls.last + 1))
        else:
            m.elements[(lo, hi, cls.protocol, cls.first, cls.last)] = chain
    if hashed:
        m.capacity = capacity_for(len(m.elements))
    return m


def continuations(ruleset: RuleSet) -> tuple[dict[str, list[list[Expr]]], dict[str, list[Any]]]:
    """The pass chains and their next maps (see the module docstring): a pair
    per direction and position that some endpoint's tier passes on from, the
    maps holding each such endpoint's addresses."""
    chains: dict[str, list[list[Expr]]] = {}
    maps: dict[str, list[tuple[int, Any]]] = {}
    for ep in ruleset.endpoints:
        for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
            for position in range(len(tiers) - 1):
                name = pass_chain(direction, position)
                if name not in chains:
                    chains[name] = _pass_rules(direction, position)
                    for version in (4, 6):
                        maps.setdefault(next_map(direction, position, version), [])
                goto = {"goto": {"target": tiers[position + 1].name}}
                for address in ep.ips:
                    version, value = addresses.address_value(address)
                    maps[next_map(direction, position, version)].append((value, [address, goto]))
    return chains, {name: [e for _key, e in sorted(elems, key=lambda x: x[0])] for name, elems in maps.items()}


def _pass_rules(direction: str, position: int) -> list[list[Expr]]:
    own = "daddr" if direction == "ingress" else "saddr"  # the endpoint's own address
    rules: list[list[Expr]] = [[{"vmap": {"key": {"payload": {"protocol": protocol, "field": own}},
                                          "data": "@" + next_map(direction, position, version)}}]
                               for protocol, version in (("ip", 4), ("ip6", 6))]
    # The table's own allow default (it logs the allow when the flow log records allowed connections).
    rules.append([{"goto": {"target": target(direction, Decision(Verdict.ALLOW))}}])
    return rules


def next_map_command(name: str, elements: list[Any]) -> dict[str, Any]:
    """``add map`` for a next map with its elements."""
    body = obj(name=name, type=_ADDR_TYPE["ip" if name.endswith("4") else "ip6"], map="verdict")
    if elements:
        body["elem"] = elements
    return {"add": {"map": body}}


def _enumerable(cell_sizes: list[int]) -> bool:
    return all(n <= CELL_EXPAND_MAX for n in cell_sizes) and sum(cell_sizes) <= EXPAND_MAX


def chain_rules(direction: str, family_programs: list[Program], style: Style = ENFORCED,
                instead: Mapping[str, str] | None = None) -> list[list[Expr]]:
    """An endpoint tier's chain: per family the map look-up, then the walk of
    the rules without ports, then the tier's default (a pass: its pass chain).

    The map comes first: a packet that a rule with ports decides costs one
    look-up, whatever the number of port specifications. (Walking the rules
    without ports first would spare their packets the map look-up and cost
    everyone else a set look-up per rule that misses; measured in
    docs/performance.md.)"""
    field_name = "saddr" if direction == "ingress" else "daddr"
    rules: list[list[Expr]] = []
    for program in family_programs:
        address = {"payload": {"protocol": program.family, "field": field_name}}
        if _ported(program):
            key = {"concat": [address, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}
            rules.append([{"vmap": {"key": key, "data": "@" + map_name(direction, program, style)}}])
        rules.extend(_walk(direction, program, address, style, instead or {}))
    first = family_programs[0]  # the tier's default does not depend on the family
    if first.default.verdict is Verdict.PASS:
        rules.append([{"goto": {"target": target(direction, first.default, first.passes_on)}}])
    else:
        rules.append(default_rule(direction, first.default.verdict, style))
    return rules


_NFPROTO = {"ip": "ipv4", "ip6": "ipv6"}


def _l4(l4: L4Match) -> list[Expr]:
    """``<protocol> dport <ports>``, or ``meta l4proto <protocol>`` without
    ports: the forms nft lists the rule back in (the drift check compares them)."""
    ports: list[Any] = [r.first if r.first == r.last else {"range": [r.first, r.last]} for r in l4.ports]
    if not ports:
        return [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": l4.protocol}}]
    return [{"match": {"op": "==", "left": {"payload": {"protocol": l4.protocol, "field": "dport"}},
                       "right": ports[0] if len(ports) == 1 else {"set": ports}}}]


def _walk(direction: str, program: Program, address: Expr, style: Style,
          instead: Mapping[str, str]) -> list[list[Expr]]:
    """The rules without ports of a tier program (all its rules when
    :func:`walked`), in order: the first whose peer set (and protocol and
    ports) holds the packet decides (where the ported map had no cell, the
    decision is theirs: the map holds cells only where it differs). A peer set
    of the same content as another is looked up as the one held ``instead``."""
    every = walked(program)
    rules: list[list[Expr]] = []
    for step in program.steps:
        if step.l4 is not None and not every:
            continue
        chain = {"goto": {"target": target(direction, program.decide(step.__eq__), program.passes_on, style)}}
        if step.l4 is not None:
            peer = ([{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": _NFPROTO[program.family]}}]
                    if step.peers is None else [{"match": {"op": "==", "left": address,
                                                           "right": "@" + instead.get(step.peers, step.peers)}}])
            rules.append([*peer, *_l4(step.l4), chain])
            continue
        if step.peers is None:  # any address of this family: the walk ends here
            rules.append([{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                                     "right": _NFPROTO[program.family]}}, chain])
            break
        rules.append([{"match": {"op": "==", "left": address, "right": "@" + instead.get(step.peers, step.peers)}},
                      chain])
    return rules


@dataclass(frozen=True)
class _EndpointPart:
    """What one endpoint contributes apart from map elements: its chains' rules and its rule chains."""

    chains: dict[str, list[list[Expr]]]
    verdicts: dict[str, ChainRules]


# By endpoint object, as programs are (see decision.programs): unchanged
# endpoints are the same objects from one RuleSet to the next. (The renames are
# the whole layout's: they change only when equal peer sets part or meet.)
_PARTS: dict[int, tuple[EndpointRules, Style, Renames, _EndpointPart]] = {}


def _part(ep: EndpointRules, style: Style, renames: Renames) -> _EndpointPart:
    hit = _PARTS.get(id(ep))
    if hit is not None and hit[0] is ep and hit[1] == style and hit[2] == renames:
        return hit[3]
    if len(_PARTS) >= 4096:
        _PARTS.clear()
    progs = tier_programs(ep)
    instead = dict(renames)
    part = _EndpointPart({}, {})
    for direction, tiers in (("ingress", ep.ingress), ("egress", ep.egress)):
        for position, tier in enumerate(tiers):
            part.chains[tier.name] = chain_rules(direction, [progs[(direction, f)][position] for f in ("ip", "ip6")],
                                                 style, instead)
        if tiers:
            part.verdicts.update(default_chains(direction, style))
        for chain in tiers:
            for rule in chain.rules:
                if rule.verdict is not Verdict.PASS:
                    decision = Decision(rule.verdict, rule.id)
                    part.verdicts.setdefault(target(direction, decision, style=style),
                                             decision_chain(direction, decision, style, _comment(rule)))
    _PARTS[id(ep)] = (ep, style, renames, part)
    return part


def verdict_chains(ruleset: RuleSet, logging: FlowLogging | None = None,
                   renames: Renames = ()) -> dict[str, ChainRules]:
    """A chain per deciding rule (and direction, for allow), plus the defaults a cell
    may name. (``renames``: the layout's, so the endpoint parts cached are the ones its chains use.)"""
    out: dict[str, ChainRules] = {}
    plain = False
    for ep in ruleset.endpoints:
        style = style_of(ep, logging)
        plain = plain or style.plain
        out.update(_part(ep, style, renames).verdicts)
    # Only a PASS rule can leave a cell with a default other than the one the
    # chain ends with (a tier's default after a pass): then cells name these;
    # and a pass chain ends in the allowing one. (Endpoints that are not
    # plain have their defaults' chains anyway.)
    if plain and (any(rule.verdict is Verdict.PASS for ep in ruleset.endpoints for chain in (*ep.ingress, *ep.egress)
                      for rule in chain.rules) or any(len(ep.ingress) > 1 or len(ep.egress) > 1
                                                      for ep in ruleset.endpoints)):
        out[DEFAULT_DENY] = decision_chain("ingress", Decision(Verdict.DENY), ENFORCED)
        for direction in ("ingress", "egress"):
            out[target(direction, Decision(Verdict.ALLOW))] = decision_chain(direction, Decision(Verdict.ALLOW),
                                                                             ENFORCED)
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
    interval) or its port classes, which only a rebuild gets right. (The
    pass chains and next maps are listed whole: the planner compares them.)
    The flow log stays ``old``'s: it belongs to the table (a change replaces it in full)."""
    sources = Sources(new_rs)
    logging = old.logging
    fresh = Layout({}, {}, {}, logging=logging)
    walked_sets: dict[str, AddressSet] = {}
    changes: dict[str, MapChange] = {}
    changed_sets = _changed_sets(old_rs, new_rs)
    for ep in new_rs.endpoints:
        style = style_of(ep, logging)
        for direction, program in _tiers(ep):
            walked_sets.update((name, new_rs.address_set(name)) for name in walk_sets(program))
            if not _ported(program) or (name := map_name(direction, program, style)) in fresh.maps:
                continue
            if name not in old.maps:  # a new program: build it
                fresh.maps[name] = _map(direction, program, sources, style)
                continue
            patched = _patch(old.maps[name], changed_sets, sources)
            if patched is None:
                return None
            fresh.maps[name], change = patched
            if change.gone or change.came:
                changes[name] = change
    return _completed(fresh, new_rs, walked_sets, previous=old), changes


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
        rebuilt = _map(m.direction, m.program, sources, m.style)
        if rebuilt.hashed:
            return None
        gone = [k for k in m.elements if rebuilt.elements.get(k) != m.elements[k]]
        came = [(k, v) for k, v in rebuilt.elements.items() if m.elements.get(k) != v]
        return rebuilt, MapChange(gone, came)
    if tuple(m.program.port_classes(sources)) != m.classes:
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
        for cls, decision in zip(m.classes, per_class, strict=True):
            ports = range(cls.first, cls.last + 1)
            if decision != rest:
                wanted.update(((address, cls.protocol, p),
                               target(m.direction, decision, m.program.passes_on, m.style)) for p in ports)
            # A hash map holds a cell for all of its class's ports or none.
            if decision != rest or (address, cls.protocol, cls.first) in elements:
                have.update((address, cls.protocol, p) for p in ports)
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
    if m.capacity and len(elements) > m.capacity:
        return None  # the kernel's map is full: a full render declares it bigger
    return DecisionMap(m.name, m.direction, m.program, m.hashed, m.classes, elements, m.style, m.capacity), change


def _run(m: DecisionMap, elements: dict[Key, str], key: Key) -> int:
    """The size of the cell holding ``key`` in the lowered table (its class's
    ports × the run of neighbouring addresses with the same target), as far
    as it matters: up to just past :data:`CELL_EXPAND_MAX`."""
    address, protocol, port = key
    cls = next(c for c in m.classes if c.protocol == protocol and c.first <= port <= c.last)
    width = cls.last - cls.first + 1

    def at(a: int) -> Key:
        return (a, protocol, cls.first)
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


_STRIDE = 512  # elements compared at once, in C, before looking one by one


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """The first index where ``a`` and ``b`` differ (the shorter's length if neither
    does). Stride by stride as slices (tuple equality, in C: the elements of a set
    that did not change are the very same objects), then one by one within the
    stride that differs: a Python loop over all 100,000 elements of a big set was
    most of an incremental update's planning."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i:i + _STRIDE] == b[i:i + _STRIDE]:
        i += _STRIDE
    for k in range(i, min(i + _STRIDE, n)):
        if a[k] != b[k]:
            return k
    return n


def differing_middles(before: S, after: S) -> tuple[S, S]:
    """``before`` and ``after`` without their common head and tail. For lists of
    unique elements built in one order (a set's elements, a dispatch map's), a
    change is a spot in the middle: only that part needs comparing as sets. Sound
    for any order: an element of a common head or tail is in both."""
    head = _first_difference(before, after)
    tail = _first_difference(before[head:][::-1], after[head:][::-1])
    return before[head:len(before) - tail], after[head:len(after) - tail]  # type: ignore[return-value]


def elements_diff(before: tuple[Any, ...], after: tuple[Any, ...]) -> tuple[list[Any], list[Any]]:
    """(gone, came) between two element tuples: tuple equality first (the
    common case), sets only when they differ, and then only of the part
    between the common head and tail (:func:`differing_middles`)."""
    if before == after:
        return [], []
    left, right = differing_middles(before, after)
    b, a = set(left), set(right)
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
