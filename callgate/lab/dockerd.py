"""A real Docker engine inside a lab network namespace, and everything it leaves behind removed.

``DockerdLab(prefix)`` makes network namespace ``<prefix>`` and a directory
of its own, and starts Debian's dockerd in that namespace::

    nsenter --net=/run/netns/<prefix> dockerd --data-root DIR/data --exec-root DIR/exec
        -H unix://DIR/docker.sock --pidfile DIR/docker.pid --config-file DIR/daemon.json
        --bip 198.18.240.1/24 --default-address-pool base=198.18.224.0/20,size=24
        --storage-driver vfs --userland-proxy=false --shutdown-timeout 2

``nsenter --net`` and not ``ip netns exec``: the latter remounts /sys and hides
the cgroup mounts (dockerd then fails with "Devices cgroup isn't mounted").
Its own ``--config-file`` (empty) keeps a host's /etc/docker/daemon.json out.
dockerd keeps ``--iptables``: it writes its own rules (DOCKER-USER,
DOCKER-ISOLATION-STAGE-*, the icc accepts, NAT) in the lab namespace, beside
callgate's table, as on a real Docker host.

This module only runs processes; it never speaks the Engine API (that is
``callgate/watchers``' business, and the tests' through docker-py).

``stop()`` ends dockerd (its containers stop with it), then every process
still running from the lab's directory (containerd, shims: found by their
command line naming DIR, nothing else is ever signalled), unmounts what is
left under DIR, removes DIR and the namespace. It works after a failed start
and twice in a row; :func:`sweep` does the same for labs of dead test runs,
from the record each lab leaves in ``/run/callgate/dockerd-<prefix>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from callgate.lab.netns import LabError, netns_exists, run

STATE_DIR = Path("/run/callgate")
DOCKERD = "/usr/sbin/dockerd"


def unavailable() -> str | None:
    """Why a real dockerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in (DOCKERD, "/usr/bin/containerd", "/usr/bin/nsenter"):
        if not Path(tool).exists() and shutil.which(Path(tool).name) is None:
            return f"{Path(tool).name} is not installed (apt-get install docker.io)"
    if not Path("/bin/busybox").exists():
        return "busybox is not installed (apt-get install busybox-static)"
    return None


@dataclass(frozen=True)
class DockerdConfig:
    bip: str = "198.18.240.1/24"  # the default bridge, docker0
    pool: str = "base=198.18.224.0/20,size=24"  # user-defined networks
    startup_timeout: float = 60.0


class DockerdLab:
    """One dockerd in one lab network namespace."""

    def __init__(self, prefix: str, config: DockerdConfig = DockerdConfig(), state_dir: Path = STATE_DIR) -> None:
        self.prefix = prefix
        self.netns = prefix
        self.config = config
        self.state_file = state_dir / f"dockerd-{prefix}.json"
        self.root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        assert self.root is not None, "not started"
        return self.root / name

    @property
    def socket(self) -> Path:
        return self._dir("docker.sock")

    @property
    def host(self) -> str:
        """The engine's address, as --docker-host takes it."""
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self._dir("dockerd.log")

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> DockerdLab:
        """Namespace, directory, dockerd; returns once its API socket is there."""
        why = unavailable()
        if why:
            raise LabError(f"cannot start dockerd: {why}")
        if not netns_exists(self.netns):
            run(["ip", "netns", "add", self.netns])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix=f"callgate-{self.prefix}-"))
            self._dir("daemon.json").write_text("{}\n")
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps({"netns": self.netns, "root": str(self.root)}))
        self.start_daemon()
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start_daemon(self) -> None:
        """dockerd on the lab's directories (again, after :meth:`stop_daemon`); returns
        once its socket is there. Nothing to do while it runs."""
        if self.running:
            return
        cfg, root = self.config, self._dir("")
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", DOCKERD,
                "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "-H", self.host,
                "--pidfile", str(root / "docker.pid"), "--config-file", str(root / "daemon.json"),
                "--bip", cfg.bip, "--default-address-pool", cfg.pool, "--storage-driver", "vfs",
                "--userland-proxy=false", "--shutdown-timeout", "2"]
        self.socket.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        deadline = time.monotonic() + cfg.startup_timeout
        while not self.socket.exists():
            if self._process.poll() is not None:
                raise LabError(f"dockerd exited with {self._process.returncode} during start; "
                               f"its log: {self.log}\n{self._tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"dockerd did not open {self.socket} within {cfg.startup_timeout:g}s; "
                               f"its log: {self.log}\n{self._tail()}")
            time.sleep(0.05)

    def _tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_daemon(self, timeout: float = 20.0) -> None:
        """End dockerd (SIGTERM: it stops its containers first; SIGKILL after ``timeout``)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart_daemon(self) -> None:
        """dockerd stopped and started again on the same directories (containers stop with it)."""
        self.stop_daemon()
        self.start_daemon()

    def stop(self) -> None:
        """Remove everything: dockerd, its leftovers, mounts, directory, namespace."""
        self.stop_daemon()
        if self.root is not None:
            _remove(self.netns, self.root)
            self.root = None
        elif netns_exists(self.netns):
            run(["ip", "netns", "del", self.netns], check=False)
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> DockerdLab:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _processes_under(root: Path) -> list[int]:
    """PIDs whose command line names ``root`` (dockerd, containerd, shims of this lab only)."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def _container_processes(root: Path) -> list[int]:
    """PIDs in the cgroups of this lab's containers (left running when dockerd was
    killed): the engine names each container's cgroup after its id, and the ids
    are the directories under DIR/data/containers."""
    pids: set[int] = set()
    containers = root / "data" / "containers"
    ids = [d.name for d in containers.iterdir()] if containers.is_dir() else []
    for cid in ids:
        if len(cid) != 64 or not all(c in "0123456789abcdef" for c in cid):
            continue
        for procs in Path("/sys/fs/cgroup").glob(f"*/docker/{cid}/cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except (OSError, ValueError):
                continue
    return sorted(pids)


def _remove(netns: str, root: Path) -> None:
    for pid in _container_processes(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_under(root)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and _processes_under(root) and time.monotonic() < deadline:
            time.sleep(0.05)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].encode().decode("unicode_escape")
        if mountpoint == str(root) or mountpoint.startswith(str(root) + "/"):
            mounts.append(mountpoint)
    for mountpoint in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", mountpoint], check=False)
    shutil.rmtree(root, ignore_errors=True)
    if netns_exists(netns):
        run(["ip", "netns", "del", netns], check=False)


def sweep(prefix_start: str, state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the engine labs whose prefix starts with ``prefix_start`` that a dead
    run left behind (from their records); the prefixes removed."""
    removed = []
    for record in sorted(state_dir.glob(f"dockerd-{prefix_start}*.json")):
        try:
            state = json.loads(record.read_text())
            netns, root = str(state["netns"]), Path(state["root"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not root.is_absolute() or not root.name.startswith("callgate-"):
            continue  # never remove a directory callgate did not make
        _remove(netns, root)
        record.unlink(missing_ok=True)
        removed.append(netns)
    return removed
