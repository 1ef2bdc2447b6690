"""The agent's side of a ValidateRequest (agent/stream/validation.py), over real gRPC on loopback: a real
aggregator replica (no Kubernetes API) sends the request on the live stream, the real StreamClient runs it in a
thread with the real probe runner on a fake dcgmi (a shell script replaying a published output, or hanging:
tests/probes/helpers.py), and the results come back as info events through the spool."""
import json
import time

import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.stream.validation import StreamValidation
from tests.probes.helpers import PROBE_FIXTURES, fake_tool, replay, settings as probe_settings

from .helpers import client, gpu, replica, wait_for


class Received:
    """Every probe.* event the replica received: (check, entity, status, message, value)."""

    def __init__(self, r):
        self.events = []
        engine = r.replica.engine
        batch = engine.batch

        def spy(node, epoch, boot_id, events, *args, **kw):
            events = list(events)
            self.events.extend((e.check, e.entity, e.status, e.message, e.value) for e in events
                               if e.check.startswith("probe."))
            return batch(node, epoch, boot_id, events, *args, **kw)
        engine.batch = spy

    def summaries(self):
        return [(s, m, json.loads(v)) for c, _, s, m, v in self.events if c == "probe.validation"]


@pytest.fixture
def wired(tmp_path):
    r, _ = replica()
    got = Received(r)
    c = client(tmp_path, r.port)
    made = []

    def make(dcgmi_body=None, fixture="dcgm-3.1-pass-8gpu.txt", code=0):
        bindir = tmp_path / "bin"
        tool = fake_tool(bindir, "dcgmi", dcgmi_body) if dcgmi_body else \
            replay(bindir, "dcgmi", PROBE_FIXTURES / "dcgm" / fixture, code)
        c.validation = StreamValidation(c.info, probe_settings(tmp_path, dcgm={"path": str(tool)}), "n1")
        c.observe(gpu())
        c.start()
        wait_for(lambda: r.run(lambda: "n1" in r.replica.engine.validation.streams), 10, "connected")
        made.append(c)
        return c
    yield r, got, make
    for x in made:
        x.stop()
    r.stop()


def ask(r, **req):
    r.run(lambda: r.replica.engine.validation.streams["n1"].send(
        pb.AggregatorMessage(validate=pb.ValidateRequest(**req))))


def test_the_hello_says_it_validates_and_a_request_runs_and_answers_with_events(wired):
    r, got, make = wired
    c = make()
    assert r.run(lambda: r.replica.engine.validation.streams["n1"].handles_validation)
    ask(r, request_id="v-1", probes=["dcgm"], quarantined=True)  # no kubelet socket: only a quarantined node runs
    wait_for(lambda: got.summaries(), 20, "the summary")
    status, message, value = got.summaries()[0]
    assert status == pb.STATUS_OK and value == {"request": "v-1", "level": "quick", "probes": {"dcgm": "pass"}}
    assert "every probe that ran passed" in message
    checks = {e[0] for e in got.events}
    assert "probe.dcgm.run" in checks and "probe.dcgm" in checks  # each finding went too, before the summary
    assert got.events[-1][0] == "probe.validation"
    # the agent's /metrics carries vigil_probe_* of the validation the aggregator asked for
    assert c.metrics().value("vigil_probe_result", probe="dcgm") == 1


def test_not_quarantined_without_attribution_it_refuses_unknown(wired):
    r, got, make = wired
    make()
    ask(r, request_id="v-2", probes=["dcgm"])
    wait_for(lambda: got.summaries(), 20, "the summary")
    status, message, value = got.summaries()[0]
    assert status == pb.STATUS_UNKNOWN and value["probes"] == {"dcgm": "unknown"}
    assert "which pod holds which device is unknown" in message


def test_a_failing_probe_answers_unhealthy_with_its_reason(wired):
    r, got, make = wired
    make(fixture="dcgm-4.x-fail-temperature.json", code=226)
    ask(r, request_id="v-3", probes=["dcgm"], quarantined=True)
    wait_for(lambda: got.summaries(), 20, "the summary")
    status, message, value = got.summaries()[0]
    assert status == pb.STATUS_UNHEALTHY and value["probes"] == {"dcgm": "fail"} and "Temperature" in message


@pytest.mark.parametrize("req,words", [
    ({"request_id": "v-4", "probes": ["dcgm", "nosuch"]}, "unknown probe 'nosuch'"),
    ({"request_id": "v-5", "level": "forever"}, "unknown level 'forever'"),
    ({"request_id": "bad id\n"}, "request_id 'bad id\\\\n'"),
    ({"request_id": "x" * 1_000_000}, "is not 1-64 characters"),
    ({"request_id": "v-6", "probes": ["dcgm"] * 100_000}, "100000 probe names (at most 16)"),
])
def test_a_bad_or_hostile_request_is_refused_unknown_and_runs_nothing(wired, tmp_path, req, words):
    r, got, make = wired
    ran = tmp_path / "ran"
    make(f'echo x >> "{ran}"; exit 1')
    ask(r, **req)
    wait_for(lambda: got.summaries(), 20, "the summary")
    status, message, value = got.summaries()[0]
    assert status == pb.STATUS_UNKNOWN and "validation request refused" in message and words in message, message
    assert len(message) < 600 and value["probes"] == {}
    assert value["request"] == (req["request_id"] if len(req["request_id"]) <= 64 and "\n" not in req["request_id"]
                                else "")
    assert not ran.exists()
    # the stream is still up: the next (good) request runs
    ask(r, request_id="v-ok", probes=["dcgm"], quarantined=True)
    wait_for(lambda: len(got.summaries()) == 2, 20, "the second summary")
    assert got.summaries()[1][2]["request"] == "v-ok"


def test_one_at_a_time_a_second_request_is_answered_busy_and_the_deadline_caps_the_probe(wired):
    r, got, make = wired
    c = make("exec sleep 1000")
    ask(r, request_id="v-long", probes=["dcgm"], quarantined=True, timeout_seconds=2)
    wait_for(lambda: c.validation.running == "v-long", 10, "running")
    ask(r, request_id="v-second", probes=["dcgm"], quarantined=True)
    wait_for(lambda: got.summaries(), 10, "the busy answer")
    status, message, value = got.summaries()[0]
    assert value["request"] == "v-second" and status == pb.STATUS_UNKNOWN and "v-long is still running" in message
    t0 = time.monotonic()
    wait_for(lambda: len(got.summaries()) == 2, 20, "the capped run ends")
    status, message, value = got.summaries()[1]
    assert value["request"] == "v-long" and status == pb.STATUS_UNKNOWN and "did not finish in 2s" in message
    assert time.monotonic() - t0 < 15
    # the stream and the collectors went on meanwhile: heartbeats kept the node fresh
    assert r.run(lambda: r.replica.engine.nodes["n1"].last_seen) is not None
