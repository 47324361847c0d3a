"""What a logged packet's prefix says, the same for every backend.

A rule that logs a packet (nft ``log group N prefix "…"``, iptables ``-j NFLOG
--nflog-prefix "…"``) labels it with what was decided, on which side, and by
which rule: ``callgate <verdict> <direction> <rule id>``, or ``default``
instead of the id when no rule matched and the endpoint's isolation decided.
At most 43 bytes, inside iptables' 63 and nft's 127; the rule id is the
compact :attr:`~callgate.compiler.ir.Rule.id`, which the agent maps back to
policies through :meth:`~callgate.compiler.ir.RuleSet.rule_origins`, so a
policy name of any length is never cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

LogVerdict = Literal["deny", "would-deny", "allow"]
LogDirection = Literal["ingress", "egress"]

DEFAULT = "default"  # the rule id of "no rule matched: the isolation's default deny"
NFLOG_PREFIX_MAX = 63  # iptables' --nflog-prefix limit; nft's log prefix holds 127

_PREFIX = re.compile(r"callgate (deny|would-deny|allow) (ingress|egress) ([0-9a-f]{12}|default)")


@dataclass(frozen=True, slots=True)
class LogLabel:
    verdict: LogVerdict
    direction: LogDirection
    rule_id: str  # a compact rule id, or DEFAULT

    def prefix(self) -> str:
        return f"callgate {self.verdict} {self.direction} {self.rule_id}"


def parse_prefix(prefix: str) -> LogLabel | None:
    """The label a callgate rule wrote, or None for anyone else's prefix."""
    match = _PREFIX.fullmatch(prefix)
    if match is None:
        return None
    verdict, direction, rule_id = match.groups()
    return LogLabel(verdict, direction, rule_id)  # type: ignore[arg-type]
