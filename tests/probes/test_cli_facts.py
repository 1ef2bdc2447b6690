"""`agent validate` gathers the facts the streamed validation has: the GPU inventory from the node's GPU source
(here the recorded MI300X node fixtures/nodes/mi300x-faulty, read through `--snapshot` by the real GPU source),
and which pod holds which GPU from the kubelet's PodResources API (a real gRPC server on a unix socket,
tests/containers/helpers.PodResources). The probe is a fake `rvs`, a real executable that copies the conf it
was given and replays rvs's output for two MI300X (fixtures/probes/rvs, constructed from rvs's own format
strings); the snapshot is copied with a KFD topology added (gpu_id per PCI address, as amdgpu lays it out), so
rvs can be pointed at the free GPUs. Everything runs through the real CLI in a child process."""
import json
import re
import shutil

import pytest

from tests.containers.helpers import PodResources
from tests.probes.helpers import PROBE_FIXTURES, ROOT, agent, fake_tool

PASS = PROBE_FIXTURES / "rvs" / "constructed-quick-pass-mi300x.txt"
FAIL = PROBE_FIXTURES / "rvs" / "constructed-quick-fail-mi300x.txt"
# mi300x-faulty's GPUs in amd-smi order (gpu0..gpu7); the rvs fixture names KFD gpu_ids 40123 and 51234
BUSES = ["0000:0c:00.0", "0000:22:00.0", "0000:38:00.0", "0000:5c:00.0", "0000:9f:00.0", "0000:af:00.0",
         "0000:bf:00.0", "0000:df:00.0"]
GPU_IDS = [40123, 60001, 51234, 60003, 60004, 60005, 60006, 60007]


def snapshot(tmp_path, gpus=range(8)):
    """mi300x-faulty with a KFD topology for `gpus` (the GPUs rvs sees)."""
    snap = tmp_path / "snap"
    shutil.rmtree(snap, ignore_errors=True)
    shutil.copytree(ROOT / "fixtures" / "nodes" / "mi300x-faulty", snap)
    nodes = snap / "sys" / "class" / "kfd" / "kfd" / "topology" / "nodes"
    for n, i in enumerate(gpus, start=2):  # KFD nodes 0-1 are the CPUs
        (nodes / str(n)).mkdir(parents=True)
        (nodes / str(n) / "gpu_id").write_text(f"{GPU_IDS[i]}\n")
        (nodes / str(n) / "properties").write_text(f"location_id {int(BUSES[i][5:7], 16) << 8}\ndomain 0\n")
    return snap


@pytest.fixture
def node(tmp_path):
    return snapshot(tmp_path)


@pytest.fixture
def kubelet(tmp_path):
    server = PodResources(str(tmp_path / "kubelet.sock"))
    yield server
    server.stop()


