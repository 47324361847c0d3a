"""The one small door to the kernel's nftables, and an in-memory stand-in.

Everything callgate sends to nftables goes through :class:`NftKernel.run`: a
list of libnftables JSON commands executed as ONE transaction (the kernel
commits all of them or none). ``check=True`` asks the kernel to validate the
transaction without committing it (``nft --check``).

:class:`LibNftables` is the real thing; it can work inside another network
namespace (the test lab) by running on a thread that has entered it.
:class:`FakeNftKernel` keeps tables in memory for fast unit tests.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from callgate.errors import KernelError

Command = dict[str, Any]
_CLONE_NEWNET = 0x40000000


class NftKernel(Protocol):
    def run(self, commands: list[Command], check: bool = False) -> None:
        """Execute ``commands`` as one transaction; raise KernelError if refused."""

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The table's objects as libnftables JSON, or None if it does not exist."""

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        """One set (with its elements) as libnftables JSON, or None if it does not exist."""

    def list_tables(self) -> list[tuple[str, str]]:
        """(family, name) of every table in this network namespace."""


def _enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class LibNftables:
    """libnftables through Debian's python3-nftables bindings."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        if netns is not None:
            # One thread lives in the namespace; the netlink sockets libnftables
            # opens there belong to that namespace.
            self._pool = ThreadPoolExecutor(max_workers=1, initializer=_enter_netns, initargs=(netns,))

    def _nft(self, bulk: bool = False) -> Any:
        """This thread's libnftables context; ``bulk`` for whole-table work.

        Why two: libnftables 1.0.6 keeps what a command loaded (a whole table
        listed, a whole table replaced: ~190k elements at 50k pods) in the
        context's cache and frees it at the start of the next command, ~30 ms.
        Whole-table work in a context of its own leaves that cost to the next
        whole-table command instead of the next small incremental one."""
        attr = "bulk" if bulk else "nft"
        nft = getattr(self._local, attr, None)
        if nft is None:
            import nftables  # Debian's python3-nftables, linked into the venv

            nft = nftables.Nftables()
            nft.set_json_output(True)
            nft.set_handle_output(False)
            setattr(self._local, attr, nft)
        return nft

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    def _run(self, commands: list[Command], check: bool) -> None:
        # A transaction that deletes a table rebuilds it whole (a full replacement).
        nft = self._nft(bulk=any("table" in c.get("delete", {}) for c in commands))
        nft.set_dry_run(check)
        try:
            rc, _out, err = nft.json_cmd({"nftables": commands})
        finally:
            nft.set_dry_run(False)
        if rc != 0:
            raise KernelError(err.strip() or f"libnftables returned {rc}")

    def run(self, commands: list[Command], check: bool = False) -> None:
        self._call(self._run, commands, check)

    def _list(self, what: str, bulk: bool = False) -> list[dict[str, Any]] | None:
        rc, out, err = self._nft(bulk).cmd(what)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise KernelError(err.strip())
        data = json.loads(out) if out else {"nftables": []}
        return [obj for obj in data.get("nftables", []) if "metainfo" not in obj]

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        # ``name`` is our own constant; never user input.
        return self._call(self._list, f"list table {family} {name}", True)  # type: ignore[no-any-return]

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        # Our own constants again. Unlike "list table" or "list chain", which
        # make libnftables 1.0.6 fetch every element of every set in the table
        # (~100 ms at 50k elements), "list set" fetches only that set's.
        return self._call(self._list, f"list set {family} {table} {name}")  # type: ignore[no-any-return]

    def list_tables(self) -> list[tuple[str, str]]:
        objs = self._call(self._list, "list tables") or []
        return [(o["table"]["family"], o["table"]["name"]) for o in objs if "table" in o]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class FakeNftKernel:
    """Tables in memory, with the checks that matter for callgate's own tests:
    transactions are all-or-nothing, references must resolve, and the listing
    has the same shape as the kernel's (counters, no comments on sets)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], dict[str, Any]] = {}
        self.transactions = 0
        self.fail_next: str | None = None  # make the next run fail, to test atomicity
        self.handles = 0

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
                at = [i for i, e in enumerate(target["elem"]) if _elem_key(e) == _elem_key(elem)]
                if verb == "add" and not at:
                    target["elem"].append(elem)
                elif verb == "delete":
                    if not at:
                        raise KernelError(f"No such file or directory: element {elem}")
                    del target["elem"][at[0]]
        elif kind == "chain":
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
            self.handles += 1  # rules get handles, as in the kernel (incremental updates use them)
            table["rules"][obj["chain"]].append({**obj, "handle": self.handles})
        elif kind == "rule" and verb == "replace":
            rules = table["rules"].get(obj["chain"], [])
            at = [i for i, r in enumerate(rules) if r.get("handle") == obj.get("handle")]
            if not at:
                raise KernelError(f"No such file or directory: rule handle {obj.get('handle')}")
            rules[at[0]] = obj
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
        out.extend({"chain": {k: v for k, v in c.items() if k != "comment"}} for c in table["chains"].values())
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


def _elem_key(elem: Any) -> Any:
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
