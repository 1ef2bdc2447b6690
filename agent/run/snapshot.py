"""`agent snapshot DIR`: capture the live node into the replay format (DESIGN §3) for bug reports and new
fixtures. What is copied from /sys and /proc is listed here; sources add their own paths."""
from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

from agent.sources.gpu.amd_smi_cli import COMMANDS as AMD_SMI_COMMANDS  # what the amd-smi replay reads
from agent.base.tools import Unavailable, run_tool

# Relative to the sysfs / procfs roots. Regular files are copied; unreadable ones are skipped (procfs does the
# same: a counter that reads EINVAL is not an error).
# Of every PCI function (bridges included): copied where the kernel keeps them (devices/pci<domain:bus>/<bridge>/
# .../<bdf>/), with bus/pci/devices/<bdf> a relative symlink to that directory, as on a node. The topology is
# what the AER walker reads to find the bridges above a GPU, NIC or NVMe drive (agent/sources/pcie/sysfs.py):
# flat bus/pci/devices/<bdf> directories would lose every bridge on replay.
PCI_FILES = ["vendor", "device", "class", "aer_dev_correctable", "aer_dev_nonfatal", "aer_dev_fatal"]
SYS_GLOBS = [
    "class/infiniband/*/*", "class/infiniband/*/ports/*/*", "class/infiniband/*/ports/*/counters/*",
    "class/infiniband/*/ports/*/counters_ext/*", "class/infiniband/*/ports/*/hw_counters/*",
    "class/infiniband/*/ports/*/gid_attrs/ndevs/*",
    "class/net/*/operstate", "class/net/*/mtu", "class/net/*/carrier", "class/net/*/address",
    # NVMe: what sysfs shows without privileges (agent/sources/nvme/sysfs.py)
    "class/nvme/*/state", "class/nvme/*/model", "class/nvme/*/serial", "class/nvme/*/firmware_rev",
    "class/nvme/*/transport", "class/nvme/*/hwmon*/temp1_input", "class/nvme/*/hwmon*/temp1_alarm",
    "class/nvme/*/device/hwmon/hwmon*/temp1_input", "class/nvme/*/device/hwmon/hwmon*/temp1_alarm",  # 5.5
]
PROC_GLOBS = [
    "sys/vm/max_map_count", "sys/fs/file-max", "sys/fs/nr_open", "sys/fs/inotify/max_user_watches",
    "sys/fs/inotify/max_user_instances", "sys/net/core/*", "sys/net/ipv4/tcp_rmem", "sys/net/ipv4/tcp_wmem",
    "sys/net/ipv4/tcp_congestion_control", "sys/net/ipv4/neigh/default/gc_thresh*", "sys/fs/aio-max-nr",
    "sys/kernel/pid_max", "sys/kernel/numa_balancing", "sys/kernel/random/boot_id",
    "stat", "driver/nvidia/gpus/*/information",
    "mounts", "1/mounts", "uptime",  # mounts: the host's mount table (pid 1's) and this namespace's
]


def capture(dest: Path, node: str, sysfs: Path = Path("/sys"), procfs: Path = Path("/proc"),
            timeout: float = 20.0) -> list[str]:
    """Write a snapshot of this node into `dest`; returns notes on what could not be captured."""
    notes: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "node.json").write_text(json.dumps({"node": node}, indent=2) + "\n")
    if shutil.which("amd-smi"):
        (dest / "amd-smi").mkdir(exist_ok=True)
        for cmd in AMD_SMI_COMMANDS:
            try:
                (dest / "amd-smi" / f"{cmd}.json").write_text(run_tool(["amd-smi", cmd, "--json"], timeout))
            except (Unavailable, TimeoutError, RuntimeError, OSError) as e:
                notes.append(f"amd-smi {cmd}: {e}")
        # CPER records: amd-smi 26 prints a table and writes the records as files under --folder.
        cper = dest / "amd-smi" / "cper"
        cper.mkdir(exist_ok=True)
        try:
            out = run_tool(["amd-smi", "ras", "--cper", "--severity", "all", "--folder", str(cper), "--json"], timeout)
            (cper / "stdout.txt").write_text(out)
        except (Unavailable, TimeoutError, RuntimeError, OSError) as e:
            notes.append(f"amd-smi ras --cper: {e}")
    if shutil.which("nvidia-smi"):
        try:
            xml = run_tool(["nvidia-smi", "-q", "-x"], timeout)
            (dest / "nvidia-smi").mkdir(exist_ok=True)
            (dest / "nvidia-smi" / "q.xml").write_text(xml)
        except (Unavailable, TimeoutError, RuntimeError, OSError) as e:
            notes.append(f"nvidia-smi: {e}")
    kmsg = read_kmsg()
    if kmsg is not None:
        (dest / "kmsg.txt").write_bytes(kmsg)
    _capture_pci(dest / "sys", sysfs, notes)
    for root, name, globs in ((sysfs, "sys", SYS_GLOBS), (procfs, "proc", PROC_GLOBS)):
        for pattern in globs:
            for src in glob.glob(str(root / pattern)):
                _copy_file(Path(src), dest / name / os.path.relpath(src, root), notes)
    _capture_mounts(dest, sysfs, procfs, notes)
    _capture_nvme(dest, sysfs, timeout, notes)
    return notes


