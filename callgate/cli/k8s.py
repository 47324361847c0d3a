"""``callgate controller``: cluster-wide policy lint, reported as Kubernetes Events."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from callgate.cli.common import fail, require_paths, usage_error

ServerOpt = Annotated[str | None, typer.Option(
    "--server", help="API server URL, e.g. http://127.0.0.1:8001 behind `kubectl proxy` "
    "(default: the kubeconfig's, or in-cluster).")]
KubeconfigOpt = Annotated[str | None, typer.Option("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, "
                                                   "~/.kube/config, or the pod's service account).")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")]


def controller(
    server: ServerOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    lint_config: Annotated[str | None, typer.Option(
        "--lint-config", help="Lint settings (disable, severity), as in .callgate.yaml or pyproject.toml.")] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="Lint the cluster once, print the findings, post their Events (unless --dry-run), exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print findings; post no Events.")] = False,
    min_severity: Annotated[str, typer.Option(
        "--min-severity", help="Report findings of at least this severity: error, warning or info.")] = "warning",
    timeout: Annotated[float, typer.Option("--timeout", help="--once: seconds to wait for the API.")] = 60.0,
    refresh: Annotated[float, typer.Option(
        "--refresh", help="Seconds after which a finding that persists has its Event refreshed "
        "(Events expire after 1h by default).")] = 1800.0,
    resync: Annotated[float, typer.Option("--resync", help="Seconds between retries of Events that failed to post.")] = 60.0,
    health_address: Annotated[str | None, typer.Option(
        "--health-address", help="HOST:PORT serving /healthz and /readyz (default: none).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Lint every NetworkPolicy in the cluster as it changes; report findings as Events.

    Watches Pods, Namespaces and NetworkPolicies (read-only) and runs the
    `callgate lint` checks with the live pods as inventory. Each finding becomes
    one Event on the policy (or namespace) it is about, so `kubectl describe
    networkpolicy NAME` shows it; a finding is posted once, not on every change.
    Policies the agent would skip as invalid are reported the same way.

    Example: callgate controller --kubeconfig ~/.kube/config --once --dry-run
    """
    from callgate.analysis.lint.config import LintConfig, find_config
    from callgate.analysis.lint.rules import Severity
    from callgate.controller import Controller, HealthServer, Report
    from callgate.watchers.k8s_client import make_api_client

    level = getattr(logging, log_level.upper(), None) if log_level.lower() in (
        "debug", "info", "warning", "error") else None
    if level is None:
        usage_error(f"--log-level {log_level!r}: use debug, info, warning or error")
    for name, value in (("--timeout", timeout), ("--refresh", refresh), ("--resync", resync)):
        if not value > 0:
            usage_error(f"{name} must be a positive number of seconds")
    try:
        threshold = Severity.parse(min_severity)
    except ValueError as exc:
        usage_error(f"--min-severity: {exc}")
    health: tuple[str, int] | None = None
    if health_address is not None:
        host, _, port = health_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            usage_error(f"--health-address {health_address!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
        health = (host.strip("[]"), int(port))
    if server is not None and not server.startswith(("http://", "https://")):
        usage_error(f"--server {server!r} must be an http:// or https:// URL")
    if kubeconfig is not None:
        require_paths("'--kubeconfig'", [kubeconfig])
    if lint_config is not None:
        require_paths("'--lint-config'", [lint_config])
    config = find_config(Path.cwd(), lint_config) if lint_config else LintConfig()
    api_client, origin = make_api_client(server=server, kubeconfig=kubeconfig, context=context)

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # our own messages say what failed

    def show(reports: list[Report]) -> None:
        if not once:
            return
        for r in reports:
            typer.echo(f"{r.target.kind} {r.target.key}: {r.text()}")

    ctl = Controller(api_client, origin, config=config, refresh=refresh, resync=resync, dry_run=dry_run,
                     min_severity=threshold, on_reports=show, **({"coalesce": 0.2} if once else {}))
    http = None
    if health is not None:
        try:
            http = HealthServer(health[0], health[1], ctl)
        except OSError as exc:
            fail(f"cannot listen on {health_address}: {exc}")
        http.start()
    ctl.start()
    try:
        if once:
            _run_once(ctl, timeout, origin)
        else:
            _run_forever(ctl)
    finally:
        ctl.stop()
        if http is not None:
            http.stop()


def _run_once(ctl: Any, timeout: float, origin: str) -> None:
    if not ctl.wait_synced(timeout):
        problem = ctl.problem
        fail(f"no consistent view of the cluster at {origin} within {timeout:g}s"
             + (f": {problem.message}" if problem else ""))
    result = ctl.last_sync
    posted = "" if ctl.dry_run else f"; events: {result.created} created, {result.refreshed} refreshed"
    typer.echo(f"{len(ctl.reports)} finding(s){posted}", err=True)
    if result.failed:
        fail(f"{result.failed} event(s) could not be posted: " + "; ".join(result.errors[:5]))


def _run_forever(ctl: Any) -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        if not ctl.alive:
            fail("the controller loop died; exiting so that the Deployment restarts it")


def register(app: typer.Typer) -> None:
    app.command("controller")(controller)
