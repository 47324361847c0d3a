"""nftables backend: the RuleSet IR as one libnftables JSON transaction.

Layout (everything lives in table ``inet callgate``; no other table is read or
written)::

    set digest                           one element: what this table holds (see below)
    set peers4_<hash> / peers6_<hash>   peer addresses (hash or interval sets, see below)
    set named4_<proto>_<hash> …         (address . port) pairs for egress named ports
    map from_endpoint                    iifname → jump out_<endpoint>  (egress)
    map to_endpoint                      oifname → jump in_<endpoint>   (ingress)
    chain forward  (hook forward, policy accept)
        ct state established,related accept   # replies leave at the first rule
        iifname vmap @from_endpoint           # egress: allow = return, deny = drop
        oifname vmap @to_endpoint             # ingress: allow = accept, deny = drop
    chain out_<endpoint> / in_<endpoint>  one per tier; PASS = goto next tier

With a fail-closed prefix (``NftablesEnforcer(kernel, fail_closed_prefix="cg")``)
the table also holds ``set known_endpoint`` (ifname: every local endpoint the
agent has programmed, isolated or not) and, after the two vmaps, two rules that
drop forwarded traffic from/to ``cg*`` interfaces missing from that set: a
container whose veth appears before its policy is known is cut off, not open.

The egress chain returns on allow instead of accepting, so the destination's
ingress chain still runs for pod-to-pod traffic on the same node.

Peer sets: a set whose addresses can be enumerated (at most
:data:`HASH_SET_MAX` of them) is a plain hash set of single addresses, an O(1)
look-up per packet; only sets that cannot (wide ipBlocks) keep ``flags
interval``. Pod-selector peers are pod IPs, so nearly every set is a hash set.
This is the backend's choice alone: the IR and its digest do not change.

The digest of what the table holds (:func:`layout_digest`: the RuleSet's
digest, the layout version, and the fail-closed settings when on) is the one
element of ``set digest``: key = its first :data:`DIGEST_KEY_LEN` hex digits,
comment = ``callgate sha256:<digest>``. A re-apply of the same input is
recognised and skipped. Why a set element rather than a rule comment: an
incremental transaction swaps it with ``delete element`` (old) + ``add
element`` (new), which the kernel refuses as a whole when the old one is not
there, so "the live table is still the one I applied" is checked atomically,
inside the transaction; and listing or updating this one small set costs
libnftables 1.0.6 ~0.1 ms, while listing or replacing a rule in the forward
chain makes it read every element of every set first (~100 ms at 50k).

:meth:`NftablesEnforcer.apply` remembers what it applied; when the live digest
still equals that, the next apply is an incremental transaction
(:mod:`callgate.enforcers.nft_update`) instead of a full replacement.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from callgate.compiler.addresses import address_text
from callgate.compiler.ir import AddressPortSet, AddressSet, Chain, Family, L4Match, Rule, RuleSet, Verdict
from callgate.enforcers.kernel import Command, NftKernel
from callgate.errors import KernelError

FAMILY = "inet"
TABLE = "callgate"
FORWARD = "forward"
FROM_ENDPOINT = "from_endpoint"
TO_ENDPOINT = "to_endpoint"
KNOWN_ENDPOINT = "known_endpoint"
FAIL_CLOSED_COMMENT = "callgate fail-closed"
DIGEST_SET = "digest"
DIGEST_PREFIX = "callgate sha256:"
# The digest set's key is an ifname (the longest string type a set key can
# have: 15 characters and a NUL). 60 bits of a sha256 make an accidental match
# between the digest this agent applied and any other one negligible (2^-60);
# the full digest rides in the element's comment.
DIGEST_KEY_LEN = 15
# Bumped whenever the same RuleSet is rendered into a different table, so that
# an agent upgraded from an older layout never adopts the old table as in sync
# (the RuleSet digest alone would still match). 2: hash peer sets, digest set.
LAYOUT_VERSION = 2
# A peer set whose intervals together hold at most this many addresses is
# rendered as a hash set of single addresses. Why this bound: a hash-set
# element costs the kernel ~95 bytes (measured: slab + vmalloc growth when
# loading 65,536 IPv4 or IPv6 elements, kernel 6.18), so the largest such set
# is ~6 MiB of kernel memory and ~65k strings in a transaction (~0.45 s for
# libnftables 1.0.6 to load); an interval holds any number of addresses in two
# rbtree elements (~160 bytes). 65,536 covers a /16 of pods (more than any
# node's peer union in practice, 50k-pod clusters included) while a wide
# ipBlock (/8, /12, 0.0.0.0/0 except ...) stays a handful of intervals.
HASH_SET_MAX = 65_536
COMMENT_MAX = 128  # bytes the kernel keeps for a rule comment

_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}
_NFPROTO = {"ip": "ipv4", "ip6": "ipv6"}


def _obj(**fields: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **fields}


def _element(text: str) -> Any:
    if "/" in text:
        addr, length = text.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in text:
        lo, hi = text.split("-", 1)
        return {"range": [lo, hi]}
    return text


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _ports(l4: L4Match) -> Any:
    items: list[Any] = [p.first if p.first == p.last else {"range": [p.first, p.last]} for p in l4.ports]
    return items[0] if len(items) == 1 else {"set": items}


def _comment(rule: Rule) -> str | None:
    if not rule.origins:
        return None
    text = str(rule.origins[0])
    if len(rule.origins) > 1:
        text += f" (+{len(rule.origins) - 1} more)"
    # Keep it printable and inside the kernel's limit; names are validated
    # upstream, this is belt and braces.
    text = text.replace('"', "'").replace("\\", "/")
    return text.encode()[:COMMENT_MAX - 1].decode(errors="ignore")


def _verdict(verdict: Verdict, direction: str, next_tier: str | None) -> dict[str, Any]:
    if verdict is Verdict.PASS:
        return {"goto": {"target": next_tier}} if next_tier else _verdict(Verdict.ALLOW, direction, None)
    if verdict is Verdict.DENY:
        return {"drop": None}
    return {"return": None} if direction == "egress" else {"accept": None}


def rule_exprs(rule: Rule, direction: str, next_tier: str | None) -> list[dict[str, Any]]:
    field = "saddr" if direction == "ingress" else "daddr"
    exprs: list[dict[str, Any]] = []
    if rule.peer_set is not None:
        exprs.append(_match(_payload(_family(rule.family), field), "@" + rule.peer_set))
    elif rule.family is not None and rule.peer_port_set is None:
        exprs.append(_match({"meta": {"key": "nfproto"}}, _NFPROTO[rule.family]))
    if rule.peer_port_set is not None:
        assert rule.l4 is not None
        left = {"concat": [_payload(_family(rule.family), field), _payload(rule.l4.protocol, "dport")]}
        exprs.append(_match(left, "@" + rule.peer_port_set))
    elif rule.l4 is not None:
        if rule.l4.ports:
            # "tcp dport" carries its own l4proto dependency; writing it this way
            # is also how the kernel lists it back, so read-back compares equal.
            exprs.append(_match(_payload(rule.l4.protocol, "dport"), _ports(rule.l4)))
        else:
            exprs.append(_match({"meta": {"key": "l4proto"}}, rule.l4.protocol))
    exprs.append({"counter": None})
    exprs.append(_verdict(rule.verdict, direction, next_tier))
    return exprs


def _family(family: Family | None) -> str:
    assert family is not None, "a peer set always has a family"
    return family


def _address_int(text: str) -> int:
    # parse_element goes through ipaddress objects: ~25 us a prefix, which
    # made counting a 50k-element set take 0.2 s. The IR's text is canonical,
    # so plain arithmetic (IPv4) or inet_pton (IPv6) is enough here.
    if ":" in text:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    a, b, c, d = text.split(".")
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)


def _interval(text: str) -> tuple[int, int]:
    """An IR element (address, aligned prefix, or range "a-b") as inclusive bounds."""
    if "/" in text:
        addr, length = text.split("/")
        lo = _address_int(addr)
        return lo, lo + (1 << ((128 if ":" in addr else 32) - int(length))) - 1
    if "-" in text:
        lo_text, hi_text = text.split("-", 1)
        return _address_int(lo_text), _address_int(hi_text)
    value = _address_int(text)
    return value, value


# Address counts of large element tuples, by identity: the incremental planner
# needs the form (hash or interval) of the set it planned last time and of the
# new one, and counting a set of 50k elements with thousands of prefixes costs
# ~15 ms. Entries hold their tuple, so an id() is never mistaken for another
# object's; a few dozen entries cover the applied RuleSet and the next one.
_COUNTS: dict[int, tuple[tuple[str, ...], int]] = {}
_COUNTS_LOCK = threading.Lock()  # the agent's reactor and a CLI/metrics thread may both render
_COUNTS_MAX = 64
_COUNTS_MIN_LEN = 1024  # smaller sets are cheaper to count than to remember


def remember_count(elements: tuple[str, ...], count: int) -> None:
    if len(elements) < _COUNTS_MIN_LEN:
        return
    with _COUNTS_LOCK:
        while len(_COUNTS) >= _COUNTS_MAX:
            _COUNTS.pop(next(iter(_COUNTS)))  # the oldest: dicts keep insertion order
        _COUNTS[id(elements)] = (elements, count)


def carry_count(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    """``new`` holds the same elements as ``old`` (a fresh compile builds new
    tuples for unchanged sets): let it inherit the remembered count, so that
    when it changes later its form is known without counting it."""
    hit = _COUNTS.get(id(old))
    if hit is not None and hit[0] is old and new is not old:
        remember_count(new, hit[1])


def address_count(elements: Sequence[str]) -> int:
    """How many addresses the IR's elements (addresses, prefixes, ranges) hold."""
    if isinstance(elements, tuple):
        hit = _COUNTS.get(id(elements))
        if hit is not None and hit[0] is elements:
            return hit[1]
    ranged = [e for e in elements if "/" in e or "-" in e]  # most elements are single pod IPs
    total = len(elements) - len(ranged)
    for e in ranged:
        if "/" in e:  # the IR's prefixes are aligned: the size is in the length alone
            addr, length = e.split("/")
            total += 1 << ((128 if ":" in addr else 32) - int(length))
        else:
            lo, hi = _interval(e)
            total += hi - lo + 1
    if isinstance(elements, tuple):
        remember_count(elements, total)
    return total


