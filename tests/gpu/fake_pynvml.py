"""A stand-in for the part of nvidia-ml-py's `pynvml` module that NvmlBackend uses, replaying a real NVML
capture (fixtures/nodes/h100-nvidia/nvml.json: an H100 80GB HBM3, driver 580.159.04).

Faithful where the backend can tell: the same function names and argument order; the same return types
(str from the getters pynvml decorates with convertStrBytes, bytes from struct fields such as
PciInfo.busId and from nvmlDeviceGetGspFirmwareVersion); NVMLError(code) building the matching subclass with
nvml.h's codes (NVMLError_NotSupported is 3); NVMLError_Uninitialized before nvmlInit and after nvmlShutdown.

The capture's own encoding drives it: a value is returned, and {"nvml_error": ..., "code": N} raises
NVMLError(N), as it did on the real GPU. A query the capture did not make raises NotSupported ("the capture
cannot say"); tests add such keys to a copy of the capture to exercise them, and say so. Keys beyond
nvml.json's: minor_number, temp_gpu_max, memory_temp, temp_thresholds {slowdown, mem_max}, mem_v2
{total, reserved, free, used}, inforom {image, oem, ecc, power}, gsp_firmware, ecc_locations
{dram|sram: {corrected_volatile, ...}}, retired_pages {single_bit: [...], double_bit: [...]},
graphics_processes, nvlink_remote_bus_id [...], mig_devices [{gpu_instance_id, uuid, mem, mem_v2}].
"""
from __future__ import annotations

import copy
import json
import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any

CAPTURE = Path(__file__).resolve().parents[2] / "fixtures" / "nodes" / "h100-nvidia" / "nvml.json"

# nvml.h nvmlReturn_t (the values nvidia-ml-py 13.x defines as NVML_ERROR_*).
ERROR_CODES = {
    "NVML_ERROR_UNINITIALIZED": 1, "NVML_ERROR_INVALID_ARGUMENT": 2, "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4, "NVML_ERROR_ALREADY_INITIALIZED": 5, "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_INSUFFICIENT_SIZE": 7, "NVML_ERROR_INSUFFICIENT_POWER": 8, "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10, "NVML_ERROR_IRQ_ISSUE": 11, "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13, "NVML_ERROR_CORRUPTED_INFOROM": 14, "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16, "NVML_ERROR_OPERATING_SYSTEM": 17, "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
    "NVML_ERROR_IN_USE": 19, "NVML_ERROR_MEMORY": 20, "NVML_ERROR_NO_DATA": 21,
    "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED": 22, "NVML_ERROR_INSUFFICIENT_RESOURCES": 23,
    "NVML_ERROR_FREQ_NOT_SUPPORTED": 24, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25, "NVML_ERROR_DEPRECATED": 26,
    "NVML_ERROR_NOT_READY": 27, "NVML_ERROR_GPU_NOT_FOUND": 28, "NVML_ERROR_INVALID_STATE": 29,
    "NVML_ERROR_RESET_TYPE_NOT_SUPPORTED": 30, "NVML_ERROR_UNKNOWN": 999,
}
_MESSAGES = {1: "Uninitialized", 2: "Invalid Argument", 3: "Not Supported", 6: "Not Found",
             9: "Driver Not Loaded", 12: "NVML Shared Library Not Found", 13: "Function Not Found",
             15: "GPU is lost", 999: "Unknown Error"}


class NVMLError(Exception):
    """As in pynvml: NVMLError(code) is an instance of the subclass for that code, with .value = code."""

    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, *args: Any) -> None:  # subclasses are built without arguments, as in pynvml
        super().__init__(*args)

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


def _error_class(const: str, code: int) -> type:
    # pynvml's naming rule: NVML_ERROR_NOT_SUPPORTED -> NVMLError_NotSupported
    name = "NVMLError_" + string.capwords(const.replace("NVML_ERROR_", ""), "_").replace("_", "")

    def new(cls, *args):
        return NVMLError.__new__(cls, code)

    cls = type(name, (NVMLError,), {"__new__": new})
    NVMLError._valClassMapping[code] = cls
    return cls


ERROR_CLASSES = {const: _error_class(const, code) for const, code in ERROR_CODES.items()}
globals().update({cls.__name__: cls for cls in ERROR_CLASSES.values()})
globals().update(ERROR_CODES)


def load_capture(path: Path = CAPTURE) -> dict:
    return json.loads(path.read_text())


class _Handle:
    def __init__(self, gpu: dict, index: int, parent: "_Handle | None" = None) -> None:
        self.gpu, self.index, self.parent = gpu, index, parent


