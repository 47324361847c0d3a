"""``callgate agent``: the per-node daemon (see docs/agent.md)."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

from callgate.cli.common import fail, require_paths, usage_error

if TYPE_CHECKING:
    from callgate.agent.flowlog.service import FlowLogService
    from callgate.agent.metrics import AgentMetrics
    from callgate.enforcers.base import Enforcer, FlowLogging
    from callgate.enforcers.conntrack import ConntrackTable


def agent(
    node: Annotated[str, typer.Option("--node", "-n", help="This node's name: its local endpoints get rules.")],
    source: Annotated[str, typer.Option("--source", help="Where policy comes from: files or kubernetes.")] = "files",
    inventory: Annotated[list[str] | None, typer.Option(
        "--inventory", "-i", help="files source: inventory file or directory (repeatable).")] = None,
    policies: Annotated[list[str] | None, typer.Option(
        "--policies", "-p", help="files source: policy file or directory (repeatable).")] = None,
    server: Annotated[str | None, typer.Option(
        "--server", help="kubernetes source: API server URL (default: kubeconfig or in-cluster).")] = None,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", help="kubernetes source: kubeconfig file.")] = None,
    netns: Annotated[str | None, typer.Option(
        "--netns", help="Enforce in this named network namespace (default: the current one).")] = None,
    backend: Annotated[str, typer.Option(
        "--backend", "-b", help="Kernel backend: nft, iptables, or auto (nft when libnftables works here).")] = "nft",
    resync: Annotated[float, typer.Option(
        "--resync", help="Seconds between drift checks (live table vs applied; repaired when different).")] = 30.0,
    fail_closed_prefix: Annotated[str | None, typer.Option(
        "--fail-closed-prefix",
        help="Drop forwarded traffic on interfaces named PREFIX* that the agent has not programmed yet.")] = None,
    metrics_address: Annotated[str, typer.Option(
        "--metrics-address", help="HOST:PORT for /metrics, /healthz, /readyz and /programmed.")] = "127.0.0.1:9464",
    coalesce_ms: Annotated[int, typer.Option(
        "--coalesce-ms", help=(
            "Coalescing of bursts: a change after a quiet spell is applied at once; inside a burst the next "
            "apply waits this long (ms) after the last one, four times longer each time, up to 2 s."))] = 20,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    flow_log: Annotated[str | None, typer.Option(
        "--flow-log", metavar="PATH",
        help="Write a JSON Lines flow record for every denied new connection to PATH ('-': stdout).")] = None,
    flow_log_allowed: Annotated[bool, typer.Option(
        "--flow-log-allowed", help="With --flow-log: record allowed new connections too.")] = False,
    flow_log_group: Annotated[int, typer.Option(
        "--flow-log-group", help="With --flow-log: the NFLOG group the kernel logs to.")] = 100,
    flow_log_rate: Annotated[int, typer.Option(
        "--flow-log-rate",
        help="With --flow-log: records per second per endpoint address and direction (bursts of twice that); "
             "the rest is counted, not logged.")] = 10,
    enforcement: Annotated[str, typer.Option(
        "--enforcement",
        help="enforce, or audit: every endpoint's denials are recorded as would-deny and let through.")] = "enforce",
    keep_established: Annotated[bool, typer.Option(
        "--keep-established",
        help="Leave tracked connections alone when an update revokes them (default: cut them).")] = False,
) -> None:
    """Keep NODE's kernel rules equal to the policy source, until SIGTERM.

    Follows the source (files: inotify on the inventory and policy paths;
    kubernetes: list+watch of Pods, Namespaces, NetworkPolicies), coalesces
    bursts, recompiles for NODE and applies only what changed, in one
    transaction. Every --resync seconds it checks the live table and repairs
    drift. Bad input or a lost source keeps the last applied rules; SIGTERM
    stops the agent and leaves the rules in place.

    With --flow-log, every denied new connection becomes a JSON Lines record
    naming the policy that decided (read them with `callgate flows`). After
    an update, tracked connections the new rules no longer allow are cut
    unless --keep-established.

    Example: callgate agent --node node-1 -i inventory.yaml -p policies/ --fail-closed-prefix cg
    """
    from callgate.agent import logging as agent_logging
    from callgate.agent.metrics import AgentMetrics, StatusServer, parse_address
    from callgate.agent.reactor import Reactor, ReactorConfig
    from callgate.enforcers import BACKENDS, guard
    from callgate.enforcers.base import FlowLogging, check_fail_closed_prefix
    from callgate.enforcers.routes import InterfaceResolver

    # Validate everything before touching the kernel or opening a port.
    if backend not in BACKENDS:
        *most, last = BACKENDS
        usage_error(f"--backend {backend!r}: use {', '.join(most)} or {last}")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        usage_error(f"--log-level {log_level!r}: use debug, info, warning or error")
    if not resync > 0:
        usage_error("--resync must be a positive number of seconds")
    if not 0 <= coalesce_ms <= 60_000:
        usage_error("--coalesce-ms must be between 0 and 60000")
    if enforcement not in ("enforce", "audit"):
        usage_error(f"--enforcement {enforcement!r}: use enforce or audit")
    if flow_log is None and (flow_log_allowed or flow_log_group != 100 or flow_log_rate != 10):
        usage_error("--flow-log-allowed, --flow-log-group and --flow-log-rate need --flow-log")
    flow_logging: FlowLogging | None = None
    try:
        parse_address(metrics_address)
        if fail_closed_prefix is not None:
            check_fail_closed_prefix(fail_closed_prefix)
        if flow_log is not None:
            flow_logging = FlowLogging(flow_log_group, flow_log_allowed, flow_log_rate)
    except ValueError as exc:
        fail(str(exc))
    if netns is not None and not _netns_ok(netns):
        usage_error(f"--netns {netns!r} is not a valid network namespace name")
    src = _source(source, inventory or [], policies or [], server, kubeconfig)

    log = agent_logging.setup(log_level)
    metrics = AgentMetrics()
    flows = _flow_log(flow_log, flow_logging, netns, metrics)  # an unwritable path fails here, before the kernel
    enforcer = _enforcer(backend, netns, fail_closed_prefix, flow_logging)
    metrics.watch_enforcer(enforcer)  # per-policy rule counters (nft; iptables has none)
    conntrack = None if keep_established else _conntrack(netns, enforcer)
    reactor = Reactor(ReactorConfig(node=node, resync=resync, coalesce=coalesce_ms / 1000,
                                    audit=enforcement == "audit", revoke=not keep_established),
                      enforcer, InterfaceResolver(netns, prefix=fail_closed_prefix), metrics,
                      guard=lambda ruleset: guard.check(ruleset, netns, enforcer.name),
                      conntrack=conntrack, flows=flows)
    try:
        http = StatusServer(metrics_address, metrics, reactor)
    except OSError as exc:
        enforcer.close()
        fail(f"cannot listen on {metrics_address}: {exc}")

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        agent_logging.log(log, 20, "signal received; stopping (rules stay in the kernel)",
                          signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent_logging.log(log, 20, "agent starting", node=node, source=src.origin, netns=netns, backend=enforcer.name,
                      fail_closed_prefix=fail_closed_prefix, http=http.address, resync=resync,
                      enforcement=enforcement, flow_log=flow_log, keep_established=keep_established)
    http.start()
    if flows is not None:
        flows.start()
    reactor.start()
    src.start(reactor.on_event)
    try:
        while not stop.wait(0.5):
            if not reactor.healthy()[0]:
                agent_logging.log(log, 40, "reactor died; exiting (rules stay in the kernel)")
                raise typer.Exit(1)
    finally:
        src.stop()
        reactor.stop()
        http.stop()
        if flows is not None:
            flows.stop()
        if conntrack is not None:
            conntrack.close()
        enforcer.close()
        agent_logging.log(log, 20, "agent stopped; rules stay in the kernel", node=node)


def _flow_log(path: str | None, logging: FlowLogging | None, netns: str | None,
              metrics: AgentMetrics) -> FlowLogService | None:
    """The flow log's writer and NFLOG reader, or None without --flow-log; exit 1
    with a clear message when the path cannot be written or the group not read."""
    if path is None or logging is None:
        return None
    from callgate.agent.flowlog.service import FlowLogService
    from callgate.agent.flowlog.writer import FlowLogError, FlowLogWriter
    from callgate.enforcers.nflog import NflogSocket

    try:
        writer = FlowLogWriter(path)
    except FlowLogError as exc:
        fail(str(exc))
    try:
        reader = NflogSocket(logging.group, netns)
    except OSError as exc:
        writer.close()
        where = f" in netns {netns}" if netns else ""
        fail(f"--flow-log-group {logging.group}: cannot read NFLOG{where}: {exc.strerror or exc} "
             "(is another program bound to this group?)")
    return FlowLogService(reader, writer, metrics)


def _conntrack(netns: str | None, enforcer: Enforcer) -> ConntrackTable:
    from callgate.enforcers.conntrack import KernelConntrack

    try:
        return KernelConntrack(netns)
    except Exception as exc:  # no pyroute2, no permission, no such netns
        enforcer.close()
        fail(f"cannot reach connection tracking (needed to cut revoked connections; --keep-established "
             f"does without): {exc}")


def _enforcer(backend: str, netns: str | None, prefix: str | None, flow_logging: FlowLogging | None) -> Enforcer:
    """The node's enforcer; exits with a clear message when the backend cannot
    reach the kernel (no such netns, no permission, no tools)."""
    from callgate.enforcers import get_enforcer

    try:
        enforcer = get_enforcer(backend, netns, prefix, flow_logging)
    except ValueError as exc:  # e.g. an iptables variant in $CALLGATE_IPTABLES that does not exist
        fail(str(exc))
    try:
        enforcer.live_digest()  # fail now, clearly
    except Exception as exc:  # no such netns, no permission, tools or bindings missing: all say "cannot reach"
        enforcer.close()
        where = f" in netns {netns}" if netns else ""
        fail(f"cannot reach {_KERNEL_PARTS[enforcer.name]}{where}: {exc}")
    return enforcer


_KERNEL_PARTS = {"nft": "nftables", "iptables": "iptables/ipset"}


def _netns_ok(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name)) and name not in (".", "..")


def _source(kind: str, inventory: list[str], policies: list[str], server: str | None,
            kubeconfig: str | None) -> Any:
    if kind == "files":
        if not inventory:
            usage_error("--source files needs --inventory (and usually --policies)")
        from callgate.watchers.files import FilesSource

        # At start a missing path is a typo on the command line (exit 2), not an outage.
        require_paths("'--inventory' / '-i'", inventory)
        require_paths("'--policies' / '-p'", policies)
        return FilesSource(inventory, policies)
    if kind == "kubernetes":
        if inventory or policies:
            usage_error("--inventory/--policies belong to --source files")
        try:
            from callgate.watchers.kubernetes import KubernetesSource
        except ImportError as exc:
            fail(f"the kubernetes source is not available: {exc}")
        return KubernetesSource.connect(server=server, kubeconfig=kubeconfig)
    usage_error(f"--source {kind!r}: use files or kubernetes")


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
