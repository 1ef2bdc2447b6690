"""The agent's spool (DESIGN §6): every event waits here, on a host path, until the aggregator acknowledges it.

One SQLite file (stdlib sqlite3, WAL, synchronous=FULL) holds three tables:
  meta     the spool epoch (random, chosen when the file is new), the next sequence number, drop counters
  state    the latest reported state per (check, entity): the digest is read from it, and a restarted agent
           compares against it so that an unchanged state is not reported twice
  outbox   events not yet acknowledged, in seq order: state changes and a bounded ring of info events

Bounds: pending info events take at most `max_info_bytes` (payload plus INFO_ROW_OVERHEAD per row: about what
they take in the file) and number at most `max_info`; the outbox holds at most `max_events`. A state event
superseded by a newer one for the same (check, entity) before it was sent is coalesced away (the latest state
wins), unless it is a fatal one. When a bound is passed the oldest info event goes first, then the oldest
non-fatal state event (the digest in every heartbeat still carries the current state); a fatal event is never
dropped, even past the cap. Every drop is counted, persistently.

The same class runs in memory (path None): the stream's fallback while the file cannot be written
(agent/stream/keeper.py moves events between the two with `export` and `absorb`).

Disk use stays small and a full disk leaves room to delete: the WAL is checkpointed every
WAL_AUTOCHECKPOINT_PAGES and cut back to JOURNAL_SIZE_LIMIT (the default 1,000 pages let the WAL alone fill a
1 MiB disk after 58 events), and acknowledgements delete in chunks of ACK_CHUNK rows (one transaction per
chunk, so a long backlog never needs a WAL as large as itself).

The file is locked with flock (separate from SQLite's own fcntl locks): during a rolling update two agents can
run on one node, and only one may own the spool; the other waits. A file that is corrupt, truncated, not a
database, or of a newer schema raises SpoolUnusable (the keeper moves it aside).
Schema changes go through `PRAGMA user_version` migrations (MIGRATIONS below); never edit an old step.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

FATAL_UNHEALTHY = ("unhealthy", "fatal")
WAL_AUTOCHECKPOINT_PAGES = 32  # 128 KiB of 4 KiB pages
JOURNAL_SIZE_LIMIT = 128 * 1024
ACK_CHUNK = 256
INFO_ROW_OVERHEAD = 150  # bytes an info row takes in the file beyond its payload (columns, two index entries):
#                         measured 240 bytes a row for 91-byte OOM-kill payloads
COUNTERS = ("dropped_info", "dropped_state", "coalesced", "over_capacity")
# sqlite3 primary result codes (sqlite_errorcode & 0xff) that say the file is not a usable spool
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


class SpoolLocked(Exception):
    """Another agent holds the spool file."""


class SpoolUnusable(RuntimeError):
    """The file is not a spool this agent can use: `reason` corrupt (corrupt, truncated, not a database) or
    newer_schema (written by a newer agent)."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


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


@dataclass(frozen=True)
class OutRow:
    """One outbox row as it moves between spools (memory <-> file)."""

    seq: int
    kind: str
    check: str
    entity: str
    fatal: int
    boot_id: str
    payload: bytes


@dataclass
class Export:
    """What a spool held: its pending rows after some seq (info ones within a byte budget, newest kept), its
    states and counters. `left_info` info rows did not fit the budget and stayed behind (all at or below
    `left_info_upto`); `complete` is False when part of the file could not be read (corruption)."""

    epoch: str | None = None
    last_seq: int = 0
    rows: list[OutRow] = field(default_factory=list)
    states: list[StateRow] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    left_info: int = 0
    left_info_upto: int = 0
    complete: bool = True


def info_size(payload: bytes) -> int:
    return len(payload) + INFO_ROW_OVERHEAD


def is_unusable_error(e: BaseException) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) in (
        SQLITE_CORRUPT, SQLITE_NOTADB)


_OUT_COLS = 'seq, kind, "check", entity, fatal, boot_id, payload'
_STATE_COLS = '"check", entity, collector, component, status, severity, message'


