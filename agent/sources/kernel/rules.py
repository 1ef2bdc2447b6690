"""Kernel log rules applied to records: conditions (permanent rules) and episodes (temporary rules).

  permanent  sets its condition (KernelDeadlock, ReadonlyFilesystem ...): a state finding
             `kernel.<condition>` on the node, unhealthy with the condition's declared severity (its "vigil"
             key or the config's `kernel.severity`), else the worst severity of the rules that fired, until
             the node reboots (a new boot id; NPD's conditions last as long) or, when `clear_after_seconds` is
             set, until that long passes without another match. An operator may clear one after fixing the
             cause: `echo "vigil: kernel clear ReadonlyFilesystem" > /dev/kmsg` (or `... clear all`).
  temporary  an event: matches of one reason are one episode, shown once when it opens (Finding.kind EVENT,
             `kernel.event.<reason>`), then at most once per `episode_seconds` while lines keep matching, with
             the count since: a flood of "I/O error" lines is a few events, not one per line.
Every match counts in vigil_kernel_rule_matches_total.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

from agent.base.findings import EVENT, FATAL, INFO, WARNING, Finding, bad, ok, unknown
from agent.base.kmsg import KmsgRecord
from .npd import MAX_LINE, PERMANENT, Condition, Rule, RuleSet

RANK = {INFO: 0, WARNING: 1, FATAL: 2}
MAX_TEXT = 240
_ACK = re.compile(r"^vigil: kernel clear (?P<what>all|[A-Za-z][A-Za-z0-9_]{0,127})\s*$", re.IGNORECASE)
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z]{2})")


def snake(name: str) -> str:
    """KernelDeadlock -> kernel_deadlock, CPULockup -> cpu_lockup, PCIeBusError -> pcie_bus_error,
    NVMeTimeout -> nvme_timeout: an acronym ends where a capitalised word of 3+ letters starts."""
    return _SNAKE.sub("_", name).lower()


def condition_check(ctype: str) -> str:
    return f"kernel.{snake(ctype)}"


def event_check(reason: str) -> str:
    return f"kernel.event.{snake(reason)}"


def clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


@dataclass
class Active:
    """A condition that is set (persisted in the state file)."""

    condition: str
    reason: str  # the first rule that set it (NPD shows the latest; the first is the root cause)
    severity: str
    action: str | None
    text: str
    count: int = 1
    first_seq: int | None = None
    last_usec: int | None = None  # kernel time of the last match
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, doc: dict) -> "Active":
        names = {f.name for f in fields(cls)}
        a = cls(**{k: v for k, v in doc.items() if k in names})
        # Every field's type, as the findings use them: a hand-edited or corrupt file is refused here (the
        # collector then starts afresh) instead of failing the source at every cycle after.
        if a.severity not in RANK or not all(isinstance(v, str) for v in (a.condition, a.reason, a.text)) or \
                not _opt_str(a.action) or not _count(a.count, 1) or not _opt_int(a.first_seq) or \
                not _opt_int(a.last_usec) or not isinstance(a.reasons, list) or \
                not all(isinstance(r, str) for r in a.reasons):
            raise ValueError(f"bad condition record {str(doc)[:80]}")
        return a


def _opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _opt_int(v: object) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _count(v: object, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


@dataclass
class Episode:
    reason: str
    severity: str
    action: str | None
    opened_usec: int | None
    shown_usec: int | None  # when it was last shown
    since_shown: int = 0  # matches not shown yet
    total: int = 0
    text: str = ""
    last_usec: int | None = None

    @classmethod
    def from_json(cls, doc: dict) -> "Episode":
        names = {f.name for f in fields(cls)}
        e = cls(**{k: v for k, v in doc.items() if k in names})
        if e.severity not in RANK or not isinstance(e.reason, str) or not isinstance(e.text, str) or \
                not _opt_str(e.action) or not all(_opt_int(v) for v in (e.opened_usec, e.shown_usec, e.last_usec)) \
                or not _count(e.since_shown) or not _count(e.total):
            raise ValueError(f"bad episode record {str(doc)[:80]}")
        return e


MAX_EPISODES = 1000  # one per temporary rule's reason; a state file with more is not ours


@dataclass
class KernelState:
    boot_id: str | None = None
    seq: int | None = None  # last record handled in boot_id (the persisted cursor)
    active: dict[str, Active] = field(default_factory=dict)
    # Temporary rules' episodes of this boot, by reason: persisted with the cursor, so an episode that spans an
    # agent restart stays one episode (counted, shown again only when due), not a second announcement.
    episodes: dict[str, Episode] = field(default_factory=dict)

    def new_boot(self, boot_id: str | None) -> bool:
        if boot_id == self.boot_id:
            return False
        self.boot_id, self.seq, self.active, self.episodes = boot_id, None, {}, {}
        return True

    def to_json(self) -> dict:
        return {"version": 1, "boot_id": self.boot_id, "seq": self.seq,
                "active": {k: asdict(v) for k, v in sorted(self.active.items())},
                "episodes": {k: asdict(v) for k, v in sorted(self.episodes.items())}}

    @classmethod
    def from_json(cls, doc: object) -> "KernelState":
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("unsupported kernel state")
        seq = doc.get("seq")
        for key in ("active", "episodes"):
            if not isinstance(doc.get(key) or {}, dict):
                raise ValueError(f"kernel state: {key} is not an object")
        active = {str(k): Active.from_json(v) for k, v in (doc.get("active") or {}).items() if isinstance(v, dict)}
        # A file from before episodes were kept has none: its open episodes start again (announced once more).
        episodes = {str(k): Episode.from_json(v) for k, v in list((doc.get("episodes") or {}).items())[:MAX_EPISODES]
                    if isinstance(v, dict)}
        boot = doc.get("boot_id")
        return cls(boot if isinstance(boot, str) else None,
                   seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None, active,
                   episodes)


class Matcher:
    """One rule file's line buffer and rules (NPD: a pattern must match at the end of the buffered lines)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.buffer: deque[str] = deque(maxlen=rules.buffer_size)

    def feed(self, text: str) -> list[tuple[Rule, str]]:
        out: list[tuple[Rule, str]] = []
        for line in text.split("\n"):
            line = line[:MAX_LINE]
            if not line.strip() or any(s in line for s in self.rules.skip):
                continue
            self.buffer.append(line)
            joined = None
            for rule in self.rules.rules:
                if rule.multiline:
                    if joined is None:
                        joined = "\n".join(self.buffer)
                    m = rule.regex.search(joined)
                    if m:  # the whole lines the match spans
                        out.append((rule, joined[joined.rfind("\n", 0, m.start()) + 1:]))
                elif rule.regex.search(line):
                    out.append((rule, line))
        return out


