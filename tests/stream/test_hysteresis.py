"""Agent-side hysteresis (agent/stream/hysteresis.py): pure, stepped one observation at a time."""
from agent.base.findings import Finding
from agent.stream.hysteresis import Hysteresis


def f(status, severity="fatal", check="gpu.ecc", entity="gpu0", message=""):
    return Finding(check, "gpu", entity, status, severity, message or status)


def statuses(h, seq, collector="gpu", success=True):
    return [h.update(collector, [f(s)], success)[0][0].status for s in seq]


def test_raise_at_once_clear_after_two():
    h = Hysteresis(raise_after=1, clear_after=2)
    assert statuses(h, ["ok", "unhealthy", "ok", "unhealthy", "ok", "ok"]) == [
        "ok", "unhealthy", "unhealthy", "unhealthy", "unhealthy", "ok"]


def test_raise_after_two_ignores_a_blip():
    h = Hysteresis(raise_after=2, clear_after=1)
    assert statuses(h, ["unhealthy", "ok", "unhealthy", "unhealthy", "ok"]) == [
        "ok", "ok", "ok", "unhealthy", "ok"]


def test_message_of_the_stable_state_is_refreshed():
    h = Hysteresis()
    h.update("gpu", [f("unhealthy", message="2 errors")], True)
    out, _ = h.update("gpu", [f("unhealthy", message="3 errors")], True)
    assert out[0].message == "3 errors"


def test_gone_only_after_a_successful_result():
    h = Hysteresis()
    h.update("gpu", [f("unhealthy", entity="gpu3"), f("ok", entity="gpu4")], True)
    out, gone = h.update("gpu", [f("unknown", check="gpu.collector", entity="node")], False)
    assert gone == []
    out, gone = h.update("gpu", [f("ok", entity="gpu4")], True)
    assert gone == [("gpu.collector", "node"), ("gpu.ecc", "gpu3")]
