"""The agent's answer to a forwarded CNI request (the start gate).

* **ADD** lays what the runtime knows over the inventory (pod, sandbox, host
  interface, the addresses in ``prevResult``; :mod:`callgate.agent.attachments`),
  syncs at once, and answers once the pod is programmed and the live table is
  confirmed to hold the rules: ``prevResult`` passed on. Not within
  ``timeoutSeconds``: CNI error 11 ("try again later"), so the runtime tears
  the sandbox down and retries instead of starting a pod without policy.
* **DEL** ends the sandbox's attachment (a DEL of an older sandbox of the same
  pod does not touch the newer one's) and always succeeds.
* **CHECK** answers from the live table: the pod must be programmed and the
  table must hold what the agent applied; a deleted or changed table is a
  failure (code 100) and is repaired at once.
* **STATUS** fails with code 50 while the agent is not ready (no rules
  applied yet, the last apply failed, or the source is lost: a new pod's
  labels would not arrive); **GC** succeeds (attachments end with DEL).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from callgate.agent.attachments import Attachment
from callgate.cni.request import NOT_PROGRAMMED, TRY_AGAIN, CniError, CniRequest, parse_request

log = logging.getLogger("callgate.agent.cni")
PLUGIN_NOT_AVAILABLE = 50  # CNI 1.1 STATUS: cannot service ADD requests


class Gate(Protocol):
    """What the CNI handler needs from the reactor."""

    def attach(self, attachment: Attachment) -> None: ...

    def detach(self, pod: str, container_id: str) -> None: ...

    def wait_programmed(self, pod: str, interface: str | None, timeout: float) -> tuple[bool, str]: ...

    def check_programmed(self, pod: str, interface: str | None) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


def handle(gate: Gate, env: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
    """(exit status, stdout) for the plugin to reproduce."""
    version = "1.0.0"
    try:
        request = parse_request(env, body)
        version = request.version
        return 0, _dispatch(gate, request)
    except CniError as err:
        log.warning("CNI request failed", extra={"fields": {"command": env.get("CNI_COMMAND", "")[:20],
                                                            "code": err.code, "msg": err.msg,
                                                            "details": err.details[:300]}})
        return 1, err.result(version)


def _dispatch(gate: Gate, request: CniRequest) -> bytes:
    if request.command == "ADD":
        interface = request.host_interface()
        gate.attach(Attachment(request.pod, request.container_id, interface, request.ips()))
        ok, why = gate.wait_programmed(request.pod, interface, request.timeout)
        if not ok:
            raise CniError(TRY_AGAIN, f"callgate agent did not program {request.pod} within {request.timeout:g}s",
                           why)
        log.info("CNI ADD: pod programmed", extra={"fields": {"pod": request.pod, "interface": interface,
                                                              "container": request.container_id[:64]}})
        return request.result()
    if request.command == "DEL":
        gate.detach(request.pod, request.container_id)
        return b""
    if request.command == "CHECK":
        ok, why = gate.check_programmed(request.pod, request.host_interface())
        if not ok:
            raise CniError(NOT_PROGRAMMED, f"{request.pod} is not enforced by the live rules", why)
        return b""
    if request.command == "STATUS":
        ok, why = gate.ready()
        if not ok:
            raise CniError(PLUGIN_NOT_AVAILABLE, "the callgate agent is not ready", why)
    return b""
