"""Helpers of the deployment tests: rendering with the real `kubectl kustomize`, the flags the real CLIs accept,
the rule file <-> PrometheusRule sync, and starting real processes (agents, the aggregator, Prometheus).

    .venv/bin/python tests/deploy/helpers.py sync-rules   # rewrite prometheusrule.yaml from vigil-alerts.yaml
"""
from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "daemonset"
MONITORING = DAEMONSET / "monitoring"
RULES = MONITORING / "vigil-alerts.yaml"
RULES_TEST = MONITORING / "vigil-alerts.test.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"
FIXTURES = ROOT / "fixtures" / "nodes"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
AGENT = BIN / "agent"
AGGREGATOR = BIN / "vigil-aggregator"

OVERLAYS = ["amd", "nvidia", "dry-run"]
# Everything `kubectl kustomize` must render: the base, each overlay, the monitoring objects.
TREES = {"base": DAEMONSET / "base", **{f"overlays/{o}": DAEMONSET / "overlays" / o for o in OVERLAYS},
         "monitoring": MONITORING}
# Kinds of the Prometheus Operator: CRDs, so no Kubernetes schema knows them; their structure is checked by hand.
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}

RULE_HEADER = ("# Generated from vigil-alerts.yaml (the groups are identical; tests/deploy/test_deploy_alerts.py fails on\n"
               "# any difference). Regenerate: .venv/bin/python tests/deploy/helpers.py sync-rules\n")


# -- rendering --------------------------------------------------------------------------------------------------
def kustomize(path: Path) -> list[dict]:
    """The objects `kubectl kustomize PATH` renders (offline: local directories only)."""
    p = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{p.stderr}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


@functools.lru_cache(maxsize=None)
def rendered(tree: str) -> tuple[dict, ...]:
    return tuple(kustomize(TREES[tree]))


def one(objs, kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objs, kind: str, name: str, cname: str) -> dict:
    spec = one(objs, kind, name)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == cname)


def prometheus_rule_object() -> dict:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "vigil", "labels": {"app.kubernetes.io/name": "vigil", "role": "alert-rules"}},
            "spec": {"groups": groups}}


def sync_rules() -> None:
    PROMETHEUS_RULE.write_text(RULE_HEADER + yaml.safe_dump(prometheus_rule_object(), sort_keys=False, width=120))


# -- the CLIs' flags -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def help_text(binary: Path) -> str:
    p = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{binary} --help exited {p.returncode}: {p.stderr}"
    return p.stdout


def help_flags(binary: Path) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text(binary)))


def help_choices(binary: Path) -> set[str]:
    """Positional sub-commands listed as {a,b,c} in the usage."""
    out: set[str] = set()
    for group in re.findall(r"\{([a-z,-]+)\}", help_text(binary)):
        out.update(group.split(","))
    return out


def split_args(args: list[str]) -> list[tuple[str, str | None]]:
    """['--a=1', '--b', '2', 'serve', '--c'] -> [('--a','1'), ('--b','2'), ('serve',None), ('--c',None)]."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            out.append((k, v))
        elif a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((a, args[i + 1]))
            i += 1
        else:
            out.append((a, None))
        i += 1
    return out


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args; an undefined variable is an error here (Kubernetes would pass it on
    literally, which the CLI would then reject or, worse, accept)."""
    def sub(m: re.Match) -> str:
        if m.group(1) not in env:
            raise KeyError(m.group(1))
        return env[m.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


# -- processes --------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, timeout: float = 60.0, want: int = 200, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited {proc.returncode} before {url} answered")
        try:
            code, _ = http_get(url, timeout=2)
            if code == want:
                return
            last = code
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {want} within {timeout}s (last: {last})")


class Procs:
    """Processes a test started; stopped (SIGTERM, then SIGKILL) by pid, in reverse order."""

    def __init__(self) -> None:
        self.items: list[tuple[subprocess.Popen, Path]] = []

    def start(self, args: list[str], log: Path, **kw) -> subprocess.Popen:
        fh = open(log, "wb")
        p = subprocess.Popen([str(a) for a in args], stdout=fh, stderr=subprocess.STDOUT, **kw)
        fh.close()
        self.items.append((p, log))
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def close(self) -> None:
        for p, _ in reversed(self.items):
            self.stop(p)

    def logs(self) -> str:
        out = []
        for p, log in self.items:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            out.append(f"--- {' '.join(map(str, p.args[:3]))} (rc {p.poll()}):\n{tail}")
        return "\n".join(out)


class Prometheus:
    """Debian's real Prometheus server on 127.0.0.1, its storage in a temporary directory."""

    def __init__(self, procs: Procs, workdir: Path, config: dict) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("prometheus is missing: scripts/install-deps.sh installs Debian's prometheus package")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc = procs.start([binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                workdir / "prometheus.log")
        wait_http(self.url + "/-/ready", timeout=60, proc=self.proc)

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        code, body = http_get(url, timeout=30)
        data = json.loads(body)
        assert code == 200 and data.get("status") == "success", f"{url}: {code} {data}"
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"value": data["result"]}]
        return data["result"]


def pod_monitor_scrape_config(pod_monitor: dict, targets: list[tuple[str, str, str, str]]) -> dict:
    """A Prometheus scrape config equivalent to what the Operator generates from the PodMonitor, for static
    targets (address, node, namespace, pod): the target labels Kubernetes service discovery and the Operator
    give a pod (namespace, pod, container, endpoint, and the node name for the relabeling), honor_labels, the
    relabelings (camelCase -> snake_case) and the job from jobLabel."""
    (ep,) = pod_monitor["spec"]["podMetricsEndpoints"]
    pod_labels = pod_monitor["spec"]["selector"]["matchLabels"]
    job = pod_labels[pod_monitor["spec"]["jobLabel"]]
    return {"job_name": job, "honor_labels": bool(ep.get("honorLabels", False)), "metrics_path": ep["path"],
            "static_configs": [{"targets": [addr], "labels": {"__meta_kubernetes_pod_node_name": node,
                                                              "namespace": ns, "pod": pod, "container": "agent",
                                                              "endpoint": ep["port"]}}
                               for addr, node, ns, pod in targets],
            "relabel_configs": pod_monitor_relabel_configs(pod_monitor)}


def pod_monitor_relabel_configs(pod_monitor: dict) -> list[dict]:
    """The PodMonitor's relabelings as Prometheus relabel_configs (the Operator's camelCase -> snake_case)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label", "action": "action",
            "regex": "regex", "replacement": "replacement", "separator": "separator", "modulus": "modulus"}
    out = []
    for ep in pod_monitor["spec"]["podMetricsEndpoints"]:
        for r in ep.get("relabelings") or []:
            out.append({keys[k]: v for k, v in r.items()})
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["sync-rules"]:
        sync_rules()
        print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
    else:
        sys.exit(__doc__)
