"""agent/wire.py: the one map between findings' strings and the vigil.v1 enums, built from the proto itself."""
import pytest

from agent import wire
from agent._proto.vigil.v1 import health_pb2 as pb
from agent.base.findings import SEVERITIES, STATUSES


def test_the_maps_cover_exactly_what_findings_use():
    assert set(wire.STATUSES) == set(STATUSES)
    assert set(wire.SEVERITIES) == set(SEVERITIES)
    assert set(wire.KINDS) == {wire.STATE, wire.INFO}


def test_round_trips_and_the_proto_numbers():
    for s in STATUSES:
        assert wire.status_from_proto(wire.status_to_proto(s)) == s
    for s in SEVERITIES:
        assert wire.severity_from_proto(wire.severity_to_proto(s)) == s
    assert wire.status_to_proto("unhealthy") == pb.STATUS_UNHEALTHY
    assert wire.severity_to_proto("warning") == pb.SEVERITY_WARNING
    assert (wire.kind_to_proto(wire.STATE), wire.kind_to_proto(wire.INFO)) == (pb.KIND_STATE, pb.KIND_INFO)


def test_unspecified_and_unknown_numbers_read_as_the_named_defaults():
    for n in (0, 99):
        assert wire.status_from_proto(n) == "unknown"
        assert wire.severity_from_proto(n) == "fatal"
        assert wire.kind_from_proto(n) == "state"


def test_reject_is_one_setting(monkeypatch):
    monkeypatch.setitem(wire.ON_UNKNOWN, "severity", wire.REJECT)
    with pytest.raises(wire.BadEnum):
        wire.severity_from_proto(0)
    assert wire.severity_from_proto(pb.SEVERITY_INFO) == "info"


def test_agent_side_refuses_a_string_outside_the_enum():
    with pytest.raises(wire.BadEnum):
        wire.status_to_proto("healthy")
    with pytest.raises(wire.BadEnum):
        wire.kind_to_proto("event")


def test_messages():
    e = wire.event_message(7, wire.INFO, "sysctl.changed", "sysctl", "node", "ok", "info", "set", action="none",
                           value={"v": 1}, observed_at=1.5)
    assert (e.seq, e.kind, e.status, e.severity) == (7, pb.KIND_INFO, pb.STATUS_OK, pb.SEVERITY_INFO)
    assert (e.action, e.value, e.threshold, e.observed_at_unix_ms) == ("none", '{"v": 1}', "", 1500)
    p = wire.problem_message("gpu.ecc", "gpu3", "unhealthy", "fatal", "2 errors")
    assert (p.check, p.entity, p.status, p.severity, p.message) == (
        "gpu.ecc", "gpu3", pb.STATUS_UNHEALTHY, pb.SEVERITY_FATAL, "2 errors")
