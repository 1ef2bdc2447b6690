"""The agent's side of the aggregator's refusals (DESIGN §0, §6), against a real aggregator replica over gRPC on
loopback: a refused event costs that event only (the ones after it are applied), is counted, reported and gone
from the spool; the agent keeps within the Welcome's message and batch limits; the sessions it ends are
half-closed, not cancelled."""
import time

import pytest

from agent import wire
from agent._proto.vigil.v1 import health_pb2 as pb
from agent.base.findings import bad

from .helpers import client, gpu, replica, wait_for


def _unknown_severity(seq: int) -> bytes:
    """An event as a newer agent would spool it, with a severity (7) this aggregator does not define: what an
    agent rolled back over a newer agent's spool file sends."""
    e = wire.event_message(seq, wire.INFO, "future.check", "future", "n1", "ok", "info", "from a newer agent")
    e.severity = 7
    return e.SerializeToString()


def test_a_refused_event_costs_only_itself_and_is_counted_reported_and_dropped(tmp_path):
    r, applied = replica()
    c = client(tmp_path, r.port)
    try:
        c.open_spool()
        bad_seq = c.keeper.record_info("future.check", "n1", "boot-1", _unknown_severity)
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 uncorrectable")))  # after the refused one
        c.start()
        wait_for(lambda: r.run(lambda: [p.check for p in r.replica.engine.nodes["n1"].fatal_problems()])
                 if "n1" in r.replica.engine.nodes else False, 10, "the fatal event applied")
        assert bad_seq not in [s for _, s in applied]
        wait_for(lambda: c.spool.stats()["pending_info"] + c.spool.stats()["pending_state"] == 0, 10,
                 "the spool emptied")
        assert c.metrics().value("vigil_stream_events_rejected_total") == 1
        f = next(f for f in c.findings() if f.check == "agent.stream")
        assert f.status == "unhealthy" and f"seq {bad_seq}" in f.message and "severity 7" in f.message
        assert c.metrics().value("vigil_stream_failures_total", code="INVALID_ARGUMENT") is None  # never ended
    finally:
        c.stop()
        r.stop()


def test_a_refusal_named_only_in_the_welcome_is_still_counted(tmp_path):
    """The Ack that named a refusal was lost (the agent stopped first): the next Welcome names it, and the agent,
    which still holds the event, counts it before applied_seq deletes it."""
    r, applied = replica()
    c = client(tmp_path, r.port)
    c.open_spool()
    bad_seq = c.keeper.record_info("future.check", "n1", "boot-1", _unknown_severity)
    c.stop()
    # A first agent whose acks are never read: it sends the batch and stops before reading the answer.
    import grpc
    from agent._proto.vigil.v1 import health_pb2_grpc as pbg
    from agent.stream.spool import Spool

    spool = Spool(str(tmp_path / "spool.db"))
    epoch = spool.epoch
    spool.close()
    with grpc.insecure_channel(f"127.0.0.1:{r.port}") as ch:
        def msgs():
            yield pb.AgentMessage(hello=pb.Hello(node="n1", boot_id="boot-1", spool_epoch=epoch, agent_version="t",
                                                 handles_rejections=True))
            time.sleep(0.3)
            yield pb.AgentMessage(batch=pb.Batch(boot_id="boot-1", events=[pb.Event.FromString(
                _unknown_severity(bad_seq))]))
            time.sleep(0.5)
        for _ in pbg.HealthStub(ch).Stream(msgs()):
            pass
    c2 = client(tmp_path, r.port)
    try:
        c2.start()
        wait_for(lambda: c2.metrics().value("vigil_stream_events_rejected_total") == 1, 10, "the count")
        wait_for(lambda: c2.spool.stats()["pending_info"] == 0, 10, "the spool emptied")
    finally:
        c2.stop()
        r.stop()


@pytest.fixture
def small_aggregator(monkeypatch):
    """A replica that reads messages of at most 64 KiB and batches of at most 10 events (and says so in its
    Welcome), as an aggregator configured tighter than this agent's defaults would."""
    monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", 64 * 1024)
    monkeypatch.setattr(wire, "MAX_BATCH_EVENTS", 10)
    r, applied = replica()
    batches: list[int] = []
    engine = r.replica.engine
    inner = engine.batch

    def spy(node, epoch, boot_id, events, *args, **kw):
        events = list(events)
        batches.append(len(events))
        return inner(node, epoch, boot_id, events, *args, **kw)
    engine.batch = spy
    yield r, applied, batches
    r.stop()


def test_batches_and_messages_stay_within_the_welcomes_limits(tmp_path, small_aggregator):
    r, applied, batches = small_aggregator
    c = client(tmp_path, r.port, batch_size=100)
    try:
        c.start()
        for i in range(200):  # 200 x ~4 KiB: 800 KiB, a dozen messages' worth
            c.info("tuner.write", "sysctl", f"k{i}", "x" * 4000)
        wait_for(lambda: len(applied) == 200, 20, "all 200 applied")
        assert max(batches) <= 10
        assert c.metrics().value("vigil_stream_failures_total", code="RESOURCE_EXHAUSTED") is None
    finally:
        c.stop()