class FakePynvml:
    """Module-like: attributes are what `import pynvml` gives. `init_error` makes nvmlInit fail with that
    code (12: libnvidia-ml.so.1 missing, 9: driver not loaded)."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_GPU_MAX = 1
    NVML_FI_DEV_MEMORY_TEMP = 82
    NVML_MEMORY_LOCATION_DRAM = 2
    NVML_MEMORY_LOCATION_SRAM = 7
    nvmlMemory_v2 = 0x02000028

    def __init__(self, capture: dict | None = None, init_error: int | None = None) -> None:
        self.capture = copy.deepcopy(capture if capture is not None else load_capture())
        self.init_error = init_error
        self.initialized = 0  # nvmlInit/nvmlShutdown are reference counted in NVML
        self.calls: list[str] = []
        for cls in ERROR_CLASSES.values():
            setattr(self, cls.__name__, cls)

    # ---- plumbing --------------------------------------------------------------------------------------

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if not self.initialized:
            raise NVMLError(ERROR_CODES["NVML_ERROR_UNINITIALIZED"])

    @staticmethod
    def _value(v: Any) -> Any:
        if isinstance(v, dict) and "nvml_error" in v:
            raise NVMLError(v["code"])
        return v

    def _field(self, h: _Handle, key: str) -> Any:
        if key not in h.gpu:
            raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"])
        return self._value(h.gpu[key])

    def _part(self, h: _Handle, key: str, sub: Any) -> Any:
        whole = self._field(h, key)
        if isinstance(whole, dict):
            if sub not in whole:
                raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"])
            return self._value(whole[sub])
        return self._value(whole[sub])

    # ---- init --------------------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialized -= 1

    # ---- system ------------------------------------------------------------------------------------------

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self._value(self.capture["driver"])

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return self._value(self.capture["count"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        gpus = self.capture["gpus"]
        if not 0 <= index < len(gpus):
            raise NVMLError(ERROR_CODES["NVML_ERROR_INVALID_ARGUMENT"])
        self._value(gpus[index].get("handle", None))  # a capture may mark a GPU lost: {"nvml_error", 15}
        return _Handle(gpus[index], index)

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        self._enter("nvmlSystemGetProcessName")
        for gpu in self.capture["gpus"]:
            for p in list(gpu.get("processes") or []) + list(gpu.get("graphics_processes") or []):
                if p["pid"] == pid and p.get("name") is not None:
                    return p["name"]
        raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_FOUND"])

    # ---- identity ----------------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetName")
        return self._field(h, "name")

    def nvmlDeviceGetSerial(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetSerial")
        return self._field(h, "serial")

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetUUID")
        return self._field(h, "uuid")

    def nvmlDeviceGetMinorNumber(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMinorNumber")
        return self._field(h, "minor_number")

    def nvmlDeviceGetPciInfo(self, h: _Handle) -> SimpleNamespace:
        self._enter("nvmlDeviceGetPciInfo")
        pci = dict(self._field(h, "pci"))
        # c_char arrays in nvmlPciInfo_t come back as bytes
        pci["busId"] = pci["busId"].encode()
        pci["busIdLegacy"] = pci["busIdLegacy"].encode()
        return SimpleNamespace(**pci)

    def nvmlDeviceGetVbiosVersion(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetVbiosVersion")
        return self._field(h, "vbios")

    def nvmlDeviceGetInforomImageVersion(self, h: _Handle) -> str:
        self._enter("nvmlDeviceGetInforomImageVersion")
        return self._part(h, "inforom", "image")

    def nvmlDeviceGetInforomVersion(self, h: _Handle, obj: int) -> str:
        self._enter("nvmlDeviceGetInforomVersion")
        return self._part(h, "inforom", {0: "oem", 1: "ecc", 2: "power"}[obj])

    def nvmlDeviceGetGspFirmwareVersion(self, h: _Handle, version: Any = None) -> bytes:
        self._enter("nvmlDeviceGetGspFirmwareVersion")
        return self._field(h, "gsp_firmware").encode()  # not decorated with convertStrBytes in pynvml

    # ---- gauges ------------------------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> SimpleNamespace:
        self._enter("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(**self._field(h, "util"))

    def nvmlDeviceGetMemoryInfo(self, h: _Handle, version: int | None = None) -> SimpleNamespace:
        self._enter("nvmlDeviceGetMemoryInfo")
        if version:  # nvmlDeviceGetMemoryInfo_v2: not in the capture unless a test adds mem_v2
            return SimpleNamespace(version=version, **self._field(h, "mem_v2"))
        return SimpleNamespace(**self._field(h, "mem"))

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature")
        if sensor == 0:
            return self._field(h, "temp_gpu")
        if sensor == 1:
            return self._field(h, "temp_gpu_max")
        raise NVMLError(ERROR_CODES["NVML_ERROR_INVALID_ARGUMENT"])

    def nvmlDeviceGetTemperatureThreshold(self, h: _Handle, threshold: int) -> int:
        self._enter("nvmlDeviceGetTemperatureThreshold")
        return self._part(h, "temp_thresholds", {1: "slowdown", 2: "mem_max"}.get(threshold, threshold))

    def nvmlDeviceGetFieldValues(self, h: _Handle, field_ids: list) -> list[SimpleNamespace]:
        """Per-field status as NVML reports it: the call succeeds, each value carries its own nvmlReturn."""
        self._enter("nvmlDeviceGetFieldValues")
        out = []
        for fid in field_ids:
            fv = SimpleNamespace(fieldId=fid, scopeId=0, timestamp=0, latencyUsec=0, valueType=1,
                                 nvmlReturn=ERROR_CODES["NVML_ERROR_NOT_SUPPORTED"], value=SimpleNamespace(uiVal=0))
            if fid == self.NVML_FI_DEV_MEMORY_TEMP and "memory_temp" in h.gpu:
                v = h.gpu["memory_temp"]
                if isinstance(v, dict):
                    fv.nvmlReturn = v["code"]
                else:
                    fv.nvmlReturn, fv.value = 0, SimpleNamespace(uiVal=int(v))
            out.append(fv)
        return out

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetPowerUsage")
        return self._field(h, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetEnforcedPowerLimit")
        return self._field(h, "power_limit_mw")

    # ---- memory health -----------------------------------------------------------------------------------

    @staticmethod
    def _ecc_key(error_type: int, counter: int) -> str:
        return f"{('corrected', 'uncorrected')[error_type]}_{('volatile', 'aggregate')[counter]}"

    def nvmlDeviceGetEccMode(self, h: _Handle) -> list[int]:
        self._enter("nvmlDeviceGetEccMode")
        return list(self._field(h, "ecc_mode"))

    def nvmlDeviceGetTotalEccErrors(self, h: _Handle, error_type: int, counter: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors")
        return self._part(h, "ecc", self._ecc_key(error_type, counter))

    def nvmlDeviceGetMemoryErrorCounter(self, h: _Handle, error_type: int, counter: int, location: int) -> int:
        self._enter("nvmlDeviceGetMemoryErrorCounter")
        block = {self.NVML_MEMORY_LOCATION_DRAM: "dram", self.NVML_MEMORY_LOCATION_SRAM: "sram"}.get(location)
        per_block = self._part(h, "ecc_locations", block)
        return self._value(per_block[self._ecc_key(error_type, counter)])

    def nvmlDeviceGetRetiredPages(self, h: _Handle, cause: int) -> list[int]:
        self._enter("nvmlDeviceGetRetiredPages")
        return list(self._part(h, "retired_pages", ("single_bit", "double_bit")[cause]))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetRetiredPagesPendingStatus")
        return self._field(h, "retired_pages_pending")

    def nvmlDeviceGetRemappedRows(self, h: _Handle) -> tuple[int, int, int, int]:
        self._enter("nvmlDeviceGetRemappedRows")
        return tuple(self._field(h, "remapped_rows"))  # (corrRows, uncRows, isPending, failureOccurred)

    # ---- PCIe --------------------------------------------------------------------------------------------
    # nvml.json stores pcie_gen and pcie_width as [current, max].

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrPcieLinkGeneration")
        return self._part(h, "pcie_gen", 0)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxPcieLinkGeneration")
        return self._part(h, "pcie_gen", 1)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrPcieLinkWidth")
        return self._part(h, "pcie_width", 0)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxPcieLinkWidth")
        return self._part(h, "pcie_width", 1)

    def nvmlDeviceGetPcieReplayCounter(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetPcieReplayCounter")
        return self._field(h, "pcie_replay")

    # ---- clocks, links, processes, MIG -------------------------------------------------------------------

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons")
        return self._field(h, "throttle_reasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrentClocksThrottleReasons")
        return self._field(h, "throttle_reasons")

    def nvmlDeviceGetNvLinkState(self, h: _Handle, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkState")
        states = self._field(h, "nvlink_state")
        if not 0 <= link < len(states):
            raise NVMLError(ERROR_CODES["NVML_ERROR_INVALID_ARGUMENT"])
        return self._value(states[link])

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: _Handle, link: int) -> SimpleNamespace:
        self._enter("nvmlDeviceGetNvLinkRemotePciInfo")
        return SimpleNamespace(busId=self._part(h, "nvlink_remote_bus_id", link).encode())

    def _processes(self, h: _Handle, key: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used_memory"),
                                gpuInstanceId=p.get("gpu_instance_id", 0xFFFFFFFF),
                                computeInstanceId=p.get("compute_instance_id", 0xFFFFFFFF))
                for p in self._field(h, key)]

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetComputeRunningProcesses")
        return self._processes(h, "processes")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: _Handle) -> list[SimpleNamespace]:
        self._enter("nvmlDeviceGetGraphicsRunningProcesses")
        return self._processes(h, "graphics_processes")

    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        return list(self._field(h, "mig_mode"))

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount")
        self._field(h, "mig_mode")
        return 7 if "mig_devices" in h.gpu else 0  # an A100/H100 has up to 7 instances

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, index: int) -> _Handle:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        devices = h.gpu.get("mig_devices") or []
        if not 0 <= index < len(devices):
            raise NVMLError(ERROR_CODES["NVML_ERROR_NOT_FOUND"])
        return _Handle(devices[index], index, parent=h)

    def nvmlDeviceGetGpuInstanceId(self, h: _Handle) -> int:
        self._enter("nvmlDeviceGetGpuInstanceId")
        if h.parent is None:
            raise NVMLError(ERROR_CODES["NVML_ERROR_INVALID_ARGUMENT"])  # not a MIG device handle
        return self._field(h, "gpu_instance_id")
