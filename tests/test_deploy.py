"""The deploy/ manifests: schema-valid offline, least privilege, and in step with the CLI.

Schemas come from the ``kubernetes-validate`` package (the Kubernetes OpenAPI
schemas, shipped inside it), so this runs without a cluster or network.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from callgate.watchers.k8s_convert import API_VERSIONS, KINDS
from tests.dockerfile import dockerfile_stages, image_packages

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NAMESPACE = "callgate-system"
# The oldest Kubernetes we claim to support and the newest schema the package knows.
VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
READ = {"get", "list", "watch"}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Everything in deploy/ and deploy/uninstall/ (applied on its own, before removal)."""
    out = []
    for path in sorted([*DEPLOY.glob("*.yaml"), *DEPLOY.glob("uninstall/*.yaml")]):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name}"
    return found[0]


def validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_openapi_schema(version: str) -> None:
    docs = manifests()
    assert len(docs) >= 10
    for file, doc in docs:
        try:
            validate(doc, version)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{file}: {doc['kind']} {doc['metadata'].get('name')}: {exc.message} at {list(exc.path)}")


def test_the_validator_catches_mistakes() -> None:
    """Guard against a vacuous pass: broken copies of our manifests must fail."""
    ds = find("DaemonSet", "callgate-agent")
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["hostNetwrok"] = True
    wrong_type = copy.deepcopy(ds)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9464"
    role = copy.deepcopy(find("ClusterRole", "callgate-agent"))
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")
    for broken in (typo, wrong_type, role):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken, VERSIONS[-1])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_namespaced_objects_live_in_callgate_system() -> None:
    for _, doc in manifests():
        if doc["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    assert find("Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


# ---- RBAC ---------------------------------------------------------------------------------------

def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), "no wildcards"
                    out.add((group, resource, verb))
    return out


# What the watchers list and watch: taken from their own table of kinds, so a kind
# added there without its RBAC (or RBAC left behind for a kind gone) fails here.
WATCHED = {(API_VERSIONS[kind].rpartition("/")[0], kind, v) for kind in KINDS for v in READ}


def test_the_watched_kinds_include_the_cluster_tiers() -> None:
    assert {("", "nodes"), ("policy.networking.k8s.io", "clusternetworkpolicies"),
            ("policy.networking.k8s.io", "adminnetworkpolicies"),
            ("policy.networking.k8s.io", "baselineadminnetworkpolicies")} <= {(g, r) for g, r, _ in WATCHED}


def test_agent_rbac_is_read_only_and_exactly_what_the_watchers_use() -> None:
    agent = grants(find("ClusterRole", "callgate-agent"))
    assert {verb for _, _, verb in agent} <= READ, "the agent never writes to the API"
    assert agent == WATCHED


def test_controller_rbac_adds_only_event_writes() -> None:
    controller = grants(find("ClusterRole", "callgate-controller"))
    assert controller - WATCHED == {("", "events", "create"), ("", "events", "patch"), ("", "events", "get")}
    assert controller >= WATCHED


@pytest.mark.parametrize("component", ["agent", "controller"])
def test_bindings_tie_each_role_to_its_service_account(component: str) -> None:
    name = f"callgate-{component}"
    binding = find("ClusterRoleBinding", name)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    find("ServiceAccount", name)
    workload = find("DaemonSet" if component == "agent" else "Deployment", name)
    assert workload["spec"]["template"]["spec"]["serviceAccountName"] == name


# ---- the workloads --------------------------------------------------------------------------------

def container(kind: str, name: str, which: str = "containers") -> tuple[dict[str, Any], dict[str, Any]]:
    workload = find(kind, name)
    pod = workload["spec"]["template"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"][which]
    return pod, c


def host_paths(pod: dict[str, Any]) -> dict[str, str]:
    """volume name -> host path."""
    return {v["name"]: v["hostPath"]["path"] for v in pod["spec"].get("volumes", []) if "hostPath" in v}


def mounted_host_paths(pod: dict[str, Any], c: dict[str, Any]) -> set[str]:
    paths = host_paths(pod)
    return {paths[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in paths}


def test_agent_daemonset_runs_on_the_host_network_with_net_admin_only() -> None:
    pod, c = container("DaemonSet", "callgate-agent")
    spec = pod["spec"]
    assert spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    sc = c["securityContext"]
    assert sc.get("privileged") is not True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["readOnlyRootFilesystem"] is True
    # Host paths: the gate's socket directory and the network configuration (to keep the gate in
    # the chain) for the agent; the plugin directory for the installer only.
    assert set(host_paths(pod).values()) == {"/run/callgate", "/etc/cni/net.d", "/opt/cni/bin"}
    assert mounted_host_paths(pod, c) == {"/run/callgate", "/etc/cni/net.d"}
    assert "--source=kubernetes" in c["args"] and "--node=$(NODE_NAME)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_probes_and_prometheus_annotations_point_at_the_status_port() -> None:
    pod, c = container("DaemonSet", "callgate-agent")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9464}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9464"
    assert "--metrics-address=$(POD_IP):9464" in c["args"]
    # The agent keeps the gate in the same configuration the init container put it in.
    conf = next(m["mountPath"] for m in c["volumeMounts"] if host_paths(pod).get(m["name"]) == "/etc/cni/net.d")
    assert f"--cni-conf-dir={conf}" in c["args"]
    _, ctl = container("Deployment", "callgate-controller")
    port = ctl["ports"][0]
    assert f"--health-address=0.0.0.0:{port['containerPort']}" in ctl["args"]
    assert ctl["readinessProbe"]["httpGet"]["port"] == port["name"] == ctl["livenessProbe"]["httpGet"]["port"]


def test_agent_settings_come_from_the_configmap() -> None:
    _, c = container("DaemonSet", "callgate-agent")
    data = find("ConfigMap", "callgate-agent")["data"]
    refs = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in c["env"] if "configMapKeyRef" in e.get("valueFrom", {})}
    assert {r["name"] for r in refs.values()} == {"callgate-agent"}
    assert {r["key"] for r in refs.values()} == set(data), "every setting is used, every reference exists"
    # Every $(VAR) in the args is defined in env (Kubernetes leaves unknown ones verbatim).
    used = {m for arg in c["args"] for m in re.findall(r"\$\((\w+)\)", arg)}
    assert used <= {e["name"] for e in c["env"]}
    from callgate.enforcers.base import check_fail_closed_prefix

    check_fail_closed_prefix(data["FAIL_CLOSED_PREFIX"])
    assert float(data["RESYNC_SECONDS"]) > 0 and 0 <= int(data["COALESCE_MS"]) <= 60_000


