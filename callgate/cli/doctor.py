"""``callgate doctor``: how each local endpoint is enforced, and what defeats it."""

from __future__ import annotations

from typing import Annotated

import typer

from callgate.cli.common import check_netns_name, fail, opened_enforcer, require_paths, usage_error
from callgate.cli.engine import BackendOpt, NodeOpt
from callgate.cli.inventory import DockerHostOpt, read_docker
from callgate.compiler import Compiler
from callgate.enforcers import guard, live_in_audit
from callgate.enforcers.nft.enforcer import NftablesEnforcer
from callgate.errors import KernelError
from callgate.policy import Inventory, PolicySet, load_inventory
from callgate.policy.model import ENFORCEMENT_KEY, ENFORCEMENT_MODES


def doctor(
    node: NodeOpt,
    inventory: Annotated[list[str] | None, typer.Option(
        "--inventory", "-i", metavar="PATH", help="Inventory file or directory (callgate/v1 Inventory, or kubectl "
        "Pod/Namespace YAML). Repeatable. Required unless --from says where the endpoints come from.")] = None,
    netns: Annotated[str | None, typer.Option(
        "--netns", help="The node's named network namespace (default: the current one).")] = None,
    backend: BackendOpt = "nft",
    source: Annotated[str | None, typer.Option(
        "--from", metavar="SOURCE", help="Take the node's endpoints from a live source instead of --inventory: "
        "docker (the engine's running containers; those it cannot enforce are listed too).")] = None,
    docker_host: DockerHostOpt = None,
) -> None:
    """Report how each local endpoint of NODE is enforced, and anything that defeats it.

    For every endpoint the inventory places on NODE: a routed veth, a bridge
    port (and whether bridged traffic reaches callgate's rules), in its own
    namespace (macvlan, ipvlan), or not enforceable, and why; which of their
    namespaces are in audit (callgate.io/enforcement: audit); then whether
    callgate's tables are there, and whether they let denials through for
    audit (a namespace's, or the whole node's with `agent --enforcement
    audit`). Changes nothing. Exit code 1 when something defeats enforcement
    (`callgate apply` fixes what it can and refuses the rest); audit does not.

    With --from docker the endpoints are the engine's running containers (as
    `callgate inventory --from docker` prints them), and the containers callgate
    cannot enforce (host network) are listed as such: they, too, make the exit
    code 1.

    Example: callgate doctor --node node-1 -i inventory.yaml
    """
    check_netns_name(netns)
    unenforceable: list[tuple[str, str]] = []  # (workload, why): seen by the source, not enforceable
    if source is not None:
        if source != "docker":
            usage_error(f"--from {source!r}: use docker")
        if inventory:
            usage_error("--inventory and --from docker: give one of them")
        view, _, _ = read_docker(docker_host, node, netns)
        inv = view.inventory
        unenforceable = [(p.object or "?", p.message) for p in view.not_enforceable]
    else:
        if docker_host is not None:
            usage_error("--docker-host belongs to --from docker")
        if not inventory:
            usage_error("--inventory / -i (or --from docker) is required")
        inv = load_inventory(require_paths("'--inventory' / '-i'", inventory))
        if node not in inv.nodes():
            fail(f"node {node!r} runs no endpoint in the inventory (nodes: {', '.join(inv.nodes()) or 'none'})")
    ruleset = Compiler(PolicySet(), inv).compile(node)
    with opened_enforcer(backend, netns) as enforcer:
        try:
            report = guard.check(ruleset, netns, enforcer.name)
            tables = {where: (enforcer.part(where).live_digest(), enforcer.part(where).live_text()) for where in
                      (None, *sorted({le.netns for le in ruleset.local if le.interface is None and le.netns}))}
            node_part = enforcer.part(None)
            source_checks = (node_part.guard if isinstance(node_part, NftablesEnforcer)
                             and any(le.interface for le in ruleset.local) else None)
        except KernelError as exc:
            fail(f"cannot look at the node{f' in network namespace {netns}' if netns else ''}: {exc}")
    typer.echo(f"node {node}{f' (network namespace {netns})' if netns else ''}, backend {enforcer.name}: "
               f"{len(report.placed)} local endpoint(s)")
    problems: dict[str, list[guard.Finding]] = {}
    for f in report.findings:
        problems.setdefault(f.endpoint, []).append(f)
    width = max((len(p.endpoint) for p in report.placed), default=0)
    audited = _audited_namespaces(inv, [p.endpoint for p in report.placed])
    for placed in report.placed:
        found = problems.get(placed.endpoint, [])
        status = "ok" if not found else "DEFEATED"
        if placed.endpoint.split("/", 1)[0] in audited:
            status += ", in audit"
        typer.echo(f"  {placed.endpoint:<{width}}  {placed.kind}: {placed.where}  {status}")
        for f in found:
            remedy = " (apply fixes this: " + f.fix.describe().split(" (")[0] + ")" if f.fix else ""
            typer.echo(f"      {f.problem}{remedy}")
    for unbound, why in ruleset.unbound:
        typer.echo(f"  {unbound}: {why}")
    for workload, why in unenforceable:
        typer.echo(f"  {workload}  not enforceable: {why}")
    for line in _enforcement_notes(inv, [p.endpoint for p in report.placed]):
        typer.echo(line)
    if source_checks == "ingress":
        typer.echo("host-side interfaces' source checks: on each one's own ingress hook (this kernel keeps hooks "
                   "by interface name)")
    elif source_checks == "forward":
        typer.echo("host-side interfaces' source checks: in the forward chain, behind a look-up of the input "
                   "interface (this kernel keeps no hook for an interface that is not there: Linux before 6.16)")
    for where, (digest, text) in tables.items():
        place = f"network namespace {where}" if where else "the node"
        state = f"present (digest {digest[:12]})" if digest else "absent: nothing is enforced there yet"
        if digest and text and live_in_audit(enforcer.name, text):
            state += "; they let denials through for audit (recorded as would-deny)"
            if not audited:
                state += ": no local endpoint's namespace is in audit, so the agent runs with --enforcement audit"
        typer.echo(f"callgate's {enforcer.name} rules in {place}: {state}")
    if report.defeated or unenforceable:
        if report.defeated:
            typer.echo(f"{len({f.endpoint for f in report.findings})} endpoint(s) not enforced as the inventory says")
        if unenforceable:
            typer.echo(f"{len(unenforceable)} workload(s) callgate cannot enforce")
        raise typer.Exit(1)
    typer.echo("every local endpoint is where callgate enforces")


def _audited_namespaces(inv: Inventory, endpoints: list[str]) -> set[str]:
    """The namespaces of these endpoints ("namespace/name") that are in audit."""
    return {ns for ns in {key.split("/", 1)[0] for key in endpoints}
            if (namespace := inv.namespaces.get(ns)) is not None and namespace.audit}


def _enforcement_notes(inv: Inventory, endpoints: list[str]) -> list[str]:
    """A line per namespace of these endpoints in audit, or whose enforcement value means nothing."""
    lines = []
    for ns in sorted({key.split("/", 1)[0] for key in endpoints}):
        namespace = inv.namespaces.get(ns)
        if namespace is None or namespace.enforcement is None:
            continue
        if namespace.audit:
            lines.append(f"namespace {ns} is in audit ({ENFORCEMENT_KEY}): its pods' denials are recorded as "
                         "would-deny and let through")
        elif namespace.enforcement not in ENFORCEMENT_MODES:
            lines.append(f"namespace {ns}: {ENFORCEMENT_KEY} {namespace.enforcement!r} is neither enforce nor audit, "
                         "so it is enforced (lint CG117)")
    return lines


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
