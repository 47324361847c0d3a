"""Reach a Docker engine with docker-py (the ``docker`` package): the one place
that decides how.

Why docker-py and not aiodocker: callgate's sources are threads (the
Kubernetes client, watchfiles) that hand snapshots to the reactor thread;
docker-py is synchronous, the engine's own maintained client, speaks to a unix
socket without extra dependencies, and its event stream can be closed from
another thread (which the watcher's heartbeat needs). aiodocker would bring an
asyncio loop and aiohttp for the same few calls.

``--docker-host`` takes ``unix:///path`` or ``tcp://host:port``; without it,
``DOCKER_HOST`` (and the TLS settings of the environment, as the docker CLI
reads them) or ``unix:///var/run/docker.sock``.
"""

from __future__ import annotations

import re
from typing import Any

DEFAULT_HOST = "unix:///var/run/docker.sock"
_HOST = re.compile(r"^(unix://(/[^\x00-\x1f]{1,4000})|tcp://[A-Za-z0-9.\-\[\]:]{1,300})$")


class EngineUnavailable(Exception):
    """The engine cannot be reached (or the docker client is missing)."""


def host_problem(host: str) -> str | None:
    """What is wrong with a ``--docker-host`` value, or None."""
    if not _HOST.match(host):
        return f"--docker-host {host!r}: expected unix:///path/to/docker.sock or tcp://HOST:PORT"
    return None


def make_client(host: str | None = None, timeout: float = 10.0) -> tuple[Any, str]:
    """A connected low-level client (``docker.APIClient``, API version negotiated)
    and where it points. Raises :class:`EngineUnavailable` with the reason."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise EngineUnavailable("the docker extra is not installed: pip install 'callgate[docker]'") from None
    kwargs: dict[str, Any] = docker.utils.kwargs_from_env() if host is None else {"base_url": host}
    where = str(kwargs.get("base_url") or DEFAULT_HOST)
    try:
        client = docker.APIClient(version="auto", timeout=timeout, **kwargs)
    except DockerException as exc:
        raise EngineUnavailable(f"cannot reach the Docker engine at {where}: {_reason(exc)}") from None
    return client, where


_ERRNO = re.compile(r"(?:\[Errno (\d+)\]|Error\((\d+), )")
_ERRNO_TEXT = {2: "no such socket (is dockerd running, and is this its -H?)",
               13: "permission denied (root, or the docker group, may use the socket)",
               111: "connection refused (nothing listens there: is dockerd running?)"}


def _reason(exc: BaseException) -> str:
    """docker-py's nested connection errors as one short line: what the OS said
    when it says something we know, else the message's useful end."""
    text = " ".join(str(exc).split())
    if found := _ERRNO.search(text):
        errno = int(found.group(1) or found.group(2))
        if errno in _ERRNO_TEXT:
            return _ERRNO_TEXT[errno]
    for marker in ("Error while fetching server API version: ", "('Connection aborted.', "):
        text = text.split(marker, 1)[-1]
    return text[:300]


def describe_error(exc: BaseException) -> str:
    """An engine call's failure as one short line (for problems and logs)."""
    return f"{type(exc).__name__}: {_reason(exc)}"
