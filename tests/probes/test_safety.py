"""The safety rules of DESIGN §8 with real parts: the kubelet's PodResources API served on a real unix socket
(tests/containers/helpers.PodResources), fake `dcgmi` binaries that log how they were called, and two real
`agent validate` processes contending for the node's probe lock."""
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from agent.base import tools
from agent.probes import validate as v
from agent.probes.validate import Holdings
from tests.containers.helpers import PodResources, dra
from tests.probes.helpers import PROBE_FIXTURES, ROOT, agent, fake_tool, replay, settings

PASS = PROBE_FIXTURES / "dcgm" / "dcgm-3.1-pass-8gpu.txt"
UUID0 = "GPU-11111111-2222-3333-4444-555555555550"
UUID1 = "GPU-11111111-2222-3333-4444-555555555551"


@pytest.fixture(autouse=True)
def _tools_open():
    yield
    tools.shutdown(refuse_new=False)


@pytest.fixture
def dcgmi(tmp_path):
    log = tmp_path / "dcgmi.args"
    path = replay(tmp_path / "bin", "dcgmi", PASS, args_log=log)
    s = settings(tmp_path, dcgm={"path": str(path)})
    return s, log


@pytest.fixture
def kubelet(tmp_path):
    sock = tmp_path / "kubelet.sock"
    server = PodResources(str(sock))
    yield server
    server.stop()


def gpus():
    return SimpleNamespace(gpus=[SimpleNamespace(index=0, vendor="nvidia", uuid=UUID0, pci_bus_id="0000:18:00.0",
                                                 partition="", model="NVIDIA H200"),
                                 SimpleNamespace(index=1, vendor="nvidia", uuid=UUID1, pci_bus_id="0000:2a:00.0",
                                                 partition="", model="NVIDIA H200")])


def test_without_attribution_a_probe_is_refused_and_never_started(dcgmi):
    s, log = dcgmi
    val = v.validate(s, ["dcgm"], node="n1")
    f = val.findings[0]
    assert f.status == "unknown" and "which pod holds which device is unknown" in f.message
    assert val.exit_code() == 2 and not log.exists()


def test_a_quarantined_node_runs_without_attribution(dcgmi):
    s, log = dcgmi
    assert v.validate(s, ["dcgm"], node="n1", quarantined=True).exit_code() == 0 and log.exists()


def test_no_pod_holding_a_gpu_lets_every_gpu_be_tested(dcgmi, kubelet):
    s, log = dcgmi
    s.podresources_socket = kubelet.socket
    kubelet.set({("ml", "cpu-only"): {"c": [("example.com/foo", ["x"])]}})
    val = v.validate(s, ["dcgm"], node="n1")
    assert val.exit_code() == 0 and "-i" not in log.read_text().split()
    assert "no GPU held" in val.holdings and kubelet.calls == 1


def test_a_held_gpu_is_left_out_when_the_gpus_are_known(dcgmi, kubelet):
    s, log = dcgmi
    s.podresources_socket = kubelet.socket
    kubelet.set({("ml", "train-0"): {"main": [("nvidia.com/gpu", [UUID1])]}})
    val = v.validate(s, ["dcgm"], node="n1", facts=gpus())
    assert log.read_text().split() == ["diag", "-r", "2", "-j", "-i", "0"]
    by = {f.entity: f for f in val.findings if f.check == "probe.dcgm"}
    assert by["gpu0"].status == "ok"
    # the held GPU was not tested: unknown, never a pass (the fake's 8-GPU report is not trusted for it)
    assert by["gpu1"].status == "unknown" and "not tested: held by ml/train-0" in by["gpu1"].message
    assert val.exit_code() == 2 and val.results[0].status == "unknown"


def test_a_held_gpu_refuses_the_probe_when_the_gpus_are_not_known(dcgmi, kubelet):
    s, log = dcgmi
    s.podresources_socket = kubelet.socket
    kubelet.set({("ml", "train-0"): {"main": [("nvidia.com/gpu", [UUID1])]}})
    val = v.validate(s, ["dcgm"], node="n1")
    assert val.exit_code() == 2 and "ml/train-0" in val.findings[0].message and not log.exists()


def test_an_unrecognisable_dra_device_keeps_the_probe_off(dcgmi, kubelet):
    s, log = dcgmi
    s.podresources_socket = kubelet.socket
    kubelet.set({("ml", "p"): {"c": [dra("gpu.example.com", "gpu-7", [])]}})
    val = v.validate(s, ["dcgm"], node="n1", facts=gpus())
    assert val.exit_code() == 2 and not log.exists()


def test_every_gpu_held_refuses(dcgmi):
    s, log = dcgmi
    held = v.holdings_from([SimpleNamespace(ref=SimpleNamespace(namespace="a", pod="b"), resource="nvidia.com/gpu",
                                            source="device-plugin", match_text=(u,)) for u in (UUID0, UUID1)])
    val = v.validate(s, ["dcgm"], node="n1", facts=gpus(), holdings=held)
    assert "every GPU is held" in val.findings[0].message and not log.exists()


def test_force_skips_attribution(dcgmi):
    s, log = dcgmi
    val = v.validate(s, ["dcgm"], node="n1", force=True, holdings=Holdings(False, why="x"))
    assert val.exit_code() == 0 and val.forced


def test_two_validations_never_run_at_once(tmp_path):
    """Two real `agent validate` processes: the second finds the lock held and exits 2 without starting its
    probe; the first goes on and passes."""
    started = tmp_path / "started"
    fake_tool(tmp_path / "bin", "dcgmi", f'echo "$$" >> "{started}"\nsleep 3\ncat "{PASS}"')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"probes:\n  state_dir: {tmp_path / 'state'}\n  dcgm: {{path: {tmp_path / 'bin' / 'dcgmi'}}}\n")
    env = dict(PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-m", "agent.cli", "validate", "-c", str(cfg), "--force",
                              "--probe", "dcgm"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        second = agent("validate", "-c", str(cfg), "--force", "--probe", "dcgm", "--json")
        assert second.returncode == 2, second.stderr
        doc = json.loads(second.stdout)
        assert "another validation is running" in doc["findings"][0]["message"]
        assert len(started.read_text().split()) == 1  # the second never started dcgmi
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
        first.wait()
    # the lock went with its holder: a third run goes ahead
    assert agent("validate", "-c", str(cfg), "--force", "--probe", "dcgm").returncode == 0
