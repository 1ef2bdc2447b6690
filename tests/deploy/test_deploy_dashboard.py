"""The Grafana dashboard and the alert rules against real data: a real Prometheus (Debian's server) scrapes real
agents replaying fixture nodes and two real aggregator replicas judging them through the project's fake API
server (agent/fakekube: no kube-apiserver runs here, REAL-PARTS.md). Nothing is mocked between the agents,
the aggregators and Prometheus.

The processes run with the manifests' own command lines: each agent with the DaemonSet's args and the
ConfigMap's vigil.yaml, each aggregator with the Deployment's args and the ConfigMap's settings ($(VARIABLES)
expanded as the kubelet does); only what ties them to a cluster is replaced (host roots by a fixture snapshot,
addresses by 127.0.0.1 ports, the in-cluster config by a kubeconfig, the projected token by a file). Prometheus
scrapes the agents as the Prometheus Operator would from the PodMonitor: with the target labels Kubernetes gives a
pod (namespace, pod, container: the agent's own), the PodMonitor's honorLabels and its relabelings (the pod's node
name -> `node`).

Then: every template variable resolves (cluster -> node -> GPU / RDMA device), every PromQL expression of every
panel, with the variables substituted as Grafana would for "All", returns data, and the alerts the fixture faults
must raise are active (and the ones they must not raise are not).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from .helpers import (AGENT, AGGREGATOR, DASHBOARD, FIXTURES, RULES, Procs, Prometheus, container, expand,
                      free_port, one, pod_monitor_scrape_config, rendered, split_args, wait_http)

DASH = json.loads(DASHBOARD.read_text())
# Fixture nodes the agents replay: AMD with uncorrectable ECC and a narrow PCIe link (plus pods holding GPUs and a
# drifting sysctl tree, added below), AMD with XGMI links down, AMD with a broken SMI, NVIDIA healthy, RDMA
# healthy, RDMA with a port down.
NODES = ["mi300x-faulty", "mi300x-rocm71-ecc-correctable", "mi300x-smi-broken", "h100-nvidia", "rdma-8port-healthy",
         "rdma-port-down"]
# Grafana's values for "All" (allValue) and its built-in intervals.
SUBST = {"$node": ".*", "$gpu": ".*", "$rdma_device": ".*", "$__rate_interval": "1m", "$__interval": "15s",
         "$__range": "5m"}
POD_RESOURCES = {"podResources": [{"name": "llm-train-0", "namespace": "ml", "containers": [{
    "name": "trainer", "devices": [{"resourceName": "amd.com/gpu", "deviceIds": ["0000:0c:00.0", "0000:22:00.0"]}]}]}]}
DRIFT = {"vm.max_map_count": "65530", "fs.inotify.max_user_watches": "8192", "net.core.somaxconn": "4096",
         "net.ipv4.tcp_rmem": "4096\t131072\t6291456"}


def node_name(fixture: str) -> str:
    nf = FIXTURES / fixture / "node.json"
    return (json.loads(nf.read_text()).get("node") if nf.exists() else None) or fixture


def snapshot(fixture: str, tmp: Path) -> Path:
    """The fixture itself, or for mi300x-faulty a copy with pods holding two GPUs (kubelet PodResources, as
    `agent snapshot` captures it) and a procfs tree off the tuning profile."""
    if fixture != "mi300x-faulty":
        return FIXTURES / fixture
    d = tmp / "nodes" / fixture
    shutil.copytree(FIXTURES / fixture, d)
    (d / "containers").mkdir()
    (d / "containers" / "pod-resources.json").write_text(json.dumps(POD_RESOURCES))
    for key, value in DRIFT.items():
        p = d.joinpath("proc", "sys", *key.split("."))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    return d


def agent_argv(overrides: dict[str, str]) -> list[str]:
    c = container(rendered("base"), "DaemonSet", "vigil-agent", "agent")
    argv = []
    for flag, value in split_args(c["args"]):
        if flag in ("--sysfs", "--procfs"):
            continue  # the host's roots: replaced by --snapshot
        argv.append(f"{flag}={overrides.pop(flag, value)}" if value is not None else flag)
    return argv + [f"{k}={v}" for k, v in overrides.items()]


def aggregator_argv(env: dict[str, str], overrides: dict[str, str]) -> list[str]:
    c = container(rendered("base"), "Deployment", "vigil-aggregator", "aggregator")
    argv = []
    for flag, value in split_args(c["args"]):
        if value is None:
            argv.append(flag)
        else:
            argv.append(f"{flag}={overrides.pop(flag, expand(value, env))}")
    return argv + [f"{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from agent.fakekube.server import FakeKube

    tmp = tmp_path_factory.mktemp("stack")
    objs = rendered("base")
    ns = one(objs, "Namespace")["metadata"]["name"]
    procs = Procs()
    kube = FakeKube(kube_version="1.33.0", namespaces=(ns,), require_auth=True)
    try:
        # The cluster: one node per fixture, an agent pod on each with its projected token (audience vigil).
        names = {f: node_name(f) for f in NODES}
        tokens = {}
        for f, n in names.items():
            kube.add_node(n)
            kube.add_pod(ns, f"vigil-agent-{n}", node_name=n, service_account="vigil-agent",
                         labels={"app.kubernetes.io/name": "vigil-agent"})
            tokens[f] = kube.issue_service_account_token(ns, "vigil-agent", pod=f"vigil-agent-{n}",
                                                         audiences=("vigil",))
        kube.start()
        kubeconfig = kube.write_kubeconfig(str(tmp / "kubeconfig"), token=kube.admin_token)

        # Two aggregator replicas, the Deployment's command line; a budget of one node so the breaker opens.
        agg_c = container(objs, "Deployment", "vigil-aggregator", "aggregator")
        env = dict(one(objs, "ConfigMap", agg_c["envFrom"][0]["configMapRef"]["name"])["data"])
        env.update(POD_NAMESPACE=ns, VIGIL_BUDGET_NODES="1")
        aggs = []
        for replica in ("a", "b"):
            grpc_port, metrics_port = free_port(), free_port()
            argv = aggregator_argv(dict(env, POD_NAME=f"vigil-aggregator-{replica}"), {
                "--listen": f"127.0.0.1:{grpc_port}", "--metrics-listen": f"127.0.0.1:{metrics_port}",
                "--kubeconfig": kubeconfig})
            p = procs.start([AGGREGATOR, *argv], tmp / f"aggregator-{replica}.log")
            wait_http(f"http://127.0.0.1:{metrics_port}/healthz", proc=p)
            aggs.append((replica, grpc_port, metrics_port))
            time.sleep(1)  # replica a takes the Lease first

        # The agents: the DaemonSet's command line and the ConfigMap's vigil.yaml.
        cfg = tmp / "vigil.yaml"
        agent_cm = next(v for v in objs if v["kind"] == "ConfigMap" and v["metadata"]["name"].startswith(
            "vigil-agent-config"))
        cfg.write_text(agent_cm["data"]["vigil.yaml"])
        targets = ",".join(f"127.0.0.1:{g}" for _, g, _ in aggs)
        agents = {}
        for f, n in names.items():
            port = free_port()
            (tmp / f"token-{f}").write_text(tokens[f])
            argv = agent_argv({"--config": str(cfg), "--aggregator": targets, "--spool": str(tmp / f"spool-{f}.db"),
                               "--token-file": str(tmp / f"token-{f}"), "--snapshot": str(snapshot(f, tmp)),
                               "--listen": f"127.0.0.1:{port}", "--node-name": n})
            p = procs.start([AGENT, *argv], tmp / f"agent-{f}.log", env={"NODE_NAME": n, "PATH": "/usr/bin:/bin"})
            agents[f] = (n, port, p)
        for n, port, p in agents.values():
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=p)

        # Prometheus: the PodMonitor's relabelings on targets labelled as Kubernetes service discovery would.
        pod_monitor = one(rendered("monitoring"), "PodMonitor")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                pod_monitor_scrape_config(pod_monitor, [(f"127.0.0.1:{port}", n, ns, f"vigil-agent-{n}")
                                                        for n, port, _ in agents.values()]),
                {"job_name": "vigil-aggregator",
                 "static_configs": [{"targets": [f"127.0.0.1:{m}"], "labels": {"pod": f"vigil-aggregator-{r}"}}
                                    for r, _, m in aggs]},
            ]}
        prom = Prometheus(procs, tmp, config)
        stack = {"prom": prom, "nodes": names, "agents": agents, "procs": procs, "kube": kube}
        wait_for(stack)
        yield stack
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.close()
        kube.close()


def wait_for(stack, timeout: float = 90.0) -> None:
    """Until every target is up, the aggregator has acted on the faults (breaker open), the agents stream, and
    every series has enough samples for the panels' rate() windows."""
    prom: Prometheus = stack["prom"]
    conditions = {
        "targets up": f'count(up == 1) == {len(NODES) + 2}',
        "one leader": "sum(vigil_aggregator_leader) == 1",
        "breaker open": "max(vigil_aggregator_breaker_open) == 1",
        "agents streaming": f"sum(vigil_stream_connected) == {len(NODES)}",
        "pods attributed": "count(vigil_gpu_pod_info) == 2",
        "rates": 'count(rate(vigil_rdma_port_received_bytes_total[1m])) > 0',
        "alerts evaluated": 'count(ALERTS{alertname="VigilCordonBreakerOpen", alertstate="firing"}) == 1',
    }
    deadline = time.monotonic() + timeout
    pending = dict(conditions)
    while pending and time.monotonic() < deadline:
        for name, expr in list(pending.items()):
            if prom.query(expr):
                del pending[name]
        time.sleep(0.5)
    assert not pending, f"not reached within {timeout}s: {pending}\n{stack['procs'].logs()}"
    time.sleep(3)  # a few more scrapes for the rate() windows


