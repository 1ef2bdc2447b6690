"""Mounts (`mounts`): network and configured mounts answer, are writable where expected, and have space and
inodes; the node's root, kubelet and containerd directories have space (ephemeral storage).

Which mounts: every mount in the host's mount table (/proc/1/mounts with hostPID, else /proc/mounts) whose type
is in `fs_types` (NFS, CIFS/SMB, Lustre, WekaFS, BeeGFS, GPFS, CephFS, GlusterFS by default), plus `paths`
(must be mounted), plus `ephemeral_paths` (checked where they exist).

Where the paths are probed: the table is the host's, so its paths must be reached in the host's mount
namespace, not the pod's (a pod's /mnt/datasets is an empty directory of its image, whose stat answers and
whose statvfs is the pod's root: a hung share would look fine). `host_root` set: under that prefix (the
DaemonSet: /host/root, the host's / mounted with HostToContainer propagation, so shares mounted later appear).
`host_root` empty: pid 1's own root, <procfs>/1/root (a magic link into pid 1's mount namespace: hostPID and
the host's /proc at --procfs), unless pid 1 shares this process's mount namespace (then the paths are the same
here) or that cannot be told and --procfs is this process's own /proc (a run on the host, not as root).

Each probe (stat, statvfs, one directory entry; a write+unlink of a small file for `writable` paths) runs in
its own thread under `probe_timeout_seconds` (probe.py): a hung mount is a finding, never a hung agent.

Snapshot: DIR/proc/mounts (or DIR/proc/1/mounts) and DIR/mounts/probes.json, what `agent snapshot` recorded
for each mount point ({"/mnt/data": {"ok": true, "bsize": 4096, "blocks": ..., "bavail": ..., "files": ...,
"favail": ..., "hung": false, "error": null}}).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.base.collector import Collector, Context, NoData, Observation, Output
from agent.base.config import CollectorSettings, ConfigError, in_range
from agent.base.metrics import MetricSet
from agent.base.validate import COUNTER_MAX, ascii_int, to_float
from . import rules
from .metrics import MOUNT_FREE, MOUNT_INFO, MOUNT_INODES, MOUNT_INODES_FREE, MOUNT_RESPONSIVE, MOUNT_SIZE
from .parsers import Mount, containing, parse_mounts
from .probe import ProbeResult, Prober

log = logging.getLogger(__name__)

NETWORK_FS = ["nfs", "nfs4", "cifs", "smb3", "lustre", "wekafs", "beegfs", "gpfs", "ceph", "fuse.ceph-fuse",
              "glusterfs", "fuse.glusterfs"]
MAX_TARGETS = 512


@dataclass
class MountsSettings(CollectorSettings):
    timeout_seconds: float = 20.0  # the whole read; each probe has its own deadline below
    probe_timeout_seconds: float = 5.0
    fs_types: list[str] = field(default_factory=lambda: list(NETWORK_FS))
    paths: list[str] = field(default_factory=list)  # mount points that must be mounted (and are probed)
    writable: list[str] = field(default_factory=list)  # of those checked: write-probed (a file created, removed)
    ephemeral_paths: list[str] = field(default_factory=lambda: ["/", "/var/lib/kubelet", "/var/lib/containerd"])
    host_root: str = ""  # prefix to reach host paths ("/host/root" in the DaemonSet); "": <procfs>/1/root where pid 1 is in another mount namespace
    space_warning_ratio: float = 0.10
    space_fatal_ratio: float = 0.02
    inodes_warning_ratio: float = 0.10
    inodes_fatal_ratio: float = 0.02

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        for key in ("space_warning_ratio", "space_fatal_ratio", "inodes_warning_ratio", "inodes_fatal_ratio"):
            in_range(f"{prefix}.{key}", getattr(self, key), 0.0, 1.0)
        for what in ("space", "inodes"):
            if getattr(self, f"{what}_fatal_ratio") > getattr(self, f"{what}_warning_ratio"):
                raise ConfigError(f"{prefix}.{what}_fatal_ratio: must be at most {prefix}.{what}_warning_ratio")
        if self.probe_timeout_seconds >= self.timeout_seconds:
            raise ConfigError(f"{prefix}.probe_timeout_seconds: must be below {prefix}.timeout_seconds "
                              f"({self.timeout_seconds:g})")
        if self.host_root and not self.host_root.startswith("/"):
            raise ConfigError(f"{prefix}.host_root: expected an absolute path, got {self.host_root[:80]!r}")
        for key in ("paths", "writable", "ephemeral_paths"):
            for i, p in enumerate(getattr(self, key)):
                if not p.startswith("/"):
                    raise ConfigError(f"{prefix}.{key}[{i}]: expected an absolute path, got {p[:80]!r}")
        for i, p in enumerate(self.writable):
            if p not in self.paths:
                raise ConfigError(f"{prefix}.writable[{i}]: {p[:80]} is not in {prefix}.paths")


@dataclass
class MountsReading:
    targets: list[rules.Target]


class MountsCollector(Collector):
    name = "mounts"
    component = "mounts"
    Settings = MountsSettings

    def __init__(self, settings: MountsSettings, ctx: Context) -> None:
        super().__init__(settings, ctx)
        self._prober = Prober()

    def _table(self) -> tuple[list[Mount], bool]:
        """The mount table, and whether it is pid 1's (the host's: its paths live in pid 1's namespace)."""
        # The host's table is init's (pid 1 with hostPID). /proc/mounts is only a fallback where there is no
        # pid 1 directory (a snapshot): in a container it is the container's own table, and a permission
        # error on pid 1's must not silently check the wrong namespace.
        for path in (self.ctx.roots.proc("1", "mounts"), self.ctx.roots.proc("mounts")):
            try:
                return parse_mounts(path.read_text(errors="replace")), path.parent.name == "1"
            except FileNotFoundError:
                continue
            except OSError as e:
                raise RuntimeError(f"cannot read {self.ctx.roots.show(path)}: {e.strerror or e}") from None
        if self.ctx.roots.snapshot is not None:
            raise NoData("the snapshot has no proc/mounts")
        raise RuntimeError(f"cannot read {self.ctx.roots.show(self.ctx.roots.proc('mounts'))}")

    def _recorded(self) -> dict[str, ProbeResult]:
        path = self.ctx.roots.snapshot / "mounts" / "probes.json"  # type: ignore[operator]
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        out = {}
        for mp, r in (doc.items() if isinstance(doc, dict) else []):
            # A record whose verdict is not a JSON boolean is not read at all (its mount is "not probed",
            # unknown): "ok": "false" must not read as true. Other fields: a value of the wrong type is None.
            if not isinstance(r, dict) or not isinstance(r.get("ok"), bool):
                continue
            res = ProbeResult(r["ok"], hung=r.get("hung") is True)
            error = r.get("error")
            res.error = error[:300] if isinstance(error, str) else None if error is None else str(error)[:300]
            for k in ("bsize", "blocks", "bavail", "files", "favail"):
                setattr(res, k, ascii_int(r.get(k), 0, COUNTER_MAX))
            res.writable = r.get("writable") if isinstance(r.get("writable"), bool) else None
            for k in ("seconds", "stuck_seconds"):
                v = to_float(r.get(k))  # an int too wide for a float is Inf: refused below
                setattr(res, k, v if v is not None and math.isfinite(v) and v >= 0 else None)
            out[str(mp)] = res
        return out

    def host_root(self, pid1_table: bool = True) -> str:
        """The prefix under which the table's paths are probed (module docstring)."""
        if self.settings.host_root:
            return self.settings.host_root.rstrip("/")
        if not pid1_table:
            return ""
        pid1 = self.ctx.roots.proc("1")
        try:
            theirs, mine = os.stat(pid1 / "ns" / "mnt"), os.stat("/proc/self/ns/mnt")
            if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
                return ""
        except OSError:
            if os.path.realpath(self.ctx.roots.procfs) == "/proc":
                return ""
        return str(pid1 / "root")

    def read(self) -> MountsReading:
        table, pid1_table = self._table()
        root = self.host_root(pid1_table) if self.ctx.roots.snapshot is None else ""
        s = self.settings
        by_point = {m.mountpoint: m for m in table}  # the last mount over a point is the one seen
        wanted: dict[str, tuple[str, Mount | None]] = {}
        for m in table:
            if m.fstype in s.fs_types:
                wanted.setdefault(m.mountpoint, ("network", m))
        for p in s.paths:
            wanted[p] = ("configured", by_point.get(p))
        snapshot = self.ctx.roots.snapshot
        for p in s.ephemeral_paths:
            if p in wanted:
                continue
            if snapshot is None and not Path(root + p).exists():
                continue  # no kubelet here: nothing to check
            m = containing(table, p)
            if snapshot is not None and p != "/" and (m is None or m.mountpoint == "/") and p not in by_point:
                continue  # a snapshot records only the mount points: a directory of / is / itself
            if m is not None:
                wanted[p] = ("ephemeral", m)
        recorded = self._recorded() if snapshot is not None else {}
        targets = []
        for path, (role, m) in list(wanted.items())[:MAX_TARGETS]:
            mounted = m is not None
            result = None
            if mounted:
                key = m.mountpoint if role == "ephemeral" and path not in recorded else path
                if snapshot is not None:
                    result = recorded.get(path) or recorded.get(key)
                else:
                    result = self._prober.probe(root + path, s.probe_timeout_seconds, write=path in s.writable)
            targets.append(rules.Target(path, role, m.fstype if m else None, mounted, bool(m and m.read_only),
                                        role == "ephemeral" or path in s.writable, result))
        if not targets:
            raise NoData("no network, configured or ephemeral-storage mount to check")
        return MountsReading(targets)

    def evaluate(self, reading: MountsReading, previous: Observation | None, elapsed: float | None) -> Output:
        ms = MetricSet()
        for t in reading.targets:
            lab = {"mountpoint": t.path}
            ms.add(MOUNT_INFO, {"fstype": t.fstype or "", "mountpoint": t.path, "role": t.role}, 1)
            r = t.result
            if r is None or not t.mounted:
                continue
            ms.add(MOUNT_RESPONSIVE, lab, 1 if r.ok else 0)
            if r.ok and r.bsize and r.blocks is not None and r.bavail is not None and 0 <= r.bavail <= r.blocks:
                ms.add(MOUNT_SIZE, lab, r.blocks * r.bsize)
                ms.add(MOUNT_FREE, lab, r.bavail * r.bsize)
            if r.ok and r.files is not None and r.favail is not None and 0 <= r.favail <= r.files:
                ms.add(MOUNT_INODES, lab, r.files)
                ms.add(MOUNT_INODES_FREE, lab, r.favail)
        return Output(ms, rules.evaluate(reading.targets, self.settings))


def record(collector: MountsCollector) -> dict:
    """What `agent snapshot` writes as mounts/probes.json: this node's probes, as the collector made them."""
    reading = collector.read()
    return {t.path: asdict(t.result) for t in reading.targets if t.result is not None}
