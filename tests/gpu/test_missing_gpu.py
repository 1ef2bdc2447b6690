"""A missing GPU is named (issue 12): the gpu.count finding says which PCI address no SMI reports, from the PCI
bus as the agent found it at start, from expect.gpu_bus_ids, or from what this agent read before. Replays the
real amd-smi outputs of the modelled 8x MI300X node (fixtures/nodes/mi300x-rocm71-healthy) and its derived
copy without GPU 7 (0000:df:00.0), under a sysfs PCI tree written by the test as the kernel lays it out."""
from __future__ import annotations

import shutil
import subprocess

from agent.base.collector import Context
from agent.base.config import Expectations
from agent.base.roots import Roots
from agent.sources.gpu.collector import GpuCollector, GpuSettings
from tests.support import AGENT, FIXTURES

HEALTHY = FIXTURES / "mi300x-rocm71-healthy" / "amd-smi"
MISSING = FIXTURES / "mi300x-gpu-missing" / "amd-smi"
ADDRESSES = ["0000:0c:00.0", "0000:22:00.0", "0000:38:00.0", "0000:5c:00.0", "0000:9f:00.0", "0000:af:00.0",
             "0000:bf:00.0", "0000:df:00.0"]


def snapshot(tmp_path, amd_smi, pci=()):
    snap = tmp_path / "snap"
    shutil.copytree(amd_smi, snap / "amd-smi")
    for addr in pci:  # an MI300X function: vendor AMD, class processing accelerator
        dev = snap / "sys" / "bus" / "pci" / "devices" / addr
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x1002\n")
        (dev / "class").write_text("0x120000\n")
    return snap


def count_finding(collector):
    out = collector.evaluate(collector.read(), None, None)
    return next(f for f in out.findings if f.check == "gpu.count")


def test_a_gpu_on_the_bus_that_no_smi_reports_is_named(tmp_path):
    snap = snapshot(tmp_path, MISSING, pci=ADDRESSES)
    c = GpuCollector(GpuSettings(), Context(Roots.from_snapshot(snap), "n1", Expectations()))
    f = count_finding(c)
    assert f.status == "unhealthy" and "7 of 8" in f.message and "missing: 0000:df:00.0" in f.message


def test_a_gpu_this_agent_read_before_is_named_when_it_goes(tmp_path):
    """No PCI tree, nothing declared: the agent still remembers the GPU it read a cycle ago."""
    snap = snapshot(tmp_path, HEALTHY)
    c = GpuCollector(GpuSettings(), Context(Roots.from_snapshot(snap), "n1", Expectations(gpus=8)))
    assert count_finding(c).status == "ok"
    shutil.rmtree(snap / "amd-smi")
    shutil.copytree(MISSING, snap / "amd-smi")  # GPU 7 fell off between two cycles
    f = count_finding(c)
    assert f.status == "unhealthy" and "missing: 0000:df:00.0" in f.message


def test_with_nothing_to_name_it_from_the_report_says_so(tmp_path):
    snap = snapshot(tmp_path, MISSING)
    c = GpuCollector(GpuSettings(), Context(Roots.from_snapshot(snap), "n1", Expectations(gpus=8)))
    f = count_finding(c)
    assert f.status == "unhealthy" and "which one is not known" in f.message and "expect.gpu_bus_ids" in f.message


def test_declared_addresses_name_it_in_once_and_bad_ones_are_a_config_error(tmp_path):
    p = subprocess.run([AGENT, "--once", "--only", "gpu", "--snapshot", str(FIXTURES / "mi300x-gpu-missing")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "missing: 0000:df:00.0" in p.stdout
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("agent:\n  expect: {gpu_bus_ids: ['00000000:0C:00.0', 'gpu3']}\n")  # nvidia-smi spelling is fine
    p = subprocess.run([AGENT, "--once", "--config", str(cfg), "--snapshot", str(FIXTURES / "mi300x-gpu-missing")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 78 and "agent.expect.gpu_bus_ids[1]" in p.stderr and "'gpu3'" in p.stderr
