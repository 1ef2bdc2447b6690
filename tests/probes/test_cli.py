"""`agent validate` as an operator runs it: a table or JSON like --once, the same exit codes."""
import json
import subprocess

import pytest

from tests.probes.helpers import PROBE_FIXTURES, agent, fake_tool, replay

D = PROBE_FIXTURES / "dcgm"


def config(tmp_path, dcgmi, extra=""):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"probes:\n  state_dir: {tmp_path / 'state'}\n  dcgm: {{path: {dcgmi}, "
                   f"quick_timeout_seconds: 2}}\n{extra}")
    return str(cfg)


@pytest.mark.parametrize("fixture,code,rc,words", [
    ("dcgm-3.1-pass-8gpu.txt", 0, 0, ["HEALTHY", "probe.dcgm ", "gpu7", "10 tests passed"]),
    ("dcgm-4.x-fail-temperature.json", 226, 1, ["UNHEALTHY", "probe.dcgm", "gpu0", "FATAL", "Temperature 95"]),
])
def test_table_and_exit_code(tmp_path, fixture, code, rc, words):
    tool = replay(tmp_path / "bin", "dcgmi", D / fixture, code)
    p = agent("validate", "-c", config(tmp_path, tool), "--force")
    assert p.returncode == rc, p.stdout + p.stderr
    for w in words:
        assert w in p.stdout
    assert "attribution: not checked (--force)" in p.stdout


def test_a_hang_exits_2_and_json_says_why(tmp_path):
    tool = fake_tool(tmp_path / "bin", "dcgmi", "exec sleep 1000")
    p = agent("validate", "-c", config(tmp_path, tool), "--force", "--json", "--probe", "dcgm")
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert doc["status"] == "unknown" and doc["probes"][0]["status"] == "unknown"
    assert "did not finish in 2s" in doc["findings"][0]["message"]


def test_metrics_file(tmp_path, promtool):
    tool = replay(tmp_path / "bin", "dcgmi", D / "dcgm-4.x-fail-temperature.json", 226)
    out = tmp_path / "probe.prom"
    p = agent("validate", "-c", config(tmp_path, tool), "--force", "--metrics-file", str(out))
    assert p.returncode == 1
    text = out.read_text()
    assert 'vigil_probe_result{probe="dcgm"} 0.0' in text
    assert 'vigil_probe_check_status{check="probe.dcgm",entity="gpu0",probe="dcgm"} 0.0' in text
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_builtin_metrics_carry_measured_value(tmp_path, promtool):
    out = tmp_path / "probe.prom"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"probes:\n  state_dir: {tmp_path / 'state'}\n")
    p = agent("validate", "-c", str(cfg), "--force", "--probe", "builtin", "--metrics-file", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    text = out.read_text()
    assert 'vigil_probe_measured_value{check="probe.builtin.matmul_tflops",entity="cpu",probe="builtin"}' in text
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_usage_and_config_errors(tmp_path):
    tool = replay(tmp_path / "bin", "dcgmi", D / "dcgm-3.1-pass-8gpu.txt")
    p = agent("validate", "-c", config(tmp_path, tool), "--probe", "nosuch")
    assert p.returncode == 64 and "unknown probe 'nosuch'" in p.stderr
    p = agent("validate", "--level", "long")
    assert p.returncode == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("probes: {dcgm: {quick_level: 9}}\n")
    p = agent("validate", "-c", str(bad))
    assert p.returncode == 78 and "probes.dcgm.quick_level" in p.stderr
