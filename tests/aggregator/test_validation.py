"""Active validation gates end to end (agent/aggregator/validation.py): a replica serving real gRPC on loopback
against the project's fake API server (agent/fakekube: no real kube-apiserver can be installed here), agents
driven by hand (RawAgent: the exact messages a test needs) or as real processes (`agent.cli --snapshot
--aggregator`, probing with fake tool binaries that replay published dcgmi outputs, tests/probes/helpers.py)."""
import json
import threading
import time

import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import policy as P
from agent.aggregator.policy import PolicyConfig
from agent.aggregator.validation import ANNOTATION, REQUEST, STARTUP_TAINT, ValidationConfig
from tests.probes.helpers import PROBE_FIXTURES, replay
from tests.support import ROOT

from .helpers import RawAgent, agent_pod, fatal, stop, stream_replica, wait_for

UNVALIDATED = {"key": STARTUP_TAINT, "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def taints(fk, node):
    return [t["key"] for t in fk.get("nodes", node)["spec"].get("taints") or []]


def record(fk, node):
    text = (fk.get("nodes", node)["metadata"].get("annotations") or {}).get(ANNOTATION)
    return json.loads(text) if text else None


def cond(fk, node):
    """The Vigil condition, or {} before the aggregator has written it (waits then read "not yet", not a crash)."""
    return next((c for c in fk.get("nodes", node)["status"].get("conditions") or [] if c["type"] == P.CONDITION), {})


def events(fk, node):
    return [(e["reason"], e["type"], e["message"]) for e in fk.list("events", "default")
            if e["involvedObject"]["name"] == node]


def read_validate(raw, timeout=15.0):
    """The next ValidateRequest on the stream (acks before it are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = raw.read()
        if msg.HasField("validate"):
            return msg.validate
    raise AssertionError("no ValidateRequest")


def answer(raw, req, seq, status=pb.STATUS_OK, probe_status=pb.STATUS_OK, message="dcgm: 10 tests passed"):
    """The agent's answer as agent/stream/validation.py sends it: the probe's finding, then the summary."""
    word = {pb.STATUS_OK: "pass", pb.STATUS_UNHEALTHY: "fail"}.get(status, "unknown")
    evs = [pb.Event(seq=seq, kind=pb.KIND_INFO, check="probe.dcgm", component="probe", entity="gpu0",
                    status=probe_status, severity=pb.SEVERITY_FATAL, message=message),
           pb.Event(seq=seq + 1, kind=pb.KIND_INFO, check="probe.validation", component="probe", entity="n",
                    status=status, severity=pb.SEVERITY_FATAL, message=f"validation {req.request_id}: {word}",
                    value=json.dumps({"request": req.request_id, "level": "quick", "probes": {"dcgm": word}}))]
    raw.send(batch=pb.Batch(boot_id="b1", events=evs))


def metric(rep, text):
    return text in rep.replica.metrics.render().decode()


@pytest.fixture
def joined(fake, tmp_path):
    """A node the kubelet registered with the startup taint, its agent pod and token."""
    fake.add_node("gpu-1", taints=[UNVALIDATED, OTHER])
    return agent_pod(fake, "gpu-1", tmp_path).read_text()


def enabled(**kw):
    return ValidationConfig(enabled=True, probes=("dcgm",), **kw)


def test_a_new_node_is_validated_and_only_the_startup_taint_removed(fake, joined, promtool):
    rep = stream_replica(fake, validation=enabled())
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        req = read_validate(raw)
        # the startup taint keeps pods off: the agent may probe without PodResources attribution
        assert req.quarantined and list(req.probes) == ["dcgm"] and req.level == "quick"
        assert req.timeout_seconds == 1800
        assert STARTUP_TAINT in taints(fake, "gpu-1")  # not before the pass
        answer(raw, req, 1)
        wait_for(lambda: STARTUP_TAINT not in taints(fake, "gpu-1"), what="startup taint removed")
        assert taints(fake, "gpu-1") == ["nvidia.com/gpu"]  # a taint that is not Vigil's stays
        r = record(fake, "gpu-1")
        assert (r["request"], r["result"], r["trigger"], r["probes"]) == (req.request_id, "pass", "startup",
                                                                          {"dcgm": "pass"})
        wait_for(lambda: any(e[0] == "VigilValidated" for e in events(fake, "gpu-1")), what="Event")
        assert metric(rep, 'vigil_aggregator_validations_total{result="pass",trigger="startup"} 1.0')
        assert metric(rep, "vigil_aggregator_validations_running 0.0")
        import subprocess
        lint = subprocess.run([promtool, "check", "metrics"], input=rep.replica.metrics.render().decode(),
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    finally:
        raw.close()
        rep.stop()


def test_an_old_agent_leaves_the_taint_and_says_validation_is_unavailable(fake, joined):
    rep = stream_replica(fake, validation=enabled())
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1")  # no handles_validation: never asked, never a pass
        wait_for(lambda: record(fake, "gpu-1"), what="the result annotation")
        r = record(fake, "gpu-1")
        assert r["result"] == "unavailable" and "handles_validation" in r["message"]
        assert STARTUP_TAINT in taints(fake, "gpu-1")
        wait_for(lambda: cond(fake, "gpu-1").get("reason") == "ValidationUnavailable",
                 what="condition")
        assert cond(fake, "gpu-1").get("status") == "False"
        wait_for(lambda: any(e[0] == "VigilValidationUnavailable" and e[1] == "Warning"
                             for e in events(fake, "gpu-1")), what="Warning Event")
    finally:
        raw.close()
        rep.stop()


def test_a_result_that_never_comes_is_unknown_and_the_taint_stays(fake, joined):
    rep = stream_replica(fake, validation=enabled(timeout_seconds=1.0, retry_seconds=3600))
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        read_validate(raw)  # ... and never answered
        wait_for(lambda: record(fake, "gpu-1"), what="the result annotation")
        r = record(fake, "gpu-1")
        assert r["result"] == "unknown" and "no result from the agent within 1s" in r["message"]
        assert STARTUP_TAINT in taints(fake, "gpu-1")
        wait_for(lambda: any(e[0] == "VigilValidationUnknown" for e in events(fake, "gpu-1")), what="Event")
        assert metric(rep, 'vigil_aggregator_validations_total{result="unknown",trigger="startup"} 1.0')
        # a late answer to the request that timed out changes nothing
        answer(raw, pb.ValidateRequest(request_id=r["request"]), 1)
        time.sleep(0.5)
        assert STARTUP_TAINT in taints(fake, "gpu-1") and record(fake, "gpu-1")["result"] == "unknown"
    finally:
        raw.close()
        rep.stop()


def test_a_summary_for_another_request_is_ignored(fake, joined):
    rep = stream_replica(fake, validation=enabled())
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        read_validate(raw)
        answer(raw, pb.ValidateRequest(request_id="v-forged"), 1)
        raw.send(batch=pb.Batch(boot_id="b1", events=[pb.Event(
            seq=3, kind=pb.KIND_INFO, check="probe.validation", component="probe", entity="gpu-1",
            status=pb.STATUS_OK, severity=pb.SEVERITY_FATAL, message="m", value="{not json")]))
        time.sleep(0.8)
        assert STARTUP_TAINT in taints(fake, "gpu-1") and record(fake, "gpu-1") is None
        assert rep.run(lambda: len(rep.replica.engine.validation.pending)) == 1
    finally:
        raw.close()
        rep.stop()


def quarantine_then_recover(fake, raw):
    raw.hello("gpu-1", [fatal()], validation=True)
    wait_for(lambda: P.TAINT_KEY in taints(fake, "gpu-1"), what="quarantined")
    raw.send(heartbeat=pb.Heartbeat(digest=[], digest_seq=0))  # the fault cleared
    req = read_validate(raw)
    assert req.quarantined
    wait_for(lambda: cond(fake, "gpu-1").get("reason") == "ValidationPending", what="pending condition")
    assert P.TAINT_KEY in taints(fake, "gpu-1") and fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
    return req


@pytest.fixture
def quarantined_node(fake, tmp_path):
    fake.add_node("gpu-1", taints=[OTHER])
    return agent_pod(fake, "gpu-1", tmp_path).read_text()


def test_a_recovered_node_is_released_only_after_a_validation_passes(fake, quarantined_node):
    rep = stream_replica(fake, validation=enabled(), policy=PolicyConfig(healthy_delay=1.0, heartbeat_timeout=10))
    raw = RawAgent(rep.port, quarantined_node)
    try:
        req = quarantine_then_recover(fake, raw)
        time.sleep(0.5)
        assert P.TAINT_KEY in taints(fake, "gpu-1")  # healthy_delay passed; the gate holds
        answer(raw, req, 1)
        wait_for(lambda: P.TAINT_KEY not in taints(fake, "gpu-1"), what="released")
        assert not fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
        wait_for(lambda: cond(fake, "gpu-1").get("status") == "True", what="condition True")
        wait_for(lambda: (record(fake, "gpu-1") or {}).get("result") == "pass", what="the validation record")
        assert record(fake, "gpu-1")["trigger"] == "release"
        wait_for(lambda: any(e[0] == "VigilUncordoned" for e in events(fake, "gpu-1")), what="release Event")
    finally:
        raw.close()
        rep.stop()


def test_a_failed_validation_keeps_the_node_quarantined_and_escalates(fake, quarantined_node):
    rep = stream_replica(fake, validation=enabled(), policy=PolicyConfig(healthy_delay=1.0, heartbeat_timeout=10))
    raw = RawAgent(rep.port, quarantined_node)
    try:
        req = quarantine_then_recover(fake, raw)
        answer(raw, req, 1, status=pb.STATUS_UNHEALTHY, probe_status=pb.STATUS_UNHEALTHY,
               message="Diagnostic Memory failed: 1 uncorrectable error")
        wait_for(lambda: record(fake, "gpu-1"), what="the result annotation")
        r = record(fake, "gpu-1")
        assert r["result"] == "fail" and "Diagnostic Memory failed" in r["message"]
        wait_for(lambda: cond(fake, "gpu-1").get("reason") == "ValidationFailed", what="condition")
        c = cond(fake, "gpu-1")
        assert c["status"] == "False" and req.request_id in c["message"]
        warned = [e for e in events(fake, "gpu-1") if e[0] == "VigilValidationFailed"]
        assert warned and warned[0][1] == "Warning" and "stays out of the schedule" in warned[0][2]
        time.sleep(1.0)  # ticks and reconciles: a fail is not asked again, and nothing is released
        assert P.TAINT_KEY in taints(fake, "gpu-1") and fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
        assert rep.run(lambda: len(rep.replica.engine.validation.pending)) == 0
    finally:
        raw.close()
        rep.stop()


def test_dry_run_asks_but_writes_nothing(fake, joined):
    rep = stream_replica(fake, validation=enabled(), dry_run=True)
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        req = read_validate(raw)
        answer(raw, req, 1)
        wait_for(lambda: rep.run(lambda: rep.replica.metrics.actions.get(("validation", "dry_run"))),
                 what="the would-be write")
        assert STARTUP_TAINT in taints(fake, "gpu-1") and record(fake, "gpu-1") is None
        assert not [e for e in events(fake, "gpu-1") if e[0].startswith("VigilValid")]
    finally:
        raw.close()
        rep.stop()


def test_validation_off_changes_nothing(fake, joined):
    rep = stream_replica(fake)
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        wait_for(lambda: cond(fake, "gpu-1"), what="condition")
        time.sleep(0.5)
        assert STARTUP_TAINT in taints(fake, "gpu-1") and record(fake, "gpu-1") is None
        assert rep.run(lambda: len(rep.replica.engine.validation.pending)) == 0
    finally:
        raw.close()
        rep.stop()


# ---- vigil-aggregator validate NODE ---------------------------------------------------------------------------
def cli_validate(kc, *args):
    from agent.aggregator.cli import main

    return main(["validate", "gpu-1", "--kubeconfig", kc, *args])


def test_cli_validate_asks_through_the_leader_and_exits_like_agent_validate(fake, quarantined_node, tmp_path,
                                                                            capsys):
    rep = stream_replica(fake, validation=enabled())
    raw = RawAgent(rep.port, quarantined_node)
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    got = []
    try:
        raw.hello("gpu-1", validation=True)

        def agent_side():
            req = read_validate(raw)
            got.append(req)
            answer(raw, req, 1, status=pb.STATUS_UNHEALTHY, probe_status=pb.STATUS_UNHEALTHY, message="gpu0 hot")
        t = threading.Thread(target=agent_side)
        t.start()
        rc = cli_validate(kc, "--probe", "dcgm", "--level", "full", "--timeout", "20")
        t.join(5)
        out = capsys.readouterr().out
        assert rc == 1, out
        assert "FAIL" in out and "dcgm: fail" in out and "gpu0 hot" in out
        assert got[0].level == "full" and list(got[0].probes) == ["dcgm"] and not got[0].quarantined
        assert got[0].request_id.startswith("cli-")
        assert REQUEST not in (fake.get("nodes", "gpu-1")["metadata"].get("annotations") or {})  # answered
        assert metric(rep, 'vigil_aggregator_validations_total{result="fail",trigger="manual"} 1.0')
    finally:
        raw.close()
        rep.stop()


def test_cli_validate_when_the_aggregator_has_validation_off_exits_2(fake, quarantined_node, tmp_path, capsys):
    rep = stream_replica(fake)
    raw = RawAgent(rep.port, quarantined_node)
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    try:
        raw.hello("gpu-1", validation=True)
        wait_for(lambda: cond(fake, "gpu-1"), what="connected")
        rc = cli_validate(kc, "--json", "--timeout", "20")
        doc = json.loads(capsys.readouterr().out)
        assert rc == 2 and doc["result"] == "unavailable" and "disabled on this aggregator" in doc["message"]
    finally:
        raw.close()
        rep.stop()


def test_cli_validate_with_no_answer_times_out_exit_2_and_withdraws(fake, tmp_path, capsys):
    fake.add_node("gpu-1")
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    assert cli_validate(kc, "--timeout", "1") == 2
    assert "no result for gpu-1 within 1s" in capsys.readouterr().err
    assert REQUEST not in (fake.get("nodes", "gpu-1")["metadata"].get("annotations") or {})


@pytest.mark.parametrize("argv,words", [
    (["validate"], "NODE"), (["validate", "n", "--probe", "nosuch"], "unknown probe 'nosuch'"),
    (["validate", "n", "--level", "long"], "--level"), (["serve", "--validate-idle-max", "0"], "--validate-idle-max"),
    (["serve", "--validation-probes", "dcgm,x"], "unknown probe 'x'")])
def test_cli_usage_errors_exit_64(argv, words, capsys):
    from agent.aggregator.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 64 and words in capsys.readouterr().err


# ---- a real agent process -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture,code,result", [("dcgm-3.1-pass-8gpu.txt", 0, "pass"),
                                                 ("dcgm-4.x-fail-temperature.json", 226, "fail")])
def test_a_real_agent_validates_with_dcgmi_and_the_taint_follows(fake, joined, tmp_path, fixture, code, result):
    """The real agent (agent.cli --snapshot --aggregator) runs the real probe runner on a fake dcgmi replaying a
    published output (fixtures/probes/dcgm)."""
    import subprocess
    import sys

    dcgmi = replay(tmp_path / "bin", "dcgmi", PROBE_FIXTURES / "dcgm" / fixture, code)
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"probes:\n  state_dir: {tmp_path / 'state'}\n  podresources_socket: {tmp_path / 'none.sock'}\n"
                   f"  dcgm: {{path: {dcgmi}, quick_timeout_seconds: 30}}\n")
    token = tmp_path / "token"
    token.write_text(joined)
    rep = stream_replica(fake, validation=enabled())
    log = open(tmp_path / "agent.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(cfg), "--snapshot",
         str(ROOT / "fixtures" / "nodes" / "mi300x-rocm71-healthy"), "--node-name", "gpu-1", "--only", "gpu",
         "--listen", "127.0.0.1:0", "--aggregator", f"127.0.0.1:{rep.port}", "--spool", str(tmp_path / "s.db"),
         "--token-file", str(token), "--log-level", "info"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: record(fake, "gpu-1"), 60, what="the result annotation")
        r = record(fake, "gpu-1")
        assert r["result"] == result and r["probes"] == {"dcgm": result}, (r, (tmp_path / "agent.log").read_text())
        if result == "pass":
            wait_for(lambda: STARTUP_TAINT not in taints(fake, "gpu-1"), what="taint removed")
        else:
            assert "Temperature" in r["message"]
            assert STARTUP_TAINT in taints(fake, "gpu-1")
            wait_for(lambda: cond(fake, "gpu-1").get("reason") == "ValidationFailed",
                     what="condition")
    finally:
        stop(proc)
        rep.stop()


# ---- the gate on DeviceTaintRules ------------------------------------------------------------------------------
def test_device_rules_are_deleted_only_after_a_validation_passes(tmp_path):
    from agent.aggregator import devices as dv
    from agent.aggregator.devices import DeviceConfig
    from agent.fakekube import FakeKube

    from .test_devices import NV, ev, nvidia_gpus, rules, tainted_devices

    fk = FakeKube(resource_versions=("v1",)).start()
    token = agent_pod(fk, "gpu-1", tmp_path).read_text()
    fk.add_resource_slice("gpu-1", NV, nvidia_gpus())
    rep = stream_replica(fk, devices=DeviceConfig(enabled=True), validation=enabled(),
                         policy=PolicyConfig(healthy_delay=1.0, heartbeat_timeout=10))
    raw = RawAgent(rep.port, token)
    try:
        raw.hello("gpu-1", validation=True)
        raw.send(batch=pb.Batch(boot_id="b1", events=[ev(1)]))
        wait_for(lambda: "gpu-3" in tainted_devices(fk, "gpu-1"), what="gpu-3 tainted")
        raw.send(batch=pb.Batch(boot_id="b1", events=[ev(2, status=pb.STATUS_OK)]))
        req = read_validate(raw)
        assert not req.quarantined  # a device rule keeps pods off one GPU, not the node: attribution decides
        time.sleep(0.8)
        assert [x for x in rules(fk) if dv.is_ours(x)]  # healthy_delay passed; held for the validation
        answer(raw, req, 3)
        wait_for(lambda: not [x for x in rules(fk) if dv.is_ours(x)], what="the rule deleted")
        assert record(fk, "gpu-1")["result"] == "pass"
    finally:
        raw.close()
        rep.stop()
        fk.close()


# ---- (d) periodic validation of idle nodes ---------------------------------------------------------------------
@pytest.mark.parametrize("on_failure", ["quarantine", "report"])
def test_periodic_validation_of_idle_nodes_at_most_n_at_once(fake, tmp_path, on_failure):
    tokens = {}
    for n in ("gpu-1", "gpu-2", "gpu-3"):
        fake.add_node(n)
        tokens[n] = agent_pod(fake, n, tmp_path).read_text()
    fake.add_node("gpu-4", unschedulable=True)  # cordoned by a person: not idle, never asked
    tokens["gpu-4"] = agent_pod(fake, "gpu-4", tmp_path).read_text()
    rep = stream_replica(fake, validation=enabled(periodic_seconds=3600, max_nodes=2, periodic_failure=on_failure),
                         policy=PolicyConfig(healthy_delay=0.5, heartbeat_timeout=10))
    raws = {n: RawAgent(rep.port, t) for n, t in tokens.items()}
    try:
        for n, raw in raws.items():
            raw.hello(n, validation=True)
        wait_for(lambda: rep.run(lambda: len(rep.replica.engine.validation.pending)) == 2, what="two asked")
        time.sleep(1.0)
        pending = rep.run(lambda: dict(rep.replica.engine.validation.pending))
        assert len(pending) == 2 and "gpu-4" not in pending  # at most 2 at once
        assert {q.trigger for q in pending.values()} == {"periodic"}
        first = sorted(pending)[0]
        req = read_validate(raws[first])
        answer(raws[first], req, 1, status=pb.STATUS_UNHEALTHY, probe_status=pb.STATUS_UNHEALTHY, message="slow")
        wait_for(lambda: record(fake, first), what="the failure reported")
        assert record(fake, first)["result"] == "fail" and record(fake, first)["trigger"] == "periodic"
        wait_for(lambda: any(e[0] == "VigilValidationFailed" for e in events(fake, first)), what="Event")
        if on_failure == "quarantine":  # the default: the node leaves the schedule, as for a fatal fault
            wait_for(lambda: P.TAINT_KEY in taints(fake, first), what="quarantined")
            assert fake.get("nodes", first)["spec"].get("unschedulable")
            c = cond(fake, first)
            assert (c["status"], c["reason"]) == ("False", "probe.validation") and "slow" in c["message"]
        else:  # reported, not acted on
            time.sleep(0.5)
            assert not taints(fake, first) and not fake.get("nodes", first)["spec"].get("unschedulable")
        # its slot went to the third idle node
        wait_for(lambda: len(rep.run(lambda: rep.replica.engine.validation.pending)) == 2
                 and first not in rep.run(lambda: rep.replica.engine.validation.pending), what="the next one asked")
        assert "gpu-4" not in rep.run(lambda: rep.replica.engine.validation.pending)
    finally:
        for raw in raws.values():
            raw.close()
        rep.stop()


def test_a_node_quarantined_by_a_periodic_failure_is_released_by_a_passing_validation(fake, tmp_path):
    """After a periodic fail, nothing asks that boot again by itself (a fail is not retried); a person's
    `validate` that passes releases the node (the release gate counts it: asked after the fault cleared)."""
    fake.add_node("gpu-1")
    token = agent_pod(fake, "gpu-1", tmp_path).read_text()
    rep = stream_replica(fake, validation=enabled(periodic_seconds=3600),
                         policy=PolicyConfig(healthy_delay=0.5, heartbeat_timeout=10))
    raw = RawAgent(rep.port, token)
    try:
        raw.hello("gpu-1", validation=True)
        req = read_validate(raw)
        answer(raw, req, 1, status=pb.STATUS_UNHEALTHY, probe_status=pb.STATUS_UNHEALTHY, message="gpu2 SDC")
        wait_for(lambda: P.TAINT_KEY in taints(fake, "gpu-1"), what="quarantined")
        assert "gpu2 SDC" in cond(fake, "gpu-1")["message"]
        from agent.aggregator.kube import Kube

        def ask(n):  # what `vigil-aggregator validate gpu-1` writes
            n["metadata"].setdefault("annotations", {})[REQUEST] = '{"id": "ops-1"}'
            return n
        Kube(fake.api_client()).update_node("gpu-1", ask)
        again = read_validate(raw)
        assert again.request_id == "ops-1"
        answer(raw, again, 3)
        wait_for(lambda: P.TAINT_KEY not in taints(fake, "gpu-1"), what="released")
        assert not fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
        wait_for(lambda: cond(fake, "gpu-1").get("status") == "True", what="condition True")
    finally:
        raw.close()
        rep.stop()


def test_a_reboot_asks_again_for_the_new_boot(fake, joined):
    rep = stream_replica(fake, validation=enabled(timeout_seconds=1.0, retry_seconds=3600))
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        first = read_validate(raw)
        wait_for(lambda: record(fake, "gpu-1"), what="unknown after the timeout")
        raw.close()
        raw = RawAgent(rep.port, joined)
        raw.hello("gpu-1", boot="b2", epoch="e2", validation=True)  # rebooted: the old result says nothing now
        second = read_validate(raw)
        assert second.request_id != first.request_id
        evs = [pb.Event(seq=1, kind=pb.KIND_INFO, check="probe.validation", component="probe", entity="gpu-1",
                        status=pb.STATUS_OK, severity=pb.SEVERITY_FATAL, message="ok",
                        value=json.dumps({"request": second.request_id, "probes": {"dcgm": "pass"}}))]
        raw.send(batch=pb.Batch(boot_id="b2", events=evs))
        wait_for(lambda: STARTUP_TAINT not in taints(fake, "gpu-1"), what="taint removed")
    finally:
        raw.close()
        rep.stop()


def test_cleanup_removes_the_validation_record_and_keeps_the_kubelets_taint(fake, tmp_path, capsys):
    from agent.aggregator.cli import main

    fake.add_node("gpu-1", taints=[UNVALIDATED], annotations={
        ANNOTATION: json.dumps({"request": "v-1", "result": "fail"}), REQUEST: '{"id":"cli-1"}', "keep": "me"})
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    assert main(["cleanup", "--kubeconfig", kc]) == 0
    assert "validation record" in capsys.readouterr().out
    node = fake.get("nodes", "gpu-1")
    assert node["metadata"]["annotations"].get("keep") == "me"
    assert ANNOTATION not in node["metadata"]["annotations"] and REQUEST not in node["metadata"]["annotations"]
    assert taints(fake, "gpu-1") == [STARTUP_TAINT]


def test_an_unknown_is_asked_again_after_the_retry_delay(fake, joined):
    rep = stream_replica(fake, validation=enabled(timeout_seconds=0.5, retry_seconds=1.0))
    raw = RawAgent(rep.port, joined)
    try:
        raw.hello("gpu-1", validation=True)
        first = read_validate(raw)  # never answered: unknown after 0.5 s
        second = read_validate(raw)  # asked again a second later
        assert second.request_id != first.request_id
        assert record(fake, "gpu-1")["result"] == "unknown"
        assert STARTUP_TAINT in taints(fake, "gpu-1")
        answer(raw, second, 1)
        wait_for(lambda: STARTUP_TAINT not in taints(fake, "gpu-1"), what="taint removed on the retry's pass")
    finally:
        raw.close()
        rep.stop()


def test_an_old_agent_keeps_a_recovered_node_quarantined_and_says_why(fake, quarantined_node):
    rep = stream_replica(fake, validation=enabled(), policy=PolicyConfig(healthy_delay=0.5, heartbeat_timeout=10))
    raw = RawAgent(rep.port, quarantined_node)
    try:
        raw.hello("gpu-1", [fatal()])  # no handles_validation
        wait_for(lambda: P.TAINT_KEY in taints(fake, "gpu-1"), what="quarantined")
        raw.send(heartbeat=pb.Heartbeat(digest=[], digest_seq=0))
        wait_for(lambda: cond(fake, "gpu-1").get("reason") == "ValidationUnavailable", what="condition")
        # the annotation is a separate write after the condition's
        wait_for(lambda: record(fake, "gpu-1") is not None, what="the validation record")
        assert record(fake, "gpu-1")["result"] == "unavailable" and record(fake, "gpu-1")["trigger"] == "release"
        time.sleep(1.0)
        assert P.TAINT_KEY in taints(fake, "gpu-1") and fake.get("nodes", "gpu-1")["spec"].get("unschedulable")
        assert not any(e[0] == "VigilUncordoned" for e in events(fake, "gpu-1"))
    finally:
        raw.close()
        rep.stop()


def test_the_serve_flags_make_the_config():
    from agent.aggregator.cli import _with_command, parser, validation_config

    p = parser()
    args = p.parse_args(_with_command(p, ["--validation", "--validation-timeout", "600", "--validation-probes",
                                          "dcgm,builtin", "--validation-level", "full", "--validation-retry", "60",
                                          "--validate-idle-every", "86400", "--validate-idle-max", "5%"]))
    assert validation_config(args) == ValidationConfig(True, 600.0, ("dcgm", "builtin"), "full", 60.0, 86400.0, None,
                                                       5.0)
    off = validation_config(p.parse_args(_with_command(p, [])))
    assert off == ValidationConfig(max_nodes=1) and not off.enabled and off.limit(1000) == 1
    assert ValidationConfig(max_nodes=10, max_percent=1.0).limit(500) == 5  # the smaller of the two


def test_an_unreadable_request_annotation_is_answered_unknown_and_removed(fake, quarantined_node):
    from agent.aggregator.kube import Kube

    rep = stream_replica(fake, validation=enabled())
    raw = RawAgent(rep.port, quarantined_node)
    try:
        raw.hello("gpu-1", validation=True)
        wait_for(lambda: cond(fake, "gpu-1"), what="connected")

        def annotate(n):
            n["metadata"].setdefault("annotations", {})[REQUEST] = '{"id": "x y", "probes": ["rm -rf"]}'
            return n
        Kube(fake.api_client()).update_node("gpu-1", annotate)
        wait_for(lambda: record(fake, "gpu-1"), what="the answer")
        r = record(fake, "gpu-1")
        assert r["result"] == "unknown" and "id must be 1-64 characters" in r["message"]
        assert REQUEST not in fake.get("nodes", "gpu-1")["metadata"]["annotations"]
        assert rep.run(lambda: len(rep.replica.engine.validation.pending)) == 0  # nothing was asked of the agent
    finally:
        raw.close()
        rep.stop()


def test_the_aggregator_knows_every_probe_the_agent_has():
    """The aggregator cannot import the agent's probes (layout rule), so it keeps their names itself; a probe
    added to the agent and not here would be refused by `--validation-probes` and `vigil-aggregator validate`
    (rvs was, at first)."""
    from agent.aggregator.validation import PROBE_NAMES
    from agent.probes.validate import registry

    assert set(PROBE_NAMES) == set(registry())
