"""The aggregator's Kubernetes actions against the project's faithful fake API server (agent/fakekube), through
the official client: condition, taint, cordon, record, Events; idempotence, retries, dry-run, maintenance,
recovery, silence and the cordon budget. The engine runs on a fake clock and is reconciled by hand."""
import json

import pytest

from agent.aggregator import policy as P
from agent.aggregator.policy import BudgetConfig

from .helpers import OTHER_TAINT, event, fatal


def vigil_condition(node):
    return next((c for c in node["status"]["conditions"] if c["type"] == "VigilHealthy"), None)


def vigil_taints(node):
    return [t for t in node["spec"].get("taints") or [] if t["key"] == P.TAINT_KEY]


def test_faulty_node_gets_condition_taint_cordon_record_and_event(harness, fake):
    fake.add_node("n1", taints=[OTHER_TAINT])
    h = harness()
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    node = h.node("n1")
    cond = vigil_condition(node)
    assert (cond["status"], cond["reason"]) == ("False", "gpu.ecc.uncorrectable")
    assert "gpu3" in cond["message"]
    assert node["spec"]["taints"] == [OTHER_TAINT, {"key": P.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert node["spec"]["unschedulable"] is True
    rec = json.loads(node["metadata"]["annotations"][P.RECORD])
    assert rec["wasSchedulable"] and rec["cordoned"] and rec["tainted"]
    # the other conditions are untouched (merge by type through nodes/status)
    assert {c["type"] for c in node["status"]["conditions"]} >= {"Ready", "MemoryPressure", "VigilHealthy"}
    reasons = sorted(e["reason"] for e in fake.list("events", "default"))
    assert reasons == ["VigilCordoned", "VigilUnhealthy"]
    assert fake.requests("PATCH", r"/nodes/n1/status")[0].content_type == "application/strategic-merge-patch+json"


def test_apply_is_idempotent(harness, fake):
    fake.add_node("n1")
    h = harness()
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    fake.clear_requests()
    h.engine._last.clear()  # force a full re-check, as a resync or a new leader would
    h.hello("n1", [fatal()])  # the same report again (a reconnect)
    h.reconcile("n1", "n1")
    assert fake.requests(writes_only=True) == []
    assert len(vigil_taints(h.node("n1"))) == 1


def test_conflicts_and_5xx_are_retried_never_doubled(harness, fake):
    fake.add_node("n1", taints=[OTHER_TAINT])
    h = harness()
    fake.inject_conflicts("nodes", "n1", times=3)
    fake.faults.add("PATCH", r"/nodes/n1/status", status=503, times=2)
    fake.faults.add("GET", r"/nodes/n1$", status=500, times=1)
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    node = h.node("n1")
    assert len(vigil_taints(node)) == 1 and node["spec"]["unschedulable"]
    assert vigil_condition(node)["status"] == "False"
    assert len(fake.requests("PUT", r"/nodes/n1$", status=409)) == 3
    retries = h.engine.metrics.kube_retries
    assert retries["409"] == 3 and retries["503"] == 2 and retries["500"] == 1
    assert h.engine.metrics.actions[("quarantine", "ok")] == 1


def test_a_write_that_landed_but_timed_out_is_not_applied_twice(harness, fake):
    """The ambiguous case: the PUT went through, the answer never came. The retry re-reads and sees it done."""
    fake.add_node("n1", taints=[OTHER_TAINT])
    h = harness()
    h.kube.timeout = 1.0
    fake.faults.add("PUT", r"/nodes/n1$", timeout_seconds=2.0, after_apply=True, times=1)
    h.hello("n1", [fatal()])
    try:
        h.reconcile("n1")
    except Exception:  # noqa: BLE001 - a worker would retry the reconcile; do it by hand
        h.reconcile("n1")
    node = h.node("n1")
    assert len(vigil_taints(node)) == 1 and node["spec"]["taints"][0] == OTHER_TAINT
    assert len(fake.requests("PUT", r"/nodes/n1$", status=200)) + len(fake.requests("PUT", r"/nodes/n1$", status=None)) >= 1


def test_dry_run_writes_nothing(harness, fake):
    fake.add_node("n1")
    h = harness(dry_run=True)
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    assert fake.requests(writes_only=True) == []
    assert h.engine.metrics.actions[("quarantine", "dry_run")] == 1
    assert h.engine.metrics.actions[("condition", "dry_run")] == 1
    assert vigil_condition(h.node("n1")) is None


def test_maintenance_is_observed_never_acted_on(harness, fake):
    fake.add_node("n1", annotations={P.MAINTENANCE: "firmware update"})
    h = harness()
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    assert fake.requests(writes_only=True) == []
    assert h.engine.metrics.maintenance_skips == 1


def test_no_condition_before_the_first_report(harness, fake):
    fake.add_node("n1")
    h = harness()
    h.engine.nodes["n1"] = __import__("agent.aggregator.state", fromlist=["NodeState"]).NodeState("n1")
    h.reconcile("n1")
    assert vigil_condition(h.node("n1")) is None


def test_recovery_after_healthy_delay_undoes_only_vigils_actions(harness, fake):
    fake.add_node("human", unschedulable=True, taints=[OTHER_TAINT])  # a person cordoned it first
    fake.add_node("mine", taints=[OTHER_TAINT])
    h = harness()
    for n in ("human", "mine"):
        h.hello(n, [fatal()])
    h.reconcile("human", "mine")
    assert h.node("human")["spec"]["unschedulable"] and h.node("mine")["spec"]["unschedulable"]
    for n in ("human", "mine"):
        h.engine.batch(n, "e1", "b1", [event(1, status=__import__("agent._proto.vigil.v1.health_pb2",
                                                                  fromlist=["x"]).STATUS_OK)])
    h.clock.step(299)
    for n in ("human", "mine"):
        h.engine.heartbeat(n, "e1", [], 1)
    h.reconcile("human", "mine")
    assert vigil_taints(h.node("mine")), "healthy_delay has not passed: nothing is undone yet"
    h.clock.step(2)
    for n in ("human", "mine"):
        h.engine.heartbeat(n, "e1", [], 1)
    h.reconcile("human", "mine")
    human, mine = h.node("human"), h.node("mine")
    assert human["spec"]["unschedulable"] is True, "a person's cordon stays"
    assert not mine["spec"].get("unschedulable")
    for node in (human, mine):
        assert node["spec"]["taints"] == [OTHER_TAINT]
        assert P.RECORD not in (node["metadata"].get("annotations") or {})
        assert vigil_condition(node)["status"] == "True"
    assert "VigilUncordoned" in {e["reason"] for e in fake.list("events", "default")}


def test_silent_agent_turns_unknown_without_cordon(harness, fake):
    fake.add_node("n1")
    h = harness()
    h.hello("n1", [])
    h.reconcile("n1")
    assert vigil_condition(h.node("n1"))["status"] == "True"
    h.clock.step(61)
    h.reconcile("n1")
    node = h.node("n1")
    assert (vigil_condition(node)["status"], vigil_condition(node)["reason"]) == ("Unknown", "AgentSilent")
    assert not node["spec"].get("unschedulable") and not vigil_taints(node)


def test_a_storm_stops_at_the_budget_and_opens_the_breaker(harness, fake):
    names = [f"n{i}" for i in range(6)]
    for n in names:
        fake.add_node(n)
    h = harness(budget=BudgetConfig(max_nodes=2, window_seconds=3600))
    for n in names:
        h.hello(n, [fatal()])
    h.reconcile(*names)
    cordoned = [n for n in names if h.node(n)["spec"].get("unschedulable")]
    assert cordoned == ["n0", "n1"]
    assert all(vigil_condition(h.node(n))["status"] == "False" for n in names)  # reported, not cordoned
    assert h.engine.metrics.breaker_open
    assert b"vigil_aggregator_breaker_open 1.0" in h.engine.metrics.render()
    events = [e["reason"] for e in fake.list("events", "default")]
    assert events.count("VigilCordonBudgetExhausted") == 1
    assert h.engine.leader.ledger().held == ("n2", "n3", "n4", "n5")


def test_events_have_deterministic_names(harness, fake):
    from agent.aggregator.kube import node_event

    fake.add_node("n1")
    h = harness()
    body = node_event(h.node("n1"), "default", "quarantine", "ep1", "VigilCordoned", "m", "Warning", "test")
    assert h.kube.create_event("default", body) is True
    assert h.kube.create_event("default", body) is False  # a retry: 409, not a second Event
    assert len(fake.list("events", "default")) == 1


def test_a_record_that_does_not_fit_still_taints_and_cordons(harness, fake):
    """DESIGN §0: audit detail never blocks a quarantine. A node whose annotations (another tool's) leave no room
    for Vigil's record is refused by the API server (422, over 256 KiB); the taint, cordon and condition are
    written anyway, with less record, and the Event says that the cordon will not be undone by itself."""
    from agent.fakekube.validation import ANNOTATIONS_MAX_BYTES

    fake.add_node("n1", annotations={"example.com/big": "x" * (ANNOTATIONS_MAX_BYTES - 40)})
    h = harness()
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    node = h.node("n1")
    assert vigil_taints(node) and node["spec"]["unschedulable"] is True
    assert vigil_condition(node)["status"] == "False"
    assert P.RECORD not in node["metadata"]["annotations"]
    assert len(fake.requests("PUT", r"/nodes/n1$", status=422)) == 2  # the full record, then the minimal one
    cordoned = [e for e in fake.list("events", "default") if e["reason"] == "VigilCordoned"]
    assert len(cordoned) == 1 and "will not be undone automatically" in cordoned[0]["message"]
    assert h.engine.metrics.actions[("quarantine", "ok")] == 1
    # recovery: the taint goes; the cordon stays (Vigil cannot tell whether it was there before)
    h.engine.heartbeat("n1", "e1", [], 1)
    h.clock.step(301)
    h.engine.heartbeat("n1", "e1", [], 1)
    h.reconcile("n1")
    node = h.node("n1")
    assert not vigil_taints(node) and node["spec"]["unschedulable"] is True
    released = [e for e in fake.list("events", "default") if e["reason"] == "VigilUncordoned"]
    assert "no record" in released[0]["message"]


def test_a_quarantine_whose_answer_was_lost_is_still_reported_once(harness, fake):
    """Issue 12 #18: the PUT lands, its answer is lost (a timeout); the retry finds the taint already there. The
    action is still counted and its VigilCordoned Event written, once."""
    fake.add_node("n1")
    h = harness()
    h.kube.timeout = 0.5
    fake.faults.add("PUT", r"/nodes/n1$", timeout_seconds=1.0, after_apply=True, times=1)
    h.hello("n1", [fatal()])
    h.reconcile("n1")
    assert vigil_taints(h.node("n1"))
    assert h.engine.metrics.actions[("quarantine", "ok")] == 1
    assert [e["reason"] for e in fake.list("events", "default")].count("VigilCordoned") == 1


def test_writes_that_failed_after_landing_are_reported_by_the_next_reconcile(harness, fake):
    """Issue 12 #18, across reconciles: every answer to the taint's PUT and to the condition's PATCH is a 503 after
    the write went through, so the reconcile fails and is retried. The retry reads the Node, finds both writes
    there, and reports each once (metric, Event, log line); a later resync reports nothing again."""
    fake.add_node("n1")
    h = harness()
    fake.faults.add("PUT", r"/nodes/n1$", status=503, after_apply=True, times=5)
    fake.faults.add("PATCH", r"/nodes/n1/status$", status=503, after_apply=True, times=5)
    h.hello("n1", [fatal()])
    with pytest.raises(Exception):
        h.reconcile("n1")
    node = h.node("n1")
    assert vigil_taints(node) and vigil_condition(node)["status"] == "False"
    assert ("quarantine", "ok") not in h.engine.metrics.actions
    h.reconcile("n1")  # the worker's retry
    m = h.engine.metrics.actions
    assert m[("quarantine", "ok")] == 1 and m[("condition", "ok")] == 1
    assert m[("quarantine", "error")] == 1 and m[("condition", "error")] == 1
    h.engine._last.clear()  # a resync
    h.reconcile("n1")
    assert m[("quarantine", "ok")] == 1 and m[("condition", "ok")] == 1
    reasons = [e["reason"] for e in fake.list("events", "default")]
    assert reasons.count("VigilCordoned") == 1 and reasons.count("VigilUnhealthy") == 1


def test_a_failed_condition_write_is_counted_as_an_error_and_does_not_hold_back_the_taint(harness, fake):
    fake.add_node("n1")
    h = harness()
    fake.faults.add("PATCH", r"/nodes/n1/status$", status=422, message="refused", times=None)
    h.hello("n1", [fatal()])
    with pytest.raises(Exception):
        h.reconcile("n1")
    node = h.node("n1")
    assert vigil_taints(node) and node["spec"]["unschedulable"] is True
    assert h.engine.metrics.actions[("condition", "error")] == 1


def test_every_decision_and_action_is_one_info_line_with_node_check_and_reason(harness, fake, caplog):
    """Issue 12 #20: at INFO the aggregator used to log nothing when it tainted and cordoned a node. Agent text in
    a log line is escaped: a message cannot forge a second line."""
    import logging

    fake.add_node("n1")
    h = harness()
    h.hello("n1", [fatal(message="2 errors\nnode n2: decided healthy")])
    with caplog.at_level(logging.INFO, logger="agent.aggregator"):
        h.reconcile("n1")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert all("\n" not in line for line in lines)
    decided = [x for x in lines if x.startswith("node n1: decided unhealthy")]
    tainted = [x for x in lines if x.startswith("node n1: tainted vigil.dev/unhealthy:NoSchedule and cordoned")]
    condition = [x for x in lines if x.startswith("node n1: condition VigilHealthy=False")]
    assert len(decided) == len(tainted) == len(condition) == 1
    for line in decided + tainted + condition:
        assert "check gpu.ecc.uncorrectable" in line and "2 errors\\nnode n2" in line
    caplog.clear()
    h.engine._last.clear()
    with caplog.at_level(logging.INFO, logger="agent.aggregator"):
        h.reconcile("n1")  # a resync that finds nothing to do logs nothing at INFO
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_the_dry_run_log_says_what_it_would_do(harness, fake, caplog):
    import logging

    fake.add_node("n1")
    h = harness(dry_run=True)
    h.hello("n1", [fatal()])
    with caplog.at_level(logging.INFO, logger="agent.aggregator"):
        h.reconcile("n1")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("dry-run"))
    assert "would would" not in line and "would-" not in line
    assert line == ("dry-run: node n1 is unhealthy, check gpu.ecc.uncorrectable: gpu.ecc.uncorrectable on gpu3: "
                    "2 uncorrectable ECC errors; would taint vigil.dev/unhealthy:NoSchedule and cordon, "
                    "set VigilHealthy=False")
