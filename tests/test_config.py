"""Configuration: a bad key or value is refused with a message that names it, and the CLI exits 78."""
import subprocess

import pytest

from agent.base.config import ConfigError, load
from agent.run.loop import collector_schemas
from tests.support import AGENT


@pytest.mark.parametrize("text, key", [
    ("gpus: {}", "gpus: unknown section"),
    ("gpu: {interval_secs: 5}", "gpu.interval_secs: unknown key"),
    ("gpu: {interval_seconds: fast}", "gpu.interval_seconds: expected a number"),
    ("gpu: {interval_seconds: 0}", "gpu.interval_seconds: must be > 0"),
    ("gpu: {backend: rocm}", "gpu.backend: must be one of"),
    ("gpu: {enabled: 'yes'}", "gpu.enabled: expected true or false"),
    ("gpu: {temperature_fatal_celsius: {hbm: 90}}", "gpu.temperature_fatal_celsius.hbm: unknown sensor"),
    ("gpu: {ecc_uncorrectable_max: 1.5}", "gpu.ecc_uncorrectable_max: expected an integer"),
    ("agent: {listen: 'localhost'}", "agent.listen: expected HOST:PORT"),
    ("agent: {expect: {gpus: eight}}", "agent.expect.gpus:"),
    ("- a list", "<top>: expected a mapping"),
])
def test_bad_config_names_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        load(None, collector_schemas(), text=text)
    assert str(e.value).startswith(key)


def test_defaults_and_overrides():
    cfg = load(None, collector_schemas(), text="gpu: {interval_seconds: 5, temperature_warning_celsius: {edge: 80}}")
    gpu = cfg.section("gpu")
    assert gpu.interval_seconds == 5.0 and gpu.timeout_seconds == 8.0
    assert gpu.temperature_warning_celsius == {"edge": 80.0}
    assert cfg.agent.listen.endswith(":9847")


def test_cli_exits_78_naming_the_key(tmp_path):
    bad = tmp_path / "vigil.yaml"
    bad.write_text("gpu:\n  busy_utilization_ratio: 3\n")
    p = subprocess.run([AGENT, "--once", "--config", str(bad)], capture_output=True, text=True)
    assert p.returncode == 78
    assert "gpu.busy_utilization_ratio" in p.stderr


def test_cli_exits_78_on_a_bad_node_json(tmp_path):
    (tmp_path / "node.json").write_text('{"node": "x", "expected": {"gpus": 8}}')
    p = subprocess.run([AGENT, "--once", "--snapshot", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 78 and "expected: unknown key" in p.stderr


@pytest.mark.parametrize("argv", [["--bogus"], ["--json"], ["--tune"], ["snapshot"], ["--only", "gpux", "--once"],
                                  ["--snapshot", "/no/such/dir", "--once"]])
def test_bad_usage_exits_64(argv):
    p = subprocess.run([AGENT, *argv], capture_output=True, text=True)
    assert p.returncode == 64, p.stderr
    assert p.stderr.strip()


@pytest.mark.parametrize("text, key", [
    ("stream: {batch_size: 0}", "stream.batch_size: must be >= 1"),
    ("stream: {spool: /x}", "stream.spool: unknown key"),
    ("stream: {heartbeat_seconds: -1}", "stream.heartbeat_seconds: must be > 0"),
])
def test_bad_stream_config_names_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        load(None, collector_schemas(), text=text)
    assert str(e.value).startswith(key)


def test_the_readme_configuration_example_is_valid():
    """The YAML an operator copies from the README must load as it is."""
    from tests.support import ROOT

    text = (ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    block = text.split("```yaml", 1)[1].split("```", 1)[0]
    cfg = load(None, collector_schemas(), text=block)
    assert cfg.agent.expect.gpus == 8 and cfg.section("gpu").backend == "auto"
    assert cfg.section("sysctl").mode == "report" and cfg.stream.clear_after == 2
