"""The agent's stream client (agent/stream/client.py) against a real aggregator replica over gRPC on loopback (no
Kubernetes API: the replica decides without acting). Delivery, resume, reconnect, the digest, metrics."""
import subprocess
import time

import pytest

from agent.aggregator.app import Replica, ReplicaOptions, ReplicaThread
from agent.aggregator.engine import AggregatorConfig
from agent.base.collector import Output
from agent.base.findings import bad, ok
from agent.base.roots import Roots
from agent.run.runner import Result
from agent.stream.client import StreamClient, StreamSettings, parse_targets, read_boot_id

from .helpers import client, free_port, gpu, replica, wait_for


def test_events_delivered_in_order_and_acked(tmp_path):
    r, applied = replica()
    c = client(tmp_path, r.port)
    try:
        c.start()
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 errors"), ok("gpu.count", "gpu", "n1", "8")))
        for i in range(300):
            c.info("tuner.write", "sysctl", f"k{i}", "wrote")
        wait_for(lambda: len(applied) == 301)
        assert [s for _, s in applied] == list(range(1, 302))
        wait_for(lambda: c.spool.stats()["pending_info"] == 0)
        problems = r.run(lambda: r.replica.engine.nodes["n1"].fatal_problems())
        assert [(p.check, p.entity) for p in problems] == [("gpu.ecc", "gpu3")]
        text = c.exposition().decode()
        assert "vigil_stream_connected 1.0" in text and "vigil_stream_events_acked_total 301.0" in text
    finally:
        c.stop()
        r.stop()


def test_spools_while_the_aggregator_is_down_then_delivers_everything_once(tmp_path):
    port = free_port()
    c = client(tmp_path, port)
    c.start()
    try:
        for i in range(50):
            c.info("oom", "containers", f"p{i}", "OOM")
        time.sleep(0.5)
        assert c.metrics().value("vigil_stream_connected") == 0
        assert c.metrics().value("vigil_spool_pending_events", kind="info") == 50
        r, applied = replica(port)
        try:
            wait_for(lambda: len(applied) == 50)
            wait_for(lambda: c.metrics().value("vigil_spool_pending_events", kind="info") == 0)
            assert c.metrics().value("vigil_stream_failures_total", code="UNAVAILABLE") >= 1
            # the aggregator restarts (state lost); the agent reconnects and resends only what is unacked
            r.stop(kill=True)
            for i in range(50, 80):
                c.info("oom", "containers", f"p{i}", "OOM")
            r2, applied2 = replica(port)
            try:
                wait_for(lambda: len(applied2) == 30)
                assert [s for _, s in applied2] == list(range(51, 81))
            finally:
                r2.stop()
        finally:
            r.stop()
    finally:
        c.stop()


def test_a_restarted_agent_resumes_its_spool_without_duplicates(tmp_path):
    r, applied = replica()
    try:
        c = client(tmp_path, r.port)
        c.start()
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 errors")))
        wait_for(lambda: len(applied) == 1)
        epoch = c.spool.epoch
        c.stop()
        c = client(tmp_path, r.port)  # same spool file: same epoch, and the state is already reported
        c.start()
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "3 errors")))
        c.observe(gpu(ok("gpu.ecc", "gpu", "gpu3", "fine")))
        c.observe(gpu(ok("gpu.ecc", "gpu", "gpu3", "fine")))  # clear_after=2
        wait_for(lambda: len(applied) == 2)
        assert applied == [(epoch, 1), (epoch, 2)]
        wait_for(lambda: r.run(lambda: r.replica.engine.nodes["n1"].fatal_problems()) == [])
        c.stop()
    finally:
        r.stop()


def test_the_digest_alone_rebuilds_state_on_a_new_aggregator(tmp_path):
    """Level-triggered: the events were acked by an aggregator that is gone; the next one learns the node's
    problems from the Hello's digest alone."""
    port = free_port()
    r, applied = replica(port)
    c = client(tmp_path, port)
    try:
        c.start()
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 errors")))
        wait_for(lambda: len(applied) == 1 and c.spool.stats()["pending_state"] == 0)
        r.stop(kill=True)
        r2, applied2 = replica(port)
        try:
            wait_for(lambda: "n1" in r2.run(lambda: dict(r2.replica.engine.nodes)))
            problems = r2.run(lambda: r2.replica.engine.nodes["n1"].fatal_problems())
            assert [(p.check, p.entity, p.message) for p in problems] == [("gpu.ecc", "gpu3", "2 errors")]
            assert applied2 == []
        finally:
            r2.stop()
    finally:
        c.stop()
        r.stop()


