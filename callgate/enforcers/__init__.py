"""Backends that put a RuleSet into the kernel. Only this package talks to it.

Adding a backend means adding one package that walks the IR and offers an
:class:`~callgate.enforcers.base.Enforcer`, and one entry in :data:`BACKENDS`;
nothing upstream of the IR changes.
"""

from __future__ import annotations

from collections.abc import Callable

from callgate.enforcers.base import Enforcer, FlowLogging, Placement, check_fail_closed_prefix
from callgate.enforcers.placement import NodeEnforcer

# (namespace, fail-closed prefix, placement, flow logging) -> one backend enforcer
Maker = Callable[[str | None, str | None, Placement, FlowLogging | None], Enforcer]


def _nft(netns: str | None, fail_closed_prefix: str | None, placement: Placement,
         flow_logging: FlowLogging | None) -> Enforcer:
    from callgate.enforcers.nft.enforcer import NftablesEnforcer
    from callgate.enforcers.nft.kernel import LibNftables

    return NftablesEnforcer(LibNftables(netns), fail_closed_prefix=fail_closed_prefix, placement=placement,
                            flow_logging=flow_logging)


def _iptables(netns: str | None, fail_closed_prefix: str | None, placement: Placement,
              flow_logging: FlowLogging | None) -> Enforcer:
    from callgate.enforcers.iptables.enforcer import IptablesEnforcer

    # variant: $CALLGATE_IPTABLES (system, nft, legacy)
    return IptablesEnforcer(netns=netns, fail_closed_prefix=fail_closed_prefix, placement=placement,
                            flow_logging=flow_logging)


BACKENDS: dict[str, Maker | None] = {"nft": _nft, "iptables": _iptables, "auto": None}


def resolve_backend(backend: str, netns: str | None = None) -> str:
    """``backend`` itself, or for ``auto`` nft when libnftables works in
    ``netns`` and iptables otherwise (this probes the kernel). ValueError for
    an unknown backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}")
    if backend != "auto":
        return backend
    from callgate.enforcers.nft.kernel import nft_available

    return "nft" if nft_available(netns) else "iptables"


def get_enforcer(backend: str = "nft", netns: str | None = None, fail_closed_prefix: str | None = None,
                 flow_logging: FlowLogging | None = None) -> NodeEnforcer:
    """The enforcer of a node for ``backend`` in the current (or the named)
    network namespace, with fail-closed mode for interfaces named
    ``fail_closed_prefix*`` and new connections logged to NFLOG as
    ``flow_logging`` says; endpoints with only a namespace of their own are
    enforced inside it with the same backend (see :mod:`.placement`), without
    flow logging (the agent reads NFLOG in the node's namespace only).
    ``auto`` probes the kernel (nft when libnftables works here, else
    iptables); nothing else touches it before the first call. ValueError for
    an unknown backend, iptables variant or prefix."""
    chosen = resolve_backend(backend, netns)
    maker = BACKENDS[chosen]
    assert maker is not None
    if fail_closed_prefix is not None:
        check_fail_closed_prefix(fail_closed_prefix)

    def factory(part: str | None, placement: Placement) -> Enforcer:
        if part is None:
            return maker(netns, fail_closed_prefix, placement, flow_logging)
        return maker(part, None, placement, None)

    return NodeEnforcer(factory, chosen)


def live_in_audit(backend: str, live_text: str) -> bool:
    """Whether callgate's live rules (as ``backend``'s enforcer lists them)
    let some denials through for audit instead of dropping them."""
    if backend == "iptables":
        from callgate.enforcers.iptables.rules import holds_audit
    else:
        from callgate.enforcers.nft.actions import holds_audit
    return holds_audit(live_text)
