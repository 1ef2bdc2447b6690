"""Aggregator decisions (agent/aggregator/state.py, policy.py): pure functions stepped on a fake clock."""
import json

from agent.aggregator import policy as P
from agent.aggregator import state as S

CFG = P.PolicyConfig(healthy_delay=300, heartbeat_timeout=60)
PATIENT = P.PolicyConfig(healthy_delay=300, heartbeat_timeout=10_000)  # for the delay tests: never silent
FATAL = S.Problem("gpu.ecc.uncorrectable", "gpu3", "unhealthy", "fatal", "2 uncorrectable ECC errors")
WARN = S.Problem("gpu.pcie.width", "gpu5", "unhealthy", "warning", "x8 of x16")


def ev(seq, status="unhealthy", severity="fatal", kind="state", check="gpu.ecc.uncorrectable", entity="gpu3"):
    return S.IncomingEvent(seq, kind, check, entity, status, severity, "m")


def node_with(digest, t=0.0, boot="b1"):
    n = S.NodeState("n1")
    S.hello(n, boot, "e1", digest, 0, t)
    return n


def test_no_report_no_verdict():
    assert P.judge(S.NodeState("n1"), CFG, 1000, 0).kind == P.NONE


def test_fatal_in_digest_is_unhealthy_warning_alone_is_not():
    assert P.judge(node_with([FATAL, WARN]), CFG, 1, 0) == P.Verdict(
        P.UNHEALTHY, "gpu.ecc.uncorrectable", "gpu.ecc.uncorrectable on gpu3: 2 uncorrectable ECC errors")
    assert P.judge(node_with([WARN]), CFG, 1, 0).kind == P.RECOVERING


def test_healthy_only_after_healthy_delay_of_clean_reports():
    n = node_with([FATAL], t=0)
    S.apply_batch(n, "b1", "e1", [ev(1, status="ok")], 100)
    assert P.judge(n, PATIENT, 100, 0).kind == P.RECOVERING
    assert P.judge(n, PATIENT, 399, 0).kind == P.RECOVERING
    S.heartbeat(n, "e1", [], 1, 399)  # clean digests keep it clean, the clock keeps running
    assert P.judge(n, PATIENT, 400, 0).kind == P.HEALTHY
    # a relapse restarts the delay
    S.apply_batch(n, "b1", "e1", [ev(2)], 401)
    assert P.judge(n, PATIENT, 401, 0).kind == P.UNHEALTHY
    S.heartbeat(n, "e1", [], 2, 402)
    assert P.judge(n, PATIENT, 701, 0).kind == P.RECOVERING
    assert P.judge(n, PATIENT, 702, 0).kind == P.HEALTHY


def test_reboot_must_stay_clean_within_the_new_boot():
    n = node_with([], t=0)
    assert P.judge(n, PATIENT, 500, 0).kind == P.HEALTHY
    S.apply_batch(n, "b1", "e1", [ev(1)], 500)
    assert S.hello(n, "b2", "e1", [], 1, 600) is True  # rebooted, clean
    assert n.reboots == 1
    assert P.judge(n, PATIENT, 899, 0).kind == P.RECOVERING
    assert P.judge(n, PATIENT, 900, 0).kind == P.HEALTHY


def test_events_from_an_older_boot_never_change_state():
    n = node_with([], t=0, boot="b2")
    res = S.apply_batch(n, "b1", "e1", [ev(5)], 10)  # spooled before the reboot, delivered after
    assert res.new == [5] and res.stale == 1 and not res.changed and res.ack == 5
    assert n.fatal_problems() == []


def test_dedup_by_epoch_and_seq_and_digest_covers_older_events():
    n = node_with([], t=0)
    assert S.apply_batch(n, "b1", "e1", [ev(1), ev(2, status="ok")], 1).new == [1, 2]
    again = S.apply_batch(n, "b1", "e1", [ev(1), ev(2, status="ok"), ev(3)], 2)
    assert (again.duplicates, again.new, again.ack) == (2, [3], 3)
    other = S.apply_batch(n, "b1", "e2", [ev(1)], 3)  # a wiped spool: a new epoch, seq 1 is new
    assert other.new == [1]
    S.heartbeat(n, "e2", [], 10, 4)  # the digest as of seq 10 is clean
    late = S.apply_batch(n, "b1", "e2", [ev(9)], 5)  # an event the digest already covers
    assert late.stale == 1 and n.fatal_problems() == []


def test_info_events_stay_outside_the_state_machine():
    n = node_with([], t=0)
    res = S.apply_batch(n, "b1", "e1", [ev(1, kind="info", severity="info")], 1)
    assert res.new == [1] and not res.changed


def test_silent_after_heartbeat_timeout_but_not_during_startup_grace():
    n = node_with([FATAL], t=0)
    assert P.judge(n, CFG, 59, 0).kind == P.UNHEALTHY
    assert P.judge(n, CFG, 61, leader_since=30).kind == P.UNHEALTHY  # grace: 60 s after gaining the Lease
    v = P.judge(n, CFG, 91, leader_since=30)
    assert (v.kind, v.reason) == (P.SILENT, "AgentSilent")
    assert P.judge(n, CFG, 200, 0) == v  # a stable message: no rewrite every tick


def test_seeded_node_is_judged_silent_only_after_grace():
    n = S.NodeState("n1")
    S.seed(n, 100)
    assert P.judge(n, CFG, 150, 100).kind == P.NONE
    assert P.judge(n, CFG, 161, 100).kind == P.SILENT


def obs(**kw):
    return P.Observed(**kw)


