"""Configuration: a bad key or value is refused with a message that names it, and the CLI exits 78."""
import os
import subprocess
import sys

import pytest

from agent.base.config import ConfigError, load
from agent.run.loop import collector_schemas
from tests.support import AGENT, ROOT


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


# -- issue 12 item 10: every value type-, range- and finiteness-checked; files capped; never a traceback ------
def agent_cli(*args, timeout=60):
    """This checkout's `agent` (the venv's console script may import another checkout's code)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def once_with_config(tmp_path, body: bytes | str, *extra):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_bytes(body.encode() if isinstance(body, str) else body)
    return agent_cli("--once", "--snapshot", "mi300x-rocm71-healthy", "--config", str(cfg), *extra), cfg


HARMFUL = [
    # (config, key the message must start with) -- each accepted before, and harmful on a node
    ("gpu: {interval_seconds: 1.0e+300}", "gpu.interval_seconds"),  # the loop thread died: /healthz 503
    ("gpu: {interval_seconds: .nan}", "gpu.interval_seconds"),  # a busy loop at 100% CPU, /healthz 200
    ("gpu: {ecc_uncorrectable_max: -1}", "gpu.ecc_uncorrectable_max"),  # 8 false fatals
    ("gpu: {temperature_fatal_celsius: {edge: .nan}}", "gpu.temperature_fatal_celsius.edge"),  # 120 C: a warning
    ("stream: {heartbeat_seconds: .nan}", "stream.heartbeat_seconds"),
    ("agent: {expect: {gpus: -3}}", "agent.expect.gpus"),
    ("gpu: {smi_timeout_seconds: -1}", "gpu.smi_timeout_seconds"),
    ("stream: {aggregator: ':::'}", "stream.aggregator"),
    ("gpu: {timeout_seconds: .inf}", "gpu.timeout_seconds"),  # was a KeyError traceback, exit 1
    ("agent: {listen: '0.0.0.0:\u00b2'}", "agent.listen"),  # "²".isdigit(): a ValueError traceback
    (f"gpu: {{interval_seconds: {10**400}}}", "gpu.interval_seconds"),  # OverflowError traceback
    (f"gpu: {{ecc_uncorrectable_max: {10**400}}}", "gpu.ecc_uncorrectable_max"),
    ("gpu: {temperature_warning_celsius: {junction: 5000}}", "gpu.temperature_warning_celsius.junction"),
    ("gpu_events: {xid_severity: {'\u00b2': ignore}}", "gpu_events.xid_severity.\u00b2"),
    ("gpu: false", "gpu: expected a mapping"),  # was silently the defaults: the GPU checks still on
    ("rdma: {symbol_error_warning_per_second: .inf}", "rdma.symbol_error_warning_per_second"),
    ("netflow: {rtt_warning_seconds: {dns: -1}}", "netflow.rtt_warning_seconds.dns"),
    ("stream: {max_events: 100000000000}", "stream.max_events"),
    ("sysctl: {profile: {vm.max_map_count: 100000000000000000000000}}", "sysctl.profile.vm.max_map_count"),
]


@pytest.mark.parametrize("text, key", HARMFUL)
def test_harmful_values_exit_78_naming_the_key(tmp_path, text, key):
    p, _ = once_with_config(tmp_path, text)
    assert p.returncode == 78, p.stdout + p.stderr
    assert p.stderr.startswith(f"agent: bad configuration: {key}"), p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("body, says", [
    (b"gpu:\n  backend: auto\nagent: {node_name: caf\xe9}\n", "not UTF-8 (byte 0xe9 on line 3)"),
    ("gpu: {interval_seconds: 5}\n".encode("utf-16"), "encoded as UTF-16"),
    ("gpu: {backend: " + "[" * 5000 + "]" * 5000 + "}\n", "nested deeper than 32 levels"),
    (f"gpu: {{ecc_uncorrectable_max: {'9' * 5000}}}\n", "integer too long (5000 digits)"),
    ("gpu: {ecc_uncorrectable_max: 0, ecc_uncorrectable_max: 5}\n", "duplicate key 'ecc_uncorrectable_max'"),
    ("agent: {node_name: 2024-02-30}\n", "day is out of range"),
    (b"x" * (2 << 20), "larger than 1048576 bytes"),
])
def test_unreadable_config_files_exit_78_naming_the_file(tmp_path, body, says):
    p, cfg = once_with_config(tmp_path, body)
    assert p.returncode == 78, p.stderr
    assert p.stderr.startswith(f"agent: bad configuration: {cfg}: ") and says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_config_from_a_device_that_never_ends_is_refused():
    p = agent_cli("--once", "--snapshot", "mi300x-rocm71-healthy", "--config", "/dev/zero", timeout=30)
    assert p.returncode == 78 and "/dev/zero: larger than" in p.stderr, p.stderr


@pytest.mark.parametrize("doc, says", [
    ("[" * 30000 + "]" * 30000, "nested deeper than 32 levels"),  # under the size cap: the depth check
    ("[" * 100000 + "]" * 100000, "larger than 65536 bytes"),  # was a RecursionError traceback and exit 1
    ('{"node": ["a"]}', "node: expected a string"),  # was accepted
    ('{"node": "n1", "expect": {"gpus": -3}}', "expect.gpus: must be within"),
    ('{"node": "n 1"}', "node: not a node name"),
])
def test_bad_node_json_exits_78_naming_the_file(tmp_path, doc, says):
    (tmp_path / "node.json").write_text(doc)
    p = agent_cli("--once", "--snapshot", str(tmp_path))
    assert p.returncode == 78, p.stdout + p.stderr
    assert f"{tmp_path / 'node.json'}: " in p.stderr and says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("argv, flag", [
    (["--once", "--listen", "0.0.0.0:\u00b2"], "--listen"),
    (["--once", "--listen", ":::"], "--listen"),
    (["--once", "--node-name", "two words"], "--node-name"),
    (["--flows", "0"], "--flows"),
    (["--flows", "-5"], "--flows"),
])
def test_bad_flag_values_exit_64_naming_the_flag(argv, flag):
    p = agent_cli(*argv)
    assert p.returncode == 64, p.stdout + p.stderr
    assert flag in p.stderr.splitlines()[-1] and "Traceback" not in p.stderr

