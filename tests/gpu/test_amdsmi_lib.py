"""The amdsmi library backend against a faithful fake of the library (tests/gpu/fake_amdsmi.py: the 7.x Python
layer's return shapes, exceptions and type checks), and against a real `import amdsmi` failing as it does
without libamd_smi.so. No AMD GPU exists on any test machine."""
from __future__ import annotations

import sys

import pytest

from agent.sources.gpu.amdsmi_lib import AmdSmiLibBackend
from agent.sources.gpu.amd_smi_cli import AmdSmiCliBackend
from agent.sources.gpu.backend import BackendUnavailable
from tests.support import FIXTURES

from . import fake_amdsmi as fake


def two_gpus(**lib_kwargs) -> fake.FakeAmdSmi:
    return fake.FakeAmdSmi([fake.mi300x(0), fake.mi300x(1)], **lib_kwargs)


def ecc(g, kind: str, block: str) -> int | None:
    return next((e.count for e in g.ecc if e.type == kind and e.block == block), None)


def test_healthy_two_gpu_node():
    lib = two_gpus()
    inv = AmdSmiLibBackend(lib=lib).read()
    assert (inv.backend, inv.vendor, inv.errors) == ("amdsmi", "amd", [])  # NOT_SUPPORTED fields are quiet
    g0, g1 = inv.gpus
    assert (g0.index, g1.index) == (0, 1)
    assert (g0.model, g0.serial, g0.uuid, g0.pci_bus_id, g0.driver) == (
        "AMD Instinct MI300X", "0x4C19B7E2A0D35F86", "4cff74a1-0000-1000-8019-b7e2a0d35f86", "0000:0c:00.0", "6.16.6")
    assert g1.pci_bus_id == "0000:22:00.0"
    assert g0.firmware == {"vbios": "022.040.003.042.000001", "CP_MEC1": "147", "PSP_SOSDRV": "00.36.02.4C",
                           "PM": "00.85.110.00"}
    assert g0.utilization == pytest.approx(0.03)
    assert (g0.memory_used_bytes, g0.memory_total_bytes) == (20768 * 1024**2, 196592 * 1024**2)
    assert g0.temperatures == {"junction": 39, "memory": 34}  # no edge sensor on MI300
    assert g0.temperature_limits == {"junction": 100, "memory": 105}  # an edge limit of 0 means none
    assert (g0.power_watts, g0.power_limit_watts) == (152, 750)
    assert all(e.count == 0 for e in g0.ecc)
    assert {e.block for e in g0.ecc} == {"UMC", "SDMA", "GFX", "MMHUB", "PCIE_BIF", "XGMI_WAFL", "total"}
    assert (g0.retired_pages, g0.pending_pages, g0.bad_page_threshold, g0.bad_page_threshold_exceeded) == (
        0, 0, 128, False)
    assert (g0.pcie_width, g0.pcie_max_width, g0.pcie_speed_gts, g0.pcie_max_speed_gts, g0.pcie_replay_count) == (
        16, 16, 32.0, 32.0, 0)
    assert [(link.name, link.peer, link.up) for link in g1.links] == [
        ("xgmi0", "0", True)] + [(f"xgmi{k}", str(k + 1), True) for k in range(1, 7)]
    assert (g0.throttle_active, g0.throttle_hardware) == ([], [])  # per-XCP low utilization is not throttling
    assert [(p.pid, p.name, p.memory_bytes) for p in g0.processes] == [(48213, "python3", 21664694272)]
    assert (g0.partition, g1.partition) == ("", "")
    assert lib.init_calls == 1


def test_library_and_cli_agree_on_the_same_gpu():
    """The fake models GPU 0 of fixtures/nodes/mi300x-rocm71-healthy; both backends must read it the same."""
    lib_gpu = AmdSmiLibBackend(lib=two_gpus()).read().gpus[0]
    cli_gpu = AmdSmiCliBackend(snapshot_dir=FIXTURES / "mi300x-rocm71-healthy" / "amd-smi").read().gpus[0]
    for field in ("model", "serial", "uuid", "pci_bus_id", "driver", "partition", "utilization",
                  "memory_used_bytes", "memory_total_bytes", "temperatures", "temperature_limits", "power_watts",
                  "power_limit_watts", "retired_pages", "pending_pages", "bad_page_threshold",
                  "bad_page_threshold_exceeded", "pcie_width", "pcie_max_width", "pcie_speed_gts",
                  "pcie_max_speed_gts", "pcie_replay_count", "links", "throttle_active", "processes"):
        assert getattr(lib_gpu, field) == getattr(cli_gpu, field), field


