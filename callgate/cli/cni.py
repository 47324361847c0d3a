"""``callgate cni install|uninstall``: the start gate on a node (see callgate/cni/install.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from callgate.cli.common import fail, report_input_error, usage_error

cni_app = typer.Typer(help="Put the callgate-cni start gate into the node's CNI chain, or take it out.",
                      no_args_is_help=True)

ConfDir = Annotated[Path, typer.Option("--conf-dir", help="The runtime's CNI configuration directory.")]
BinDir = Annotated[Path, typer.Option("--bin-dir", help="The runtime's CNI plugin directory.")]


@cni_app.command("install")
def install(
    plugin: Annotated[Path, typer.Option("--plugin", help="The built callgate-cni binary to copy.")],
    conf_dir: ConfDir = Path("/etc/cni/net.d"),
    bin_dir: BinDir = Path("/opt/cni/bin"),
    timeout: Annotated[float, typer.Option(
        "--timeout", help="timeoutSeconds of the gate: how long ADD waits for the agent (0-300).")] = 30.0,
    interface_prefix: Annotated[str | None, typer.Option(
        "--interface-prefix", help="interfacePrefix of the gate: the pod's host veth when the chain's result lists "
        "several host interfaces (bridge: veth).")] = None,
    wait: Annotated[float, typer.Option(
        "--wait", help="Seconds to wait for the primary CNI to write its configuration.")] = 0.0,
) -> None:
    """Copy callgate-cni to --bin-dir and append it to the node's network chain.

    The node's network is the first configuration in --conf-dir in the order the
    runtime reads them. Running it again changes nothing; a gate already in the
    chain is updated and moved to the end.

    Example: callgate cni install --plugin /opt/callgate/cni/callgate-cni --conf-dir /host/etc/cni/net.d
    --bin-dir /host/opt/cni/bin --interface-prefix veth
    """
    from callgate.cni.install import config_files, install_chain, install_plugin
    from callgate.enforcers.base import check_fail_closed_prefix
    from callgate.errors import InputError

    if not 0 <= timeout <= 300:
        usage_error("--timeout must be from 0 to 300 seconds")
    if wait < 0:
        usage_error("--wait must not be negative")
    try:
        if interface_prefix is not None:
            check_fail_closed_prefix(interface_prefix)
    except ValueError as exc:
        usage_error(f"--interface-prefix: {exc}")
    if not plugin.is_file():
        fail(f"{plugin}: the plugin binary does not exist")
    try:
        if (change := install_plugin(plugin, bin_dir)) is not None:
            typer.echo(f"{change.path}: {change.what}")
        deadline = time.monotonic() + wait
        while True:
            try:
                if (change := install_chain(conf_dir, timeout, interface_prefix)) is not None:
                    typer.echo(f"{change.path}: {change.what}")
                else:
                    typer.echo(f"{conf_dir}: callgate-cni already at the end of the chain")
                break
            except InputError:
                if time.monotonic() >= deadline or config_files(conf_dir):
                    raise  # waiting helps only while there is no configuration at all
                time.sleep(1)
    except InputError as err:
        report_input_error(err)
        raise typer.Exit(1) from None
    except OSError as exc:
        fail(f"cannot install: {exc}")


@cni_app.command("uninstall")
def uninstall(conf_dir: ConfDir = Path("/etc/cni/net.d"), bin_dir: BinDir = Path("/opt/cni/bin")) -> None:
    """Take callgate-cni out of every configuration in --conf-dir and remove the binary.

    Run it before the agents go away: without an agent the gate fails every ADD
    (pods would not start), which is the point of a gate.
    """
    from callgate.cni.install import uninstall as remove
    from callgate.errors import InputError

    try:
        changes = remove(conf_dir, bin_dir)
    except InputError as err:
        report_input_error(err)
        raise typer.Exit(1) from None
    except OSError as exc:
        fail(f"cannot uninstall: {exc}")
    for change in changes:
        typer.echo(f"{change.path}: {change.what}")
    if not changes:
        typer.echo(f"{conf_dir}: callgate-cni was not installed")


def register(app: typer.Typer) -> None:
    app.add_typer(cni_app, name="cni")
