"""``callgate lab``: build the test lab, look at it, probe it, take it down.

The lab (see docs/design.md, "The test lab") turns an inventory into network namespaces:
one per node, one per pod, joined by a fabric bridge, with a small server in
every pod. ``probe`` then sends real packets and compares what got through with
what the reference evaluator says should.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Annotated, cast

import typer
import yaml
from rich import box
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table

from callgate.cli.common import InventoryOpt, PoliciesOpt, fail, load_inputs, usage_error
from callgate.lab.netns import LabError, in_netns, netns_exists
from callgate.lab.probe import MatrixKey, ProbeResult, address_of, probe_details
from callgate.lab.topology import STATE_DIR, TOPOLOGIES, Lab, LabState, in_lab
from callgate.policy import Evaluator, Inventory, load_inventory
from callgate.policy.inventory import inventory_document
from callgate.policy.model import Endpoint, PortProtocol

lab_app = typer.Typer(
    help=(
        "A test lab in network namespaces (needs root): nodes and pods from an inventory, "
        "a server in every pod, and probes that compare real traffic with the policies."
    ),
    no_args_is_help=True,
)

NameOpt = Annotated[str, typer.Option("--name", help="Lab name: the prefix of its namespaces (a-z0-9, 1-12 chars).")]
DEFAULT_NAME = "cg"

out = Console()


@contextlib.contextmanager
def lab_errors(root: bool = True) -> Iterator[None]:
    """Lab failures are user-facing: a message, exit 1, no traceback."""
    if root and os.geteuid() != 0:
        fail("callgate lab needs root (it creates network namespaces and enters them)")
    try:
        yield
    except LabError as exc:
        fail(str(exc))


def _load_inventory(paths: list[str]) -> Inventory:
    if not paths:
        fail("--inventory is required")
    return load_inventory(paths)


@lab_app.command()
def up(inventory: InventoryOpt, name: NameOpt = DEFAULT_NAME,
       topology: Annotated[str, typer.Option(
           "--topology", help="How pods attach: routed (veths the node routes; the default), bridge (veths as "
           "ports of one bridge spanning the nodes) or macvlan (no host-side interface).")] = "routed") -> None:
    """Build the lab for an inventory and start a server in every pod.

    Example: callgate lab up -i examples/standard/inventory.yaml --topology bridge
    """
    if topology not in TOPOLOGIES:
        usage_error(f"--topology {topology!r}: use {', '.join(TOPOLOGIES)}")
    inv = _load_inventory(inventory)
    with lab_errors():
        started = time.monotonic()
        state = Lab(name).up(inv, topology)
        took = time.monotonic() - started
    out.print(f"lab [bold]{name}[/] ({topology}) is up in {took:.1f}s: {len(state.nodes)} nodes, "
              f"{len(state.pods)} pods")
    for line in state.skipped:
        out.print(f"  skipped {line}", markup=False, highlight=False)
    out.print(f"  node namespaces: {', '.join(n.netns for n in state.nodes)}", highlight=False)
    if topology == "macvlan":
        out.print(f"  pods have no host-side interface: apply with the lab's inventory, which names each pod's "
                  f"namespace: callgate lab inventory --name {name} -i ... > lab-inventory.yaml", highlight=False)
    out.print(f"  take it down with: callgate lab down --name {name}", highlight=False)


@lab_app.command("inventory")
def inventory_cmd(inventory: InventoryOpt, name: NameOpt = DEFAULT_NAME) -> None:
    """Print the inventory as the running lab built it (callgate/v1 YAML): each
    pod with its host-side interface, or, in a macvlan lab, its own namespace.

    Example: callgate lab inventory -i examples/standard/inventory.yaml > lab.yaml
    """
    inv = _load_inventory(inventory)
    with lab_errors(root=False):
        state = Lab(name).load_state()
    if state is None:
        fail(f"lab {name!r} is not up")
    typer.echo(yaml.safe_dump(inventory_document(state.inventory(inv)), sort_keys=False), nl=False)


@lab_app.command()
def down(name: NameOpt = DEFAULT_NAME) -> None:
    """Stop the lab's servers and delete its namespaces (safe to repeat)."""
    with lab_errors():
        deleted = Lab(name).down()
    out.print(f"lab [bold]{name}[/]: deleted {len(deleted)} namespaces" if deleted else f"lab [bold]{name}[/] is not up")