def is_hash_set(s: AddressSet) -> bool:
    """Whether the backend renders ``s`` as a hash set of single addresses."""
    # Every element holds at least one address: a longer set never qualifies.
    return len(s.elements) <= HASH_SET_MAX and address_count(s.elements) <= HASH_SET_MAX


def expand(elements: Iterable[str], family: Family) -> list[str]:
    """Every address the elements hold, as nft lists them (single addresses
    pass through as they are: the IR already prints them canonically)."""
    version, bits = (4, 32) if family == "ip" else (6, 128)
    out: list[str] = []
    for e in elements:
        if "/" in e:
            # The prefix's own address is already printed as address_text
            # prints it (the IR uses the same function): only the rest is made.
            addr, length = e.split("/")
            lo = _address_int(addr)
            out.append(addr)
            out.extend(address_text(v, version) for v in range(lo + 1, lo + (1 << (bits - int(length)))))
        elif "-" in e:
            lo, hi = _interval(e)
            out.extend(address_text(v, version) for v in range(lo, hi + 1))
        else:
            out.append(e)
    return out


def address_set_command(s: AddressSet, hashed: bool | None = None) -> Command:
    """``add set`` with its elements, in the hash or the interval form
    (``hashed`` None: the form :func:`is_hash_set` chooses)."""
    if hashed is None:
        hashed = is_hash_set(s)
    body = _obj(name=s.name, type=_ADDR_TYPE[s.family])
    if not hashed:
        body["flags"] = ["interval"]
    if s.elements:
        body["elem"] = expand(s.elements, s.family) if hashed else [_element(e) for e in s.elements]
    return {"add": {"set": body}}


