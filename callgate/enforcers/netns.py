"""Entering a named network namespace from one thread.

libnftables opens its netlink sockets in the namespace of the thread that
calls it, and a socket belongs to the namespace of the thread that creates it;
so code that must act in another namespace (the nft kernel door, the agent's
lock) runs on a thread that has entered it, and the rest of the process stays
where it is.
"""

from __future__ import annotations

import ctypes
import os

_CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace ``name`` (``/run/netns/<name>``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
