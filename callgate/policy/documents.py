"""Reading policy and inventory files into documents, with positions on demand.

Parsing uses PyYAML's C loader, which is fast but forgets where things were.
When a document turns out to be wrong, :mod:`callgate.policy.positions` finds
the offending field in the file again, so error messages can say
``file:line:column`` without slowing down the common, correct case.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

from callgate.errors import InputError, Problem, ProblemCode, shown
from callgate.policy import yamlfast
from callgate.policy.limits import MAX_FILE_BYTES, alias_problem, size_text
from callgate.policy.positions import Positions

if TYPE_CHECKING:
    from callgate.policy.ahead import YamlAhead

SUFFIXES = (".yaml", ".yml", ".json")

# (apiVersion, kind) of the documents that say who runs where, and of those that
# say who may call whom. Either loader skips the other's documents, so an
# inventory may sit in the policy directory (`explain -i . -p .`).
INVENTORY_KINDS = {("callgate/v1", "Inventory"), ("v1", "Pod"), ("v1", "Namespace"), ("v1", "Node")}
POLICY_KINDS = {("networking.k8s.io/v1", "NetworkPolicy"), ("callgate/v1", "App"),
                ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy"),
                ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
                ("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy")}


def is_kind(api: object, kind: object, kinds: set[tuple[str, str]]) -> bool:
    """Whether a document's (apiVersion, kind) is one of ``kinds``. Either may be
    anything a document holds, and a mapping or a list is not hashable."""
    return isinstance(api, str) and isinstance(kind, str) and (api, kind) in kinds


@dataclass(frozen=True)
class Document:
    """One YAML/JSON document, possibly an item of a ``List``."""

    file: str
    index: int  # document number inside the file
    data: Any
    path: tuple[str | int, ...] = ()  # e.g. ("items", 3) for the 4th item of a List
    # Shared by the documents of one file, so that file is parsed for positions at most
    # once however many problems it has (once per problem was quadratic in its size).
    positions: Positions = field(default_factory=Positions, compare=False, repr=False)

    def problem(self, message: str, field: str | None = None, obj: str | None = None,
                field_path: tuple[str | int, ...] = (), code: ProblemCode | None = None,
                hint: str | None = None) -> Problem:
        line, column = self.positions(self.file, self.index, self.path + field_path)
        return Problem(message, file=self.file, object=obj, field=field, line=line, column=column,
                       code=code, hint=hint)


_gc_lock = threading.Lock()
_gc_holders = 0  # threads inside gc_paused()
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector while a model is built.

    Loading a 50,000-pod inventory allocates millions of objects that all
    stay alive; each allocation burst triggers collections that traverse
    everything allocated so far, which tripled the time to load one (1.1 s
    of work, 3.2 s with the collector running). What is built here holds no
    reference cycles that must be freed early; anything cyclic left over is
    collected at the next collection once this returns. Re-entrant and
    shared between threads (the agent lists three kinds at once): the
    collector runs again when the last holder leaves, if it ran before the
    first one came."""
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                gc.enable()


def files_under(paths: Iterable[str | Path]) -> list[Path]:
    """Policy files named by the user: files as given, directories recursively.
    Every path that does not exist is reported, at once."""
    found: list[Path] = []
    missing: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            missing.append(Problem("no such file or directory", file=str(path)))
    if missing:
        raise InputError(missing)
    return found


def read_all(paths: Iterable[str | Path], ahead: YamlAhead | None = None) -> tuple[list[Document], list[Problem]]:
    """Every document of every file under ``paths``, and the problems of the files
    that could not be read or parsed: one broken file hides nothing of the others.
    (``ahead``: YAML files already parsed on another core, see :mod:`.ahead`.)"""
    docs: list[Document] = []
    problems: list[Problem] = []
    for path in files_under(paths):
        try:
            docs.extend(read_documents(path, ahead))
        except InputError as err:
            problems.extend(err.problems)
    return docs, problems


def _fast_json(raw: bytes) -> list[Any] | None:
    """The file's one JSON document, decoded by msgspec (in C, ~1.5x faster than
    the standard library on a big inventory); None when msgspec refuses it.

    What msgspec accepts, it decodes as ``json.loads`` does (integers of any size
    stay exact, the last of duplicate keys wins). What it refuses (a syntax
    error, but also NaN, 1e400 or a lone surrogate, which the standard library
    reads) goes to ``json.loads``: the result and every error message stay the
    standard library's."""
    try:
        return [msgspec.json.decode(raw)]
    except (msgspec.DecodeError, RecursionError):
        return None


def read_documents(path: Path, ahead: YamlAhead | None = None) -> Iterator[Document]:
    """Yield every document of a file; ``List`` objects are expanded into items.
    Files beyond the limits of :mod:`callgate.policy.limits` are refused. A YAML
    file ``ahead`` parsed from these very bytes is not parsed again."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError.single(
                f"the file is {size_text(size)}; callgate reads input files of at most {size_text(MAX_FILE_BYTES)} "
                "(split it: every command takes several files and directories)",
                file=name)
        raw = path.read_bytes()
        fast = _fast_json(raw) if path.suffix == ".json" else None
        text = "" if fast is not None else raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError.single(f"cannot read file: {exc}", file=name) from None
    try:
        if fast is not None:
            docs: list[Any] = fast
        elif path.suffix == ".json":
            docs = [json.loads(text)]
        else:
            parsed = ahead.documents(path, raw) if ahead is not None else None
            docs = parsed if parsed is not None else yamlfast.load_all(text)
    except RecursionError:
        raise InputError.single("invalid JSON: nested more deeply than callgate reads (about 1000 levels)",
                                file=name) from None
    except json.JSONDecodeError as exc:
        raise InputError.single(f"invalid JSON: {exc.msg}", file=name, line=exc.lineno,
                                column=exc.colno) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError.single(
            f"invalid YAML: {getattr(exc, 'problem', None) or exc}",
            file=name,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    # Without an anchor there is no alias: the data is no bigger than the text.
    if "&" in text and (why := alias_problem(docs)):
        raise InputError.single(why, file=name)
    positions = Positions()
    for index, data in enumerate(docs):
        if data is None:
            continue  # an empty document, e.g. a trailing '---'
        kind = data.get("kind") if isinstance(data, dict) else None
        items = data.get("items") if isinstance(data, dict) else None
        if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and isinstance(items, list)):
            if items is not None and not isinstance(items, list):
                raise InputError([Document(name, index, data, (), positions).problem(
                    "expected a list of objects", obj="List", field="items", field_path=("items",))])
            for i, item in enumerate(items or []):
                yield Document(name, index, item, ("items", i), positions)
        else:
            yield Document(name, index, data, (), positions)


def shown_kind(api: object, kind: object) -> str:
    """``apiVersion/kind`` of a document as written, for a message (either may be missing or not a string)."""
    return "/".join(str(part) if part is None or (isinstance(part, str) and len(part) <= 80) else shown(part)
                    for part in (api, kind))


def as_mapping(value: Any) -> dict[str, Any]:
    """``value`` if the document has a mapping there, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if the document has a list there, else an empty one."""
    return value if isinstance(value, list) else []


def format_path(path: Iterable[str | int]) -> str:
    """("spec", "ingress", 0, "ports") -> "spec.ingress[0].ports"; an empty key is ``[""]``
    (input may have one, and a field must still be named)."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step == "":
            out += '[""]'
        else:
            out += ("." if out else "") + step
    return out
