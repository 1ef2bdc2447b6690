"""The live container table: what containerd runs in the watched namespaces, with pod identity, counters per pod
identity and a bounded list of recent OOM kills and non-zero exits. The watcher thread (runtime.py) feeds it
events and, on every (re)connect, a full listing; the collector takes a copy once per cycle. Pure logic, no I/O.

Exits are deduplicated by (pid, exited_at): after a containerd restart the shim re-delivers an exit that the
re-list has already shown, and TaskDelete repeats TaskExit's status; each exit counts once.
"""
from __future__ import annotations

import copy
import threading
import time
from collections import Counter, deque
from typing import Callable

from .model import Container, PodRef, PodStats, RawEvent, ReportedEvent, RuntimeView, StreamState, TaskState

Listing = dict[str, tuple[list[Container], dict[str, TaskState]]]  # containerd namespace -> containers, tasks


class ContainerTable:
    def __init__(self, recent_capacity: int = 256, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock, self._wall = clock, wall
        self._containers: dict[tuple[str, str], Container] = {}
        self._stats: dict[PodRef, PodStats] = {}
        self._events_total: Counter[str] = Counter()
        self._recent: deque[ReportedEvent] = deque(maxlen=recent_capacity)
        self._seq = 0
        self._exit_seen: dict[tuple[str, str], tuple[int, int | None]] = {}
        self._stream = StreamState()
        self._down_since: float | None = None

    # -- listing ------------------------------------------------------------------------------------------
    def resync(self, listing: Listing, baseline: bool) -> int:
        """Replace the table with a full listing. The first listing is the baseline; after a gap, every
        difference is an event we did not see: count it (a lower bound: OOMs and short-lived containers leave
        no trace) and record the exits it reveals. Returns that count."""
        fresh: dict[tuple[str, str], Container] = {}
        for ns, (containers, tasks) in listing.items():
            for c in containers:
                c = copy.copy(c)
                t = tasks.get(c.id)
                c.status, c.pid = (t.status, t.pid) if t is not None else ("none", 0)  # the listing is the truth
                if t is not None and t.status == "stopped":
                    c.exit_status, c.exited_at_ns = t.exit_status, t.exited_at_ns
                fresh[(ns, c.id)] = c
        missed = 0
        with self._lock:
            old = self._containers
            self._containers = fresh
            for key, c in fresh.items():
                self._ensure_stats(c)
                before = old.get(key)
                if baseline:
                    if c.status == "stopped":  # an exit from before we watched: state, not an event
                        self._exit_seen[key] = (c.pid, c.exited_at_ns)
                        if c.ref is not None:
                            self._stats[c.ref].last_exit_code = c.exit_status
                    continue
                if before is None:
                    missed += 1  # container_create
                    if c.status in ("running", "stopped", "paused"):
                        missed += 1  # task_start
                elif c.pid and c.pid != before.pid:
                    missed += 1  # task_start of a new task
                elif before.status in ("running", "paused", "created") and c.status == "none":
                    missed += 1  # the task exited and was deleted; its exit status is gone
                if c.status == "stopped" and self._init_exit(c, c.pid, c.exit_status or 0, c.exited_at_ns,
                                                              inferred=True):
                    missed += 1  # task_exit
            if not baseline:
                missed += sum(1 for key in old if key not in fresh)  # container_delete
            for key in [k for k in self._exit_seen if k not in fresh]:
                del self._exit_seen[key]
            self._prune_stats()
            self._stream.possibly_missed += missed
        return missed

    # -- events -------------------------------------------------------------------------------------------
    def knows(self, namespace: str, container_id: str) -> bool:
        with self._lock:
            return (namespace, container_id) in self._containers

    def apply(self, ev: RawEvent, fetched: Container | None = None) -> None:
        """Apply one event. `fetched` is the container as Containers/Get returned it, for create/update events
        and for task events about a container the table does not know yet."""
        with self._lock:
            self._events_total[ev.kind] += 1
            key = (ev.namespace, ev.container_id)
            if fetched is not None:
                known = self._containers.get(key)
                if known is not None:  # keep the task state, take the new labels and spec
                    fetched.status, fetched.pid = known.status, known.pid
                    fetched.exit_status, fetched.exited_at_ns = known.exit_status, known.exited_at_ns
                self._containers[key] = fetched
                self._ensure_stats(fetched)
            c = self._containers.get(key)
            if ev.kind == "container_delete":
                if c is not None:
                    del self._containers[key]
                    self._exit_seen.pop(key, None)
                    self._prune_stats()
                return
            if c is None:
                return
            if ev.kind == "task_create":
                c.status, c.pid, c.exit_status, c.exited_at_ns = "created", ev.pid, None, None
            elif ev.kind == "task_start":
                c.status, c.pid = "running", ev.pid
            elif ev.kind == "task_paused":
                c.status = "paused"
            elif ev.kind == "task_resumed":
                c.status = "running"
            elif ev.kind == "task_exit" and ev.is_init:
                self._init_exit(c, ev.pid, ev.exit_status, ev.exited_at_ns, inferred=False)
            elif ev.kind == "task_delete" and ev.is_init:
                # TaskDelete repeats the exit status: it counts only when the exit itself was not seen.
                self._init_exit(c, ev.pid, ev.exit_status, ev.exited_at_ns, inferred=False)
                c.status, c.pid = "none", 0
            elif ev.kind == "task_oom":
                ref = c.ref
                if ref is not None:
                    self._stats[ref].oom_kills += 1
                    self._record("oom_kill", c, None, self._wall(), inferred=False)

    def _init_exit(self, c: Container, pid: int, status: int, exited_at_ns: int | None, inferred: bool) -> bool:
        key = (c.namespace, c.id)
        if self._exit_seen.get(key) == (pid, exited_at_ns):
            return False
        self._exit_seen[key] = (pid, exited_at_ns)
        c.status, c.exit_status, c.exited_at_ns = "stopped", status, exited_at_ns
        ref = c.ref
        if ref is not None:
            st = self._stats[ref]
            st.exits += 1
            st.last_exit_code = status
            if status != 0:
                st.nonzero_exits += 1
                at = exited_at_ns / 1e9 if exited_at_ns else self._wall()
                self._record("exit", c, status, at, inferred)
        return True

    def _record(self, kind: str, c: Container, status: int | None, at: float, inferred: bool) -> None:
        ref = c.ref
        assert ref is not None  # callers record events of pod containers only
        self._seq += 1
        self._recent.append(ReportedEvent(self._seq, kind, ref, c.id, status, at, inferred, c.spec))

    def _ensure_stats(self, c: Container) -> None:
        if c.ref is not None and c.ref not in self._stats:
            self._stats[c.ref] = PodStats()

    def _prune_stats(self) -> None:
        """Series of a pod are dropped once none of its containers (sandbox included) is left."""
        pods = {c.pod for c in self._containers.values()}
        for ref in [r for r in self._stats if (r.namespace, r.pod) not in pods]:
            del self._stats[ref]

    # -- stream state -------------------------------------------------------------------------------------
    def stream_up(self) -> None:
        with self._lock:
            s = self._stream
            if s.synced_once:
                s.reconnects += 1
            if self._down_since is not None:
                s.down_seconds += self._clock() - self._down_since
                self._down_since = None
            s.up, s.synced_once, s.last_error = True, True, None

    def stream_down(self, error: str) -> None:
        with self._lock:
            s = self._stream
            if s.up:
                self._down_since = self._clock()
            s.up, s.last_error = False, error

    # -- the collector's copy -----------------------------------------------------------------------------
    def view(self, streaming: bool = True) -> RuntimeView:
        with self._lock:
            stream = None
            if streaming:
                stream = copy.copy(self._stream)
                stream.down_for = self._clock() - self._down_since if self._down_since is not None else 0.0
            return RuntimeView(
                containers=[copy.copy(c) for c in self._containers.values()],
                events_total=dict(self._events_total),
                stats={r: copy.copy(s) for r, s in self._stats.items()},
                recent=list(self._recent),
                last_seq=self._seq,
                stream=stream,
            )
