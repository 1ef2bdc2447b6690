"""The agent's spool (DESIGN §6): every event waits here, on a host path, until the aggregator acknowledges it.

One SQLite file (stdlib sqlite3, WAL, synchronous=FULL) holds three tables:
  meta     the spool epoch (random, chosen when the file is new), the next sequence number, drop counters
  state    the latest reported state per (check, entity): the digest is read from it, and a restarted agent
           compares against it so that an unchanged state is not reported twice
  outbox   events not yet acknowledged, in seq order: state changes and a capped ring of info events

Bounds: info events are a ring of `max_info`; the outbox holds at most `max_events`. A state event superseded
by a newer one for the same (check, entity) before it was sent is coalesced away (the latest state wins),
unless it is a fatal one. When the outbox is full the oldest info event goes first, then the oldest non-fatal
state event (the digest in every heartbeat still carries the current state); a fatal event is never dropped,
even past the cap. Every drop is counted, persistently.

The file is locked with flock (separate from SQLite's own fcntl locks): during a rolling update two agents can
run on one node, and only one may own the spool; the other waits.
Schema changes go through `PRAGMA user_version` migrations (MIGRATIONS below); never edit an old step.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FATAL_UNHEALTHY = ("unhealthy", "fatal")


class SpoolLocked(Exception):
    """Another agent holds the spool file."""


MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE state (
        "check" TEXT NOT NULL, entity TEXT NOT NULL, collector TEXT NOT NULL, component TEXT NOT NULL,
        status TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY ("check", entity));
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "check" TEXT NOT NULL, entity TEXT NOT NULL,
        fatal INTEGER NOT NULL, boot_id TEXT NOT NULL, payload BLOB NOT NULL);
    CREATE INDEX outbox_kind ON outbox (kind, seq);
    CREATE INDEX outbox_key ON outbox ("check", entity, seq);
    """,
]


@dataclass(frozen=True)
class SpoolEvent:
    """What the stream sends: one outbox row. `payload` is a serialized vigil.v1.Event."""

    seq: int
    kind: str  # state | info
    boot_id: str
    payload: bytes


@dataclass(frozen=True)
class StateRow:
    check: str
    entity: str
    collector: str
    component: str
    status: str
    severity: str
    message: str


