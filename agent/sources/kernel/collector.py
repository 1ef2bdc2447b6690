"""Kernel log rules (`kernel`): node-problem-detector's kernel monitor, inside the agent.

Reads the kernel log through the one shared /dev/kmsg reader (agent/base/kmsg.py; the GPU events read the same
records), or a snapshot's DIR/kmsg.txt, and judges each line by rule files in NPD's system-log-monitor format
(agent/sources/kernel/npd.py): Vigil's defaults (rules/default.json: hung tasks, oops/BUG, soft and hard
lockups, RCU stalls, read-only remounts, XFS shutdown, I/O errors, MCE/EDAC, NVMe timeouts, NIC resets, AER
messages) and/or a cluster's own kernel-monitor.json, unchanged.

Findings (component `kernel`, entity the node): `kernel.<condition>` per declared condition (a state:
ok, or unhealthy with its rule's severity; agent/sources/kernel/rules.py says what clears it) and
`kernel.event.<reason>` per temporary-rule episode (an event). When the kernel log cannot be read live
(/dev/kmsg not mounted, no CAP_SYSLOG) every condition is unknown: nothing read is not healthy.

State: <state_dir>/kernel.json keeps the cursor (boot id + last sequence), the conditions that are set and the
temporary rules' episodes of this boot, so a restarted agent (whose reader starts at the oldest record of the
kernel's ring again) neither re-fires old lines, nor forgets a condition, nor announces an ongoing episode twice. `agent --once` reads it but never
writes it; a snapshot replay neither reads nor writes it.
"""
from __future__ import annotations

import copy
import errno
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.base.collector import Collector, Context, NoData, Observation, Output
from agent.base.config import CollectorSettings, ConfigError, in_range
from agent.base.errors import error_text
from agent.base.findings import Finding, unknown
from agent.base.kmsg import KmsgSubscription, parse_text, subscribe
from agent.base.metrics import MetricSet
from agent.base.statefile import load_json, save_json
from . import npd
from . import rules as engine
from .metrics import KERNEL_CONDITION, KERNEL_LOG_UP, KERNEL_MATCHES, KERNEL_MISSED, KERNEL_RECORDS

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).with_name("rules") / "default.json"
FILENAME = "kernel.json"
IGNORE = "ignore"
# Both refusals look alike (EPERM): no CAP_SYSLOG under kernel.dmesg_restrict=1, or a container's device cgroup
# (a hostPath /dev/kmsg opens only in a privileged container). docs/deploy.md, "Mounts".
DENIED_HINT = (" (needs CAP_SYSLOG where kernel.dmesg_restrict=1, and in a container device access to /dev/kmsg:"
               " privileged, as components/kernel-log, components/amd and components/nvme-smart make the agent)")


@dataclass
class KernelSettings(CollectorSettings):
    timeout_seconds: float = 30.0  # the first read of a boot judges the whole ring buffer (a few seconds at most)
    kmsg_path: str = "/dev/kmsg"
    state_dir: str = "/var/lib/vigil"  # the cursor and the set conditions persist here; "" keeps them in memory
    # Rule files in node-problem-detector's format; "default" is Vigil's own (rules/default.json).
    rule_files: list[str] = field(default_factory=lambda: ["default"])
    # Per condition type or rule reason: fatal | warning | info | ignore (a rule dropped, a condition not judged)
    severity: dict[str, str] = field(default_factory=dict)
    episode_seconds: float = 300.0  # a temporary rule's matches within this long are one episode
    clear_after_seconds: float | None = None  # a condition clears after this long without a match; None: at reboot
    max_records_per_read: int = 100000

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        in_range(f"{prefix}.max_records_per_read", self.max_records_per_read, 1, 10_000_000)
        if len(self.rule_files) > 64:
            raise ConfigError(f"{prefix}.rule_files: at most 64 files")
        for name, sev in self.severity.items():
            if sev not in (*npd.SEVERITIES, IGNORE):
                raise ConfigError(f"{prefix}.severity.{name}: must be one of fatal, warning, info, ignore")
        sets = load_rules(self, prefix, overrides=False)
        known = {c.type for rs in sets for c in rs.conditions} | {r.reason for rs in sets for r in rs.rules}
        for name in self.severity:
            if name not in known:
                raise ConfigError(f"{prefix}.severity.{str(name)[:80]}: no such condition or rule reason in "
                                  f"{prefix}.rule_files")


def load_rules(settings: KernelSettings, prefix: str = "kernel", overrides: bool = True) -> list[npd.RuleSet]:
    """The rule files, with the config's severity overrides applied. ConfigError names the file and key."""
    out = []
    for i, name in enumerate(settings.rule_files):
        path = DEFAULT_RULES if name == "default" else Path(name)
        try:
            rs = npd.load_file(path)
        except ConfigError as e:
            raise ConfigError(f"{prefix}.rule_files[{i}]: {e}") from None
        if name == "default":
            rs.name = "default"
        over = settings.severity if overrides else {}
        rs.rules = [r if r.reason not in over else _with_severity(r, over[r.reason])
                    for r in rs.rules if over.get(r.reason) != IGNORE]
        rs.conditions = [c if c.type not in over else npd.Condition(c.type, c.reason, c.message, over[c.type])
                         for c in rs.conditions if over.get(c.type) != IGNORE]
        types = {c.type for c in rs.conditions}
        rs.rules = [r for r in rs.rules if r.condition is None or r.condition in types]
        out.append(rs)
    return out


def _with_severity(rule: npd.Rule, severity: str) -> npd.Rule:
    from dataclasses import replace
    return replace(rule, severity=severity)


