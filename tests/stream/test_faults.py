"""Spool faults with real faults (root): a 1 MiB tmpfs that fills, a read-only bind mount, corrupt and truncated
files; the stream client against a real aggregator replica over gRPC on loopback. What must hold (DESIGN §0):
the agent keeps running, no state event is lost, every dropped info event is counted, a finding and a metric
say what happened, and it recovers by itself when the cause goes."""
import os
import sqlite3

import pytest

from agent.base.findings import bad, ok
from agent.stream.client import StreamClient
from agent.stream.spool import Spool

from .helpers import ReadOnly, client, free_port, gpu, replica, settings, tmpfs, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def finding(c, check):
    [f] = [f for f in c.findings() if f.check == check]
    return f


def test_disk_full_keeps_every_event_and_recovers_by_itself(tmp_path):
    """Issue 12: on a 1 MiB disk the aggregator is away while 4,000 OOM-kill events and a fatal GPU fault come
    in. The file fills (a reserve is kept so that acknowledgements can still delete), events move to memory and
    are sent from there; once acknowledged the agent goes back to the file. Nothing is lost or left pending."""
    port = free_port()
    with tmpfs(tmp_path / "disk", "1m") as disk:
        c = StreamClient(settings(disk / "spool.db", port, spool_retry_max_seconds=0.5), "n1", "boot-1")
        c.start()
        try:
            for i in range(4000):
                c.info("container.oom_kill", "containers", f"pod-{i}", "OOM kill")
            c.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
            m = c.metrics()
            assert m.value("vigil_spool_faults_total", reason="full") == 1
            assert m.value("vigil_spool_healthy") == 0 and m.value("vigil_spool_memory_events") == 4001
            f = finding(c, "agent.spool")
            assert (f.status, f.severity) == ("unhealthy", "warning") and "full" in f.message
            r, applied = replica(port)
            try:
                wait_for(lambda: len(set(applied.entities("container.oom_kill"))) == 4000, 60, "every info event")
                wait_for(lambda: r.run(lambda: [p.entity for p in r.replica.engine.nodes["n1"].fatal_problems()])
                         == ["gpu3"], 10, "the fatal state")
                wait_for(lambda: c.metrics().value("vigil_spool_healthy") == 1, 30, "back on the file")
                m = c.metrics()
                assert m.value("vigil_spool_recoveries_total", reason="full") == 1
                assert m.value("vigil_spool_dropped_events_total", kind="info") == 0
                assert finding(c, "agent.spool").status == "ok"
                # and the file works again: new events are spooled on it and delivered
                c.info("container.oom_kill", "containers", "pod-after", "OOM kill")
                wait_for(lambda: "pod-after" in applied.entities("container.oom_kill"), 10, "an event after")
                wait_for(lambda: c.spool.stats()["pending_info"] == 0, 10, "spool drained")
                assert not c.spool.in_memory
            finally:
                r.stop()
        finally:
            c.stop()


def test_an_ack_that_cannot_delete_does_not_kill_the_stream(tmp_path):
    """Issue 12 as reported: the aggregator is up, the disk fills with something else; the ack's DELETE fails.
    Events keep flowing (from memory), and the agent returns to the file once space is freed."""
    r, applied = replica()
    with tmpfs(tmp_path / "disk", "1m") as disk:
        c = StreamClient(settings(disk / "spool.db", r.port, spool_retry_max_seconds=0.5), "n1", "boot-1")
        c.start()
        try:
            c.info("container.oom_kill", "containers", "pod-0", "OOM kill")
            wait_for(lambda: len(applied) == 1, 10, "first event")
            filler = disk / "filler"
            with open(filler, "wb") as f:  # someone else fills the disk to the last byte
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            for i in range(1, 200):
                c.info("container.oom_kill", "containers", f"pod-{i}", "OOM kill")
            c.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
            wait_for(lambda: len(set(applied.entities("container.oom_kill"))) == 200, 20, "events from memory")
            wait_for(lambda: r.run(lambda: len(r.replica.engine.nodes["n1"].fatal_problems())) == 1, 10, "fatal")
            assert c.metrics().value("vigil_spool_healthy") == 0 and c.metrics().value("vigil_stream_connected") == 1
            filler.unlink()  # the cause goes
            wait_for(lambda: c.metrics().value("vigil_spool_healthy") == 1, 30, "back on the file")
            rows, _ = c.spool.digest()
            assert [(x.check, x.entity) for x in rows] == [("gpu.ecc.uncorrectable", "gpu3")]  # the file knows it
        finally:
            c.stop()
            r.stop()


@pytest.fixture
def ro_dir(tmp_path):
    m = ReadOnly(tmp_path / "spooldir")
    yield m
    m.close()


