"""An AMD "gpuN" maps to its DRA device by the PCI bus address the agent sends with it (Event.bus_id, Problem.bus_id:
issue 14). amd-smi's index names no DRA device (AMD's DRA driver names devices gpu-<card>-<render>), so without the
address an AMD device fault falls back to the node; with it, one bad GPU of eight keeps seven allocatable.

End to end: the real agent process replaying fixture node mi300x-faulty (8x MI300X, GPU 3 at 0000:5c:00.0 with 2
uncorrectable ECC errors) over real gRPC to an aggregator replica, against the project's faithful fake API server
(agent/fakekube: ResourceSlices and DeviceTaintRules, through the official kubernetes client), with a ResourceSlice
shaped as AMD's DRA driver publishes it (driver gpu.amd.com, devices gpu-<card>-<render>, attribute
resource.kubernetes.io/pciBusID; ROCm/k8s-gpu-dra-driver docs "Device Attributes and Capabilities"). An older agent
(no bus_id: a hand-driven stream) keeps the old behaviour, and a malformed bus id costs that field only."""
from __future__ import annotations

import json

import pytest

from agent import wire
from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import devices as dv
from agent.aggregator import intake
from agent.aggregator.devices import DeviceConfig
from agent.aggregator.policy import PolicyConfig
from agent.fakekube import FakeKube

from .helpers import RawAgent, agent_pod, start_agent, stop, stream_replica, wait_for
from .test_devices import allocatable, cordoned, tainted_devices

AMD = "gpu.amd.com"
NODE = "mi300x-c14-faulty"
FIXTURE_BUS = ["0000:0c:00.0", "0000:22:00.0", "0000:38:00.0", "0000:5c:00.0", "0000:9f:00.0", "0000:af:00.0",
               "0000:bf:00.0", "0000:df:00.0"]  # fixtures/nodes/mi300x-faulty/amd-smi/list.json, gpu 0..7


def amd_slice(pci_attr="resource.kubernetes.io/pciBusID"):
    # card/render indices deliberately unlike amd-smi's (card 1.., renderD 128..): only the address can join them
    return [{"name": f"gpu-{i + 1}-{128 + i}", "attributes": {
        "type": {"string": "amdgpu"}, pci_attr: {"string": bus}, "productName": {"string": "AMD Instinct MI300X"}}}
        for i, bus in enumerate(FIXTURE_BUS)]


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(pci_attr="resource.kubernetes.io/pciBusID"):
        fk = FakeKube().start()
        token = agent_pod(fk, NODE, tmp_path)
        fk.add_resource_slice(NODE, AMD, amd_slice(pci_attr))
        r = stream_replica(fk, policy=PolicyConfig(healthy_delay=30.0, heartbeat_timeout=30),
                           devices=DeviceConfig(enabled=True))
        made.append((fk, r))
        return fk, r, token
    yield make
    for fk, r in made:
        r.stop()
        fk.close()


@pytest.mark.parametrize("pci_attr", ["resource.kubernetes.io/pciBusID", "pciAddr"])
def test_an_amd_node_with_one_bad_gpu_keeps_seven_allocatable(cluster, tmp_path, pci_attr):
    fk, r, token = cluster(pci_attr)
    log = open(tmp_path / "agent.log", "w")
    proc = start_agent("mi300x-faulty", NODE, f"127.0.0.1:{r.port}", tmp_path / "spool.db", token, log)
    try:
        wait_for(lambda: tainted_devices(fk, NODE), 40, what="a device tainted")
        assert tainted_devices(fk, NODE) == {"gpu-4-131"}  # the device at 0000:5c:00.0, amd-smi's gpu3
        assert len(allocatable(fk, NODE)) == 7
        assert not cordoned(fk, NODE)
        rule = next(x for x in fk.list("devicetaintrules") if dv.is_ours(x))
        rec = json.loads(rule["metadata"]["annotations"][dv.RULE_ANNOTATION])
        assert (rec["check"], rec["entity"]) == ("gpu.ecc.uncorrectable", "gpu3")
    finally:
        stop(proc)


def ev(seq, bus_id=""):
    return pb.Event(seq=seq, kind=pb.KIND_STATE, check="gpu.ecc.uncorrectable", entity="gpu3",
                    status=pb.STATUS_UNHEALTHY, severity=pb.SEVERITY_FATAL, message="2 uncorrectable", bus_id=bus_id)


def test_an_older_agent_without_bus_id_still_falls_back_to_the_node(cluster):
    fk, r, token = cluster()
    a = RawAgent(r.port, token.read_text())
    try:
        a.hello(NODE)
        assert a.batch([ev(1)]).seq == 1
        wait_for(lambda: cordoned(fk, NODE), 15, what="the node quarantined instead")
        assert not tainted_devices(fk, NODE)
    finally:
        a.close()


def test_a_malformed_bus_id_is_dropped_alone_and_the_event_still_quarantines(cluster):
    fk, r, token = cluster()
    a = RawAgent(r.port, token.read_text())
    try:
        a.hello(NODE)
        assert a.batch([ev(1, bus_id="not-a-pci-address" * 10)]).seq == 1  # applied, not refused
        wait_for(lambda: cordoned(fk, NODE), 15, what="the node quarantined (the entity alone maps to nothing)")
        assert r.replica.engine.metrics.truncated.get("bus_id") == 1
    finally:
        a.close()


def test_a_digest_carries_the_bus_id_and_a_restarted_agents_digest_keeps_it(cluster):
    """Hello's digest (a new leader, a reconnect) maps the device too; a later digest without the address (an agent
    restarted before its first GPU cycle) keeps the one the aggregator learnt for the same boot."""
    fk, r, token = cluster()
    a = RawAgent(r.port, token.read_text())
    try:
        p = pb.Problem(check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_UNHEALTHY,
                       severity=pb.SEVERITY_FATAL, message="2 uncorrectable", bus_id="0000:5C:00.0")
        a.hello(NODE, digest=[p])
        wait_for(lambda: tainted_devices(fk, NODE) == {"gpu-4-131"}, 15, what="the device tainted from the digest")
        node = r.replica.engine.nodes[NODE]
        assert next(iter(node.problems.values())).bus_id == "0000:5c:00.0"  # normalised at intake
        seen = node.last_seen
        a.send(heartbeat=pb.Heartbeat(digest=[pb.Problem(check=p.check, entity=p.entity, status=p.status,
                                                         severity=p.severity, message=p.message)]))
        wait_for(lambda: r.replica.engine.nodes[NODE].last_seen != seen, 5, what="the heartbeat applied")
        assert next(iter(r.replica.engine.nodes[NODE].problems.values())).bus_id == "0000:5c:00.0"
        assert not cordoned(fk, NODE)
    finally:
        a.close()


def test_the_wire_and_intake_bound_the_bus_id():
    e = wire.event_message(1, "state", "gpu.xid", "gpu", "gpu3", "unhealthy", "fatal", "Xid 79",
                           bus_id="0000:5c:00.0")
    assert e.bus_id == "0000:5c:00.0"
    assert wire.event_message(1, "state", "gpu.xid", "gpu", "gpu3", "unhealthy", "fatal", "m").bus_id == ""
    cut = []
    assert intake.bus_id("00000000:5C:00.0", cut.append) == "0000:5c:00.0"  # NVML's spelling
    assert intake.bus_id("gpu3", cut.append) == "" and cut == ["bus_id"]
    assert intake.bus_id("0" * 100_000, cut.append) == ""
