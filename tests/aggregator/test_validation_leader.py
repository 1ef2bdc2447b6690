"""A leader change never loses a validation gate (agent/aggregator/validation.py, "A new leader ..."): two aggregator
replicas contending for the Lease on the project's fake API server (agent/fakekube: no real kube-apiserver can be
installed here), real gRPC on loopback, the agent's stream driven by hand (RawAgent: the exact messages a test
needs); and, where the order of two messages matters, an Engine on a fake clock reconciled by hand (Harness)."""
import json
import queue
import threading
import time

import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import policy as P
from agent.aggregator.engine import StreamHandle
from agent.aggregator.validation import ANNOTATION, PENDING, STARTUP_TAINT, ValidationConfig

from .helpers import Harness, RawAgent, agent_pod, fatal, leader_of, replica, stop_replicas, wait_for

UNVALIDATED = {"key": STARTUP_TAINT, "value": "true", "effect": "NoSchedule"}


def enabled(**kw):
    return ValidationConfig(enabled=True, probes=("dcgm",), **kw)


def taints(fk, node):
    return [t["key"] for t in fk.get("nodes", node)["spec"].get("taints") or []]


def annotation(fk, node, key):
    text = (fk.get("nodes", node)["metadata"].get("annotations") or {}).get(key)
    return json.loads(text) if text else None


def cond(fk, node):
    return next((c for c in fk.get("nodes", node)["status"].get("conditions") or [] if c["type"] == P.CONDITION), {})


def summary(req_id, seq, status=pb.STATUS_OK):
    """The agent's answer as agent/stream/validation.py sends it: the probe's finding, then the summary."""
    word = {pb.STATUS_OK: "pass", pb.STATUS_UNHEALTHY: "fail"}.get(status, "unknown")
    return [pb.Event(seq=seq, kind=pb.KIND_INFO, check="probe.dcgm", component="probe", entity="gpu0", status=status,
                     severity=pb.SEVERITY_FATAL, message=f"dcgm: {word}"),
            pb.Event(seq=seq + 1, kind=pb.KIND_INFO, check="probe.validation", component="probe", entity="gpu-1",
                     status=status, severity=pb.SEVERITY_FATAL, message=f"validation {req_id}: {word}",
                     value=json.dumps({"request": req_id, "level": "quick", "probes": {"dcgm": word}}))]


