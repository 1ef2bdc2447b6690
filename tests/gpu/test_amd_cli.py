"""The amd-smi JSON backend, on the node snapshots in fixtures/nodes (the real amd-smi CLI's output for a
modelled MI300X node, ROCm 6.2 and 7.1, plus derived faults and a real APU N/A excerpt; each node's README
says where it came from) and on a fake `amd-smi` executable for the live path. No AMD GPU is needed."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from agent.sources.gpu.amd_smi_cli import AmdSmiCliBackend, decode_json, parse_links, parse_outputs, value_of
from agent.sources.gpu.backend import BackendUnavailable
from agent.sources.gpu.model import EccCount
from tests.support import FIXTURES

AMD_NODES = {  # node -> GPUs amd-smi reports
    "mi300x-rocm71-healthy": 8, "mi300x-rocm62-healthy": 8, "mi300x-rocm71-ecc-correctable": 8,
    "mi300x-rocm71-busy": 8, "mi300x-faulty": 8, "mi300x-gpu-missing": 7, "mi300a-apu-na": 1,
    "mi300x-cper": 8,
}
PARTIAL_NODES = {"mi300x-metric-truncated": 8}  # one command's output unusable on purpose: read with errors


def read_node(name: str):
    return AmdSmiCliBackend(snapshot_dir=FIXTURES / name / "amd-smi").read()


def outputs_of(name: str) -> dict[str, object]:
    return {p.stem: json.loads(p.read_text()) for p in (FIXTURES / name / "amd-smi").glob("*.json")}


def ecc(g, kind: str, block: str) -> int | None:
    return next((e.count for e in g.ecc if e.type == kind and e.block == block), None)


# -- every fixture node ---------------------------------------------------------------------------------
def test_every_amd_fixture_node_is_covered():
    on_disk = {p.parent.name for p in FIXTURES.glob("*/amd-smi")}
    known = set(AMD_NODES) | set(PARTIAL_NODES)
    assert on_disk <= known, f"add the new node to AMD_NODES: {on_disk - known}"


@pytest.mark.parametrize("name", sorted(AMD_NODES))
def test_fixture_node_parses_cleanly(name):
    inv = read_node(name)
    assert inv.errors == []
    assert (inv.backend, inv.vendor) == ("amd-smi", "amd")
    assert len(inv.gpus) == AMD_NODES[name]
    assert [g.index for g in inv.gpus] == sorted(g.index for g in inv.gpus)
    expected = json.loads((FIXTURES / name / "node.json").read_text())["expect"]["gpus"]
    assert (len(inv.gpus) == expected) == (name != "mi300x-gpu-missing")
    for g in inv.gpus:
        assert g.vendor == "amd" and g.pci_bus_id and g.pci_bus_id == g.pci_bus_id.lower()
        assert g.model and "MI300" in g.model


def test_truncated_metric_output_is_unread_not_parsed_from_a_fragment():
    """The old decoder took the first nested object of the cut document (GPU 0's entry) for the whole output,
    so GPU 0 looked fully read and the others silently lacked ECC: no error at all."""
    inv = read_node("mi300x-metric-truncated")
    [error] = inv.errors
    assert error.startswith("amd-smi metric: incomplete JSON") and "65536" in error
    assert len(inv.gpus) == 8
    for g in inv.gpus:  # nothing from metric, everything from the other commands
        assert g.ecc == [] and g.temperatures == {} and g.pcie_width is None
        assert g.pcie_max_width == 16 and g.model and g.unread["gpu.ecc.uncorrectable"] == error
        assert set(g.unread) == {"gpu.ecc.uncorrectable", "gpu.ecc.correctable", "gpu.ecc.deferred",
                                 "gpu.temperature", "gpu.pcie.width", "gpu.pcie.generation", "gpu.throttle"}
    assert inv.gpus[3].retired_pages == 2  # bad-pages is whole


def test_a_gpu_missing_from_one_commands_output_has_that_commands_checks_unread():
    outputs = outputs_of("mi300x-rocm71-healthy")
    outputs["bad-pages"] = [e for e in outputs["bad-pages"] if e["gpu"] != 4]
    readings, errors = parse_outputs(outputs)
    assert errors == []
    assert readings[4].unread == {"gpu.pages.retired": "amd-smi bad-pages printed nothing for GPU 4",
                                  "gpu.pages.pending": "amd-smi bad-pages printed nothing for GPU 4"}
    assert all(g.unread == {} for g in readings if g.index != 4)


def test_gpu_missing_node_lacks_gpu7_everywhere():
    inv = read_node("mi300x-gpu-missing")
    assert [g.index for g in inv.gpus] == list(range(7))
    assert "0000:df:00.0" not in {g.pci_bus_id for g in inv.gpus}


# -- both JSON shapes -----------------------------------------------------------------------------------
def test_rocm62_list_shape_and_rocm71_gpu_data_shape_read_the_same_node():
    old, new = read_node("mi300x-rocm62-healthy").gpus, read_node("mi300x-rocm71-healthy").gpus
    assert len(old) == len(new) == 8
    for a, b in zip(old, new):
        # The tool itself renamed the product between versions; both are this MI300X.
        assert (a.model, b.model) == ("MI300X-O", "AMD Instinct MI300X")
        for field in ("index", "serial", "uuid", "pci_bus_id", "utilization", "memory_used_bytes",
                      "memory_total_bytes", "temperatures", "temperature_limits", "power_watts",
                      "power_limit_watts", "retired_pages", "pending_pages", "pcie_width", "pcie_max_width",
                      "pcie_speed_gts", "pcie_max_speed_gts", "pcie_replay_count", "partition"):
            assert getattr(a, field) == getattr(b, field), field
        totals = lambda g: sorted((e.type, e.count) for e in g.ecc if e.block == "total")  # noqa: E731
        assert totals(a) == totals(b) == [("correctable", 0), ("deferred", 0), ("uncorrectable", 0)]
        assert [(p.pid, p.name, p.memory_bytes) for p in a.processes] == \
               [(p.pid, p.name, p.memory_bytes) for p in b.processes]
        assert a.firmware["vbios"] == b.firmware["ifwi"] == "022.040.003.042.000001"
        assert a.driver == "6.8.5" and b.driver == "6.16.6"
        assert a.links == []  # 6.2 prints no link status
        assert len(b.links) == 7 and all(link.up for link in b.links)


def test_healthy_gpu0_values_in_base_units():
    g = read_node("mi300x-rocm71-healthy").gpus[0]
    assert g.uuid == "4cff74a1-0000-1000-8019-b7e2a0d35f86" and g.pci_bus_id == "0000:0c:00.0"
    assert g.serial == "0x4C19B7E2A0D35F86"
    assert g.utilization == pytest.approx(0.03)
    assert g.memory_used_bytes == 20768 * 1024 * 1024
    assert g.memory_total_bytes == 196592 * 1024 * 1024
    assert g.temperatures == {"junction": 39, "memory": 34}  # MI300 has no edge sensor: N/A, left out
    assert g.temperature_limits == {"junction": 100, "memory": 105}
    assert (g.power_watts, g.power_limit_watts) == (152, 750)
    assert (g.pcie_width, g.pcie_max_width, g.pcie_speed_gts, g.pcie_max_speed_gts) == (16, 16, 32, 32)
    assert (g.bad_page_threshold, g.bad_page_threshold_exceeded) == (128, False)
    assert g.firmware["PSP_SOSDRV"] == "00.36.02.4C" and g.firmware["ifwi"] == "022.040.003.042.000001"
    assert g.partition == "" and g.name == "0"


# -- faults ---------------------------------------------------------------------------------------------
def test_correctable_ecc_on_gpu1_is_read_as_12_in_gfx():
    gpus = read_node("mi300x-rocm71-ecc-correctable").gpus
    assert ecc(gpus[1], "correctable", "GFX") == 12
    assert ecc(gpus[1], "correctable", "total") == 12
    assert ecc(gpus[1], "correctable", "UMC") == 0
    for g in gpus:
        assert all(e.count == 0 for e in g.ecc if e.type != "correctable")
        if g.index != 1:
            assert all(e.count == 0 for e in g.ecc)
        assert (g.retired_pages, g.pending_pages) == (0, 0)


def test_xgmi_link_between_gpu6_and_gpu7_is_down_on_both_ends_only():
    gpus = read_node("mi300x-rocm71-ecc-correctable").gpus
    down = {(g.index, link.name, link.peer) for g in gpus for link in g.links if link.up is False}
    assert down == {(6, "xgmi6", "7"), (7, "xgmi6", "6")}
    for g in gpus:
        assert sorted(int(link.peer) for link in g.links) == [i for i in range(8) if i != g.index]
        assert {link.kind for link in g.links} == {"xgmi"}


def test_faulty_node_gpu3_uncorrectable_and_retired_pages_gpu5_pcie_x8():
    gpus = read_node("mi300x-faulty").gpus
    g3, g5 = gpus[3], gpus[5]
    assert ecc(g3, "uncorrectable", "UMC") == 2 and ecc(g3, "uncorrectable", "total") == 2
    assert (g3.retired_pages, g3.pending_pages, g3.bad_page_threshold_exceeded) == (2, 0, False)
    assert (g5.pcie_width, g5.pcie_max_width) == (8, 16)
    for g in gpus:
        if g.index != 3:
            assert ecc(g, "uncorrectable", "total") == 0 and g.retired_pages == 0
        if g.index != 5:
            assert g.pcie_width == g.pcie_max_width == 16


def test_busy_node_is_under_load_but_not_throttled():
    gpus = read_node("mi300x-rocm71-busy").gpus
    assert all(g.utilization >= 0.96 for g in gpus)
    assert all(len(g.processes) == 4 for g in gpus)
    assert all(g.throttle_active == [] and g.throttle_hardware == [] for g in gpus)
    assert gpus[0].power_watts == 731 and gpus[0].temperatures["junction"] == 86


# -- XGMI slots -----------------------------------------------------------------------------------------
def test_link_slots_skip_the_gpu_itself():
    links = parse_links(3, ["U"] * 7 + ["X"])
    assert [(link.name, link.peer) for link in links] == [
        ("xgmi0", "0"), ("xgmi1", "1"), ("xgmi2", "2"), ("xgmi3", "4"), ("xgmi4", "5"), ("xgmi5", "6"),
        ("xgmi6", "7")]


def test_disabled_and_unknown_slots_never_look_down():
    links = parse_links(0, ["U", "X", "D", "N/A", "x", None])
    assert [(link.name, link.up) for link in links] == [("xgmi0", True), ("xgmi2", False)]
    for name in ("mi300x-rocm71-healthy", "mi300x-rocm71-ecc-correctable"):
        assert all(link.name != "xgmi7" for g in read_node(name).gpus for link in g.links)


def test_six_x_throttle_status_without_a_cause_is_not_hardware():
    out = {"metric": [{"gpu": 0, "power": {"socket_power": 300, "throttle_status": "THROTTLED"}}]}
    g = parse_outputs(out)[0][0]
    assert (g.throttle_active, g.throttle_hardware) == (["throttled"], [])


def test_seven_x_violations_split_power_cap_from_hardware_and_ignore_idle_xcp_status():
    doc = outputs_of("mi300x-rocm71-healthy")
    healthy = parse_outputs(doc)[0]
    assert all(g.throttle_active == [] for g in healthy)  # low_utilization is ACTIVE at idle: not throttling
    throttle = doc["metric"]["gpu_data"][2]["throttle"]
    throttle["ppt_violation_status"] = "ACTIVE"
    throttle["hbm_thermal_violation_status"] = "ACTIVE"
    g = parse_outputs(doc)[0][2]
    assert g.throttle_active == ["ppt", "hbm_thermal"]
    assert g.throttle_hardware == ["hbm_thermal"]


# -- N/A and surprising shapes --------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    (152, 152.0), (15.3, 15.3), ({"value": 152, "unit": "W"}, 152.0), ({"value": "N/A", "unit": "mV"}, None),
    ("N/A", None), ("550 W", 550.0), ("100 °C", 100.0), ("32 GT/s", 32.0), ({"value": 20768, "unit": "MB"},
    20768 * 1024 * 1024), ({"value": 32, "unit": "KB"}, 32768.0), ({"value": 2097152, "unit": "B"}, 2097152.0),
    ("N/A mV", None), (True, None), (None, None), ([1], None), ({"unit": "W"}, None), ("", None),
])
def test_value_of_every_shape(raw, expected):
    assert value_of(raw) == expected


def test_apu_with_na_everywhere_gives_none_not_errors():
    inv = read_node("mi300a-apu-na")
    assert inv.errors == []
    (g,) = inv.gpus
    assert (g.index, g.model, g.pci_bus_id, g.driver, g.partition) == (
        0, "AMD Instinct MI300A", "0000:01:00.0", "6.14.4", "")
    for field in ("utilization", "memory_used_bytes", "power_watts", "pcie_width", "pcie_speed_gts",
                  "pcie_replay_count", "retired_pages", "pending_pages", "bad_page_threshold", "uuid"):
        assert getattr(g, field) is None, field
    assert (g.temperatures, g.ecc, g.links, g.processes, g.firmware) == ({}, [], [], [], {})
    assert g.power_limit_watts == 550 and g.temperature_limits == {"junction": 100, "memory": 105}
    assert g.memory_total_bytes == 96432 * 1024 * 1024  # static vram.size, since metric has no mem_usage


def test_whole_sections_na_and_odd_types_are_skipped_not_raised():
    metric = {"gpu": 0, "usage": "N/A", "power": "N/A", "temperature": [1, 2], "pcie": "N/A", "ecc": "N/A",
              "ecc_blocks": {"UMC": "N/A", "GFX": {"correctable_count": "N/A", "uncorrectable_count": 3}},
              "mem_usage": {"used_vram": {"value": "N/A", "unit": "MB"}, "total_vram": "lots"},
              "throttle": "N/A"}
    static = {"gpu": 0, "asic": "N/A", "bus": {"bdf": 7}, "limit": None, "ras": {"bad_page_threshold": "N/A",
              "bad_page_threshold_exceeded": "N/A"}, "driver": {"version": ""}}
    readings, errors = parse_outputs({"metric": [metric], "static": {"gpu_data": [static]},
                                      "process": [{"gpu": 0, "process_list": "N/A"}],
                                      "bad-pages": [{"gpu": 0, "retired": "N/A", "pending": 5}],
                                      "firmware": [{"gpu": 0, "fw_list": "N/A"}],
                                      "xgmi": {"xgmi_metric": "N/A",
                                               "link_status": [{"gpu": 0, "link_status": "N/A"}]}})
    assert errors == []
    (g,) = readings
    assert g.ecc == [EccCount("uncorrectable", "GFX", 3)]
    assert (g.utilization, g.power_watts, g.memory_used_bytes, g.memory_total_bytes, g.model) == (None,) * 5
    assert (g.retired_pages, g.pending_pages, g.bad_page_threshold_exceeded, g.driver) == (None,) * 4
    assert (g.processes, g.links, g.firmware, g.temperatures) == ([], [], {}, {})


def test_unknown_top_level_shape_is_an_error_message_and_other_commands_still_count():
    readings, errors = parse_outputs({"metric": "N/A", "list": [{"gpu": 0, "bdf": "0000:0C:00.0", "uuid": "u"}]})
    assert errors == ["amd-smi metric: unexpected JSON shape (str)"]
    assert [(g.index, g.pci_bus_id, g.uuid) for g in readings] == [(0, "0000:0c:00.0", "u")]


def test_processes_string_form_means_none_and_memory_is_bytes():
    gpus = read_node("mi300x-rocm71-healthy").gpus
    assert [len(g.processes) for g in gpus] == [1, 1, 1, 1, 0, 0, 0, 0]
    p = gpus[0].processes[0]
    assert (p.pid, p.name, p.memory_bytes) == (48213, "python3", 21664694272)


def test_bad_pages_counted_in_every_printed_form():
    page = {"page_address": 1580888064, "page_size": 4096, "status": "RESERVED"}
    entries = [
        {"gpu": 0, "retired": "No bad pages found.", "pending": "No bad pages found."},
        {"gpu": 1, "retired": page, "pending": [page, page, page]},  # one page: the CLI drops the brackets
        {"gpu": 2, "retired": "N/A", "pending": "N/A"},  # the library call failed
    ]
    readings, _ = parse_outputs({"bad-pages": entries, "list": [{"gpu": 3}]})
    assert [(g.retired_pages, g.pending_pages) for g in readings] == [(0, 0), (1, 3), (None, None), (None, None)]


def test_compute_partitions_are_labelled_and_spx_is_whole():
    listing = [{"gpu": i, "bdf": f"0000:0c:00.{i}", "partition_id": i} for i in range(4)]
    cpx = {"gpu_data": [{"gpu": i, "partition": {"accelerator_partition": "CPX", "partition_id": i}}
                        for i in range(4)]}
    readings, _ = parse_outputs({"list": listing, "static": cpx})
    assert [g.name for g in readings] == ["0/0", "1/1", "2/2", "3/3"]
    # 7.1's default static has no partition section: ids above 0 still show the GPU is split.
    assert [g.partition for g in parse_outputs({"list": listing})[0]] == ["0", "1", "2", "3"]
    spx = {"gpu_data": [{"gpu": 0, "partition": {"compute_partition": "SPX", "memory_partition": "NPS1"}}]}
    assert parse_outputs({"list": listing[:1], "static": spx})[0][0].partition == ""


def test_decode_json_skips_the_watch_banner_and_rejects_error_text():
    assert decode_json("'CTRL' + 'C' to stop watching output:\n[\n {\"gpu\": 0}\n]\n") == [{"gpu": 0}]
    with pytest.raises(ValueError, match="Unable to detect any GPU devices"):
        decode_json("ERROR:root:Unable to detect any GPU devices, check amdgpu version and module status\n")


def test_snapshot_with_only_some_commands_and_with_none():
    inv = AmdSmiCliBackend(snapshot_dir=FIXTURES / "mi300a-apu-na" / "amd-smi").read()
    assert len(inv.gpus) == 1  # static + metric only
    with pytest.raises(BackendUnavailable):
        AmdSmiCliBackend(snapshot_dir=FIXTURES / "no-such-node" / "amd-smi").read()


# -- the live CLI path, with a fake amd-smi ------------------------------------------------------------
def fake_amd_smi(bin_dir: Path, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "amd-smi"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def test_live_cli_reads_the_same_as_the_snapshot(on_path):
    src = FIXTURES / "mi300x-rocm71-ecc-correctable" / "amd-smi"
    fake_amd_smi(on_path, f'[ "$2" = "--json" ] || exit 2\nexec cat "{src}/$1.json"\n')
    live = AmdSmiCliBackend().read()
    assert live.errors == []
    assert live.gpus == read_node("mi300x-rocm71-ecc-correctable").gpus


def test_live_cli_failing_commands_are_errors_and_the_rest_still_counts(on_path):
    src = FIXTURES / "mi300x-rocm71-healthy" / "amd-smi"
    fake_amd_smi(on_path, f"""case "$1" in
  xgmi) echo "xgmi not supported on this platform" >&2; exit 1;;
  process) echo "ERROR:root:Unable to detect any GPU devices"; exit 0;;
  *) exec cat "{src}/$1.json";;
