"""PCIe AER on sysfs trees in the kernel's own layout (Documentation/ABI/testing/sysfs-bus-pci-devices-aer_stats:
"<type> <count>" lines and TOTAL_ERR_*; devices under /sys/devices/pci*/ with bus/pci/devices symlinks, so the
bridges above a device are found from its real path, as on a node). No PCIe device with AER exists on this VM:
fixtures/nodes/node-pcie-aer is the tree; the tests copy and change it."""
from __future__ import annotations

import shutil

from agent.base.collector import Context, Observation
from agent.base.config import Expectations, build
from agent.base.roots import Roots
from agent.sources.pcie.collector import PcieCollector, PcieSettings
from agent.sources.pcie.sysfs import parse_counts
from tests.support import FIXTURES

NVME = "sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0"


def node(tmp_path):
    d = tmp_path / "node"
    shutil.copytree(FIXTURES / "node-pcie-aer", d, symlinks=True)
    return d


def collector(d, **s):
    return PcieCollector(build(PcieSettings, s, "pcie"), Context(Roots(d / "sys", d / "proc"), "n", Expectations()))


def findings(out):
    return {(f.check, f.entity): f for f in out.findings}


def test_devices_and_the_bridges_above_them(tmp_path):
    r = collector(node(tmp_path)).read()
    assert {(d.pci, d.role) for d in r.devices} == {("0000:00:01.1", "bridge"), ("0000:01:00.0", "nvme"),
                                                     ("0000:00:03.1", "bridge"), ("0000:02:00.0", "nic")}


def test_fatal_errors_and_counts_on_a_first_reading(tmp_path):
    c = collector(node(tmp_path))
    f = findings(c.evaluate(c.read(), None, None))
    assert f[("pcie.aer.fatal", "pci:0000:02:00.0")].is_fatal
    assert f[("pcie.aer.fatal", "pci:0000:01:00.0")].status == "ok"
    cor = f[("pcie.aer.correctable", "pci:0000:01:00.0")]
    assert (cor.status, cor.severity, cor.value) == ("unhealthy", "warning", 1701)


def test_a_rate_between_readings_and_a_reset(tmp_path):
    d = node(tmp_path)
    c = collector(d, correctable_warning_count=100000)
    first = c.read()
    assert findings(c.evaluate(first, None, None))[("pcie.aer.correctable", "pci:0000:01:00.0")].status == "ok"
    path = d / NVME / "aer_dev_correctable"
    path.write_text(path.read_text().replace("TOTAL_ERR_COR 1701", "TOTAL_ERR_COR 1901"))
    f = findings(c.evaluate(c.read(), Observation(first, 0.0), 3600.0))
    assert f[("pcie.aer.correctable", "pci:0000:01:00.0")].value == 200.0  # 200 in an hour > 100/h
    path.write_text(path.read_text().replace("TOTAL_ERR_COR 1901", "TOTAL_ERR_COR 4"))  # reset: no negative rate
    f = findings(c.evaluate(c.read(), Observation(first, 0.0), 3600.0))
    assert f[("pcie.aer.correctable", "pci:0000:01:00.0")].status == "ok"


def test_an_unreadable_or_impossible_file_costs_that_check(tmp_path):
    d = node(tmp_path)
    (d / NVME / "aer_dev_fatal").unlink()
    hca = d / "sys/devices/pci0000:00/0000:00:03.1/0000:02:00.0/aer_dev_nonfatal"
    hca.write_text("CmpltTO 2\nTOTAL_ERR_NONFATAL " + "9" * 5000 + "\n")
    c = collector(d)
    f = findings(c.evaluate(c.read(), None, None))
    assert f[("pcie.aer.fatal", "pci:0000:01:00.0")].status == "unknown"
    assert f[("pcie.aer.correctable", "pci:0000:01:00.0")].status == "unhealthy"  # the rest still judged
    assert f[("pcie.aer.nonfatal", "pci:0000:02:00.0")].value == 2  # the bad total is dropped; lines summed


def test_parse_never_raises():
    bad: list[str] = []
    assert parse_counts("RxErr 1\nnonsense\n\x00\nBadTLP -3\nTimeout ٣\n", "f", bad) == {"RxErr": 1}
    assert len(bad) == 2
