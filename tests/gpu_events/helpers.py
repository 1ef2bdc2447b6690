"""A fake node for the gpu_events collector: sysfs PCI functions, procfs boot id/btime and NVIDIA's
/proc/driver/nvidia/gpus, a kernel log file standing in for /dev/kmsg, a state directory."""
from __future__ import annotations

from pathlib import Path

from agent.base.collector import Context, RunMode
from agent.sources.gpu_events.collector import GpuEventsCollector, GpuEventsSettings
from agent.base.config import Expectations
from agent.base.roots import Roots

VENDOR = {"nvidia": "0x10de", "amd": "0x1002"}


class Node:
    def __init__(self, root: Path, gpus: dict[str, str] | None = None, boot_id: str = "boot-a",
                 btime: int | None = 1_780_000_000) -> None:
        """gpus: PCI address -> vendor (nvidia GPUs also get a /proc/driver/nvidia entry, minor = position)."""
        self.root = root
        self.sys, self.proc = root / "sys", root / "proc"
        self.kmsg = root / "kmsg"
        self.state_dir = root / "state"
        (self.sys / "bus" / "pci" / "devices").mkdir(parents=True)
        (self.proc / "sys" / "kernel" / "random").mkdir(parents=True)
        self.kmsg.write_text("")
        for n, (pci, vendor) in enumerate((gpus or {}).items()):
            d = self.sys / "bus" / "pci" / "devices" / pci
            d.mkdir()
            (d / "vendor").write_text(VENDOR[vendor] + "\n")
            (d / "class").write_text("0x030200\n" if vendor == "nvidia" else "0x120000\n")
            if vendor == "nvidia":
                info = self.proc / "driver" / "nvidia" / "gpus" / pci
                info.mkdir(parents=True)
                (info / "information").write_text(f"Model: \t\t NVIDIA H100 80GB HBM3\nDevice Minor: \t {n}\n")
        self.boot(boot_id, btime)

    def boot(self, boot_id: str, btime: int | None = 1_780_000_000) -> None:
        (self.proc / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")
        if btime is not None:
            (self.proc / "stat").write_text(f"cpu  1 2 3 4\nbtime {btime}\nprocesses 10\n")

    def log(self, *records: str) -> None:
        with self.kmsg.open("a") as f:
            for r in records:
                f.write(r + "\n")

    def collector(self, once: bool = False, tool=None, nvml_lib=None, **settings) -> GpuEventsCollector:
        s = GpuEventsSettings(state_dir=str(self.state_dir), kmsg_path=str(self.kmsg),
                              nvml_events=nvml_lib is not None, **settings)
        ctx = Context(Roots(self.sys, self.proc), "n1", Expectations(), mode=RunMode(once=once))
        kw = {"tool": tool} if tool is not None else {}
        return GpuEventsCollector(s, ctx, nvml_lib=nvml_lib, **kw)


def cycle(c: GpuEventsCollector):
    reading = c.read()
    out = c.evaluate(reading, None, None)
    return by_key(out.findings), out.metrics


def by_key(findings) -> dict:
    """(check, entity) -> the check's state finding; what happened once beside it (an info Xid, a reset)
    under (check, entity, "event")."""
    return {(f.check, f.entity, "event") if f.is_event else (f.check, f.entity): f for f in findings}


def events_total(metrics) -> dict[tuple[str, str, str], float]:
    fam = metrics.families.get("vigil_gpu_events")
    return {(l["gpu"], l["kind"], l["code"]): v for _, l, v in (fam.samples if fam else [])}