def port_elements(pairs: Iterable[tuple[str, int]]) -> list[Any]:
    """(address, port) pairs as libnftables JSON elements."""
    return [{"concat": [a, p]} for a, p in pairs]


def digest_element(digest: str) -> dict[str, Any]:
    """The digest set's one element (see the module docstring)."""
    return {"elem": {"val": digest[:DIGEST_KEY_LEN], "comment": DIGEST_PREFIX + digest}}


def digest_swap(old: str, new: str) -> list[Command]:
    """Compare-and-swap of the digest: the kernel refuses the whole transaction
    when the live table does not hold ``old`` (``delete element`` of a missing
    element is ENOENT)."""
    return [{"delete": {"element": _obj(name=DIGEST_SET, elem=[old[:DIGEST_KEY_LEN]])}},
            {"add": {"element": _obj(name=DIGEST_SET, elem=[digest_element(new)])}}]


def port_set_command(s: AddressPortSet) -> Command:
    """``add set`` of (address, port) pairs, with its elements."""
    body = _obj(name=s.name, type=[_ADDR_TYPE[s.family], "inet_service"])
    if s.elements:
        body["elem"] = port_elements(s.elements)
    return {"add": {"set": body}}


def chain_rules(chain: Chain, direction: str, next_tier: str | None) -> list[Command]:
    """``add rule`` commands for one tier chain (its rules, then its default)."""
    cmds: list[Command] = []
    for rule in chain.rules:
        body = _obj(chain=chain.name, expr=rule_exprs(rule, direction, next_tier))
        if (comment := _comment(rule)) is not None:
            body["comment"] = comment
        cmds.append({"add": {"rule": body}})
    default = [{"counter": None}, _verdict(chain.default, direction, next_tier)]
    cmds.append({"add": {"rule": _obj(chain=chain.name, expr=default)}})
    return cmds


