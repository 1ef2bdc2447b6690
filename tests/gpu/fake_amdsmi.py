"""A fake of the `amdsmi` Python package (7.x layer) that behaves as the real one does where our code relies on
it: the documented return shapes (dicts with "N/A" for sentinel values, bad-page status as an enum value,
xgmi link status as {"status": [...], "total_links": n}), the exception hierarchy with its error codes and
message format, the handle and enum type checks (AmdSmiParameterException), and AMDSMI_STATUS_NOT_INIT before
amdsmi_init(). Sources: ../shared/reference/amdsmi-python-api.md and the amdsmi_interface.py /
amdsmi_exception.py code it summarises. No AMD GPU exists on any test machine, so this is the library's stand-in.

Per GPU, `FakeGpu.values` maps a getter name to what it returns, and `FakeGpu.errors` maps a getter name to
the status code it raises (2 = NOT_SUPPORTED). Getters with an enum argument look up by member name.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

NOT_SUPPORTED = 2
TIMEOUT = 8
RETRY = 9
NOT_INIT = 32
DRIVER_NOT_LOADED = 34

_STATUS_TEXT = {
    1: "AMDSMI_STATUS_INVAL - Invalid parameters",
    2: "AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported",
    3: "AMDSMI_STATUS_NOT_YET_IMPLEMENTED - Feature not yet implemented",
    8: "AMDSMI_STATUS_TIMEOUT - Timeout in API call",
    9: "AMDSMI_STATUS_RETRY - Retry operation",
    10: "AMDSMI_STATUS_NO_PERM - Permission Denied",
    32: "AMDSMI_STATUS_NOT_INIT - Device not initialized",
    34: "AMDSMI_STATUS_DRIVER_NOT_LOADED - Driver not loaded",
    43: "AMDSMI_STATUS_UNEXPECTED_DATA - The data read or provided was unexpected",
}


# -- amdsmi_exception.py ---------------------------------------------------------------------------------
class AmdSmiException(Exception):
    """Base smi exception class"""


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int) -> None:
        err_code = abs(err_code)
        super().__init__(err_code)
        self.err_code = err_code
        self.err_info = _STATUS_TEXT.get(err_code, "AMDSMI_STATUS_UNKNOWN_ERROR - An unknown error occurred")

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"

    def get_error_info(self) -> str:
        return self.err_info

    def get_error_code(self) -> int:
        return self.err_code


class AmdSmiRetryException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(RETRY)


class AmdSmiTimeoutException(AmdSmiLibraryException):
    def __init__(self) -> None:
        super().__init__(TIMEOUT)


class AmdSmiParameterException(AmdSmiException):
    def __init__(self, value: Any, expected_type: Any, msg: str | None = None) -> None:
        super().__init__(value, expected_type, msg)
        self.err_code = None
        self.actual_type, self.expected_type = type(value), expected_type
        self.err_info = msg or f"Invalid parameter: expected {expected_type}, got {type(value)}"

    def __str__(self) -> str:
        return self.err_info


# -- amdsmi_interface.py enums (values from amdsmi.h) ----------------------------------------------------
class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1
    INIT_NON_AMD_CPUS = 1 << 2
    INIT_NON_AMD_GPUS = 1 << 3
    INIT_AMD_APUS = (1 << 0) | (1 << 1)


class AmdSmiTemperatureType(IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1  # alias, as in amdsmi.h
    VRAM = 2
    HBM_0 = 3
    HBM_1 = 4
    HBM_2 = 5
    HBM_3 = 6
    PLX = 7


class AmdSmiTemperatureMetric(IntEnum):
    CURRENT = 0
    MAX = 1
    MIN = 2
    MAX_HYST = 3
    MIN_HYST = 4
    CRITICAL = 5
    CRITICAL_HYST = 6
    EMERGENCY = 7
    EMERGENCY_HYST = 8
    CRIT_MIN = 9
    CRIT_MIN_HYST = 10
    OFFSET = 11
    LOWEST = 12
    HIGHEST = 13


class AmdSmiGpuBlock(IntEnum):  # bit flags: amdsmi_get_gpu_ecc_enabled() returns a mask of them
    INVALID = 0
    UMC = 1 << 0
    SDMA = 1 << 1
    GFX = 1 << 2
    MMHUB = 1 << 3
    ATHUB = 1 << 4
    PCIE_BIF = 1 << 5
    HDP = 1 << 6
    XGMI_WAFL = 1 << 7
    DF = 1 << 8
    SMN = 1 << 9
    SEM = 1 << 10
    MP0 = 1 << 11
    MP1 = 1 << 12
    FUSE = 1 << 13
    MCA = 1 << 14
    VCN = 1 << 15
    JPEG = 1 << 16
    IH = 1 << 17
    MPIO = 1 << 18
    RESERVED = 1 << 63


class AmdSmiMemoryPageStatus(IntEnum):
    RESERVED = 0
    PENDING = 1
    UNRESERVABLE = 2


class AmdSmiFwBlock(IntEnum):
    AMDSMI_FW_ID_CP_MEC1 = 7
    AMDSMI_FW_ID_CP_MEC2 = 8
    AMDSMI_FW_ID_RLC = 9
    AMDSMI_FW_ID_SDMA0 = 10
    AMDSMI_FW_ID_SDMA1 = 11
    AMDSMI_FW_ID_VCN = 18
    AMDSMI_FW_ID_PSP_SOSDRV = 30
    AMDSMI_FW_ID_TA_RAS = 40
    AMDSMI_FW_ID_TA_XGMI = 41
    AMDSMI_FW_ID_PM = 57


class amdsmi_processor_handle:  # noqa: N801 (the wrapper's ctypes type name)
    """Opaque, like the ctypes c_void_p the real library hands out."""

    def __init__(self, slot: int) -> None:
        self._slot = slot


# Getters taking only a handle. Their FakeGpu.values entry is returned as is (deep-copied).
SIMPLE_GETTERS = (
    "amdsmi_get_gpu_device_bdf", "amdsmi_get_gpu_device_uuid", "amdsmi_get_gpu_asic_info",
    "amdsmi_get_gpu_board_info", "amdsmi_get_gpu_driver_info", "amdsmi_get_gpu_vbios_info", "amdsmi_get_fw_info",
    "amdsmi_get_gpu_activity", "amdsmi_get_gpu_vram_usage", "amdsmi_get_power_info", "amdsmi_get_power_cap_info",
    "amdsmi_get_gpu_total_ecc_count", "amdsmi_get_gpu_ecc_enabled", "amdsmi_get_gpu_bad_page_info",
    "amdsmi_get_gpu_bad_page_threshold", "amdsmi_get_pcie_info", "amdsmi_get_gpu_xgmi_link_status",
    "amdsmi_get_violation_status", "amdsmi_get_gpu_metrics_info", "amdsmi_get_gpu_process_list",
    "amdsmi_get_gpu_kfd_info", "amdsmi_get_gpu_compute_partition",
)


@dataclass
class FakeGpu:
    values: dict[str, Any]
    temps: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, metric) -> degrees C
    ecc_blocks: dict[str, dict[str, int]] = field(default_factory=dict)  # block name -> counts
    errors: dict[str, int] = field(default_factory=dict)  # getter -> status code it raises


class FakeAmdSmi:
    """Stands in for the `amdsmi` module: pass an instance as AmdSmiLibBackend(lib=...)."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiRetryException = AmdSmiRetryException
    AmdSmiTimeoutException = AmdSmiTimeoutException
    AmdSmiParameterException = AmdSmiParameterException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiTemperatureType = AmdSmiTemperatureType
    AmdSmiTemperatureMetric = AmdSmiTemperatureMetric
    AmdSmiGpuBlock = AmdSmiGpuBlock
    AmdSmiMemoryPageStatus = AmdSmiMemoryPageStatus
    AmdSmiFwBlock = AmdSmiFwBlock

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialized = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.calls: list[str] = []
        for name in SIMPLE_GETTERS:
            setattr(self, name, self._simple(name))

    # -- lifecycle -----------------------------------------------------------------------------------
    def amdsmi_init(self, flag: AmdSmiInitFlags = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        self.init_calls += 1
        if self.init_error is not None:
            raise AmdSmiLibraryException(self.init_error)
        self.initialized = True

    def amdsmi_shut_down(self) -> None:
        self._need_init()
        self.shutdown_calls += 1
        self.initialized = False

    def amdsmi_get_processor_handles(self) -> list[amdsmi_processor_handle]:
        self._need_init()
        return [amdsmi_processor_handle(i) for i in range(len(self.gpus))]

    # -- getters ------------------------------------------------------------------------------------
    def _need_init(self) -> None:
        if not self.initialized:
            raise AmdSmiLibraryException(NOT_INIT)

    def _gpu(self, name: str, handle: Any) -> FakeGpu:
        if not isinstance(handle, amdsmi_processor_handle):
            raise AmdSmiParameterException(handle, amdsmi_processor_handle)
        self._need_init()
        self.calls.append(name)
        gpu = self.gpus[handle._slot]
        if name in gpu.errors:
            raise AmdSmiLibraryException(gpu.errors[name])
        return gpu

    def _simple(self, name: str):
        def getter(handle: Any) -> Any:
            gpu = self._gpu(name, handle)
            if name not in gpu.values:  # the C library answers NOT_SUPPORTED for what a part lacks
                raise AmdSmiLibraryException(NOT_SUPPORTED)
            return copy.deepcopy(gpu.values[name])
        getter.__name__ = name
        return getter

    def amdsmi_get_temp_metric(self, handle: Any, sensor: Any, metric: Any) -> int:
        if not isinstance(sensor, AmdSmiTemperatureType):
            raise AmdSmiParameterException(sensor, AmdSmiTemperatureType)
        if not isinstance(metric, AmdSmiTemperatureMetric):
            raise AmdSmiParameterException(metric, AmdSmiTemperatureMetric)
        gpu = self._gpu("amdsmi_get_temp_metric", handle)
        key = (AmdSmiTemperatureType(sensor).name, AmdSmiTemperatureMetric(metric).name)
        if key not in gpu.temps:
            raise AmdSmiLibraryException(NOT_SUPPORTED)
        return gpu.temps[key]

    def amdsmi_get_gpu_ecc_count(self, handle: Any, block: Any) -> dict[str, int]:
        if not isinstance(block, AmdSmiGpuBlock):
            raise AmdSmiParameterException(block, AmdSmiGpuBlock)
        gpu = self._gpu("amdsmi_get_gpu_ecc_count", handle)
        if block.name not in gpu.ecc_blocks:
            raise AmdSmiLibraryException(NOT_SUPPORTED)
        return dict(gpu.ecc_blocks[block.name])


# -- a modelled MI300X, in the library's shapes (values as in fixtures/nodes/mi300x-rocm71-healthy) ------
MI300X = [  # bdf, uuid, serial of the generated mi300x-c14 node
    ("0000:0c:00.0", "4cff74a1-0000-1000-8019-b7e2a0d35f86", "0x4C19B7E2A0D35F86"),
    ("0000:22:00.0", "e7ff74a1-0000-1000-80a2-0d5c913b48f1", "0x4CA20D5C913B48F1"),
]
ECC_ENABLED_BLOCKS = ("UMC", "SDMA", "GFX", "MMHUB", "PCIE_BIF", "XGMI_WAFL", "VCN", "JPEG")


def mi300x(slot: int, hive: int = 8) -> FakeGpu:
    bdf, uuid, serial = MI300X[slot]
    zero = {"correctable_count": 0, "uncorrectable_count": 0, "deferred_count": 0}
    links = ["U"] * (hive - 1) + ["X"] * (8 - hive + 1)
    mask = 0
    for name in ECC_ENABLED_BLOCKS:
        mask |= AmdSmiGpuBlock[name]
    values = {
        "amdsmi_get_gpu_device_bdf": bdf,
        "amdsmi_get_gpu_device_uuid": uuid,
        "amdsmi_get_gpu_asic_info": {
            "market_name": "AMD Instinct MI300X", "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]", "subvendor_id": "0x1002",
            "device_id": "0x74a1", "subsystem_id": "0x74a1", "rev_id": "0x00", "asic_serial": serial,
            "oam_id": 2 + slot, "num_compute_units": 304, "target_graphics_version": "gfx942"},
        "amdsmi_get_gpu_board_info": {
            "model_number": "102-G30211-0C", "product_serial": f"69241200153{slot}",
            "fru_id": "113-AMDG302110C01-100-300000084", "product_name": "AMD Instinct MI300X OAM",
            "manufacturer_name": "AMD"},
        "amdsmi_get_gpu_driver_info": {"driver_name": "amdgpu", "driver_version": "6.16.6", "driver_date": "N/A"},
        "amdsmi_get_gpu_vbios_info": {"name": "AMD MI300X_HW_SRIOV_CVS_1VF", "build_date": "2024/09/25 10:52",
                                      "part_number": "113-M3000100-102", "version": "022.040.003.042.000001"},
        "amdsmi_get_fw_info": {"fw_list": [
            {"fw_name": AmdSmiFwBlock.AMDSMI_FW_ID_CP_MEC1, "fw_version": "147"},
            {"fw_name": AmdSmiFwBlock.AMDSMI_FW_ID_PSP_SOSDRV, "fw_version": "00.36.02.4C"},
            {"fw_name": AmdSmiFwBlock.AMDSMI_FW_ID_PM, "fw_version": "00.85.110.00"}]},
        "amdsmi_get_gpu_activity": {"gfx_activity": 3, "umc_activity": 1, "mm_activity": "N/A"},
        "amdsmi_get_gpu_vram_usage": {"vram_total": 196592, "vram_used": 20768},
        "amdsmi_get_power_info": {"socket_power": 152, "current_socket_power": 152, "average_socket_power": "N/A",
                                  "gfx_voltage": "N/A", "soc_voltage": "N/A", "mem_voltage": "N/A",
                                  "power_limit": 750},
        "amdsmi_get_power_cap_info": {"power_cap": 750_000_000, "default_power_cap": 750_000_000, "dpm_cap": 0,
                                      "min_power_cap": 0, "max_power_cap": 750_000_000},
        "amdsmi_get_gpu_total_ecc_count": dict(zero),
        "amdsmi_get_gpu_ecc_enabled": mask,
        "amdsmi_get_gpu_bad_page_info": [],
        "amdsmi_get_gpu_bad_page_threshold": 128,
        "amdsmi_get_pcie_info": {
            "pcie_static": {"max_pcie_width": 16, "max_pcie_speed": 32000, "pcie_interface_version": 5,
                            "slot_type": "OAM"},
            "pcie_metric": {"pcie_width": 16, "pcie_speed": 32000, "pcie_bandwidth": 11, "pcie_replay_count": 0,
                            "pcie_l0_to_recovery_count": 0, "pcie_replay_roll_over_count": 0,
                            "pcie_nak_sent_count": 0, "pcie_nak_received_count": 0,
                            "pcie_lc_perf_other_end_recovery_count": 0}},
        "amdsmi_get_gpu_xgmi_link_status": {"status": links, "total_links": 8},
        "amdsmi_get_violation_status": {
            "reference_timestamp": 1732285000000000, "violation_timestamp": 3000000, "acc_counter": 268417903,
            "acc_prochot_thrm": 0, "acc_ppt_pwr": 6, "acc_socket_thrm": 0, "acc_vr_thrm": 0, "acc_hbm_thrm": 0,
            "acc_gfx_clk_below_host_limit": "N/A", "per_prochot_thrm": 0, "per_ppt_pwr": 0, "per_socket_thrm": 0,
            "per_vr_thrm": 0, "per_hbm_thrm": 0, "per_gfx_clk_below_host_limit": "N/A",
            "active_prochot_thrm": False, "active_ppt_pwr": False, "active_socket_thrm": False,
            "active_vr_thrm": False, "active_hbm_thrm": False, "active_gfx_clk_below_host_limit": "N/A",
            "active_low_utilization": [[True] * 8], "active_gfx_clk_below_host_limit_total": [[True] * 8]},
        "amdsmi_get_gpu_process_list": [
            {"name": "python3", "pid": 48213 + slot, "mem": 21664694272,
             "engine_usage": {"gfx": 1734829114, "enc": 0},
             "memory_usage": {"gtt_mem": 2097152, "cpu_mem": 184549376, "vram_mem": 21478047744},
             "cu_occupancy": 0}],
        "amdsmi_get_gpu_kfd_info": {"kfd_id": 19342 + slot, "node_id": 2 + slot, "current_partition_id": 0},
        "amdsmi_get_gpu_compute_partition": "SPX",
    }
    temps = {("EDGE", "CRITICAL"): 0,  # MI300 has no edge sensor: current raises, the limit reads 0
             ("HOTSPOT", "CURRENT"): 39 + slot, ("HOTSPOT", "CRITICAL"): 100,
             ("VRAM", "CURRENT"): 34 + slot, ("VRAM", "CRITICAL"): 105}
    blocks = {name: dict(zero) for name in ("UMC", "SDMA", "GFX", "MMHUB", "PCIE_BIF", "XGMI_WAFL")}
    return FakeGpu(values, temps, blocks)
