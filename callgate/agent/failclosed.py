"""Fail-closed bookkeeping: which local pods the kernel enforces right now.

The kernel side of fail-closed lives in the backends (for nft the
``known_endpoint`` set and two drop rules, see :mod:`callgate.enforcers.nft.layout`;
:class:`callgate.enforcers.base.FailClosed` is the contract). The agent's side is
knowing, after every successful apply, which local endpoints are programmed
and on which interface — the set it hands the backend as ``known_interfaces``
and the answer it gives the CNI plugin, which holds a pod's start until its
interface is in the rules the kernel holds.
"""

from __future__ import annotations

import threading
import time


class Programmed:
    """Local pods (namespace/name -> host interface) the live rules cover.
    Waiters are woken after every publish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pods: dict[str, str] = {}
        self._pending: dict[str, str] = {}  # local pods whose interface is not known yet

    def publish(self, programmed: dict[str, str], unresolved: dict[str, str]) -> None:
        with self._cond:
            self._pods = dict(programmed)
            self._pending = dict(unresolved)
            self._cond.notify_all()

    def snapshot(self) -> dict[str, str]:
        with self._cond:
            return dict(self._pods)

    def _check(self, pod: str, interface: str | None) -> tuple[bool, str]:
        have = self._pods.get(pod)
        if have is None:
            if pod in self._pending:
                return False, f"{pod} is local but its interface is not known yet: {self._pending[pod]}"
            return False, f"{pod} is not in the agent's inventory for this node yet"
        if interface is not None and interface != have:
            return False, f"{pod} is programmed on {have}, not on {interface}"
        return True, f"{pod} is programmed on {have}"

    def wait(self, pod: str, interface: str | None, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ok, why = self._check(pod, interface)
                left = deadline - time.monotonic()
                if ok or left <= 0:
                    return ok, why
                self._cond.wait(left)
