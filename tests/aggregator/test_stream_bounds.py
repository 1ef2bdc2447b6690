"""What the aggregator accepts at the stream (DESIGN §0: it bounds strings, sequence numbers and enum values, and
never acknowledges what it will not apply), driven by hand over real gRPC on loopback against one replica whose
TokenReviews and Node writes go to the project's faithful fake API server (agent/fakekube), through the official
kubernetes client."""
import json

import grpc
import pytest

from agent import wire
from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import policy as P

from .helpers import RawAgent, agent_pod, fatal, stream_replica, wait_for

OK, UNHEALTHY, FATAL, WARNING = pb.STATUS_OK, pb.STATUS_UNHEALTHY, pb.SEVERITY_FATAL, pb.SEVERITY_WARNING


def ev(seq, status=UNHEALTHY, severity=FATAL, check="gpu.ecc.uncorrectable", entity="gpu3", kind=pb.KIND_STATE,
       message="2 uncorrectable ECC errors"):
    return pb.Event(seq=seq, kind=kind, check=check, entity=entity, status=status, severity=severity, message=message)


def info(seq):
    return pb.Event(seq=seq, kind=pb.KIND_INFO, check="container.oom_kill", entity=f"pod-{seq}", status=OK,
                    severity=pb.SEVERITY_INFO, message="OOM kill")


@pytest.fixture
def agg(fake, tmp_path):
    made = []

    def make(node="n1", **cfg):
        token = agent_pod(fake, node, tmp_path).read_text()
        r = stream_replica(fake, **cfg)
        made.append(r)
        return r, token
    yield make
    for r in made:
        r.stop()


@pytest.fixture
def agents():
    made = []

    def make(port, token, **kw):
        a = RawAgent(port, token, **kw)
        made.append(a)
        return a
    yield make
    for a in made:
        a.close()


def quarantined(fake, node):
    obj = fake.get("nodes", node)
    cond = next((c for c in obj["status"].get("conditions") or [] if c["type"] == P.CONDITION), None)
    tainted = any(t["key"] == P.TAINT_KEY for t in obj["spec"].get("taints") or [])
    return cond is not None and cond["status"] == "False" and tainted and obj["spec"].get("unschedulable")


def test_a_fatal_event_with_a_300000_character_check_still_quarantines_its_node(agg, agents, fake):
    """Issue 12 #16: the long name used to be acknowledged, then refused by the API server (annotations over
    256 KiB) for ever, the node left healthy. It is shortened on arrival (a prefix and a hash of the whole) and the
    node gets its condition, taint and cordon, with every write under the API server's limits."""
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1")
    long_check = "gpu." + "x" * 300_000
    assert a.batch([ev(1, check=long_check, entity="e" * 100_000, message="m" * 1_000_000)]).seq == 1
    wait_for(lambda: quarantined(fake, "n1"), 15, what="the node quarantined")
    obj = fake.get("nodes", "n1")
    cond = next(c for c in obj["status"]["conditions"] if c["type"] == P.CONDITION)
    want, _ = wire.bounded("check", long_check)
    assert cond["reason"] == want and len(cond["reason"]) == wire.LIMITS["check"]
    assert len(cond["message"]) <= P.MAX_MESSAGE
    record = json.loads(obj["metadata"]["annotations"][P.RECORD])
    assert record["reason"] == want and record["cordoned"]
    m = r.replica.metrics
    assert m.truncated == {"check": 1, "entity": 1, "message": 1}
    assert b'vigil_aggregator_fields_truncated_total{field="check"} 1.0' in m.render()
    wait_for(lambda: "VigilCordoned" in [e["reason"] for e in fake.list("events", "default")], 10, what="Event")


def test_a_node_name_longer_than_kubernetes_allows_is_refused(agg, agents):
    r, token = agg()
    a = agents(r.port, token)
    a.send(hello=pb.Hello(node="n" * 254, boot_id="b1", spool_epoch="e1"))
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "253" in details


