"""One tuning pass: read every profile entry, decide per policy, write per mode, read back to confirm.

Only keys and processes named in the profile are ever touched. A failed write is retried on the next pass
(the cause may go away: a module loads, a daemon restarts) but logged once per distinct error, not once per
pass. Write counters live on the Tuner, so they keep counting across passes as Prometheus counters must.
"""
from __future__ import annotations

import errno
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs
from .policy import REPORT, Decision, RlimitEntry, SysctlEntry, decide, decide_rlimit
from .prlimit import ProcessLimits
from .values import Value, fmt, fmt_limits, parse

log = logging.getLogger(__name__)

ENFORCE, DRY_RUN, REPORT_MODE = "enforce", "dry-run", "report"
MODES = (ENFORCE, DRY_RUN, REPORT_MODE)

# What a pass did with one entry.
SATISFIED = "satisfied"  # the live value meets the policy: nothing to do
UNJUDGED = "unjudged"  # nothing declared to compare with (policy report without a value), or values that do not compare
UNREADABLE = "unreadable"  # the read failed (ENOENT: not on this kernel)
REPORTED = "reported"  # drift left alone: policy report, or mode report
WOULD_WRITE = "would_write"  # drift, mode dry-run: said, not written
WRITTEN = "written"  # written and confirmed by reading back
FAILED = "failed"  # the write failed, or the kernel kept another value

READBACK = "READBACK"  # the write succeeded but reading back does not satisfy the policy


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, type(e).__name__)


def resolve_mode(configured: str, run: Any, replay: bool, in_config: bool = True) -> tuple[str, str]:
    """The effective mode and why. --tuner-mode overrides the config; --once never writes unless --tune
    (which means enforce unless --tuner-mode says otherwise); a snapshot replay never writes into the snapshot.
    `in_config`: the config file set `sysctl.mode` (else `configured` is the built-in default)."""
    flag = run.tuner_mode
    mode, why = (flag, "set by --tuner-mode") if flag else (configured, "set in the config" if in_config
                                                                      else "the default")
    if run.once:
        if run.tune:
            if not flag:
                mode, why = ENFORCE, "--once --tune writes"
        elif mode == ENFORCE:
            mode, why = DRY_RUN, "--once writes only with --tune"
    if replay and mode == ENFORCE:
        mode, why = DRY_RUN, "a snapshot replay is never written"
    return mode, why


class _Outcome:
    """What a sysctl and a process's file limit share: live before the pass, after it, and the judgement."""

    live: Any
    after: Any
    decision: Decision | None
    action: str

    @property
    def now(self) -> Any:
        """The value after this pass."""
        return self.after if self.after is not None else self.live

    @property
    def drift(self) -> bool | None:
        """True when the value after this pass does not satisfy the policy; None when it cannot be judged."""
        if self.action == WRITTEN:
            return False
        if self.decision is None or self.decision.satisfied is None:
            return None
        return not self.decision.satisfied


@dataclass
class SysctlOutcome(_Outcome):
    entry: SysctlEntry
    live: Value | None = None  # before any write
    error: str | None = None  # errno name of a failed read (ENOENT: the key is not on this kernel)
    decision: Decision | None = None
    action: str = UNREADABLE
    after: Value | None = None  # read back after a write
    write_error: str | None = None  # errno name, or READBACK


@dataclass
class PidOutcome(_Outcome):
    pid: int
    live: tuple[float, float] | None = None
    error: str | None = None
    decision: Decision | None = None
    action: str = UNREADABLE
    after: tuple[float, float] | None = None
    write_error: str | None = None


@dataclass
class RlimitOutcome:
    entry: RlimitEntry
    pids: list[PidOutcome] = field(default_factory=list)  # empty: the process is not running