def test_a_gpus_bus_address_travels_in_its_event_and_in_the_digest(tmp_path):
    """Issue 14: Event.bus_id and Problem.bus_id (the aggregator maps an AMD gpuN to its DRA device by it): the
    event carries it, and so does the Hello's digest a new aggregator learns the node from."""
    port = free_port()
    r, applied = replica(port)
    c = client(tmp_path, port)
    try:
        c.start()
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 errors", bus_id="0000:5c:00.0")))
        wait_for(lambda: len(applied) == 1 and c.spool.stats()["pending_state"] == 0)
        assert [p.bus_id for p in r.run(lambda: r.replica.engine.nodes["n1"].fatal_problems())] == ["0000:5c:00.0"]
        r.stop(kill=True)
        r2, _ = replica(port)
        try:
            wait_for(lambda: "n1" in r2.run(lambda: dict(r2.replica.engine.nodes)))
            problems = r2.run(lambda: r2.replica.engine.nodes["n1"].fatal_problems())
            assert [(p.entity, p.bus_id) for p in problems] == [("gpu3", "0000:5c:00.0")]
        finally:
            r2.stop()
    finally:
        c.stop()
        r.stop()


def test_a_failed_collector_does_not_clear_its_findings(tmp_path):
    r, applied = replica()
    c = client(tmp_path, r.port, clear_after=1)
    try:
        c.start()
        c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 errors")))
        c.observe(Result("gpu", Output(findings=[]), False, 0.01))  # SMI broken: gpu3 is not healed
        c.observe(gpu(ok("gpu.count", "gpu", "n1", "8")))  # a successful read that no longer lists gpu3
        wait_for(lambda: len(applied) == 2)
        assert [r.status for r in c.spool.states() if r.check == "gpu.ecc"] == ["ok"]
    finally:
        c.stop()
        r.stop()


def test_targets_and_boot_id(tmp_path):
    assert parse_targets("a:1, b:2") == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        parse_targets("nohost")

    roots = Roots(sysfs=tmp_path / "nosys", procfs=tmp_path)
    assert read_boot_id(roots) == "unknown-boot"
    (tmp_path / "sys" / "kernel" / "random").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "random" / "boot_id").write_text("abc\n")
    assert read_boot_id(roots) == "abc"


def test_stream_metrics_pass_promtool(tmp_path, promtool):
    c = client(tmp_path, free_port())
    c.start()
    try:
        c.info("oom", "containers", "p", "OOM")
        out = subprocess.run([promtool, "check", "metrics"], input=c.exposition(), capture_output=True)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        c.stop()


def test_tls(tmp_path):
    """TLS on the stream: the aggregator serves a certificate, the agent trusts its CA (--tls-ca)."""
    from pathlib import Path

    from agent.fakekube.server import make_self_signed_cert

    cert, key = make_self_signed_cert(str(tmp_path))
    r = ReplicaThread(Replica(AggregatorConfig(identity="t", heartbeat_seconds=1),
                              ReplicaOptions(listen="127.0.0.1:0", use_lease=False, auth=False,
                                             tls=(Path(key).read_bytes(), Path(cert).read_bytes())), None))
    applied = []
    r.replica.engine.applied_hooks.append(lambda node, boot, epoch, seqs: applied.extend(seqs))
    c = client(tmp_path, r.port, tls_ca=cert)
    plain = client(tmp_path / "plain", r.port)
    try:
        c.start()
        c.info("oom", "containers", "p", "OOM")
        wait_for(lambda: applied == [1])
        plain.start()  # no TLS against a TLS server: never connects
        time.sleep(0.5)
        assert plain.metrics().value("vigil_stream_connected") == 0
    finally:
        plain.stop()
        c.stop()
        r.stop()


def test_two_oom_kills_in_a_row_are_two_events_not_one_state(tmp_path):
    """One-shot findings (an OOM kill, a sysctl change) become info events, one per occurrence; hysteresis
    would otherwise merge the second OOM of the same container into the first and later report it ok. (The second
    is the same event again: it travels as its episode's update, sent here at once: episode_update_seconds 0.)"""
    from agent.base.findings import EVENT, WARNING

    r, applied = replica()
    c = client(tmp_path, r.port, episode_update_seconds=0.0)
    try:
        c.start()
        oom = bad("container.oom_kill", "container", "ml/train-a/worker", "OOM-killed on gpu3", severity=WARNING,
                  kind=EVENT)
        c.observe(Result("containers", Output(findings=[oom]), True, 0.01))
        c.observe(Result("containers", Output(findings=[oom]), True, 0.01))
        c.observe(Result("containers", Output(findings=[]), True, 0.01))
        changed = ok("sysctl.changed", "sysctl", "vm.max_map_count", "65530 -> 262144", severity="info",
                     value={"old": 65530, "new": 262144}, kind=EVENT)
        c.observe(Result("sysctl", Output(findings=[changed]), True, 0.01))
        wait_for(lambda: len(applied) == 3)
        wait_for(lambda: c.spool.stats()["pending_info"] == 0)
        assert c.spool.states("containers") == []  # nothing kept as state, so nothing to "recover"
    finally:
        c.stop()
        r.stop()