def test_controller_runs_unprivileged() -> None:
    pod, c = container("Deployment", "callgate-controller")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "hostNetwork" not in pod["spec"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(("kind", "name", "which"), [
    ("DaemonSet", "callgate-agent", "containers"), ("DaemonSet", "callgate-agent", "initContainers"),
    ("Deployment", "callgate-controller", "containers"), ("DaemonSet", "callgate-cni-uninstall", "initContainers")])
def test_container_args_are_options_the_cli_accepts(kind: str, name: str, which: str) -> None:
    """The manifests and the CLI must not drift apart: every --flag exists, and the
    values that do not depend on the environment parse."""
    from callgate.cli.main import app

    _, c = container(kind, name, which)
    command: Any = typer.main.get_command(app)
    args = list(c["args"])
    while hasattr(command, "commands"):  # a group (`cni install`): walk down the subcommands
        command_name = args.pop(0)
        command = command.commands[command_name]
    known = {opt for p in command.params for opt in p.opts}
    for arg in args:
        flag = arg.split("=", 1)[0]
        assert flag in known, f"{name}: {flag} is not an option of `callgate {command_name}`"
    # Substitute plausible downward-API/ConfigMap values and let click parse the lot.
    values = {"NODE_NAME": "node-1", "POD_IP": "198.18.0.1"}
    values.update(find("ConfigMap", "callgate-agent")["data"])
    concrete = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in args]
    ctx = command.make_context(command_name, concrete)
    assert ctx.params  # parsed without a usage error


def test_dockerfile_installs_nftables_and_runs_callgate() -> None:
    stages = dockerfile_stages()
    final = stages[""]
    assert re.match(r"FROM debian:12", final)
    for package in ("nftables", "libnftables1", "python3-nftables", "python3", "iproute2", "iptables", "ipset"):
        assert package in image_packages(), package
    extras = re.search(r"/src\[([a-z,]+)\]", final)
    assert extras is not None and "kubernetes" in extras.group(1).split(","), "the image needs the kubernetes extra"
    assert "docker" in extras.group(1).split(","), "the image runs the agent on Docker hosts too"
    assert re.search(r'^ENTRYPOINT \["callgate"\]', final, re.M)
    images = {c["image"] for kind, name in (("DaemonSet", "callgate-agent"), ("Deployment", "callgate-controller"))
              for c in [container(kind, name)[1]]}
    assert len(images) == 1, "agent and controller share one image"


def test_the_plugin_is_built_static_in_its_own_stage_and_installed_by_the_init_container() -> None:
    stages = dockerfile_stages()
    builder = stages["cni-plugin"]
    assert "scripts/build-cni-plugin.sh" in builder  # the flags live in one place: -static -Os
    assert "-static" in (ROOT / "scripts" / "build-cni-plugin.sh").read_text()
    copied = re.search(r"^COPY --from=cni-plugin \S+ (\S+)$", stages[""], re.M)
    assert copied is not None
    _, init = container("DaemonSet", "callgate-agent", "initContainers")
    assert init["args"][:2] == ["cni", "install"] and f"--plugin={copied.group(1)}" in init["args"]
    pod, _ = container("DaemonSet", "callgate-agent")
    mounts = {m["mountPath"]: host_paths(pod)[m["name"]] for m in init["volumeMounts"]}
    assert f"--conf-dir={next(k for k, v in mounts.items() if v == '/etc/cni/net.d')}" in init["args"]
    assert f"--bin-dir={next(k for k, v in mounts.items() if v == '/opt/cni/bin')}" in init["args"]
    assert "--interface-prefix=$(FAIL_CLOSED_PREFIX)" in init["args"]


def test_the_gate_is_on_the_socket_and_metrics_on_the_node_address() -> None:
    pod, c = container("DaemonSet", "callgate-agent")
    default = re.search(r'#define DEFAULT_SOCKET "([^"]+)"', (ROOT / "cni-plugin" / "callgate-cni.c").read_text())
    assert default is not None
    assert f"--cni-socket={default.group(1)}" in c["args"], "the agent listens where the plugin connects"
    mount = next(m["mountPath"] for m in c["volumeMounts"] if host_paths(pod).get(m["name"]) == "/run/callgate")
    assert default.group(1).startswith(mount + "/")
    assert "--metrics-address=$(POD_IP):9464" in c["args"]