def test_strings_are_bounded_before_spooling_as_the_aggregator_would(tmp_path):
    """A 300,000-character check is spooled already shortened, under the same name the aggregator gives it."""
    r, applied = replica()
    c = client(tmp_path, r.port)
    try:
        long = "gpu." + "x" * 300_000
        c.open_spool()
        c.observe(gpu(bad(long, "gpu", "gpu0", "m" * 100_000)))
        (row,) = c.spool.pending(0, 10)
        event = pb.Event.FromString(row.payload)
        assert len(event.check) == wire.LIMITS["check"] and len(event.message) == wire.LIMITS["message"]
        c.start()
        wait_for(lambda: "n1" in r.replica.engine.nodes and r.run(
            lambda: r.replica.engine.nodes["n1"].fatal_problems()), 10, "applied")
        (p,) = r.run(lambda: r.replica.engine.nodes["n1"].fatal_problems())
        assert p.check == event.check == wire.bounded("check", long)[0]
    finally:
        c.stop()
        r.stop()


def test_sessions_end_by_half_close_not_cancel(tmp_path, monkeypatch):
    """Stopping the client ends its session by half-closing it: the aggregator's handler reads the end of the
    stream and returns, and no call is cancelled (grpc.aio leaks native memory for each cancelled call,
    grpc/grpc#43360)."""
    import grpc.aio._call as aio_call

    cancels: list[str] = []
    real_cancel = aio_call.Call.cancel

    def counting_cancel(self):
        if not self.done():
            cancels.append(type(self).__name__)
        return real_cancel(self)
    monkeypatch.setattr(aio_call.Call, "cancel", counting_cancel)
    r, applied = replica()
    svc = r.replica.service
    inner = svc._session
    ends: list[str] = []

    async def spy(*a, **kw):
        try:
            await inner(*a, **kw)
            ends.append("returned")
        except BaseException as e:
            ends.append(type(e).__name__)
            raise
    svc._session = spy
    c = client(tmp_path, r.port)
    try:
        c.start()
        c.info("tuner.write", "sysctl", "k", "wrote")
        wait_for(lambda: len(applied) == 1, 10, "delivered")
    finally:
        c.stop()
    try:
        wait_for(lambda: ends, 5, "the session ended")
        assert ends == ["returned"] and cancels == []
    finally:
        r.stop()


def test_a_session_the_aggregator_aborted_is_reconnected_at_once(tmp_path):
    """A newer stream of the same spool epoch ends this one with ABORTED (the aggregator's reason, not this
    agent's message): the agent reconnects at once, not after its failure backoff (here 10 s doubling)."""
    from tests.aggregator.helpers import RawAgent

    r, applied = replica()
    c = client(tmp_path, r.port, backoff_base=10.0, backoff_max=60.0)
    try:
        c.start()
        wait_for(lambda: c.metrics().value("vigil_stream_connects_total") == 1, 10, "connected")
        raw = RawAgent(r.port, None)
        raw.hello("n1", boot="boot-1", epoch=c.keeper.session()[1], rejections=True)  # takes the epoch's stream
        wait_for(lambda: c.metrics().value("vigil_stream_failures_total", code="ABORTED") == 1, 10, "aborted")
        t0 = time.monotonic()
        wait_for(lambda: c.metrics().value("vigil_stream_connects_total") == 2, 10, "reconnected")
        assert time.monotonic() - t0 < 2.0
    finally:
        c.stop()
        r.stop()


def test_a_digest_too_large_for_one_message_keeps_its_fatal_problems_and_says_how_many_it_left_out(tmp_path):
    """2,000 warnings with 4 KiB messages and 3 fatal problems (8 MiB of digest) against a 64 KiB message limit:
    the fatal ones travel, the metric counts what was left out."""
    from agent.stream.spool import StateRow

    c = client(tmp_path, 1)
    rows = [StateRow(f"gpu.w{i}", "gpu0", "gpu", "gpu", "unhealthy", "warning", "m" * 4000) for i in range(2000)]
    rows += [StateRow("gpu.ecc.uncorrectable", f"gpu{i}", "gpu", "gpu", "unhealthy", "fatal", "2 errors")
             for i in range(3)]
    kept = c._digest(rows, 64 * 1024)
    assert sum(p.ByteSize() for p in kept) < 64 * 1024
    assert [p.entity for p in kept[:3]] == ["gpu0", "gpu1", "gpu2"] and kept[0].check == "gpu.ecc.uncorrectable"
    assert c.metrics().value("vigil_stream_digest_trimmed_problems") == 2003 - len(kept) > 0
    assert c._digest(rows[-3:], 64 * 1024) and c.metrics().value("vigil_stream_digest_trimmed_problems") == 0
