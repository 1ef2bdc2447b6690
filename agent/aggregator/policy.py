"""Decisions, pure (DESIGN §7): (node state, what the Node object shows, config, clock) -> what to write.

Nothing here does I/O or reads a clock: `now` is the aggregator's monotonic time, `wall` a Unix time (only
the cordon budget's window needs a clock shared by replicas). The kube layer applies what these functions
return, and the tests step a fake clock through them.

Vocabulary:
  judge()       node state -> Verdict (none | healthy | recovering | unhealthy | silent)
  observe()     a Node object (JSON dict) -> Observed (Vigil's condition, taint, record, maintenance)
  plan()        Verdict x Observed -> Plan (condition to publish, quarantine, release)
  quarantined() / released()   the Node object after a quarantine or a release (None: nothing to change)
  admit()       the cordon budget ledger: may this node be quarantined now?
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable

from agent import wire
from .state import NodeState

CONDITION = "VigilHealthy"
TAINT_KEY = "vigil.dev/unhealthy"
TAINT_EFFECT = "NoSchedule"
RECORD = "vigil.dev/v1.actions"  # what Vigil did to this node (versioned key; `cleanup` removes it)
MAINTENANCE = "vigil.dev/maintenance"  # a person's: observed, never acted on
LEDGER = "vigil.dev/v1.cordon-ledger"  # on the Lease: the cordon budget's ledger
SILENT_REASON = "AgentSilent"
HEALTHY_REASON = "AgentReportsHealthy"
MAX_MESSAGE = 1024  # a condition's message and an Event's (the API server refuses a longer Event message)
MAX_REASON = wire.LIMITS["check"]  # a condition's reason is a check name (bounded on arrival; again here)
MAX_EPISODE = 1024
# How much of Vigil's record goes on the Node (quarantined(record=...)): a record that does not fit (a Node whose
# annotations are near the API server's 256 KiB) must not block the taint and cordon, so the write is retried with
# less: the record without its details, then no record (the cordon is then never undone automatically).
RECORD_FULL, RECORD_MINIMAL, RECORD_NONE = "full", "minimal", "none"

NONE, HEALTHY, RECOVERING, UNHEALTHY, SILENT = "none", "healthy", "recovering", "unhealthy", "silent"


@dataclass(frozen=True)
class PolicyConfig:
    healthy_delay: float = 300.0  # seconds of a clean digest before undoing anything
    heartbeat_timeout: float = 60.0  # no message this long: the agent is silent
    startup_grace: float | None = None  # after gaining the Lease; default (and minimum) heartbeat_timeout

    @property
    def grace(self) -> float:
        return max(self.heartbeat_timeout, self.startup_grace or 0.0)


@dataclass(frozen=True)
class Verdict:
    kind: str
    reason: str = ""
    message: str = ""


def judge(node: NodeState, cfg: PolicyConfig, now: float, leader_since: float,
          ignore: Callable[[Any], bool] | None = None) -> Verdict:
    """`ignore(problem)`: a fatal fault left out of the verdict (a job's signature, or one held for correlation:
    signatures.py)."""
    if not node.reported and not node.seeded:
        return Verdict(NONE)
    silent_for = now - node.last_seen if node.last_seen is not None else float("inf")
    if silent_for > cfg.heartbeat_timeout and now - leader_since >= cfg.grace:
        return Verdict(SILENT, SILENT_REASON,  # a stable message: the condition is not rewritten every tick
                       f"no report from the Vigil agent within {cfg.heartbeat_timeout:.0f}s")
    if not node.reported:
        return Verdict(NONE)
    fatal = node.fatal_problems()
    if ignore is not None:
        fatal = [p for p in fatal if not ignore(p)]
    if fatal:
        msg = "; ".join(f"{p.check} on {p.entity}: {p.message}" for p in fatal)
        return Verdict(UNHEALTHY, fatal[0].check, msg[:MAX_MESSAGE])
    clean_since = node.clean_since if node.clean_since is not None else now
    if now - clean_since >= cfg.healthy_delay:
        return Verdict(HEALTHY, HEALTHY_REASON, "the Vigil agent reports every fatal check ok")
    return Verdict(RECOVERING, HEALTHY_REASON, "the Vigil agent reports every fatal check ok")


@dataclass(frozen=True)
class Observed:
    exists: bool = True
    condition: tuple[str, str, str] | None = None  # (status, reason, message) of VigilHealthy
    tainted: bool = False  # Vigil's taint is on the node
    unschedulable: bool = False
    record: dict[str, Any] | None = None  # RECORD, parsed
    maintenance: bool = False


def observe(node: dict[str, Any] | None) -> Observed:
    if node is None:
        return Observed(exists=False)
    meta = node.get("metadata") or {}
    ann = meta.get("annotations") or {}
    spec = node.get("spec") or {}
    cond = None
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION:
            cond = (c.get("status", ""), c.get("reason", ""), c.get("message", ""))
    record = None
    if RECORD in ann:
        try:
            record = json.loads(ann[RECORD])
        except ValueError:
            record = {"tainted": True, "cordoned": False, "wasSchedulable": False}  # unreadable: undo taint only
    return Observed(True, cond, any(_is_ours(t) for t in spec.get("taints") or []),
                    bool(spec.get("unschedulable")), record, MAINTENANCE in ann)


def _is_ours(taint: dict[str, Any]) -> bool:
    return taint.get("key") == TAINT_KEY and taint.get("effect") == TAINT_EFFECT


@dataclass(frozen=True)
class Plan:
    condition: tuple[str, str, str] | None = None  # (status, reason, message) to publish; None: leave it
    quarantine: bool = False  # taint + cordon + record (through the cordon budget)
    release: bool = False  # undo what the record says Vigil did
    skipped: str = ""  # why nothing is done although something would be (maintenance)

    @property
    def empty(self) -> bool:
        return self.condition is None and not self.quarantine and not self.release


def plan(v: Verdict, obs: Observed) -> Plan:
    if not obs.exists or v.kind == NONE:
        return Plan()
    if obs.maintenance:
        return Plan(skipped="maintenance")
    if v.kind == SILENT:
        return Plan(condition=_changed(obs, ("Unknown", v.reason, v.message)))
    if v.kind == UNHEALTHY:
        rec = obs.record or {}
        needs = (not obs.tainted or not obs.record or (rec.get("cordoned") and not obs.unschedulable)
                 or (rec.get("wasSchedulable") and not obs.unschedulable))
        return Plan(condition=_changed(obs, ("False", v.reason, v.message)), quarantine=bool(needs))
    marked = obs.record is not None or (obs.condition is not None and obs.condition[0] == "False")
    if v.kind == RECOVERING:
        if marked:
            return Plan()  # healthy_delay has not passed yet
        return Plan(condition=_changed(obs, ("True", v.reason, v.message)))
    # HEALTHY
    return Plan(condition=_changed(obs, ("True", v.reason, v.message)),
                release=obs.record is not None or obs.tainted)


def _changed(obs: Observed, want: tuple[str, str, str]) -> tuple[str, str, str] | None:
    return None if obs.condition == want else want


def condition_patch(status: str, reason: str, message: str, now_iso: str,
                    previous: tuple[str, str, str] | None) -> dict[str, Any]:
    """A strategic-merge patch for nodes/status: conditions merge by `type`, other conditions stay."""
    cond = {"type": CONDITION, "status": status, "reason": reason[:MAX_REASON], "message": message[:MAX_MESSAGE],
            "lastHeartbeatTime": now_iso}
    if previous is None or previous[0] != status:
        cond["lastTransitionTime"] = now_iso
    return {"status": {"conditions": [cond]}}


def quarantined(node: dict[str, Any], reason: str, now_iso: str, episode: str,
                record: str = RECORD_FULL) -> dict[str, Any] | None:
    """The Node after Vigil's taint, cordon and record, or None when it already has them.
    Keeps every other taint (spec.taints has no merge key: the caller writes the whole object back with its
    resourceVersion). Records whether the node was schedulable before, so a release never uncordons a node
    that a person cordoned. `record`: RECORD_FULL (with reason, since, episode, each bounded), RECORD_MINIMAL
    (what a release needs), RECORD_NONE (taint and cordon alone)."""
    detail = record
    node = json.loads(json.dumps(node))  # a copy
    meta = node.setdefault("metadata", {})
    ann = meta.get("annotations") or {}
    spec = node.setdefault("spec", {})
    taints = list(spec.get("taints") or [])
    changed = False
    record = None
    if RECORD in ann:
        try:
            record = json.loads(ann[RECORD])
        except ValueError:
            record = None
    if record is None:
        was_schedulable = not spec.get("unschedulable", False)
        record = {"tainted": True, "cordoned": was_schedulable, "wasSchedulable": was_schedulable}
        if detail == RECORD_FULL:
            record.update(reason=reason[:MAX_REASON], since=now_iso, episode=episode[:MAX_EPISODE])
        if detail != RECORD_NONE:
            ann[RECORD] = json.dumps(record, sort_keys=True, separators=(",", ":"))
            meta["annotations"] = ann
            changed = True
    if not any(_is_ours(t) for t in taints):
        taints.append({"key": TAINT_KEY, "value": "true", "effect": TAINT_EFFECT})
        spec["taints"] = taints
        changed = True
    if record.get("cordoned") and not spec.get("unschedulable"):
        spec["unschedulable"] = True
        changed = True
    return node if changed else None


def released(node: dict[str, Any]) -> dict[str, Any] | None:
    """The Node with only Vigil's own actions undone (its taint; its cordon, if it made one), or None."""
    node = json.loads(json.dumps(node))
    meta = node.setdefault("metadata", {})
    ann = dict(meta.get("annotations") or {})
    spec = node.setdefault("spec", {})
    taints = list(spec.get("taints") or [])
    record = None
    if RECORD in ann:
        try:
            record = json.loads(ann.pop(RECORD))
        except ValueError:
            record = {}
    changed = record is not None
    keep = [t for t in taints if not _is_ours(t)]
    if len(keep) != len(taints):
        spec["taints"] = keep
        changed = True
    if record and record.get("cordoned") and spec.get("unschedulable"):
        spec["unschedulable"] = False
        changed = True
    meta["annotations"] = ann
    return node if changed else None


