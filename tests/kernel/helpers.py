"""A fake node for the kernel collector: a regular file standing in for /dev/kmsg (the shared reader reads a
file to its end each time), procfs boot id and uptime, a state directory. Records are written in /dev/kmsg's
own framing (`pri,seq,usec,flags;message`)."""
from __future__ import annotations

import json
from pathlib import Path

from agent.base.collector import Context, RunMode
from agent.base.config import Expectations, build
from agent.base.roots import Roots
from agent.sources.kernel.collector import KernelCollector, KernelSettings
from tests.support import ROOT

NPD = ROOT / "fixtures" / "npd"


class Node:
    def __init__(self, root: Path, boot_id: str = "boot-a") -> None:
        self.root = root
        self.sys, self.proc = root / "sys", root / "proc"
        self.kmsg = root / "kmsg"
        self.state_dir = root / "state"
        self.sys.mkdir(parents=True)
        (self.proc / "sys" / "kernel" / "random").mkdir(parents=True)
        self.kmsg.write_text("")
        self.seq = 0
        self.boot(boot_id)
        self.uptime(10_000.0)

    def boot(self, boot_id: str) -> None:
        (self.proc / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")

    def uptime(self, seconds: float) -> None:
        (self.proc / "uptime").write_text(f"{seconds:.2f} 1.00\n")

    def log(self, *lines: str, at: float | None = None, prio: int = 3) -> None:
        """Append records; `at`: kernel time (seconds since boot) of all of them, else one second apart."""
        with self.kmsg.open("a") as f:
            for line in lines:
                self.seq += 1
                usec = int((at if at is not None else self.seq) * 1e6)
                f.write(f"{prio},{self.seq},{usec},-;{line}\n")

    def collector(self, once: bool = False, **settings) -> KernelCollector:
        settings.setdefault("kmsg_path", str(self.kmsg))
        settings.setdefault("state_dir", str(self.state_dir))
        s = build(KernelSettings, settings, "kernel")
        ctx = Context(Roots(self.sys, self.proc), "node-1", Expectations(), mode=RunMode(once=once))
        return KernelCollector(s, ctx)

    def state(self) -> dict:
        return json.loads((self.state_dir / "kernel.json").read_text())


def run(c: KernelCollector):
    """One cycle: read, then evaluate (as the runner does)."""
    return c.evaluate(c.read(), None, None)


def by_check(out) -> dict[str, list]:
    d: dict[str, list] = {}
    for f in out.findings:
        d.setdefault(f.check, []).append(f)
    return d