def test_plan_unhealthy_quarantines_once():
    v = P.Verdict(P.UNHEALTHY, "gpu.ecc", "msg")
    p = P.plan(v, obs())
    assert p.condition == ("False", "gpu.ecc", "msg") and p.quarantine
    done = obs(condition=("False", "gpu.ecc", "msg"), tainted=True, unschedulable=True,
               record={"tainted": True, "cordoned": True, "wasSchedulable": True})
    assert P.plan(v, done).empty


def test_plan_maintenance_is_observed_not_acted_on():
    p = P.plan(P.Verdict(P.UNHEALTHY, "gpu.ecc", "msg"), obs(maintenance=True))
    assert p.empty and p.skipped == "maintenance"


def test_plan_silent_sets_unknown_without_cordon_or_release():
    p = P.plan(P.Verdict(P.SILENT, "AgentSilent", "m"), obs(tainted=True, record={"cordoned": True}))
    assert p.condition == ("Unknown", "AgentSilent", "m") and not p.quarantine and not p.release


def test_plan_recovering_waits_when_vigil_marked_the_node():
    v = P.Verdict(P.RECOVERING, P.HEALTHY_REASON, "ok")
    assert P.plan(v, obs(condition=("False", "x", "y"), tainted=True, record={})).empty
    assert P.plan(v, obs()).condition == ("True", P.HEALTHY_REASON, "ok")  # first report: publish at once


def test_plan_healthy_releases():
    v = P.Verdict(P.HEALTHY, P.HEALTHY_REASON, "ok")
    p = P.plan(v, obs(condition=("False", "x", "y"), tainted=True, record={"cordoned": True}))
    assert p.condition[0] == "True" and p.release


def node_obj(unschedulable=False, taints=(), annotations=None):
    return {"metadata": {"name": "n1", "resourceVersion": "7", "annotations": dict(annotations or {})},
            "spec": {"unschedulable": unschedulable, "taints": list(taints)}}


OTHER = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def test_quarantine_keeps_other_taints_and_records_schedulability():
    new = P.quarantined(node_obj(taints=[OTHER]), "gpu.ecc", "2026-01-01T00:00:00Z", "ep1")
    assert new["spec"]["taints"] == [OTHER, {"key": P.TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    assert new["spec"]["unschedulable"] is True
    rec = json.loads(new["metadata"]["annotations"][P.RECORD])
    assert rec["wasSchedulable"] is True and rec["cordoned"] is True and rec["episode"] == "ep1"
    assert P.quarantined(new, "gpu.ecc", "later", "ep2") is None  # idempotent


def test_release_undoes_only_vigils_actions_human_cordon_stays():
    human = node_obj(unschedulable=True, taints=[OTHER])
    q = P.quarantined(human, "gpu.ecc", "t", "ep")
    assert json.loads(q["metadata"]["annotations"][P.RECORD])["cordoned"] is False
    r = P.released(q)
    assert r["spec"]["unschedulable"] is True and r["spec"]["taints"] == [OTHER]
    assert P.RECORD not in r["metadata"]["annotations"]
    assert P.released(r) is None
    mine = P.released(P.quarantined(node_obj(taints=[OTHER]), "gpu.ecc", "t", "ep"))
    assert mine["spec"]["unschedulable"] is False and mine["spec"]["taints"] == [OTHER]


def test_condition_patch_merges_by_type_and_keeps_transition_time():
    p = P.condition_patch("False", "r", "m", "T2", ("False", "r", "old"))
    assert p["status"]["conditions"][0]["type"] == "VigilHealthy"
    assert "lastTransitionTime" not in p["status"]["conditions"][0]
    assert P.condition_patch("True", "r", "m", "T2", ("False", "r", "m"))["status"]["conditions"][0][
        "lastTransitionTime"] == "T2"


BUDGET = P.BudgetConfig(max_nodes=2, window_seconds=600)


def test_budget_admits_n_then_opens_the_breaker_and_holds():
    led = P.Ledger()
    d, led = P.admit(led, "a", 0, BUDGET, 100)
    assert d == P.ADMIT
    assert P.admit(led, "a", 1, BUDGET, 100)[0] == P.ALREADY  # a retry or a takeover counts once
    d, led = P.admit(led, "b", 2, BUDGET, 100)
    d, led = P.admit(led, "c", 3, BUDGET, 100)
    assert d == P.OPENED and led.breaker_open and led.held == ("c",)
    d, led = P.admit(led, "d", 700, BUDGET, 100)  # the window passed, but the breaker stays open until reset
    assert d == P.REFUSED and led.held == ("c", "d")
    led = P.reset(led)
    assert not led.breaker_open and led.resets == 1
    assert P.admit(led, "c", 701, BUDGET, 100)[0] == P.REFUSED  # a reset does not replay old faults
    assert P.admit(P.unhold(led, "c"), "c", 702, BUDGET, 100)[0] == P.ADMIT
    assert P.admit(led, "e", 703, BUDGET, 100)[0] == P.ADMIT


def test_budget_percent_and_window():
    b = P.BudgetConfig(max_percent=10, window_seconds=60)
    led = P.Ledger()
    for i, node in enumerate("abc"):
        d, led = P.admit(led, node, i, b, 30)  # 10% of 30 = 3
        assert d == P.ADMIT
    assert P.admit(led, "x", 10, b, 30)[0] == P.OPENED
    led2 = P.Ledger(entries=led.entries)
    assert P.admit(led2, "x", 100, b, 30)[0] == P.ADMIT  # the old entries left the window


def test_ledger_round_trips_and_fails_safe():
    led = P.Ledger((("a", 1.5),), True, 2.0, ("b",), 3)
    assert P.Ledger.from_json(led.to_json()) == led
    assert P.Ledger.from_json("{garbage").breaker_open
