"""Node tuner rules (pure): what one tuning pass found and did, as findings.

Checks (component "sysctl"):
  sysctl.mode           per node: info, the effective mode and why (config, --tuner-mode, --once without --tune).
  sysctl.drift          per key: ok when the live value satisfies the policy (or was just made to);
                        warning while it does not (report mode, dry-run, policy report, failed write);
                        unknown when the key is missing on this kernel or cannot be read.
  sysctl.write          per key, only in a pass that attempted a write that failed: warning, with the errno.
  sysctl.changed        per key, only in the pass that changed it: info event (old and new value).
  sysctl.rlimit.drift   per process/resource ("containerd/nofile"), the same statuses as sysctl.drift;
                        ok/info "not running" when no process has the name.
  sysctl.rlimit.write   per process/resource whose prlimit failed in this pass: warning, with the errno.
  sysctl.rlimit.changed per process/resource changed in this pass: info event, one per process.
The message is the row `agent --once` shows: live value, desired value and what the tuner did or would do,
e.g. "vm.max_map_count 65530 -> 262144 (minimum; would raise)".
"""
from __future__ import annotations

from agent.base.findings import EVENT, INFO, WARNING, Finding, bad, ok, unknown
from .apply import (FAILED, READBACK, REPORTED, SATISFIED, UNJUDGED, UNREADABLE, WOULD_WRITE, WRITTEN, PidOutcome,
    RlimitOutcome, SysctlOutcome)
from .policy import REPORT
from .values import fmt, fmt_limit, fmt_limits, plain

C = "sysctl"
PAST = {"raise": "raised", "lower": "lowered", "set": "set"}

# What to do about a failed write, by errno: the finding's recommended action.
ACTIONS = {
    "EACCES": "the key is read-only here (a network namespace, or /proc/sys mounted read-only): set it on the "
              "host or drop it from the profile",
    "EROFS": "/proc/sys is mounted read-only: run the agent privileged with the host's /proc",
    "EPERM": "the agent lacks the privilege (CAP_SYS_ADMIN for sysctls, CAP_SYS_RESOURCE for hard limits), or "
             "the value is above a ceiling such as fs.nr_open",
    "EINVAL": "the kernel rejects the value: fix the profile",
    "ENOENT": "the kernel does not know this key or value (a module not loaded?)",
    READBACK: "the kernel accepted the write but kept another value: check the key's range",
}


def evaluate(node: str, mode: str, why: str, sysctls: list[SysctlOutcome],
             rlimits: list[RlimitOutcome]) -> list[Finding]:
    # One row saying how the tuner ran, so "would raise" in `agent --once` is never a puzzle.
    out: list[Finding] = [ok("sysctl.mode", C, node, f"tuner mode {mode} ({why})", INFO, value=mode)]
    for s in sysctls:
        out += sysctl_findings(s)
    for r in rlimits:
        out += rlimit_findings(r)
    return out


def _what(action: str, verb: str, policy: str, error: str | None) -> str:
    """The part in parentheses after the values: what the tuner did or would do."""
    if action == WOULD_WRITE:
        return f"{policy}; would {verb}"
    if action == WRITTEN:
        return f"{policy}; {PAST.get(verb, verb)}"
    if action == FAILED:
        return f"{policy}; {verb} failed: {error}"
    if policy == REPORT:
        return "report; drift, never written"
    return f"{policy}; report mode, enforce would {verb}"  # REPORTED under another policy: the mode said so


