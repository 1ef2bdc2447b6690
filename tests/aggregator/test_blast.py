"""The blast radius of a quarantine (issue 14): the cordon Event and the device-taint Event name the pods the
quarantine affects and their owners (Job, JobSet, PyTorchJob, Deployment...), bounded, and a node annotation
(vigil.dev/v1.quarantine) records them; a release removes Vigil's annotation and only Vigil's. The pods are read
after the quarantine is written: a pods list that fails costs the names, never the quarantine.

End to end over real gRPC on loopback (a hand-driven agent stream) against the project's faithful fake API server
(agent/fakekube: Pods with ownerReferences and nodeName, ResourceSlices, ResourceClaims, DeviceTaintRules, injected
faults), through the official kubernetes client."""
from __future__ import annotations

import json
import logging

import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import blast as bl
from agent.aggregator.devices import DeviceConfig
from agent.aggregator.policy import PolicyConfig
from agent.fakekube import FakeKube

from .helpers import RawAgent, agent_pod, close_setups, events_with_reason, stream_replica, wait_for
from .test_devices import NV, cordoned, nvidia_gpus, tainted_devices
from .test_drain import DRA, GPU, dra_pod

NODE = "gpu-1"


def fatal(seq, check="gpu.count", entity=NODE, message="7 of 8 GPUs visible", status=pb.STATUS_UNHEALTHY):
    return pb.Event(seq=seq, kind=pb.KIND_STATE, check=check, entity=entity, status=status,
                    severity=pb.SEVERITY_FATAL, message=message)


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(devices=False, dry_run=False, healthy_delay=1.0):
        fk = FakeKube().start()
        token = agent_pod(fk, NODE, tmp_path).read_text()
        fk.add_resource_slice(NODE, NV, nvidia_gpus())
        r = stream_replica(fk, policy=PolicyConfig(healthy_delay=healthy_delay, heartbeat_timeout=30),
                           dry_run=dry_run, devices=DeviceConfig(enabled=devices))
        a = RawAgent(r.port, token, timeout=60)
        a.hello(NODE)
        made.append((fk, r, a))
        return fk, r, a
    yield make
    close_setups(made)


events = events_with_reason


def record(fk):
    value = (fk.get("nodes", NODE)["metadata"].get("annotations") or {}).get(bl.ANNOTATION)
    return json.loads(value) if value else None


def workload(fk):
    fk.add_pod("ml", "bert-0", node_name=NODE, owner=("PyTorchJob", "bert"), containers=GPU)
    fk.add_pod("ml", "llama-w-0-0", node_name=NODE, owner=("Job", "llama-w-0"), containers=GPU,
               labels={"jobset.sigs.k8s.io/jobset-name": "llama"})
    fk.add_pod("web", "infer-7f9c-abcde", node_name=NODE, owner=("ReplicaSet", "infer-7f9c"), containers=GPU,
               labels={"pod-template-hash": "7f9c"})
    fk.add_pod("ml", "cpu-only", node_name=NODE, owner=("Job", "etl"))  # no GPU: not affected
    fk.add_pod("ml", "done", node_name=NODE, owner=("Job", "old"), containers=GPU, phase="Succeeded")
    fk.add_pod("ml", "elsewhere", node_name="gpu-2", owner=("Job", "other"), containers=GPU)


def test_the_cordon_event_and_the_annotation_name_the_gpu_pods_and_their_owners_and_release_removes_it(setup):
    fk, r, a = setup()
    workload(fk)
    fk.mutate("nodes", NODE, lambda n: n["metadata"].setdefault("annotations", {}).update({"example.com/x": "1"}))
    a.batch([fatal(1)])
    wait_for(lambda: events(fk, "VigilCordoned"), 15, what="the cordon Event")
    assert cordoned(fk, NODE)
    msg = events(fk, "VigilCordoned")[0]["message"]
    assert "7 of 8 GPUs visible" in msg and "Pods affected (3)" in msg
    for row in ("ml/bert-0 (PyTorchJob bert)", "ml/llama-w-0-0 (JobSet llama)", "web/infer-7f9c-abcde (Deployment infer)"):
        assert row in msg
    for absent in ("cpu-only", "ml/done", "elsewhere", "vigil-agent"):
        assert absent not in msg
    rec = record(fk)
    assert rec["scope"] == "node" and rec["reason"] == "gpu.count" and rec["by"] == "vigil"
    assert {(p["pod"], p["owner"]) for p in rec["pods"]} == {
        ("ml/bert-0", "PyTorchJob bert"), ("ml/llama-w-0-0", "JobSet llama"),
        ("web/infer-7f9c-abcde", "Deployment infer")}
    # the fault clears: the release removes Vigil's annotation with its taint, and leaves the others'
    a.batch([fatal(2, status=pb.STATUS_OK, message="8 of 8 GPUs visible")])
    wait_for(lambda: not cordoned(fk, NODE), 15, what="the release")
    wait_for(lambda: record(fk) is None, 10, what="the annotation removed")
    assert fk.get("nodes", NODE)["metadata"]["annotations"]["example.com/x"] == "1"


