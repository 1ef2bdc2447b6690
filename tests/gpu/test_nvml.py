"""NvmlBackend on a fake pynvml that replays a real H100's NVML answers (fixtures/nodes/h100-nvidia/nvml.json),
and the agreement between the NVML and nvidia-smi backends."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sources.gpu import nvml as gpu_nvidia
from agent.sources.gpu.backend import BackendUnavailable
from agent.sources.gpu.nvml import NvmlBackend
from agent.sources.gpu.nvidia_smi_xml import parse_xml

from . import fake_pynvml
from .fake_pynvml import FakePynvml, load_capture

ROOT = Path(__file__).resolve().parents[2]
H100_XML = ROOT / "fixtures" / "nodes" / "h100-nvidia" / "nvidia-smi" / "q.xml"
REMAP_XML = ROOT / "fixtures" / "nodes" / "h100-row-remap-pending" / "nvidia-smi" / "q.xml"
NOT_SUPPORTED = {"nvml_error": "Not Supported", "code": 3}
MIB = 1024 * 1024


def capture(**gpu_changes) -> dict:
    """The real capture, with `gpu_changes` applied to its GPU (each use says what it adds)."""
    cap = load_capture()
    cap["gpus"][0].update(copy.deepcopy(gpu_changes))
    return cap


def read(cap: dict | None = None):
    backend = NvmlBackend(FakePynvml(cap))
    try:
        return backend.read()
    finally:
        backend.close()


def only(inv):
    assert len(inv.gpus) == 1
    return inv.gpus[0]


def ecc(reading, typ, block, volatile=True):
    found = [e.count for e in reading.ecc if (e.type, e.block, e.volatile) == (typ, block, volatile)]
    assert len(found) <= 1
    return found[0] if found else None


# ---- the fake is the real module's surface ------------------------------------------------------------------

def test_fake_matches_real_pynvml_codes_and_names():
    import pynvml  # a test dependency (nvidia-ml-py): missing means a broken install, not a skip
    for const, code in fake_pynvml.ERROR_CODES.items():
        assert getattr(pynvml, const) == code, const
        assert type(pynvml.NVMLError(code)).__name__ == type(fake_pynvml.NVMLError(code)).__name__
    assert isinstance(fake_pynvml.NVMLError(3), fake_pynvml.NVMLError_NotSupported)
    assert fake_pynvml.NVMLError_NotSupported().value == 3 == pynvml.NVMLError_NotSupported().value
    for name in dir(FakePynvml):
        if name.startswith("nvml") or name.startswith("NVML_"):
            assert hasattr(pynvml, name), f"the fake invents {name}"
            if name.startswith("NVML_") or name == "nvmlMemory_v2":
                assert getattr(pynvml, name) == getattr(FakePynvml, name), name


def test_backend_uses_only_functions_real_pynvml_has():
    import pynvml  # a test dependency (nvidia-ml-py): missing means a broken install, not a skip
    called = set(re.findall(r'"(nvml(?:Device|System)\w+)"', Path(gpu_nvidia.__file__).read_text()))
    called |= {"nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex"}
    assert called - set(dir(pynvml)) == set()
    assert called - set(dir(FakePynvml)) == set()


def test_backend_constants_are_nvml_h_values():
    import pynvml  # a test dependency (nvidia-ml-py): missing means a broken install, not a skip
    for name in ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_DRIVER_NOT_LOADED",
                 "NVML_TEMPERATURE_GPU", "NVML_TEMPERATURE_GPU_MAX", "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN",
                 "NVML_TEMPERATURE_THRESHOLD_MEM_MAX", "NVML_FI_DEV_MEMORY_TEMP", "NVML_MEMORY_LOCATION_DRAM",
                 "NVML_MEMORY_LOCATION_SRAM", "NVML_VOLATILE_ECC", "NVML_AGGREGATE_ECC", "NVML_INFOROM_POWER"):
        assert getattr(gpu_nvidia, name) == getattr(pynvml, name), name
    assert gpu_nvidia.NVML_MEMORY_V2 == pynvml.nvmlMemory_v2
    bits = {v: k for k, v in vars(pynvml).items() if k.startswith("nvmlClocksThrottleReason") and
            k not in ("nvmlClocksThrottleReasonAll", "nvmlClocksThrottleReasonNone",
                      "nvmlClocksThrottleReasonUserDefinedClocks")}
    from agent.sources.gpu.nvidia_smi_xml import CLOCK_REASON_BITS
    assert set(CLOCK_REASON_BITS) == set(bits)


def test_module_import_does_not_import_pynvml():
    code = ("import sys, agent.sources.gpu.nvml, agent.sources.gpu.nvidia_smi_xml; "
            "sys.exit('pynvml' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---- the real H100 capture ------------------------------------------------------------------------------------

def test_h100_capture():
    inv = read()
    assert (inv.backend, inv.vendor, inv.errors) == ("nvml", "nvidia", [])
    g = only(inv)
    assert (g.index, g.partition, g.vendor) == (0, "", "nvidia")
    assert g.model == "NVIDIA H100 80GB HBM3"
    assert g.uuid == "GPU-c2db4247-4ef4-7d0b-632d-6e62e887a1c9" and g.serial == "1752824028226"
    assert g.pci_bus_id == "0000:00:06.0"  # from "00000000:00:06.0"
    assert g.driver == "580.159.04"
    assert g.firmware == {"vbios": "96.00.DA.00.0C"}
    assert g.memory_total_bytes == 85_520_809_984
    # The capture has nvmlMemory_v1 only, whose used = total - free counts the 480 MiB the driver reserves.
    assert g.memory_used_bytes == 480 * MIB
    assert g.utilization == 0.0
    assert g.temperatures == {"edge": 36.0}
    assert g.power_watts == pytest.approx(117.913) and g.power_limit_watts == 700.0
    assert {(e.type, e.block, e.volatile, e.count) for e in g.ecc} == {
        ("correctable", "total", True, 0), ("uncorrectable", "total", True, 0),
        ("correctable", "total", False, 0), ("uncorrectable", "total", False, 0)}
    assert (g.row_remap_correctable, g.row_remap_uncorrectable, g.row_remap_pending, g.row_remap_failure) == \
        (0, 0, False, False)
    assert g.retired_pages is None and g.pending_pages is None  # NotSupported on the real GPU
    assert (g.pcie_speed_gts, g.pcie_max_speed_gts, g.pcie_width, g.pcie_max_width) == (32.0, 32.0, 16, 16)
    assert g.pcie_replay_count == 0
    assert g.links == []  # NvLinkState NotSupported: a PCIe H100
    assert g.throttle_active == [] and g.throttle_hardware == []  # mask 0x1 is gpu_idle: not throttling
    assert g.processes == []


def test_nvml_and_nvidia_smi_agree_on_the_h100():
    """Two captures of two H100s of one machine class: identity differs, shapes and units must not."""
    x = [g for g in parse_xml(H100_XML.read_text()) if not g.partition][0]
    n = only(read())
    same = ("vendor", "model", "driver", "partition", "memory_total_bytes", "power_limit_watts", "pcie_width",
            "pcie_max_width", "pcie_speed_gts", "pcie_max_speed_gts", "pcie_replay_count", "row_remap_correctable",
            "row_remap_uncorrectable", "row_remap_pending", "row_remap_failure", "retired_pages", "pending_pages",
            "throttle_active", "throttle_hardware", "links", "processes", "utilization", "pci_bus_id")
    assert {f: getattr(n, f) for f in same} == {f: getattr(x, f) for f in same}
    assert n.firmware["vbios"] == x.firmware["vbios"]
    assert n.temperatures["edge"] == x.temperatures["edge"] == 36.0  # one sensor name for the core sensor
    totals = lambda g: {(e.type, e.volatile, e.count) for e in g.ecc if e.block == "total"}  # noqa: E731
    assert totals(n) == totals(x)
    for g in (n, x):
        assert re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", g.uuid)
        assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", g.pci_bus_id)
        assert 50 < g.power_watts < g.power_limit_watts  # watts, not milliwatts
        assert 0 <= g.memory_used_bytes < g.memory_total_bytes
    assert n.uuid != x.uuid


def test_row_remap_pending_reads_like_the_derived_xml_node():
    """The fault of fixtures/nodes/h100-row-remap-pending, as NVML would report it."""
    ecc_now = dict(load_capture()["gpus"][0]["ecc"], uncorrected_volatile=2, uncorrected_aggregate=2)
    n = only(read(capture(remapped_rows=[0, 1, 1, 0], ecc=ecc_now)))
    x = [g for g in parse_xml(REMAP_XML.read_text()) if not g.partition][0]
    for g in (n, x):
        assert (g.row_remap_pending, g.row_remap_uncorrectable, g.row_remap_failure) == (True, 1, False)
        assert ecc(g, "uncorrectable", "total") == 2 and ecc(g, "correctable", "total") == 0


@pytest.mark.parametrize("mask,active,hardware", [
    (0x1, [], []),
    (0x1 | 0x4 | 0x40, ["sw_power_cap", "hw_thermal_slowdown"], ["hw_thermal_slowdown"]),
    (0x8 | 0x80, ["hw_slowdown", "hw_power_brake_slowdown"], ["hw_slowdown", "hw_power_brake_slowdown"]),
    (0x2 | 0x100 | 0x20, ["sw_thermal_slowdown"], []),
    (0x1000, ["unknown_0x1000"], []),
])
def test_clock_event_reasons_bitmask(mask, active, hardware):
    g = only(read(capture(throttle_reasons=mask)))
    assert (g.throttle_active, g.throttle_hardware) == (active, hardware)


# ---- failures -----------------------------------------------------------------------------------------------

def test_library_not_found_is_unavailable():
    with pytest.raises(BackendUnavailable, match="libnvidia-ml"):
        NvmlBackend(FakePynvml(init_error=12)).read()


def test_driver_not_loaded_is_unavailable():
    with pytest.raises(BackendUnavailable, match="driver not loaded"):
        NvmlBackend(FakePynvml(init_error=9)).read()


@pytest.mark.parametrize("code", [4, 18, 999])  # no permission, driver/library mismatch, unknown
def test_other_init_failures_are_errors(code):
    with pytest.raises(RuntimeError) as e:
        NvmlBackend(FakePynvml(init_error=code)).read()
    assert not isinstance(e.value, BackendUnavailable)


def test_missing_package_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(BackendUnavailable, match="nvidia-ml-py"):
        NvmlBackend().read()


def test_not_supported_fields_are_none_and_the_gpu_stays():
    cap = capture(temp_gpu=NOT_SUPPORTED, power_mw=NOT_SUPPORTED, remapped_rows=NOT_SUPPORTED,
                  util=NOT_SUPPORTED, ecc=NOT_SUPPORTED, pcie_replay=NOT_SUPPORTED, name=NOT_SUPPORTED)
    inv = read(cap)
    g = only(inv)
    assert inv.errors == []  # not supported is not a fault
    assert g.temperatures == {} and g.power_watts is None and g.utilization is None and g.model is None
    assert g.row_remap_pending is None and g.ecc == [] and g.pcie_replay_count is None
    assert g.uuid == "GPU-c2db4247-4ef4-7d0b-632d-6e62e887a1c9" and g.memory_total_bytes == 85_520_809_984


def test_other_field_errors_are_reported_and_the_gpu_stays():
    inv = read(capture(temp_gpu={"nvml_error": "GPU is lost", "code": 15},
                       power_mw={"nvml_error": "Unknown Error", "code": 999}))
    g = only(inv)
    assert "edge" not in g.temperatures and g.power_watts is None
    assert g.power_limit_watts == 700.0
    assert any("gpu0" in e and "nvmlDeviceGetTemperature" in e and "GPU is lost" in e for e in inv.errors)
    assert any("nvmlDeviceGetPowerUsage" in e for e in inv.errors)


def test_a_lost_gpu_is_skipped_and_reported():
    cap = load_capture()
    lost = copy.deepcopy(cap["gpus"][0])
    lost["handle"] = {"nvml_error": "GPU is lost", "code": 15}
    cap["gpus"].append(lost)
    cap["count"] = 2
    inv = read(cap)
    assert [g.index for g in inv.gpus] == [0]
    assert any(e.startswith("gpu1:") and "GPU is lost" in e for e in inv.errors)


def test_init_once_and_close_shuts_down():
    fake = FakePynvml()
    backend = NvmlBackend(fake)
    backend.read()
    backend.read()
    assert fake.calls.count("nvmlInit") == 1
    backend.close()
    assert fake.calls.count("nvmlShutdown") == 1 and fake.initialized == 0
    backend.close()  # idempotent
    assert fake.calls.count("nvmlShutdown") == 1


# ---- fields the capture did not query (synthetic additions, named in each test) -----------------------------

def test_minor_number_sensors_thresholds_and_memory_v2():
    g = only(read(capture(minor_number=3, temp_gpu_max=41, memory_temp=38,
                          temp_thresholds={"slowdown": 87, "mem_max": 95},
                          mem_v2={"total": 85520809984, "reserved": 480 * MIB, "free": 85017493504, "used": 0},
                          inforom={"image": "G520.0200.00.05", "oem": "2.1", "ecc": "7.16", "power": NOT_SUPPORTED},
                          gsp_firmware="580.159.04")))
    assert g.index == 3 and g.entity == "gpu3"  # the minor number, as in the XML
    assert g.temperatures == {"edge": 36.0, "junction": 41.0, "memory": 38.0}
    assert g.temperature_limits == {"edge": 87.0, "memory": 95.0}
    assert g.memory_used_bytes == 0  # v2 leaves the reserved memory out, like nvidia-smi
    assert g.firmware == {"vbios": "96.00.DA.00.0C", "inforom_image": "G520.0200.00.05", "inforom_oem": "2.1",
                          "inforom_ecc": "7.16", "gsp": "580.159.04"}


def test_memory_temperature_zero_means_no_sensor():
    assert "memory" not in only(read(capture(memory_temp=0))).temperatures


def test_ecc_by_location_and_page_retirement():
    zero = {"corrected_volatile": 0, "uncorrected_volatile": 0, "corrected_aggregate": 0, "uncorrected_aggregate": 0}
    g = only(read(capture(
        ecc={"corrected_volatile": 5, "uncorrected_volatile": 2, "corrected_aggregate": 5, "uncorrected_aggregate": 2},
        ecc_locations={"dram": dict(zero, corrected_volatile=5, uncorrected_volatile=2, corrected_aggregate=5,
                                    uncorrected_aggregate=2), "sram": zero},
        retired_pages={"single_bit": [0x1000, 0x2000], "double_bit": [0x3000]}, retired_pages_pending=1)))
    assert ecc(g, "uncorrectable", "dram") == 2 and ecc(g, "uncorrectable", "sram") == 0
    assert ecc(g, "uncorrectable", "total") == 2 and ecc(g, "correctable", "total") == 5
    assert ecc(g, "correctable", "dram", volatile=False) == 5
    assert (g.retired_pages, g.pending_pages) == (3, 1)


def test_processes_compute_and_graphics_once():
    g = only(read(capture(processes=[{"pid": 4242, "name": "python3", "used_memory": 1024 * MIB}],
                          graphics_processes=[{"pid": 4242, "name": "python3", "used_memory": 1024 * MIB},
                                              {"pid": 77, "name": None, "used_memory": None}])))
    assert [(p.pid, p.name, p.memory_bytes) for p in g.processes] == [(4242, "python3", 1024 * MIB),
                                                                      (77, None, None)]


def test_nvlink_states_and_peers():
    cap = load_capture()
    a = cap["gpus"][0]
    b = copy.deepcopy(a)
    b["pci"] = dict(a["pci"], busId="00000000:0A:00.0")
    a.update(nvlink_state=[1, 0, 1], nvlink_remote_bus_id=["00000000:0A:00.0", "00000000:0A:00.0",
                                                             "00000000:C0:00.0"])  # the last: an NVSwitch
    b.update(nvlink_state=[1], nvlink_remote_bus_id=["00000000:00:06.0"])
    cap["gpus"].append(b)
    cap["count"] = 2
    inv = read(cap)
    g0, g1 = inv.gpus
    assert [(link.name, link.peer, link.up, link.kind) for link in g0.links] == [
        ("nvlink0", "1", True, "nvlink"), ("nvlink1", "1", False, "nvlink"), ("nvlink2", None, True, "nvlink")]
    assert [(link.name, link.peer, link.up) for link in g1.links] == [("nvlink0", "0", True)]
    assert inv.errors == []


def test_mig_instances_become_partitions():
    g = read(capture(mig_mode=[1, 1], mig_devices=[
        {"gpu_instance_id": 3, "uuid": "MIG-11111111-2222-3333-4444-555555555555",
         "mem": {"total": 19968 * MIB, "free": 19956 * MIB, "used": 12 * MIB}},
        {"gpu_instance_id": 5, "uuid": "MIG-66666666-2222-3333-4444-555555555555",
         "mem": {"total": 19968 * MIB, "free": 19968 * MIB, "used": 0}}]))
    whole, *parts = g.gpus
    assert whole.partition == "" and [p.partition for p in parts] == ["3", "5"]
    assert [p.name for p in parts] == ["0/3", "0/5"]
    assert parts[0].uuid.startswith("MIG-") and parts[0].memory_used_bytes == 12 * MIB
    assert all(p.ecc == [] and p.pci_bus_id == whole.pci_bus_id for p in parts)
    assert g.errors == []
