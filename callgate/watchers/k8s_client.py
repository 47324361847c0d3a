"""Configure the official ``kubernetes`` client: kubeconfig, in-cluster, or a URL.

The one place that decides how callgate reaches the API server. Mistakes
(missing kubeconfig, unknown context, a malformed URL) become
:class:`InputError` with a message, never a traceback.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from urllib3.util.retry import Retry

from callgate.errors import InputError


def make_api_client(server: str | None = None, kubeconfig: str | None = None,
                    context: str | None = None) -> tuple[Any, str]:
    """An ``ApiClient`` and a display name of where it points.

    * ``server``: talk to this URL directly (``kubectl proxy``, tests); with
      ``kubeconfig`` as well, the kubeconfig's credentials go to this URL.
    * ``kubeconfig``/``context``: that file (``KUBECONFIG`` and ``~/.kube/config``
      are used when neither is given and we are not inside a pod).
    * neither, inside a pod: the service account (in-cluster config).
    """
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise InputError.single("the kubernetes extra is not installed: pip install 'callgate[kubernetes]'") from None

    cfg = client.Configuration()
    try:
        if kubeconfig or context or (not server and not os.environ.get("KUBERNETES_SERVICE_HOST")):
            if kubeconfig and not os.path.isfile(kubeconfig):
                raise InputError.single("no such kubeconfig file", file=kubeconfig)
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        elif not server:
            config.load_incluster_config(client_configuration=cfg)
    except ConfigException as exc:
        raise InputError.single(f"cannot configure the Kubernetes client: {exc}") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:  # e.g. an unreadable or malformed kubeconfig
        raise InputError.single(f"cannot read kubeconfig: {exc}", file=kubeconfig) from None
    if server:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError.single(f"--server {server!r} must be an http:// or https:// URL")
        cfg.host = server.rstrip("/")
    # Our reflectors retry with backoff and report outages; urllib3's own immediate
    # retries would only delay that. One reconnect covers a stale pooled connection;
    # no read retries, so a POSTed Event is never sent twice.
    cfg.retries = Retry(total=1, connect=1, read=0, redirect=0, status=0)
    return client.ApiClient(cfg), str(cfg.host)
