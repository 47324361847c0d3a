"""Backends that put a RuleSet into the kernel. Only this package talks to it.

Adding a backend means adding one module with an :class:`~callgate.enforcers.base.Enforcer`
and one entry in :data:`BACKENDS`; nothing upstream of the IR changes.
"""

from __future__ import annotations

from collections.abc import Callable

from callgate.enforcers.base import Enforcer


def _nft(netns: str | None) -> Enforcer:
    from callgate.enforcers.kernel import LibNftables
    from callgate.enforcers.nft import NftablesEnforcer

    return NftablesEnforcer(LibNftables(netns))


def _iptables(netns: str | None) -> Enforcer:
    from callgate.enforcers.iptables import IptablesEnforcer

    return IptablesEnforcer(netns=netns)  # variant: $CALLGATE_IPTABLES (system, nft, legacy)


def _auto(netns: str | None) -> Enforcer:
    """nftables when libnftables works here, else iptables."""
    from callgate.enforcers.iptables import nft_available

    return _nft(netns) if nft_available(netns) else _iptables(netns)


BACKENDS: dict[str, Callable[[str | None], Enforcer]] = {"nft": _nft, "iptables": _iptables, "auto": _auto}


def get_enforcer(backend: str = "nft", netns: str | None = None) -> Enforcer:
    """The enforcer for ``backend`` in the current (or the named) network namespace."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    return factory(netns)