def export_from(db: sqlite3.Connection, after_seq: int = 0, info_budget: int | None = None) -> Export:
    """Read a spool's content for a move (best effort: on a corrupt file, what could be read)."""
    out = Export()
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        out.epoch = meta.get("epoch")
        out.last_seq = int(meta.get("next_seq", 1)) - 1
        out.counters = {k: int(meta.get(k, 0)) for k in COUNTERS}
    except (sqlite3.Error, ValueError):
        out.complete = False
    try:
        for r in db.execute(f"SELECT {_STATE_COLS} FROM state"):
            out.states.append(StateRow(*r))
    except sqlite3.Error:
        out.complete = False
    try:
        for r in db.execute(f"SELECT {_OUT_COLS} FROM outbox WHERE kind='state' AND seq > ? ORDER BY seq",
                            (after_seq,)):
            out.rows.append(OutRow(*r))
    except sqlite3.Error:
        out.complete = False
    info: list[OutRow] = []
    used = 0
    try:  # newest first: when the budget is short, the oldest info events are the ones left behind
        for r in db.execute(f"SELECT {_OUT_COLS} FROM outbox WHERE kind='info' AND seq > ? ORDER BY seq DESC",
                            (after_seq,)):
            row = OutRow(*r)
            size = info_size(row.payload)
            if out.left_info or (info_budget is not None and used + size > info_budget):
                out.left_info += 1
                out.left_info_upto = max(out.left_info_upto, row.seq)
                continue
            used += size
            info.append(row)
    except sqlite3.Error:
        out.complete = False
    out.rows = sorted(out.rows + info, key=lambda r: r.seq)
    return out


def salvage(path: str | os.PathLike, info_budget: int | None = None) -> Export:
    """What can still be read from a spool file that cannot be opened for writing (corrupt, or on a read-only
    filesystem): opened read-only, then as immutable (no -shm needed). An unreadable file gives an empty,
    incomplete Export."""
    uri = Path(path).resolve().as_uri()
    for mode in ("?mode=ro", "?immutable=1"):
        try:
            db = sqlite3.connect(uri + mode, uri=True)
        except sqlite3.Error:
            continue
        try:
            out = export_from(db, 0, info_budget)
            if out.epoch is not None or out.rows:
                return out
        finally:
            db.close()
    return Export(complete=False)