def _server_alive(pid: int | None, netns: str) -> bool:
    return pid is not None and in_netns(pid, netns)


def _status_table(state: LabState) -> Table:
    table = Table(title=f"lab {state.prefix} ({state.topology})", box=box.SIMPLE)
    for column in ("pod", "node", "netns", "host veth", "addresses", "ports", "server"):
        table.add_column(column)
    for node in state.nodes:
        up_ = "" if netns_exists(node.netns) else " [red](missing)[/]"
        table.add_row(f"[bold]node {node.name}[/]", "", node.netns + up_, "uplink", f"{node.ipv4} {node.ipv6}", "", "")
        for pod in node.pods:
            ports = " ".join([*(f"{p}/TCP" for p in pod.tcp), *(f"{p}/UDP" for p in pod.udp)])
            alive = _server_alive(pod.pid, pod.netns)
            server = (f"[green]pid {pod.pid}[/]" if alive else "[red]down[/]") if ports else "-"
            table.add_row(pod.key, node.name, pod.netns, pod.interface or "-", " ".join(pod.ips), ports or "-", server)
    return table


@lab_app.command()
def status(name: Annotated[str | None, typer.Option("--name", help="Only this lab (default: every lab).")] = None) -> None:
    """Show the labs on this host: nodes, pods, namespaces and servers."""
    with lab_errors(root=False):
        labs = [Lab(name)] if name else [Lab(p.stem.removeprefix("lab-")) for p in sorted(STATE_DIR.glob("lab-*.json"))]
        shown = 0
        for lab in labs:
            state = lab.load_state()
            if state is None:
                leftovers = lab.existing_netns()
                if leftovers:
                    out.print(f"lab {lab.prefix}: no record, but namespaces remain: {', '.join(leftovers)}")
                continue
            print_wide(_status_table(state))
            shown += 1
    if not shown:
        out.print(f"lab {name} is not up" if name else "no lab is up")


@lab_app.command("netns")
def netns_cmd(
    node: Annotated[str, typer.Argument(help="Node name as in the inventory.")],
    name: NameOpt = DEFAULT_NAME,
) -> None:
    """Print the network namespace of NODE, for: ip netns exec $(callgate lab netns node-1) nft list ruleset"""
    with lab_errors(root=False):
        netns = Lab(name).node_netns(node)
    if not netns_exists(netns):
        fail(f"lab {name!r} has no node {node!r} (no namespace {netns}); is the lab up?")
    typer.echo(netns)


# --------------------------------------------------------------------------- probe


def parse_port(text: str) -> tuple[int, str]:
    """``80``, ``80/TCP`` or ``81/udp`` → (port, protocol); the lab has no SCTP."""
    number, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if proto not in ("TCP", "UDP"):
        usage_error(f"--port {text!r}: the lab probes TCP and UDP only")
    if not number.isdigit() or not 1 <= int(number) <= 65535:
        usage_error(f"--port {text!r}: expected a port from 1 to 65535, as in 80 or 80/UDP")
    return int(number), proto


def _mark(value: bool | None, mismatch: bool) -> str:
    if value is None:
        return "[dim]·[/]"
    text = "✓" if value else "✗"
    if mismatch:
        return f"[bold white on red]!{text}[/]"  # the '!' survives output without colour
    return f"[green]{text}[/]" if value else f"[red]{text}[/]"