# -- the cordon budget ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetConfig:
    max_nodes: int | None = None  # at most this many quarantines within the window
    max_percent: float | None = None  # or this share of the cluster's nodes (the smaller of the two counts)
    window_seconds: float = 3600.0

    def limit(self, total_nodes: int) -> int | None:
        limits = []
        if self.max_nodes is not None:
            limits.append(self.max_nodes)
        if self.max_percent is not None:
            limits.append(max(1, int(total_nodes * self.max_percent / 100.0)))
        return min(limits) if limits else None


@dataclass(frozen=True)
class Ledger:
    """Kept by the Lease holder on the Lease (annotation LEDGER), written with optimistic concurrency."""

    entries: tuple[tuple[str, float], ...] = ()  # (node, wall time of its quarantine)
    breaker_open: bool = False
    opened_at: float | None = None
    held: tuple[str, ...] = ()  # nodes refused while the breaker was open: a reset does not replay them
    resets: int = 0

    def to_json(self) -> str:
        return json.dumps({"entries": [list(e) for e in self.entries], "breakerOpen": self.breaker_open,
                           "openedAt": self.opened_at, "held": list(self.held), "resets": self.resets},
                          sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str | None) -> "Ledger":
        if not text:
            return Ledger()
        try:
            d = json.loads(text)
            return Ledger(tuple((str(n), float(t)) for n, t in d.get("entries", [])), bool(d.get("breakerOpen")),
                          d.get("openedAt"), tuple(d.get("held", [])), int(d.get("resets", 0)))
        except (ValueError, TypeError, AttributeError):
            return Ledger(breaker_open=True)  # unreadable: fail safe, a person resets it


