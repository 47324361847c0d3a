"""Backends that put a RuleSet into the kernel. Only this package talks to it.

Adding a backend means adding one package that walks the IR and offers an
:class:`~callgate.enforcers.base.Enforcer`, and one entry in :data:`BACKENDS`;
nothing upstream of the IR changes.
"""

from __future__ import annotations

from collections.abc import Callable

from callgate.enforcers.base import Enforcer, FlowLogging


def _nft(netns: str | None, fail_closed_prefix: str | None, flow_logging: FlowLogging | None) -> Enforcer:
    from callgate.enforcers.nft.enforcer import NftablesEnforcer
    from callgate.enforcers.nft.kernel import LibNftables

    return NftablesEnforcer(LibNftables(netns), fail_closed_prefix=fail_closed_prefix, flow_logging=flow_logging)


def _iptables(netns: str | None, fail_closed_prefix: str | None, flow_logging: FlowLogging | None) -> Enforcer:
    from callgate.enforcers.iptables.enforcer import IptablesEnforcer

    # variant: $CALLGATE_IPTABLES (system, nft, legacy)
    return IptablesEnforcer(netns=netns, fail_closed_prefix=fail_closed_prefix, flow_logging=flow_logging)


def _auto(netns: str | None, fail_closed_prefix: str | None, flow_logging: FlowLogging | None) -> Enforcer:
    """nftables when libnftables works here, else iptables."""
    from callgate.enforcers.nft.kernel import nft_available

    return (_nft if nft_available(netns) else _iptables)(netns, fail_closed_prefix, flow_logging)


BACKENDS: dict[str, Callable[[str | None, str | None, FlowLogging | None], Enforcer]] = {
    "nft": _nft, "iptables": _iptables, "auto": _auto}


def get_enforcer(backend: str = "nft", netns: str | None = None, fail_closed_prefix: str | None = None,
                 flow_logging: FlowLogging | None = None) -> Enforcer:
    """The enforcer for ``backend`` in the current (or the named) network
    namespace, with fail-closed mode for interfaces named ``fail_closed_prefix*``
    and new connections logged to NFLOG as ``flow_logging`` says.
    ``auto`` probes the kernel (nft when libnftables works here, else
    iptables); nothing else touches it before the first call. ValueError for
    an unknown backend, iptables variant or prefix."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    return factory(netns, fail_closed_prefix, flow_logging)