def targets():
    out = []
    for panel in DASH["panels"]:
        for t in panel.get("targets") or []:
            out.append(pytest.param(panel, t, id=f"{panel['id']}-{panel['title']}-{t['refId']}"))
    return out


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    values = {**SUBST, **(values or {})}
    for var in sorted(values, key=len, reverse=True):
        expr = expr.replace(var, values[var])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_dashboard_structure():
    assert DASH["uid"] and DASH["title"] and DASH["schemaVersion"] >= 36
    ids = [p["id"] for p in DASH["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in DASH["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert list(variables) == ["datasource", "node", "gpu", "rdma_device"]  # cluster -> node -> GPU / port
    rows = [p["title"] for p in DASH["panels"] if p["type"] == "row"]
    assert rows[0] == "Cluster" and any("GPU" in r for r in rows) and any("RDMA" in r for r in rows)
    exprs = [t["expr"] for p in DASH["panels"] for t in p.get("targets") or []]
    assert any("vigil_gpu_pod_info" in e for e in exprs), "no pod attribution panel"
    for p in DASH["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
    # The drill-down links point back at this dashboard with the node variable.
    links = [lnk["url"] for p in DASH["panels"] for lnk in (p.get("fieldConfig") or {}).get("defaults", {}).get("links") or []]
    assert links and all(f"/d/{DASH['uid']}/" in u and "var-node=" in u for u in links)
    # The ConfigMap that Grafana's sidecar loads carries this very file.
    cm = one(rendered("monitoring"), "ConfigMap", "vigil-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(next(iter(cm["data"].values()))) == DASH


def test_template_variables_drill_down(stack):
    """cluster -> node: every fixture node is offered; node -> GPU: the node's GPUs; node -> RDMA device."""
    prom: Prometheus = stack["prom"]
    variables = {v["name"]: v for v in DASH["templating"]["list"]}

    def values(var: str, node: str) -> set[str]:
        query = variables[var]["query"]["query"]
        metric, label = query[len("label_values("):-1].rsplit(",", 1)
        return {r["metric"][label.strip()] for r in prom.query(substitute(metric, {"$node": node}))}

    assert values("node", ".*") == set(stack["nodes"].values())
    assert values("gpu", "mi300x-c14-faulty") == {str(i) for i in range(8)}
    assert values("gpu", "h100-n01") == {"0"}
    assert values("rdma_device", "rdma-port-down") == {f"mlx5_{i}" for i in range(8)}
    assert values("rdma_device", "mi300x-c14-faulty") == set()


@pytest.mark.parametrize("panel,target", targets())
def test_panel_query_returns_data(stack, panel, target):
    expr = substitute(target["expr"])
    result = stack["prom"].query(expr)
    assert result, f"panel {panel['title']!r}: no data for {expr}"


@pytest.mark.parametrize("node,fixture", [("mi300x-c14-faulty", "mi300x-faulty"), ("rdma-port-down", "rdma-port-down")])
def test_drill_down_to_one_node(stack, node, fixture):
    """With one node selected, the node rows show that node only, and its faults."""
    prom: Prometheus = stack["prom"]
    failed = prom.query(substitute('vigil_check_status{node=~"$node"} != 1', {"$node": node}))
    assert {r["metric"]["node"] for r in failed} == {node}
    checks = {(r["metric"]["check"], r["metric"]["entity"]) for r in failed}
    if fixture == "mi300x-faulty":
        assert ("gpu.ecc.uncorrectable", "gpu3") in checks and ("gpu.pcie.width", "gpu5") in checks
        pods = prom.query(substitute('vigil_gpu_pod_info{node=~"$node", gpu=~"$gpu"}', {"$node": node}))
        assert {(r["metric"]["gpu"], r["metric"]["namespace"], r["metric"]["pod"]) for r in pods} == {
            ("0", "ml", "llm-train-0"), ("1", "ml", "llm-train-0")}
    else:
        assert checks == {("rdma.port_state", "mlx5_3/1")}
        state = prom.query(substitute('vigil_rdma_port_state{node=~"$node", device=~"$rdma_device"}',
                                      {"$node": node, "$rdma_device": "mlx5_3"}))
        assert [r["value"][1] for r in state] == ["0"]


def active_alerts(prom: Prometheus) -> set[tuple[str, str, str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("node", ""), a["labels"].get("entity", ""), a["state"])
            for a in prom.api("alerts")["alerts"]}


def test_alerts_on_real_faults(stack):
    """The rules, loaded into the real Prometheus, on the fixtures' faults: each fault raises its alert (pending
    while its `for` runs, firing after), and nothing else is raised."""
    prom: Prometheus = stack["prom"]
    active = {(a, n, e) for a, n, e, _ in active_alerts(prom)}
    expected = {
        ("VigilGPUUnhealthy", "mi300x-c14-faulty", "gpu3"),  # gpu.ecc.uncorrectable
        ("VigilGPUUnhealthy", "mi300x-c14-ecc", "gpu6"), ("VigilGPUUnhealthy", "mi300x-c14-ecc", "gpu7"),  # gpu.xgmi
        ("VigilGPUDegraded", "mi300x-c14-faulty", "gpu5"),  # gpu.pcie.width
        # (gpu.ecc.correctable on mi300x-c14-ecc gpu1 is judged by rate once two readings exist: a replayed
        # snapshot does not grow, so the serving agent rightly reports it ok.)
        ("VigilGPUCheckUnknown", "mi300x-c14-smi-broken", "mi300x-c14-smi-broken"),  # gpu.count unknown
        ("VigilRDMAPortDown", "rdma-port-down", "mlx5_3/1"),
        ("VigilSysctlDrift", "mi300x-c14-faulty", ""),
        ("VigilNodeQuarantined", "", ""),
        ("VigilCordonBreakerOpen", "", ""),
    }
    assert expected <= active, f"missing: {expected - active}"
    raised = {a for a, _, _ in active}
    for quiet in ("VigilAgentDown", "VigilAgentsAbsent", "VigilAgentStreamDown", "VigilAggregatorNoLeader",
                  "VigilAggregatorSplitBrain", "VigilCollectorFailing", "VigilGPUSMIUnresponsive",
                  "VigilAgentStreamsRefused", "VigilAggregatorKubeErrors"):
        assert quiet not in raised, f"{quiet} raised on a healthy stack: {active}"
    firing = {(a, n) for a, n, _, s in active_alerts(prom) if s == "firing"}
    assert ("VigilCordonBreakerOpen", "") in firing  # for: 0m


def test_the_aggregator_acted_on_the_cluster(stack):
    """What the alerts and panels report happened in the (fake) cluster: the first unhealthy node is tainted and
    cordoned with Vigil's condition; the breaker held the others."""
    kube = stack["kube"]
    tainted = {n["metadata"]["name"] for n in kube.list("nodes")
               if any(t["key"] == "vigil.dev/unhealthy" for t in (n["spec"].get("taints") or []))}
    assert len(tainted) == 1 and tainted <= {"mi300x-c14-faulty", "mi300x-c14-ecc", "rdma-port-down"}


def test_agent_down_is_seen(stack):
    """Stop one agent: its target goes down and VigilAgentDown goes pending for that node (and only it)."""
    prom: Prometheus = stack["prom"]
    n, _, p = stack["agents"]["rdma-8port-healthy"]
    stack["procs"].stop(p)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        down = {(a, node) for a, node, _, _ in active_alerts(prom) if a == "VigilAgentDown"}
        if down:
            break
        time.sleep(0.5)
    assert down == {("VigilAgentDown", n)}
    assert prom.query(f'up{{job="vigil-agent", node="{n}"}} == 0')
