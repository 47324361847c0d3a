"""JSON → nft text: the printer and the normal form.

The same printer renders a planned transaction (``compile --format text``,
``apply --dry-run``) and what the kernel lists, so that "live equals desired"
is a comparison of two texts (:func:`normal_text`), and a diff is readable.
"""

from __future__ import annotations

import json
from typing import Any

from callgate.enforcers.nft.actions import is_limit_set
from callgate.enforcers.nft.layout import BRIDGE_FAMILY, FAMILY, TABLE
from callgate.errors import printable

_IFNAME_KEYS = ("iifname", "oifname")


def _quoted(text: str) -> str:
    # Interface names are validated upstream (no quotes); quoting keeps a name
    # that looks like a number or holds "*" one string when nft reads it back.
    return f'"{text}"'


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
    if key == "set" and isinstance(body, dict):  # a statement: update @set { key stmt }
        stmts = " ".join(_expr_text(v) for v in body.get("stmt", []))
        return f"{body['op']} {body['set']} {{ {_expr_text(body['elem'])} {stmts} }}"
    if key == "set":  # an anonymous set, or map: its elements are [key, value] pairs
        return "{ " + ", ".join(f"{_expr_text(v[0])} : {_expr_text(v[1])}" if isinstance(v, list) else _expr_text(v)
                                for v in body) + " }"
    if key == "limit":
        over = "over " if body.get("inv") else ""
        return f"limit rate {over}{body['rate']}/{body['per']} burst {body['burst']} packets"
    if key == "log":
        return f'log prefix "{body["prefix"]}" group {body["group"]}'
    if key == "range":
        return f"{_expr_text(body[0])}-{_expr_text(body[1])}"
    if key == "prefix":
        addr = hex(body["addr"]) if isinstance(body["addr"], int) else body["addr"]  # a ct mark's bits
        return f"{addr}/{body['len']}"
    if key in ("&", "|"):  # ct mark bits: printed as nft prints them
        return f" {key} ".join(hex(v) if isinstance(v, int) else _expr_text(v) for v in body)
    if key == "map":  # a value looked up: ct mark set … map @verdict_mark
        return f"{_expr_text(body['key'])} map {_expr_text(body['data'])}"
    if key == "mangle":
        return f"{_expr_text(body['key'])} set {_expr_text(body['value'])}"
    if key == "match":
        op = "" if body["op"] in ("==", "in") else body["op"] + " "
        right = body["right"]
        is_ifname = body["left"].get("meta", {}).get("key") in _IFNAME_KEYS if isinstance(body["left"], dict) else False
        if is_ifname and isinstance(right, str) and not right.startswith("@"):
            return f"{_expr_text(body['left'])} {op}{_quoted(right)}"
        return f"{_expr_text(body['left'])} {op}{_expr_text(right)}"
    if key == "vmap":
        return f"{_expr_text(body['key'])} vmap {_expr_text(body['data'])}"
    if key == "counter":
        return "counter"
    if key in ("goto", "jump"):
        return f"{key} {body['target']}"
    if key in ("accept", "drop", "return", "continue"):
        return key
    return json.dumps(value)  # not something we generate; show it rather than hide it


def _typed_text(value: Any, typ: str) -> str:
    return _quoted(value) if typ == "ifname" and isinstance(value, str) else _expr_text(value)


def _elem_text(elem: Any, types: list[str]) -> str:
    """One set or map element; ``types`` are the key's types (one per part of
    a concatenation), which say which strings are interface names to quote."""
    if isinstance(elem, list):  # map element: [key, verdict]
        return f"{_elem_text(elem[0], types)} : {_expr_text(elem[1])}"
    if isinstance(elem, dict) and "elem" in elem:  # an element with a comment: the digest
        inner = elem["elem"]
        # Quoted: a hex key such as "0123..." would otherwise be read back as a number.
        text = f'"{inner["val"]}"' if isinstance(inner["val"], str) else _expr_text(inner["val"])
        if inner.get("comment"):
            text += f' comment "{inner["comment"]}"'
        return text
    if isinstance(elem, dict) and "concat" in elem:
        return " . ".join(_typed_text(part, typ) for part, typ in zip(elem["concat"], types, strict=False))
    return _typed_text(elem, types[0])


def json_key(value: Any) -> str:
    """A sort key for JSON values (set elements, commands): their canonical JSON text."""
    return json.dumps(value, sort_keys=True)


def _note(name: str, notes: dict[str, str]) -> list[str]:
    """A '#' line saying what ``name`` stands for. Notes name endpoints and selectors,
    which may hold any character: what is not printable is written as an escape, so
    a note stays one comment line (a NUL or a newline would end it) and no escape
    sequence reaches a terminal."""
    text = notes.get(name)
    return [] if not text else ["\t# " + printable(text)]


