"""From events to findings: which events stick, what clears them, and one finding per (check, GPU).

  fatal, warning  sticky: the GPU's check stays unhealthy until the GPU is reset or the node reboots.
  info            shown once, in the cycle it is read (`agent --once` shows every info event of the boot), as
                  an event (Finding.kind EVENT): it goes to the stream as an info event and stays out of
                  vigil_check_status, where the check's own state row (ok, or a sticky event) goes on as one
                  series with the check's severity, instead of an info series that lives for one scrape.
  ignore          counted in vigil_gpu_events_total, no finding (a config override).

What counts as a reset of GPU X (clears X's sticky events that happened before it):
  * amdgpu "GPU reset(N) succeeded!" / "GPU reset succeeded, trying to resume" for X's PCI address;
  * NVIDIA Xid 154 "GPU recovery action changed from ... to 0x0 (None)", or an NVML recovery-action event
    whose new action is NONE;
  * an operator's acknowledgement written to the kernel log after `nvidia-smi -r` (the NVIDIA driver itself logs
    nothing on a successful reset): `echo "vigil: gpu reset 0000:3b:00.0" > /dev/kmsg` (or `... reset all`).
A reboot is a new boot id: everything sticky belongs to the old boot and is dropped (state.py).

Each check's row keeps one severity (vigil_check_status's severity label, the stream's key): fatal events stick
on the check itself (gpu.xid), warning ones on its `.warning` row (gpu.xid.warning: Xid 63, 94, an unknown
code), so a warning event never turns the fatal row's series into a warning one, nor pages as fatal.

Episodes: identical events (same check, GPU, kind, code, severity and detail: the RAS block, the amdgpu error
event, the CPER AFIDs; never the pid, counter or time in the line) fold into one. A sticky one keeps its first
event and counts the rest (count, last_at), persisted; what is shown once is one finding per distinct event of
the read with its count, first and last time. Both tables are bounded (MAX_STICKY, MAX_SHOWN).
A fatal/warning event cleared by a reset in the same read is shown once, as info, "(recovered: GPU reset)".

CPER records are judged against the node's history too, so a stale record never marks a healthy GPU:
  * notify type BOOT (the driver's record, at boot, of an error from before it)  -> info
  * dated before this boot, or before the GPU's last reset                       -> info
  * otherwise by severity: fatal -> fatal, non_fatal_uncorrected -> warning, non_fatal_corrected -> info.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from agent.base.findings import EVENT, FATAL, INFO, WARNING, Finding, bad, ok
from .model import CPER, RAS, RESET, XID, GpuEvent
from .state import EventState, Sticky

SEVERITY_RANK = {INFO: 0, WARNING: 1, FATAL: 2}
VENDOR_CHECKS = {"nvidia": (XID,), "amd": (RAS, CPER)}
OK_MESSAGES = {XID: "no unrecovered Xid", RAS: "no unrecovered RAS error", CPER: "no unrecovered CPER record",
               RESET: "no failed GPU reset"}
CHECK_KIND = {"gpu.xid": XID, "gpu.ras": RAS, "gpu.cper": CPER, "gpu.reset": RESET}


def _action_rank(action: str | None) -> int:
    a = (action or "").lower()
    return 3 if "reboot" in a else 2 if "reset" in a else 1 if "drain" in a else 0


@dataclass(frozen=True)
class Shown:
    """An event shown once (info, or recovered within the read)."""

    check: str
    entity: str
    gpu: str
    kind: str
    code: str
    severity: str
    description: str
    action: str | None
    text: str
    note: str = ""
    detail: str = ""
    count: int = 1  # identical events folded into this one (an episode)
    first_at: float | None = None
    last_at: float | None = None


# Distinct episodes kept: sticky ones across reads (persisted), shown-once ones per read. Real nodes have a few;
# past the bound (a flood of distinct lines, e.g. written to /dev/kmsg by hand) a new one folds into the nearest
# existing episode (same check and GPU, else same check), counted, so a fatal is never dropped.
MAX_STICKY = 512
MAX_SHOWN = 1024


def label(kind: str, code: str) -> str:
    if kind == XID:
        return f"Xid {code}"
    if kind == CPER:
        return f"CPER {code.replace('_', '-')}"
    if kind == RAS:
        return f"RAS {code}"
    return "GPU reset" if code == "ok" else f"GPU reset {code}"


class Tracker:
    """Applies one read's events, in order, to the state's sticky list; collects what is shown once."""

    def __init__(self, state: EventState, boot_time: float | None = None) -> None:
        self.state = state
        self.boot_time = boot_time
        self._once: list[Shown] = []
        self._fold: list[list] = []  # per entry of _once: [count, first_at, last_at, latest text]
        self._new_keys: set[str] = set()
        self._sticky = {st.signature: st for st in state.sticky}
        self._keys = {k for st in state.sticky for k in (st.key, st.last_key) if k}
        self._shown: dict[tuple, int] = {}  # signature -> index in self.once
        self.folded = 0  # events folded into an episode that already existed
        self.overflowed = 0  # new episodes folded into another one because the table was full

    def apply(self, ev: GpuEvent, entity: str, gpu: str) -> bool:
        """Apply one event; False when it duplicates one already recorded (then it is not counted either)."""
        if ev.recovers:
            self._reset(ev, entity, gpu)
            return True
        if ev.key in self._keys:
            return False
        if ev.fallen_off_bus and any(s.entity == entity and s.kind == XID and s.code == "79"
                                     for s in self._sticky.values()):
            return False  # the paragraph that follows an Xid 79 line: the same event
        severity, note = ev.severity, self._stale(ev, entity)
        if note:
            severity = INFO
        if severity in (FATAL, WARNING):
            sig = (ev.check, entity, ev.kind, ev.code, severity, ev.detail)
            st = self._sticky.get(sig)
            if st is None and len(self._sticky) >= MAX_STICKY:
                st = self._nearest(ev.check, entity, severity)
                self.overflowed += 1
            if st is not None:  # the same event again: one episode, counted
                st.count += 1
                st.last_key = ev.key
                if ev.at is not None:
                    st.last_at = ev.at if st.last_at is None else max(st.last_at, ev.at)
                self.folded += 1
            else:
                st = Sticky(ev.check, entity, gpu, ev.kind, ev.code, severity, ev.description, ev.action, ev.text,
                            ev.key, ev.at, ev.pci, detail=ev.detail, last_at=ev.at)
                self.state.sticky.append(st)
                self._sticky[sig] = st
                self._new_keys.add(ev.key)
            self._keys.add(ev.key)
        elif severity == INFO:  # a stale record needs no action: what it reported is over
            self._show(Shown(ev.check, entity, gpu, ev.kind, ev.code, INFO, ev.description,
                             None if note else ev.action, ev.text, note, ev.detail, 1, ev.at, ev.at))
        return True

    def _nearest(self, check: str, entity: str, severity: str) -> Sticky:
        """The episode a new one folds into when the table is full: same check and GPU, else same check, else the
        most severe; a fatal never folds into a warning (the warning becomes the fatal)."""
        pool = list(self._sticky.values())
        same = [s for s in pool if s.check == check and s.entity == entity] or [s for s in pool if s.check == check] \
            or pool
        best = max(same, key=lambda s: SEVERITY_RANK[s.severity])
        if SEVERITY_RANK[best.severity] < SEVERITY_RANK[severity]:
            best.severity = severity
        return best

    def _show(self, item: Shown) -> None:
        sig = (item.check, item.entity, item.kind, item.code, item.note, item.detail)
        i = self._shown.get(sig)
        if i is None and len(self._shown) >= MAX_SHOWN:
            i = next((j for j, o in enumerate(self._once) if o.check == item.check and o.entity == item.entity), 0)
            self.overflowed += 1
        if i is None:
            self._shown[sig] = len(self._once)
            self._once.append(item)
            self._fold.append([item.count, item.first_at, item.last_at, item.text])
            return
        f = self._fold[i]  # a list, updated in place: a flood folds in O(1) per event
        f[0] += item.count
        if item.first_at is not None:
            f[1] = item.first_at if f[1] is None else min(f[1], item.first_at)
        if item.last_at is not None:
            f[2] = item.last_at if f[2] is None else max(f[2], item.last_at)
        f[3] = item.text
        self.folded += item.count

    @property
    def once(self) -> list[Shown]:
        """What is shown once, each distinct event with its count, first and last time, and latest text."""
        return [dataclasses.replace(o, count=f[0], first_at=f[1], last_at=f[2], text=f[3])
                for o, f in zip(self._once, self._fold)]

    def _stale(self, ev: GpuEvent, entity: str) -> str:
        if ev.kind != CPER or ev.severity == INFO:
            return ""
        if str(ev.details.get("notify_type", "")).upper() == "BOOT":
            return "recorded at boot for an error from before this boot"
        if ev.at is not None and self.boot_time is not None and ev.at < self.boot_time:
            return "dated before this boot"
        reset_at = self.state.last_reset.get(entity)
        if ev.at is not None and reset_at is not None and ev.at <= reset_at:
            return "dated before the GPU's last reset"
        return ""

    def _reset(self, ev: GpuEvent, entity: str, gpu: str) -> None:
        # An episode whose last occurrence came after the reset is not cleared by it.
        hit = [s for s in self.state.sticky if (ev.all_gpus or s.entity == entity)
               and (ev.at is None or (s.last_at if s.last_at is not None else s.at) is None
                    or (s.last_at if s.last_at is not None else s.at) <= ev.at + 1.0)]
        for s in hit:
            self.state.sticky.remove(s)
            self._sticky.pop(s.signature, None)
            if s.key in self._new_keys:
                self._show(Shown(s.check, s.entity, s.gpu, s.kind, s.code, INFO, s.description, None,
                                 s.text, "recovered: GPU reset", s.detail, s.count, s.at, s.last_at or s.at))
        if ev.at is not None:
            for e in ({s.entity for s in hit} | {entity}) if ev.all_gpus else {entity}:
                self.state.last_reset[e] = max(ev.at, self.state.last_reset.get(e, ev.at))
        note = f"cleared {len(hit)} sticky event(s)" if hit else ""
        self._show(Shown(ev.check, "" if ev.all_gpus else entity, gpu, ev.kind, ev.code, INFO,
                         ev.description, None, ev.text, note, "", 1, ev.at, ev.at))


def findings(sticky: Iterable[Sticky], once: Iterable[Shown], known: dict[str, str], checks: set[str],
             remembered: set[tuple[str, str]], node: str) -> list[Finding]:
    """One finding per (check, entity). `known`: entity -> vendor of the GPUs this node has; `checks`: the
    kinds whose source ran this cycle (their GPUs get an ok row); `remembered`: (check, entity) pairs reported
    unhealthy earlier, which get an ok row once they clear."""
    by_key: dict[tuple[str, str], list] = {}
    for s in sticky:
        by_key.setdefault((row_check(s.check, s.severity), s.entity), []).append(s)
    shown: dict[tuple[str, str], list[Shown]] = {}
    for o in once:
        shown.setdefault((o.check, o.entity if o.entity else node), []).append(o)
    wanted = set(by_key) | set(shown)
    for check, entity in remembered:  # both rows: either may have been the unhealthy one
        wanted |= {(check, entity), (row_check(check, WARNING), entity)}
    for entity, vendor in known.items():
        for kind in VENDOR_CHECKS.get(vendor, ()):
            if kind in checks:
                wanted |= {(f"gpu.{kind}", entity), (f"gpu.{kind}{WARNING_ROW}", entity)}
    out: list[Finding] = []
    for check, entity in sorted(wanted):
        stuck = by_key.get((check, entity))
        # The state of the check first (sticky events, else ok), then what happened once beside it.
        if stuck:
            out.append(_sticky_finding(check, entity, stuck))
        elif check.endswith(WARNING_ROW):
            base = check[:-len(WARNING_ROW)]
            out.append(ok(check, "gpu", entity, OK_MESSAGES.get(CHECK_KIND.get(base, ""), "no event")
                          .replace("no ", "no warning-level ", 1), WARNING))
        else:
            out.append(ok(check, "gpu", entity, OK_MESSAGES.get(CHECK_KIND.get(check, ""), "no event")))
        if (check, entity) in shown:
            out += _once_findings(check, entity, shown[(check, entity)])
    return out


MAX_TEXT = 200
WARNING_ROW = ".warning"


def row_check(check: str, severity: str) -> str:
    """The row a sticky event of this severity goes on: the check itself for fatal, its .warning row else."""
    if severity == FATAL or check.endswith(WARNING_ROW):
        return check
    return check + WARNING_ROW


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _value(code: str):
    return int(code) if code.isdigit() else code


def _sticky_finding(check: str, entity: str, stuck: list[Sticky]) -> Finding:
    # The worst event heads the finding; among equals the earliest (the root cause, e.g. Xid 79 before its 154).
    worst = max(stuck, key=lambda s: (SEVERITY_RANK[s.severity], _action_rank(s.action), -(s.at or 0.0)))
    others = sorted({label(s.kind, s.code) for s in stuck} - {label(worst.kind, worst.code)})
    msg = f"{label(worst.kind, worst.code)}: {worst.description}"
    total = sum(s.count for s in stuck)
    if total > 1:
        msg += f" ({total} unrecovered events" + (f"; also {', '.join(others)}" if others else "") + ")"
    msg += f" | {_clip(worst.text)}"
    firsts = [s.at for s in stuck if s.at is not None]
    lasts = [s.last_at if s.last_at is not None else s.at for s in stuck]
    lasts = [t for t in lasts if t is not None]
    return bad(check, "gpu", entity, msg, worst.severity, value=_value(worst.code), action=worst.action,
               count=total, first_seen=min(firsts) if firsts else None, last_seen=max(lasts) if lasts else None)


def _once_findings(check: str, entity: str, items: list[Shown]) -> list[Finding]:
    """One event finding per distinct event (kind, code, detail) of the read: identical ones are one episode with
    its count, so the stream and `--once` show "Xid 13 x40000", not 40,000 rows."""
    groups: dict[tuple, list[Shown]] = {}
    for i in items:
        groups.setdefault((i.kind, i.code, i.detail), []).append(i)
    out = []
    for group in groups.values():
        last = group[-1]
        n = sum(i.count for i in group)
        msg = f"{label(last.kind, last.code)}: {last.description}"
        if last.note:
            msg += f" ({last.note})"
        if n > 1:
            msg += f"; {n} events this read"
        msg += f" | {_clip(last.text)}"
        firsts = [i.first_at for i in group if i.first_at is not None]
        lasts = [i.last_at for i in group if i.last_at is not None]
        # The value names the event: its code, and what tells it apart from others of that code (the RAS block).
        value = _value(last.code) if not last.detail else f"{last.code}:{last.detail}"
        out.append(bad(check, "gpu", entity, msg, INFO, value=value, action=last.action, kind=EVENT,
                       count=n, first_seen=min(firsts) if firsts else None, last_seen=max(lasts) if lasts else None))
    return out
