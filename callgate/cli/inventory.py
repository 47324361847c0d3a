"""``callgate inventory``: print the inventory callgate sees on a live source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callgate.cli.common import check_netns_name, fail, usage_error

if TYPE_CHECKING:
    from callgate.watchers.docker_engine import EngineView

DockerHostOpt = Annotated[str | None, typer.Option(
    "--docker-host", metavar="URL",
    help="Docker engine: unix:///path/to/docker.sock or tcp://HOST:PORT (default: $DOCKER_HOST, "
         "else unix:///var/run/docker.sock).")]


def check_docker_host(docker_host: str | None) -> None:
    from callgate.watchers.docker_client import host_problem

    if docker_host is not None and (problem := host_problem(docker_host)):
        usage_error(problem)


def inventory(
    source: Annotated[str, typer.Option("--from", metavar="SOURCE", help="Where to read it: docker.")],
    docker_host: DockerHostOpt = None,
    node: Annotated[str | None, typer.Option(
        "--node", "-n", help="The node the containers run on (default: the engine's name, as `docker info` says).")] = None,
    netns: Annotated[str | None, typer.Option(
        "--netns", help="The named network namespace the engine's host-side interfaces are in (default: the current one).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the inventory here instead of stdout.")] = None,
) -> None:
    """Print the inventory callgate sees on a live source, as a callgate/v1 Inventory.

    With --from docker: every running container on a bridge network is an
    endpoint (name, namespace from the label callgate.io/namespace or the
    Compose project, labels, IPv4 and IPv6 addresses, its host-side veth,
    exposed ports named by the label callgate.io/ports). Containers callgate
    cannot enforce (host network) are named on stderr and in a comment, and
    left out. The output is what apply, lint, explain, matrix and diff read.

    Example: callgate inventory --from docker > inventory.yaml
    """
    import yaml

    from callgate.policy.inventory import inventory_document

    if source != "docker":
        usage_error(f"--from {source!r}: use docker")
    check_netns_name(netns)
    view, where, node = read_docker(docker_host, node, netns)
    header = [f"# callgate inventory --from docker: engine {where}, node {node}, "
              f"{len(view.inventory.endpoints)} endpoint(s)"]
    for problem in view.not_enforceable:
        typer.secho(f"warning: not enforceable: {problem}", err=True, fg="yellow")
        header.append(f"# not enforceable (left out): {problem.object}: {problem.message}")
    text = "\n".join(header) + "\n" + yaml.safe_dump(inventory_document(view.inventory), sort_keys=False)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


def read_docker(docker_host: str | None, node: str | None, netns: str | None) -> tuple[EngineView, str, str]:
    """The engine's containers as callgate sees them (its warnings printed on
    stderr), where the engine is, and the node they run on (``node``, else the
    engine's name). An engine that cannot be reached is exit 1."""
    from callgate.watchers.docker_client import EngineUnavailable, describe_error, make_client
    from callgate.watchers.docker_engine import read_engine
    from callgate.watchers.docker_links import VethResolver

    check_docker_host(docker_host)
    try:
        client, where = make_client(docker_host)
    except EngineUnavailable as exc:
        fail(str(exc))
    try:
        node = node or engine_name(client)
        view = read_engine(client, node, VethResolver(netns))
    except Exception as exc:  # the engine went away between connecting and reading
        fail(f"cannot read containers from the Docker engine at {where}: {describe_error(exc)}")
    finally:
        client.close()
    for problem in view.warnings:
        typer.secho(f"warning: {problem}", err=True, fg="yellow")
    return view, where, node


def engine_name(client: object) -> str:
    """The engine's host name (``docker info``'s Name): the node its containers run on."""
    name = client.info().get("Name")  # type: ignore[attr-defined]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}", name):
        fail(f"the engine's name {str(name)[:80]!r} is no node name; give one with --node")
    return name


def register(app: typer.Typer) -> None:
    app.command("inventory")(inventory)
