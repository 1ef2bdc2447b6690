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


def test_unspecified_and_unknown_numbers_are_refused_naming_what_is_known():
    """No guess is safe (an unknown severity read as fatal cordons healthy nodes; as anything else it can miss a
    fatal one): the aggregator refuses the number, and the message says what it knows."""
    for fn in (wire.status_from_proto, wire.severity_from_proto, wire.kind_from_proto):
        for n in (0, 99):
            with pytest.raises(wire.BadEnum) as e:
                fn(n)
            assert str(n) in str(e.value)
    with pytest.raises(wire.BadEnum, match=r"1 \(fatal\), 2 \(warning\), 3 \(info\)"):
        wire.severity_from_proto(7)
    assert wire.severity_from_proto(pb.SEVERITY_INFO) == "info"


def test_a_reading_instead_of_reject_is_one_setting(monkeypatch):
    monkeypatch.setitem(wire.ON_UNKNOWN, "status", "unknown")
    assert wire.status_from_proto(0) == "unknown"


def test_bounded_keeps_identity_fields_distinct_and_short():
    a, b = "x" * 300_000 + "a", "x" * 300_000 + "b"
    (ba, cut_a), (bb, _) = wire.bounded("check", a), wire.bounded("check", b)
    assert cut_a and len(ba) == wire.LIMITS["check"] and ba != bb and ba.startswith("xxx")
    assert wire.bounded("check", a) == (ba, True)  # deterministic: a digest and an event agree on the key
    msg, cut = wire.bounded("message", "m" * 5000)
    assert cut and len(msg) == wire.LIMITS["message"] and msg.endswith("...")
    assert wire.bounded("entity", "gpu3") == ("gpu3", False)


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