def test_an_unknown_severity_in_a_hello_digest_is_refused_naming_the_field(agg, agents, fake):
    """Issue 12 #17: it used to be accepted, and read as fatal. Now the Hello is refused: the digest alone rebuilds
    the node's state, and no reading of an unknown number is safe."""
    r, token = agg()
    a = agents(r.port, token)
    bad = pb.Problem(check="gpu.new_check", entity="gpu0", status=UNHEALTHY, severity=7, message="?")
    a.send(hello=pb.Hello(node="n1", boot_id="b1", spool_epoch="e1", digest=[fatal(), bad]))
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "digest[1]" in details and "gpu.new_check" in details and "severity 7" in details
    assert r.replica.metrics.refused["bad_enum"] == 1
    assert not any(c["type"] == P.CONDITION for c in fake.get("nodes", "n1")["status"]["conditions"])
    b = agents(r.port, token)  # an unknown status, and the unspecified 0, are refused the same way
    b.send(hello=pb.Hello(node="n1", boot_id="b1", spool_epoch="e1",
                          digest=[pb.Problem(check="c", entity="e", status=0, severity=FATAL)]))
    assert b.end()[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_enum_in_a_heartbeat_ends_the_stream(agg, agents):
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1")
    a.send(heartbeat=pb.Heartbeat(digest=[pb.Problem(check="c", entity="e", status=UNHEALTHY, severity=9)]))
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Heartbeat.digest[0]" in details


def test_an_event_that_cannot_be_applied_is_never_acknowledged(agg, agents):
    """Issue 12 #17, to an agent that does not read rejections (today's): the events before the bad one are applied
    and acknowledged, the bad one and what follows are not, and the stream ends naming it; the same batch sent
    again fails the same way (nothing is lost: the agent keeps it)."""
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1")
    assert a.batch([info(1), ev(2, severity=9), info(3)]).seq == 1
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "severity 9" in details and "seq 2" in details
    assert r.applied == [("e1", 1)]
    b = agents(r.port, token)
    assert b.hello("n1").applied_seq == 1
    assert b.batch([ev(2, severity=9), info(3)]).seq == 1
    assert b.end()[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert r.applied == [("e1", 1)] and r.replica.metrics.rejected == {"enum": 2}


def test_an_agent_that_reads_rejections_is_told_and_the_stream_goes_on(agg, agents):
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1", rejections=True)
    ack = a.batch([info(1), ev(2, severity=9), info(3)])
    assert ack.seq == 3 and [(x.seq, "severity 9" in x.reason) for x in ack.rejected] == [(2, True)]
    assert a.batch([info(4)]).seq == 4
    assert r.applied == [("e1", 1), ("e1", 3), ("e1", 4)]
    # a reconnect that missed that Ack still learns of the refusal from the Welcome
    a.close()
    b = agents(r.port, token)
    welcome = b.hello("n1", rejections=True)
    assert welcome.applied_seq == 4 and [x.seq for x in welcome.rejected] == [2]
    assert (welcome.max_message_bytes, welcome.max_batch_events) == (wire.MAX_MESSAGE_BYTES, wire.MAX_BATCH_EVENTS)


def test_seq_2_64_minus_1_is_refused_and_the_epochs_later_events_still_apply(agg, agents):
    """Issue 12 #17: once 2^64-1 was accepted, events 10 and 11 of the epoch were acknowledged as duplicates and
    never applied (and the agent deleted them)."""
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1")
    assert a.batch([info(2**64 - 1)]).seq == 0
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and str(2**64 - 1) in details
    b = agents(r.port, token)
    assert b.hello("n1").applied_seq == 0
    assert b.batch([info(10), info(11)]).seq == 11
    assert r.applied == [("e1", 10), ("e1", 11)]
    # within the spool's range but far beyond anything the agent declared: refused too
    assert b.batch([info(11 + wire.SEQ_AHEAD + 1)]).seq == 11
    assert b.end()[0] == grpc.StatusCode.INVALID_ARGUMENT
    c = agents(r.port, token)
    c.hello("n1", rejections=True)
    ack = c.batch([ev(0), info(2**63), info(12)])  # 0 and 2^63 are outside 1..2^63-1
    assert ack.seq == 12 and [x.seq for x in ack.rejected] == [0, 2**63]
    c.close()  # a reconnect hears again of the refusals its applied_seq covers; one above is its to send again
    assert [x.seq for x in agents(r.port, token).hello("n1", rejections=True).rejected] == [0]


def test_out_of_order_seqs_are_refused_not_acknowledged_as_duplicates(agg, agents):
    """Issue 12 #17: 5, 3, 4 used to apply 5 and acknowledge 3 and 4 as duplicates. A cumulative ack of 5 would
    claim them applied, so to today's agent nothing of that batch is acknowledged; an agent that reads rejections
    has 5 applied and 3 and 4 named."""
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1")
    assert a.batch([info(5), info(3), info(4)]).seq == 0
    assert a.end()[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert r.applied == []
    b = agents(r.port, token)
    b.hello("n1", rejections=True)
    ack = b.batch([info(5), info(3), info(4)])
    assert ack.seq == 5 and [x.seq for x in ack.rejected] == [3, 4]
    again = b.batch([info(5), info(6)])  # 5 again, on the same stream: refused, not a silent duplicate
    assert again.seq == 6 and [x.seq for x in again.rejected] == [5]
    assert r.applied == [("e1", 5), ("e1", 6)]
    assert r.replica.metrics.events.get("duplicate", 0) == 0


def test_a_newer_stream_of_the_same_agent_ends_the_older_one(agg, agents):
    """One stream per (node, spool epoch): an older stream still open could otherwise apply a batch above what the
    newer one's Welcome said, and the agent would send it again."""
    r, token = agg()
    old = agents(r.port, token)
    old.hello("n1")
    assert old.batch([info(1)]).seq == 1
    new = agents(r.port, token)
    assert new.hello("n1").applied_seq == 1
    old.send(batch=pb.Batch(boot_id="b1", events=[info(2)]))
    code, details = old.end()
    assert code == grpc.StatusCode.ABORTED and "newer stream" in details
    assert new.batch([info(2)]).seq == 2
    assert r.applied == [("e1", 1), ("e1", 2)]
    other = agents(r.port, token)  # another spool epoch of the same node (a second agent) is its own stream
    assert other.hello("n1", epoch="e2").applied_seq == 0
    assert new.batch([info(3)]).seq == 3


def test_a_heartbeat_digest_seq_out_of_range_ends_the_stream(agg, agents):
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1", digest_seq=100)
    a.send(heartbeat=pb.Heartbeat(digest_seq=100 + wire.SEQ_AHEAD + 1))
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Heartbeat.digest_seq" in details
    b = agents(r.port, token)
    b.send(hello=pb.Hello(node="n1", boot_id="b1", spool_epoch="e1", digest_seq=2**63))
    assert b.end()[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_a_batch_over_the_limit_is_applied_up_to_it_and_the_stream_ends(agg, agents):
    r, token = agg()
    a = agents(r.port, token)
    a.hello("n1", rejections=True)
    n = wire.MAX_BATCH_EVENTS
    assert a.batch([info(s) for s in range(1, n + 3)]).seq == n
    code, details = a.end()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and str(n) in details
    assert len(r.applied) == n


def test_a_stream_that_never_sends_a_hello_is_ended_at_the_deadline(agg, agents):
    """Issue 12 #19: an authenticated stream without a Hello used to be held for ever. The server ends it (its own
    status, not the client's deadline), counts it, and a real agent's stream is unaffected."""
    r, token = agg(hello_seconds=0.3)
    silent = agents(r.port, token, timeout=30)
    code, details = silent.end()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "no Hello within 0.3s" in details
    assert r.replica.metrics.refused["hello_timeout"] == 1
    a = agents(r.port, token)
    a.hello("n1")
    assert a.batch([info(1)]).seq == 1


def test_a_stream_that_goes_quiet_after_its_hello_is_ended(agg, agents):
    from agent.aggregator.policy import PolicyConfig

    r, token = agg(policy=PolicyConfig(heartbeat_timeout=1.0))  # idle: 3 heartbeats of 1 s
    a = agents(r.port, token, timeout=30)
    a.hello("n1")
    code, details = a.end()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "nothing received for 3s" in details
    # the client may read the status before the handler's own clean-up has run on the server's loop
    wait_for(lambda: r.replica.metrics.streams == 0, timeout=5, what="the stream closed on the server")
