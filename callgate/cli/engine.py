"""apply, compile, explain, matrix: the engine's everyday commands."""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from typing import Annotated

import typer

from callgate.cli.common import InventoryOpt, PoliciesOpt, fail, load_inputs, opened_enforcer
from callgate.compiler import Compiler, RuleSet
from callgate.enforcers import BACKENDS, get_enforcer, guard
from callgate.errors import KernelError
from callgate.policy import Inventory
from callgate.policy.documents import gc_paused
from callgate.policy.model import PROTOCOLS, Endpoint, IPAddress, PortProtocol

NodeOpt = Annotated[str, typer.Option("--node", "-n", help="The node to compile for (its local endpoints get chains).")]


def _known_backend(value: str) -> str:
    if value not in BACKENDS:
        raise typer.BadParameter(f"{value!r} is not a backend; choose {', '.join(BACKENDS)}")
    return value


BackendOpt = Annotated[str, typer.Option("--backend", "-b", callback=_known_backend, help=(
    f"Kernel backend: {', '.join(BACKENDS)} (auto: nft where libnftables works, else iptables; "
    "iptables variant from $CALLGATE_IPTABLES=system|nft|legacy)."))]

def compile_for(inventory: list[str], policies: list[str], node: str) -> RuleSet:
    inv, pols = load_inputs(inventory, policies)
    if node not in inv.nodes():
        known = ", ".join(inv.nodes()) or "none"
        fail(f"node {node!r} runs no endpoint in the inventory (nodes: {known})")
    with gc_paused():  # a one-node compile allocates ~40 MiB of objects that stay alive
        ruleset = Compiler(pols, inv).compile(node)
    for key, why in ruleset.unbound:
        typer.secho(f"warning: {key}: {why}", err=True, fg="yellow")
    return ruleset


def apply(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    node: NodeOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the transaction and have the kernel check it; commit nothing.")] = False,
    backend: BackendOpt = "nft",
    netns: Annotated[str | None, typer.Option(
        "--netns", help="Apply inside this named network namespace (default: the current one).")] = None,
) -> None:
    """Compile for NODE and apply the result as one atomic transaction.

    Run as root on the node (or inside its network namespace, or with --netns).
    Only callgate's own table is replaced; other tables are not touched. Bad
    input is rejected before anything reaches the kernel, and re-applying the
    same input changes nothing.

    Example: callgate apply -i inventory.yaml -p policies/ --node node-1
    """
    with opened_enforcer(backend, netns) as enforcer:
        # The live table is read while the input is loaded and compiled (the
        # enforcer uses that reading only if no ruleset changed since).
        enforcer.prefetch()
        ruleset = compile_for(inventory, policies, node)
        prepare(ruleset, netns, enforcer.name, dry_run)
        with gc_paused():  # the table's objects and its transaction: hundreds of thousands that stay
            result = enforcer.apply(ruleset, dry_run=dry_run)
    summary = (f"{len(ruleset.endpoints)} endpoints, {len(ruleset.address_sets) + len(ruleset.port_sets)} sets, "
               f"digest {result.digest[:12]}")
    if dry_run:
        # Plain text as it is (rich would wrap and expand tabs line by line: 20 s for 65,000 elements).
        typer.echo(result.transaction.text(), nl=False)
        verdict = "would change the kernel" if result.changed else "already live, nothing to do"
        typer.echo(f"dry run ({enforcer.name}): kernel check passed; {verdict} ({summary})", err=True)
    elif result.changed:
        typer.echo(f"applied ({enforcer.name}) on {node}: {summary}", err=True)
    else:
        typer.echo(f"unchanged ({enforcer.name}) on {node}: {summary}", err=True)


