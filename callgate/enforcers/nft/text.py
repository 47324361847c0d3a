"""JSON → nft text: the printer and the normal form.

The same printer renders a planned transaction (``compile --format text``,
``apply --dry-run``) and what the kernel lists, so that "live equals desired"
is a comparison of two texts (:func:`normal_text`), and a diff is readable.
"""

from __future__ import annotations

import json
from typing import Any

from callgate.enforcers.nft.actions import is_limit_set
from callgate.enforcers.nft.layout import FAMILY, TABLE


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
    if key == "set":
        return "{ " + ", ".join(_expr_text(v) for v in body) + " }"
    if key == "limit":
        over = "over " if body.get("inv") else ""
        return f"limit rate {over}{body['rate']}/{body['per']} burst {body['burst']} packets"
    if key == "log":
        return f'log prefix "{body["prefix"]}" group {body["group"]}'
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


def json_key(value: Any) -> str:
    """A sort key for JSON values (set elements, commands): their canonical JSON text."""
    return json.dumps(value, sort_keys=True)


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
            if body.get("size"):
                lines.append(f"\t\tsize {body['size']}")
            if body.get("flags"):
                lines.append(f"\t\tflags {','.join(body['flags'])}")
            if body.get("timeout"):
                lines.append(f"\t\ttimeout {body['timeout']}s")
            # Sorted by their text (one rendering each; a JSON key per element cost
            # ~0.5 s for the 180,000 elements of a 50k-pod node).
            elems = sorted(_elem_text(e) for e in body.get("elem") or [])
            if elems:
                lines.append("\t\telements = { " + ",\n\t\t\t     ".join(elems) + " }")
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
        if kind == "set" and is_limit_set(body["name"]):
            body.pop("elem", None)  # the addresses the kernel is limiting now: its own, never compared
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


def normal_text(objects: list[dict[str, Any]]) -> str:
    """The normal form of table objects, planned or listed: what the kernel
    adds left out, in canonical order, printed (equal tables, equal texts)."""
    return objects_text(_canonical_order(_strip(objects)))