def tiers_with_next(tiers: tuple[Chain, ...]) -> list[tuple[Chain, str | None]]:
    """Each tier with the name of the one after it (where PASS goes)."""
    return [(chain, tiers[i + 1].name if i + 1 < len(tiers) else None) for i, chain in enumerate(tiers)]


def _tier_commands(tiers: tuple[Chain, ...], direction: str) -> list[Command]:
    cmds: list[Command] = []
    for chain, next_tier in tiers_with_next(tiers):
        cmds.append({"add": {"chain": _obj(name=chain.name)}})
        cmds.extend(chain_rules(chain, direction, next_tier))
    return cmds


def dispatch_pairs(ruleset: RuleSet) -> tuple[dict[str, str], dict[str, str]]:
    """(from_endpoint, to_endpoint): interface -> first egress / ingress tier."""
    from_ep = {ep.interface: ep.egress[0].name for ep in ruleset.endpoints if ep.egress}
    to_ep = {ep.interface: ep.ingress[0].name for ep in ruleset.endpoints if ep.ingress}
    return from_ep, to_ep


def dispatch_element(iface: str, chain: str) -> list[Any]:
    return [iface, {"jump": {"target": chain}}]


def _dispatch_map(name: str, pairs: list[tuple[str, str]]) -> Command:
    body = _obj(name=name, type="ifname", map="verdict")
    if pairs:
        body["elem"] = [dispatch_element(iface, chain) for iface, chain in sorted(pairs)]
    return {"add": {"map": body}}


# A prefix becomes an nft wildcard ("cg*"): letters, digits, '_', '.', '-' only,
# so nothing in it can be read as another wildcard or an escape.
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,14}$")


def check_fail_closed_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe interface-name prefix; ValueError otherwise."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"fail-closed prefix {prefix!r} must be 1-14 characters of letters, digits, '_', '.' or '-'")
    return prefix


@dataclass(frozen=True)
class FailClosed:
    """Drop forwarded traffic on ``prefix*`` interfaces not in ``known``."""

    prefix: str
    known: tuple[str, ...]  # sorted, unique interface names

    @classmethod
    def build(cls, prefix: str, ruleset: RuleSet, known: Iterable[str] = ()) -> FailClosed:
        # Endpoints with chains are always known; the caller adds the others
        # (non-isolated endpoints are not in the RuleSet).
        return cls(check_fail_closed_prefix(prefix), tuple(sorted({*known, *(e.interface for e in ruleset.endpoints)})))