class Spool:
    def __init__(self, path: str | os.PathLike, *, max_events: int = 10000, max_info: int = 1000,
                 lock_timeout: float | None = 0.0) -> None:
        """Open (or create) the spool at `path`. `lock_timeout`: seconds to wait for another agent's lock,
        None to wait for ever; SpoolLocked when it is still held."""
        if max_info < 1 or max_events < 1:
            raise ValueError("spool bounds must be >= 1")
        self.path = Path(path)
        self.max_events = max_events
        self.max_info = max_info
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._flock(lock_timeout)
        except BaseException:
            os.close(self._lockfd)
            raise
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self.epoch = self._meta("epoch")
        self.on_change: Callable[[], None] | None = None  # the stream wakes its sender through this

    def _flock(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise SpoolLocked(f"{self.path} is locked by another agent") from None
                time.sleep(0.05)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path}: spool schema {version} is newer than this agent knows")
        for step in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[step].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                if step == 0:
                    epoch = secrets.token_hex(8)
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("epoch", epoch), ("next_seq", "1"), ("dropped_info", "0"), ("dropped_state", "0"),
                        ("coalesced", "0"), ("over_capacity", "0")])
                self._db.execute(f"PRAGMA user_version={step + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _meta(self, key: str) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

    def _bump(self, key: str, n: int = 1) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key=?", (n, key))

    def _next_seq(self) -> int:
        seq = int(self._meta("next_seq"))
        self._db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(seq + 1),))
        return seq

    # -- writing ------------------------------------------------------------------------------------------
    def record_states(self, items: list[tuple[StateRow, Callable[[int], bytes]]], boot_id: str) -> list[int | None]:
        """Report the current state of each (check, entity) of one collector cycle, in ONE transaction (one fsync
        per cycle at most, not one per finding). Per item: the new event's seq, or None when the (status,
        severity) is what the spool last reported (only the message is refreshed then); a key never reported
        before whose state is ok makes no event: no news."""
        if not items:
            return []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seqs = [self._record_state(row, boot_id, make_payload) for row, make_payload in items]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if any(seq is not None for seq in seqs):
            self._changed()
        return seqs

    def _record_state(self, row: StateRow, boot_id: str, make_payload: Callable[[int], bytes]) -> int | None:
        cur = self._db.execute('SELECT status, severity, message FROM state WHERE "check"=? AND entity=?',
                               (row.check, row.entity)).fetchone()
        if cur is None and row.status == "ok":
            return None
        if cur is not None and (cur[0], cur[1]) == (row.status, row.severity):
            if cur[2] != row.message:
                self._db.execute('UPDATE state SET message=? WHERE "check"=? AND entity=?',
                                 (row.message, row.check, row.entity))
            return None
        seq = self._next_seq()
        fatal = int((row.status, row.severity) == FATAL_UNHEALTHY)
        # Coalesce: this event supersedes the pending non-fatal state events of its key, and a fatal one also
        # an older pending fatal of its key. A pending fatal survives a later ok (the aggregator must learn
        # it happened), so a key holds at most two pending events and a flapping check cannot grow the spool.
        n = self._db.execute('DELETE FROM outbox WHERE kind=\'state\' AND "check"=? AND entity=? AND fatal<=?',
                             (row.check, row.entity, fatal)).rowcount
        if n:
            self._bump("coalesced", n)
        self._db.execute("INSERT INTO outbox VALUES (?, 'state', ?, ?, ?, ?, ?)",
                         (seq, row.check, row.entity, fatal, boot_id, make_payload(seq)))
        self._db.execute('INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                         (row.check, row.entity, row.collector, row.component, row.status, row.severity,
                          row.message, seq))
        self._enforce_bounds()
        return seq

    def record_info(self, check: str, entity: str, boot_id: str, make_payload: Callable[[int], bytes]) -> int:
        """Append an informational event (tuner write, OOM kill, container exit) to the ring."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._next_seq()
                self._db.execute("INSERT INTO outbox VALUES (?, 'info', ?, ?, 0, ?, ?)",
                                 (seq, check, entity, boot_id, make_payload(seq)))
                over = self._count("info") - self.max_info
                if over > 0:
                    self._drop("info", over)
                self._enforce_bounds()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._changed()
        return seq

    def _count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0]

    def _drop(self, kind: str, n: int) -> int:
        cond = "kind='info'" if kind == "info" else "kind='state' AND fatal=0"
        dropped = self._db.execute(
            f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {cond} ORDER BY seq LIMIT ?)",
            (n,)).rowcount
        if dropped:
            self._bump(f"dropped_{kind}", dropped)
        return dropped

    def _enforce_bounds(self) -> None:
        over = self._count() - self.max_events
        if over <= 0:
            return
        over -= self._drop("info", over)
        if over > 0:
            over -= self._drop("state", over)
        if over > 0:  # only fatal events left: they stay, and the excess is counted
            self._bump("over_capacity", 1)

    def _changed(self) -> None:
        cb = self.on_change
        if cb is not None:
            cb()

    # -- reading and acknowledging ------------------------------------------------------------------------
    def pending(self, after_seq: int = 0, limit: int = 500) -> list[SpoolEvent]:
        with self._lock:
            rows = self._db.execute("SELECT seq, kind, boot_id, payload FROM outbox WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [SpoolEvent(*r) for r in rows]

    def ack(self, seq: int) -> int:
        """Cumulative: delete every event with seq <= `seq`. Returns how many were deleted."""
        with self._lock:
            n = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount
        return n

    def digest(self) -> tuple[list[StateRow], int]:
        """Every currently non-ok (check, entity), and the seq it is current as of."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute('SELECT "check", entity, collector, component, status, severity, message '
                                        "FROM state WHERE status != 'ok' ORDER BY \"check\", entity").fetchall()
                as_of = int(self._meta("next_seq")) - 1
            finally:
                self._db.execute("COMMIT")
        return [StateRow(*r) for r in rows], as_of

    def states(self, collector: str | None = None) -> list[StateRow]:
        q = 'SELECT "check", entity, collector, component, status, severity, message FROM state'
        with self._lock:
            rows = (self._db.execute(q + " WHERE collector=?", (collector,)) if collector
                    else self._db.execute(q)).fetchall()
        return [StateRow(*r) for r in rows]

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = {k: int(v) for k, v in self._db.execute("SELECT key, value FROM meta WHERE key != 'epoch'")}
            out["pending_info"] = self._count("info")
            out["pending_state"] = self._count("state")
        out["last_seq"] = out.pop("next_seq") - 1
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_UN)
        finally:
            os.close(self._lockfd)
