"""What every backend offers. A backend walks the RuleSet IR and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from callgate.compiler.ir import RuleSet


class Transaction(Protocol):
    @property
    def digest(self) -> str:
        """Digest of the RuleSet this transaction installs."""

    def text(self) -> str:
        """Human-readable form of what the transaction leaves in the kernel."""


class ApplyOutcome(Protocol):
    @property
    def changed(self) -> bool: ...
    @property
    def digest(self) -> str: ...
    @property
    def dry_run(self) -> bool: ...
    @property
    def transaction(self) -> Any: ...


class Enforcer(Protocol):
    name: str

    def plan(self, ruleset: RuleSet) -> Transaction:
        """Build the transaction that makes the kernel hold ``ruleset`` (no kernel writes)."""

    def check(self, tx: Any) -> None:
        """Have the kernel (or tool) validate ``tx`` without committing it."""

    def apply(self, ruleset: RuleSet, dry_run: bool = False) -> ApplyOutcome:
        """Apply atomically; a no-op when the kernel already holds ``ruleset``."""

    def diff(self, ruleset: RuleSet) -> list[str]:
        """Unified diff live → desired; empty when in sync."""

    def live_text(self) -> str | None:
        """What callgate owns in the kernel now, normalised, or None."""

    def desired_text(self, ruleset: RuleSet) -> str:
        """What it would own after applying ``ruleset``, normalised the same way."""

    def remove(self) -> bool:
        """Delete everything callgate owns; True if there was something."""


class AppliedState(Protocol):
    @property
    def digest(self) -> str: ...


class NodeEnforcer(Enforcer, Protocol):
    """What the agent needs beyond :class:`Enforcer` (both nft and iptables offer it):
    apply with the node's programmed interfaces (fail-closed), incrementally when
    the backend can, and a check of the live state against what was applied."""

    @property
    def applied(self) -> AppliedState | None:
        """What this enforcer last put into the kernel (None: nothing yet)."""

    def apply(self, ruleset: RuleSet, dry_run: bool = False, known_interfaces: Sequence[str] = (),
              incremental: bool = True) -> ApplyOutcome: ...

    def in_sync(self, ruleset: RuleSet, known_interfaces: Sequence[str] = ()) -> bool:
        """Whether the live state equals the desired one for ``ruleset`` (drift check)."""

    def live_digest(self) -> str | None:
        """The digest the live state says it holds, or None."""