def sysctl_findings(s: SysctlOutcome) -> list[Finding]:
    e = s.entry
    key, desired = e.key, e.value
    if s.action == UNREADABLE:
        if s.error == "ENOENT":
            return [unknown("sysctl.drift", C, key, f"{key}: not present on this kernel", WARNING,
                            threshold=plain(desired))]
        return [unknown("sysctl.drift", C, key, f"{key}: cannot read ({s.error})", WARNING, threshold=plain(desired))]
    live = fmt(s.live or ())
    d = s.decision
    assert d is not None
    if s.action == UNJUDGED:
        if desired is None:
            return [ok("sysctl.drift", C, key, f"{key} {live} (report)", INFO, value=plain(s.live))]
        return [unknown("sysctl.drift", C, key, f"{key} {live}: {d.reason}", WARNING, value=plain(s.live),
                        threshold=plain(desired))]
    if s.action == SATISFIED:
        return [ok("sysctl.drift", C, key, f"{key} {live} ({e.policy} {fmt(desired or ())}; ok)", WARNING,
                   value=plain(s.live), threshold=plain(desired))]
    # Drift: show where the value would go (the target, which for minimum keeps every field that is
    # already higher), or the declared value when the tuner will never write it.
    target = fmt(d.target if d.target is not None else desired or ())
    what = _what(s.action, d.verb, e.policy, s.write_error)
    msg = f"{key} {live} -> {target} ({what})"
    if s.action == WRITTEN:
        msg = f"{key} {live} -> {fmt(s.after or ())} ({what})"
        return [ok("sysctl.drift", C, key, msg, WARNING, value=plain(s.now), threshold=plain(desired)),
                ok("sysctl.changed", C, key, msg, INFO,
                   value={"old": fmt(s.live or ()), "new": fmt(s.after or ())}, kind=EVENT)]
    out = [bad("sysctl.drift", C, key, msg, WARNING, value=plain(s.now), threshold=plain(desired))]
    if s.action == FAILED:
        err = s.write_error or "error"
        detail = f"the kernel kept {fmt(s.after or ())}" if err == READBACK else err
        out.append(bad("sysctl.write", C, key, f"writing {key}={target} failed: {detail}", WARNING,
                       value=err, action=ACTIONS.get(err)))
    return out


def _want(r: RlimitOutcome) -> str:
    e = r.entry
    parts = [f"{k} {fmt_limit(v)}" for k, v in (("soft", e.soft), ("hard", e.hard)) if v is not None]
    return " ".join(parts)


# Which process speaks for a name run several times: the one in the worst state.
_RANK = {UNREADABLE: 0, FAILED: 1, REPORTED: 2, WOULD_WRITE: 2, UNJUDGED: 3, WRITTEN: 4, SATISFIED: 5}


def rlimit_findings(r: RlimitOutcome) -> list[Finding]:
    e = r.entry
    entity, name = e.entity, f"{e.process} {e.resource}"
    if not r.pids:
        return [ok("sysctl.rlimit.drift", C, entity, f"{e.process}: not running (nothing to tune)", INFO)]
    worst = min(r.pids, key=lambda p: _RANK[p.action])
    more = f" [pid {worst.pid}" + (f" and {len(r.pids) - 1} more]" if len(r.pids) > 1 else "]")
    out: list[Finding] = []
    for p in r.pids:
        if p.action == WRITTEN and p.live is not None and p.after is not None:
            old, new = fmt_limits(p.live), fmt_limits(p.after)
            out.append(ok("sysctl.rlimit.changed", C, entity, f"{name} (pid {p.pid}) {old} -> {new}", INFO,
                          value={"pid": p.pid, "old": old, "new": new}, kind=EVENT))
    if worst.action == UNREADABLE:
        return [unknown("sysctl.rlimit.drift", C, entity, f"{name}: cannot read the limits ({worst.error}){more}",
                        WARNING), *out]
    live = fmt_limits(worst.live)  # type: ignore[arg-type]
    d = worst.decision
    assert d is not None
    if worst.action == SATISFIED:
        declared = f"{e.policy} {_want(r)}".strip()
        return [ok("sysctl.rlimit.drift", C, entity, f"{name} {live} ({declared}; ok){more}", WARNING)]
    target = fmt_limits(d.target) if d.target is not None else _want(r)
    what = _what(worst.action, d.verb, e.policy, worst.write_error)
    if worst.action == WRITTEN:
        msg = f"{name} {live} -> {fmt_limits(worst.after)} ({what}){more}"  # type: ignore[arg-type]
        return [ok("sysctl.rlimit.drift", C, entity, msg, WARNING), *out]
    out.insert(0, bad("sysctl.rlimit.drift", C, entity, f"{name} {live} -> {target} ({what}){more}", WARNING))
    failed = [p for p in r.pids if p.action == FAILED]
    if failed:
        err = failed[0].write_error or "error"
        pids = ", ".join(str(p.pid) for p in failed)
        out.append(bad("sysctl.rlimit.write", C, entity, f"setting {name} to {target} failed: {err} (pid {pids})",
                       WARNING, value=err, action=ACTIONS.get(err)))
    return out


def pid_drift(pids: list[PidOutcome]) -> bool | None:
    """Drift of a process name: True when any of its processes drifts, None when none could be judged."""
    judged = [p.drift for p in pids if p.drift is not None]
    return any(judged) if judged else None
