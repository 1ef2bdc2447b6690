"""The floors a probe's measurement is judged against, per GPU and NIC model, with where each figure comes from.

A floor is a fraction of the vendor's published peak: a healthy part does not reach its datasheet figure in
a short probe (clocks, a 8192-cube product, a copy that reads and writes), so the fraction is what a healthy
part clears with room to spare, and a part under it is degraded (a throttled GPU, a down-trained link, a
lane of HBM gone). The NVIDIA fractions come from this project's own measurement on an H200 (bf16 8192^3
product 769-798 TFLOP/s of 989, device copy about 4.3 TB/s of 4.8: 78-81% and 90%); the AMD fractions are
set lower because public results of short GEMMs on MI300X sit near half of peak: calibrate them on a
known-good node (`agent validate --json` prints every measured value) and override them in the config
(`probes.floors`). Every figure is configurable; a model not in the table has no floor, and its measured
values are reported, not judged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Floor:
    value: float
    unit: str
    source: str  # where the peak figure comes from, and the fraction applied

    def to_json(self) -> dict:
        return {"value": self.value, "unit": self.unit, "source": self.source}


# Datasheet peaks: (dense bf16 TFLOP/s, HBM TB/s, nccl/rccl all_reduce bus bandwidth GB/s on the full node)
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (SXM5): bf16 989 TFLOP/s dense, HBM3 3.35 TB/s"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (SXM): bf16 989 TFLOP/s dense, HBM3e 4.8 TB/s"
_B200 = "NVIDIA HGX B200 datasheet: bf16 2.25 PFLOP/s dense per GPU (4.5 sparse), HBM3e 8 TB/s"
_MI300X = "AMD Instinct MI300X datasheet: bf16 1307.4 TFLOP/s dense, HBM3 5.3 TB/s"
_MI325X = "AMD Instinct MI325X datasheet: bf16 1307.4 TFLOP/s dense, HBM3e 6 TB/s"
_NVLINK4 = ("NVLink 4 (H100/H200 HGX, 900 GB/s per GPU); nccl-tests all_reduce_perf bus bandwidth on healthy "
            "8-GPU HGX H100 nodes is commonly 360-480 GB/s at 1-8 GiB")
_NVLINK5 = "NVLink 5 (HGX B200, 1.8 TB/s per GPU)"
_XGMI = "AMD Infinity Fabric (MI300X/MI325X platform, 7 links of 64 GB/s per GPU each way = 448 GB/s)"
_PCIE5 = ("PCIe 5.0 x16 (MI300X/MI325X OAM host link): 64 GB/s per direction (32 GT/s x 16 lanes, "
          "128b/130b)")

# metric -> model key -> Floor
DEFAULT_FLOORS: dict[str, dict[str, Floor]] = {
    "matmul_tflops": {  # bf16 square product, per GPU
        "h100": Floor(989 * 0.6, "TFLOP/s", _H100 + "; floor 60% of peak"),
        "h200": Floor(989 * 0.6, "TFLOP/s", _H200 + "; floor 60% of peak (measured 78-81% on a healthy H200)"),
        "b200": Floor(2250 * 0.6, "TFLOP/s", _B200 + "; floor 60% of peak"),
        "mi300x": Floor(1307.4 * 0.35, "TFLOP/s", _MI300X + "; floor 35% of peak (short GEMMs reach about half)"),
        "mi325x": Floor(1307.4 * 0.35, "TFLOP/s", _MI325X + "; floor 35% of peak"),
    },
    "copy_tbps": {  # device-to-device copy, bytes read plus written per second
        "h100": Floor(3.35 * 0.7, "TB/s", _H100 + "; floor 70% of peak"),
        "h200": Floor(4.8 * 0.7, "TB/s", _H200 + "; floor 70% of peak (measured about 90%)"),
        "b200": Floor(8.0 * 0.7, "TB/s", _B200 + "; floor 70% of peak"),
        "mi300x": Floor(5.3 * 0.6, "TB/s", _MI300X + "; floor 60% of peak"),
        "mi325x": Floor(6.0 * 0.6, "TB/s", _MI325X + "; floor 60% of peak"),
    },
    "allreduce_busbw_gbps": {  # nccl-tests / rccl-tests all_reduce_perf, 8 GPUs, 1-8 GiB messages
        "h100": Floor(300.0, "GB/s", _NVLINK4 + "; floor 300 GB/s"),
        "h200": Floor(300.0, "GB/s", _NVLINK4 + "; floor 300 GB/s"),
        "b200": Floor(550.0, "GB/s", _NVLINK5 + "; floor 550 GB/s"),
        "mi300x": Floor(200.0, "GB/s", _XGMI + "; floor 200 GB/s"),
        "mi325x": Floor(200.0, "GB/s", _XGMI + "; floor 200 GB/s"),
    },
    "pcie_gbps": {  # rvs pebb host<->device copy, per GPU and direction, the best CPU node
        "mi300x": Floor(64.0 * 0.6, "GB/s", _PCIE5 + "; floor 60% (AMD's published rvs pebb sample reaches 57.7)"),
        "mi325x": Floor(64.0 * 0.6, "GB/s", _PCIE5 + "; floor 60%"),
    },
    "xgmi_p2p_gbps": {  # rvs pbqt unidirectional peer copy, per GPU pair
        "mi300x": Floor(64.0 * 0.6, "GB/s", _XGMI + "; one link per GPU pair; floor 60% of 64 GB/s"),
        "mi325x": Floor(64.0 * 0.6, "GB/s", _XGMI + "; one link per GPU pair; floor 60% of 64 GB/s"),
    },
}

# ib_write_bw against the port's own rate (sysfs `rate`: "400 Gb/sec (4X NDR)"): a loopback write on a healthy
# NDR/HDR port reaches 95%+ of the signalling rate's data rate.
RDMA_FRACTION = 0.85
RDMA_SOURCE = ("InfiniBand NDR 400 Gb/s, HDR 200 Gb/s per 4X port (IBTA); perftest ib_write_bw on healthy ports "
               "reaches over 90% of it; floor 85% of the port's sysfs rate")

_MODELS = (  # order matters: "h100" must not match inside "gh100"? none do; MI325X before MI300X
    ("mi325x", re.compile(r"mi\s*325x", re.I)),
    ("mi300x", re.compile(r"mi\s*300x", re.I)),
    ("b200", re.compile(r"\bb200\b", re.I)),
    ("h200", re.compile(r"\bh200\b", re.I)),
    ("h100", re.compile(r"\bh100\b", re.I)),
)


def model_key(name: str | None) -> str | None:
    """The table's key for a device name as the vendor reports it ("NVIDIA H200", "AMD Instinct MI300X")."""
    for key, pattern in _MODELS:
        if name and pattern.search(name):
            return key
    return None


def floor_for(metric: str, device_name: str | None, overrides: dict[str, dict[str, float]] | None = None
              ) -> Floor | None:
    """The floor of `metric` for a device, the config's override first. None: no floor for this model."""
    key = model_key(device_name)
    if key is None:
        return None
    over = (overrides or {}).get(metric, {})
    base = DEFAULT_FLOORS.get(metric, {}).get(key)
    if key in over:
        unit = base.unit if base else ""
        return Floor(float(over[key]), unit, f"config probes.floors.{metric}.{key}")
    return base


def rdma_floor_gbps(rate_text: str | None) -> Floor | None:
    """85% of a port's rate, from its sysfs `rate` text ("400 Gb/sec (4X NDR)"); None if unreadable."""
    m = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)\s*Gb/sec", rate_text or "")
    if not m:
        return None
    rate = float(m.group(1))
    if not 0 < rate <= 10_000:
        return None
    return Floor(round(rate * RDMA_FRACTION, 1), "Gb/s", f"{rate:g} Gb/s port rate; {RDMA_SOURCE}")