esac
""")
    inv = AmdSmiCliBackend().read()
    assert len(inv.gpus) == 8
    assert len(inv.errors) == 2
    assert "amd-smi xgmi --json exited 1: xgmi not supported on this platform" in inv.errors
    assert any(e.startswith("amd-smi process:") and "Unable to detect any GPU devices" in e for e in inv.errors)
    assert all(g.links == [] and g.processes == [] for g in inv.gpus)
    assert inv.gpus[0].power_watts == 152


def test_live_cli_with_no_gpu_reports_errors_not_gpus(on_path):
    fake_amd_smi(on_path, 'echo "ERROR:root:Unable to detect any GPU devices, check amdgpu version"\nexit 0\n')
    inv = AmdSmiCliBackend().read()
    assert inv.gpus == [] and len(inv.errors) == 7


def test_missing_binary_is_unavailable(on_path, monkeypatch):
    monkeypatch.setenv("PATH", str(on_path))  # an empty directory
    with pytest.raises(BackendUnavailable, match="amd-smi"):
        AmdSmiCliBackend().read()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a killed child waiting for its reaper is gone for our purpose


def test_hung_cli_times_out_and_its_process_group_is_killed(on_path, tmp_path):
    pidfile = tmp_path / "child.pid"
    fake_amd_smi(on_path, f'sleep 60 &\necho $! > "{pidfile}"\nwait\n')
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        AmdSmiCliBackend(timeout=1.0).read()
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the sleeping child of amd-smi survived the timeout"


def test_a_malformed_bus_address_is_kept_not_fatal_to_the_reading():
    from agent.base import pci

    assert pci.label("00000000:0C:00.0") == "0000:0c:00.0"
    assert pci.label("N/A") == "n/a"
    assert pci.label("xx:0c:00.0") == "xx:0c:00.0"
