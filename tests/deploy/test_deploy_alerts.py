"""Alerting rules (daemonset/monitoring/vigil-alerts.yaml) with the real promtool (Debian's prometheus package):
`promtool check rules`, `promtool test rules` (vigil-alerts.test.yaml), the PrometheusRule object identical to the
rule file, and the rules held to the code: every check and metric they name exists, every check the code can
judge fatal raises a critical alert, and the checks the rules treat as warnings are never fatal in the code.
(The same rules run in a real Prometheus against real agents in test_deploy_dashboard.py.)
"""
from __future__ import annotations

import ast
import re
import subprocess

import pytest
import yaml

from .helpers import (PROMETHEUS_RULE, ROOT, RULE_HEADER, RULES, RULES_TEST, prometheus_rule_object,
                      rendered)

# What the issue asks alerts for, and the rule that answers each.
REQUIRED = {"GPU unhealthy": "VigilGPUUnhealthy", "RDMA port down": "VigilRDMAPortDown",
            "agent down": "VigilAgentDown", "agent silent": "VigilAgentSilent",
            "node cordoned by Vigil": "VigilNodeQuarantined", "breaker open": "VigilCordonBreakerOpen",
            "collector failing": "VigilCollectorFailing", "sysctl drift": "VigilSysctlDrift",
            "SMI unresponsive": "VigilGPUSMIUnresponsive"}
# Metrics the rules may use that Vigil does not export.
FOREIGN_METRICS = {"up", "kube_node_spec_taint"}


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules(promtool):
    p = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(rules())} rules found" in p.stdout


def test_promtool_unit_tests(promtool):
    p = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120,
                       cwd=RULES_TEST.parent)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_every_alert_is_unit_tested_firing():
    """Each alert appears in a promtool test case that expects it to fire (not only cases expecting silence)."""
    tested = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for t in case.get("alert_rule_test") or []:
            if t.get("exp_alerts"):
                tested.add(t["alertname"])
    assert {r["alert"] for r in rules()} == tested


def test_prometheus_rule_object_is_the_rule_file(tmp_path, promtool):
    """The PrometheusRule that kustomize renders carries exactly the rule file's groups; extracted again, promtool
    accepts it. The file on disk is the generated one (tests/deploy/helpers.py sync-rules)."""
    expected_text = RULE_HEADER + yaml.safe_dump(prometheus_rule_object(), sort_keys=False, width=120)
    assert PROMETHEUS_RULE.read_text() == expected_text, "run: .venv/bin/python tests/deploy/helpers.py sync-rules"
    obj = next(o for o in rendered("monitoring") if o["kind"] == "PrometheusRule")
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    out = tmp_path / "from-prometheusrule.yaml"
    out.write_text(yaml.safe_dump({"groups": obj["spec"]["groups"]}))
    p = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_required_alerts_exist_with_severity_and_text():
    by_name = {r["alert"]: r for r in rules()}
    for need, name in REQUIRED.items():
        assert name in by_name, f"no alert for {need}"
    for r in by_name.values():
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


# -- the rules against the code ------------------------------------------------------------------------------
def code_metric_names() -> set[str]:
    names = set()
    for p in (ROOT / "agent").rglob("*.py"):
        names |= set(re.findall(r"\"(vigil_[a-z0-9_]+)\"", p.read_text()))
    return names


def test_rules_use_only_metrics_the_code_exports():
    exported = code_metric_names()
    for r in rules():
        used = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\)|==|!=|>|<|\s+and|\s*$)", r["expr"]))
        metrics = {m for m in used if m.startswith("vigil_") or m in FOREIGN_METRICS}
        assert metrics, r["alert"]
        for m in metrics - FOREIGN_METRICS:
            assert m in exported, f"{r['alert']} uses {m}, which no code exports"


FINDING_FUNCS = {"bad", "ok", "unknown"}


def _name(node: ast.AST, local: dict[str, ast.AST]) -> str | None:
    if isinstance(node, ast.Name) and node.id in local:
        node = local[node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)
    return None  # computed elsewhere: the gpu_events checks, handled by their CHECK_KIND table


