"""nvidia-smi -q -x parsing (real v13 H100, v12 A100 with MIG, v11 T4 captures) and the nvidia-smi backend
(replay, a fake binary on PATH, a hung binary, a missing one)."""
from __future__ import annotations

import importlib.util
import os
import stat
import time
from pathlib import Path

import pytest

from agent.sources.gpu.backend import BackendUnavailable
from agent.sources.gpu.nvidia_smi_xml import NvidiaSmiBackend, parse_xml

NODES = Path(__file__).resolve().parents[2] / "fixtures" / "nodes"
H100 = NODES / "h100-nvidia" / "nvidia-smi" / "q.xml"
A100 = NODES / "a100-v12" / "nvidia-smi" / "q.xml"
T4 = NODES / "t4-pcie-x8" / "nvidia-smi" / "q.xml"
REMAP = NODES / "h100-row-remap-pending" / "nvidia-smi" / "q.xml"
MIB = 1024 * 1024


def one(path_or_text):
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    gpus = [g for g in parse_xml(text) if not g.partition]
    assert len(gpus) == 1
    return gpus[0]


def ecc(reading, typ, block, volatile=True):
    found = [e.count for e in reading.ecc if (e.type, e.block, e.volatile) == (typ, block, volatile)]
    assert len(found) <= 1, f"duplicate ECC entry {typ}/{block}"
    return found[0] if found else None


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# ---- real captures -----------------------------------------------------------------------------------------

def test_h100_v13_identity_and_gauges():
    g = one(H100)
    assert (g.index, g.vendor, g.partition) == (0, "nvidia", "")
    assert g.model == "NVIDIA H100 80GB HBM3"
    assert g.uuid == "GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36"
    assert g.serial == "1752624024878"
    assert g.pci_bus_id == "0000:00:06.0"
    assert g.driver == "580.159.04"
    assert g.firmware == {"vbios": "96.00.DA.00.0C", "inforom_image": "G520.0200.00.05", "inforom_oem": "2.1",
                          "inforom_ecc": "7.16", "gsp": "580.159.04"}  # pwr_object is N/A: left out
    assert g.memory_total_bytes == 81559 * MIB == 85_520_809_984  # "80GB"
    assert g.memory_used_bytes == 0  # reserved 480 MiB is not "used", as nvidia-smi prints it
    assert g.utilization == 0.0
    assert g.temperatures == {"edge": 36.0, "memory": 36.0}
    assert g.temperature_limits == {}  # only T.Limit-relative thresholds on this driver
    assert g.power_watts == pytest.approx(123.88)  # average_power_draw, not instant (123.48)
    assert g.power_limit_watts == 700.0
    assert (g.pcie_width, g.pcie_max_width, g.pcie_speed_gts, g.pcie_max_speed_gts) == (16, 16, 32.0, 32.0)
    assert g.pcie_replay_count == 0
    assert g.processes == [] and g.links == []


def test_h100_v13_healthy_memory_and_no_throttling_at_idle():
    g = one(H100)
    assert len(g.ecc) == 12  # {correctable, uncorrectable} x {sram, dram, total} x {volatile, aggregate}
    assert {e.count for e in g.ecc} == {0}
    assert {e.block for e in g.ecc} == {"sram", "dram", "total"}
    assert (g.row_remap_correctable, g.row_remap_uncorrectable) == (0, 0)
    assert (g.row_remap_pending, g.row_remap_failure) == (False, False)
    assert g.retired_pages is None and g.pending_pages is None  # N/A: Hopper remaps rows instead
    assert g.throttle_active == [] and g.throttle_hardware == []