def test_read_only_spool_directory_at_start(tmp_path, ro_dir):
    """Issue 13: the spool's directory is read-only when the agent starts (it exited 1 with a traceback).
    Now it runs from memory, sends what the old file held and what comes in, and moves to the file once the
    filesystem is writable again."""
    path = ro_dir.path / "spool.db"
    sp = Spool(path)  # the previous run left a fatal state and an info event pending
    c0 = StreamClient(settings(path, 1), "n1", "boot-1")
    sp.close()
    assert c0.open_spool()
    c0.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
    c0.info("container.oom_kill", "containers", "pod-old", "OOM kill")
    c0.stop()
    ro_dir.ro()
    r, applied = replica()
    c = client(ro_dir.path, r.port, spool_retry_max_seconds=0.5)
    try:
        assert not c.open_spool()
        c.start()
        c.info("container.oom_kill", "containers", "pod-new", "OOM kill")
        wait_for(lambda: {"pod-old", "pod-new"} <= set(applied.entities("container.oom_kill")), 10, "both events")
        wait_for(lambda: r.run(lambda: [p.entity for p in r.replica.engine.nodes["n1"].fatal_problems()])
                 == ["gpu3"], 10, "the fatal state, from the read-only file")
        m = c.metrics()
        assert m.value("vigil_spool_faults_total", reason="readonly") == 1 and m.value("vigil_spool_healthy") == 0
        assert "readonly" in finding(c, "agent.spool").message
        ro_dir.rw()
        wait_for(lambda: c.metrics().value("vigil_spool_healthy") == 1, 20, "back on the file")
        assert [(x.check, x.entity) for x in c.spool.digest()[0]] == [("gpu.ecc.uncorrectable", "gpu3")]
        wait_for(lambda: c.spool.stats()["pending_info"] == 0, 10, "old file's events acknowledged, not resent")
    finally:
        c.stop()
        r.stop()


def _spool_with_events(path, n):
    c = StreamClient(settings(path, 1), "n1", "boot-1")
    assert c.open_spool()
    c.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
    for i in range(n):
        c.info("container.oom_kill", "containers", f"pod-{i}", "OOM kill " + "x" * 200)
    epoch = c.spool.epoch
    c.stop()
    return epoch


@pytest.mark.parametrize("damage", ["garbage", "truncated", "damaged page"])
def test_a_corrupt_or_truncated_spool_is_moved_aside_and_a_new_one_started(tmp_path, damage):
    """Issue 13: a spool file that is not a database, cut short (a node that lost power mid-write), or with a
    damaged page (a disk that lost a block) no longer ends the agent: the file is kept for a bug report, a new
    one started (a new epoch), a metric counts it and an info event tells the aggregator. What can still be read
    (here: with a damaged index page, every row) is delivered; a truncated file yields nothing to SQLite."""
    path = tmp_path / "spool.db"
    old_epoch = _spool_with_events(path, 500)
    size = path.stat().st_size
    if damage == "garbage":
        path.write_bytes(b"this is not a database\n" * 100)
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    else:
        with open(path, "r+b") as f:
            f.seek(4096 * 30)
            f.write(b"\xde\xad" * 2048)
    damaged = path.read_bytes()
    r, applied = replica()
    c = client(tmp_path, r.port)
    try:
        assert c.open_spool()  # a new file, in use
        assert c.spool.epoch != old_epoch and not c.spool.in_memory
        [kept] = [p for p in tmp_path.glob("spool.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
        assert kept.read_bytes() == damaged
        m = c.metrics()
        assert m.value("vigil_spool_recoveries_total", reason="corrupt") == 1 and m.value("vigil_spool_healthy") == 1
        c.start()
        wait_for(lambda: "n1" in applied.entities("agent.spool"), 10, "the notice")
        if damage == "damaged page":
            wait_for(lambda: len(set(applied.entities("container.oom_kill"))) == 500, 10, "salvaged events")
            wait_for(lambda: r.run(lambda: len(r.replica.engine.nodes["n1"].fatal_problems())) == 1, 10,
                     "the salvaged fatal state")
        c.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
        wait_for(lambda: r.run(lambda: len(r.replica.engine.nodes["n1"].fatal_problems())) == 1, 10, "fatal")
    finally:
        c.stop()
        r.stop()
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_bad_files_kept_are_bounded(tmp_path):
    for _ in range(5):
        (tmp_path / "spool.db").write_bytes(b"garbage" * 1000)
        c = client(tmp_path, 1)
        assert c.open_spool()
        c.stop()
    assert len([p for p in tmp_path.glob("spool.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]) == 3


def _hold(path, ready, release):
    s = Spool(path)
    ready.set()
    release.wait(20)
    s.close()


def test_while_another_agent_holds_the_spool_events_wait_in_memory_then_move_to_the_file(tmp_path):
    """A rolling update: the old agent still holds the spool's lock. The new one neither streams (the old one
    does) nor loses anything: events wait in memory, counted and reported, and move to the file once it is free."""
    import multiprocessing

    path = tmp_path / "spool.db"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    assert ready.wait(10)
    r, applied = replica()
    c = client(tmp_path, r.port)
    try:
        assert not c.open_spool()
        c.start()
        c.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
        for i in range(10):
            c.info("container.oom_kill", "containers", f"pod-{i}", "OOM kill")
        import time
        time.sleep(1)
        assert len(applied) == 0  # the holder streams this node; we must not
        m = c.metrics()
        assert m.value("vigil_spool_healthy") == 0 and m.value("vigil_spool_memory_events") == 11
        assert "held by another agent" in finding(c, "agent.spool").message
        release.set()
        holder.join(10)
        wait_for(lambda: len(applied) == 11, 10, "everything, from the file")
        assert not c.spool.in_memory and {e for e, _ in applied} == {c.spool.epoch}
    finally:
        release.set()
        c.stop()
        r.stop()