def layout_digest(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> str:
    """What the digest set holds: the RuleSet's digest with the layout version,
    extended by the fail-closed settings when they are on (so a change of any
    of them is seen)."""
    parts = [f"nft-layout-{LAYOUT_VERSION}", ruleset.digest()]
    if fail_closed is not None:
        parts.extend([fail_closed.prefix, *fail_closed.known])
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _fail_closed_rules(fc: FailClosed) -> list[Command]:
    rules = []
    for key in ("iifname", "oifname"):
        meta = {"meta": {"key": key}}
        # The prefix goes in as JSON data, never as nft text.
        expr = [_match(meta, fc.prefix + "*"), _match(meta, "@" + KNOWN_ENDPOINT, op="!="),
                {"counter": None}, {"drop": None}]
        rules.append({"add": {"rule": _obj(chain=FORWARD, expr=expr, comment=FAIL_CLOSED_COMMENT)}})
    return rules


def table_objects(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> list[Command]:
    """``add`` commands that build the whole table, in dependency order."""
    cmds: list[Command] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds.append({"add": {"set": _obj(name=DIGEST_SET, type="ifname",
                                     elem=[digest_element(layout_digest(ruleset, fail_closed))])}})
    if fail_closed is not None:
        body = _obj(name=KNOWN_ENDPOINT, type="ifname")
        if fail_closed.known:
            body["elem"] = list(fail_closed.known)
        cmds.append({"add": {"set": body}})
    cmds.extend(address_set_command(s) for s in ruleset.address_sets)
    cmds.extend(port_set_command(s) for s in ruleset.port_sets)
    for ep in ruleset.endpoints:
        cmds.extend(_tier_commands(ep.ingress, "ingress"))
        cmds.extend(_tier_commands(ep.egress, "egress"))
    from_ep, to_ep = dispatch_pairs(ruleset)
    cmds.append(_dispatch_map(FROM_ENDPOINT, list(from_ep.items())))
    cmds.append(_dispatch_map(TO_ENDPOINT, list(to_ep.items())))
    cmds.append({"add": {"chain": _obj(name=FORWARD, type="filter", hook="forward", prio=0, policy="accept")}})
    established = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    cmds.append({"add": {"rule": _obj(chain=FORWARD, expr=[established, {"accept": None}])}})
    cmds.append({"add": {"rule": _obj(chain=FORWARD, expr=[
        {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@" + FROM_ENDPOINT}}])}})
    cmds.append({"add": {"rule": _obj(chain=FORWARD, expr=[
        {"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@" + TO_ENDPOINT}}])}})
    if fail_closed is not None:
        cmds.extend(_fail_closed_rules(fail_closed))
    return cmds


@dataclass(frozen=True)
class NftTransaction:
    """A transaction as a value: build it, look at it, check it, run it."""

    commands: tuple[Command, ...]
    digest: str
    replaces_table: bool
    # What each set and chain stands for, shown as '#' lines in text() (the
    # kernel keeps no comments on sets or chains, so these never round-trip).
    notes: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"nftables": list(self.commands)}

    def text(self) -> str:
        """The table this transaction leaves behind, in nft syntax."""
        adds = [cmd["add"] for cmd in self.commands if "add" in cmd]
        return objects_text(adds, dict(self.notes))


def replace_table(ruleset: RuleSet, fail_closed: FailClosed | None = None) -> NftTransaction:
    """One transaction that swaps in the new table: the kernel holds the old
    ruleset or the new one, never a mix, and never an empty moment."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    objects = table_objects(ruleset, fail_closed)
    # "add table" first makes the "delete" valid even when no table exists yet.
    commands = [{"add": table}, {"delete": table}, *objects]
    return NftTransaction(tuple(commands), layout_digest(ruleset, fail_closed), replaces_table=True,
                          notes=readable_notes(ruleset))


def readable_notes(ruleset: RuleSet) -> tuple[tuple[str, str], ...]:
    """What each set and chain stands for, for people reading the text form."""
    notes = [(s.name, s.comment) for s in ruleset.address_sets if s.comment]
    notes.extend((s.name, s.comment) for s in ruleset.port_sets if s.comment)
    for ep in ruleset.endpoints:
        notes.extend((c.name, f"ingress of {ep.endpoint} ({ep.interface})") for c in ep.ingress)
        notes.extend((c.name, f"egress of {ep.endpoint} ({ep.interface})") for c in ep.egress)
    return tuple(notes)


# -- text: the same objects, as nft prints them --------------------------------

def _expr_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, list):
        return ",".join(_expr_text(v) for v in value)
    (key, body), = value.items()
    if key == "payload":
        return f"{body['protocol']} {body['field']}"
    if key == "meta":
        return body["key"] if body["key"] in ("iifname", "oifname") else f"meta {body['key']}"
    if key == "ct":
        return f"ct {body['key']}"
    if key == "concat":
        return " . ".join(_expr_text(v) for v in body)
    if key == "set":
        return "{ " + ", ".join(_expr_text(v) for v in body) + " }"
    if key == "range":
        return f"{_expr_text(body[0])}-{_expr_text(body[1])}"
    if key == "prefix":
        return f"{body['addr']}/{body['len']}"
    if key == "match":
        op = "" if body["op"] in ("==", "in") else body["op"] + " "
        return f"{_expr_text(body['left'])} {op}{_expr_text(body['right'])}"
    if key == "vmap":
        return f"{_expr_text(body['key'])} vmap {_expr_text(body['data'])}"
    if key == "counter":
        return "counter"
    if key in ("goto", "jump"):
        return f"{key} {body['target']}"
    if key in ("accept", "drop", "return", "continue"):
        return key
    return json.dumps(value)  # not something we generate; show it rather than hide it


def _elem_text(elem: Any) -> str:
    if isinstance(elem, list):  # map element: [key, verdict]
        key = f'"{elem[0]}"' if isinstance(elem[0], str) else _expr_text(elem[0])
        return f"{key} : {_expr_text(elem[1])}"
    if isinstance(elem, dict) and "elem" in elem:  # an element with a comment: the digest
        inner = elem["elem"]
        # Quoted: a hex key such as "0123..." would otherwise be read back as a number.
        text = f'"{inner["val"]}"' if isinstance(inner["val"], str) else _expr_text(inner["val"])
        if inner.get("comment"):
            text += f' comment "{inner["comment"]}"'
        return text
    return _expr_text(elem)


def _elem_key(elem: Any) -> str:
    return json.dumps(elem, sort_keys=True)


def _note(name: str, notes: dict[str, str]) -> list[str]:
    text = notes.get(name)
    return [] if not text else ["\t# " + text.replace("\n", " ")]


def objects_text(objects: list[dict[str, Any]], notes: dict[str, str] | None = None) -> str:
    """Render table objects (from our commands or from the kernel) as nft text.

    Counter values, handles and element order are left out, so two listings of
    the same ruleset render identically whoever produced them.
    """
    sets: list[str] = []
    chains: dict[str, list[str]] = {}
    headers: dict[str, str] = {}
    for obj in objects:
        (kind, body), = obj.items()
        if kind in ("set", "map"):
            typ = body["type"]
            typ = " . ".join(typ) if isinstance(typ, list) else typ
            if kind == "map":
                typ += f" : {body['map']}"
            lines = [*_note(body["name"], notes or {}), f"\t{kind} {body['name']} {{", f"\t\ttype {typ}"]
            if body.get("flags"):
                lines.append(f"\t\tflags {','.join(body['flags'])}")
            elems = sorted(body.get("elem") or [], key=_elem_key)
            if elems:
                lines.append("\t\telements = { " + ",\n\t\t\t     ".join(_elem_text(e) for e in elems) + " }")
            lines.append("\t}")
            sets.append("\n".join(lines))
        elif kind == "chain":
            chains.setdefault(body["name"], [])
            if "hook" in body:
                headers[body["name"]] = (f"\t\ttype {body['type']} hook {body['hook']} priority "
                                         f"{body['prio']}; policy {body['policy']};")
        elif kind == "rule":
            text = " ".join(_expr_text(e) for e in body["expr"])
            if body.get("comment"):
                text += f' comment "{body["comment"]}"'
            chains.setdefault(body["chain"], []).append(f"\t\t{text}")
    blocks = list(sets)
    for name, rules in chains.items():
        head = [headers[name]] if name in headers else []
        blocks.append("\n".join([*_note(name, notes or {}), f"\tchain {name} {{", *head, *rules, "\t}"]))
    return f"table {FAMILY} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"


def _strip(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop what the kernel adds (handles, counter values) and the table line."""
    out = []
    for obj in objects:
        (kind, body), = obj.items()
        if kind == "table":
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind == "rule":
            body["expr"] = [{"counter": None} if "counter" in e else e for e in body["expr"]]
        out.append({kind: body})
    return out


def _canonical_order(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sets, maps, then chains with their rules, each group sorted by name."""
    sets = sorted((o for o in objects if "set" in o or "map" in o),
                  key=lambda o: next(iter(o.values()))["name"])
    chains = sorted((o for o in objects if "chain" in o), key=lambda o: o["chain"]["name"])
    rules = [o for o in objects if "rule" in o]
    ordered: list[dict[str, Any]] = list(sets)
    for c in chains:
        ordered.append(c)
        ordered.extend(r for r in rules if r["rule"]["chain"] == c["chain"]["name"])
    return ordered


@dataclass
class ApplyResult:
    changed: bool
    digest: str
    transaction: NftTransaction
    dry_run: bool = False
    # The live digest was not the one this enforcer last applied: someone else
    # changed or deleted the table (the agent counts these as drift repairs).
    drift: bool = False


@dataclass(frozen=True)
class Applied:
    """What this enforcer last put into the kernel (for incremental updates)."""

    ruleset: RuleSet
    fail_closed: FailClosed | None
    digest: str


class NftablesEnforcer:
    """Applies RuleSets to one network namespace's nftables.

    ``known_interfaces`` (plan/apply/desired_text/in_sync/diff) only matters with
    a fail-closed prefix: the local endpoints' interfaces beyond those that
    have chains, i.e. the non-isolated ones that must not be dropped.
    """

    name = "nft"

    def __init__(self, kernel: NftKernel, fail_closed_prefix: str | None = None) -> None:
        self.kernel = kernel
        self.fail_closed_prefix = None if fail_closed_prefix is None else check_fail_closed_prefix(fail_closed_prefix)
        self.applied: Applied | None = None  # set by apply(); None = unknown, replace in full

    def fail_closed(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> FailClosed | None:
        if self.fail_closed_prefix is None:
            return None
        return FailClosed.build(self.fail_closed_prefix, ruleset, known_interfaces)

    def plan(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> NftTransaction:
        return replace_table(ruleset, self.fail_closed(ruleset, known_interfaces))

    def check(self, tx: NftTransaction) -> None:
        """Let the kernel validate the transaction without committing it."""
        self.kernel.run(list(tx.commands), check=True)

    def live_objects(self) -> list[dict[str, Any]] | None:
        return self.kernel.list_table(FAMILY, TABLE)

    def live_digest(self, live: list[dict[str, Any]] | None = None) -> str | None:
        """The digest the live table says it holds, from ``live`` when given,
        else by listing only the digest set (cheap, whatever the table's size)."""
        if live is None:
            live = self.kernel.list_set(FAMILY, TABLE, DIGEST_SET)
        return digest_of(live)

    def live_text(self, live: list[dict[str, Any]] | None = None) -> str | None:
        live = self.live_objects() if live is None else live
        return None if live is None else objects_text(_canonical_order(_strip(live)))

    def desired_text(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> str:
        adds = [cmd["add"] for cmd in self.plan(ruleset, known_interfaces).commands if "add" in cmd]
        return objects_text(_canonical_order(_strip(adds)))

    def diff(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> list[str]:
        """Unified diff from the live table to the desired one; empty when equal."""
        live = self.live_text() or ""
        return list(difflib.unified_diff(live.splitlines(), self.desired_text(ruleset, known_interfaces).splitlines(),
                                         "live", "desired", lineterm=""))

    def in_sync(self, ruleset: RuleSet, known_interfaces: Iterable[str] = ()) -> bool:
        return self.live_text() == self.desired_text(ruleset, known_interfaces)

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Iterable[str] = (),
              incremental: bool = True) -> ApplyResult:
        """Make the kernel hold ``ruleset``. A no-op when it already does; with
        ``dry_run`` the kernel checks the transaction and nothing is committed.

        When the live digest equals the digest this enforcer last applied, a
        change goes in as an incremental transaction (set elements, changed
        chains) that also swaps the digest element, so the kernel refuses it
        if the table changed hands in between; only the digest set is read
        for that. Otherwise (first apply, drift, same digest, ``incremental=False``)
        the whole live table is read: unchanged and equal is a no-op, anything
        else is replaced in full. Either way it is one transaction."""
        known = tuple(known_interfaces)
        fc = self.fail_closed(ruleset, known)
        digest = layout_digest(ruleset, fc)
        applied = self.applied
        if incremental and applied is not None and applied.digest != digest:
            update = self._incremental(applied, ruleset, fc, digest, dry_run)
            if update is not None:
                return update
        full = replace_table(ruleset, fc)
        live = self.live_objects()
        live_digest = self.live_digest(live) if live is not None else None
        if live_digest == full.digest and self.live_text(live) == self.desired_text(ruleset, known):
            self.applied = Applied(ruleset, fc, full.digest)
            return ApplyResult(False, full.digest, full, dry_run)
        if dry_run:
            self.check(full)
        else:
            self.kernel.run(list(full.commands))
        drift = applied is not None and live_digest != applied.digest and not dry_run
        if not dry_run:
            self.applied = Applied(ruleset, fc, full.digest)
        return ApplyResult(True, full.digest, full, dry_run, drift=drift)

    def _incremental(self, applied: Applied, ruleset: RuleSet, fc: FailClosed | None, digest: str,
                     dry_run: bool) -> ApplyResult | None:
        """The incremental transaction from ``applied`` to ``ruleset``, run; None
        when only a full replacement will do (the caller then does it)."""
        from callgate.enforcers.nft_update import plan_update

        if self.live_digest() != applied.digest:
            return None  # drift: someone else changed or deleted the table
        tx = plan_update(applied.ruleset, applied.fail_closed, ruleset, fc)
        if tx is None:
            return None
        try:
            if dry_run:
                self.check(tx)
            else:
                self.kernel.run(list(tx.commands))
        except KernelError:
            # Refused as a whole. If the digest moved since the look above (the
            # swap inside the transaction found it gone), that is drift: the full
            # replacement repairs it. Otherwise the kernel refused our change
            # itself: let the caller see it.
            if self.live_digest() != applied.digest:
                return None
            raise
        if not dry_run:
            self.applied = Applied(ruleset, fc, digest)
        return ApplyResult(True, digest, tx, dry_run)

    def remove(self) -> bool:
        """Delete callgate's table (only it). Returns whether there was one."""
        if self.live_objects() is None:
            return False
        self.kernel.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        self.applied = None
        return True


def digest_of(live: list[dict[str, Any]] | None) -> str | None:
    """The digest in the listed digest set; None when there is none, or not
    exactly one well-formed element (not a table this layout wrote)."""
    for obj in live or ():
        body = obj.get("set")
        if not body or body.get("name") != DIGEST_SET:
            continue
        elems = body.get("elem") or []
        if len(elems) != 1 or not isinstance(elems[0], dict) or not isinstance(elems[0].get("elem"), dict):
            return None
        key, comment = elems[0]["elem"].get("val"), str(elems[0]["elem"].get("comment", ""))
        digest = comment.removeprefix(DIGEST_PREFIX)
        if comment == digest or key != digest[:DIGEST_KEY_LEN]:
            return None
        return digest
    return None