@dataclass
class Pass:
    """What one read's records did."""

    shown: list[Episode] = field(default_factory=list)  # episodes to show this cycle (a copy of each)
    shown_now: dict[str, Episode] = field(default_factory=dict)
    matches: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, reason) -> matches
    cleared: list[str] = field(default_factory=list)


class Engine:
    def __init__(self, rulesets: list[RuleSet], episode_seconds: float) -> None:
        self.rulesets = rulesets
        self.matchers = [Matcher(rs) for rs in rulesets]
        self.episode_usec = int(episode_seconds * 1e6)

    def conditions(self) -> dict[str, tuple[Condition, str]]:
        """condition type -> (its declaration, its severity): declared severity, else the worst of its rules'."""
        out: dict[str, tuple[Condition, str]] = {}
        for rs in self.rulesets:
            for c in rs.conditions:
                rules = [r for s in self.rulesets for r in s.rules if r.condition == c.type]
                worst = max((r.severity for r in rules), key=RANK.__getitem__, default=FATAL)
                prev = out.get(c.type)
                sev = c.severity or worst
                if prev is None or RANK[sev] > RANK[prev[1]]:
                    out[c.type] = (c if prev is None else prev[0], sev)
        return out

    def apply(self, records: Iterable[KmsgRecord], state: KernelState, lookback_floor: dict[int, int] | None,
              clock_usec: int | None) -> Pass:
        """Feed the records past the state's cursor; update conditions and episodes. `lookback_floor`:
        per rule-file index, the kernel time before which records are not judged (NPD's lookback on the first
        read of a boot)."""
        p = Pass()
        for rec in records:
            if state.seq is not None and rec.seq <= state.seq:
                continue
            state.seq = rec.seq if state.seq is None else max(state.seq, rec.seq)
            ack = _ACK.match(rec.text.strip())
            if ack:
                what = ack.group("what")
                for ctype in [c for c in state.active if what.lower() == "all" or c.lower() == what.lower()]:
                    del state.active[ctype]
                    p.cleared.append(ctype)
                continue
            for i, matcher in enumerate(self.matchers):
                if lookback_floor and i in lookback_floor and (rec.usec is None or rec.usec < lookback_floor[i]):
                    matcher.feed(rec.text)  # still buffered (a later line's multi-line match may need it)
                    continue
                for rule, text in matcher.feed(rec.text):
                    key = (rule.type, rule.reason)
                    p.matches[key] = p.matches.get(key, 0) + 1
                    if rule.type == PERMANENT:
                        self._permanent(rule, text, rec, state)
                    else:
                        self._temporary(rule, text, rec, p, state.episodes)
        return p

    @staticmethod
    def _permanent(rule: Rule, text: str, rec: KmsgRecord, state: KernelState) -> None:
        ctype = rule.condition or ""
        a = state.active.get(ctype)
        if a is None:
            state.active[ctype] = Active(ctype, rule.reason, rule.severity, rule.action, clip(text), 1, rec.seq,
                                         rec.usec, [rule.reason])
            return
        a.count += 1
        a.last_usec = rec.usec if rec.usec is not None else a.last_usec
        if rule.reason not in a.reasons and len(a.reasons) < 16:
            a.reasons.append(rule.reason)
        if RANK[rule.severity] > RANK[a.severity]:  # a worse rule takes the lead
            a.reason, a.severity, a.action, a.text = rule.reason, rule.severity, rule.action, clip(text)

    def _temporary(self, rule: Rule, text: str, rec: KmsgRecord, p: Pass, episodes: dict[str, Episode]) -> None:
        t = rec.usec
        ep = episodes.get(rule.reason)
        if ep is None or (t is not None and ep.last_usec is not None and t - ep.last_usec >= self.episode_usec):
            # the first match, or the first after a quiet window: a new episode
            ep = episodes[rule.reason] = Episode(rule.reason, rule.severity, rule.action, t, None)
        ep.total += 1
        ep.since_shown += 1
        ep.text = clip(text)
        ep.last_usec = t if t is not None else ep.last_usec
        if RANK[rule.severity] > RANK[ep.severity]:
            ep.severity, ep.action = rule.severity, rule.action
        shown = p.shown_now.get(rule.reason)
        if shown is not None:  # already shown this cycle: the shown copy carries the count
            shown.since_shown, shown.total, shown.text = shown.since_shown + 1, ep.total, ep.text
            shown.severity, shown.action = ep.severity, ep.action
            ep.since_shown = 0
            return
        due = ep.shown_usec is None or (t is not None and t - ep.shown_usec >= self.episode_usec)
        if due:
            ep.shown_usec = t if t is not None else 0
            copy = Episode(ep.reason, ep.severity, ep.action, ep.opened_usec, ep.shown_usec, ep.since_shown,
                           ep.total, ep.text)
            p.shown.append(copy)
            p.shown_now[rule.reason] = copy
            ep.since_shown = 0

    def expire(self, state: KernelState, clear_after_usec: int | None, now_usec: int | None) -> list[str]:
        if clear_after_usec is None or now_usec is None:
            return []
        gone = [c for c, a in state.active.items() if a.last_usec is not None and now_usec - a.last_usec > clear_after_usec]
        for c in gone:
            del state.active[c]
        return gone


