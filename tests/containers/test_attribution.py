"""Which pod holds which GPU: a real gRPC PodResources server on a unix socket (our proto, answering as the
kubelet does for device plugins and DRA), the GPU identities of the AMD fixture node (amd-smi's own output) and
NVIDIA UUIDs, and the OCI-spec fallback against a real containerd with sysfs/procfs trees laid out as on a
GPU node (no GPU, HCA or kubelet exists here)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from google.protobuf import json_format

from agent.base.collector import NoData
from agent.sources.gpu.amd_smi_cli import AmdSmiCliBackend
from agent.sources.gpu.model import GpuReading
from agent.sources.containers.attribution import gpu_pod_table, keys_for_id, gpu_pod_rows
from agent.sources.containers.model import PodRef
from tests.support import AGENT, FIXTURES, ROOT

from .helpers import dra, extract_rootfs

AMD_NODE = FIXTURES / "mi300x-rocm71-healthy"


def amd_gpus():
    return AmdSmiCliBackend(snapshot_dir=AMD_NODE / "amd-smi").read().gpus


def pod_info(metrics, name="vigil_gpu_pod_info", key="gpu"):
    fam = metrics.families.get(name)
    return {(s[key], s["namespace"], s["pod"], s["container"]) for _, s, _ in (fam.samples if fam else [])}


AMD_PODS = {
    ("ml", "train-a"): {"worker": [("amd.com/gpu", ["0000:0c:00.0", "0000:22:00.0", "0000:38:00.0", "0000:5c:00.0"]),
                                   ("rdma/hca_shared_devices_a", ["mlx5_0"])]},
    ("ml", "train-b"): {"worker": [("amd.com/gpu", ["0000:9F:00.0", "0000:AF:00.0"])]},  # as some plugins print
    ("infer", "serve-c"): {
        "model": [("amd.com/cpx_nps4", ["0000:bf:00.0"]), ("example.com/fpga", ["fpga0"])],
        "sidecar": [dra("gpu.amd.com", "gpu-7", ["amd.com/gpu=0000:df:00.0"], namespace="infer")]},
}


def test_amd_node_eight_gpus_three_pods(make_collector, cycles, pod_resources, tmp_path):
    gpus = amd_gpus()
    bdfs = [g["bdf"] for g in json.loads((AMD_NODE / "amd-smi" / "list.json").read_text())]
    assert [g.pci_bus_id for g in gpus] == bdfs and len(bdfs) == 8
    (tmp_path / "sys" / "class" / "infiniband" / "mlx5_0").mkdir(parents=True)
    pod_resources.set(AMD_PODS)
    collector = make_collector(pod_resources_socket=pod_resources.socket, shared={"gpus": gpus})
    c = cycles(collector)

    c.once()

    a, b = ("ml", "train-a", "worker"), ("ml", "train-b", "worker")
    assert pod_info(c.result.output.metrics) == {
        ("0", *a), ("1", *a), ("2", *a), ("3", *a), ("4", *b), ("5", *b),
        ("6", "infer", "serve-c", "model"), ("7", "infer", "serve-c", "sidecar")}
    assert pod_info(c.result.output.metrics, "vigil_rdma_pod_info", "device") == {("mlx5_0", *a)}
    assert c.value("vigil_container_device_info", resource="example.com/fpga") is None
    assert c.value("vigil_container_device_info", pod="serve-c", container="sidecar", source="dra",
                   resource="gpu.amd.com", device_id="gpu-7") == 1
    assert c.value("vigil_container_pod_resources_up") == 1
    [f] = c.findings_of("container.pod_resources")
    assert f.status == "ok" and "9 GPU/RDMA devices held by 3 pods" in f.message
    assert collector.ctx.facts.pod_devices["bdf:0000:9f:00.0"] == (PodRef(*b),)

    # `agent --once` view: every GPU with its pod.
    table = gpu_pod_table(collector.ctx.facts)
    assert "0000:0c:00.0  ml/train-a (worker)" in table
    assert "0000:df:00.0  infer/serve-c (sidecar)" in table
    assert len(gpu_pod_rows(collector.ctx.facts)) == 8

    # A pod that ends gives its GPUs back: their attribution series go.
    pod_resources.set({k: v for k, v in AMD_PODS.items() if k != ("ml", "train-b")})
    c.once()
    assert {r[0] for r in pod_info(c.result.output.metrics)} == {"0", "1", "2", "3", "6", "7"}
    assert "0000:9f:00.0  -" in gpu_pod_table(collector.ctx.facts)

    # A kubelet that died leaves its socket file behind: reported as unknown, not fatal, not "no data".
    pod_resources.stop()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(pod_resources.socket)
    stale.close()
    c.once()
    assert c.value("vigil_container_pod_resources_up") == 0
    [f] = [f for f in c.result.output.findings if f.check == "container.pod_resources"]
    assert f.status == "unknown" and "UNAVAILABLE" in f.message


def nvidia_gpus():
    gpus = [GpuReading(index=i, vendor="nvidia", uuid=f"GPU-{i:08x}-1111-2222-3333-{i:012x}",
                       pci_bus_id=f"0000:{0x18 + 0x10 * i:02x}:00.0") for i in range(8)]
    mig = GpuReading(index=7, vendor="nvidia", partition="1", uuid="MIG-7a1b2c3d-4e5f-5a6b-8c9d-0e1f2a3b4c5d",
                     pci_bus_id=gpus[7].pci_bus_id)
    return gpus + [mig]


def test_nvidia_uuids_time_slicing_indices_mig_and_dra(make_collector, cycles, pod_resources):
    gpus = nvidia_gpus()
    u = [g.uuid for g in gpus]
    pod_resources.set({
        ("ai", "llm-0"): {"trainer": [("nvidia.com/gpu", u[:4])]},
        ("ai", "nb-1"): {"jupyter": [("nvidia.com/gpu", [f"{u[4]}::0", f"{u[4]}::1"])]},  # two replicas
        ("ai", "nb-2"): {"jupyter": [("nvidia.com/gpu", [f"{u[4]}::2"])]},  # shares GPU 4
        ("ai", "batch-3"): {"job": [("nvidia.com/gpu", ["5"])]},  # --device-id-strategy=index
        ("ai", "dra-4"): {"main": [dra("gpu.nvidia.com", "gpu-6", [f"k8s.gpu.nvidia.com/device={u[6]}"]),
                                   dra("gpu.nvidia.com", "gpu-99", ["k8s.gpu.nvidia.com/claim=3f1c"])]},
        ("ai", "mig-5"): {"main": [("nvidia.com/mig-1g.10gb", [u[8]])]},
    })
    c = cycles(make_collector(pod_resources_socket=pod_resources.socket, shared={"gpus": gpus}))
    c.once()
    assert pod_info(c.result.output.metrics) == {
        *{(str(i), "ai", "llm-0", "trainer") for i in range(4)},
        ("4", "ai", "nb-1", "jupyter"), ("4", "ai", "nb-2", "jupyter"),
        ("5", "ai", "batch-3", "job"), ("6", "ai", "dra-4", "main"), ("7/1", "ai", "mig-5", "main")}
    # A DRA device whose names carry no UUID or bus address is still listed, only not joined to a GPU.
    assert c.value("vigil_container_device_info", device_id="gpu-99", kind="gpu", source="dra") == 1


def test_device_ids_to_join_keys():
    assert keys_for_id("GPU-AD9CC515-dcd1-b74b-a284-9bafdf16ab36::3") == ["uuid:ad9cc515-dcd1-b74b-a284-9bafdf16ab36"]
    assert keys_for_id("00000000:0C:00.0") == ["bdf:0000:0c:00.0"]
    assert keys_for_id("7", nvidia_index=True) == ["nvidia-index:7"]
    assert keys_for_id("7") == []
    # A UUID's groups never read as a bus address.
    assert keys_for_id("4cff74a1-0000-1000-8019-b7e2a0d35f86") == ["uuid:4cff74a1-0000-1000-8019-b7e2a0d35f86"]


@pytest.fixture
def gpu_node_tree(tmp_path):
    """sysfs/procfs as on a node with an AMD GPU at 0c:00.0 (renderD128), an NVIDIA GPU at 22:00.0 (minor 1)
    and an HCA mlx5_1 (uverbs0): the links and files the resolver follows."""
    sysfs, procfs = tmp_path / "sys", tmp_path / "proc"
    pci = sysfs / "devices" / "pci0000:00" / "0000:0c:00.0"
    pci.mkdir(parents=True)
    (sysfs / "class" / "drm" / "renderD128").mkdir(parents=True)
    (sysfs / "class" / "drm" / "renderD128" / "device").symlink_to("../../../devices/pci0000:00/0000:0c:00.0")
    info = procfs / "driver" / "nvidia" / "gpus" / "0000:22:00.0"
    info.mkdir(parents=True)
    (info / "information").write_text("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\nDevice Minor: \t 1\n")
    (sysfs / "class" / "infiniband_verbs" / "uverbs0").mkdir(parents=True)
    (sysfs / "class" / "infiniband_verbs" / "uverbs0" / "ibdev").write_text("mlx5_1\n")
    return sysfs, procfs


def test_spec_fallback_without_pod_resources(containerd, make_collector, cycles, gpu_node_tree, tmp_path):
    sysfs, procfs = gpu_node_tree
    amd0 = GpuReading(index=0, vendor="amd", uuid="4cff74a1-0000-1000-8019-b7e2a0d35f86", pci_bus_id="0000:0c:00.0")
    nv1 = GpuReading(index=1, vendor="nvidia", uuid="GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36",
                     pci_bus_id="00000000:22:00.0")
    rootfs = extract_rootfs(tmp_path / "rootfs")
    devices = [{"path": "/dev/dri/renderD128", "type": "c", "major": 226, "minor": 128},
               {"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1},
               {"path": "/dev/infiniband/uverbs0", "type": "c", "major": 231, "minor": 192}]
    spec = containerd.default_spec()
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"]["args"] = ["/bin/sleep", "1000"]
    spec["linux"]["devices"] = devices
    containerd.create_from_spec("spec", spec, ("fb", "spec-0", "main"))
    # A privileged container sees every device node; it is not using them all.
    spec["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    containerd.create_from_spec("priv", spec, ("fb", "priv-0", "main"))
    containerd.run("env", "sleep", "1000", pod=("fb", "env-0", "main"), env={"NVIDIA_VISIBLE_DEVICES": nv1.uuid})
    c = cycles(make_collector(socket=containerd.socket, sysfs=sysfs, procfs=procfs, shared={"gpus": [amd0, nv1]}))

    c.until("three running containers", lambda: c.value("vigil_containers", state="running") == 3)

    assert pod_info(c.result.output.metrics) == {("0", "fb", "spec-0", "main"), ("1", "fb", "spec-0", "main"),
                                                 ("1", "fb", "env-0", "main")}
    assert pod_info(c.result.output.metrics, "vigil_rdma_pod_info", "device") == {("mlx5_1", "fb", "spec-0", "main")}
    assert c.value("vigil_container_device_info", pod="spec-0", device_id="/dev/nvidia1", source="spec") == 1
    assert c.value("vigil_container_pod_resources_up") is None  # no kubelet socket here: nothing to say

    containerd.kill("spec")
    c.until("the stopped container to hold nothing",
            lambda: ("0", "fb", "spec-0", "main") not in pod_info(c.result.output.metrics))


# -- snapshots and `agent --once` ----------------------------------------------------------------------
def amd_snapshot(tmp_path, with_pods: bool):
    snap = tmp_path / "snap"
    shutil.copytree(AMD_NODE / "amd-smi", snap / "amd-smi")
    shutil.copy(AMD_NODE / "node.json", snap / "node.json")
    if with_pods:
        from .helpers import PodResources

        holder = PodResources.__new__(PodResources)  # only its response builder: no server needed
        PodResources.set(holder, AMD_PODS)
        (snap / "containers").mkdir()
        (snap / "containers" / "pod-resources.json").write_text(json_format.MessageToJson(holder.response))
    return snap


def test_snapshot_replays_pod_resources(make_collector, tmp_path):
    with pytest.raises(NoData):
        make_collector(snapshot=amd_snapshot(tmp_path / "a", with_pods=False)).read()
    shared = {"once": True, "gpus": amd_gpus()}
    collector = make_collector(snapshot=amd_snapshot(tmp_path / "b", with_pods=True), shared=shared)
    out = collector.evaluate(collector.read(), None, None)
    # In a one-shot run the GPU collector reads concurrently: the join happens after both, not in a metric.
    assert "vigil_gpu_pod_info" not in out.metrics.families
    assert "0000:38:00.0  ml/train-a (worker)" in gpu_pod_table(collector.ctx.facts)


def test_replaying_pod_resources_never_loads_grpc(tmp_path):
    """A snapshot replay parses the stored answer and opens no socket, so grpc (10 MB of the agent's RSS,
    issue 15) stays unloaded; the live client (list_allocations) loads it when it dials the kubelet."""
    snap = amd_snapshot(tmp_path, with_pods=True)
    code = ("import sys; from agent.cli import main; rc = main(['--once', '--json', '--snapshot', sys.argv[1]]); "
            "print('grpc loaded' if 'grpc' in sys.modules else 'no grpc', file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(snap)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(p.stdout)["gpu_pods"][6]["pod"] == "serve-c", p.stderr
    assert p.stderr.strip().splitlines()[-1] == "no grpc", p.stderr


def test_agent_once_lists_the_pod_on_each_gpu(tmp_path):
    snap = amd_snapshot(tmp_path, with_pods=True)
    p = subprocess.run([AGENT, "--once", "--snapshot", str(snap)], capture_output=True, text=True, timeout=120)
    assert "ml/train-a (worker)" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([AGENT, "--once", "--json", "--snapshot", str(snap)], capture_output=True, text=True,
                       timeout=120)
    rows = json.loads(p.stdout)["gpu_pods"]
    assert {"gpu": "6", "namespace": "infer", "pod": "serve-c", "container": "model"}.items() <= rows[6].items()