def test_a100_v12_with_mig_instances():
    readings = parse_xml(A100.read_text())
    whole = [g for g in readings if not g.partition]
    assert len(whole) == 1  # attached_gpus says 4, the file lists one
    g = whole[0]
    assert g.index == 1  # minor_number, not the position in the file
    assert g.uuid == "GPU-513536b6-7d19-9063-b049-1e69664bb298"
    assert g.pci_bus_id == "0000:01:00.0" and g.driver == "535.54.03"
    assert g.utilization is None  # N/A under MIG: unknown, not idle
    assert g.row_remap_pending is None and g.row_remap_uncorrectable is None  # remapped_rows N/A
    assert g.temperatures == {"edge": 27.0, "memory": 44.0}
    assert g.temperature_limits == {"edge": 89.0, "memory": 95.0}
    assert g.power_watts == pytest.approx(67.03) and g.power_limit_watts == 500.0
    assert (g.pcie_speed_gts, g.pcie_width) == (16.0, 16)
    assert g.memory_total_bytes == 81920 * MIB and g.memory_used_bytes == 50 * MIB
    assert ecc(g, "uncorrectable", "sram") == 0 and ecc(g, "uncorrectable", "total", volatile=False) == 0

    parts = [g for g in readings if g.partition]
    assert [p.partition for p in parts] == ["3", "4", "5", "6"]
    assert [p.name for p in parts] == ["1/3", "1/4", "1/5", "1/6"]
    for p in parts:
        assert p.memory_total_bytes == 19968 * MIB and p.memory_used_bytes == 12 * MIB
        assert p.pci_bus_id == g.pci_bus_id and p.serial == g.serial
        assert p.ecc == [] and p.temperatures == {}  # health stays on the parent: no double findings


def test_t4_v11_narrow_link_processes_and_page_retirement():
    g = one(T4)
    assert g.model == "Tesla T4" and g.pci_bus_id == "0000:00:1e.0" and g.driver == "515.105.01"
    assert (g.pcie_width, g.pcie_max_width) == (8, 16)  # trained at x8 of x16
    assert (g.pcie_speed_gts, g.pcie_max_speed_gts) == (8.0, 8.0)
    assert g.power_watts == pytest.approx(26.78) and g.power_limit_watts == 70.0
    assert g.temperatures == {"edge": 40.0} and g.temperature_limits == {"edge": 93.0}  # memory_temp N/A
    assert (g.retired_pages, g.pending_pages) == (0, 0)
    assert g.row_remap_pending is None
    assert [(p.pid, p.name, p.memory_bytes) for p in g.processes] == [
        (675, "/usr/lib/xorg/Xorg", 22 * MIB), (5762, "python", 1005 * MIB)]
    assert g.memory_total_bytes == 15360 * MIB and g.memory_used_bytes == 1032 * MIB
    assert g.throttle_active == []


def test_derived_row_remap_pending_node():
    g = one(REMAP)
    assert g.row_remap_pending is True
    assert g.row_remap_uncorrectable == 1 and g.row_remap_failure is False
    assert ecc(g, "uncorrectable", "dram") == 2
    assert ecc(g, "uncorrectable", "total") == 2  # the volatile total the health rule reads
    assert ecc(g, "uncorrectable", "total", volatile=False) == 2
    assert ecc(g, "correctable", "total") == 0
    assert g.uuid == one(H100).uuid  # same GPU, only the fault differs