def test_many_pods_are_bounded_named_then_counted(setup):
    fk, r, a = setup()
    for i in range(30):
        fk.add_pod("ml", f"worker-with-a-rather-long-name-{i:02d}", node_name=NODE, owner=("Job", f"sweep-{i}"),
                   containers=GPU)
    a.batch([fatal(1)])
    wait_for(lambda: events(fk, "VigilCordoned"), 15, what="the cordon Event")
    msg = events(fk, "VigilCordoned")[0]["message"]
    named = msg.count("(Job sweep-")
    assert 1 <= named <= bl.MAX_NAMED and f"and {30 - named} more" in msg and "Pods affected (30)" in msg
    assert len(msg) <= 1024 and "7 of 8 GPUs visible" in msg
    assert len(record(fk)["pods"]) == 30


def test_a_pods_list_that_fails_costs_the_names_not_the_quarantine(setup):
    fk, r, a = setup()
    workload(fk)
    fk.faults.add("GET", r"^/api/v1/pods$", status=403, reason="Forbidden",
                  message='pods is forbidden: User "system:serviceaccount:vigil:vigil-aggregator" cannot list',
                  times=None)
    a.batch([fatal(1)])
    wait_for(lambda: events(fk, "VigilCordoned"), 15, what="the cordon Event")
    assert cordoned(fk, NODE)
    msg = events(fk, "VigilCordoned")[0]["message"]
    assert "Pods unknown: " in msg and "forbidden" in msg and "bert" not in msg
    rec = record(fk)
    assert rec["pods"] is None and "forbidden" in rec["podsUnknown"]


def test_the_device_event_names_only_the_pods_holding_the_tainted_device(setup):
    fk, r, a = setup(devices=True)
    dra_pod(fk, "ml", "train-3", NODE, "gpu-3", owner=("PyTorchJob", "bert"))
    dra_pod(fk, "ml", "infer-3", NODE, "gpu-3", owner=("ReplicaSet", "infer-7f9c"), labels={"pod-template-hash": "7f9c"})
    dra_pod(fk, "ml", "train-5", NODE, "gpu-5", owner=("PyTorchJob", "gpt"))  # another GPU: not affected
    fk.add_pod("ml", "plugin-pod", node_name=NODE, owner=("Job", "legacy"), containers=GPU)  # no claim
    a.batch([fatal(1, check="gpu.ecc.uncorrectable", entity="gpu3", message="2 uncorrectable ECC errors")])
    wait_for(lambda: events(fk, "VigilDeviceTainted"), 15, what="the device Event")
    assert tainted_devices(fk, NODE) == {"gpu-3"} and not cordoned(fk, NODE)
    msg = events(fk, "VigilDeviceTainted")[0]["message"]
    assert "ml/train-3 (PyTorchJob bert)" in msg and "ml/infer-3 (Deployment infer)" in msg
    assert "train-5" not in msg and "Pods affected (2)" in msg
    assert "1 other GPU pod(s)" in msg and "without a DRA claim" in msg
    rec = record(fk)
    assert rec["scope"] == "device" and rec["devices"] == [f"{NV}/{NODE}/gpu-3"]
    assert {p["pod"] for p in rec["pods"]} == {"ml/train-3", "ml/infer-3"} and rec["unattributed"] == 1
    a.batch([fatal(2, check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_OK, message="0")])
    wait_for(lambda: not tainted_devices(fk, NODE), 15, what="the device released")
    wait_for(lambda: record(fk) is None, 10, what="the annotation removed")


def test_a_human_annotation_of_the_same_key_is_never_removed(setup):
    """Only Vigil's record (by: vigil) is removed; a value someone else wrote under the key stays."""
    node = {"metadata": {"annotations": {bl.ANNOTATION: "ticket OPS-1"}}}
    assert bl.without_annotation(node) is None
    ours = {"metadata": {"annotations": {bl.ANNOTATION: bl.annotation_value("node", "x", "t", [], bl.Radius())}}}
    assert bl.ANNOTATION not in bl.without_annotation(ours)["metadata"]["annotations"]


def test_dry_run_names_the_pods_in_the_log_and_writes_no_annotation(setup, caplog):
    fk, r, a = setup(dry_run=True)
    workload(fk)
    with caplog.at_level(logging.INFO, logger="agent.aggregator"):
        a.batch([fatal(1)])
        wait_for(lambda: any("would affect" in m for m in caplog.messages), 15, what="the dry-run line")
    line = next(m for m in caplog.messages if "would affect" in m)
    assert "ml/bert-0 (PyTorchJob bert)" in line
    assert record(fk) is None and not cordoned(fk, NODE) and not events(fk, "VigilCordoned")
