"""Thin, safe wrappers around ``ip`` and ``ip netns`` for the test lab.

Every command is an argv list handed straight to ``subprocess`` (never a shell,
never a command line pasted together from input), so a hostile name can at worst
make one command fail. Failures raise :class:`LabError` carrying the command and
its stderr, because "RTNETLINK answers: File exists" alone never says which of a
hundred commands went wrong.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")
DEFAULT_TIMEOUT = 30.0


class LabError(RuntimeError):
    """A lab command failed; the message names the command and quotes stderr."""

    def __init__(self, message: str, argv: Sequence[str] = (), stderr: str = "") -> None:
        self.argv = list(argv)
        self.stderr = stderr.strip()
        text = message
        if self.argv:
            text += f"\n  command: {shlex.join(self.argv)}"
        if self.stderr:
            text += f"\n  stderr: {self.stderr}"
        super().__init__(text)


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = DEFAULT_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell), capture text output, raise LabError on failure."""
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed", argv) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout:g}s", argv) from exc
    if check and proc.returncode != 0:
        raise LabError(f"command failed with exit code {proc.returncode}", argv, proc.stderr)
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (inside ``netns`` with ``ip -n``, which needs no extra process) and return stdout."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return run(argv, check=check).stdout


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside ``netns`` (for callers that need Popen)."""
    return ["ip", "netns", "exec", netns, *argv]


def exec_in(netns: str, argv: Sequence[str], *, input: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> str:
    """Run ``argv`` inside network namespace ``netns`` and return its stdout."""
    return run(exec_argv(netns, argv), input=input, timeout=timeout, check=check).stdout


def sysctl(netns: str, settings: dict[str, str | int]) -> None:
    """Set several sysctls inside ``netns`` with one process.

    Keys use ``/`` as separator (``net/ipv4/conf/eth0.5/proxy_arp``) so that an
    interface name containing a dot is not split into two path components.
    """
    if settings:
        exec_in(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create_netns(name: str) -> None:
    """Create network namespace ``name`` and bring its loopback up."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete_netns(name: str) -> bool:
    """Delete ``name`` if it exists (idempotent); True when something was deleted."""
    if not netns_exists(name):
        return False
    proc = run(["ip", "netns", "del", name], check=False)
    if proc.returncode != 0 and netns_exists(name):
        raise LabError(f"could not delete network namespace {name}", ["ip", "netns", "del", name], proc.stderr)
    return True


def list_netns(prefix: str = "") -> list[str]:
    """Names of network namespaces starting with ``prefix``, sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def in_netns(pid: int, name: str) -> bool:
    """Whether process ``pid`` still lives in network namespace ``name``.

    Compares namespace inodes, so a recycled pid in another namespace is never
    mistaken for one of ours.
    """
    try:
        mine = os.stat(NETNS_DIR / name)
        theirs = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def cmdline(pid: int) -> list[str]:
    """The argv of process ``pid``, or [] when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_in_netns(names: set[str] | list[str]) -> dict[int, str]:
    """Every process living in one of the named namespaces, mapped to that namespace.

    One pass over /proc comparing namespace inodes: what ``ip netns pids`` does,
    but once for all namespaces instead of once per namespace.
    """
    inodes: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(NETNS_DIR / name)
        except OSError:
            continue
        inodes[(st.st_dev, st.st_ino)] = name
    found: dict[int, str] = {}
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (owner := inodes.get((st.st_dev, st.st_ino))) is not None:
            found[int(entry)] = owner
    return found
