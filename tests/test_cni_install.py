"""``callgate cni install|uninstall`` against the sample configurations of real CNIs
(tests/cni_samples/) in a temporary directory: the gate lands at the end of the
node's chain, a second run changes nothing, uninstall gives back what was there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callgate.cli.main import app

SAMPLES = Path(__file__).resolve().parent / "cni_samples"
NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".conf", ".conflist"))


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path, Path]:
    conf, bin_dir = tmp_path / "etc-cni-net.d", tmp_path / "opt-cni-bin"
    conf.mkdir()
    plugin = tmp_path / "callgate-cni"
    plugin.write_bytes(b"\x7fELF not really, but bytes to copy")
    return conf, bin_dir, plugin


def cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def install(conf: Path, bin_dir: Path, plugin: Path, *extra: str) -> tuple[int, str]:
    return cli("cni", "install", "--plugin", plugin, "--conf-dir", conf, "--bin-dir", bin_dir, *extra)


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("sample", NAMES)
def test_install_appends_the_gate_idempotently_and_uninstall_restores(sample: str,
                                                                      host: tuple[Path, Path, Path]) -> None:
    conf, bin_dir, plugin = host
    shutil.copy(SAMPLES / sample, conf / sample)
    # Not the node's network: sorts after it, must not be touched.
    (conf / "99-loopback.conf").write_text('{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}\n')
    original = json.loads((SAMPLES / sample).read_text())
    before = snapshot(conf)

    code, out = install(conf, bin_dir, plugin, "--interface-prefix", "veth", "--timeout", "20")
    assert code == 0, out
    assert (bin_dir / "callgate-cni").read_bytes() == plugin.read_bytes()
    assert (bin_dir / "callgate-cni").stat().st_mode & 0o111
    network = conf / (Path(sample).stem + ".conflist")
    data = json.loads(network.read_text())
    plugins = original.get("plugins") or [{k: v for k, v in original.items() if k not in ("name", "cniVersion")}]
    assert data["plugins"] == [*plugins, {"type": "callgate-cni", "timeoutSeconds": 20, "interfacePrefix": "veth"}]
    assert (data["name"], data["cniVersion"]) == (original["name"], original["cniVersion"])
    assert (conf / "99-loopback.conf").read_bytes() == before["99-loopback.conf"]

    installed = snapshot(conf)
    code, out = install(conf, bin_dir, plugin, "--interface-prefix", "veth", "--timeout", "20")
    assert code == 0 and "already" in out, out
    assert snapshot(conf) == installed, "a second install writes nothing"

    code, out = cli("cni", "uninstall", "--conf-dir", conf, "--bin-dir", bin_dir)
    assert code == 0, out
    assert not (bin_dir / "callgate-cni").exists()
    after = snapshot(conf)
    assert set(after) == set(before)
    for name, content in after.items():
        assert json.loads(content) == json.loads(before[name]), name
    if sample.endswith(".conf"):
        assert after[sample] == before[sample], "a converted .conf comes back byte for byte"


def test_the_gate_moves_to_the_end_and_takes_new_settings(host: tuple[Path, Path, Path]) -> None:
    conf, bin_dir, plugin = host
    (conf / "10-net.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "ptp"}, {"type": "callgate-cni", "timeoutSeconds": 5}, {"type": "portmap"}]}))
    assert install(conf, bin_dir, plugin)[0] == 0
    types = [p["type"] for p in json.loads((conf / "10-net.conflist").read_text())["plugins"]]
    assert types == ["ptp", "portmap", "callgate-cni"]
    assert json.loads((conf / "10-net.conflist").read_text())["plugins"][-1] == {"type": "callgate-cni",
                                                                                "timeoutSeconds": 30}


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not JSON"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "plugins must be a non-empty list"),
    ('{"cniVersion": "1.0.0", "name": "n"}', "neither a conflist"),
    ('{"cniVersion": 1, "name": "n", "type": "bridge"}', "cniVersion must be a string"),
    ('{"cniVersion": "1.0.0", "name": "n", "type": "callgate-cni"}', "chained plugin"),
])
def test_a_bad_configuration_is_one_message_and_nothing_is_written(content: str, message: str,
                                                                    host: tuple[Path, Path, Path]) -> None:
    conf, bin_dir, plugin = host
    (conf / "10-net.conf").write_text(content)
    before = snapshot(conf)
    code, out = install(conf, bin_dir, plugin)
    assert code == 1 and message in out and "10-net.conf" in out and "Traceback" not in out, out
    assert snapshot(conf) == before


def test_no_configuration_yet(host: tuple[Path, Path, Path]) -> None:
    conf, bin_dir, plugin = host
    code, out = install(conf, bin_dir, plugin, "--wait", "0.5")
    assert code == 1 and "no CNI network configuration" in out
    code, out = install(conf, bin_dir, plugin, "--interface-prefix", "bad prefix!")
    assert code == 2 and "--interface-prefix" in out
    code, out = cli("cni", "install", "--plugin", conf / "missing", "--conf-dir", conf, "--bin-dir", bin_dir)
    assert code == 1 and "does not exist" in out
