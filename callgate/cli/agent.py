"""``callgate agent``: the per-node daemon (see docs/agent.md)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from callgate.cli.common import check_netns_name, fail, require_paths, usage_error
from callgate.cli.inventory import check_docker_host

if TYPE_CHECKING:
    from callgate.agent.flowlog.service import FlowLogService
    from callgate.agent.metrics import AgentMetrics
    from callgate.enforcers.base import Enforcer, FlowLogging
    from callgate.enforcers.conntrack import ConntrackTable


def agent(
    node: Annotated[str, typer.Option("--node", "-n", help="This node's name: its local endpoints get rules.")],
    source: Annotated[str, typer.Option(
        "--source", help="Where policy comes from: files, kubernetes, or docker (containers from the engine, "
        "policies from --policies).")] = "files",
    inventory: Annotated[list[str] | None, typer.Option(
        "--inventory", "-i", help="files source: inventory file or directory (repeatable).")] = None,
    policies: Annotated[list[str] | None, typer.Option(
        "--policies", "-p", help="files source: policy file or directory (repeatable).")] = None,
    server: Annotated[str | None, typer.Option(
        "--server", help="kubernetes source: API server URL (default: kubeconfig or in-cluster).")] = None,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", help="kubernetes source: kubeconfig file.")] = None,
    docker_host: Annotated[str | None, typer.Option(
        "--docker-host", metavar="URL", help="docker source: the engine, unix:///path/to/docker.sock or "
        "tcp://HOST:PORT (default: $DOCKER_HOST, else unix:///var/run/docker.sock).")] = None,
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
        "--metrics-address", help="HOST:PORT for /metrics, /healthz and /readyz.")] = "127.0.0.1:9464",
    cni_socket: Annotated[str | None, typer.Option(
        "--cni-socket", help="Unix socket for the callgate-cni plugin and /programmed "
                             "(e.g. /run/callgate/agent.sock; created 0600).")] = None,
    cni_conf_dir: Annotated[str | None, typer.Option(
        "--cni-conf-dir", metavar="DIR",
        help="With --cni-socket: keep callgate-cni at the end of the node's network chain in DIR "
             "(e.g. /host/etc/cni/net.d), putting it back when the primary CNI rewrites its configuration.")] = None,
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
    from callgate.agent.lock import AgentLock, LockError
    from callgate.agent.metrics import parse_address
    from callgate.enforcers import BACKENDS
    from callgate.enforcers.base import FlowLogging, check_fail_closed_prefix

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
    check_netns_name(netns)
    if cni_conf_dir is not None and cni_socket is None:
        usage_error("--cni-conf-dir needs --cni-socket: the gate it keeps in the chain asks the agent there")
    if source == "docker" and backend == "iptables":
        usage_error(DOCKER_NEEDS_NFT)
    src = _source(source, inventory or [], policies or [], server, kubeconfig, docker_host, node, netns)

    log = agent_logging.setup(log_level)
    try:  # before the kernel is touched: a second agent must change nothing
        lock = AgentLock.acquire(netns)
    except LockError as exc:
        fail(str(exc))
    try:
        _run(log, node, src, netns, backend, resync, fail_closed_prefix, metrics_address, cni_socket, cni_conf_dir,
             coalesce_ms, needs_nft=source == "docker",
             datapath=Datapath(flow_log, flow_logging, audit=enforcement == "audit", revoke=not keep_established))
    finally:
        lock.release()


@dataclass(frozen=True)
class Datapath:
    """What the agent watches and does on the datapath beyond enforcing: the
    flow log (--flow-log PATH and its settings), audit (--enforcement audit)
    and revocation (not --keep-established)."""

    flow_log: str | None = None
    flow_logging: FlowLogging | None = None
    audit: bool = False
    revoke: bool = True


def _run(log: Any, node: str, src: Any, netns: str | None, backend: str, resync: float,
         fail_closed_prefix: str | None, metrics_address: str, cni_socket: str | None,
         cni_conf_dir: str | None, coalesce_ms: int, needs_nft: bool, datapath: Datapath) -> None:
    """The agent proper, once its options are valid and it holds the lock."""
    from callgate.agent import logging as agent_logging
    from callgate.agent.cni_socket import CniSocket
    from callgate.agent.metrics import AgentMetrics, StatusServer
    from callgate.agent.reactor import Reactor, ReactorConfig
    from callgate.cni.keeper import GateKeeper
    from callgate.enforcers import guard
    from callgate.enforcers.routes import InterfaceResolver

    # The gate's settings as the installer wrote them, before anything slow (see GateKeeper).
    keeper = GateKeeper(Path(cni_conf_dir), fail_closed_prefix) if cni_conf_dir is not None else None
    metrics = AgentMetrics()
    # An unwritable flow-log path (or an NFLOG group taken) fails here, before the kernel is touched.
    flows = _flow_log(datapath.flow_log, datapath.flow_logging, netns, metrics)
    enforcer = _enforcer(backend, netns, fail_closed_prefix, datapath.flow_logging, flows)
    if needs_nft and enforcer.name != "nft":  # --backend auto found no working libnftables
        _close(enforcer, flows)
        fail(DOCKER_NEEDS_NFT)
    metrics.watch_enforcer(enforcer)  # per-policy rule counters (nft; iptables has none)
    conntrack = _conntrack(netns, enforcer, flows) if datapath.revoke else None
    reactor = Reactor(ReactorConfig(node=node, resync=resync, coalesce=coalesce_ms / 1000, audit=datapath.audit,
                                    revoke=datapath.revoke),
                      enforcer, InterfaceResolver(netns, prefix=fail_closed_prefix), metrics,
                      guard=lambda ruleset: guard.check(ruleset, netns, enforcer.name),
                      conntrack=conntrack, flows=flows)
    try:
        http = StatusServer(metrics_address, metrics, reactor)
    except OSError as exc:
        _close(enforcer, flows, conntrack)
        fail(f"cannot listen on {metrics_address}: {exc}")
    gate: CniSocket | None = None
    if cni_socket is not None:
        try:
            gate = CniSocket(cni_socket, reactor)
        except OSError as exc:
            http.stop()
            _close(enforcer, flows, conntrack)
            fail(f"cannot listen on {cni_socket}: {exc}")

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        agent_logging.log(log, 20, "signal received; stopping (rules stay in the kernel)",
                          signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent_logging.log(log, 20, "agent starting", node=node, source=src.origin, netns=netns, backend=enforcer.name,
                      fail_closed_prefix=fail_closed_prefix, http=http.address, cni_socket=cni_socket, resync=resync,
                      enforcement="audit" if datapath.audit else "enforce", flow_log=datapath.flow_log,
                      keep_established=not datapath.revoke)
    http.start()
    if flows is not None:
        flows.start()
    reactor.start()
    src.start(reactor.on_event)
    if gate is not None:
        gate.start()  # after the reactor: an ADD arriving now is served, or waits for the first sync
    if keeper is not None:
        keeper.start()  # after the socket: a gate put back in the chain finds the agent listening
    try:
        while not stop.wait(0.5):
            if not reactor.healthy()[0]:
                agent_logging.log(log, 40, "reactor died; exiting (rules stay in the kernel)")
                raise typer.Exit(1)
    finally:
        if keeper is not None:
            keeper.stop()  # before the socket closes; the gate stays in the chain (uninstall takes it out)
        if gate is not None:
            gate.stop()
        src.stop()
        reactor.stop()
        http.stop()
        _close(enforcer, flows, conntrack)
        agent_logging.log(log, 20, "agent stopped; rules stay in the kernel", node=node)


def _close(enforcer: Enforcer, flows: FlowLogService | None = None, conntrack: ConntrackTable | None = None) -> None:
    """Let go of what the agent opened (on the way out, also when it could not start)."""
    if flows is not None:
        flows.stop()
    if conntrack is not None:
        conntrack.close()
    enforcer.close()


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


def _conntrack(netns: str | None, enforcer: Enforcer, flows: FlowLogService | None) -> ConntrackTable:
    from callgate.enforcers.conntrack import KernelConntrack

    try:
        return KernelConntrack(netns)
    except Exception as exc:  # no pyroute2, no permission, no such netns
        _close(enforcer, flows)
        fail(f"cannot reach connection tracking (needed to cut revoked connections; --keep-established "
             f"does without): {exc}")


def _enforcer(backend: str, netns: str | None, prefix: str | None, flow_logging: FlowLogging | None,
              flows: FlowLogService | None) -> Enforcer:
    """The node's enforcer; exits with a clear message when the backend cannot
    reach the kernel (no such netns, no permission, no tools)."""
    from callgate.enforcers import get_enforcer

    try:
        enforcer = get_enforcer(backend, netns, prefix, flow_logging)
    except ValueError as exc:  # e.g. an iptables variant in $CALLGATE_IPTABLES that does not exist
        if flows is not None:
            flows.stop()
        fail(str(exc))
    try:
        enforcer.live_digest()  # fail now, clearly
    except Exception as exc:  # no such netns, no permission, tools or bindings missing: all say "cannot reach"
        enforcer.close()
        where = f" in netns {netns}" if netns else ""
        fail(f"cannot reach {_KERNEL_PARTS[enforcer.name]}{where}: {exc}")
    # A restart finds its table live: read it while the sources sync, for the
    # first apply's comparison (used only if no ruleset changed meanwhile).
    enforcer.prefetch()
    return enforcer


_KERNEL_PARTS = {"nft": "nftables", "iptables": "iptables/ipset"}

# Why not iptables on a Docker host: callgate's chains would sit in the same FORWARD chain
# as Docker's, where an ACCEPT is final, so traffic callgate allows would skip DOCKER-USER
# and Docker's isolation between networks (measured: a container on docker0 reached one on
# a user-defined bridge). nft tables are separate: a packet must be accepted by both.
DOCKER_NEEDS_NFT = ("--source docker needs the nft backend: with iptables, callgate's ACCEPT would end FORWARD "
                    "before Docker's own rules (DOCKER-USER, its isolation between networks)")


def _source(kind: str, inventory: list[str], policies: list[str], server: str | None,
            kubeconfig: str | None, docker_host: str | None, node: str, netns: str | None) -> Any:
    if docker_host is not None and kind != "docker":
        usage_error("--docker-host belongs to --source docker")
    if kind == "docker":
        return _docker_source(inventory, policies, docker_host, node, netns)
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
    usage_error(f"--source {kind!r}: use files, kubernetes or docker")


def _docker_source(inventory: list[str], policies: list[str], docker_host: str | None, node: str,
                   netns: str | None) -> Any:
    """Containers from the engine, policies from files. An engine that cannot be
    reached at start is an error (exit 1): there is nothing to enforce yet, and
    an agent that starts anyway would look ready with an empty inventory."""
    if inventory:
        usage_error("--inventory belongs to --source files: with --source docker the engine says who runs where")
    if not policies:
        usage_error("--source docker needs --policies")
    require_paths("'--policies' / '-p'", policies)
    check_docker_host(docker_host)
    from callgate.watchers.docker_client import EngineUnavailable, make_client
    from callgate.watchers.docker_links import VethResolver
    from callgate.watchers.docker_source import DockerSource

    try:
        client, where = make_client(docker_host)
    except EngineUnavailable as exc:
        fail(str(exc))
    return DockerSource(client, where, node, VethResolver(netns), policies)


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
