"""Entering a named network namespace from one thread.

``setns(2)`` with CLONE_NEWNET moves only the calling thread, and a socket
belongs to the namespace its creating thread was in for its whole life: a
thread that entered the namespace can open netlink sockets there (the
libnftables context, the NFLOG socket) that any thread may then use.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run on a short-lived thread inside namespace ``name`` (None:
    here, on this thread); its result or its exception."""
    if name is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(name)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
