"""The pods holding each GPU (agent/run/holders.py): the join of the GPU source's readings and the containers
source's PodResources attribution that the stream sends as Event.holders / Problem.holders. Pure: readings and
allocations built here as the two sources build them (attribution.attribute over podresources.Allocation)."""
from __future__ import annotations

from pathlib import Path

from agent import wire
from agent.base.collector import Facts
from agent.run.holders import gpu_holders
from agent.sources.containers.attribution import DeviceResolver, attribute
from agent.sources.containers.model import PodRef
from agent.sources.containers.podresources import Allocation
from agent.sources.gpu.model import GpuReading
from agent.stream.client import _problems
from agent.stream.spool import StateRow

U0, U1 = "GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36", "GPU-11111111-2222-4333-8444-555555555555"
MIG = "MIG-0a1b2c3d-0000-4000-8000-00000000000a"


def alloc(ns, pod, resource, device_id):
    return Allocation(PodRef(ns, pod, "main"), resource, device_id, "device-plugin", (device_id,))


def facts(allocations, gpus):
    att = attribute(allocations, [], DeviceResolver(Path("/nonexistent"), Path("/nonexistent")), gpus,
                    ("nvidia.com/gpu", "nvidia.com/mig-", "amd.com/"))
    return Facts(gpus=gpus, pod_devices=att.pod_devices())


def test_nvidia_uuids_amd_bus_addresses_time_slicing_and_mig_map_to_their_gpu():
    gpus = [GpuReading(0, "nvidia", uuid=U0, pci_bus_id="0000:00:06.0"),
            GpuReading(1, "nvidia", uuid=U1, pci_bus_id="0000:00:07.0"),
            GpuReading(1, "nvidia", uuid=MIG, partition="2"),
            GpuReading(2, "amd", pci_bus_id="0000:c1:00.0")]
    table = gpu_holders(facts([
        alloc("ml", "a", "nvidia.com/gpu", U0),
        alloc("ml", "b", "nvidia.com/gpu", U0 + "::1"),  # time-slicing: replica 1 of the same GPU
        alloc("ml", "m", "nvidia.com/mig-1g.10gb", MIG),
        alloc("ml", "r", "amd.com/gpu", "0000:c1:00.0"),  # AMD's plugin names the PCI address
    ], gpus))
    assert table["gpu0"] == ("ml/a", "ml/b")
    assert table["gpu1/2"] == ("ml/m",) and table["gpu1"] == ("ml/m",)  # a fault of gpu1 is its MIG pods' too
    assert table["gpu2"] == ("ml/r",)


def test_unknown_is_empty_never_a_guess():
    gpus = [GpuReading(0, "nvidia", uuid=U0)]
    assert gpu_holders(Facts(gpus=gpus, pod_devices=None)) == {}  # no containers source / no PodResources
    assert gpu_holders(Facts(gpus=None, pod_devices={})) == {}  # no GPU readings yet
    assert gpu_holders(facts([alloc("ml", "a", "nvidia.com/gpu", U1)], gpus)) == {}  # another GPU's id


def test_the_digest_carries_the_holders_of_each_gpu_problem_bounded():
    gpus = [GpuReading(0, "nvidia", uuid=U0)]
    table = gpu_holders(facts([alloc("ml", f"p{i}", "nvidia.com/gpu", f"{U0}::{i}") for i in range(40)], gpus))
    rows = [StateRow("gpu.ecc.uncorrectable", "gpu0", "gpu", "gpu", "unhealthy", "fatal", "2 errors"),
            StateRow("rdma.port.state", "mlx5_0/1", "rdma", "rdma", "unhealthy", "fatal", "down")]
    p = _problems(rows, {}, table)
    assert list(p[0].holders) == [f"ml/p{i}" for i in range(wire.MAX_HOLDERS)]
    assert list(p[1].holders) == []  # not a GPU's