def findings(conditions: dict[str, tuple[Condition, str]], state: KernelState, shown: list[Episode], node: str,
             unreadable: str | None, extra_active_ok: bool = True) -> list[Finding]:
    out: list[Finding] = []
    for ctype, (cond, severity) in sorted(conditions.items()):
        check = condition_check(ctype)
        a = state.active.get(ctype)
        if a is not None:
            also = [r for r in a.reasons if r != a.reason]
            msg = f"{a.reason}: {a.text}"
            if a.count > 1:
                msg += f" ({a.count} matches this boot" + (f"; also {', '.join(also)}" if also else "") + ")"
            # A condition's declared severity (its "vigil" key, or the config's override) decides; else the rule's.
            out.append(bad(check, "kernel", node, msg, cond.severity or a.severity, value=a.count, action=a.action))
        elif unreadable:
            out.append(unknown(check, "kernel", node, f"kernel log not read: {unreadable}", severity))
        else:
            out.append(ok(check, "kernel", node, cond.message or cond.reason or f"no {ctype}", severity))
    for ctype, a in sorted(state.active.items()):  # set by a rule file no longer loaded: still shown
        if ctype not in conditions:
            out.append(bad(condition_check(ctype), "kernel", node, f"{a.reason}: {a.text}", a.severity,
                           value=a.count, action=a.action))
    for ep in sorted(shown, key=lambda e: e.reason):
        n = ep.since_shown
        msg = f"{ep.reason}: {n} matching line{'s' if n != 1 else ''}"
        if ep.total > n:
            msg += f" ({ep.total} in this episode)"
        msg += f" | {ep.text}"
        out.append(bad(event_check(ep.reason), "kernel", node, msg, ep.severity, value=ep.total, action=ep.action,
                       kind=EVENT))
    return out
