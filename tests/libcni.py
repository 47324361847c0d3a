"""A small libcni for tests: run a conflist the way a container runtime does.

Written after containernetworking/cni's ``libcni`` (api.go) and the CNI spec,
as containerd (go-cni) drives it for kubelet's pod sandboxes:

* **ADD** runs every plugin in order; each one's configuration is the
  conflist entry plus the list's ``name`` and ``cniVersion`` and, from the
  second plugin on, ``prevResult``: the previous plugin's result. The last
  result is cached (``<cache>/results/<network>-<container>-<ifname>``,
  holding the result and the configuration, like libcni's cache).
* **DEL** runs the plugins in reverse order, each with the cached result as
  ``prevResult``, then drops the cache entry. A plugin's DEL error is raised.
* **CHECK** runs every plugin in order with the cached result as
  ``prevResult`` (CNI 0.4.0 and later).
* The environment is ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
  ``CNI_IFNAME``, ``CNI_PATH`` and ``CNI_ARGS`` as containerd sends it:
  ``IgnoreUnknown=1;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;K8S_POD_INFRA_CONTAINER_ID=…;K8S_POD_UID=…``.
* A plugin is looked up by ``type`` in ``CNI_PATH`` and executed in the
  node's network namespace (``ip netns exec NODE``): the lab's node is a
  namespace, and plugins act on the namespace they run in.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CniPluginError(Exception):
    """A plugin exited non-zero; its CNI error object, as libcni reports it."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str) -> None:
        super().__init__(f"plugin type={plugin!r} {command} failed ({code}): {msg}: {details}")
        self.plugin, self.command, self.code, self.msg, self.details = plugin, command, code, msg, details


@dataclass(frozen=True)
class Sandbox:
    """What the runtime knows about one pod sandbox (libcni's RuntimeConf)."""

    namespace: str
    name: str
    container_id: str
    netns: str  # a path: /run/netns/NAME
    ifname: str = "eth0"
    uid: str = "00000000-0000-0000-0000-000000000000"

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in (
            ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", self.namespace), ("K8S_POD_NAME", self.name),
            ("K8S_POD_INFRA_CONTAINER_ID", self.container_id), ("K8S_POD_UID", self.uid)))


@dataclass
class ConfList:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> ConfList:
        data = json.loads(path.read_text())
        return cls(data["name"], data["cniVersion"], data["plugins"])


@dataclass
class Runtime:
    conflist: ConfList
    cni_path: list[Path]
    cache_dir: Path
    node_netns: str
    env: dict[str, str] = field(default_factory=dict)  # passed through, as the runtime's own environment
    timeout: float = 120.0

    # -- libcni's three list operations ---------------------------------------

    def add(self, sandbox: Sandbox) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.conflist.plugins:
            prev = self._exec("ADD", plugin, sandbox, prev)
        assert prev is not None
        self._cache(sandbox).parent.mkdir(parents=True, exist_ok=True)
        self._cache(sandbox).write_text(json.dumps({"kind": "cniCacheV1", "containerId": sandbox.container_id,
                                                     "ifName": sandbox.ifname, "networkName": self.conflist.name,
                                                     "result": prev}))
        return prev

    def delete(self, sandbox: Sandbox) -> None:
        cached = self.cached_result(sandbox)
        for plugin in reversed(self.conflist.plugins):
            self._exec("DEL", plugin, sandbox, cached)
        self._cache(sandbox).unlink(missing_ok=True)

    def check(self, sandbox: Sandbox) -> None:
        cached = self.cached_result(sandbox)
        if cached is None:
            raise AssertionError(f"no cached result for {sandbox.container_id}: CHECK needs one")
        for plugin in self.conflist.plugins:
            self._exec("CHECK", plugin, sandbox, cached)

    def cached_result(self, sandbox: Sandbox) -> dict[str, Any] | None:
        path = self._cache(sandbox)
        return json.loads(path.read_text())["result"] if path.exists() else None

    # -- one plugin -----------------------------------------------------------

    def _cache(self, sandbox: Sandbox) -> Path:
        return self.cache_dir / "results" / f"{self.conflist.name}-{sandbox.container_id}-{sandbox.ifname}"

    def _find(self, plugin_type: str) -> Path:
        for d in self.cni_path:
            if (d / plugin_type).is_file():
                return d / plugin_type
        raise AssertionError(f"failed to find plugin {plugin_type!r} in path {self.cni_path}")

    def _exec(self, command: str, plugin: dict[str, Any], sandbox: Sandbox,
              prev: dict[str, Any] | None) -> dict[str, Any] | None:
        conf = {**plugin, "name": self.conflist.name, "cniVersion": self.conflist.cni_version}
        if prev is not None:
            conf["prevResult"] = prev
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **self.env,
               "CNI_COMMAND": command, "CNI_CONTAINERID": sandbox.container_id, "CNI_NETNS": sandbox.netns,
               "CNI_IFNAME": sandbox.ifname, "CNI_ARGS": sandbox.cni_args(),
               "CNI_PATH": os.pathsep.join(str(p) for p in self.cni_path)}
        binary = self._find(plugin["type"])
        done = subprocess.run(["ip", "netns", "exec", self.node_netns, str(binary)], input=json.dumps(conf),
                              env=env, capture_output=True, text=True, timeout=self.timeout, check=False)
        if done.returncode != 0:
            try:
                err = json.loads(done.stdout)
            except json.JSONDecodeError:
                err = {"code": 999, "msg": done.stdout.strip() or done.stderr.strip(), "details": done.stderr.strip()}
            raise CniPluginError(plugin["type"], command, int(err.get("code", 0)), str(err.get("msg", "")),
                                 str(err.get("details", "")))
        if command != "ADD":
            return None
        return json.loads(done.stdout)