class Tuner:
    def __init__(self, procfs_root: Path, limits: ProcessLimits | None = None) -> None:
        self.procfs = procfs_root
        self.limits = limits
        self.writes: Counter[tuple[str, str]] = Counter()  # (key, ok|failed|dry_run)
        self.rlimit_writes: Counter[tuple[str, str, str]] = Counter()  # (process, resource, result)
        self._logged: dict[str, str] = {}  # entity -> the last error logged for it

    # -- sysctls --------------------------------------------------------------------------------------
    def sysctls(self, entries: list[SysctlEntry], mode: str) -> list[SysctlOutcome]:
        return [self._sysctl(e, mode) for e in entries]

    def _sysctl(self, entry: SysctlEntry, mode: str) -> SysctlOutcome:
        out = SysctlOutcome(entry)
        try:
            out.live = parse(procfs.read_text(self.procfs, entry.key))
        except OSError as e:
            out.error = errno_name(e)
            return out
        d = out.decision = decide(entry, out.live)
        if d.satisfied is None:
            out.action = UNJUDGED
        elif d.satisfied:
            out.action = SATISFIED
            self._logged.pop(entry.key, None)
        elif d.target is None or entry.policy == REPORT or mode == REPORT_MODE:
            out.action = REPORTED
        elif mode == DRY_RUN:
            out.action = WOULD_WRITE
            self.writes[(entry.key, "dry_run")] += 1
        else:
            self._write(out, d.target)
        return out

    def _write(self, out: SysctlOutcome, target: Value) -> None:
        key = out.entry.key
        try:
            procfs.write_text(self.procfs, key, fmt(target))
            out.after = parse(procfs.read_text(self.procfs, key))
        except OSError as e:
            out.action, out.write_error = FAILED, errno_name(e)
        else:
            if decide(out.entry, out.after).satisfied:
                out.action = WRITTEN
            else:  # some keys clamp or ignore a value without an error
                out.action, out.write_error = FAILED, READBACK
        if out.action == WRITTEN:
            self.writes[(key, "ok")] += 1
            self._logged.pop(key, None)
            log.info("tuner: %s %s -> %s (%s)", key, fmt(out.live or ()), fmt(out.after or ()), out.entry.policy)
        else:
            self.writes[(key, "failed")] += 1
            detail = f"kept {fmt(out.after or ())}" if out.write_error == READBACK else out.write_error
            self._log_once(key, f"tuner: writing {key}={fmt(target)} failed: {detail}")

    # -- file limits ----------------------------------------------------------------------------------
    def rlimits(self, entries: list[RlimitEntry], mode: str) -> list[RlimitOutcome]:
        if not entries or self.limits is None:
            return []
        running = self.limits.find({e.process for e in entries})  # one process scan per pass
        out = []
        for e in entries:
            pids = [self._pid(e, pid, mode) for pid in running.get(e.process, [])]
            # A process that exited between the scan and the read is simply no longer running.
            out.append(RlimitOutcome(e, [p for p in pids if p.error != "ESRCH"]))
        return out

    def _pid(self, entry: RlimitEntry, pid: int, mode: str) -> PidOutcome:
        assert self.limits is not None
        out = PidOutcome(pid)
        try:
            out.live = self.limits.get(pid, entry.resource)
        except OSError as e:
            out.error = errno_name(e)
            return out
        d = out.decision = decide_rlimit(entry, out.live)
        counter = (entry.process, entry.resource)
        log_key = f"{entry.entity}#{pid}"
        if d.satisfied:
            out.action = SATISFIED
            self._logged.pop(log_key, None)
        elif d.target is None or entry.policy == REPORT or mode == REPORT_MODE:
            out.action = REPORTED
        elif mode == DRY_RUN:
            out.action = WOULD_WRITE
            self.rlimit_writes[(*counter, "dry_run")] += 1
        else:
            try:
                self.limits.set(pid, entry.resource, d.target)
                out.after = self.limits.get(pid, entry.resource)
            except OSError as e:
                out.action, out.write_error = FAILED, errno_name(e)
            else:
                ok = decide_rlimit(entry, out.after).satisfied
                out.action, out.write_error = (WRITTEN, None) if ok else (FAILED, READBACK)
            if out.action == WRITTEN:
                self.rlimit_writes[(*counter, "ok")] += 1
                self._logged.pop(log_key, None)
                log.info("tuner: %s of %s (pid %d) %s -> %s", entry.resource, entry.process, pid,
                         fmt_limits(out.live), fmt_limits(out.after or out.live))
            else:
                self.rlimit_writes[(*counter, "failed")] += 1
                self._log_once(log_key, f"tuner: setting {entry.resource} of {entry.process} (pid {pid}) to "
                                             f"{fmt_limits(d.target)} failed: {out.write_error}")
        return out

    def _log_once(self, entity: str, message: str) -> None:
        if self._logged.get(entity) != message:
            log.warning("%s (retried every pass; logged again only if the error changes)", message)
            self._logged[entity] = message
