"""Large fixture nodes for the agent's cost curves (issue 15): N GPU partitions, P RDMA ports, C containers.

    .venv/bin/python bench/scale_fixtures.py OUT --gpus 64 --rdma-ports 32 --containers 500

Built from real captures in fixtures/nodes, never invented from nothing:
- GPUs: the busy ROCm 7.1 MI300X node (mi300x-rocm71-busy, 8 GPUs). An MI300X in CPX mode shows each of its 8
  XCDs as a GPU of its own (8 x 8 = 64 on a node): each captured GPU's entry in list/static/metric/process/
  bad-pages/firmware is repeated with the next GPU index, partition_id 0..k-1, the PCI function of the partition
  (bdf ...:00.k, as amdgpu numbers CPX partitions) and a uuid made unique. xgmi.json is left out (its link
  matrix is per physical GPU; DESIGN section 3 allows any subset of the commands).
- RDMA: the healthy 8-port node (rdma-8port-healthy): the mlx5_k device directories are copied to mlx5_8..P-1.
- Containers: what a snapshot replays of them, the kubelet's PodResources List answer
  (containers/pod-resources.json, as `agent snapshot` captures it and tests/deploy/test_deploy_dashboard.py
  writes it): pods of two containers (a worker and a sidecar, as training pods run); the first workers hold one
  GPU each by its PCI address (amd.com/gpu, as AMD's device plugin names them), the rest hold none.
node.json names the expected counts, so a missing one would be `unknown`, as on a real node.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_SRC = ROOT / "fixtures" / "nodes" / "mi300x-rocm71-busy" / "amd-smi"
RDMA_SRC = ROOT / "fixtures" / "nodes" / "rdma-8port-healthy" / "sys" / "class" / "infiniband"
PER_GPU = ("list", "process", "bad-pages", "firmware")  # lists of per-GPU entries
GPU_DATA = ("static", "metric")  # {"gpu_data": [...]}


def _partition(entry: dict, gpu: int, part: int) -> dict:
    e = copy.deepcopy(entry)
    e["gpu"] = gpu
    if "partition_id" in e:
        e["partition_id"] = part
    for holder in (e, e.get("bus") if isinstance(e.get("bus"), dict) else None):
        if holder is not None and isinstance(holder.get("bdf"), str):
            holder["bdf"] = holder["bdf"][:-1] + str(part)
    if isinstance(e.get("uuid"), str):
        e["uuid"] = e["uuid"][:-4] + f"{gpu:04x}"
    asic = e.get("asic")
    if isinstance(asic, dict) and isinstance(asic.get("asic_serial"), str):
        asic["asic_serial"] = asic["asic_serial"] + f"-{part}"
    return e


def _grow(entries: list, gpus: int) -> list:
    per = max(1, gpus // len(entries))
    out = []
    for base in entries:
        for part in range(per):
            if len(out) < gpus:
                out.append(_partition(base, len(out), part))
    return out


def pod_resources(containers: int, bdfs: list[str]) -> dict:
    pods = []
    for k in range(0, containers, 2):
        worker: dict = {"name": "worker"}
        gpu = k // 2
        if gpu < len(bdfs):
            worker["devices"] = [{"resourceName": "amd.com/gpu", "deviceIds": [bdfs[gpu]]}]
        members = [worker] + ([{"name": "sidecar"}] if k + 1 < containers else [])
        pods.append({"name": f"job-{k // 2:04d}", "namespace": "ml", "containers": members})
    return {"podResources": pods}


def build(out: Path, gpus: int, ports: int, name: str | None = None, containers: int = 0) -> Path:
    if out.exists():
        shutil.rmtree(out)
    expect: dict = {}
    if gpus:
        smi = out / "amd-smi"
        smi.mkdir(parents=True)
        for cmd in PER_GPU:
            data = json.loads((GPU_SRC / f"{cmd}.json").read_text())
            (smi / f"{cmd}.json").write_text(json.dumps(_grow(data, gpus), indent=4) + "\n")
        for cmd in GPU_DATA:
            data = json.loads((GPU_SRC / f"{cmd}.json").read_text())
            data["gpu_data"] = _grow(data["gpu_data"], gpus)
            (smi / f"{cmd}.json").write_text(json.dumps(data, indent=4) + "\n")
        expect["gpus"] = gpus
    if containers:
        bdfs = [e["bus"]["bdf"] if isinstance(e.get("bus"), dict) else e.get("bdf", "")
                for e in json.loads((out / "amd-smi" / "list.json").read_text())] if gpus else []
        (out / "containers").mkdir(parents=True)
        (out / "containers" / "pod-resources.json").write_text(json.dumps(pod_resources(containers, bdfs)) + "\n")
    if ports:
        ib = out / "sys" / "class" / "infiniband"
        ib.mkdir(parents=True)
        srcs = sorted(RDMA_SRC.iterdir())
        for k in range(ports):
            shutil.copytree(srcs[k % len(srcs)], ib / f"mlx5_{k}")
        expect["rdma_ports"] = ports
    (out / "node.json").write_text(json.dumps({"node": name or f"scale-{gpus}gpu-{ports}rdma", "expect": expect})
                                   + "\n")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--gpus", type=int, default=64)
    p.add_argument("--rdma-ports", type=int, default=32)
    p.add_argument("--containers", type=int, default=0)
    a = p.parse_args()
    print(build(a.out, a.gpus, a.rdma_ports, containers=a.containers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
