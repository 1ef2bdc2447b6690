"""Impossible values (DESIGN §0): a negative counter, a temperature outside physics, NaN, Inf, an integer that
overflows is invalid, not zero and not ok. Its check is unknown and names the field, the value is not
exported, and where a vendor gives a total and per-block counts the larger is judged. The inputs are the real
fixture outputs (fixtures/nodes: amd-smi JSON of a modelled MI300X node, nvidia-smi XML of an H100) with one
field changed, as a broken driver or SMI would print it."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from agent.base.findings import UNHEALTHY, UNKNOWN
from agent.sources.gpu import rules
from agent.sources.gpu.amd_smi_cli import parse_outputs
from agent.sources.gpu.metrics import gpu_metrics
from agent.sources.gpu.model import GpuInventory, GpuReadings
from agent.sources.gpu.nvidia_smi_xml import parse_xml
from tests.support import FIXTURES, ROOT

AMD = FIXTURES / "mi300x-rocm71-healthy" / "amd-smi"
H100 = FIXTURES / "h100-nvidia" / "nvidia-smi" / "q.xml"


def amd_outputs() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in AMD.glob("*.json")}


def gpu0(doc: dict) -> dict:
    return next(e for e in doc["gpu_data"] if e["gpu"] == 0)


def judge(gpus, vendor="amd"):
    readings = GpuReadings([GpuInventory("test", vendor, gpus)], {})
    findings = rules.evaluate(readings, None, rules.GpuThresholds(), "n1")
    return {(f.check, f.entity): f for f in findings}, gpu_metrics(readings, None)


def amd_with(change) -> tuple[dict, object]:
    outputs = amd_outputs()
    change(outputs)
    gpus, errors = parse_outputs(outputs)
    assert errors == []
    return judge(gpus)


# -- totals and blocks ----------------------------------------------------------------------------------
def test_negative_total_beside_a_block_count_is_judged_on_the_block():
    def change(o):
        m = gpu0(o["metric"])
        m["ecc"]["total_uncorrectable_count"] = -1
        m["ecc_blocks"]["UMC"]["uncorrectable_count"] = 2
    findings, metrics = amd_with(change)
    f = findings[("gpu.ecc.uncorrectable", "gpu0")]
    assert f.status == UNHEALTHY and f.value == 2
    assert "invalid value -1 for ecc uncorrectable (total)" in f.message
    assert metrics.value("vigil_gpu_ecc_errors_total", gpu="0", type="uncorrectable", block="total") is None
    assert metrics.value("vigil_gpu_ecc_errors_total", gpu="0", type="uncorrectable", block="UMC") == 2


def test_total_below_its_blocks_judges_the_larger():
    def change(o):
        m = gpu0(o["metric"])
        m["ecc_blocks"]["GFX"]["uncorrectable_count"] = 3  # the total still says 0
    findings, _ = amd_with(change)
    f = findings[("gpu.ecc.uncorrectable", "gpu0")]
    assert f.status == UNHEALTHY and f.value == 3


def test_negative_total_alone_is_unknown_naming_the_field():
    findings, _ = amd_with(lambda o: gpu0(o["metric"])["ecc"].__setitem__("total_uncorrectable_count", -2))
    f = findings[("gpu.ecc.uncorrectable", "gpu0")]
    assert f.status == UNKNOWN and f.severity == "fatal"
    assert f.message == "invalid value -2 for ecc uncorrectable (total)"
    assert findings[("gpu.ecc.uncorrectable", "gpu1")].status == "ok"  # the other GPUs are unaffected


def nvidia_xml_with(old: str, new: str, count: int = 1) -> str:
    text = H100.read_text()
    assert old in text
    return text.replace(old, new, count)


def test_nvidia_negative_dram_beside_sram_is_unhealthy_not_healthy():
    text = nvidia_xml_with("<dram_uncorrectable>0</dram_uncorrectable>", "<dram_uncorrectable>-2</dram_uncorrectable>")
    text = text.replace("<sram_uncorrectable_parity>0</sram_uncorrectable_parity>",
                        "<sram_uncorrectable_parity>1</sram_uncorrectable_parity>", 1)
    gpus = parse_xml(text)
    findings, metrics = judge(gpus, "nvidia")
    f = findings[("gpu.ecc.uncorrectable", "gpu0")]
    assert f.status == UNHEALTHY and f.value == 1
    assert "invalid value -2 for ecc uncorrectable (dram)" in f.message
    # no "total" made up from -2 + 1
    assert metrics.value("vigil_gpu_ecc_errors_total", gpu="0", type="uncorrectable", block="total") is None


# -- temperatures, power, width, pages, utilization -------------------------------------------------------
@pytest.mark.parametrize("temp", [-300, -273.15, 1e6])
def test_temperature_outside_physics_is_unknown(temp):
    findings, metrics = amd_with(
        lambda o: gpu0(o["metric"])["temperature"].__setitem__("hotspot", {"value": temp, "unit": "C"}))
    f = findings[("gpu.temperature.junction", "gpu0")]
    assert f.status == UNKNOWN and f.severity == "fatal"
    assert "for temperature (junction)" in f.message
    assert metrics.value("vigil_gpu_temperature_celsius", gpu="0", sensor="junction") is None
    assert metrics.value("vigil_gpu_temperature_celsius", gpu="1", sensor="junction") is not None


@pytest.mark.parametrize("field,path,value,check,name", [
    ("power", ("power", "socket_power"), {"value": -152, "unit": "W"}, "gpu.values", "power"),
    ("width", ("pcie", "width"), -16, "gpu.pcie.width", "PCIe link width"),
    ("utilization", ("usage", "gfx_activity"), {"value": -5, "unit": "%"}, "gpu.values", "utilization"),
    ("utilization", ("usage", "gfx_activity"), {"value": 250, "unit": "%"}, "gpu.values", "utilization"),
])
def test_negative_or_impossible_scalar_is_unknown_and_not_exported(field, path, value, check, name):
    def change(o):
        gpu0(o["metric"])[path[0]][path[1]] = value
    findings, metrics = amd_with(change)
    f = findings[(check, "gpu0")]
    assert f.status == UNKNOWN and f"for {name}" in f.message
    metric = {"power": "vigil_gpu_power_watts", "width": "vigil_gpu_pcie_link_width",
              "utilization": "vigil_gpu_utilization_ratio"}[field]
    assert metrics.value(metric, gpu="0") is None
    assert metrics.value(metric, gpu="1") is not None


def test_negative_retired_pages_is_unknown():
    gpus, _ = parse_outputs(amd_outputs())
    gpus[0].retired_pages = -3  # as the library would hand it
    from agent.sources.gpu.model import validate
    validate(gpus[0])
    findings, _ = judge(gpus)
    f = findings[("gpu.pages.retired", "gpu0")]
    assert f.status == UNKNOWN and f.message == "invalid value -3 for retired pages"


def test_nan_from_json_is_invalid_not_missing():
    outputs = amd_outputs()
    gpu0(outputs["metric"])["temperature"]["hotspot"] = math.nan  # Python's json reads NaN
    gpus, _ = parse_outputs(outputs)
    assert "junction" not in gpus[0].temperatures
    assert [i.field for i in gpus[0].invalid] == ["temperature (junction)"]


# -- --json stays JSON -----------------------------------------------------------------------------------
def _no_constants(name):
    raise AssertionError(f"not strict JSON: {name}")


def test_400_digit_temperature_keeps_once_json_strict(tmp_path):
    snap = tmp_path / "node"
    shutil.copytree(FIXTURES / "h100-nvidia", snap)
    xml = snap / "nvidia-smi" / "q.xml"
    xml.write_text(xml.read_text().replace("<gpu_temp>36 C</gpu_temp>", f"<gpu_temp>{'9' * 400} C</gpu_temp>", 1))
    out = subprocess.run([sys.executable, "-m", "agent.cli", "--once", "--json", "--snapshot", str(snap)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    doc = json.loads(out.stdout, parse_constant=_no_constants)
    f = next(f for f in doc["findings"] if f["check"] == "gpu.temperature.edge" and f["entity"] == "gpu0")
    assert f["status"] == "unknown" and f["message"] == "invalid value inf for temperature (edge)"
    assert out.returncode == 2  # a fatal check could not run, none failed


def test_report_json_never_writes_nan_or_infinity():
    from agent.base.findings import bad
    from agent.run.report import report_json
    text = report_json("n1", [bad("x.y", "x", "e", "m", value=math.inf, threshold=math.nan)])
    doc = json.loads(text, parse_constant=_no_constants)
    assert doc["findings"][0]["value"] is None and doc["findings"][0]["threshold"] is None