def objects_text(objects: list[dict[str, Any]], notes: dict[str, str] | None = None) -> str:
    """Render table objects (from our commands or from the kernel) as nft text:
    one ``table <family> callgate`` block per family, inet first.

    Counter values, handles and element order are left out, so two listings of
    the same ruleset render identically whoever produced them.
    """
    by_family: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        (kind, body), = obj.items()
        family = body.get("family", FAMILY)
        group = by_family.setdefault(family, [])
        if kind != "table":
            group.append(obj)
    order = sorted(by_family, key=lambda f: (f != FAMILY, f != BRIDGE_FAMILY, f))
    return "".join(_table_text(family, by_family[family], notes or {}) for family in order)


def _table_text(family: str, objects: list[dict[str, Any]], notes: dict[str, str]) -> str:
    sets: list[str] = []
    chains: dict[str, list[str]] = {}
    headers: dict[str, str] = {}
    for obj in objects:
        (kind, body), = obj.items()
        if kind in ("set", "map"):
            types = body["type"] if isinstance(body["type"], list) else [body["type"]]
            typ = " . ".join(types)
            if kind == "map":
                typ += f" : {body['map']}"
            lines = [*_note(body["name"], notes), f"\t{kind} {body['name']} {{", f"\t\ttype {typ}"]
            if body.get("size"):
                lines.append(f"\t\tsize {body['size']}")
            if body.get("flags"):
                lines.append(f"\t\tflags {','.join(body['flags'])}")
            if body.get("timeout"):
                lines.append(f"\t\ttimeout {body['timeout']}s")
            # Sorted by their text (one rendering each; a JSON key per element cost
            # ~0.5 s for the 180,000 elements of a 50k-pod node).
            elems = sorted(_elem_text(e, types) for e in body.get("elem") or [])
            if elems:
                lines.append("\t\telements = { " + ",\n\t\t\t     ".join(elems) + " }")
            lines.append("\t}")
            sets.append("\n".join(lines))
        elif kind == "chain":
            chains.setdefault(body["name"], [])
            if "hook" in body:
                device = f" device {_quoted(body['dev'])}" if isinstance(body.get("dev"), str) else ""
                headers[body["name"]] = (f"\t\ttype {body['type']} hook {body['hook']}{device} priority "
                                         f"{body['prio']}; policy {body['policy']};")
        elif kind == "rule":
            text = " ".join(_expr_text(e) for e in body["expr"])
            if body.get("comment"):
                text += f' comment "{body["comment"]}"'
            chains.setdefault(body["chain"], []).append(f"\t\t{text}")
    blocks = list(sets)
    for name, rules in chains.items():
        head = [headers[name]] if name in headers else []
        blocks.append("\n".join([*_note(name, notes), f"\tchain {name} {{", *head, *rules, "\t}"]))
    return f"table {family} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"


def _strip(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop what the kernel adds (handles, counter values) and the table line."""
    out = []
    for obj in objects:
        (kind, body), = obj.items()
        if kind == "table":
            continue
        # The handle; and an ingress chain's device, which libnftables 1.0.6 does not
        # list (a source chain's name is a hash of its device's: it cannot stray).
        body = {k: v for k, v in body.items() if k != "handle" and not (kind == "chain" and k == "dev")}
        if kind == "map":
            body.pop("size", None)  # a capacity, not content: a table built at another size is the same table
        if kind == "set" and is_limit_set(body["name"]):
            body.pop("elem", None)  # the addresses the kernel is limiting now: its own, never compared
        if kind == "rule":
            body["expr"] = [{"counter": None} if "counter" in e else e for e in body["expr"]]
        out.append({kind: body})
    return out


def _canonical_order(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family (inet first): sets and maps, then chains with their rules,
    each group sorted by name."""
    def family(o: dict[str, Any]) -> str:
        return str(next(iter(o.values())).get("family", FAMILY))

    ordered: list[dict[str, Any]] = []
    for fam in sorted({family(o) for o in objects}, key=lambda f: (f != FAMILY, f != BRIDGE_FAMILY, f)):
        mine = [o for o in objects if family(o) == fam]
        ordered.extend(sorted((o for o in mine if "set" in o or "map" in o),
                              key=lambda o: next(iter(o.values()))["name"]))
        rules = [o for o in mine if "rule" in o]
        for c in sorted((o for o in mine if "chain" in o), key=lambda o: o["chain"]["name"]):
            ordered.append(c)
            ordered.extend(r for r in rules if r["rule"]["chain"] == c["chain"]["name"])
    return ordered


def normal_text(objects: list[dict[str, Any]]) -> str:
    """The normal form of table objects, planned or listed: what the kernel
    adds left out, in canonical order, printed (equal tables, equal texts)."""
    return objects_text(_canonical_order(_strip(objects)))