@dataclass
class KernelReading:
    state: engine.KernelState  # a copy
    shown: list[engine.Episode]
    matches: dict[tuple[str, str], int]  # cumulative since start
    records: int
    missed: int
    unreadable: str | None  # why the kernel log could not be read (checks unknown); None when read
    cleared: list[str] = field(default_factory=list)


class KernelCollector(Collector):
    name = "kernel"
    component = "kernel"
    Settings = KernelSettings

    def __init__(self, settings: KernelSettings, ctx: Context) -> None:
        super().__init__(settings, ctx)
        self._rulesets = load_rules(settings)
        self._engine = engine.Engine(self._rulesets, settings.episode_seconds)
        # Subscribed now (no I/O: the shared reader opens the log on its first read), so whichever source reads
        # first, the backlog is kept for the other.
        self._sub: KmsgSubscription | None = None if ctx.roots.snapshot is not None else \
            subscribe(settings.kmsg_path, settings.max_records_per_read)
        self._state: engine.KernelState | None = None
        self._matches: dict[tuple[str, str], int] = {}
        self._records = 0
        self._saved: dict | None = None
        self._save_error: str | None = None
        self._replayed = False

    @property
    def _snapshot(self) -> Path | None:
        return self.ctx.roots.snapshot

    @property
    def state_path(self) -> Path:
        return Path(self.settings.state_dir) / FILENAME

    def _load_state(self) -> engine.KernelState:
        if self._state is None:
            self._state = engine.KernelState()
            if self.settings.state_dir and self._snapshot is None:
                try:
                    self._state = engine.KernelState.from_json(load_json(self.state_path))
                except FileNotFoundError:
                    pass
                except (OSError, ValueError, TypeError) as e:
                    log.warning("kernel: ignoring unreadable state %s: %s", self.state_path, e)
        return self._state

    def _uptime_usec(self) -> int | None:
        try:
            return int(float(self.ctx.roots.proc("uptime").read_text().split()[0]) * 1e6)
        except (OSError, ValueError, IndexError, OverflowError):
            return None

    def read(self) -> KernelReading:
        state = self._load_state()
        boot = self.ctx.roots.boot_id()
        state.new_boot(boot if boot is not None or self._snapshot is None else "snapshot")
        unreadable = None
        records = []
        if self._snapshot is not None:
            path = self._snapshot / "kmsg.txt"
            if not path.is_file():
                raise NoData("no kmsg.txt in the snapshot")
            if not self._replayed:  # a snapshot never changes: judged once
                records = parse_text(path.read_text(errors="replace"))
                self._replayed = True
        else:
            try:
                if self._sub is None:
                    self._sub = subscribe(self.settings.kmsg_path, self.settings.max_records_per_read)
                records = self._sub.read()
            except OSError as e:
                unreadable = f"{self.settings.kmsg_path}: {e.strerror or e}"
                if e.errno in (errno.EPERM, errno.EACCES):
                    unreadable += DENIED_HINT
                self._close_sub()
        floor = None
        if state.seq is None and self._snapshot is None:
            up = self._uptime_usec()
            if up is not None:
                floor = {i: up - int(rs.lookback * 1e6) for i, rs in enumerate(self._rulesets) if rs.lookback}
        p = self._engine.apply(records, state, floor, None)
        now = int(time.monotonic() * 1e6) if self._snapshot is None else max(
            (r.usec for r in records if r.usec is not None), default=None)
        clear = self.settings.clear_after_seconds
        expired = self._engine.expire(state, int(clear * 1e6) if clear else None, now)
        for k, n in p.matches.items():
            self._matches[k] = self._matches.get(k, 0) + n
        self._records += len(records)
        self._save(state)
        if p.cleared or expired:
            log.info("kernel: conditions cleared: %s", ", ".join(p.cleared + expired))
        return KernelReading(copy.deepcopy(state), p.shown, dict(self._matches), self._records,
                             self._sub.missed if self._sub else 0, unreadable, p.cleared + expired)

    def evaluate(self, reading: KernelReading, previous: Observation | None, elapsed: float | None) -> Output:
        conditions = self._engine.conditions()
        ms = MetricSet()
        ms.declare(KERNEL_MATCHES)
        for ctype in sorted(set(conditions) | set(reading.state.active)):
            ms.add(KERNEL_CONDITION, {"condition": ctype}, 1 if ctype in reading.state.active else 0)
        for (rtype, reason), n in sorted(reading.matches.items()):
            ms.add(KERNEL_MATCHES, {"reason": reason, "type": rtype}, n)
        ms.add(KERNEL_RECORDS, {}, reading.records)
        ms.add(KERNEL_MISSED, {}, reading.missed)
        ms.add(KERNEL_LOG_UP, {}, 0 if reading.unreadable else 1)
        out = engine.findings(conditions, reading.state, reading.shown, self.ctx.node, reading.unreadable)
        return Output(ms, out, partial=reading.unreadable is not None)

    def failed(self, error: BaseException) -> list[Finding]:
        return [unknown("kernel.log", self.component, self.ctx.node, f"kernel rules failed: {error_text(error)}")]

    def close(self) -> None:
        self._close_sub()

    def _close_sub(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def _save(self, state: engine.KernelState) -> None:
        if not self.settings.state_dir or self._snapshot is not None or self.ctx.mode.once:
            return
        doc = state.to_json()
        if doc == self._saved:
            return
        try:
            save_json(self.state_path, doc)
            self._saved = copy.deepcopy(doc)
            self._save_error = None
        except OSError as e:
            text = f"{self.state_path}: {e.strerror or e}"
            if text != self._save_error:
                log.warning("kernel: cannot save state (old lines may fire again after a restart): %s", text)
            self._save_error = text
