"""Keeps the stream's spool usable whatever its disk does (DESIGN §0: a fault in the spool is a finding and a
metric, recovers by itself when the cause goes, and never ends the process or silently drops a state event).

    disk     the spool file: the normal mode
    waiting  another agent holds the file's lock (a rolling update): events wait in a memory spool and the
             stream does not connect (the other agent streams); the lock is tried every LOCK_POLL seconds
    memory   the file failed (reason full, readonly, corrupt or io): what it held moved into a memory spool
             (a new epoch), which the stream sends from while the file is retried with backoff

Moves between the two spools:
  file -> memory   the file's rows after the last acknowledgement (info ones within the memory budget, the
                   newest kept; older ones stay in the file), its states and drop counters; then the agent's
                   current states (the `sync` hook), so the digest stays right.
  memory -> file   the file is opened (a corrupt one is moved aside, kept for a bug report, and a new one
                   started), hysteresis is seeded from it (the `seed` hook), the memory spool takes the file's
                   states it lacks and the current states (`sync`); then the file's rows the memory holds are
                   deleted (chunk by chunk, so a full disk gets room) and the memory spool is absorbed in ONE
                   transaction: either all of it is on disk, or it stays in memory and is tried again.
Writes stop going to the file while less than `reserve_bytes` is free on its filesystem (SQLite needs room to
delete: a disk filled to the last byte could never be acknowledged again); recovery waits for twice that.
Every switch bumps `generation`: the stream ends its session and says Hello again with the new epoch, and an
acknowledgement meant for the old spool is ignored.

The memory spool is bounded like the file (memory bounds); a state event is never dropped there either (see
spool.py), an info event over the bound is dropped oldest first and counted. Lost only if the process dies
while in memory mode: then the next agent rebuilds the states from live readings and the digest.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

from agent.base.backoff import Backoff
from agent.base.errors import error_text
from .spool import Export, Spool, SpoolLocked, SpoolUnusable, StateRow, salvage

log = logging.getLogger(__name__)

DISK, WAITING, MEMORY, CLOSED = "disk", "waiting", "memory", "closed"
REASONS = ("full", "readonly", "corrupt", "io")
FAULTS = (sqlite3.Error, OSError, SpoolUnusable)
LOCK_POLL = 0.5
T = TypeVar("T")


class SpoolSwitched(Exception):
    """The spool a stream session was reading is no longer the current one: say Hello again."""


@dataclass(frozen=True)
class Bounds:
    max_events: int
    max_info: int
    max_info_bytes: int | None


@dataclass(frozen=True)
class _Moved:
    """What the memory spool took from a file (so that recovery deletes exactly that from it)."""

    epoch: str | None
    moved_through: int
    acked_through: int
    left_info: int  # info rows over the memory budget, left in the file (lost if the file is replaced)
    left_info_upto: int
    complete: bool


@dataclass
class Health:
    mode: str
    reason: str | None  # why not on disk (memory mode), None otherwise
    error: str | None  # the last error, as text
    since: float  # clock() when the current mode began
    path: str
    epoch: str
    memory_events: int  # events held only in memory (0 on disk)
    faults: dict[str, int] = field(default_factory=dict)
    recoveries: dict[str, int] = field(default_factory=dict)
    moved_aside: list[str] = field(default_factory=list)  # bad files kept, newest last


def fault_reason(e: BaseException, directory: Path) -> str:
    """full | readonly | corrupt | io, from the error and, when SQLite only says "I/O error", the filesystem."""
    if isinstance(e, SpoolUnusable):
        return "corrupt"
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "readonly"
        return "io"
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code == 13:  # SQLITE_FULL
        return "full"
    if code == 8:  # SQLITE_READONLY
        return "readonly"
    if code in (11, 26):  # SQLITE_CORRUPT, SQLITE_NOTADB
        return "corrupt"
    try:
        st = os.statvfs(directory)
        if st.f_flag & os.ST_RDONLY:
            return "readonly"
        if st.f_bavail == 0:
            return "full"
    except OSError:
        pass
    return "io"


class SpoolKeeper:
    def __init__(self, path: str | os.PathLike, disk: Bounds, memory: Bounds, reseq: Callable[[bytes, int], bytes],
                 *, reserve_bytes: int = 256 * 1024, clock: Callable[[], float] = time.monotonic,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, keep_bad_files: int = 3) -> None:
        self.path = Path(path)
        self.disk, self.memory = disk, memory
        self.reseq = reseq
        self.reserve_bytes = reserve_bytes
        self.clock = clock
        self.keep_bad_files = keep_bad_files
        self.lock = threading.RLock()  # the stream client's lock too: hysteresis and spool change together
        # Hooks the stream client sets: record the current states into a spool; seed hysteresis from a file's
        # states; say that a bad file was replaced (an info event); wake the sender.
        self.sync: Callable[[Spool], None] = lambda spool: None
        self.seed: Callable[[list[StateRow]], None] = lambda states: None
        self.notice: Callable[[str], None] = lambda message: None
        self.on_change: Callable[[], None] | None = None
        self.spool = self._memory_spool()
        self.mode = WAITING
        self.reason: str | None = None
        self.error: str | None = None
        self.since = clock()
        self.generation = 0
        self.faults = {r: 0 for r in REASONS}
        self.recoveries = {r: 0 for r in REASONS}
        self.moved_aside: list[str] = []
        self._moved: _Moved | None = None
        self._acked_through = 0
        self._disk_pending = 0  # last known rows in the file: what is lost if it turns out unreadable
        self._next_try = 0.0
        self._backoff = Backoff(backoff_base, backoff_max, "half")

    # -- modes -----------------------------------------------------------------------------------------------
    def open(self) -> bool:
        """Try the file now (at start, before the first cycle). Never raises; True when on disk."""
        with self.lock:
            if self.mode != DISK:
                self._try_disk()
            return self.mode == DISK

    def tick(self) -> None:
        """Called often (the stream thread): retry the file when its time has come."""
        with self.lock:
            if self.mode in (WAITING, MEMORY) and self.clock() >= self._next_try:
                try:
                    self._try_disk()
                except Exception:  # noqa: BLE001 - a bug here must not end the retries
                    log.exception("spool %s: retrying the file failed", self.path)
                    self._next_try = self.clock() + self._backoff.next()

    def close(self) -> None:
        with self.lock:
            self.spool.close()
            self.spool = self._memory_spool()  # late writes at shutdown land here, no error
            self.mode = CLOSED
            self.generation += 1

    def _memory_spool(self) -> Spool:
        m = self.memory
        spool = Spool(None, max_events=m.max_events, max_info=m.max_info, max_info_bytes=m.max_info_bytes)
        spool.on_change = self._changed
        return spool

    def _changed(self) -> None:
        cb = self.on_change
        if cb is not None:
            cb()

    def _switch(self, spool: Spool, mode: str) -> None:
        self.spool, self.mode, self.since = spool, mode, self.clock()
        self.generation += 1
        self._changed()

    def _try_disk(self) -> None:
        try:
            d = self._open_disk()
        except SpoolLocked:
            if self.mode == WAITING:
                self._next_try = self.clock() + LOCK_POLL
                return
            self._stay_in_memory(self.reason or "io", "the spool file is locked by another agent")
            return
        except FAULTS as e:
            self._enter_memory(e)
            return
        try:
            self._move_into(d)
        except FAULTS as e:
            if self._moved is None or self._moved.epoch != d.epoch:
                try:  # stream what the file holds meanwhile
                    self._take_from(d.export(0, self.memory.max_info_bytes), 0)
                except FAULTS as read_error:
                    log.warning("spool %s: could not read it either (%s)", self.path, error_text(read_error))
            d.close()
            self._enter_memory(e)
            return
        old, was, reason = self.spool, self.mode, self.reason
        self._switch(d, DISK)
        old.close()
        self._moved, self._acked_through, self.reason, self.error = None, 0, None, None
        self._backoff.reset()
        if was == MEMORY and reason is not None:
            self.recoveries[reason] += 1
            log.warning("spool %s works again (was %s): events moved back from memory", self.path, reason)
        log.info("spool %s open (epoch %s)", self.path, d.epoch)

    def _open_disk(self) -> Spool:
        b = self.disk
        try:
            return Spool(self.path, max_events=b.max_events, max_info=b.max_info, max_info_bytes=b.max_info_bytes,
                         lock_timeout=0)
        except SpoolUnusable as e:
            self._replace_unusable(e)
        return Spool(self.path, max_events=b.max_events, max_info=b.max_info, max_info_bytes=b.max_info_bytes,
                     lock_timeout=0)

    def _move_into(self, d: Spool) -> None:
        """memory -> file (see the module's docstring); raises, leaving the memory spool as it was, if the
        file cannot take it all."""
        states = d.states()
        self.seed(states)
        m = self.spool
        m.merge_states(states)
        self.sync(m)
        moved = self._moved if self._moved is not None and self._moved.epoch == d.epoch else None
        if moved is not None and moved.complete:  # safe on its own: those rows are in memory (or acked)
            d.delete_moved(moved.moved_through, moved.acked_through, moved.left_info_upto)
        self._check_room(2 * self.reserve_bytes, d)  # twice the reserve: no flapping at the edge
        d.absorb(m.export(), self.reseq, continues=moved is not None)

    def _take_from(self, exp: Export, acked_through: int) -> None:
        """file -> memory: absorb what was read from a file into the memory spool."""
        self.spool.absorb(exp, self.reseq, continues=self.spool.stats()["last_seq"] == 0)
        self._moved = _Moved(exp.epoch, exp.last_seq, acked_through, exp.left_info, exp.left_info_upto,
                             exp.complete)

    def _failover(self, e: BaseException) -> None:
        """disk -> memory, after `e` from the file."""
        d = self.spool
        self.spool = self._memory_spool()
        try:
            self._take_from(d.export(self._acked_through, self.memory.max_info_bytes), self._acked_through)
        except FAULTS as read_error:  # nothing readable: the states come from the agent (sync), rows are lost
            self._moved = _Moved(d.epoch, 0, self._acked_through, 0, 0, False)
            log.error("spool %s: its pending events could not be read (%s); about %d lost", self.path,
                      error_text(read_error), self._disk_pending)
            self.spool.count_dropped("info", self._disk_pending)
        d.close()
        self._enter_memory(e)

    def _enter_memory(self, e: BaseException) -> None:
        reason = fault_reason(e, self.path.parent)
        if self.mode == MEMORY:
            self._stay_in_memory(reason, error_text(e))
            return
        if self.mode == WAITING and self._moved is None and self.path.exists():
            # A file that cannot be opened for writing (read-only, full) may still be read: stream what it held.
            exp = salvage(self.path, self.memory.max_info_bytes)
            if exp.epoch is not None:
                self._take_from(exp, 0)
        self.faults[reason] += 1
        self.reason, self.error = reason, error_text(e)
        self._switch(self.spool, MEMORY)
        self.sync(self.spool)
        self._next_try = self.clock() + self._backoff.next()
        log.error("spool %s unusable (%s: %s): events are kept in memory (bounded) until it works again",
                  self.path, reason, self.error)

    def _stay_in_memory(self, reason: str, error: str) -> None:
        if error != self.error:
            log.warning("spool %s still unusable (%s: %s)", self.path, reason, error)
        self.reason, self.error = reason, error
        self._next_try = self.clock() + self._backoff.next()

    def _replace_unusable(self, e: SpoolUnusable) -> None:
        """Move a corrupt (or newer-schema) file aside, keeping it for a bug report, after taking from it what
        can still be read; the next open starts a new file (a new epoch)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpoolLocked(f"{self.path} is locked by another agent") from None
            exp = salvage(self.path, self.memory.max_info_bytes)
            moved = self._moved
            if moved is not None and moved.epoch == exp.epoch:
                lost = moved.left_info  # taken before: only the rows left behind are lost with the file
            else:
                lost = max(0, self._disk_pending - len(exp.rows)) if not exp.complete else exp.left_info
                self._take_from(exp, 0)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            target = self.path.with_name(f"{self.path.name}.{e.reason}-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(target) + suffix))
        finally:
            os.close(fd)
        self.spool.count_dropped("info", lost)  # once the file is gone, not on every failed try
        self._moved = None
        self.recoveries["corrupt"] += 1
        self.moved_aside.append(str(target))
        self._prune_bad_files()
        message = (f"spool {self.path} was unusable ({e}); moved aside to {target} for a bug report and a new "
                   f"spool started" + (f"; {lost} events that could not be read are lost" if lost else ""))
        log.error("%s", message)
        self.notice(message)

    def _prune_bad_files(self) -> None:
        bad = sorted((p for p in self.path.parent.glob(f"{self.path.name}.*-*")
                      if not p.name.endswith(("-wal", "-shm"))), key=lambda p: p.stat().st_mtime)
        for p in bad[:-self.keep_bad_files] if self.keep_bad_files else bad:
            for suffix in ("", "-wal", "-shm"):
                Path(str(p) + suffix).unlink(missing_ok=True)

    def _check_room(self, need: int, spool: Spool) -> None:
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize + spool.reusable_bytes()
        if free < need:
            raise OSError(errno.ENOSPC, f"{free} bytes free on the spool's filesystem, under the {need} bytes "
                                        "kept in reserve for acknowledgements")

    # -- operations: on the current spool; a fault of the file moves to memory and the operation runs there ---
    def _guard(self, op: Callable[[Spool], T], write: bool = False) -> T:
        with self.lock:
            if self.mode == DISK:
                try:
                    if write:
                        self._check_room(self.reserve_bytes, self.spool)
                    return op(self.spool)
                except FAULTS as e:
                    self._failover(e)
            return op(self.spool)

    def _within(self, generation: int, op: Callable[[Spool], T]) -> T:
        with self.lock:
            if generation != self.generation:
                raise SpoolSwitched()
            out = self._guard(op)
            if generation != self.generation:
                raise SpoolSwitched()
            return out

    def record_states(self, items, boot_id: str) -> list[int | None]:  # noqa: ANN001 - Spool.record_states'
        return self._guard(lambda s: s.record_states(items, boot_id), write=True)

    def record_info(self, check: str, entity: str, boot_id: str, make_payload: Callable[[int], bytes]) -> int:
        return self._guard(lambda s: s.record_info(check, entity, boot_id, make_payload), write=True)

    def states(self, collector: str | None = None) -> list[StateRow]:
        return self._guard(lambda s: s.states(collector))

    def stats(self) -> dict[str, int]:
        st = self._guard(lambda s: s.stats())
        if self.mode == DISK:
            self._disk_pending = st["pending_info"] + st["pending_state"]
        return st

    def session(self) -> tuple[int, str]:
        """(generation, epoch) for a new stream session."""
        with self.lock:
            return self.generation, self.spool.epoch

    def digest(self, generation: int) -> tuple[list[StateRow], int]:
        return self._within(generation, lambda s: s.digest())

    def pending(self, generation: int, after_seq: int, limit: int):  # noqa: ANN201 - list[SpoolEvent]
        return self._within(generation, lambda s: s.pending(after_seq, limit))

    def ack(self, generation: int, seq: int) -> int:
        """Cumulative ack of the session's spool; an ack for a spool no longer current is ignored."""
        with self.lock:
            if generation != self.generation:
                return 0
            if self.mode == DISK:
                self._acked_through = max(self._acked_through, seq)  # even if the delete fails, it was acked
            try:
                return self._within(generation, lambda s: s.ack(seq))
            except SpoolSwitched:
                return 0

    def health(self) -> Health:
        with self.lock:
            memory = 0
            if self.mode != DISK:
                st = self.spool.stats()
                memory = st["pending_info"] + st["pending_state"]
            return Health(self.mode, self.reason, self.error, self.since, str(self.path), self.spool.epoch, memory,
                          dict(self.faults), dict(self.recoveries), list(self.moved_aside))