def config(tmp_path, output=PASS, socket=None):
    seen = tmp_path / "seen.conf"
    rvs = fake_tool(tmp_path / "bin", "rvs", f'cp "$2" "{seen}"\ncat "{output}"\n'
                    + ("exit 1" if output == FAIL else "exit 0"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"probes:\n  state_dir: {tmp_path / 'state'}\n  rvs: {{path: {rvs}}}\n"
                   f"  podresources_socket: {socket or tmp_path / 'no-kubelet.sock'}\n"
                   f"  containerd_socket: {tmp_path / 'no-containerd.sock'}\n")
    return str(cfg), seen


def devices(seen):
    return set(re.findall(r"^  device: (.*)$", seen.read_text(), re.M))


def test_held_gpus_are_skipped_and_the_rest_judged_against_the_models_floor(tmp_path, node, kubelet):
    # AMD's device plugin names a GPU by its PCI address; six of the eight are held, gpu0 and gpu2 are free
    kubelet.set({("ml", "train-0"): {"main": [("amd.com/gpu", [BUSES[1]])]},
                 ("ml", "train-1"): {"main": [("amd.com/gpu", BUSES[3:])]}})
    cfg, seen = config(tmp_path, socket=kubelet.socket)
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs", "--json")
    assert p.returncode == 2, p.stdout + p.stderr  # not every GPU validated: never a pass
    doc = json.loads(p.stdout)
    assert devices(seen) == {"40123 51234"}  # rvs was pointed at gpu0 and gpu2 only
    assert kubelet.calls == 1 and doc["attribution"].startswith("read from PodResources: GPUs held by ml/train-0")
    assert {g["model"] for g in doc["gpus"]} == {"AMD Instinct MI300X"} and len(doc["gpus"]) == 8
    assert "amd-smi" in doc["inventory"]
    floors = doc["floors"]["AMD Instinct MI300X"]
    assert floors["matmul_tflops"]["value"] == pytest.approx(457.59) and "MI300X datasheet" in \
        floors["matmul_tflops"]["source"]
    skipped = {s["gpu"]: s for s in doc["skipped"]}
    assert set(skipped) == {"gpu1", "gpu3", "gpu4", "gpu5", "gpu6", "gpu7"}
    assert skipped["gpu1"]["held_by"] == ["ml/train-0"] and skipped["gpu1"]["probe"] == "rvs"
    by = {(f["check"], f["entity"]): f for f in doc["findings"]}
    gst = by[("probe.rvs.gst", "gpu0")]  # judged: the floor the node's model has
    assert gst["status"] == "ok" and gst["threshold"] == pytest.approx(457.59) and gst["value"] == 561.34
    assert by[("probe.rvs", "gpu1")]["status"] == "unknown" and "held by ml/train-0" in \
        by[("probe.rvs", "gpu1")]["message"]

    # the table says the same, in words
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs")
    assert p.returncode == 2
    assert "GPUs: 8 x AMD Instinct MI300X (gpu0-gpu7)" in p.stdout
    assert "matmul_tflops 457.59 TFLOP/s" in p.stdout
    assert "skipped gpu1 for rvs: held by ml/train-0" in p.stdout
    assert "skipped gpu7 for rvs: held by ml/train-1" in p.stdout


def test_every_gpu_free_passes_and_a_gpu_under_its_floor_fails(tmp_path, node, kubelet):
    kubelet.set({("ml", "cpu-only"): {"c": [("example.com/foo", ["x"])]}})
    cfg, seen = config(tmp_path, socket=kubelet.socket)
    # rvs reports two GPUs of the eight KFD lists: the other six were not validated
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs", "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    node = snapshot(tmp_path, gpus=(0, 2))  # a node whose KFD lists the two GPUs rvs reports
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["status"] == "healthy" and doc["skipped"] == [] and devices(seen) == {"all"}
    assert "no GPU held" in doc["attribution"]

    cfg, _ = config(tmp_path, output=FAIL, socket=kubelet.socket)
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "UNHEALTHY" in p.stdout and "301.877 TFLOP/s" in p.stdout


def test_without_attribution_nothing_runs_unless_forced_and_the_output_says_why(tmp_path):
    node = snapshot(tmp_path, gpus=(0, 2))
    cfg, seen = config(tmp_path)  # no kubelet socket, no containerd: who holds what is unknown
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs")
    assert p.returncode == 2 and not seen.exists(), p.stdout + p.stderr
    assert "which pod holds which device is unknown" in p.stdout
    assert "cannot tell whether Vigil quarantined the node" in p.stdout and "--force" in p.stdout

    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs", "--force", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["forced"] and doc["attribution"] == "not checked (--force)" and devices(seen) == {"all"}
    assert doc["floors"]["AMD Instinct MI300X"]["copy_tbps"]["value"] == pytest.approx(3.18)


def test_without_a_kfd_topology_the_inventory_says_how_many_gpus_rvs_must_report(tmp_path):
    cfg, _ = config(tmp_path)  # the plain fixture: 8 MI300X in amd-smi, no sysfs; rvs reports 2 of them
    p = agent("validate", "-c", cfg, "--snapshot", "mi300x-faulty", "--probe", "rvs", "--force")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "results for 2 of 8 GPUs" in p.stdout


def test_gpus_the_gpu_source_cannot_read_leave_the_validation_unknown(tmp_path):
    # mi300x-smi-broken: GPUs on the bus, amd-smi broken when recorded: no model, so no floor to judge by
    cfg, seen = config(tmp_path)
    p = agent("validate", "-c", cfg, "--snapshot", "mi300x-smi-broken", "--probe", "rvs", "--force", "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    inv = [f for f in doc["findings"] if f["check"] == "probe.inventory"]
    assert inv and inv[0]["status"] == "unknown" and "no SMI output in the snapshot" in inv[0]["message"]
    assert doc["inventory"].startswith("unknown") and doc["gpus"] == []


def test_a_snapshot_that_is_not_there_is_a_usage_error(tmp_path):
    cfg, _ = config(tmp_path)
    p = agent("validate", "-c", cfg, "--snapshot", str(tmp_path / "nope"))
    assert p.returncode == 64 and "--snapshot" in p.stderr


def test_a_held_gpu_vigil_cannot_name_keeps_the_probe_off_every_gpu_and_says_so(tmp_path, node, kubelet):
    # a device id that is neither a UUID nor a PCI address: which GPU the pod has is unknown
    kubelet.set({("ml", "odd-0"): {"main": [("amd.com/gpu", ["card-7"])]}})
    cfg, seen = config(tmp_path, socket=kubelet.socket)
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs", "--json")
    assert p.returncode == 2 and not seen.exists(), p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["skipped"] == [{"probe": "rvs", "gpu": "all", "held_by": ["ml/odd-0"], "why": "GPUs held by ml/odd-0"}]
    p = agent("validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs")
    assert "skipped every GPU for rvs: held by ml/odd-0" in p.stdout


def test_a_gpu_source_that_raises_leaves_the_inventory_unknown_and_exits_2(tmp_path, node, monkeypatch, capsys):
    """The GPU source's read raising (a bug, a driver call that throws), as a failed collector cycle would:
    `agent validate` run in this process (cli.main) with the GpuCollector's read replaced by one that raises,
    the rest real. A passing rvs (fake binary, constructed output) cannot make it a pass: no model, no floor."""
    from agent import cli
    from agent.base import tools
    from agent.sources import load

    def broken(self):
        raise RuntimeError("amdsmi_init: AMDSMI_STATUS_DRIVER_NOT_LOADED")

    monkeypatch.setattr(load("gpu"), "read", broken)
    cfg, seen = config(tmp_path)
    try:
        code = cli.main(["validate", "-c", cfg, "--snapshot", str(node), "--probe", "rvs", "--force", "--json"])
    finally:
        tools.shutdown(refuse_new=False)  # cli.main closes the tool runner, as the agent does before it exits
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and seen.exists()  # rvs ran (forced) and its pass is not the node's
    assert doc["inventory"].startswith("unknown: the GPU source failed (")
    assert "AMDSMI_STATUS_DRIVER_NOT_LOADED" in doc["inventory"] and doc["gpus"] == []
    inv = [f for f in doc["findings"] if f["check"] == "probe.inventory"]
    assert inv and inv[0]["status"] == "unknown" and "no GPU probe can pass" in inv[0]["message"]
    assert doc["status"] != "healthy"


def test_validate_reads_holders_where_the_containers_source_does(tmp_path, node, kubelet):
    """An operator who moved only the containers source's sockets (containers.pod_resources_socket,
    containers.socket): validate reads PodResources there too, through the real config loader (a child
    process), instead of reporting attribution unknown."""
    kubelet.set({("ml", "train-0"): {"main": [("amd.com/gpu", [BUSES[1]])]}})
    rvs = fake_tool(tmp_path / "bin", "rvs", f'cat "{PASS}"')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"containers:\n  pod_resources_socket: {kubelet.socket}\n  socket: {tmp_path / 'no-ctrd.sock'}\n"
                   f"probes:\n  state_dir: {tmp_path / 'state'}\n  rvs: {{path: {rvs}}}\n")
    p = agent("validate", "-c", str(cfg), "--snapshot", str(node), "--probe", "rvs", "--json")
    doc = json.loads(p.stdout)
    assert kubelet.calls == 1, p.stdout + p.stderr
    assert doc["attribution"].startswith("read from PodResources: GPUs held by ml/train-0")
    assert {s["gpu"] for s in doc["skipped"]} == {"gpu1"}


def test_the_probes_own_attribution_keys_win_and_the_rest_follow_the_containers_source(tmp_path):
    """The real loader (agent.base.config.load with the agent's schemas)."""
    from agent.base.config import load
    from agent.probes.settings import ProbeSettings, from_config
    from agent.run.loop import collector_schemas

    cfg = load(None, collector_schemas(), text=(
        "containers:\n  pod_resources_socket: /run/k/kubelet.sock\n  socket: /run/k3s/containerd.sock\n"
        "  namespaces: [k8s.io, batch]\n  rpc_timeout_seconds: 2\n"
        "probes:\n  podresources_socket: /probe/kubelet.sock\n"))
    p = from_config(cfg)
    assert p.podresources_socket == "/probe/kubelet.sock"  # set for the probes: theirs
    assert p.containerd_socket == "/run/k3s/containerd.sock" and p.containerd_namespaces == ["k8s.io", "batch"]
    assert p.podresources_timeout_seconds == 2
    assert cfg.section("probes").containerd_socket == ProbeSettings().containerd_socket  # the section is not changed
    plain = from_config(load(None, collector_schemas(), text="probes:\n  state_dir: /tmp/x\n"))
    assert plain.podresources_socket == ProbeSettings().podresources_socket and plain.state_dir == "/tmp/x"
    off = from_config(load(None, collector_schemas(), text="containers:\n  socket: /a/b.sock\n"
                                                           "probes:\n  containerd_socket: ''\n"))
    assert off.containerd_socket == ""  # "" (do not ask containerd) set for the probes stays
