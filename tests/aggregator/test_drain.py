"""Opt-in partial drain (DESIGN §9, issue 14): after Vigil taints a sick GPU (DeviceTaintRule) or cordons a node,
the pods the namespace's policy names are evicted through the Eviction API, so PodDisruptionBudgets hold (a 429
is waited on, never forced), within a deadline, never the agent, DaemonSet pods or pods tolerating Vigil's taint;
the Events and the node annotation name the affected pods and their owners.

End to end over real gRPC on loopback (a hand-driven agent stream) against the project's faithful fake API server
(agent/fakekube: ResourceSlices, ResourceClaims, Pods with ownerReferences, PodDisruptionBudgets and the Eviction
subresource answering 429 when the budget forbids), through the official kubernetes client."""
from __future__ import annotations

import json
import time

import pytest

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import drain as dr
from agent.aggregator.devices import DeviceConfig
from agent.aggregator.drain import DrainConfig
from agent.aggregator.policy import PolicyConfig
from agent.fakekube import FakeKube

from .helpers import (CORE_CALLS, RawAgent, agent_pod, close_setups, declared, events_with_reason, seen_calls,
                      stream_replica, wait_for)
from .test_devices import NV, nvidia_gpus, tainted_devices

GPU = [{"name": "main", "image": "registry.example/train:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
DRA = [{"name": "main", "image": "registry.example/train:1", "resources": {"claims": [{"name": "gpu"}]}}]


def ev(seq, check="gpu.ecc.uncorrectable", entity="gpu3", message="2 uncorrectable ECC errors"):
    return pb.Event(seq=seq, kind=pb.KIND_STATE, check=check, entity=entity, status=pb.STATUS_UNHEALTHY,
                    severity=pb.SEVERITY_FATAL, message=message)


def claim(fk, ns, name, node, device):
    fk.add_namespace(ns)
    fk.create("resourceclaims", {"metadata": {"name": name, "namespace": ns}, "spec": {"devices": {"requests": [
        {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}, namespace=ns)
    fk.mutate("resourceclaims", name, lambda c: c.__setitem__("status", {"allocation": {"devices": {"results": [
        {"request": "gpu", "driver": NV, "pool": node, "device": device}]}}}), namespace=ns)


def dra_pod(fk, ns, name, node, device, **kw):
    claim(fk, ns, f"{name}-gpu", node, device)
    return fk.add_pod(ns, name, node_name=node, containers=DRA,
                      resource_claims=[{"name": "gpu", "resourceClaimName": f"{name}-gpu"}], **kw)


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(rules, deadline=30.0, devices=True, dry_run=False):
        fk = FakeKube().start()
        token = agent_pod(fk, "gpu-1", tmp_path).read_text()
        fk.add_resource_slice("gpu-1", NV, nvidia_gpus())
        r = stream_replica(fk, policy=PolicyConfig(healthy_delay=30.0, heartbeat_timeout=30), dry_run=dry_run,
                           devices=DeviceConfig(enabled=devices),
                           drain=DrainConfig(DrainConfig.parse(rules), deadline, retry=0.3))
        a = RawAgent(r.port, token, timeout=60)
        a.hello("gpu-1")
        made.append((fk, r, a))
        return fk, r, a
    yield make
    close_setups(made)


events = events_with_reason


def test_the_pods_on_the_bad_gpu_are_evicted_and_a_pdb_delays_one(setup):
    fk, r, a = setup(["ml=device"])
    dra_pod(fk, "ml", "train-3", "gpu-1", "gpu-3", owner=("PyTorchJob", "bert"), labels={"app": "bert"})
    dra_pod(fk, "ml", "infer-3", "gpu-1", "gpu-3", owner=("ReplicaSet", "infer-7f9c"),
            labels={"pod-template-hash": "7f9c", "app": "infer"})
    dra_pod(fk, "ml", "train-5", "gpu-1", "gpu-5", owner=("PyTorchJob", "bert"))  # a healthy GPU: stays
    dra_pod(fk, "ml", "tolerant", "gpu-1", "gpu-3", tolerations=[{"key": "vigil.dev/unhealthy",
                                                                  "operator": "Exists"}])
    fk.add_pod("ml", "ds-3", node_name="gpu-1", owner=("DaemonSet", "dcgm"), containers=GPU)
    fk.create("poddisruptionbudgets", {"metadata": {"name": "infer", "namespace": "ml"},
                                       "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "infer"}}}},
              namespace="ml")
    a.batch([ev(1)])
    wait_for(lambda: fk.get("pods", "train-3", "ml") is None, 20, what="train-3 evicted")
    assert tainted_devices(fk, "gpu-1") == {"gpu-3"}
    wait_for(lambda: events(fk, "VigilDrainStarted"), 10, what="the start Event")
    start = events(fk, "VigilDrainStarted")[0]["message"]
    assert "ml/train-3 (PyTorchJob bert)" in start and "ml/infer-3 (Deployment infer)" in start
    # infer-3's budget forbids the disruption: 429, waited on, not forced
    time.sleep(1.0)
    assert fk.get("pods", "infer-3", "ml") is not None
    assert fk.requests("POST", "/api/v1/namespaces/ml/pods/infer-3/eviction", status=429)
    # a replacement becomes ready elsewhere: the next try goes through
    fk.add_pod("ml", "infer-new", node_name="gpu-2", labels={"app": "infer"})
    wait_for(lambda: fk.get("pods", "infer-3", "ml") is None, 20, what="infer-3 evicted after the PDB allowed")
    wait_for(lambda: events(fk, "VigilDrainFinished"), 10, what="the end Event")
    for kept in ("train-5", "tolerant", "ds-3", "vigil-agent-gpu-1"):
        assert fk.get("pods", kept, "ml" if kept != "vigil-agent-gpu-1" else "vigil") is not None
    record = json.loads(fk.get("nodes", "gpu-1")["metadata"]["annotations"][dr.ANNOTATION])
    states = {p["pod"]: (p["state"], p["owner"]) for p in record["pods"]}
    assert states["ml/train-3"] == ("evicted", "PyTorchJob bert")
    assert states["ml/infer-3"] == ("evicted", "Deployment infer")
    assert states["ml/tolerant"][0] == "kept" and states["ml/ds-3"][0] == "kept"
    assert not fk.get("nodes", "gpu-1")["spec"].get("unschedulable")  # the device, not the node
    from agent.aggregator import devices as dv

    assert declared(dr) <= seen_calls(fk) <= CORE_CALLS | declared(dr, dv)


def test_a_budget_that_never_allows_is_reported_at_the_deadline(setup):
    fk, r, a = setup(["*=device"], deadline=1.5)
    dra_pod(fk, "ml", "solo", "gpu-1", "gpu-3", labels={"app": "solo"}, owner=("Job", "solo"))
    fk.create("poddisruptionbudgets", {"metadata": {"name": "solo", "namespace": "ml"},
                                       "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "solo"}}}},
              namespace="ml")
    a.batch([ev(1)])
    wait_for(lambda: events(fk, "VigilDrainIncomplete"), 20, what="the deadline report")
    msg = events(fk, "VigilDrainIncomplete")[0]["message"]
    assert "ml/solo (Job solo)" in msg and "PodDisruptionBudget" in msg
    assert fk.get("pods", "solo", "ml") is not None
    n = len(fk.requests("POST", "/api/v1/namespaces/ml/pods/solo/eviction"))
    time.sleep(1.0)
    assert len(fk.requests("POST", "/api/v1/namespaces/ml/pods/solo/eviction")) == n  # it stopped


def test_all_gpu_pods_on_a_node_wide_fault_and_none_elsewhere(setup):
    fk, r, a = setup(["batch=all"])
    fk.add_pod("batch", "gpu-job", node_name="gpu-1", owner=("Job", "j"), containers=GPU)
    fk.add_pod("batch", "cpu-job", node_name="gpu-1", owner=("Job", "k"))  # holds no GPU
    fk.add_pod("other", "gpu-other", node_name="gpu-1", owner=("Job", "o"), containers=GPU)  # policy none
    a.batch([ev(1, check="gpu.count", entity="gpu-1", message="7 of 8 GPUs")])
    wait_for(lambda: fk.get("pods", "gpu-job", "batch") is None, 20, what="the GPU pod evicted")
    wait_for(lambda: events(fk, "VigilDrainFinished"), 10, what="the end Event")
    assert fk.get("pods", "cpu-job", "batch") is not None and fk.get("pods", "gpu-other", "other") is not None


def test_device_policy_without_attribution_evicts_none_and_says_so(setup):
    """A device-plugin pod (no DRA claim): the aggregator cannot tell which GPU it holds."""
    fk, r, a = setup(["ml=device"], devices=False)
    fk.add_pod("ml", "plugin-pod", node_name="gpu-1", owner=("Job", "p"), containers=GPU)
    a.batch([ev(1)])
    wait_for(lambda: r.replica.engine.drain.reports, 20, what="the drain report")
    assert fk.get("pods", "plugin-pod", "ml") is not None
    assert not fk.requests("POST", "/api/v1/namespaces/ml/pods/plugin-pod/eviction")
    report = r.replica.engine.drain.reports[0]
    assert report.affected[0]["state"] == "kept" and "no DRA device" in report.affected[0]["why"]


def test_dry_run_evicts_nothing(setup):
    fk, r, a = setup(["ml=device"], dry_run=True)
    dra_pod(fk, "ml", "train-3", "gpu-1", "gpu-3", owner=("Job", "t"))
    a.batch([ev(1)])
    wait_for(lambda: r.replica.engine.drain.reports, 20, what="the dry-run report")
    assert r.replica.engine.drain.reports[0].affected[0]["state"] == "would-evict"
    assert fk.get("pods", "train-3", "ml") is not None and not fk.requests(path="/api/v1/namespaces/ml/pods/"
                                                                           "train-3/eviction")


def test_policy_rules_and_protection():
    cfg = DrainConfig(DrainConfig.parse(["selector:team=ml,tier=gold=all", "ml=device", "*=none"]))
    pod = {"metadata": {"namespace": "ml", "labels": {"team": "ml", "tier": "gold"}}, "spec": {}}
    assert dr.policy_for(pod, cfg) == "all"
    pod["metadata"]["labels"] = {"team": "ml"}
    assert dr.policy_for(pod, cfg) == "device"
    pod["metadata"]["namespace"] = "x"
    assert dr.policy_for(pod, cfg) == "none"
    assert dr.protected({"metadata": {"namespace": "vigil"}, "spec": {"serviceAccountName": "vigil-agent"}}, cfg)
    for bad in (["ml"], ["ml=maybe"], ["=all"], ["selector:=all"]):
        with pytest.raises(ValueError):
            DrainConfig.parse(bad)
    assert not DrainConfig().enabled and not DrainConfig(DrainConfig.parse(["*=none"])).enabled


from hypothesis import given, settings, strategies as hs  # noqa: E402

_json = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.text(max_size=6),
                     lambda c: hs.lists(c, max_size=3) | hs.dictionaries(
                         hs.sampled_from(["metadata", "spec", "status", "labels", "ownerReferences", "kind",
                                          "resourceClaims", "resourceClaimName", "containers", "resources", "limits",
                                          "tolerations", "key", "phase", "allocation", "devices", "results",
                                          "namespace", "name", "controller"]), c, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(pod=_json)
def test_selection_never_raises_on_hostile_objects(pod):
    """What the API server returns is read defensively: a field of the wrong type costs that pod, not the drain."""
    from agent.aggregator import signatures as sg

    cfg = DrainConfig(DrainConfig.parse(["*=all"]))
    for fn in (lambda: dr.policy_for(pod, cfg), lambda: dr.protected(pod, cfg), lambda: dr.claim_names(pod),
               lambda: dr.claim_holds(pod, [("d", "p", "x")]), lambda: dr.owner_text(pod),
               lambda: sg.gpu_pod(pod), lambda: sg.owner_of(pod), lambda: sg.running(pod)):
        if isinstance(pod, dict):
            fn()
