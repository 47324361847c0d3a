"""An in-memory stand-in for the nftables kernel door, for fast unit tests."""

from __future__ import annotations

import copy
import json
from typing import Any

from callgate.enforcers.nft.kernel import Command
from callgate.errors import KernelError


class FakeNftKernel:
    """Tables in memory, with the checks that matter for callgate's own tests:
    transactions are all-or-nothing, references must resolve, and the listing
    has the same shape as the kernel's (counters, no comments on sets)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}
        self.transactions = 0
        self.fail_next: str | None = None  # make the next run fail, to test atomicity
        # False: a kernel older than 6.16, which refuses a hook on an interface that
        # does not exist (and has none here: every ingress hook is refused).
        self.hooks_by_name = True

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"sets": {}, "chains": {}, "rules": {}}

    def run(self, commands: list[Command], check: bool = False) -> None:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise KernelError(message)
        tables = copy.deepcopy(self.tables)
        for cmd in commands:
            self._apply(tables, cmd)
        self._verify(tables)
        if not check:
            self.tables = tables
            self.transactions += 1

    def _apply(self, tables: dict[tuple[str, str], dict[str, Any]], cmd: Command) -> None:
        (verb, body), = cmd.items()
        (kind, obj), = body.items()
        key = (obj.get("family", "ip"), obj.get("table") or obj.get("name"))
        if kind == "table":
            if verb == "add":
                tables.setdefault(key, self._empty())
            elif verb == "delete":
                if key not in tables:
                    raise KernelError(f"No such file or directory: table {key}")
                del tables[key]
            elif verb == "flush" and key in tables:
                for chain in tables[key]["rules"]:
                    tables[key]["rules"][chain] = []
            return
        if key not in tables:
            raise KernelError(f"No such file or directory: table {key}")
        table = tables[key]
        if kind in ("set", "map"):
            if verb == "add":
                table["sets"].setdefault(obj["name"], {**obj, "_kind": kind, "elem": list(obj.get("elem", []))})
            elif verb == "delete":
                table["sets"].pop(obj["name"])
            elif verb == "flush":
                table["sets"][obj["name"]]["elem"] = []
        elif kind == "element":
            target = table["sets"].get(obj["name"])
            if target is None:
                raise KernelError(f"No such file or directory: set {obj['name']}")
            for elem in obj["elem"]:
                # Elements are matched by key, as in the kernel (a comment is not part of it).
                at = [i for i, e in enumerate(target["elem"]) if _element_key(e) == _element_key(elem)]
                if verb == "add" and not at:
                    target["elem"].append(elem)
                elif verb == "delete":
                    if not at:
                        raise KernelError(f"No such file or directory: element {elem}")
                    del target["elem"][at[0]]
        elif kind == "chain":
            if verb == "add" and obj.get("hook") == "ingress" and not self.hooks_by_name:
                raise KernelError(f"Could not process rule: No such file or directory: device {obj.get('dev')}")
            if verb == "add":
                table["chains"].setdefault(obj["name"], obj)
                table["rules"].setdefault(obj["name"], [])
            elif verb == "delete":
                table["chains"].pop(obj["name"])
                table["rules"].pop(obj["name"])
            elif verb == "flush":
                table["rules"][obj["name"]] = []
        elif kind == "rule" and verb == "add":
            if obj["chain"] not in table["chains"]:
                raise KernelError(f"No such file or directory: chain {obj['chain']}")
            # The kernel resolves a rule's jumps, gotos and sets when the rule is
            # added, not at the end of the transaction: what it names must exist already.
            text = json.dumps(obj)
            for ref in _refs(text, '"target": "'):
                if ref not in table["chains"]:
                    raise KernelError(f"Could not process rule: No such file or directory: chain {ref}")
            for ref in _refs(text, '"@'):
                if ref not in table["sets"]:
                    raise KernelError(f"Could not process rule: No such file or directory: set {ref}")
            table["rules"][obj["chain"]].append(obj)
        else:
            raise KernelError(f"fake kernel: unsupported command {verb} {kind}")

    @staticmethod
    def _verify(tables: dict[tuple[str, str], dict[str, Any]]) -> None:
        """References to sets and chains must resolve, as the kernel insists."""
        for table in tables.values():
            text = json.dumps([table["rules"], [s.get("elem") for s in table["sets"].values()]])
            for ref in set(_refs(text, '"@')):
                if ref not in table["sets"]:
                    raise KernelError(f"Could not process rule: No such file or directory: set {ref}")
            for ref in set(_refs(text, '"target": "')):
                if ref not in table["chains"]:
                    raise KernelError(f"Could not process rule: No such file or directory: chain {ref}")

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        table = self.tables.get((family, name))
        if table is None:
            return None
        out: list[dict[str, Any]] = [{"table": {"family": family, "name": name}}]
        for s in table["sets"].values():
            kind = s["_kind"]
            obj = {k: v for k, v in s.items() if k not in ("_kind", "comment")}
            if not obj.get("elem"):
                obj.pop("elem", None)
            out.append({kind: obj})
        # libnftables 1.0.6 lists no device of an inet ingress chain in JSON.
        out.extend({"chain": {k: v for k, v in c.items() if k not in ("comment", "dev")}}
                   for c in table["chains"].values())
        for rules in table["rules"].values():
            for rule in rules:
                exprs = [{"counter": {"packets": 0, "bytes": 0}} if "counter" in e else e for e in rule["expr"]]
                out.append({"rule": {**rule, "expr": exprs}})
        return copy.deepcopy(out)

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        listed = self.list_table(family, table)
        if listed is None:
            return None
        found = [o for o in listed if next(iter(o.values())).get("name") == name and ("set" in o or "map" in o)]
        return found or None

    def list_tables(self) -> list[tuple[str, str]]:
        return sorted(self.tables)

    def generation(self) -> int | None:
        return self.transactions  # committed ones, as the kernel counts them

    def close(self) -> None:
        pass  # nothing to release


def _element_key(elem: Any) -> Any:
    """An element's key: an element with a comment is {"elem": {"val": key, ...}}."""
    if isinstance(elem, dict) and isinstance(elem.get("elem"), dict):
        return elem["elem"].get("val")
    return elem


def _refs(text: str, marker: str) -> list[str]:
    out = []
    start = 0
    while (i := text.find(marker, start)) != -1:
        j = text.index('"', i + len(marker))
        out.append(text[i + len(marker):j])
        start = j
    return out