class Spool:
    def __init__(self, path: str | os.PathLike | None, *, max_events: int = 10000, max_info: int = 1000,
                 max_info_bytes: int | None = None, lock_timeout: float | None = 0.0) -> None:
        """Open (or create) the spool at `path`; None: a spool in memory (no file, no lock). `lock_timeout`:
        seconds to wait for another agent's lock, None to wait for ever; SpoolLocked when it is still held.
        SpoolUnusable when the file is corrupt, truncated, not a database or of a newer schema; OSError or
        sqlite3.Error when it cannot be opened for writing (read-only, full)."""
        if max_info < 1 or max_events < 1 or (max_info_bytes is not None and max_info_bytes < 1):
            raise ValueError("spool bounds must be >= 1")
        self.path = None if path is None else Path(path)
        self.max_events = max_events
        self.max_info = max_info
        self.max_info_bytes = max_info_bytes
        self._lock = threading.Lock()
        self._lockfd: int | None = None
        self.on_change: Callable[[], None] | None = None  # the stream wakes its sender through this
        if self.path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            self._open_file(lock_timeout)
        try:
            self._migrate()
            self.epoch = self._meta("epoch")
            self._recount()
        except BaseException as e:
            self._close_quietly()
            if is_unusable_error(e):
                raise SpoolUnusable(f"{self.path}: {e}") from e
            raise

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def _open_file(self, lock_timeout: float | None) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._flock(fd, lock_timeout)
                # The lock is on an inode: if the file was moved aside meanwhile, lock the new one instead.
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        self._lockfd = fd
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check(3)").fetchall()]
        except BaseException as e:
            self._close_quietly()
            if is_unusable_error(e):
                raise SpoolUnusable(f"{self.path}: {e}") from e
            raise
        if problems != ["ok"]:
            self._close_quietly()
            raise SpoolUnusable(f"{self.path}: integrity check failed: {'; '.join(problems)}")

    def _flock(self, fd: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise SpoolLocked(f"{self.path} is locked by another agent") from None
                time.sleep(0.05)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise SpoolUnusable(f"{self.path}: spool schema {version} is newer than this agent knows",
                                "newer_schema")
        for step in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[step].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                if step == 0:
                    epoch = secrets.token_hex(8)
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("epoch", epoch), ("next_seq", "1")] + [(k, "0") for k in COUNTERS])
                self._db.execute(f"PRAGMA user_version={step + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _meta(self, key: str) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

    def _bump(self, key: str, n: int = 1) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key=?", (n, key))

    def _next_seq(self) -> int:
        seq = int(self._meta("next_seq"))
        self._db.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(seq + 1),))
        return seq

    def _recount(self) -> None:
        """The pending counts and info bytes kept in memory (a COUNT per insert would cost O(n))."""
        n = dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        self._n_info, self._n_state = n.get("info", 0), n.get("state", 0)
        self._info_bytes = self._db.execute(
            "SELECT COALESCE(SUM(length(payload)), 0) + ? * COUNT(*) FROM outbox WHERE kind='info'",
            (INFO_ROW_OVERHEAD,)).fetchone()[0]

    def _rollback(self) -> None:
        # SQLite has already rolled back on some errors (SQLITE_FULL): a second ROLLBACK would raise
        # "no transaction is active" and hide the real error.
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._recount()
        except sqlite3.Error:
            pass

    def _transaction(self, body: Callable[[], object]) -> object:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = body()
            self._db.execute("COMMIT")
            return out
        except BaseException:
            self._rollback()
            raise

    # -- writing ------------------------------------------------------------------------------------------
    def record_states(self, items: list[tuple[StateRow, Callable[[int], bytes]]], boot_id: str) -> list[int | None]:
        """Report the current state of each (check, entity) of one collector cycle, in ONE transaction (one fsync
        per cycle at most, not one per finding). Per item: the new event's seq, or None when the (status,
        severity) is what the spool last reported (only the message is refreshed then); a key never reported
        before whose state is ok makes no event: no news."""
        if not items:
            return []
        with self._lock:
            seqs: list[int | None] = self._transaction(  # type: ignore[assignment]
                lambda: [self._record_state(row, boot_id, make_payload) for row, make_payload in items])
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
            self._n_state -= n
        self._insert(OutRow(seq, "state", row.check, row.entity, fatal, boot_id, make_payload(seq)))
        self._db.execute('INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                         (row.check, row.entity, row.collector, row.component, row.status, row.severity,
                          row.message, seq))
        self._enforce_bounds()
        return seq

    def record_info(self, check: str, entity: str, boot_id: str, make_payload: Callable[[int], bytes]) -> int:
        """Append an informational event (tuner write, OOM kill, container exit) to the ring."""
        def body() -> int:
            seq = self._next_seq()
            self._insert(OutRow(seq, "info", check, entity, 0, boot_id, make_payload(seq)))
            self._enforce_bounds()
            return seq
        with self._lock:
            seq: int = self._transaction(body)  # type: ignore[assignment]
        self._changed()
        return seq

    def _insert(self, r: OutRow) -> None:
        self._db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (r.seq, r.kind, r.check, r.entity, r.fatal, r.boot_id, r.payload))
        if r.kind == "info":
            self._n_info += 1
            self._info_bytes += info_size(r.payload)
        else:
            self._n_state += 1

    def _delete(self, where: str, args: Iterable[object], limit: int) -> tuple[int, int]:
        """Delete the first `limit` rows matching `where`; returns (rows, info rows) deleted."""
        rows = self._db.execute(f"SELECT seq, kind, length(payload) FROM outbox WHERE {where} ORDER BY seq LIMIT ?",
                                (*args, limit)).fetchall()
        if not rows:
            return 0, 0
        self._db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(rows))})", [r[0] for r in rows])
        info = [r for r in rows if r[1] == "info"]
        self._n_info -= len(info)
        self._n_state -= len(rows) - len(info)
        self._info_bytes -= sum(r[2] + INFO_ROW_OVERHEAD for r in info)
        return len(rows), len(info)

    def _drop(self, kind: str, n: int) -> int:
        cond = "kind='info'" if kind == "info" else "kind='state' AND fatal=0"
        dropped, _ = self._delete(cond, (), n)
        if dropped:
            self._bump(f"dropped_{kind}", dropped)
        return dropped

    def _enforce_bounds(self) -> None:
        if self._n_info > self.max_info:
            self._drop("info", self._n_info - self.max_info)
        while self.max_info_bytes is not None and self._info_bytes > self.max_info_bytes and self._n_info:
            excess, n = self._info_bytes - self.max_info_bytes, 0
            for (size,) in self._db.execute("SELECT length(payload) FROM outbox WHERE kind='info' ORDER BY seq "
                                            "LIMIT ?", (ACK_CHUNK,)):
                n += 1
                excess -= size + INFO_ROW_OVERHEAD
                if excess <= 0:
                    break
            self._drop("info", n)
        over = self._n_info + self._n_state - self.max_events
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

    def reusable_bytes(self) -> int:
        """Free pages inside the file: SQLite fills them before it grows the file."""
        if self.path is None:
            return 0
        with self._lock:
            pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            return pages * self._db.execute("PRAGMA page_size").fetchone()[0]

    def count_dropped(self, kind: str, n: int) -> None:
        """Count events lost outside this spool's own bounds (rows of an unreadable file)."""
        if n > 0:
            with self._lock:
                self._transaction(lambda: self._bump(f"dropped_{kind}", n))

    # -- moving events between spools (agent/stream/keeper.py) ----------------------------------------------
    def export(self, after_seq: int = 0, info_budget: int | None = None) -> Export:
        with self._lock:
            return export_from(self._db, after_seq, info_budget)

    def merge_states(self, states: Iterable[StateRow]) -> None:
        """Take the states of keys this spool does not know (its own are newer)."""
        with self._lock:
            self._transaction(lambda: self._db.executemany(
                "INSERT OR IGNORE INTO state VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                [(r.check, r.entity, r.collector, r.component, r.status, r.severity, r.message) for r in states]))

    def absorb(self, src: Export, reseq: Callable[[bytes, int], bytes], *, continues: bool) -> int:
        """In ONE transaction: append `src`'s rows under new seqs of this spool (their payloads re-numbered
        by `reseq`), take its states over this spool's, and add its counters (`continues`: src's counters
        already include this spool's, so they replace them). All or nothing. Returns the rows added."""
        def body() -> int:
            for r in src.rows:
                seq = self._next_seq()
                self._insert(OutRow(seq, r.kind, r.check, r.entity, r.fatal, r.boot_id, reseq(r.payload, seq)))
            as_of = int(self._meta("next_seq")) - 1
            self._db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (r.check, r.entity, r.collector, r.component, r.status, r.severity, r.message, as_of)
                for r in src.states])
            for k in COUNTERS:
                if continues:
                    self._db.execute("UPDATE meta SET value=? WHERE key=?", (str(src.counters.get(k, 0)), k))
                else:
                    self._bump(k, src.counters.get(k, 0))
            self._enforce_bounds()
            return len(src.rows)
        with self._lock:
            n: int = self._transaction(body)  # type: ignore[assignment]
        if n:
            self._changed()
        return n

    def delete_moved(self, moved_through: int, acked_through: int, left_info_upto: int) -> int:
        """Delete, chunk by chunk (each chunk its own transaction, so a full disk still has room), the rows
        another spool now holds: every row up to `acked_through` (acknowledged), and every row up to
        `moved_through` except the info rows up to `left_info_upto` (left behind: they stay here)."""
        where = ("(seq <= ? OR (seq <= ? AND NOT (kind='info' AND seq <= ?)))")
        total = 0
        with self._lock:
            while True:
                n, _ = self._transaction(  # type: ignore[misc]
                    lambda: self._delete(where, (acked_through, moved_through, left_info_upto), ACK_CHUNK))
                total += n
                if n < ACK_CHUNK:
                    return total

    # -- reading and acknowledging ------------------------------------------------------------------------
    def pending(self, after_seq: int = 0, limit: int = 500) -> list[SpoolEvent]:
        with self._lock:
            rows = self._db.execute("SELECT seq, kind, boot_id, payload FROM outbox WHERE seq > ? "
                                    "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [SpoolEvent(*r) for r in rows]

    def ack(self, seq: int) -> int:
        """Cumulative: delete every event with seq <= `seq`, ACK_CHUNK rows per transaction. Returns how many
        were deleted."""
        total = 0
        with self._lock:
            while True:
                n, _ = self._transaction(lambda: self._delete("seq <= ?", (seq,), ACK_CHUNK))  # type: ignore[misc]
                total += n
                if n < ACK_CHUNK:
                    return total

    def digest(self) -> tuple[list[StateRow], int]:
        """Every currently non-ok (check, entity), and the seq it is current as of."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(f"SELECT {_STATE_COLS} FROM state WHERE status != 'ok' "
                                        'ORDER BY "check", entity').fetchall()
                as_of = int(self._meta("next_seq")) - 1
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
        return [StateRow(*r) for r in rows], as_of

    def states(self, collector: str | None = None) -> list[StateRow]:
        q = f"SELECT {_STATE_COLS} FROM state"
        with self._lock:
            rows = (self._db.execute(q + " WHERE collector=?", (collector,)) if collector
                    else self._db.execute(q)).fetchall()
        return [StateRow(*r) for r in rows]

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = {k: int(v) for k, v in self._db.execute("SELECT key, value FROM meta WHERE key != 'epoch'")}
            out["pending_info"] = self._n_info
            out["pending_state"] = self._n_state
            out["info_bytes"] = self._info_bytes
        out["last_seq"] = out.pop("next_seq") - 1
        return out

    def close(self) -> None:
        """Close the database and release the lock. Never raises: a spool on a failing disk still closes."""
        with self._lock:
            self._close_quietly()

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
        fd, self._lockfd = self._lockfd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(fd)
