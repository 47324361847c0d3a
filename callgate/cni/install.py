"""Put ``callgate-cni`` on a node and into its network's chain, and take it out again.

The runtime (containerd, CRI-O) uses the first file of its CNI configuration
directory in lexical order with the extension ``.conflist``, ``.conf`` or
``.json`` (libcni's ``ConfFiles``); that file is the node's network.

Install (the DaemonSet's init container, ``callgate cni install``):

1. copy the plugin binary to the CNI bin directory (write, then rename: a
   runtime executing it never sees half a file);
2. append ``{"type": "callgate-cni", ...}`` at the end of the network's chain
   — after the plugin that creates the veth and after portmap/bandwidth,
   which only add rules around it. Already there: its settings are updated
   and it is moved to the end; nothing is written when nothing changes.
   A single-plugin ``.conf`` becomes a ``.conflist`` of the same name with
   the gate appended, and the original is kept beside it as
   ``NAME.conf.callgate-orig`` (an extension the runtime ignores) for
   uninstall; the ``.conflist`` is written before the ``.conf`` is moved, so
   the runtime always sees one complete configuration.

Uninstall (``callgate cni uninstall``) takes ``callgate-cni`` out of every
configuration in the directory, restores a converted ``.conf`` and removes
the binary.

Configuration files are the primary CNI's, so they are treated as input:
anything that is not a well-formed conflist is an error naming the file, and
nothing is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callgate.errors import InputError, Problem

PLUGIN = "callgate-cni"
DEFAULT_TIMEOUT = 30.0  # seconds ADD waits for the agent (the gate's timeoutSeconds)
EXTENSIONS = (".conf", ".conflist", ".json")
ORIGINAL = ".callgate-orig"


@dataclass(frozen=True)
class Change:
    path: Path
    what: str  # a sentence for the log: "added callgate-cni at the end of the chain (after ptp)"


def _bad(path: Path, message: str) -> InputError:
    return InputError([Problem(message, file=str(path))])


def config_files(conf_dir: Path) -> list[Path]:
    """The network configurations the runtime considers, in the order it does."""
    if not conf_dir.is_dir():
        return []
    return sorted((p for p in conf_dir.iterdir() if p.suffix in EXTENSIONS and p.is_file()), key=lambda p: p.name)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot read the CNI configuration: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise _bad(path, "a CNI configuration must be a JSON object")
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins or not all(
                isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
            raise _bad(path, "plugins must be a non-empty list of objects with a type")
    elif not isinstance(data.get("type"), str):
        raise _bad(path, "neither a conflist (plugins) nor a single plugin configuration (type)")
    for key in ("name", "cniVersion"):
        if not isinstance(data.get(key), str):
            raise _bad(path, f"{key} must be a string")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically, with the mode of the file it replaces (0644 when new)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def gate_entry(timeout: float, interface_prefix: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": PLUGIN, "timeoutSeconds": timeout}
    if interface_prefix:
        entry["interfacePrefix"] = interface_prefix
    return entry


def _with_gate(plugins: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(p for p in plugins if p.get("type") != PLUGIN), entry]


def install_plugin(binary: Path, bin_dir: Path) -> Change | None:
    """Copy the plugin into the CNI bin directory unless the same bytes are there."""
    target = bin_dir / PLUGIN
    new = binary.read_bytes()
    if target.exists() and target.read_bytes() == new and os.access(target, os.X_OK):
        return None
    bin_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=bin_dir, prefix=f".{PLUGIN}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(new)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Change(target, "installed the plugin binary")


def current_gate(conf_dir: Path) -> dict[str, Any] | None:
    """The gate's entry in the node's network, if it is in its chain."""
    files = config_files(conf_dir)
    plugins = _read(files[0]).get("plugins") if files else None
    return next((p for p in plugins if p.get("type") == PLUGIN), None) if plugins else None


def install_chain(conf_dir: Path, timeout: float = DEFAULT_TIMEOUT,
                  interface_prefix: str | None = None) -> Change | None:
    """Append the gate to the node's network (the first configuration file); None if already so."""
    files = config_files(conf_dir)
    if not files:
        raise _bad(conf_dir, "no CNI network configuration (*.conflist, *.conf, *.json) yet")
    path = files[0]
    data = _read(path)
    entry = gate_entry(timeout, interface_prefix)
    if "plugins" in data:
        plugins = _with_gate(data["plugins"], entry)
        if plugins == data["plugins"]:
            return None
        before = data["plugins"][-1]["type"] if data["plugins"][-1].get("type") != PLUGIN else "its old place"
        _write(path, {**data, "plugins": plugins})
        return Change(path, f"{PLUGIN} at the end of the chain (after {before})")
    # A single-plugin .conf: the same network as a conflist, the original kept aside.
    if data.get("type") == PLUGIN:
        raise _bad(path, f"{PLUGIN} is a chained plugin; it cannot be the network by itself")
    single = {k: v for k, v in data.items() if k not in ("name", "cniVersion")}
    conflist = path.with_suffix(".conflist")
    original = path.with_name(path.name + ORIGINAL)
    # A conflist beside it is ours when we kept the original aside: the primary CNI
    # wrote its .conf again (the kept one is stale); anyone else's is not overwritten.
    if conflist.exists() and not original.exists():
        raise _bad(path, f"cannot convert to {conflist.name}: that file exists")
    _write(conflist, {"cniVersion": data["cniVersion"], "name": data["name"], "plugins": [single, entry]})
    os.replace(path, original)
    return Change(conflist, f"{path.name} converted to a conflist with {PLUGIN} after {data['type']}")


def uninstall(conf_dir: Path, bin_dir: Path) -> list[Change]:
    """Take the gate out of every configuration, restore converted ones, remove the binary."""
    changes: list[Change] = []
    for original in sorted(conf_dir.glob(f"*{ORIGINAL}")) if conf_dir.is_dir() else []:
        restored = original.with_name(original.name.removesuffix(ORIGINAL))
        os.replace(original, restored)
        restored.with_suffix(".conflist").unlink(missing_ok=True)
        changes.append(Change(restored, f"restored {restored.name}"))
    for path in config_files(conf_dir):
        data = _read(path)
        plugins = data.get("plugins")
        if isinstance(plugins, list) and any(p.get("type") == PLUGIN for p in plugins):
            _write(path, {**data, "plugins": [p for p in plugins if p.get("type") != PLUGIN]})
            changes.append(Change(path, f"removed {PLUGIN} from the chain"))
    binary = bin_dir / PLUGIN
    if binary.exists():
        binary.unlink()
        changes.append(Change(binary, "removed the plugin binary"))
    return changes
