"""`agent snapshot` and the AER walker: a snapshot keeps the PCI topology, so the bridges above a GPU, NIC or
NVMe drive (switch and root ports, where a link's errors are counted) are judged on replay as they are live.

The live tree is synthetic, in the kernel's layout (devices/pci<dom:bus>/<root port>/<switch ports>/<device>,
bus/pci/devices/<bdf> relative symlinks): fixtures/nodes/node-pcie-aer plus a GPU behind a two-level PCIe
switch, as on an 8-GPU node. No PCIe device with AER exists on this VM."""
from __future__ import annotations

import os
import shutil

from agent.base.collector import Context
from agent.base.config import Expectations
from agent.base.roots import Roots
from agent.run.snapshot import capture
from agent.sources.pcie.collector import PcieCollector, PcieSettings
from tests.support import FIXTURES

GPU_PATH = ("pci0000:80", "0000:80:01.0", "0000:81:00.0", "0000:82:00.0", "0000:83:00.0")
AER = {"aer_dev_correctable": "RxErr 0\nBadTLP {n}\nTOTAL_ERR_COR {n}\n",
       "aer_dev_nonfatal": "CmpltTO 0\nTOTAL_ERR_NONFATAL 0\n", "aer_dev_fatal": "TOTAL_ERR_FATAL {f}\n"}


def live_tree(tmp_path):
    sysfs = tmp_path / "live" / "sys"
    shutil.copytree(FIXTURES / "node-pcie-aer" / "sys", sysfs, symlinks=True)
    d = sysfs / "devices"
    for i, part in enumerate(GPU_PATH):
        d = d / part
        if i == 0:
            continue
        d.mkdir(parents=True)
        gpu = i == len(GPU_PATH) - 1
        (d / "vendor").write_text("0x10de\n" if gpu else "0x1000\n")  # NVIDIA GPU behind a Broadcom switch
        (d / "class").write_text("0x030200\n" if gpu else "0x060400\n")
        (d / "device").write_text("0x2335\n" if gpu else "0xc030\n")
        for name, text in AER.items():
            (d / name).write_text(text.format(n=10 * i, f=1 if part == "0000:82:00.0" else 0))
        link = sysfs / "bus" / "pci" / "devices" / part
        link.symlink_to(os.path.relpath(d, link.parent))
    (tmp_path / "live" / "proc").mkdir()
    return sysfs


def devices(roots):
    c = PcieCollector(PcieSettings(), Context(roots, "n", Expectations()))
    return {(d.pci, d.role): d.counts for d in c.read().devices}


def test_the_bridges_above_a_gpu_survive_a_snapshot(tmp_path):
    sysfs = live_tree(tmp_path)
    live = devices(Roots(sysfs, tmp_path / "live" / "proc"))
    assert {("0000:80:01.0", "bridge"), ("0000:81:00.0", "bridge"), ("0000:82:00.0", "bridge"),
            ("0000:83:00.0", "gpu")} <= set(live)
    capture(tmp_path / "snap", "n", sysfs=sysfs, procfs=tmp_path / "live" / "proc")
    snap = tmp_path / "snap"
    link = snap / "sys" / "bus" / "pci" / "devices" / "0000:83:00.0"
    assert link.is_symlink() and os.path.realpath(link).startswith(os.path.realpath(snap / "sys" / "devices"))
    assert devices(Roots.from_snapshot(snap)) == live  # every bridge, with its counters
    # and judged: the switch port with a fatal error is fatal on replay too
    c = PcieCollector(PcieSettings(), Context(Roots.from_snapshot(snap), "n", Expectations()))
    f = {(x.check, x.entity): x for x in c.evaluate(c.read(), None, None).findings}
    assert f[("pcie.aer.fatal", "pci:0000:82:00.0")].is_fatal