def test_derived_node_is_reproducible_from_the_capture():
    spec = importlib.util.spec_from_file_location("derive_nvidia", NODES / "derive_nvidia.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for path, text in mod.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python3 fixtures/nodes/derive_nvidia.py"
    assert mod.main(["--check"]) == 0


# ---- layouts and values the captures above do not show ------------------------------------------------------

@pytest.mark.parametrize("section,prefix", [("H100", "clocks_event_reason_"), ("T4", "clocks_throttle_reason_")])
def test_active_clock_reasons(section, prefix):
    """Idle and clock settings are not throttling; only hw_* reasons count as hardware throttling."""
    text = (H100 if section == "H100" else T4).read_text()
    for reason in ("gpu_idle", "sw_power_cap", "hw_thermal_slowdown"):
        text = replace_once(text, f"<{prefix}{reason}>Not Active<", f"<{prefix}{reason}>Active<")
    g = one(text)
    assert g.throttle_active == ["sw_power_cap", "hw_thermal_slowdown"]
    assert g.throttle_hardware == ["hw_thermal_slowdown"]


def test_power_brake_is_hardware_throttling():
    text = replace_once(H100.read_text(), "<clocks_event_reason_hw_power_brake_slowdown>Not Active<",
                        "<clocks_event_reason_hw_power_brake_slowdown>Active<")
    assert one(text).throttle_hardware == ["hw_power_brake_slowdown"]


@pytest.mark.parametrize("placeholder", ["N/A", "[N/A]", "Not Supported", "[Not Supported]", "Unknown Error",
                                         "[Unknown Error]", "Requested functionality has been deprecated"])
def test_placeholders_read_as_absent(placeholder):
    text = H100.read_text()
    for old in ("<uuid>GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36</uuid>", "<gpu_temp>36 C</gpu_temp>",
                "<average_power_draw>123.88 W</average_power_draw>",
                "<instant_power_draw>123.48 W</instant_power_draw>",
                "<current_link_width>16x</current_link_width>", "<remapped_row_pending>No</remapped_row_pending>",
                "<replay_counter>0</replay_counter>", "<gpu_util>0 %</gpu_util>"):
        tag = old[1:old.index(">")]
        text = replace_once(text, old, f"<{tag}>{placeholder}</{tag}>")
    g = one(text)
    assert g.uuid is None and g.power_watts is None and g.pcie_width is None and g.utilization is None
    assert "edge" not in g.temperatures and g.temperatures["memory"] == 36.0
    assert g.row_remap_pending is None and g.pcie_replay_count is None
    assert g.model == "NVIDIA H100 80GB HBM3" and g.pcie_max_width == 16  # the rest is intact


def test_unreadable_ecc_block_gives_no_total():
    """A total that silently skipped an unknown block would read as a real zero."""
    text = H100.read_text()
    start = text.index("<volatile>")
    body = text[start:text.index("</volatile>")]
    text = text[:start] + body.replace("<dram_uncorrectable>0<", "<dram_uncorrectable>[Unknown Error]<") \
        + text[start + len(body):]
    g = one(text)
    assert ecc(g, "uncorrectable", "dram") is None and ecc(g, "uncorrectable", "total") is None
    assert ecc(g, "uncorrectable", "sram") == 0 and ecc(g, "correctable", "total") == 0
    assert ecc(g, "uncorrectable", "total", volatile=False) == 0


def test_an_ecc_count_nvidia_smi_could_not_read_is_unknown_not_ok_on_the_other_blocks():
    """DRAM uncorrectable reads [Unknown Error] while SRAM reads 0: the check was ok (SRAM's 0 stood for the
    whole GPU). Not supported (N/A) is not a read error: nothing to judge, as before."""
    from agent.sources.gpu import rules
    from agent.sources.gpu.model import GpuInventory, GpuReadings

    volatile = lambda raw: H100.read_text().replace(  # noqa: E731  (the first one is the volatile block)
        "<dram_uncorrectable>0<", f"<dram_uncorrectable>{raw}<", 1)
    g = one(volatile("[Unknown Error]"))
    assert g.unread == {"gpu.ecc.uncorrectable": "nvidia-smi: volatile ECC dram_uncorrectable reads '[Unknown Error]'"}
    findings = rules.evaluate(GpuReadings([GpuInventory("nvidia-smi", "nvidia", [g])], {"nvidia": 1}), 1,
                              rules.GpuThresholds(), "n1")
    [unc] = [f for f in findings if f.check == "gpu.ecc.uncorrectable"]
    assert (unc.status, unc.severity) == ("unknown", "fatal") and "Unknown Error" in unc.message
    assert one(volatile("N/A")).unread == {} and one(volatile("[Not Supported]")).unread == {}


# Synthetic, in the pre-Ampere layout (single_bit/double_bit blocks, as telegraf's tesla_p4.xml shows it,
# whose counts are all N/A): the counts and the retirement below are made up to be told apart.
OLD_LAYOUT = """<?xml version="1.0" ?>
<nvidia_smi_log>
  <driver_version>470.82.01</driver_version>
  <gpu id="00000000:3B:00.0">
    <product_name>Tesla V100-SXM2-32GB</product_name>
    <uuid>GPU-00000000-0000-0000-0000-000000000002</uuid>
    <minor_number>N/A</minor_number>
    <ecc_errors>
      <volatile>
        <single_bit><device_memory>3</device_memory><register_file>1</register_file><l1_cache>N/A</l1_cache>
          <total>4</total></single_bit>
        <double_bit><device_memory>1</device_memory><register_file>0</register_file><l1_cache>N/A</l1_cache>
          <total>1</total></double_bit>
      </volatile>
      <aggregate>
        <single_bit><device_memory>7</device_memory><total>9</total></single_bit>
        <double_bit><device_memory>N/A</device_memory><total>N/A</total></double_bit>
      </aggregate>
    </ecc_errors>
    <retired_pages>
      <multiple_single_bit_retirement><retired_count>2</retired_count></multiple_single_bit_retirement>
      <double_bit_retirement><retired_count>1</retired_count></double_bit_retirement>
      <pending_blacklist>Yes</pending_blacklist>
      <pending_retirement>Yes</pending_retirement>
    </retired_pages>
    <clocks_throttle_reasons>N/A</clocks_throttle_reasons>
  </gpu>
</nvidia_smi_log>
"""


def test_old_single_double_bit_layout():
    g = one(OLD_LAYOUT)
    assert g.index == 0  # minor number N/A: position in the file
    assert ecc(g, "correctable", "dram") == 3  # device_memory is NVML's DRAM location
    assert ecc(g, "correctable", "register_file") == 1 and ecc(g, "correctable", "l1_cache") is None
    assert ecc(g, "correctable", "total") == 4 and ecc(g, "uncorrectable", "total") == 1  # reported totals
    assert ecc(g, "correctable", "total", volatile=False) == 9
    assert ecc(g, "uncorrectable", "total", volatile=False) is None
    assert (g.retired_pages, g.pending_pages) == (3, 1)  # pending "Yes": at least one, count unknown
    assert g.throttle_active == []


@pytest.mark.parametrize("text", ["<nvidia_smi_log><gpu>", "<html></html>", ""])
def test_not_nvidia_smi_xml_is_an_error(text):
    with pytest.raises(ValueError):
        parse_xml(text)


def test_no_gpus_is_an_empty_list():
    assert parse_xml("<nvidia_smi_log><attached_gpus>0</attached_gpus></nvidia_smi_log>") == []


# ---- backend -----------------------------------------------------------------------------------------------

def test_backend_replays_a_snapshot_file_or_directory():
    for path in (H100, H100.parent.parent):
        inv = NvidiaSmiBackend(xml_path=path).read()
        assert (inv.backend, inv.vendor, inv.errors) == ("nvidia-smi", "nvidia", [])
        assert [g.uuid for g in inv.gpus] == ["GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36"]


def test_backend_snapshot_without_xml_is_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable):
        NvidiaSmiBackend(xml_path=tmp_path / "nvidia-smi" / "q.xml").read()
    with pytest.raises(BackendUnavailable):
        NvidiaSmiBackend(xml_path=tmp_path).read()


