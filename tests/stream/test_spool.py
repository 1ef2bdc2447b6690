"""The spool (agent/stream/spool.py) on a real SQLite file: order, acks, bounds and drop policy, restarts, the lock."""
import multiprocessing
import sqlite3

import pytest

from agent.stream.spool import Spool, SpoolLocked, StateRow


def row(check="gpu.ecc", entity="gpu0", status="unhealthy", severity="fatal", message="m"):
    return StateRow(check, entity, "gpu", "gpu", status, severity, message)


def payload(seq):
    return f"e{seq}".encode()


def record(s, r, boot_id, make_payload):
    """One state change on its own: record_states with one item."""
    return s.record_states([(r, make_payload)], boot_id)[0]


def test_state_changes_only_and_ok_news_is_no_news(tmp_path):
    s = Spool(tmp_path / "spool.db")
    assert record(s, row(status="ok"), "b1", payload) is None  # never reported, ok: nothing to say
    assert record(s, row(), "b1", payload) == 1
    assert record(s, row(message="other text"), "b1", payload) is None  # same state: no event
    assert record(s, row(status="ok"), "b1", payload) == 2
    assert [e.seq for e in s.pending()] == [1, 2]
    digest, as_of = s.digest()
    assert digest == [] and as_of == 2


def test_ack_is_cumulative_and_deletes_only_acked(tmp_path):
    s = Spool(tmp_path / "spool.db")
    for i in range(5):
        s.record_info("tuner.write", f"k{i}", "b1", payload)
    assert s.ack(3) == 3
    assert [e.seq for e in s.pending()] == [4, 5]
    assert [e.seq for e in s.pending(after_seq=4)] == [5]


def test_restart_keeps_epoch_seq_pending_and_state(tmp_path):
    path = tmp_path / "spool.db"
    s = Spool(path)
    epoch = s.epoch
    record(s, row(), "b1", payload)
    s.record_info("oom", "pod", "b1", payload)
    s.close()
    s = Spool(path)
    assert s.epoch == epoch
    assert [e.seq for e in s.pending()] == [1, 2]
    assert record(s, row(), "b1", payload) is None  # already reported before the restart
    s.ack(2)
    assert s.record_info("oom", "pod", "b1", payload) == 3  # seq never restarts, even with an empty outbox
    s.close()


def test_a_new_file_is_a_new_epoch(tmp_path):
    a = Spool(tmp_path / "a.db")
    b = Spool(tmp_path / "b.db")
    assert a.epoch != b.epoch and len(a.epoch) == 16


def test_info_ring_drops_oldest_and_counts(tmp_path):
    s = Spool(tmp_path / "spool.db", max_info=3)
    for i in range(5):
        s.record_info("oom", f"p{i}", "b1", payload)
    assert [e.seq for e in s.pending()] == [3, 4, 5]
    assert s.stats()["dropped_info"] == 2


def test_full_spool_drops_info_first_then_non_fatal_never_fatal(tmp_path):
    s = Spool(tmp_path / "spool.db", max_events=4, max_info=10)
    record(s, row("a", "gpu0"), "b1", payload)  # 1 fatal
    s.record_info("oom", "p1", "b1", payload)  # 2 info
    record(s, row("b", "gpu0", severity="warning"), "b1", payload)  # 3 warning
    s.record_info("oom", "p2", "b1", payload)  # 4 info
    record(s, row("c", "gpu0"), "b1", payload)  # 5 fatal: full -> oldest info (2) goes
    assert [e.seq for e in s.pending()] == [1, 3, 4, 5]
    record(s, row("d", "gpu0"), "b1", payload)  # 6 fatal -> info 4 goes
    record(s, row("e", "gpu0"), "b1", payload)  # 7 fatal -> no info left: the warning (3) goes
    assert [e.seq for e in s.pending()] == [1, 5, 6, 7]
    record(s, row("f", "gpu0"), "b1", payload)  # 8 fatal: only fatals left, all kept, counted
    assert [e.seq for e in s.pending()] == [1, 5, 6, 7, 8]
    st = s.stats()
    assert (st["dropped_info"], st["dropped_state"], st["over_capacity"]) == (2, 1, 1)
    # the digest still carries every current problem, the dropped warning included
    assert {r.check for r in s.digest()[0]} == {"a", "b", "c", "d", "e", "f"}


def test_coalesces_superseded_non_fatal_keeps_fatal(tmp_path):
    s = Spool(tmp_path / "spool.db")
    record(s, row("w", severity="warning"), "b1", payload)  # 1
    record(s, row("w", severity="warning", status="ok"), "b1", payload)  # 2 supersedes 1
    record(s, row("f"), "b1", payload)  # 3 fatal
    record(s, row("f", status="ok"), "b1", payload)  # 4: the fatal 3 stays
    assert [e.seq for e in s.pending()] == [2, 3, 4]
    assert s.stats()["coalesced"] == 1


def test_digest_lists_non_ok_with_messages(tmp_path):
    s = Spool(tmp_path / "spool.db")
    record(s, row("x", "gpu1", message="2 errors"), "b1", payload)
    record(s, row("x", "gpu1", message="3 errors"), "b1", payload)
    record(s, row("y", "gpu2", status="unknown"), "b1", payload)
    digest, as_of = s.digest()
    assert [(r.check, r.entity, r.status, r.message) for r in digest] == [
        ("x", "gpu1", "unhealthy", "3 errors"), ("y", "gpu2", "unknown", "m")]
    assert as_of == 2


def test_wal_mode_and_schema_version(tmp_path):
    Spool(tmp_path / "spool.db").close()
    db = sqlite3.connect(tmp_path / "spool.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_newer_schema_is_refused(tmp_path):
    Spool(tmp_path / "spool.db").close()
    db = sqlite3.connect(tmp_path / "spool.db")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        Spool(tmp_path / "spool.db")


def _hold(path, ready, release):
    s = Spool(path)
    ready.set()
    release.wait(10)
    s.close()


def test_second_agent_waits_for_the_lock(tmp_path):
    """Two agents on one node (a rolling update): another process holds the flock; we wait, then get it."""
    path = tmp_path / "spool.db"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(path, ready, release))
    p.start()
    assert ready.wait(10)
    with pytest.raises(SpoolLocked):
        Spool(path, lock_timeout=0.2)
    release.set()
    s = Spool(path, lock_timeout=10)
    p.join(5)
    s.close()
