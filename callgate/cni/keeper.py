"""Keep the start gate in the node's network chain while the agent runs.

``callgate cni install`` (the DaemonSet's init container) puts the gate at the
end of the chain once. A primary CNI that rewrites its configuration later —
Cilium does whenever its agent restarts, others on upgrade — takes the gate
out, and from then on pods start without waiting for their rules (fail-closed
still drops their traffic until programmed, so the failure is an outage, not
a hole). The agent therefore looks at the configuration directory every few
seconds and puts the gate back, with the settings it had, as soon as it is
missing or no longer last.

Polling, not inotify: the directory is a hostPath another program owns and
writes by rename; a look every two seconds is one small file read, and it
cannot miss an event or a directory replaced as a whole.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from callgate.cni.install import DEFAULT_TIMEOUT, PLUGIN, Change, current_gate, install_chain
from callgate.errors import InputError

log = logging.getLogger("callgate.cni")


class GateKeeper:
    """Puts ``callgate-cni`` back at the end of the node's chain whenever it goes missing.

    The gate's settings are those of the gate found when the keeper is made
    (what the installer wrote); when there is none, ``timeoutSeconds`` is the
    installer's default and ``interfacePrefix`` the one given here. The agent
    makes its keeper first thing, before the slow part of its start: a primary
    that rewrites the chain meanwhile must not cost the gate its settings.
    """

    def __init__(self, conf_dir: Path, interface_prefix: str | None = None, interval: float = 2.0) -> None:
        self.conf_dir = conf_dir
        self.interval = interval
        self.timeout = DEFAULT_TIMEOUT
        self.interface_prefix = interface_prefix
        self.restored = 0  # times the gate was put back (logged each time; read by tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_problem: str | None = None
        self._learn()

    def _learn(self) -> None:
        try:
            found = current_gate(self.conf_dir)
        except InputError:
            found = None  # reported by the first check
        if found is not None:  # the file is the primary's: only settings of the right type are kept
            timeout, prefix = found.get("timeoutSeconds"), found.get("interfacePrefix")
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 <= timeout <= 300:
                self.timeout = float(timeout)
            self.interface_prefix = prefix if isinstance(prefix, str) and prefix else self.interface_prefix

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._loop, name="callgate-cni-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def check(self) -> Change | None:
        """One look: put the gate back if it is missing; what was written, if anything."""
        try:
            change = install_chain(self.conf_dir, self.timeout, self.interface_prefix)
        except (InputError, OSError) as exc:
            # A configuration being written, or broken, or not there yet: the next
            # look retries. Said once per distinct problem, not every two seconds.
            problem = str(exc)
            if problem != self._last_problem:
                log.warning("cannot keep %s in the node's network chain", PLUGIN,
                            extra={"fields": {"conf_dir": str(self.conf_dir), "error": problem}})
                self._last_problem = problem
            return None
        self._last_problem = None
        if change is not None:
            self.restored += 1
            log.warning("the node's network configuration had lost %s; put it back", PLUGIN,
                        extra={"fields": {"file": str(change.path), "change": change.what}})
        return change

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
