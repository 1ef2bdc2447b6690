"""What the aggregator knows about each node, rebuilt from the stream (DESIGN §6-7).

Pure data and pure updates: every function takes the aggregator's monotonic `now` as an argument, so tests
step a fake clock. No I/O here; the server feeds it, the policy reads it.

Level-triggered: a Hello or a Heartbeat carries the digest (every non-ok (check, entity) of the node), which
replaces what was known; events between heartbeats update single keys. An event that the digest already
covers (seq <= digest_seq) or that comes from an older boot never changes state. Dedup: per (node, spool
epoch) the highest applied seq; seqs at or below it are duplicates (the stream's intake refuses them before they
get here: see intake.py). A node remembers its last EPOCHS spool epochs, and the last REJECTIONS events refused in
each (the Welcome names them again, for an agent that missed the Ack that did).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable

OK, UNHEALTHY, UNKNOWN = "ok", "unhealthy", "unknown"
FATAL = "fatal"

Key = tuple[str, str]  # (check, entity)
EPOCHS = 16  # spool epochs remembered per node: a wiped spool, a second agent in a rolling update
REJECTIONS = 100  # refused events remembered per epoch


@dataclass(frozen=True)
class Problem:
    check: str
    entity: str
    status: str
    severity: str
    message: str = ""
    bus_id: str = ""  # the PCI bus address of the entity's GPU (intake.bus_id), "" when none or unknown
    # "namespace/pod" of the pods the agent's PodResources says hold the entity's GPU (intake.holders): a claim
    # to check against the API before anything is done to them (drain.py). Not part of equality: a pod starting
    # on a sick GPU is no change of the node's health (the engine reconciles on a fatal problem's new holders
    # when a drain is configured: fatal_holders).
    holders: tuple[str, ...] = field(default=(), compare=False)

    @property
    def fatal(self) -> bool:
        return self.status == UNHEALTHY and self.severity == FATAL


@dataclass(frozen=True)
class IncomingEvent:
    seq: int
    kind: str  # state | info
    check: str
    entity: str
    status: str
    severity: str
    message: str = ""
    bus_id: str = ""
    value: str = ""  # the finding's value as JSON ("" when none): a validation summary names its request here
    holders: tuple[str, ...] = ()


@dataclass
class NodeState:
    name: str
    boot_id: str | None = None
    boot_seen_at: float | None = None
    reboots: int = 0
    problems: dict[Key, Problem] = field(default_factory=dict)  # non-ok checks of the current boot
    applied: dict[str, int] = field(default_factory=dict)  # spool epoch -> highest applied seq
    digest_at: tuple[str, int] = ("", 0)  # (epoch, seq) the last digest covered
    first_report_at: float | None = None  # None: no report yet, publish nothing (DESIGN §7)
    last_seen: float | None = None
    clean_since: float | None = None  # when the fatal set last became empty
    unhealthy_since: float | None = None
    trigger: str = ""  # dedup key of what made it unhealthy: names its Kubernetes Events deterministically
    seeded: bool = False  # known from a condition Vigil published before this replica led
    rejections: dict[str, deque] = field(default_factory=dict)  # spool epoch -> recent (seq, reason) refused

    def use_epoch(self, epoch: str) -> None:
        """The epoch is in use: it becomes the most recent, and the least recently used beyond EPOCHS is forgotten
        (so agents that keep changing epochs cannot grow the node's memory)."""
        self.applied[epoch] = self.applied.pop(epoch, 0)
        while len(self.applied) > EPOCHS:
            old = next(iter(self.applied))
            del self.applied[old]
            self.rejections.pop(old, None)

    def reject(self, epoch: str, seq: int, reason: str) -> None:
        ring = self.rejections.get(epoch)
        if ring is None:
            ring = self.rejections[epoch] = deque(maxlen=REJECTIONS)
        ring.append((seq, reason))

    @property
    def reported(self) -> bool:
        return self.first_report_at is not None

    def fatal_problems(self) -> list[Problem]:
        return sorted((p for p in self.problems.values() if p.fatal), key=lambda p: (p.check, p.entity))

    def _settle(self, now: float, trigger: str) -> None:
        if any(p.fatal for p in self.problems.values()):
            self.clean_since = None
            if self.unhealthy_since is None:
                self.unhealthy_since = now
                self.trigger = trigger
        else:
            self.unhealthy_since = None
            if self.clean_since is None:
                self.clean_since = now


@dataclass
class Applied:
    """What one batch did: seqs newly applied, duplicates, and whether the node's state changed."""

    new: list[int] = field(default_factory=list)
    duplicates: int = 0
    stale: int = 0  # applied (acked) but no effect on state: older boot, or covered by the digest
    info: int = 0  # of `new`, the info events
    changed: bool = False
    ack: int = 0


def hello(node: NodeState, boot_id: str, epoch: str, digest: Iterable[Problem], digest_seq: int, now: float) -> bool:
    """An agent (re)connected. Returns whether the node's boot changed (a reboot, or the first boot seen)."""
    rebooted = boot_id != node.boot_id
    if rebooted:
        if node.boot_id is not None:
            node.reboots += 1
        node.boot_id, node.boot_seen_at = boot_id, now
        node.problems.clear()
        node.clean_since = None  # a new boot must stay clean for healthy_delay within itself
        node.unhealthy_since = None
    if node.first_report_at is None:
        node.first_report_at = now
    node.seeded = False
    node.use_epoch(epoch)
    _digest(node, epoch, digest, digest_seq, now, f"digest/{boot_id}/{epoch}/{digest_seq}")
    return rebooted


def heartbeat(node: NodeState, epoch: str, digest: Iterable[Problem], digest_seq: int, now: float) -> bool:
    """Returns whether the set of problems changed."""
    before = dict(node.problems)
    _digest(node, epoch, digest, digest_seq, now, f"digest/{node.boot_id}/{epoch}/{digest_seq}")
    return before != node.problems


def fatal_holders(problems: dict[Key, Problem]) -> dict[Key, tuple[str, ...]]:
    """The holders of the fatal problems: news for a device drain (drain.py), though no change of health."""
    return {k: p.holders for k, p in problems.items() if p.holders and p.fatal}


def _digest(node: NodeState, epoch: str, digest: Iterable[Problem], digest_seq: int, now: float, trigger: str) -> None:
    before = node.problems
    node.problems = {(p.check, p.entity): p for p in digest if p.status != OK}
    for key, p in node.problems.items():  # a digest without the bus id (an agent just restarted) keeps the known one
        old = before.get(key)
        if not p.bus_id and old is not None and old.bus_id:
            node.problems[key] = replace(p, bus_id=old.bus_id)
    node.digest_at = (epoch, digest_seq)
    node.last_seen = now
    node._settle(now, trigger)


def apply_batch(node: NodeState, boot_id: str, epoch: str, events: Iterable[IncomingEvent], now: float) -> Applied:
    out = Applied()
    high = node.applied.get(epoch, 0)
    before = dict(node.problems)
    d_epoch, d_seq = node.digest_at
    for e in events:
        if e.seq <= high:
            out.duplicates += 1
            continue
        high = e.seq
        out.new.append(e.seq)
        if e.kind == "info":
            out.info += 1
        if e.kind != "state" or boot_id != node.boot_id or (epoch == d_epoch and e.seq <= d_seq):
            out.stale += 1
            continue
        key = (e.check, e.entity)
        if e.status == OK:
            node.problems.pop(key, None)
        else:
            old = node.problems.get(key)
            node.problems[key] = Problem(e.check, e.entity, e.status, e.severity, e.message,
                                         e.bus_id or (old.bus_id if old is not None else ""), e.holders)
        node._settle(now, f"{node.name}/{boot_id}/{epoch}/{e.seq}")
    node.applied[epoch] = high
    node.last_seen = now
    out.ack = high
    out.changed = before != node.problems
    return out


def seed(node: NodeState, now: float) -> None:
    """A node with a Vigil condition found when this replica took the Lease: it can be judged silent after the
    startup grace even if its agent never connects."""
    if not node.reported:
        node.seeded = True
        node.last_seen = now
