"""apply, compile, explain, matrix: the engine's everyday commands."""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated

import typer
from rich.console import Console

from callgate.cli.common import InventoryOpt, PoliciesOpt, fail
from callgate.compiler import Compiler, RuleSet
from callgate.enforcers import BACKENDS, get_enforcer
from callgate.policy import Inventory, PolicySet, load_inventory, load_policies
from callgate.policy.model import PROTOCOLS, Endpoint, IPAddress, PortProtocol

NodeOpt = Annotated[str, typer.Option("--node", "-n", help="The node to compile for (its local endpoints get chains).")]
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help=(
    f"Kernel backend: {', '.join(BACKENDS)} (auto: nft where libnftables works, else iptables; "
    "iptables variant from $CALLGATE_IPTABLES=system|nft|legacy)."))]

out = Console()


def load(inventory: list[str], policies: list[str]) -> tuple[Inventory, PolicySet]:
    if not inventory:
        fail("--inventory is required")
    return load_inventory(inventory), load_policies(policies)


def compile_for(inventory: list[str], policies: list[str], node: str) -> RuleSet:
    inv, pols = load(inventory, policies)
    if node not in inv.nodes():
        known = ", ".join(inv.nodes()) or "none"
        fail(f"node {node!r} runs no endpoint in the inventory (nodes: {known})")
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
    ruleset = compile_for(inventory, policies, node)
    try:
        enforcer = get_enforcer(backend, netns)
    except ValueError as exc:  # unknown backend or iptables variant: a usage mistake, not a crash
        fail(str(exc))
    result = enforcer.apply(ruleset, dry_run=dry_run)
    summary = (f"{len(ruleset.endpoints)} endpoints, {len(ruleset.address_sets) + len(ruleset.port_sets)} sets, "
               f"digest {result.digest[:12]}")
    if dry_run:
        out.print(result.transaction.text(), highlight=False, markup=False, end="")
        verdict = "would change the kernel" if result.changed else "already live, nothing to do"
        typer.echo(f"dry run ({enforcer.name}): kernel check passed; {verdict} ({summary})", err=True)
    elif result.changed:
        typer.echo(f"applied ({enforcer.name}) on {node}: {summary}", err=True)
    else:
        typer.echo(f"unchanged ({enforcer.name}) on {node}: {summary}", err=True)


def compile_cmd(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    node: NodeOpt,
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="nft: the table in nft syntax; nft-json: the libnftables transaction; json: the RuleSet IR.")] = "nft",
    backend: BackendOpt = "nft",
) -> None:
    """Print NODE's ruleset without touching any kernel."""
    ruleset = compile_for(inventory, policies, node)
    if fmt == "json":
        typer.echo(json.dumps(ruleset.to_json(), indent=2))
    elif fmt == "nft-json" and backend == "nft":
        from callgate.enforcers.nft import replace_table

        typer.echo(json.dumps(replace_table(ruleset).to_json(), indent=2))
    elif fmt == "nft" or fmt == backend:
        from callgate.enforcers import BACKENDS as _b

        if backend not in _b:
            fail(f"unknown backend {backend!r}")
        typer.echo(_plan_text(ruleset, backend), nl=False)
    else:
        fail(f"unknown format {fmt!r}: use nft, nft-json or json")


def _plan_text(ruleset: RuleSet, backend: str) -> str:
    if backend == "nft":
        from callgate.enforcers.nft import replace_table

        return replace_table(ruleset).text()
    # Other backends plan without a kernel too; the factory is lazy and only
    # opens the kernel when a transaction is run.
    return get_enforcer(backend).plan(ruleset).text()


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
    if proto not in PROTOCOLS:
        fail(f"protocol {proto!r} must be one of {', '.join(PROTOCOLS)}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        fail(f"port {port_text!r} must be a number from 1 to 65535 (as in 80 or 80/UDP)")
    return int(port_text), proto  # type: ignore[return-value]


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
    app.command("compile")(compile_cmd)
