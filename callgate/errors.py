"""User-facing errors.

Every mistake in user input becomes an :class:`InputError` that says which file,
which object and which field is wrong and what was expected. The CLI prints it
without a traceback and exits 1; nothing reaches the kernel.
"""

from __future__ import annotations

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