def _capture_pci(dest_sys: Path, sysfs: Path, notes: list[str]) -> None:
    devices = sysfs / "bus" / "pci" / "devices"
    try:
        entries = sorted(devices.iterdir())[:4096]
    except OSError:
        return
    real_root = os.path.realpath(sysfs)
    for link in entries:
        real = os.path.realpath(link)
        rel = os.path.relpath(real, real_root)
        target = dest_sys / "bus" / "pci" / "devices" / link.name
        if rel.startswith("..") or rel == "." or not rel.startswith("devices" + os.sep):
            # Not a kernel-layout link (a flat tree, e.g. an older snapshot replayed as sysfs): copy it flat.
            for name in PCI_FILES:
                _copy_file(link / name, target / name, notes)
            continue
        for name in PCI_FILES:
            _copy_file(Path(real) / name, dest_sys / rel / name, notes)
        (dest_sys / rel).mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink() and not target.exists():
            target.symlink_to(os.path.relpath(dest_sys / rel, target.parent))


def _capture_nvme(dest: Path, sysfs: Path, timeout: float, notes: list[str]) -> None:
    """nvme/<ctrl>/smart-log.json: `nvme smart-log /dev/<ctrl> -o json` of each controller (what the nvme source
    replays)."""
    try:
        ctrls = sorted(p.name for p in (sysfs / "class" / "nvme").iterdir())
    except OSError:
        return
    if not shutil.which("nvme"):
        notes.append("nvme: nvme-cli not installed (no SMART logs)")
        return
    from agent.sources.nvme.collector import NEEDS_ACCESS, effective_capabilities, CAP_SYS_ADMIN
    caps = effective_capabilities()
    for ctrl in ctrls[:256]:
        if not Path("/dev", ctrl).exists() or (caps is not None and not caps >> CAP_SYS_ADMIN & 1):
            notes.append(NEEDS_ACCESS.format(ctrl=ctrl))
            continue
        try:
            out = run_tool(["nvme", "smart-log", f"/dev/{ctrl}", "-o", "json"], timeout)
        except (Unavailable, TimeoutError, RuntimeError, OSError) as e:
            notes.append(f"nvme smart-log {ctrl}: {e}")
            continue
        (dest / "nvme" / ctrl).mkdir(parents=True, exist_ok=True)
        (dest / "nvme" / ctrl / "smart-log.json").write_text(out)


def _capture_mounts(dest: Path, sysfs: Path, procfs: Path, notes: list[str]) -> None:
    """mounts/probes.json: each checked mount point's probe (responsive, statvfs), as the mounts source made it."""
    from agent.base.collector import Context, RunMode
    from agent.base.config import Expectations
    from agent.base.roots import Roots
    from agent.sources.mounts.collector import MountsCollector, MountsSettings, record
    try:
        doc = record(MountsCollector(MountsSettings(), Context(Roots(sysfs, procfs), "snapshot", Expectations(),
                                                               mode=RunMode(once=True))))
    except Exception as e:  # noqa: BLE001 - a snapshot is best effort: say what is missing
        notes.append(f"mounts: {e}")
        return
    (dest / "mounts").mkdir(exist_ok=True)
    (dest / "mounts" / "probes.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read_kmsg(path: str = "/dev/kmsg") -> bytes | None:
    """The kernel ring buffer as /dev/kmsg records (one per read), without blocking for new ones."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    records = []
    try:
        while True:
            try:
                records.append(os.read(fd, 8192))
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == 32:  # EPIPE: the ring overwrote records we had not read yet; go on
                    continue
                break
    finally:
        os.close(fd)
    return b"".join(r if r.endswith(b"\n") else r + b"\n" for r in records)


def _copy_file(src: Path, dst: Path, notes: list[str]) -> None:
    if not src.is_file():
        return
    try:
        data = src.read_bytes()
    except OSError:
        return  # e.g. a counter without PMA: absent in the snapshot, as it is absent to the collector
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
