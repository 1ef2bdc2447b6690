"""Profile entries and the decision each policy makes about a live value. Pure: no I/O, no clock.

  minimum  raise only, never lower: satisfied when every field is at least the declared one; the value to
           write takes the larger of live and declared field by field, so no field ever goes down.
  exact    satisfied only by the declared value; writes it whether that raises or lowers.
  report   never written: compared like exact when a value is declared, else only exported.
"""
from __future__ import annotations

from dataclasses import dataclass

from .values import Value, fmt, is_numeric

MINIMUM, EXACT, REPORT = "minimum", "exact", "report"
POLICIES = (MINIMUM, EXACT, REPORT)
RESOURCES = ("nofile", "memlock")  # RLIMIT_NOFILE (count), RLIMIT_MEMLOCK (bytes)


@dataclass(frozen=True)
class SysctlEntry:
    key: str  # dotted, as sysctl(8) spells it: "net.ipv4.tcp_rmem"
    value: Value | None  # None only with policy report: export the live value, judge nothing
    policy: str = MINIMUM


@dataclass(frozen=True)
class RlimitEntry:
    process: str  # process name as psutil reports it: "containerd", "kubelet"
    resource: str  # one of RESOURCES
    soft: float | None  # None: not declared; math.inf: unlimited
    hard: float | None
    policy: str = MINIMUM

    @property
    def entity(self) -> str:
        return f"{self.process}/{self.resource}"


@dataclass(frozen=True)
class Decision:
    satisfied: bool | None  # None: cannot be judged (nothing declared, or values that do not compare)
    target: tuple | None = None  # what enforce would write; None when there is nothing to write
    verb: str = ""  # raise | lower | set: said in findings ("would raise")
    reason: str = ""  # why it cannot be judged


def direction(live: tuple, target: tuple) -> str:
    if len(live) != len(target) or not all(isinstance(f, (int, float)) for f in (*live, *target)):
        return "set"
    up = any(t > lv for lv, t in zip(live, target))
    down = any(t < lv for lv, t in zip(live, target))
    return "raise" if up and not down else "lower" if down and not up else "set"


def decide(entry: SysctlEntry, live: Value) -> Decision:
    want = entry.value
    if want is None:
        return Decision(None, reason="no value declared")
    if entry.policy == MINIMUM:
        if not (is_numeric(live) and len(live) == len(want)):
            return Decision(None, reason=f"live value {fmt(live)!r} does not compare with {fmt(want)!r}")
        if all(lv >= w for lv, w in zip(live, want)):  # type: ignore[operator]
            return Decision(True)
        target = tuple(max(lv, w) for lv, w in zip(live, want))  # type: ignore[type-var]
        return Decision(False, target, "raise")
    if live == want:
        return Decision(True)
    if entry.policy == REPORT:
        return Decision(False, None, direction(live, want))
    return Decision(False, want, direction(live, want))


def decide_rlimit(entry: RlimitEntry, live: tuple[float, float]) -> Decision:
    """`live` is (soft, hard) with math.inf for unlimited. The target always keeps soft <= hard (prlimit
    refuses anything else), raising hard along with soft when a declared soft needs it."""
    soft, hard = live
    if entry.policy == MINIMUM:
        ok = (entry.soft is None or soft >= entry.soft) and (entry.hard is None or hard >= entry.hard)
        if ok:
            return Decision(True)
        new_soft = max(soft, entry.soft if entry.soft is not None else soft)
        new_hard = max(hard, entry.hard if entry.hard is not None else hard, new_soft)
        return Decision(False, (new_soft, new_hard), "raise")
    new_soft = entry.soft if entry.soft is not None else soft
    new_hard = entry.hard if entry.hard is not None else hard
    if new_soft > new_hard:  # only one side declared: move the other one just enough
        if entry.hard is None:
            new_hard = new_soft
        else:
            new_soft = new_hard
    if (new_soft, new_hard) == (soft, hard):
        return Decision(True)
    target = None if entry.policy == REPORT else (new_soft, new_hard)
    return Decision(False, target, direction(live, (new_soft, new_hard)))

