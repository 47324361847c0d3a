"""nftables backend: the RuleSet IR as one libnftables JSON transaction.

Layout (everything lives in table ``inet callgate``; no other table is read or
written)::

    set peers4_<hash> / peers6_<hash>   peer addresses (interval sets)
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

The digest of the RuleSet rides in the comment of the forward chain's first
rule (the kernel keeps rule comments, not table ones), so a re-apply of the
same input is recognised and skipped. With fail-closed on, it is the digest of
the RuleSet, the prefix and the known interfaces together (:func:`layout_digest`).

:meth:`NftablesEnforcer.apply` remembers what it applied; when the live digest
still equals that, the next apply is an incremental transaction
(:mod:`callgate.enforcers.nft_update`) instead of a full replacement.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from callgate.compiler.ir import AddressPortSet, AddressSet, Chain, Family, L4Match, Rule, RuleSet, Verdict
from callgate.enforcers.kernel import Command, NftKernel

FAMILY = "inet"
TABLE = "callgate"
FORWARD = "forward"
FROM_ENDPOINT = "from_endpoint"
TO_ENDPOINT = "to_endpoint"
KNOWN_ENDPOINT = "known_endpoint"
FAIL_CLOSED_COMMENT = "callgate fail-closed"
DIGEST_PREFIX = "callgate sha256:"
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


def _address_set(s: AddressSet) -> Command:
    body = _obj(name=s.name, type=_ADDR_TYPE[s.family], flags=["interval"])
    if s.elements:
        body["elem"] = [_element(e) for e in s.elements]
    return {"add": {"set": body}}


def _port_set(s: AddressPortSet) -> Command:
    body = _obj(name=s.name, type=[_ADDR_TYPE[s.family], "inet_service"])
    if s.elements:
        body["elem"] = [{"concat": [a, p]} for a, p in s.elements]
    return {"add": {"set": body}}


def _tier_commands(tiers: tuple[Chain, ...], direction: str) -> list[Command]:
    cmds: list[Command] = []
    for i, chain in enumerate(tiers):
        next_tier = tiers[i + 1].name if i + 1 < len(tiers) else None
        cmds.append({"add": {"chain": _obj(name=chain.name)}})
        for rule in chain.rules:
            body = _obj(chain=chain.name, expr=rule_exprs(rule, direction, next_tier))
            if (comment := _comment(rule)) is not None:
                body["comment"] = comment
            cmds.append({"add": {"rule": body}})
        default = [{"counter": None}, _verdict(chain.default, direction, next_tier)]
        cmds.append({"add": {"rule": _obj(chain=chain.name, expr=default)}})
    return cmds


def _dispatch_map(name: str, pairs: list[tuple[str, str]]) -> Command:
    body = _obj(name=name, type="ifname", map="verdict")
    if pairs:
        body["elem"] = [[iface, {"jump": {"target": chain}}] for iface, chain in sorted(pairs)]
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
    """What the digest comment holds: the RuleSet's digest, extended by the
    fail-closed settings when they are on (so a change of either is seen)."""
    if fail_closed is None:
        return ruleset.digest()
    text = "\x00".join([ruleset.digest(), fail_closed.prefix, *fail_closed.known])
    return hashlib.sha256(text.encode()).hexdigest()


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
    if fail_closed is not None:
        body = _obj(name=KNOWN_ENDPOINT, type="ifname")
        if fail_closed.known:
            body["elem"] = list(fail_closed.known)
        cmds.append({"add": {"set": body}})
    cmds.extend(_address_set(s) for s in ruleset.address_sets)
    cmds.extend(_port_set(s) for s in ruleset.port_sets)
    to_ep: list[tuple[str, str]] = []
    from_ep: list[tuple[str, str]] = []
    for ep in ruleset.endpoints:
        cmds.extend(_tier_commands(ep.ingress, "ingress"))
        cmds.extend(_tier_commands(ep.egress, "egress"))
        if ep.ingress:
            to_ep.append((ep.interface, ep.ingress[0].name))
        if ep.egress:
            from_ep.append((ep.interface, ep.egress[0].name))
    cmds.append(_dispatch_map(FROM_ENDPOINT, from_ep))
    cmds.append(_dispatch_map(TO_ENDPOINT, to_ep))
    cmds.append({"add": {"chain": _obj(name=FORWARD, type="filter", hook="forward", prio=0, policy="accept")}})
    established = _match({"ct": {"key": "state"}}, ["established", "related"], op="in")
    cmds.append({"add": {"rule": _obj(chain=FORWARD, expr=[established, {"accept": None}],
                                      comment=DIGEST_PREFIX + layout_digest(ruleset, fail_closed))}})
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
        rule = digest_rule(self.live_objects() if live is None else live)
        return None if rule is None else str(rule["comment"])[len(DIGEST_PREFIX):]

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

        When the live digest equals the digest this enforcer last applied, the
        change goes in as an incremental transaction (set elements, changed
        chains); otherwise (first apply, drift, ``incremental=False``) the table
        is replaced in full. Either way it is one transaction."""
        known = tuple(known_interfaces)
        fc = self.fail_closed(ruleset, known)
        full = replace_table(ruleset, fc)
        live = self.live_objects()
        live_digest = self.live_digest(live) if live is not None else None
        if live_digest == full.digest and self.live_text(live) == self.desired_text(ruleset, known):
            self.applied = Applied(ruleset, fc, full.digest)
            return ApplyResult(False, full.digest, full, dry_run)
        tx = full
        if incremental and self.applied is not None and live is not None and live_digest == self.applied.digest:
            from callgate.enforcers.nft_update import plan_update

            tx = plan_update(self.applied.ruleset, self.applied.fail_closed, ruleset, fc, live) or full
        if dry_run:
            self.check(tx)
        else:
            self.kernel.run(list(tx.commands))
        drift = self.applied is not None and live_digest != self.applied.digest and not dry_run
        if not dry_run:
            self.applied = Applied(ruleset, fc, full.digest)
        return ApplyResult(True, full.digest, tx, dry_run, drift=drift)

    def remove(self) -> bool:
        """Delete callgate's table (only it). Returns whether there was one."""
        if self.live_objects() is None:
            return False
        self.kernel.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        self.applied = None
        return True


def digest_rule(live: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The forward chain's rule that carries the digest comment, as listed."""
    for obj in live or ():
        rule = obj.get("rule")
        if rule and rule.get("chain") == FORWARD and str(rule.get("comment", "")).startswith(DIGEST_PREFIX):
            return rule  # type: ignore[no-any-return]
    return None