def prepare(ruleset: RuleSet, netns: str | None, backend: str, dry_run: bool) -> None:
    """Check that every local endpoint is where callgate will look (see
    callgate/enforcers/guard.py). What defeats enforcement and cannot be fixed:
    an error per endpoint, exit 1, nothing applied. What can be fixed (a
    bridge's netfilter flag) is, and said (with --dry-run: what would be)."""
    try:
        report = guard.check(ruleset, netns, backend)
    except KernelError as exc:
        fail(f"cannot look at the node{f' in network namespace {netns}' if netns else ''}: {exc}")
    refused = report.refused()
    if refused:
        for endpoint, why in refused.items():
            typer.secho(f"error: endpoint {endpoint}: {why}", err=True, fg="red")
        fail(f"nothing applied: {len(refused)} endpoint(s) cannot be enforced where the inventory places them "
             "(`callgate doctor` shows how each endpoint is enforced)")
    for fix in report.fixes:
        if dry_run:
            typer.echo(f"would fix: {fix.describe()}", err=True)
        else:
            fix.apply()
            typer.echo(f"fixed: {fix.describe()}", err=True)


class CompileFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    IR = "ir"


# Backends compile can render for: every one but "auto", which means "probe the kernel".
OFFLINE_BACKENDS = tuple(b for b in BACKENDS if b != "auto")


def _offline_backend(value: str) -> str:
    if value == "auto":
        raise typer.BadParameter(
            "auto chooses by probing this host's kernel, and compile never touches a kernel: "
            f"name the backend to render for ({' or '.join(OFFLINE_BACKENDS)})")
    if value not in OFFLINE_BACKENDS:
        raise typer.BadParameter(f"{value!r} is not a backend; choose {' or '.join(OFFLINE_BACKENDS)}")
    return value


def compile_cmd(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    node: NodeOpt,
    fmt: Annotated[CompileFormat, typer.Option(
        "--format", "-f", help=(
            "text: the backend's own syntax (nft: the table as `nft -f` loads it; iptables: ipset and "
            "iptables-restore input); json: the backend's machine form (nft: the libnftables transaction; "
            "iptables: the ipsets and restore lines as JSON); ir: the backend-independent RuleSet IR as JSON."))
    ] = CompileFormat.TEXT,
    backend: Annotated[str, typer.Option(
        "--backend", "-b", callback=_offline_backend,
        help=f"Backend to render for: {', '.join(OFFLINE_BACKENDS)} (not auto: compile never probes a kernel).")] = "nft",
) -> None:
    """Print NODE's ruleset without touching any kernel.

    Example: callgate compile -i inventory.yaml -p policies/ --node node-1 --backend iptables
    """
    ruleset = compile_for(inventory, policies, node)
    with gc_paused():  # the rendering builds the whole table as objects first
        text = render(ruleset, backend, fmt)
    typer.echo(text, nl=False)


def render(ruleset: RuleSet, backend: str, fmt: CompileFormat) -> str:
    """What ``callgate compile`` prints for ``ruleset`` (the golden tests pin it per backend and format)."""
    if fmt is CompileFormat.IR:
        return json.dumps(ruleset.to_json(), indent=2) + "\n"
    # Planning is pure: the enforcer opens nothing until a transaction runs.
    enforcer = get_enforcer(backend)
    try:
        tx = enforcer.plan(ruleset)
    finally:
        enforcer.close()
    if fmt is CompileFormat.JSON:
        return json.dumps(tx.to_json(), indent=2) + "\n"
    return tx.text()


def parse_target(text: str, inv: Inventory, family: int | None) -> tuple[IPAddress, Endpoint | None]:
    """SRC/DST as namespace/name or an IP address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ep = inv.endpoint(text)
        if ep is None:
            fail(f"{text!r} is neither an IP address nor a namespace/name in the inventory")
        choices = [i for i in ep.ips if family is None or i.version == family]
        if not choices:
            fail(f"{text} has no IPv{family or ''} address in the inventory")
        return sorted(choices, key=lambda i: i.version)[0], ep
    return ip, inv.by_ip().get(ip)


def parse_port(text: str) -> tuple[int, PortProtocol]:
    port_text, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    # A port is written on the command line: a bad one is a usage mistake (exit 2).
    if proto not in PROTOCOLS:
        raise typer.BadParameter(f"{text!r}: protocol {proto!r} must be one of {', '.join(PROTOCOLS)}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise typer.BadParameter(f"{text!r}: the port must be a number from 1 to 65535 (as in 80 or 80/UDP)")
    return int(port_text), proto  # type: ignore[return-value]


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
    app.command("compile")(compile_cmd)
