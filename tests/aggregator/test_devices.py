"""Per-device quarantine on clusters with Dynamic Resource Allocation (DESIGN §9, issue 14): a fault that is one
GPU's takes that GPU out with a DeviceTaintRule, the node's other GPUs stay allocatable, and the node is not
cordoned. End to end over real gRPC on loopback (a hand-driven agent stream) against the project's faithful fake
API server (agent/fakekube: ResourceSlices and DeviceTaintRules with the real server's validation, served
versions as discovery says), through the official kubernetes client.

ResourceSlices are shaped as the vendors' DRA drivers publish them: NVIDIA's (driver gpu.nvidia.com, devices
gpu-<minor>, attributes uuid and pcieBusID; NVIDIA/k8s-dra-driver-gpu cmd/gpu-kubelet-plugin/deviceinfo.go) and
AMD's (driver gpu.amd.com, devices gpu-<card>-<render>, attribute resource.kubernetes.io/pciBusID;
ROCm/k8s-gpu-dra-driver cmd/gpu-kubeletplugin/deviceinfo.go).
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as hs

from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import devices as dv
from agent.aggregator import policy as P
from agent.aggregator.devices import DeviceConfig
from agent.aggregator.policy import BudgetConfig, PolicyConfig
from agent.fakekube import FakeKube

from .helpers import CORE_CALLS, RawAgent, agent_pod, close_setups, declared, seen_calls, stream_replica, wait_for

NV = "gpu.nvidia.com"
AMD = "gpu.amd.com"


def nvidia_gpus(n=8):
    return [{"name": f"gpu-{i}", "attributes": {
        "type": {"string": "gpu"}, "uuid": {"string": f"GPU-{i:08x}-1111-2222-3333-444455556666"},
        "pcieBusID": {"string": f"0000:{0x18 + 0x10 * i:02x}:00.0"}, "productName": {"string": "NVIDIA H100"}}}
        for i in range(n)]


def amd_gpus(n=8):
    return [{"name": f"gpu-{i + 1}-{128 + i}", "attributes": {
        "type": {"string": "amdgpu"}, "resource.kubernetes.io/pciBusID": {"string": f"0000:{0x05 + 0x10 * i:02x}:00.0"},
        "productName": {"string": "AMD Instinct MI300X"}}} for i in range(n)]


def ev(seq, check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_UNHEALTHY, message="2 uncorrectable"):
    return pb.Event(seq=seq, kind=pb.KIND_STATE, check=check, entity=entity, status=status,
                    severity=pb.SEVERITY_FATAL, message=message)


def rules(fk):
    return fk.list("devicetaintrules")


def tainted_devices(fk, node):
    """Devices of the node that a NoSchedule/NoExecute DeviceTaintRule selects (what the scheduler would skip)."""
    out = set()
    for s in fk.list("resourceslices"):
        if s["spec"].get("nodeName") != node:
            continue
        for d in s["spec"]["devices"]:
            for r in rules(fk):
                sel = r["spec"].get("deviceSelector") or {}
                if r["spec"]["taint"]["effect"] == "None":
                    continue
                if all(sel.get(k) in (None, v) for k, v in (("driver", s["spec"]["driver"]),
                                                            ("pool", s["spec"]["pool"]["name"]),
                                                            ("device", d["name"]))):
                    out.add(d["name"])
    return out


def allocatable(fk, node):
    names = {d["name"] for s in fk.list("resourceslices") if s["spec"].get("nodeName") == node
             for d in s["spec"]["devices"]}
    return names - tainted_devices(fk, node)


def cordoned(fk, node):
    obj = fk.get("nodes", node)
    return bool(obj["spec"].get("unschedulable")) or any(t["key"] == P.TAINT_KEY for t in obj["spec"].get("taints")
                                                         or [])


def condition(fk, node):
    obj = fk.get("nodes", node)
    return next((c for c in obj["status"].get("conditions") or [] if c["type"] == P.CONDITION), None)


def vigil_events(fk, reason=None):
    return [e for e in fk.list("events", "default") if e.get("source", {}).get("component") == "vigil-aggregator"
            and (reason is None or e["reason"] == reason)]


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(node="gpu-1", *, slices=(NV,), resource_versions=("v1", "v1beta2"), healthy_delay=2.0, **cfg):
        fk = FakeKube(resource_versions=resource_versions).start()
        token = agent_pod(fk, node, tmp_path).read_text()
        for drv in slices:
            fk.add_resource_slice(node, drv, nvidia_gpus() if drv == NV else amd_gpus())
        cfg.setdefault("devices", DeviceConfig(enabled=True))
        r = stream_replica(fk, policy=PolicyConfig(healthy_delay=healthy_delay, heartbeat_timeout=10), **cfg)
        a = RawAgent(r.port, token)
        made.append((fk, r, a))
        return fk, r, a
    yield make
    close_setups(made)


def test_one_bad_gpu_of_eight_keeps_seven_allocatable_and_is_released_after_healthy_delay(setup):
    fk, r, a = setup()
    fk.create("devicetaintrules", {"metadata": {"name": "human-maintenance"}, "spec": {
        "deviceSelector": {"driver": NV, "pool": "gpu-1", "device": "gpu-7"},
        "taint": {"key": "example.com/maintenance", "effect": "NoSchedule"}}})
    a.hello("gpu-1")
    assert a.batch([ev(1)]).seq == 1
    wait_for(lambda: "gpu-3" in tainted_devices(fk, "gpu-1"), 15, what="gpu-3 tainted")
    assert allocatable(fk, "gpu-1") == {f"gpu-{i}" for i in range(8)} - {"gpu-3", "gpu-7"}
    ours = [x for x in rules(fk) if dv.is_ours(x)]
    assert len(ours) == 1
    rule = ours[0]
    assert rule["apiVersion"] == "resource.k8s.io/v1"  # discovered: v1 is offered
    assert rule["spec"]["deviceSelector"] == {"driver": NV, "pool": "gpu-1", "device": "gpu-3"}
    assert rule["spec"]["taint"]["key"] == "vigil.dev/unhealthy" and rule["spec"]["taint"]["effect"] == "NoSchedule"
    assert json.loads(rule["metadata"]["annotations"][dv.RULE_ANNOTATION])["check"] == "gpu.ecc.uncorrectable"
    assert not cordoned(fk, "gpu-1")  # the node stays schedulable
    wait_for(lambda: (condition(fk, "gpu-1") or {}).get("status") == "False", 10, what="the condition")
    wait_for(lambda: vigil_events(fk, "VigilDeviceTainted"), 10, what="the Event")
    msg = vigil_events(fk, "VigilDeviceTainted")[0]["message"]
    assert "gpu-3" in msg and "other devices stay allocatable" in msg
    # the fault clears: after healthy_delay Vigil deletes its own rule, and only its own
    assert a.batch([ev(2, status=pb.STATUS_OK)]).seq == 2
    wait_for(lambda: not [x for x in rules(fk) if dv.is_ours(x)], 15, what="the rule released")
    assert [x["metadata"]["name"] for x in rules(fk)] == ["human-maintenance"]
    wait_for(lambda: vigil_events(fk, "VigilDeviceUntainted"), 10, what="the release Event")
    m = r.replica.metrics.actions
    assert m.get(("device_quarantine", "ok")) == 1 and m.get(("device_release", "ok")) == 1
    # what it called is what components/device-quarantine grants (devices.API_CALLS), beyond the core
    # (resourceclaims get: the pods holding the device, read when a pod has claims; none here)
    assert declared(dv) - {(dv.GROUP, "resourceclaims", "get")} <= seen_calls(fk) <= CORE_CALLS | declared(dv)


def test_a_node_wide_fault_still_cordons_the_node(setup):
    fk, r, a = setup()
    a.hello("gpu-1")
    a.batch([ev(1, check="gpu.count", entity="gpu-1", message="7 of 8 GPUs")])
    wait_for(lambda: cordoned(fk, "gpu-1"), 15, what="the node cordoned")
    assert not [x for x in rules(fk) if dv.is_ours(x)]


def test_v1beta2_is_used_where_the_server_offers_no_v1(setup):
    fk, r, a = setup(resource_versions=("v1beta2",))
    a.hello("gpu-1")
    a.batch([ev(1, entity="pci:0000:48:00.0")])  # gpu-3's bus address, the agent could not map it to an index
    wait_for(lambda: "gpu-3" in tainted_devices(fk, "gpu-1"), 15, what="gpu-3 tainted")
    assert fk.requests("POST", "/apis/resource.k8s.io/v1beta2/devicetaintrules")
    assert not fk.requests("POST", "/apis/resource.k8s.io/v1/devicetaintrules")
    assert not cordoned(fk, "gpu-1")


def test_without_the_api_the_node_is_quarantined_and_the_event_says_why(setup):
    fk, r, a = setup(resource_versions=(), slices=())
    a.hello("gpu-1")
    a.batch([ev(1)])
    wait_for(lambda: cordoned(fk, "gpu-1"), 15, what="the node cordoned")
    wait_for(lambda: vigil_events(fk, "VigilCordoned"), 10, what="the Event")
    assert "serves no DeviceTaintRule" in vigil_events(fk, "VigilCordoned")[0]["message"]


def test_an_amd_index_matches_no_device_and_falls_back_to_the_node(setup):
    """amd-smi's index is not the DRA driver's card index: no guess, the node is quarantined (never fail open)."""
    fk, r, a = setup(slices=(AMD,))
    a.hello("gpu-1")
    a.batch([ev(1, check="gpu.ras", entity="gpu2")])
    wait_for(lambda: cordoned(fk, "gpu-1"), 15, what="the node cordoned")
    assert not rules(fk)
    wait_for(lambda: vigil_events(fk, "VigilCordoned"), 10, what="the Event")
    assert "no device in the node's ResourceSlices matches gpu2" in vigil_events(fk, "VigilCordoned")[0]["message"]


def test_an_amd_bus_address_is_tainted_as_a_device(setup):
    fk, r, a = setup(slices=(AMD,))
    a.hello("gpu-1")
    a.batch([ev(1, check="gpu.ras", entity="pci:0000:25:00.0")])
    wait_for(lambda: tainted_devices(fk, "gpu-1") == {"gpu-3-130"}, 15, what="the AMD device tainted")
    assert not cordoned(fk, "gpu-1")


def test_dry_run_writes_no_rule(setup):
    fk, r, a = setup(dry_run=True)
    a.hello("gpu-1")
    a.batch([ev(1)])
    wait_for(lambda: r.replica.metrics.actions.get(("device_quarantine", "dry_run")), 15, what="the decision")
    assert not rules(fk) and not cordoned(fk, "gpu-1")
    assert not fk.requests("POST", "/apis/resource.k8s.io/v1/devicetaintrules")


def test_the_budget_counts_devices(setup):
    fk, r, a = setup(budget=BudgetConfig(max_nodes=2))
    a.hello("gpu-1")
    a.batch([ev(1, entity="gpu1"), ev(2, entity="gpu2"), ev(3, entity="gpu5")])
    wait_for(lambda: r.replica.metrics.actions.get(("device_quarantine", "refused_budget")), 15, what="a refusal")
    assert len(tainted_devices(fk, "gpu-1")) == 2
    assert r.replica.metrics.breaker_open


def test_noexecute_by_policy(setup):
    fk, r, a = setup(devices=DeviceConfig(enabled=True, effect="NoExecute"))
    a.hello("gpu-1")
    a.batch([ev(1, check="gpu.xid", entity="gpu0", message="Xid 79: GPU has fallen off the bus")])
    wait_for(lambda: rules(fk), 15, what="the rule")
    assert rules(fk)[0]["spec"]["taint"]["effect"] == "NoExecute"


def test_an_event_of_an_older_boot_writes_no_rule(setup):
    fk, r, a = setup()
    a.hello("gpu-1", boot="b2")
    a.batch([ev(1)], boot="b1")  # spooled before the reboot, sent after it
    a.batch([ev(2, check="gpu.temperature", entity="gpu0", status=pb.STATUS_OK)], boot="b2")
    wait_for(lambda: r.applied and r.applied[-1] == ("e1", 2), 10, what="both applied")
    r.run(lambda: None)
    assert not rules(fk) and not cordoned(fk, "gpu-1")


# -- matching, pure -------------------------------------------------------------------------------------------------
def slice_of(driver, devices, node="n"):
    return {"spec": {"driver": driver, "nodeName": node, "pool": {"name": node}, "devices": devices}}


def test_match_nvidia_index_takes_the_gpu_and_its_mig_devices():
    gpus = nvidia_gpus(2)
    mig = {"name": "gpu-1-mig-9-0-1", "attributes": {"parentUUID": gpus[1]["attributes"]["uuid"]}}
    targets, why = dv.match("gpu1", [slice_of(NV, gpus + [mig])])
    assert [t.device for t in targets] == ["gpu-1", "gpu-1-mig-9-0-1"] and why == ""
    targets, _ = dv.match("gpu1/3", [slice_of(NV, gpus)])  # a MIG instance's fault is its GPU's
    assert [t.device for t in targets] == ["gpu-1"]


def test_match_is_no_match_when_ambiguous_or_unknown():
    same_bus = [{"name": "a", "attributes": {"pcieBusID": {"string": "0000:18:00.0"}}},
                {"name": "b", "attributes": {"pciAddr": {"string": "0000:18:00.0"}}}]
    # one PCI address is one physical GPU: every device carrying it is that GPU or a partition of it (AMD's DRA
    # driver gives partitions their parent's resource.kubernetes.io/pciBusID), so all are taken, never none
    assert [t.device for t in dv.match("pci:0000:18:00.0", [slice_of("x.example.com", same_bus)])[0]] == ["a", "b"]
    parts = [{"name": f"gpu-3-13{i}", "attributes": {"type": {"string": "amdgpu-partition"},
                                                     "resource.kubernetes.io/pciBusID": {"string": "0000:5c:00.0"}}}
             for i in range(2)] + amd_gpus(1)
    assert [t.device for t in dv.match("gpu3", [slice_of(AMD, parts)], "0000:5c:00.0")[0]] == ["gpu-3-130", "gpu-3-131"]
    # a bus id no device publishes: the entity decides (NVIDIA's gpu-N), as for an older agent
    assert [t.device for t in dv.match("gpu1", [slice_of(NV, nvidia_gpus(2))], "0000:99:00.0")[0]] == ["gpu-1"]
    # and the bus id wins over the index where both would match
    assert [t.device for t in dv.match("gpu0", [slice_of(NV, nvidia_gpus(2))], "0000:28:00.0")[0]] == ["gpu-1"]
    # two whole GPUs named by one index stay ambiguous
    twice = [{"name": "gpu-a", "attributes": {"minor": {"int": 1}}}, {"name": "gpu-b", "attributes": {"minor": {"int": 1}}}]
    assert dv.match("gpu1", [slice_of("x.example.com", twice)])[0] == []
    assert dv.match("gpu9", [slice_of(NV, nvidia_gpus(2))]) == ([], "no device in the node's ResourceSlices "
                                                                 "matches gpu9")
    assert dv.match("hca0", [slice_of(NV, nvidia_gpus(2))])[0] == []


def test_scope_is_the_policys_per_check():
    cfg = DeviceConfig(enabled=True)
    assert dv.device_scoped("gpu.ecc.uncorrectable", "gpu3", cfg)
    assert dv.device_scoped("gpu.xid", "pci:0000:3b:00.0", cfg)
    for check, entity in (("gpu.count", "node"), ("gpu.smi_unresponsive", "gpu0"), ("rdma.port_state", "mlx5_0"),
                          ("gpu.ecc.uncorrectable", "node")):
        assert not dv.device_scoped(check, entity, cfg)
    assert not dv.device_scoped("gpu.xid", "gpu0", DeviceConfig(enabled=True, checks=("gpu.ecc.*",)))
    with pytest.raises(ValueError):
        DeviceConfig(effect="PreferNoSchedule")


_json = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.text(max_size=8),
                     lambda c: hs.lists(c, max_size=4) | hs.dictionaries(hs.text(max_size=8), c, max_size=4),
                     max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(entity=hs.text(max_size=30) | hs.sampled_from(["gpu0", "gpu3/1", "pci:0000:18:00.0"]),
       slices=hs.lists(_json | hs.fixed_dictionaries({"spec": hs.fixed_dictionaries(
           {"driver": hs.sampled_from([NV, AMD, 3]), "pool": _json | hs.just({"name": "n"}),
            "devices": hs.lists(_json | hs.fixed_dictionaries({"name": hs.text(max_size=6),
                                                                "attributes": _json}), max_size=4)})}), max_size=3))
def test_match_never_raises_on_hostile_slices(entity, slices):
    """A slice from the API server is trusted for shape only as far as it is checked: anything else is no match."""
    slices = [s for s in slices if isinstance(s, dict)]
    try:
        targets, why = dv.match(entity, slices)
    except (AttributeError, TypeError) as e:  # pragma: no cover - what this test guards against
        raise AssertionError(f"match raised {e!r}")
    assert bool(targets) != bool(why)


def test_a_refused_rule_quarantines_the_node_instead(setup):
    """A 403 (the RBAC was not given) or a 422 on the rule: the node is quarantined, never left as it was."""
    fk, r, a = setup()
    fk.faults.add("POST", "/devicetaintrules$", status=403, reason="Forbidden", message="forbidden", times=None)
    a.hello("gpu-1")
    a.batch([ev(1)])
    wait_for(lambda: cordoned(fk, "gpu-1"), 20, what="the node cordoned")
    wait_for(lambda: vigil_events(fk, "VigilCordoned"), 10, what="the Event")
    assert "refused DeviceTaintRule" in vigil_events(fk, "VigilCordoned")[0]["message"]


def test_unreadable_slices_quarantine_the_node(setup):
    fk, r, a = setup()
    fk.faults.add("GET", "/resourceslices$", status=500, times=None)
    a.hello("gpu-1")
    a.batch([ev(1)])
    wait_for(lambda: cordoned(fk, "gpu-1"), 30, what="the node cordoned")
