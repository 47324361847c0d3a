"""One agent per network namespace.

Two agents enforcing one namespace would each replace the other's table on
every resync (each sees the other's transaction as drift). So before it
touches the kernel an agent binds a listening unix socket in the abstract
namespace, ``@callgate-agent``, inside the network namespace it enforces:
abstract socket names belong to a network namespace, and a second bind there
fails. Why a socket and not a lock file:

* it is exactly "this network namespace", however it was reached (``--netns``,
  ``ip netns exec``, the host's own, a hostNetwork pod), whereas a file lock is
  per mount namespace: two containers on one node each have their own /run,
  and the agent's manifest has a read-only root file system anyway;
* the kernel releases it when the process ends, however it ends (SIGKILL
  included), so a restarted agent never finds a stale lock, and it needs no
  disk: a full or read-only state directory cannot stop an agent.

The agent writes no state to disk. (The state directory of callgate, /run/callgate,
holds only the test lab's record of what it built; see callgate/lab.)
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from callgate.enforcers.netns import run_in

NAME = "callgate-agent"


class LockError(Exception):
    """Another agent enforces this network namespace, or the lock could not be taken."""


@dataclass
class AgentLock:
    """Held from :meth:`acquire` until :meth:`release` or the end of the process."""

    sock: socket.socket | None

    @classmethod
    def acquire(cls, netns: str | None) -> AgentLock:
        """Take the lock of ``netns`` (None: this process's network namespace).
        A socket belongs to the namespace of the thread that creates it, so it is
        made on a thread inside ``netns``."""
        try:
            return cls(run_in(netns, _bind))
        except OSError as exc:
            where = f"network namespace {netns}" if netns else "this network namespace"
            raise LockError(f"cannot take the agent lock in {where}: {exc.strerror}") from None

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _bind() -> socket.socket:
    address = "\0" + NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno != 98:  # EADDRINUSE: held by another agent; anything else is reported as it is
            raise
        raise LockError(f"another callgate agent already enforces this network namespace ({_holder(address)}); "
                        f"stop it first (one agent per node)") from None
    sock.listen(1)  # listening, so that the next agent can ask who holds it
    return sock


def _holder(address: str) -> str:
    """The holder's pid, from the kernel (SO_PEERCRED of a connection to its socket)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(1)
        probe.connect(address)
        pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return f"the socket @{NAME} is taken"
    finally:
        probe.close()
    return f"pid {pid}" if pid else "a process of another pid namespace"