def test_a_standby_refusal_is_retried_soon_not_backed_off(tmp_path):
    """Behind one Service address, half the connections may reach the standby: the agent must come back within
    backoff_base, not back off exponentially as from a failure, and still slow down during a long failover."""
    import asyncio

    import grpc
    from grpc.aio import AioRpcError, Metadata

    c = StreamClient(StreamSettings(["127.0.0.1:1"], str(tmp_path / "spool.db"), backoff_base=0.5,
                                    backoff_max=30.0), "n1", "boot-1")
    delays, calls = [], []

    async def session(target):
        calls.append(target)
        if len(calls) > 12:
            c._stop.set()
        raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                          details="standby replica: not the Lease holder")

    async def sleep(d):
        delays.append(d)

    async def run():
        assert c.open_spool()
        c._stop = asyncio.Event()
        c._session, c._sleep = session, sleep
        await c._connect_loop()

    asyncio.run(run())
    assert all(d <= 0.5 for d in delays[:3])  # the first refusals: retried within backoff_base
    assert max(delays) <= 0.5 * 2 ** 3  # 12 refusals in a row: slowed, but far below backoff_max


# Found in review: restarts and flapping checks against the spool.
from agent.stream.spool import Spool, StateRow  # noqa: E402
from agent.stream.client import event_payload  # noqa: E402
from agent.wire import STATE  # noqa: E402


def _settings(tmp_path, **kw):
    return StreamSettings(["127.0.0.1:1"], str(tmp_path / "spool.db"), **kw)


def _fatal(sp, check, entity):
    sp.record_states([(StateRow(check, entity, "gpu", "gpu", "unhealthy", "fatal", "2 errors"),
                       lambda seq: event_payload(seq, STATE, check, "gpu", entity, "unhealthy", "fatal", "2 errors"))],
                     "b0")


def test_a_stale_fatal_key_from_the_previous_run_is_cleared_when_the_spool_opens_first(tmp_path):
    """A key fatal in the spool from the previous run that no successful read reports any more (a GPU gone, a
    check renamed across an upgrade) must leave the digest, not keep the node fatal for ever."""
    sp = Spool(tmp_path / "spool.db")
    _fatal(sp, "gpu.ecc", "gpu9")
    sp.close()
    c = StreamClient(_settings(tmp_path), "n1", "b1")
    assert c.open_spool()  # what start() does when the lock is free
    c.observe(gpu(ok("gpu.count", "gpu", "n1", "8 of 8")))  # successful reads: gpu9 is gone
    c.observe(gpu(ok("gpu.count", "gpu", "n1", "8 of 8")))
    rows, _ = c.spool.digest()
    assert [(r.check, r.entity) for r in rows] == []


def test_a_flapping_fatal_check_cannot_grow_the_outbox_without_bound(tmp_path):
    """DESIGN §6: 'nothing else can grow without bound': a check flapping fatal/ok while the aggregator is away
    keeps at most its latest fatal and latest ok pending."""
    sp = Spool(tmp_path / "spool.db", max_events=10, max_info=5)
    for _ in range(100):
        for status in ("unhealthy", "ok"):
            sp.record_states([(StateRow("gpu.xid", "gpu0", "gpu", "gpu", status, "fatal", "m"), lambda seq: b"x")], "b")
    assert sp.stats()["pending_state"] <= 10


def test_a_restart_with_raise_after_2_does_not_report_a_persisting_fatal_as_ok(tmp_path):
    """Hysteresis continues from the spool's state: with raise_after=2 a check still fatal after a restart is
    not reported ok and then fatal again."""
    sp = Spool(tmp_path / "spool.db")
    _fatal(sp, "gpu.ecc", "gpu3")
    last = sp.stats()["last_seq"]
    sp.close()
    c = StreamClient(_settings(tmp_path, raise_after=2), "n1", "b1")
    assert c.open_spool()
    c.observe(gpu(bad("gpu.ecc", "gpu", "gpu3", "2 errors")))  # still fatal after the restart
    assert c.spool.stats()["last_seq"] == last


