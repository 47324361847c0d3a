"""Network namespaces as the enforcers reach them: by name or by file.

A namespace is named either as ``ip netns`` names it (``--netns NAME``: the
file ``/run/netns/NAME``) or by the path of its file (an inventory endpoint's
``netns``: ``/run/netns/NAME`` or ``/proc/PID/ns/net``, validated by the
inventory loader). Everything here takes either form and never a shell:
commands are argv lists, and a thread that must work inside a namespace
enters it with ``setns`` (only that thread moves). A socket belongs to the
namespace its creating thread was in for its whole life, so a thread that
entered a namespace can open netlink sockets there (the libnftables context,
the NFLOG socket, conntrack) that any thread may then use.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def netns_file(netns: str) -> str:
    """The namespace's file: a path as given, a name under /run/netns."""
    return netns if netns.startswith("/") else f"{NETNS_DIR}/{netns}"


def exec_argv(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` to run inside ``netns`` (None: here)."""
    if netns is None:
        return list(argv)
    if netns.startswith("/"):
        return ["nsenter", f"--net={netns}", "--", *argv]
    return ["ip", "netns", "exec", netns, *argv]


def ip_argv(netns: str | None, *args: str) -> list[str]:
    """An ``ip`` command inside ``netns``: ``ip -n NAME`` for a name (no extra process)."""
    if netns is None:
        return ["ip", *args]
    if netns.startswith("/"):
        return exec_argv(netns, ["ip", *args])
    return ["ip", "-n", netns, *args]


def enter(netns: str) -> None:
    """Move the calling thread (only) into ``netns``. OSError when it cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_file(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread inside ``netns`` (None: on this thread, here).
    What ``/proc/sys/net`` shows depends on the namespace of the thread that
    opens it, so sysctls of another namespace are read and written this way."""
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            enter(netns)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=work, name="callgate-netns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def same_namespace(a: str | None, b: str | None) -> bool:
    """Whether two namespaces (None: this process's) are the same one."""
    def ident(netns: str | None) -> tuple[int, int]:
        st = os.stat(netns_file(netns) if netns is not None else f"/proc/{os.getpid()}/ns/net")
        return st.st_dev, st.st_ino

    return ident(a) == ident(b)
