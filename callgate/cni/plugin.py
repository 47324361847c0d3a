"""The ``callgate-cni`` chained CNI plugin.

Chained after the plugin that creates the pod's interface (bridge, ptp,
calico…), it closes the window between "the pod's network exists" and "the
pod's policy is enforced": ADD asks the node's callgate agent whether the pod
is programmed — ``GET {agentURL}/programmed?pod=NS/NAME&interface=IF&wait=S``,
a long poll — and returns only when it is, printing ``prevResult`` unchanged.
If the agent does not program the pod within ``timeoutSeconds`` the plugin
fails with CNI error 11 ("try again later"), so the runtime tears the sandbox
down and retries instead of starting a pod without policy. (With the agent's
fail-closed mode the pod's traffic is dropped meanwhile anyway; the plugin
makes the wait visible and bounded.)

Network configuration (one entry of a conflist's ``plugins``)::

    {"type": "callgate-cni",
     "agentURL": "http://127.0.0.1:9464",   # default; http only, the agent is local
     "timeoutSeconds": 30,                  # default 30, at most 300
     "interfacePrefix": "cali"}             # optional: which host interface is the pod's

The pod comes from ``CNI_ARGS`` (``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``), the
host-side interface from ``prevResult.interfaces`` (the entry without a
``sandbox``; ``interfacePrefix`` picks one when there are several). DEL does
nothing (the agent drops a pod's rules when it leaves the inventory), CHECK
asks without waiting, VERSION lists the supported versions. Errors are CNI
error objects on stdout with a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
DEFAULT_URL = "http://127.0.0.1:9464"
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0

# CNI spec error codes
INCOMPATIBLE_VERSION, INVALID_ENV, IO_FAILURE, DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN = 1, 4, 5, 6, 7, 11
NOT_PROGRAMMED = 100  # plugin-specific: CHECK found the pod not programmed


# The agent is on this node: never send the question through an HTTP(S)_PROXY
# the runtime's environment may carry.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` as the runtime passes it in CNI_ARGS."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if part:
            key, sep, value = part.partition("=")
            if not sep:
                raise CniError(INVALID_ENV, "CNI_ARGS must be KEY=VALUE pairs separated by ';'", part[:100])
            out[key] = value
    return out


def _config(stdin: TextIO) -> dict[str, Any]:
    try:
        conf = json.load(stdin)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration must be a JSON object")
    version = conf.get("cniVersion", "1.0.0")
    if version not in SUPPORTED:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    return conf


def _agent_url(conf: Mapping[str, Any]) -> str:
    url = conf.get("agentURL", DEFAULT_URL)
    if not isinstance(url, str):
        raise CniError(INVALID_CONFIG, "agentURL must be a string")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise CniError(INVALID_CONFIG, f"agentURL {url!r} must be http://HOST:PORT (the node-local agent)")
    return f"http://{parts.netloc}"


def _timeout(conf: Mapping[str, Any]) -> float:
    value = conf.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMEOUT:
        raise CniError(INVALID_CONFIG, f"timeoutSeconds must be a number from 0 to {MAX_TIMEOUT:g}")
    return float(value)


def _pod(env: Mapping[str, str]) -> str:
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not ns or not name:
        raise CniError(INVALID_ENV, "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME")
    return f"{ns}/{name}"


def host_interface(conf: Mapping[str, Any]) -> str | None:
    """The pod's host-side interface from prevResult, if it can be told apart."""
    prev = conf.get("prevResult")
    ifaces = prev.get("interfaces") if isinstance(prev, dict) else None
    if not isinstance(ifaces, list):
        return None
    host: list[str] = [i["name"] for i in ifaces if isinstance(i, dict) and not i.get("sandbox")
                       and isinstance(i.get("name"), str)]
    prefix = conf.get("interfacePrefix")
    if isinstance(prefix, str) and prefix:
        host = [n for n in host if n.startswith(prefix)]
    return host[0] if len(host) == 1 else None


def ask_agent(base: str, pod: str, interface: str | None, wait: float) -> tuple[bool, str]:
    """One long poll; (programmed, reason). Raises OSError when the agent is unreachable."""
    query = {"pod": pod, "wait": f"{wait:.3f}"}
    if interface:
        query["interface"] = interface
    url = f"{base}/programmed?{urlencode(query)}"
    try:
        with _OPENER.open(url, timeout=wait + 10) as resp:
            body = json.loads(resp.read(65536))
    except urllib.error.HTTPError as exc:
        detail = exc.read(2048).decode(errors="replace")
        raise CniError(INVALID_CONFIG, f"the agent refused the question (HTTP {exc.code})", detail) from None
    except json.JSONDecodeError as exc:
        raise OSError(f"the agent's answer is not JSON: {exc}") from None
    return bool(body.get("programmed")), str(body.get("reason", ""))


def wait_programmed(base: str, pod: str, interface: str | None, timeout: float) -> str:
    """Block until the agent reports ``pod`` programmed; CniError(11) on timeout."""
    deadline = time.monotonic() + timeout
    reason = "no answer from the agent"
    while True:
        left = deadline - time.monotonic()
        try:
            ok, reason = ask_agent(base, pod, interface, max(left, 0.0))
            if ok:
                return reason
        except OSError as exc:  # agent restarting or not up yet: keep trying until the deadline
            reason = f"cannot reach the callgate agent at {base}: {exc}"
            if left > 0:
                time.sleep(min(0.2, left))
        if deadline - time.monotonic() <= 0:
            raise CniError(TRY_AGAIN, f"callgate agent did not program {pod} within {timeout:g}s", reason)


def run(env: Mapping[str, str], stdin: TextIO, stdout: TextIO) -> int:
    command = env.get("CNI_COMMAND", "")
    version = "1.0.0"
    try:
        if command == "VERSION":
            json.dump({"cniVersion": SUPPORTED[-1], "supportedVersions": SUPPORTED}, stdout)
            return 0
        if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
            raise CniError(INVALID_ENV, f"CNI_COMMAND {command[:20]!r} is not ADD, DEL, CHECK or VERSION")
        conf = _config(stdin)
        version = conf.get("cniVersion", version)
        if command in ("DEL", "GC", "STATUS"):
            return 0  # the agent removes a pod's rules when it leaves the inventory
        base, timeout, pod = _agent_url(conf), _timeout(conf), _pod(env)
        if not env.get("CNI_CONTAINERID"):
            raise CniError(INVALID_ENV, "CNI_CONTAINERID is required")
        prev = conf.get("prevResult")
        if not isinstance(prev, dict):
            raise CniError(INVALID_CONFIG, "callgate-cni is a chained plugin: prevResult is required")
        iface = host_interface(conf)
        if command == "CHECK":
            try:
                ok, reason = ask_agent(base, pod, iface, 0.0)
            except OSError as exc:
                raise CniError(IO_FAILURE, f"cannot reach the callgate agent at {base}", str(exc)) from None
            if not ok:
                raise CniError(NOT_PROGRAMMED, f"{pod} is not programmed by the callgate agent", reason)
            return 0
        wait_programmed(base, pod, iface, timeout)
        json.dump({**prev, "cniVersion": version}, stdout)  # ADD: pass the previous result on
        return 0
    except CniError as err:
        json.dump({"cniVersion": version, "code": err.code, "msg": err.msg, "details": err.details}, stdout)
        return 1


def main() -> None:
    sys.exit(run(os.environ, sys.stdin, sys.stdout))


if __name__ == "__main__":
    main()