def code_checks() -> dict[str, set[str]]:
    """check name (or pattern with *) -> severities of its unhealthy findings in the code ("dynamic" when the
    severity is computed). From every bad(...) call in agent/ (a name may be a local `check = f"..."`)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / "agent").rglob("*.py"):
        if "probes" in path.relative_to(ROOT).parts:
            continue  # probe findings are exported as vigil_probe_check_status (agent validate), not vigil_check_status
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            local = {t.id: n.value for n in ast.walk(fn) if isinstance(n, ast.Assign)
                     for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, (ast.Constant, ast.JoinedStr))}
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                funcs = [node.func.body, node.func.orelse] if isinstance(node.func, ast.IfExp) else [node.func]
                names = {getattr(f, "id", getattr(f, "attr", None)) for f in funcs}
                if "bad" not in names:
                    continue
                name = _name(node.args[0], local)
                if name is None:
                    continue
                sev_node = next((k.value for k in node.keywords if k.arg == "severity"),
                                node.args[4] if len(node.args) > 4 else None)
                sev = "fatal" if sev_node is None else (sev_node.id.lower() if isinstance(sev_node, ast.Name)
                                                        else "dynamic")
                out.setdefault(name, set()).add(sev)
    return out


def matchers(expr: str) -> list[tuple[str, str]]:
    return [(op, v.replace("\\\\", "\\")) for op, v in re.findall(r'check\s*(=~|!~|=|!=)\s*"([^"]*)"', expr)]


def selects(expr: str, check: str) -> bool:
    ok = True
    for op, v in matchers(expr):
        hit = re.fullmatch(v, check) is not None if op in ("=~", "!~") else v == check
        ok &= hit if op in ("=~", "=") else not hit
    return ok and bool(matchers(expr))


EXPAND = {"gpu.*": ["gpu.xgmi", "gpu.nvlink"],  # link checks: f"gpu.{kind}" (README)
          "gpu.temperature.*": ["gpu.temperature.edge", "gpu.temperature.junction", "gpu.temperature.memory"]}


def concrete(name: str) -> list[str]:
    if "*" not in name:
        return [name]
    assert name in EXPAND, f"new dynamic check name {name!r}: say in EXPAND which names it takes"
    return EXPAND[name]


def test_fatal_checks_raise_critical_alerts():
    critical = [r for r in rules() if r["labels"]["severity"] == "critical" and "vigil_check_status" in r["expr"]]
    from agent.sources.gpu_events.rules import CHECK_KIND  # sticky event checks: gpu.xid, gpu.ras, gpu.cper, ...
    checks = code_checks()
    fatal = [c for name, sevs in checks.items() if "fatal" in sevs or "dynamic" in sevs for c in concrete(name)]
    fatal += list(CHECK_KIND)
    # Temperatures: fatal above the fatal threshold, warning above the warning one; the metric cannot tell which,
    # so they have their own (warning) alert, VigilGPUTemperature.
    fatal = [c for c in fatal if not c.startswith("gpu.temperature.")]
    assert {"gpu.ecc.uncorrectable", "gpu.count", "gpu.smi_unresponsive", "rdma.port_state"} <= set(fatal)
    for check in fatal:
        assert any(selects(r["expr"], check) for r in critical), f"fatal check {check} raises no critical alert"
    temp = next(r for r in rules() if r["alert"] == "VigilGPUTemperature")
    assert all(selects(temp["expr"], c) for c in EXPAND["gpu.temperature.*"])


def test_warning_rules_name_only_checks_that_never_fail_fatally():
    checks = code_checks()
    for r in rules():
        # Rules on unhealthy (== 0) below critical; VigilGPUCheckUnknown (== -1) is about unknown, any check.
        if r["labels"]["severity"] == "critical" or not re.search(r"vigil_check_status.*== 0", r["expr"], re.S):
            continue
        names = [c for name in checks for c in concrete(name) if selects(r["expr"], c)]
        assert names, f"{r['alert']} selects no check the code has"
        for c in names:
            pattern = next(n for n in checks if c in concrete(n))
            if c.startswith("gpu.temperature."):
                continue
            assert checks[pattern] <= {"warning", "info"}, f"{r['alert']} ({r['labels']['severity']}) covers {c}, " \
                                                             f"which the code can fail as {checks[pattern]}"


def test_every_check_an_alert_names_exists_in_the_code():
    from agent.sources.gpu_events.rules import CHECK_KIND
    known = {c for n in code_checks() for c in concrete(n)} | set(CHECK_KIND)
    for r in rules():
        for op, v in matchers(r["expr"]):
            if op == "=":
                assert v in known, f"{r['alert']}: no check {v} in the code"
            elif op == "=~":
                assert any(re.fullmatch(v, c) for c in known), f"{r['alert']}: {v} matches no check in the code"


@pytest.mark.parametrize("alert", ["VigilGPUDegraded"])
def test_warning_only_gpu_list_is_complete(alert):
    """Every GPU check the code only ever warns about is in the warning list (else it would page as critical)."""
    rule = next(r for r in rules() if r["alert"] == alert)
    for name, sevs in code_checks().items():
        if name.startswith("gpu.") and sevs <= {"warning", "info"}:
            for c in concrete(name):
                assert selects(rule["expr"], c), f"{c} only warns in the code but {alert} does not cover it"


def test_the_rule_file_header_gives_vigil_check_status_the_labels_the_agent_exports():
    """The header once said vigil_check_status had no severity label after the agent had gained one: a rule
    writer trusting it would miss `severity="fatal"`. It must name the labels the code declares."""
    from agent.run.loop import CHECK_STATUS

    header = "".join(line for line in RULES.read_text().splitlines(keepends=True) if line.startswith("#"))
    header = " ".join(line.lstrip("# ") for line in header.splitlines())
    named = re.search(r"vigil_check_status\{([a-z_,]+)\}", header)
    assert named, "the header should say which labels vigil_check_status carries"
    assert tuple(named.group(1).split(",")) == CHECK_STATUS.labels
    assert "no severity label" not in header
