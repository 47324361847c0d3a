"""The one small door to the kernel's nftables.

Everything callgate sends to nftables goes through :class:`NftKernel.run`: a
list of libnftables JSON commands executed as ONE transaction (the kernel
commits all of them or none). ``check=True`` asks the kernel to validate the
transaction without committing it (``nft --check``).

:class:`LibNftables` is the real thing; it can work inside another network
namespace (the test lab) by running on a thread that has entered it.
:class:`~callgate.enforcers.nft.fake.FakeNftKernel` keeps tables in memory for
fast unit tests.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from callgate.enforcers import nfnetlink
from callgate.enforcers.netns import enter
from callgate.errors import KernelError

log = logging.getLogger(__name__)

Command = dict[str, Any]


class NftKernel(Protocol):
    def run(self, commands: list[Command], check: bool = False) -> None:
        """Execute ``commands`` as one transaction; raise KernelError if refused."""

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The table's objects as libnftables JSON, or None if it does not exist."""

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        """One set (with its elements) as libnftables JSON, or None if it does not exist."""

    def list_tables(self) -> list[tuple[str, str]]:
        """(family, name) of every table in this network namespace."""

    def generation(self) -> int | None:
        """The ruleset generation: it moves with every committed transaction in
        this network namespace, by anyone, and with nothing else. None when it
        cannot be read (then nothing may rely on it)."""

    def close(self) -> None:
        """Release threads and handles (a closed door is not used again)."""


CAP_NET_ADMIN = 12
PROBE_TABLE = "callgate_probe"


def keeps_hooks_by_name(kernel: NftKernel) -> bool:
    """Whether the kernel takes an ingress hook on an interface that does not
    exist. Linux 6.16 and later keep such a hook by name: it attaches when the
    interface comes and again when it is re-created; older kernels refuse it
    (and drop the hook of an interface that goes). Checked, never committed: a
    scratch table with a chain on a name no interface has."""
    table = {"family": "inet", "name": PROBE_TABLE}
    absent = "cgprobe" + secrets.token_hex(4)  # 15 characters: an interface name's most
    chain = {"family": "inet", "table": PROBE_TABLE, "name": "probe", "type": "filter", "hook": "ingress",
             "dev": absent, "prio": 0, "policy": "accept"}
    try:
        kernel.run([{"add": {"table": table}}, {"add": {"chain": chain}}, {"delete": {"table": table}}], check=True)
    except KernelError:
        return False
    return True


def has_net_admin() -> bool:
    """Whether the calling thread holds CAP_NET_ADMIN. Without it libnftables prints
    "Operation not permitted (you must be root)" straight to stderr and every command
    fails; asking first turns that into one PermissionError with the reason."""
    with open("/proc/thread-self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return True  # no capability line: not Linux as we know it, let libnftables say


class LibNftables:
    """libnftables through Debian's python3-nftables bindings, in this network
    namespace or in ``netns`` (a name under /run/netns, or a namespace file)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._gen_lock = threading.Lock()  # one generation question at a time on the socket
        self._gen_socket: Any = None
        self._gen_seq = 0
        if netns is not None:
            # One thread lives in the namespace; the netlink sockets libnftables
            # opens there belong to that namespace.
            self._pool = ThreadPoolExecutor(max_workers=1, initializer=enter, initargs=(netns,))

    def _nft(self, bulk: bool = False) -> Any:
        """This thread's libnftables context; ``bulk`` for whole-table work.

        Why two: libnftables 1.0.6 keeps what a command loaded (a whole table
        listed, a whole table replaced: ~190k elements at 50k pods) in the
        context's cache and frees it at the start of the next command, ~30 ms.
        Whole-table work in a context of its own leaves that cost to the next
        whole-table command instead of the next small incremental one."""
        attr = "bulk" if bulk else "nft"
        nft = getattr(self._local, attr, None)
        if nft is None:
            if not has_net_admin():
                raise PermissionError("nftables needs CAP_NET_ADMIN, which this process does not have")
            import nftables  # Debian's python3-nftables, linked into the venv

            nft = nftables.Nftables()
            nft.set_json_output(True)
            nft.set_handle_output(False)
            setattr(self._local, attr, nft)
        return nft

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    def _run(self, commands: list[Command], check: bool) -> None:
        # A transaction that deletes a table rebuilds it whole (a full replacement).
        nft = self._nft(bulk=any("table" in c.get("delete", {}) for c in commands))
        nft.set_dry_run(check)
        try:
            rc, _out, err = nft.json_cmd({"nftables": commands})
        finally:
            nft.set_dry_run(False)
        if rc != 0:
            raise KernelError(err.strip() or f"libnftables returned {rc}")

    def run(self, commands: list[Command], check: bool = False) -> None:
        self._call(self._run, commands, check)

    def _list(self, what: str, bulk: bool = False) -> list[dict[str, Any]] | None:
        rc, out, err = self._nft(bulk).cmd(what)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise KernelError(err.strip())
        data = json.loads(out) if out else {"nftables": []}
        return [obj for obj in data.get("nftables", []) if "metainfo" not in obj]

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        # ``name`` is our own constant; never user input.
        return self._call(self._list, f"list table {family} {name}", True)  # type: ignore[no-any-return]

    def list_set(self, family: str, table: str, name: str) -> list[dict[str, Any]] | None:
        # Our own constants again. Unlike "list table" or "list chain", which
        # make libnftables 1.0.6 fetch every element of every set in the table
        # (~100 ms at 50k elements), "list set" fetches only that set's.
        return self._call(self._list, f"list set {family} {table} {name}")  # type: ignore[no-any-return]

    def list_tables(self) -> list[tuple[str, str]]:
        objs = self._call(self._list, "list tables") or []
        return [(o["table"]["family"], o["table"]["name"]) for o in objs if "table" in o]

    def _generation(self) -> int | None:
        with self._gen_lock:
            try:
                if self._gen_socket is None:
                    # Opened here, on the thread that is in the namespace: it stays there.
                    self._gen_socket = nfnetlink.open_socket()
                    self._gen_socket.settimeout(2.0)  # a kernel that never answers is "unknown"
                self._gen_seq += 1
                return nfnetlink.ruleset_generation(self._gen_socket, self._gen_seq)
            except OSError as exc:
                log.debug("nf_tables generation not readable: %s", exc)
                return None

    def generation(self) -> int | None:
        return self._call(self._generation)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._gen_lock:
            if self._gen_socket is not None:
                self._gen_socket.close()
                self._gen_socket = None


def nft_available(netns: str | None = None) -> bool:
    """Can libnftables talk to the kernel here? (Decides ``--backend auto``.)"""
    try:
        kernel = LibNftables(netns)
        try:
            kernel.list_tables()
        finally:
            kernel.close()
    except Exception as exc:  # missing bindings, no nf_tables, no permission: all mean "no"
        log.debug("nftables not usable, choosing iptables: %s", exc)
        return False
    return True
