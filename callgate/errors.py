"""User-facing errors.

Every mistake in user input becomes an :class:`InputError` that says which file,
which object and which field is wrong and what was expected. The CLI prints it
without a traceback and exits 1; nothing reaches the kernel.

What a problem says comes partly from the input (names, keys, values), and input
is hostile: a 100 MB label value, a name with a newline or a terminal escape. So
a :class:`Problem` keeps each of its texts to one printable line of bounded
length, and messages quote input values through :func:`shown`.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from enum import StrEnum


class ProblemCode(StrEnum):
    """The ``callgate lint`` rule a kind of problem is reported as (``lint --explain ID``).

    Set where the problem is found, which is the only place that knows what kind
    it is; a problem without a code is an invalid object (CG001)."""

    UNKNOWN_KIND = "CG002"
    DUPLICATE_NAME = "CG003"
    ENDPORT_MISUSE = "CG004"
    UNKNOWN_CALLER = "CG005"


# How much of each text a problem keeps (characters): enough for any real name,
# field path or file path (PATH_MAX), little enough that one hostile value cannot
# flood a terminal or a log.
MAX_MESSAGE, MAX_NAME, MAX_PATH = 1000, 300, 4096


def printable(text: str) -> str:
    """``text`` as one printable line: characters that are not printable (newlines,
    NUL, terminal escapes, bidirectional overrides) are written as escapes, as
    ``repr`` would."""
    if text.isprintable():
        return text  # the common case, at no cost
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def clip(text: str, limit: int) -> str:
    """:func:`printable` ``text`` of at most ``limit`` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    text = printable(text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxset = _SHORT_REPR.maxdict = 4
_SHORT_REPR.maxlevel = 3


def shown(value: object, limit: int = 80) -> str:
    """An input value quoted in a message (``repr``), clipped to ``limit`` characters
    with its full length said when it was longer. The cost is bounded too: only the
    start of a long string is looked at, and a mapping or list is shown as its first
    few items (it may hold 100,000 items, or the same one many times over aliases)."""
    if isinstance(value, str):
        text = repr(value[:limit])
        if len(value) <= limit and len(text) <= limit:
            return text
        return text[: limit - 1] + "…" + f" ({len(value)} characters)"
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Problem:
    """One thing wrong with one input object."""

    message: str
    file: str | None = None
    object: str | None = None  # e.g. "NetworkPolicy x/deny-all"
    field: str | None = None  # dotted path, e.g. "spec.ingress[0].ports[1].endPort"
    line: int | None = None  # 1-based, when known
    column: int | None = None  # 1-based, when known
    code: ProblemCode | None = None
    hint: str | None = None  # how to fix it, when the code that found it knows (lint shows it)

    def __post_init__(self) -> None:
        self.message = clip(self.message, MAX_MESSAGE)
        if self.file is not None:
            self.file = clip(self.file, MAX_PATH)
        if self.object is not None:
            self.object = clip(self.object, MAX_NAME)
        if self.field is not None:
            self.field = clip(self.field, MAX_NAME)

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [where]
        if self.object:
            parts.append(self.object)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


@dataclass
class InputError(Exception):
    """One or more problems in user input; raised before anything is applied."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    @classmethod
    def single(cls, message: str, **where: object) -> InputError:
        return cls([Problem(message, **where)])  # type: ignore[arg-type]


class KernelError(Exception):
    """The kernel (or a backend tool) refused a transaction; nothing was committed."""