def test_uncorrectable_ecc_and_bad_pages():
    sick = fake.mi300x(1)
    sick.values["amdsmi_get_gpu_total_ecc_count"] = {"correctable_count": 5, "uncorrectable_count": 2,
                                                      "deferred_count": 0}
    sick.ecc_blocks["UMC"] = {"correctable_count": 5, "uncorrectable_count": 2, "deferred_count": 0}
    status = fake.AmdSmiMemoryPageStatus
    sick.values["amdsmi_get_gpu_bad_page_info"] = [
        {"value": 0, "page_address": 0x5E3A7000, "page_size": 4096, "status": status.RESERVED},
        {"value": 1, "page_address": 0x1B2C44000, "page_size": 4096, "status": status.RESERVED},
        {"value": 2, "page_address": 0x2000, "page_size": 4096, "status": status.PENDING}]
    sick.values["amdsmi_get_gpu_bad_page_threshold"] = 1
    inv = AmdSmiLibBackend(lib=fake.FakeAmdSmi([fake.mi300x(0), sick])).read()
    g0, g1 = inv.gpus
    assert ecc(g1, "uncorrectable", "total") == 2 and ecc(g1, "uncorrectable", "UMC") == 2
    assert ecc(g1, "correctable", "UMC") == 5 and ecc(g1, "uncorrectable", "GFX") == 0
    assert (g1.retired_pages, g1.pending_pages) == (2, 1)
    assert g1.bad_page_threshold_exceeded is True  # 2 retired pages above a threshold of 1
    assert ecc(g0, "uncorrectable", "total") == 0 and g0.retired_pages == 0


def test_not_supported_field_stays_none_and_the_rest_of_the_gpu_is_read():
    gpu = fake.mi300x(0)
    gpu.errors["amdsmi_get_pcie_info"] = fake.NOT_SUPPORTED
    gpu.errors["amdsmi_get_violation_status"] = fake.NOT_SUPPORTED  # pre-MI300: falls back to gpu metrics
    inv = AmdSmiLibBackend(lib=fake.FakeAmdSmi([gpu])).read()
    (g,) = inv.gpus
    assert inv.errors == []
    assert (g.pcie_width, g.pcie_max_width, g.pcie_speed_gts, g.pcie_replay_count) == (None, None, None, None)
    assert g.throttle_active == []  # no gpu metrics either (NOT_SUPPORTED): nothing invented
    assert (g.power_watts, g.temperatures["junction"], g.uuid) == (152, 39, "4cff74a1-0000-1000-8019-b7e2a0d35f86")


def test_other_library_errors_are_reported_per_field():
    gpu = fake.mi300x(0)
    gpu.errors["amdsmi_get_power_info"] = fake.TIMEOUT
    gpu.errors["amdsmi_get_power_cap_info"] = fake.NOT_SUPPORTED
    inv = AmdSmiLibBackend(lib=fake.FakeAmdSmi([gpu, fake.mi300x(1)])).read()
    assert inv.errors == ["gpu0: amdsmi_get_power_info: Error code: 8 | AMDSMI_STATUS_TIMEOUT - Timeout in API call"]
    g0, g1 = inv.gpus
    assert (g0.power_watts, g0.power_limit_watts) == (None, None)
    assert g0.utilization == pytest.approx(0.03) and g1.power_watts == 152


def test_active_violations_split_power_cap_from_hardware():
    gpu = fake.mi300x(0)
    gpu.values["amdsmi_get_violation_status"].update(active_ppt_pwr=True, active_socket_thrm=True,
                                                     active_vr_thrm="N/A")
    (g,) = AmdSmiLibBackend(lib=fake.FakeAmdSmi([gpu])).read().gpus
    assert (g.throttle_active, g.throttle_hardware) == (["ppt", "socket_thermal"], ["socket_thermal"])


def test_older_part_without_violation_status_uses_gpu_metrics_throttle_flag():
    gpu = fake.mi300x(0)
    del gpu.values["amdsmi_get_violation_status"]
    gpu.values["amdsmi_get_gpu_metrics_info"] = {"throttle_status": True, "indep_throttle_status": "N/A"}
    (g,) = AmdSmiLibBackend(lib=fake.FakeAmdSmi([gpu])).read().gpus
    assert (g.throttle_active, g.throttle_hardware) == (["throttled"], [])