def fake_tool(directory: Path, body: str) -> None:
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_backend_runs_nvidia_smi_from_path(tmp_path, monkeypatch):
    fake_tool(tmp_path, f'[ "$1 $2" = "-q -x" ] || {{ echo "bad args: $*" >&2; exit 2; }}\ncat "{T4}"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    inv = NvidiaSmiBackend().read()
    assert [(g.model, g.pcie_width) for g in inv.gpus] == [("Tesla T4", 8)]


def test_backend_hung_nvidia_smi_times_out_and_its_group_is_killed(tmp_path, monkeypatch):
    pidfile = tmp_path / "child.pid"
    fake_tool(tmp_path, f'sleep 60 &\necho $! > "{pidfile}"\nwait\n')  # a helper the tool forked
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        NvidiaSmiBackend(timeout=0.5).read()
    assert time.monotonic() - start < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the forked helper survived: the process group was not killed"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie waiting for its reaper is dead


def test_backend_missing_binary_is_unavailable(tmp_path, monkeypatch):
    with pytest.raises(BackendUnavailable):
        NvidiaSmiBackend(binary=str(tmp_path / "nvidia-smi")).read()
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing called nvidia-smi on PATH
    with pytest.raises(BackendUnavailable):
        NvidiaSmiBackend().read()


def test_backend_without_driver_is_unavailable(tmp_path, monkeypatch):
    fake_tool(tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                        "Make sure that the latest NVIDIA driver is installed and running.\"\nexit 9\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BackendUnavailable, match="NVIDIA driver"):
        NvidiaSmiBackend().read()


def test_backend_other_failures_are_errors_not_absence(tmp_path, monkeypatch):
    """A driver/library mismatch needs a reboot: it must surface, not look like a node without GPUs."""
    fake_tool(tmp_path, "echo 'Failed to initialize NVML: Driver/library version mismatch'\nexit 18\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="version mismatch"):
        NvidiaSmiBackend().read()

