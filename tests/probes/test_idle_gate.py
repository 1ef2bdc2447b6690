"""Idle gating with a real containerd (tests/containers' private daemon, runc, a busybox image): a container
whose OCI spec has a GPU's render node in linux.devices holds that GPU while its task lives. With no kubelet
PodResources socket, validation reads the holders from containerd's container specs, as the containers
source's spec fallback does. The probe is a fake `rvs` (a real executable that copies the conf it was given);
the node's sysfs is a temp tree: two AMD GPUs at 0c:00.0 (renderD128) and 0d:00.0 (renderD129), as the
amdgpu driver links them, with their KFD topology nodes. The device nodes are real character devices runc
makes inside the container (major 226 is DRM's; no such GPU needs to exist on this machine)."""
import re
from types import SimpleNamespace

import pytest

from agent.base import tools
from agent.probes import validate as v
from tests.containers.conftest import containerd, oci_image  # noqa: F401 - pytest fixtures
from tests.containers.helpers import extract_rootfs
from tests.probes.helpers import PROBE_FIXTURES, fake_tool, settings

PASS = PROBE_FIXTURES / "rvs" / "constructed-quick-pass-mi300x.txt"
GPU0, GPU1 = "0000:0c:00.0", "0000:0d:00.0"
RENDER = {GPU0: ("renderD128", 128, 40123, 2), GPU1: ("renderD129", 129, 51234, 3)}
POD = ("ml", "train-0", "main")


@pytest.fixture(autouse=True)
def _tools_open():
    yield
    tools.shutdown(refuse_new=False)


@pytest.fixture
def node(tmp_path):
    sysfs = tmp_path / "sys"
    nodes = sysfs / "class" / "kfd" / "kfd" / "topology" / "nodes"
    for bdf, (render, _, gid, n) in RENDER.items():
        (sysfs / "devices" / "pci0000:00" / bdf).mkdir(parents=True)
        (sysfs / "class" / "drm" / render).mkdir(parents=True)
        (sysfs / "class" / "drm" / render / "device").symlink_to(f"../../../devices/pci0000:00/{bdf}")
        (nodes / str(n)).mkdir(parents=True)
        (nodes / str(n) / "gpu_id").write_text(f"{gid}\n")
        (nodes / str(n) / "properties").write_text(f"location_id {int(bdf[5:7], 16) << 8}\ndomain 0\n")
    facts = SimpleNamespace(gpus=[SimpleNamespace(index=i, vendor="amd", uuid="", pci_bus_id=bdf, partition="",
                                                  model="AMD Instinct MI300X") for i, bdf in enumerate(RENDER)])
    rvs = fake_tool(tmp_path / "bin", "rvs", f'cp "$2" "{tmp_path}/seen.conf"\ncat "{PASS}"')
    return SimpleNamespace(sysfs=str(sysfs), procfs=str(tmp_path / "proc"), facts=facts, rvs=rvs,
                           seen=tmp_path / "seen.conf")


def run_container(containerd, tmp_path, cid, device_paths, pod=POD):  # noqa: F811 - the fixture's name
    rootfs = extract_rootfs(tmp_path / f"rootfs-{cid}")
    spec = containerd.default_spec()
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"]["args"] = ["/bin/sleep", "1000"]
    spec["linux"]["devices"] = [{"path": p, "type": "c", "major": 226, "minor": m} for p, m in device_paths]
    containerd.create_from_spec(cid, spec, pod)


def validate(node, containerd):  # noqa: F811
    s = settings(node.seen.parent, rvs={"path": str(node.rvs)})
    s.containerd_socket = containerd.socket
    if node.seen.exists():
        node.seen.unlink()
    return v.validate(s, ["rvs"], node="n1", facts=node.facts, sysfs=node.sysfs, procfs=node.procfs)


def devices_in_conf(node):
    return set(re.findall(r"^  device: (.*)$", node.seen.read_text(), re.M))


def test_a_running_container_with_a_gpu_device_keeps_the_probe_off_that_gpu_until_it_exits(
        containerd, node, tmp_path):  # noqa: F811
    run_container(containerd, tmp_path, "gpu1", [("/dev/dri/renderD129", 129)])
    val = validate(node, containerd)
    assert val.holdings == "read from container specs (containerd): GPUs held by ml/train-0"
    assert devices_in_conf(node) == {"40123"}  # gpu0's KFD gpu_id only
    held = {f.entity: f for f in val.findings if f.check == "probe.rvs"}["gpu1"]
    assert held.status == "unknown" and "held by ml/train-0" in held.message
    assert not any(f.entity == "gpu1" and f.status == "ok" for f in val.findings)
    assert val.exit_code() == 2  # not every GPU validated: never a pass

    containerd.kill("gpu1")  # the task exits: the GPU is free
    val = validate(node, containerd)
    assert devices_in_conf(node) == {"all"} and "no GPU held" in val.holdings
    assert val.exit_code() == 0, [f.message for f in val.findings if f.status != "ok"]


def test_a_gpu_device_sysfs_cannot_name_keeps_every_gpu_probe_off(containerd, node, tmp_path):  # noqa: F811
    # renderD140 is no GPU this node's sysfs knows: which GPU the container uses is unknown
    run_container(containerd, tmp_path, "odd", [("/dev/dri/renderD140", 140)])
    val = validate(node, containerd)
    assert val.exit_code() == 2 and not node.seen.exists()
    assert "GPUs held by ml/train-0" in val.findings[0].message


def test_a_container_outside_kubernetes_holds_its_gpu_too(containerd, node, tmp_path):  # noqa: F811
    run_container(containerd, tmp_path, "bare", [("/dev/dri/renderD128", 128)], pod=("", "", ""))
    val = validate(node, containerd)
    assert devices_in_conf(node) == {"51234"}  # gpu1 only
    held = {f.entity: f for f in val.findings if f.check == "probe.rvs"}["gpu0"]
    assert held.status == "unknown" and f"container k8s.io/{containerd.id('bare')}" in held.message


def test_containerd_unreachable_and_no_kubelet_refuses(node, tmp_path):
    s = settings(tmp_path, rvs={"path": str(node.rvs)})
    val = v.validate(s, ["rvs"], node="n1", facts=node.facts, sysfs=node.sysfs)
    assert val.exit_code() == 2 and not node.seen.exists()
    assert "no containerd socket" in val.findings[0].message and "PodResources" in val.findings[0].message