def test_compute_partitions_get_their_partition_id():
    parts = []
    for pid in range(2):
        p = fake.mi300x(pid)
        p.values["amdsmi_get_gpu_compute_partition"] = "CPX"
        p.values["amdsmi_get_gpu_kfd_info"]["current_partition_id"] = pid
        parts.append(p)
    gpus = AmdSmiLibBackend(lib=fake.FakeAmdSmi(parts)).read().gpus
    assert [g.name for g in gpus] == ["0/0", "1/1"]


def test_xgmi_link_down_and_disabled_slots():
    gpu = fake.mi300x(0)
    gpu.values["amdsmi_get_gpu_xgmi_link_status"] = {"status": ["U", "D", "U", "U", "U", "U", "U", "X"],
                                                     "total_links": 8}
    (g,) = AmdSmiLibBackend(lib=fake.FakeAmdSmi([gpu])).read().gpus
    assert [(link.name, link.peer) for link in g.links if link.up is False] == [("xgmi1", "2")]
    assert len(g.links) == 7


def test_init_once_and_close_shuts_down():
    lib = two_gpus()
    backend = AmdSmiLibBackend(lib=lib)
    backend.close()
    assert lib.shutdown_calls == 0  # never initialised: nothing to shut down
    backend.read()
    backend.read()
    assert lib.init_calls == 1
    backend.close()
    assert (lib.shutdown_calls, lib.initialized) == (1, False)
    backend.close()
    assert lib.shutdown_calls == 1


def test_driver_not_loaded_is_unavailable_and_retried_next_read():
    lib = two_gpus(init_error=fake.DRIVER_NOT_LOADED)
    backend = AmdSmiLibBackend(lib=lib)
    with pytest.raises(BackendUnavailable, match=r"34 \| AMDSMI_STATUS_DRIVER_NOT_LOADED"):
        backend.read()
    lib.init_error = None  # the driver got loaded
    assert len(backend.read().gpus) == 2
    assert lib.init_calls == 2


def test_library_missing_keyerror_on_import_is_unavailable(tmp_path, monkeypatch, capsys):
    """What `import amdsmi` does without libamd_smi.so (../shared/reference/import_without_libamd_smi.txt):
    print to stdout, then KeyError."""
    pkg = tmp_path / "amdsmi"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "print('/opt/rocm/lib/libamd_smi.so: cannot open shared object file: No such file or directory')\n"
        "print('Unable to find libamd_smi.so library try installing amd-smi-lib from your package manager')\n"
        "_libraries = {}\n"
        "amdsmi_free_name_value_pairs = _libraries['libamd_smi.so'].amdsmi_free_name_value_pairs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    with pytest.raises(BackendUnavailable, match="libamd_smi.so") as info:
        AmdSmiLibBackend().read()
    assert "Unable to find libamd_smi.so" in str(info.value)
    assert capsys.readouterr().out == ""  # the wrapper's print must not corrupt `agent --once --json`


def test_library_not_installed_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # makes `import amdsmi` raise ImportError
    with pytest.raises(BackendUnavailable, match="cannot import amdsmi"):
        AmdSmiLibBackend().read()


def test_fake_rejects_what_the_real_library_rejects():
    """The fake must hold the backend to the real library's rules, or the tests above prove nothing."""
    lib = two_gpus()
    with pytest.raises(fake.AmdSmiLibraryException) as info:
        lib.amdsmi_get_processor_handles()
    assert info.value.get_error_code() == fake.NOT_INIT
    lib.amdsmi_init()
    handle = lib.amdsmi_get_processor_handles()[0]
    with pytest.raises(fake.AmdSmiParameterException):
        lib.amdsmi_get_gpu_activity(0)  # an index is not a handle
    with pytest.raises(fake.AmdSmiParameterException):
        lib.amdsmi_get_temp_metric(handle, 1, 0)  # raw ints are not enum members
    with pytest.raises(fake.AmdSmiLibraryException) as info:
        lib.amdsmi_get_temp_metric(handle, fake.AmdSmiTemperatureType.EDGE, fake.AmdSmiTemperatureMetric.CURRENT)
    assert str(info.value) == "Error code:\n\t2 | AMDSMI_STATUS_NOT_SUPPORTED - Feature not supported"
