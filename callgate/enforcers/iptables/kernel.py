"""The door to iptables/ip6tables/ipset: argv lists only, never a shell.

Every command callgate runs for this backend goes through a :class:`Runner`:
the real one (:class:`SubprocessRunner`) executes the tools, optionally inside
another network namespace (``ip netns exec <name> <tool> ...``, or ``nsenter``
for a namespace file); tests plug in a fake. Input text (restore files) goes to the tool's stdin, never into argv.

Which iptables? ``variant`` (or the environment variable ``CALLGATE_IPTABLES``):

* ``system`` (default): ``iptables-restore`` etc. as the distribution's
  alternatives choose (on Debian 12: iptables-nft);
* ``nft``: ``iptables-nft-restore`` ...: the nf_tables kernel API;
* ``legacy``: ``iptables-legacy-restore`` ...: the old x_tables API.

Use the variant everything else on the host (kube-proxy, docker) uses; rules
of both variants would both be evaluated and be hard to read back together.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from callgate.enforcers.iptables.layout import Version
from callgate.enforcers.netns import exec_argv
from callgate.errors import KernelError

VARIANTS = ("system", "nft", "legacy")
ENV_VARIANT = "CALLGATE_IPTABLES"
TIMEOUT = 120.0


class Runner(Protocol):
    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run ``argv`` (stdin fed from ``stdin``); return stdout, raise KernelError on failure."""


class SubprocessRunner:
    """Runs the real tools, in the current network namespace or in ``netns``
    (a name: ``ip netns exec``; a namespace file: ``nsenter --net``)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        full = exec_argv(self.netns, list(argv))
        try:
            proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except FileNotFoundError as exc:
            raise KernelError(f"{full[0]} is not installed: {exc}") from None
        except subprocess.TimeoutExpired:
            raise KernelError(f"{argv[0]} did not finish within {TIMEOUT:.0f}s") from None
        if proc.returncode != 0:
            raise KernelError(f"{argv[0]} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout


@dataclass(frozen=True)
class Tools:
    """Binary names for one iptables variant."""

    variant: str = "system"

    @classmethod
    def choose(cls, variant: str | None = None) -> Tools:
        chosen = variant or os.environ.get(ENV_VARIANT) or "system"
        if chosen not in VARIANTS:
            raise ValueError(f"iptables variant {chosen!r} (from {'argument' if variant else ENV_VARIANT}) "
                             f"must be one of {', '.join(VARIANTS)}")
        return cls(chosen)

    def _tool(self, version: Version, what: str) -> str:
        base = "iptables" if version == 4 else "ip6tables"
        return f"{base}-{what}" if self.variant == "system" else f"{base}-{self.variant}-{what}"

    def restore(self, version: Version) -> str:
        return self._tool(version, "restore")

    def save(self, version: Version) -> str:
        return self._tool(version, "save")

    def other(self, runner: Runner) -> Tools | None:
        """The variant this one is not (``system`` is resolved by asking
        ``iptables -V``), or None when that cannot be told."""
        variant = self.variant
        if variant == "system":
            try:
                version = runner.run(["iptables", "-V"])
            except KernelError:
                return None
            variant = "nft" if "nf_tables" in version else "legacy" if "legacy" in version else ""
        return {"nft": Tools("legacy"), "legacy": Tools("nft")}.get(variant)