def test_last_ack_age_is_measured_on_the_clients_clock(tmp_path):
    """vigil_stream_last_ack_age_seconds is the age of the last acknowledgement on the injected clock."""
    from tests.support.clock import FakeClock

    clock = FakeClock()
    r, applied = replica()
    c = StreamClient(StreamSettings([f"127.0.0.1:{r.port}"], str(tmp_path / "spool.db"), heartbeat_seconds=1,
                                    backoff_base=0.05, backoff_max=0.2), "n1", "boot-1", clock=clock)
    try:
        c.start()
        assert c.metrics().value("vigil_stream_last_ack_age_seconds") is None  # nothing acknowledged yet
        c.info("oom", "containers", "p", "OOM")
        wait_for(lambda: c.metrics().value("vigil_stream_events_acked_total") == 1)
        assert c.metrics().value("vigil_stream_last_ack_age_seconds") == 0
        clock.step(42)
        assert c.metrics().value("vigil_stream_last_ack_age_seconds") == 42
    finally:
        c.stop()
        r.stop()


# Issue 12 item 14: info events during an outage.
def test_info_events_of_a_five_minute_outage_are_all_delivered(tmp_path):
    """5 minutes of an aggregator outage at 10 OOM kills a second: 3,000 info events. The old 1,000-slot ring
    dropped two thirds of them; the spool's bound is now in bytes (32 MiB by default, about 140,000 events)."""
    port = free_port()
    c = client(tmp_path, port)
    try:
        c.start()
        for i in range(3000):
            c.info("container.oom_kill", "containers", f"ml/pod-{i}/worker", "OOM-killed on gpu3")
        r, applied = replica(port)
        try:
            wait_for(lambda: len(set(applied.entities("container.oom_kill"))) == 3000, 30, "every event")
            assert c.metrics().value("vigil_spool_dropped_events_total", kind="info") == 0
        finally:
            r.stop()
    finally:
        c.stop()


def test_info_events_over_the_byte_bound_are_dropped_oldest_first_counted_and_reported(tmp_path):
    """The exact guarantee when the bound is reached: the oldest info events go, each is counted
    (vigil_spool_dropped_events_total{kind="info"}, alert VigilSpoolInfoEventsDropped), agent.spool says so;
    a state event is never dropped."""
    port = free_port()
    c = client(tmp_path, port, max_info_bytes=50 * 240)
    try:
        c.start()
        c.observe(gpu(bad("gpu.ecc.uncorrectable", "gpu", "gpu3", "2 errors")))
        for i in range(200):
            c.info("container.oom_kill", "containers", f"pod-{i}", "OOM kill")
        st = c.spool.stats()
        kept = st["pending_info"]
        assert 0 < kept < 200 and st["dropped_info"] == 200 - kept and st["info_bytes"] <= 50 * 240
        assert c.metrics().value("vigil_spool_dropped_events_total", kind="info") == 200 - kept
        f = next(f for f in c.findings() if f.check == "agent.spool")
        assert (f.status, f.severity) == ("unhealthy", "warning") and f"{200 - kept} dropped" in f.message
        r, applied = replica(port)
        try:
            wait_for(lambda: len(applied) == kept + 1, 10, "what was kept")
            assert applied.entities("container.oom_kill") == [f"pod-{i}" for i in range(200 - kept, 200)]
            assert r.run(lambda: [p.entity for p in r.replica.engine.nodes["n1"].fatal_problems()]) == ["gpu3"]
        finally:
            r.stop()
    finally:
        c.stop()


def test_a_refused_stream_is_retried_slowly_counted_and_reported(tmp_path):
    """A status that retrying will not cure (here a real one: the aggregator verifies the token with TokenReview
    and this agent's token belongs to a pod on another node): logged once, counted by code, the agent.stream
    finding names it, and the agent retries with a growing delay, never in a tight loop."""
    from agent.fakekube.server import FakeKube
    from tests.aggregator.helpers import agent_pod
    from tests.aggregator.helpers import replica as kube_replica

    with FakeKube() as fk:
        token = agent_pod(fk, "node-a", tmp_path)
        r = kube_replica(fk, "agg-0", lease=False)
        c = StreamClient(StreamSettings([f"127.0.0.1:{r.port}"], str(tmp_path / "spool.db"), token_file=str(token),
                                        backoff_base=0.5, backoff_max=30), "n1", "boot-1")
        try:
            c.start()
            wait_for(lambda: c.metrics().value("vigil_stream_failures_total", code="PERMISSION_DENIED"), 10,
                     "the refusal")
            time.sleep(4)
            n = c.metrics().value("vigil_stream_failures_total", code="PERMISSION_DENIED")
            assert n <= 4, f"{n} attempts in ~4 s"
            f = next(f for f in c.findings() if f.check == "agent.stream")
            assert (f.status, f.severity) == ("unhealthy", "warning") and "PERMISSION_DENIED" in f.message
            assert "node-a" in f.message  # the aggregator's own words
        finally:
            c.stop()
            r.stop()