ADMIT, ALREADY, REFUSED, OPENED = "admit", "already", "refused", "opened"


def admit(ledger: Ledger, node: str, wall: float, cfg: BudgetConfig, total_nodes: int) -> tuple[str, Ledger]:
    """May `node` be quarantined now? ADMIT (and it is recorded), ALREADY (recorded within the window: a retry
    or a takeover, never counted twice), REFUSED (the breaker is open or the node is held), OPENED (this one
    exhausted the budget: the breaker opens, the node is held)."""
    entries = tuple(e for e in ledger.entries if wall - e[1] < cfg.window_seconds)
    ledger = replace(ledger, entries=entries)
    if any(n == node for n, _ in entries):
        return ALREADY, ledger
    if node in ledger.held or ledger.breaker_open:
        held = ledger.held if node in ledger.held else ledger.held + (node,)
        return REFUSED, replace(ledger, held=held)
    limit = cfg.limit(total_nodes)
    if limit is not None and len(entries) >= limit:
        return OPENED, replace(ledger, breaker_open=True, opened_at=wall, held=ledger.held + (node,))
    return ADMIT, replace(ledger, entries=entries + ((node, wall),))


def unhold(ledger: Ledger, node: str) -> Ledger:
    """The node recovered: it is no longer held (a later fault counts afresh)."""
    return replace(ledger, held=tuple(n for n in ledger.held if n != node))


def reset(ledger: Ledger) -> Ledger:
    """A person's deliberate reset: the breaker closes and the window starts empty. Held nodes stay held until
    they recover (a reset does not replay old events)."""
    return Ledger(entries=(), breaker_open=False, opened_at=None, held=ledger.held, resets=ledger.resets + 1)