def _matrix(title: str, eps: list[Endpoint], values: dict[tuple[str, str], bool],
            wrong: set[tuple[str, str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="! differs from expected" if wrong else None)
    table.add_column("from \\ to")
    for dst in eps:
        table.add_column(dst.key, justify="center")
    for src in eps:
        table.add_row(src.key, *(_mark(values.get((src.key, d.key)), (src.key, d.key) in wrong) for d in eps))
    return table


def print_wide(renderable: RenderableType) -> None:
    """Print without squeezing: piped output defaults to 80 columns, which
    would cut namespace names and matrix headers down to '…'."""
    needed = Measurement.get(out, out.options.update(width=1000), renderable).maximum
    out.width = max(out.width, needed)
    out.print(renderable)


def _print_side_by_side(left: Table, right: Table) -> None:
    grid = Table.grid(padding=(0, 4))
    grid.add_row(left, right)
    print_wide(grid)


def expected_matrix(ev: Evaluator, inventory: Inventory, keys: list[MatrixKey]) -> dict[MatrixKey, bool]:
    """What the reference evaluator says for each probed connection."""
    eps = {ep.key: ep for ep in inventory.endpoints}
    found: dict[MatrixKey, bool] = {}
    for key in keys:
        src, dst, family, port, protocol = key
        src_ip, dst_ip = address_of(eps[src], family), address_of(eps[dst], family)
        assert src_ip is not None and dst_ip is not None  # probes exist only for addresses that do
        found[key] = ev.allowed(src_ip, dst_ip, port, cast(PortProtocol, protocol))
    return found


def report(inventory: Inventory, observed: dict[MatrixKey, ProbeResult], expected: dict[MatrixKey, bool]) -> int:
    """Print observed beside expected, one pair of matrices per family and port; return mismatches."""
    wrong = {k for k, r in observed.items() if r.ok != expected[k]}
    eps = sorted(filter(in_lab, inventory.endpoints), key=lambda e: e.key)
    for family, port, protocol in sorted({(k[2], k[3], k[4]) for k in observed}):
        keys = [k for k in observed if k[2:] == (family, port, protocol)]
        in_family = [e for e in eps if address_of(e, family) is not None]
        seen = {(k[0], k[1]): observed[k].ok for k in keys}
        want = {(k[0], k[1]): expected[k] for k in keys}
        bad = {(k[0], k[1]) for k in keys if k in wrong}
        label = f"{port}/{protocol} IPv{family}"
        _print_side_by_side(_matrix(f"{label} observed", in_family, seen, bad),
                            _matrix(f"{label} expected", in_family, want, bad))
    for key in sorted(wrong):
        src, dst, family, port, protocol = key
        result = observed[key]
        what = "got through" if result.ok else f"was blocked ({result.error})"
        out.print(f"[red]MISMATCH[/] {src} -> {dst} {port}/{protocol} IPv{family}: {what}, "
                  f"expected {'allowed' if expected[key] else 'denied'}", highlight=False)
    if wrong:
        out.print(f"{len(observed)} probes, [red]{len(wrong)} differ from the policies[/]")
    else:
        out.print(f"{len(observed)} probes, [green]all match the policies[/]")
    return len(wrong)


@lab_app.command()
def probe(
    inventory: InventoryOpt,
    policies: PoliciesOpt,
    name: NameOpt = DEFAULT_NAME,
    family: Annotated[int | None, typer.Option("--family", help="4 or 6 (default: both).")] = None,
    port: Annotated[list[str] | None, typer.Option(
        "--port", help="Only this port, e.g. 80/TCP (repeatable). Default: every declared TCP/UDP port.")] = None,
) -> None:
    """Send real traffic between every pair of pods and compare it with the policies.

    Exits 1 when any observed result differs from what the evaluator expects.
    Example: callgate lab probe -i inv.yaml -p policies/ --port 80/TCP
    """
    if family not in (None, 4, 6):
        usage_error("--family must be 4 or 6")
    ports = [parse_port(p) for p in port] if port else None
    inv, pols = load_inputs(inventory, policies)  # every problem of both at once
    with lab_errors():
        observed = probe_details(Lab(name), inv, families=(family,) if family else (4, 6), ports=ports)
    if not observed:
        fail("nothing to probe: no pair of lab pods shares an IP family and a declared TCP/UDP port")
    expected = expected_matrix(Evaluator(pols, inv), inv, sorted(observed))
    if report(inv, observed, expected):
        raise typer.Exit(1)
