"""Mount findings (component `mounts`, entity the mount point or path):

  mounts.mounted     fatal    a configured mount point is not in the mount table
  mounts.responsive  fatal    stat + statvfs + one directory entry did not return by `probe_timeout_seconds`
                              (hung: an NFS server gone, a FUSE daemon stuck), or failed (ESTALE, EIO, ENOTCONN)
  mounts.writable    fatal    a mount expected writable (`writable`, and the root, kubelet and containerd
                              paths) is mounted read-only, or a write probe (`writable` only) failed
  mounts.space       warning / fatal   available space below `space_warning_ratio` / `space_fatal_ratio`
  mounts.inodes      warning / fatal   available inodes below `inodes_warning_ratio` / `inodes_fatal_ratio`
An impossible statvfs (more available than total, a zero-sized filesystem) is unknown, not ok.
"""
from __future__ import annotations

from dataclasses import dataclass

from agent.base.findings import FATAL, WARNING, Finding, bad, ok, unknown
from .probe import ProbeResult

C = "mounts"


@dataclass
class Target:
    path: str  # as the host names it
    role: str  # network | configured | ephemeral
    fstype: str | None
    mounted: bool
    read_only: bool
    expect_writable: bool
    result: ProbeResult | None  # None: not probed (not mounted, or nothing recorded in the snapshot)


def _ratio_check(check: str, entity: str, what: str, avail, total, warn: float, fatal: float) -> Finding:
    if avail is None or total is None:
        return unknown(check, C, entity, f"{what} not read", WARNING)
    if total <= 0 or avail < 0 or avail > total:
        if total == 0 and avail == 0 and what == "inodes":  # filesystems without inode accounting (btrfs, NFS)
            return ok(check, C, entity, "no inode accounting on this filesystem", WARNING)
        return unknown(check, C, entity, f"invalid statvfs: {avail} of {total} {what} available", WARNING)
    ratio = avail / total
    text = f"{ratio:.1%} of {what} available"
    if ratio < fatal:
        return bad(check, C, entity, text, FATAL, value=round(ratio, 4), threshold=fatal,
                   action="free space on the node (images, logs, checkpoints) or grow the volume")
    if ratio < warn:
        return bad(check, C, entity, text, WARNING, value=round(ratio, 4), threshold=warn)
    return ok(check, C, entity, text, FATAL, value=round(ratio, 4))


def evaluate(targets: list[Target], s) -> list[Finding]:
    out: list[Finding] = []
    for t in targets:
        e = t.path
        if not t.mounted:
            if t.role == "configured":
                out.append(bad("mounts.mounted", C, e, f"{e} is not mounted", FATAL,
                               action="mount it again (check the server and the node's mount unit)"))
            continue
        if t.role == "configured":
            out.append(ok("mounts.mounted", C, e, f"mounted ({t.fstype})"))
        r = t.result
        if t.expect_writable and t.read_only:
            out.append(bad("mounts.writable", C, e, f"{e} is mounted read-only", FATAL,
                           action="drain the node; find why it went read-only (kernel log, disk health)"))
        elif r is not None and r.writable is False:
            out.append(bad("mounts.writable", C, e, f"write probe failed: {r.error}", FATAL,
                           action="drain the node; check the filesystem and its server"))
        elif t.expect_writable:
            out.append(ok("mounts.writable", C, e, "writable" if r is not None and r.writable else "mounted rw"))
        if r is None:
            out.append(unknown("mounts.responsive", C, e, "not probed"))
            continue
        if r.hung:
            stuck = f" (stuck {r.stuck_seconds:.0f}s)" if r.stuck_seconds else ""
            out.append(bad("mounts.responsive", C, e, f"hung: {r.error}{stuck}", FATAL,
                           value=round(r.stuck_seconds or 0.0, 1), threshold=s.probe_timeout_seconds,
                           action="drain the node; check the server (NFS/FUSE daemon) and the network path"))
            continue
        if not r.ok:
            out.append(bad("mounts.responsive", C, e, f"probe failed: {r.error}", FATAL,
                           action="remount it; check the server"))
            continue
        out.append(ok("mounts.responsive", C, e, f"answered in {r.seconds:.3f}s" if r.seconds is not None
                      else "answered", value=round(r.seconds, 4) if r.seconds is not None else None))
        out.append(_ratio_check("mounts.space", e, "space", r.bavail, r.blocks, s.space_warning_ratio,
                                s.space_fatal_ratio))
        out.append(_ratio_check("mounts.inodes", e, "inodes", r.favail, r.files, s.inodes_warning_ratio,
                                s.inodes_fatal_ratio))
    return out
