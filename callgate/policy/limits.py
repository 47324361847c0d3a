"""What one input file may cost: limits that turn hostile input into a clear refusal.

Input files are read whole and parsed into Python objects, so memory follows
their size (through compile, 24 to 50 bytes of memory per byte of YAML depending
on its shape, many small strings costing most; measured in docs/reliability.md).
Three things could make it follow something else:

* **Size.** A file larger than :data:`MAX_FILE_BYTES` is refused before it is
  read. Real inputs are far below it: 100,000 NetworkPolicies are 43 MB of YAML,
  an inventory of 100,000 pods 30 MB.
* **Aliases.** A YAML alias repeats its anchored node without repeating its text:
  nine nested lists of nine aliases each ("billion laughs") are 9^9 nodes from
  600 bytes, and every walk of the data (validation, hashing) would expand them.
  The rule is go-yaml's, which ``kubectl`` and the API server use: past 1000
  nodes and 100 of them through aliases, aliases may add at most 99% of the
  nodes in a document of 400,000 nodes, shrinking to 10% at 4,000,000 (so a big
  document must be mostly text of its own). An alias inside the node it names
  (a recursive structure) is refused outright.
* **Nesting.** libyaml refuses YAML nested deeper than 1000 levels; JSON nested
  deeper than Python's recursion limit (about 1000) is refused here with the
  same meaning. No Kubernetes object nests deeper than about 15.

All limits are per file; docs/reliability.md lists them with what they cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_FILE_BYTES = 256 * 1024 * 1024

def size_text(size: int) -> str:
    """A byte count as people read it: 1,000 bytes, 300.0 MiB."""
    return f"{size:,} bytes" if size < 2**20 else f"{size / 2**20:,.1f} MiB"


# go-yaml v3 (decode.go, allowedAliasRatio): the same numbers, the same meaning.
_ALIAS_MIN_ALIASED, _ALIAS_MIN_NODES = 100, 1000
_RATIO_RANGE_LOW, _RATIO_RANGE_HIGH = 400_000, 4_000_000


def allowed_alias_ratio(nodes: int) -> float:
    """The share of a document's nodes that may come from alias expansion."""
    if nodes <= _RATIO_RANGE_LOW:
        return 0.99
    if nodes >= _RATIO_RANGE_HIGH:
        return 0.10
    return 0.99 - 0.89 * (nodes - _RATIO_RANGE_LOW) / (_RATIO_RANGE_HIGH - _RATIO_RANGE_LOW)


def alias_problem(documents: Iterable[Any]) -> str | None:
    """Why the loaded ``documents`` expand too far through aliases, or None.

    PyYAML builds an aliased node once and shares it, so the data is small; this
    walks it as every later step would (each shared mapping or list once per
    reference) and stops as soon as the aliases are excessive. That bounds the
    walk, and therefore everything after it, by the document's own size."""
    for document in documents:
        nodes = aliased = 0
        seen: set[int] = set()
        on_path: set[int] = set()
        # (node, under an alias, leaving): a depth-first walk without recursion.
        stack: list[tuple[Any, bool, bool]] = [(document, False, False)]
        while stack:
            node, under_alias, leaving = stack.pop()
            if leaving:
                on_path.discard(id(node))
                continue
            container = isinstance(node, (dict, list))
            if container and id(node) in on_path:
                return "a YAML alias is used inside the node it refers to (a recursive structure)"
            if container and id(node) in seen:
                under_alias = True
            nodes += 1
            aliased += under_alias
            if (aliased > _ALIAS_MIN_ALIASED and nodes > _ALIAS_MIN_NODES
                    and aliased / nodes > allowed_alias_ratio(nodes)):
                return ("YAML aliases expand the document too far (more than "
                        f"{allowed_alias_ratio(nodes):.0%} of {nodes:,} nodes so far are repeated through aliases)")
            if container:
                seen.add(id(node))
                on_path.add(id(node))
                stack.append((node, under_alias, True))
                stack.extend((child, under_alias, False) for child in (node.values() if isinstance(node, dict) else node))
    return None