class Agent:
    """A RawAgent whose incoming messages a thread collects, so a test can ask "was anything requested?"."""

    def __init__(self, port, token):
        self.raw = RawAgent(port, token, timeout=60)
        self.got = queue.Queue()
        self.thread = None

    def hello(self, digest=(), boot="b1"):
        welcome = self.raw.hello("gpu-1", digest, boot=boot, validation=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return welcome

    def _read(self):
        try:
            while True:
                msg = self.raw.read()
                if msg.HasField("validate"):
                    self.got.put(msg.validate)
        except Exception:  # noqa: BLE001 - the stream ended
            pass

    def request(self, timeout=15.0):
        return self.got.get(timeout=timeout)

    def none_within(self, seconds):
        try:
            req = self.got.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected ValidateRequest {req.request_id}")

    def answer(self, req_id, seq, status=pb.STATUS_OK):
        self.raw.send(batch=pb.Batch(boot_id="b1", events=summary(req_id, seq, status)))

    def close(self):
        self.raw.close()


@pytest.fixture
def pair(fake, tmp_path):
    """Two replicas with validation on; the leader first."""
    made = []

    def make(node_taints, healthy_delay=1.0):
        fake.add_node("gpu-1", taints=node_taints)
        token = agent_pod(fake, "gpu-1", tmp_path).read_text()
        reps = [replica(fake, f"agg-{i}", validation=enabled(), healthy_delay=healthy_delay) for i in range(2)]
        made.extend(reps)
        lead = wait_for(lambda: leader_of(reps), what="a leader")
        return lead, next(r for r in reps if r is not lead), token
    yield make
    stop_replicas(made)


def quarantined_then_cleared(fake, lead, token):
    """An agent of gpu-1 on the leader reports a fatal fault, is quarantined, then reports it cleared: the
    leader asks for the release validation. (the agent, that request)"""
    a = Agent(lead.port, token)
    a.hello([fatal()])
    wait_for(lambda: P.TAINT_KEY in taints(fake, "gpu-1"), what="quarantined")
    a.raw.send(heartbeat=pb.Heartbeat(digest=[], digest_seq=0))  # the fault cleared
    return a, a.request()


def fail_over(old, new):
    old.stop(kill=True)
    wait_for(lambda: new.replica.leader.is_leader(), 15, what="the standby takes the Lease")


def test_a_startup_validation_running_when_the_leader_dies_is_adopted_not_asked_again(fake, pair):
    lead, standby, token = pair([UNVALIDATED])
    a = Agent(lead.port, token)
    a.hello()
    req = a.request()
    wait_for(lambda: (annotation(fake, "gpu-1", PENDING) or {}).get("request") == req.request_id,
             what="the pending request on the Node")
    assert annotation(fake, "gpu-1", PENDING)["boot"] == "b1"
    fail_over(lead, standby)
    a.close()
    b = Agent(standby.port, token)  # the agent reconnects to the new leader, still running req
    try:
        b.hello()
        wait_for(lambda: standby.run(lambda: "gpu-1" in standby.replica.engine.validation.pending), what="adopted")
        assert standby.run(lambda: standby.replica.engine.validation.pending["gpu-1"].id) == req.request_id
        b.none_within(1.0)  # a second request would find the agent busy (answered unknown): none is sent
        b.answer(req.request_id, 1)
        wait_for(lambda: STARTUP_TAINT not in taints(fake, "gpu-1"), what="the startup taint removed")
        rec = annotation(fake, "gpu-1", ANNOTATION)
        assert (rec["request"], rec["result"], rec["trigger"], rec["boot"]) == (req.request_id, "pass", "startup",
                                                                                "b1")
        assert annotation(fake, "gpu-1", PENDING) is None  # answered: nothing left to adopt
    finally:
        b.close()


def test_a_failed_release_validation_still_holds_the_node_under_the_new_leader(fake, pair):
    lead, standby, token = pair([])
    a, req = quarantined_then_cleared(fake, lead, token)
    a.answer(req.request_id, 1, pb.STATUS_UNHEALTHY)
    wait_for(lambda: cond(fake, "gpu-1").get("reason") == "ValidationFailed", what="the fail written")
    fail_over(lead, standby)
    a.close()
    b = Agent(standby.port, token)
    try:
        b.hello()  # same boot, clean: without the record the new leader would ask again, and a pass would release
        wait_for(lambda: standby.run(lambda: len(standby.replica.engine._last)) == 1, what="the new leader judged it")
        b.none_within(2.5)  # past healthy_delay (1 s): the gate is reached, and holds on the recorded fail
        assert P.TAINT_KEY in taints(fake, "gpu-1") and fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
        c = cond(fake, "gpu-1")
        assert (c["status"], c["reason"]) == ("False", "ValidationFailed") and req.request_id in c["message"]
        r = standby.run(lambda: standby.replica.engine.validation.results["gpu-1"])
        assert (r.status, r.inherited) == ("fail", "record")
    finally:
        b.close()


def test_a_release_validation_adopted_from_the_old_leader_releases_nothing_until_asked_again(fake, pair):
    lead, standby, token = pair([])
    a, first = quarantined_then_cleared(fake, lead, token)
    wait_for(lambda: (annotation(fake, "gpu-1", PENDING) or {}).get("request") == first.request_id,
             what="the pending request on the Node")
    fail_over(lead, standby)
    a.close()
    b = Agent(standby.port, token)
    try:
        b.hello()
        wait_for(lambda: standby.run(lambda: "gpu-1" in standby.replica.engine.validation.pending), what="adopted")
        b.answer(first.request_id, 1)
        # whether the fault stayed cleared before `first` was asked is the old leader's knowledge: ask again
        second = b.request()
        assert second.request_id != first.request_id and second.quarantined
        time.sleep(0.5)
        assert P.TAINT_KEY in taints(fake, "gpu-1")
        b.answer(second.request_id, 3)
        wait_for(lambda: P.TAINT_KEY not in taints(fake, "gpu-1"), what="released after a pass asked here")
        assert not fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
        assert annotation(fake, "gpu-1", ANNOTATION)["request"] == second.request_id
    finally:
        b.close()


def test_a_summary_resent_before_the_new_leader_read_the_node_still_counts(fake):
    """Engines on a fake clock (Harness): the new leader gets the spooled summary right after the Hello, before
    its first reconcile has read the Node's pending request."""
    fake.add_node("gpu-1", taints=[UNVALIDATED])
    old = Harness(fake, validation=enabled())
    sent = []

    async def connect():
        s = StreamHandle("gpu-1", "e1", True)
        s.handles_validation, s.send = True, sent.append
        old.engine.validation.connected("gpu-1", s)
    try:
        old.hello("gpu-1")
        old.loop.run_until_complete(connect())
        old.reconcile("gpu-1")
        rid = sent[0].validate.request_id
        assert annotation(fake, "gpu-1", PENDING)["request"] == rid
    finally:
        old.close()
    new = Harness(fake, validation=enabled())
    try:
        new.hello("gpu-1")
        new.engine.batch("gpu-1", "e1", "b1", summary(rid, 1))  # before any reconcile: kept, not dropped
        assert STARTUP_TAINT in taints(fake, "gpu-1")
        new.reconcile("gpu-1")
        assert STARTUP_TAINT not in taints(fake, "gpu-1")
        assert annotation(fake, "gpu-1", ANNOTATION)["request"] == rid and annotation(fake, "gpu-1", PENDING) is None
    finally:
        new.close()


def recorded(h, rec):
    """The result annotation as a previous leader wrote it (validation.py _report's format)."""
    h.kube.update_node("gpu-1", lambda n: {**n, "metadata": {**n["metadata"], "annotations": {
        **(n["metadata"].get("annotations") or {}), ANNOTATION: json.dumps(rec, sort_keys=True)}}})


def test_a_record_of_another_boot_or_a_recorded_pass_gates_nothing(fake):
    """Harness: a reboot asks again (the record names its boot), and a recorded pass never lifts a gate."""
    fake.add_node("gpu-1", taints=[UNVALIDATED])
    rec = {"request": "v-old", "result": "fail", "trigger": "startup", "time": "2027-01-15T08:00:00Z",
           "probes": {}, "message": "m", "boot": "b0"}
    h = Harness(fake, validation=enabled())
    try:
        recorded(h, rec)
        h.hello("gpu-1", boot="b1")
        h.reconcile("gpu-1")
        assert "gpu-1" not in h.engine.validation.results  # b0's fail: not this boot's
    finally:
        h.close()
    h = Harness(fake, validation=enabled())
    try:
        recorded(h, {**rec, "boot": "b1", "result": "pass"})
        h.hello("gpu-1", boot="b1")
        h.reconcile("gpu-1")
        r = h.engine.validation.results["gpu-1"]
        assert (r.status, r.inherited) == ("pass", "record")
        assert STARTUP_TAINT in taints(fake, "gpu-1")  # the recorded pass did not lift it
    finally:
        h.close()


def test_cleanup_removes_the_pending_request_too(fake, tmp_path, capsys):
    from agent.aggregator.cli import main

    fake.add_node("gpu-1", taints=[UNVALIDATED], annotations={
        PENDING: json.dumps({"request": "v-1", "trigger": "startup", "boot": "b1"}), "keep": "me"})
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    assert main(["cleanup", "--kubeconfig", kc]) == 0
    assert "validation record" in capsys.readouterr().out
    ann = fake.get("nodes", "gpu-1")["metadata"]["annotations"]
    assert PENDING not in ann and ann.get("keep") == "me"
