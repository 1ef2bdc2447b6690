"""A device drain on a device-plugin cluster (issue 14): pods that request nvidia.com/gpu have no DRA claim, so the
aggregator cannot read which GPU each holds; the node's agent can (the kubelet's PodResources) and names them
(Event.holders / Problem.holders). `--drain ml=device` then evicts just the pods on the sick GPU, PDBs holding;
every name is checked against the API (a running GPU pod the API lists on that node) before anything is done to
it, so a name pointing to another node's pod, a pod that does not exist or a CPU pod is refused and reported.
An older agent (no holders): the pods stay and the Event says they are unattributable, as before.

End to end over real gRPC on loopback (a hand-driven agent stream) against the project's faithful fake API server
(agent/fakekube: Pods with ownerReferences and nodeName, PodDisruptionBudgets and the Eviction subresource answering
429 when the budget forbids), through the official kubernetes client. No ResourceSlices: a device-plugin node."""
from __future__ import annotations

import json
import os
import time

import pytest

from agent import wire
from agent._proto.vigil.v1 import health_pb2 as pb
from agent.aggregator import blast as bl
from agent.aggregator import drain as dr
from agent.aggregator import intake
from agent.aggregator.devices import DeviceConfig
from agent.aggregator.drain import DrainConfig
from agent.aggregator.policy import PolicyConfig
from agent.fakekube import FakeKube

from .helpers import RawAgent, agent_pod, close_setups, events_with_reason, stream_replica, wait_for
from .test_devices import NV, nvidia_gpus, tainted_devices
from .test_drain import GPU, dra_pod

NODE = "gpu-1"


def ev(seq, holders=(), check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_UNHEALTHY):
    return pb.Event(seq=seq, kind=pb.KIND_STATE, check=check, entity=entity, status=status,
                    severity=pb.SEVERITY_FATAL, message="2 uncorrectable ECC errors", holders=list(holders))


@pytest.fixture
def setup(tmp_path):
    made = []

    def make(rules=("ml=device",), deadline=30.0, dry_run=False, slices=False):
        fk = FakeKube().start()
        token = agent_pod(fk, NODE, tmp_path).read_text()
        if slices:
            fk.add_resource_slice(NODE, NV, nvidia_gpus())
        r = stream_replica(fk, policy=PolicyConfig(healthy_delay=30.0, heartbeat_timeout=30), dry_run=dry_run,
                           devices=DeviceConfig(enabled=slices),
                           drain=DrainConfig(DrainConfig.parse(rules), deadline, retry=0.3))
        a = RawAgent(r.port, token, timeout=60)
        a.hello(NODE)
        made.append((fk, r, a))
        return fk, r, a
    yield make
    close_setups(made)


events = events_with_reason


def evictions(fk, ns, name):
    return fk.requests("POST", f"/api/v1/namespaces/{ns}/pods/{name}/eviction")


def plugin_pods(fk):
    """Four device-plugin pods on the node (GPU3 holds two of them), one on another node."""
    fk.add_pod("ml", "train-3", node_name=NODE, owner=("PyTorchJob", "bert"), containers=GPU)
    fk.add_pod("ml", "infer-7f9c-x3", node_name=NODE, owner=("ReplicaSet", "infer-7f9c"), containers=GPU,
               labels={"pod-template-hash": "7f9c", "app": "infer"})
    fk.add_pod("ml", "train-5", node_name=NODE, owner=("PyTorchJob", "bert"), containers=GPU)  # GPU5: healthy
    fk.add_pod("ml", "etl", node_name=NODE, owner=("Job", "etl"))  # no GPU
    fk.add_pod("ml", "elsewhere", node_name="gpu-2", owner=("Job", "other"), containers=GPU)


def test_only_the_pods_on_the_bad_gpu_are_evicted_and_a_pdb_delays_one(setup):
    fk, r, a = setup()
    plugin_pods(fk)
    fk.create("poddisruptionbudgets", {"metadata": {"name": "infer", "namespace": "ml"},
                                       "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "infer"}}}},
              namespace="ml")
    a.batch([ev(1, holders=["ml/train-3", "ml/infer-7f9c-x3"])])
    wait_for(lambda: fk.get("pods", "train-3", "ml") is None, 20, what="train-3 evicted")
    assert fk.get("nodes", NODE)["spec"].get("unschedulable")  # no DRA device to taint: the node is cordoned
    start = events(fk, "VigilDrainStarted")[0]["message"]
    assert "ml/train-3 (PyTorchJob bert)" in start and "ml/infer-7f9c-x3 (Deployment infer)" in start
    assert "PodResources" in start and "ml/train-5" not in start
    time.sleep(1.0)  # its budget forbids the disruption: 429, waited on, not forced
    assert fk.get("pods", "infer-7f9c-x3", "ml") is not None
    assert fk.requests("POST", "/api/v1/namespaces/ml/pods/infer-7f9c-x3/eviction", status=429)
    fk.add_pod("ml", "infer-new", node_name="gpu-2", labels={"app": "infer"})  # a replacement is ready elsewhere
    wait_for(lambda: fk.get("pods", "infer-7f9c-x3", "ml") is None, 20, what="infer evicted after the PDB allowed")
    wait_for(lambda: events(fk, "VigilDrainFinished"), 10, what="the end Event")
    end = events(fk, "VigilDrainFinished")[0]["message"]
    assert "ml/train-3 (PyTorchJob bert)" in end and "attribution: PodResources" in end
    for kept in ("train-5", "etl", "elsewhere"):  # a healthy GPU's pod, a CPU pod, another node's pod
        assert fk.get("pods", kept, "ml") is not None and not evictions(fk, "ml", kept)
    record = json.loads(fk.get("nodes", NODE)["metadata"]["annotations"][dr.ANNOTATION])
    assert {p["pod"]: (p["state"], p.get("via")) for p in record["pods"]} == {
        "ml/train-3": ("evicted", "PodResources"), "ml/infer-7f9c-x3": ("evicted", "PodResources")}
    # the cordon's Event names every GPU pod of the node, and which of them are on the sick GPU
    cordon = events(fk, "VigilCordoned")[0]["message"]
    assert "On the sick GPU per the node's PodResources: ml/infer-7f9c-x3, ml/train-3" in cordon
    assert "ml/train-5 (PyTorchJob bert)" in cordon


def test_a_holder_that_is_no_gpu_pod_of_the_node_is_refused(setup):
    """The agent's word alone never evicts: another node's pod, a missing pod and a CPU pod are refused."""
    fk, r, a = setup()
    plugin_pods(fk)
    a.batch([ev(1, holders=["ml/elsewhere", "ml/ghost", "ml/etl", "ml/train-3"])])
    wait_for(lambda: events(fk, "VigilDrainFinished"), 20, what="the end Event")
    assert fk.get("pods", "train-3", "ml") is None
    for name in ("elsewhere", "etl", "train-5", "infer-7f9c-x3"):
        assert fk.get("pods", name, "ml") is not None and not evictions(fk, "ml", name)
    assert not evictions(fk, "ml", "ghost")
    end = events(fk, "VigilDrainFinished")[0]["message"]
    assert "refused 3 pod name(s)" in end and "ml/elsewhere" in end and "ml/ghost" in end
    record = json.loads(fk.get("nodes", NODE)["metadata"]["annotations"][dr.ANNOTATION])
    assert record["refused"] == ["ml/elsewhere", "ml/etl", "ml/ghost"]
    assert "Refused 3 pod name(s)" in events(fk, "VigilCordoned")[0]["message"]


def test_when_every_holder_name_is_refused_the_other_gpu_pods_are_unattributable_not_healthy(setup):
    """An agent whose every name is wrong has attributed nothing: the node's real GPU pods must not be read as
    on a healthy GPU (that would hide them); they are kept and reported as unattributable, as with no names."""
    fk, r, a = setup()
    plugin_pods(fk)
    a.batch([ev(1, holders=["ml/ghost", "ml/elsewhere"])])
    wait_for(lambda: events(fk, "VigilDrainFinished"), 20, what="the end Event")
    for name in ("train-3", "infer-7f9c-x3", "train-5"):
        assert fk.get("pods", name, "ml") is not None and not evictions(fk, "ml", name)
    end = events(fk, "VigilDrainFinished")[0]["message"]
    assert "refused 2 pod name(s)" in end
    assert "Kept, unattributable" in end and "ml/train-3 (PyTorchJob bert)" in end and "ml/train-5" in end
    cordon = events(fk, "VigilCordoned")[0]["message"]
    assert "Refused 2 pod name(s)" in cordon and "Pods affected (3)" in cordon  # node scope: every GPU pod


def test_an_older_agent_without_holders_keeps_the_pods_and_says_unattributable(setup):
    fk, r, a = setup()
    plugin_pods(fk)
    a.batch([ev(1)])
    wait_for(lambda: events(fk, "VigilDrainFinished"), 20, what="the end Event")
    for name in ("train-3", "infer-7f9c-x3", "train-5"):
        assert fk.get("pods", name, "ml") is not None and not evictions(fk, "ml", name)
    end = events(fk, "VigilDrainFinished")[0]["message"]
    assert "Kept, unattributable (no DRA claim, and the node's agent named no holder" in end
    assert "ml/train-3 (PyTorchJob bert)" in end and "ml/infer-7f9c-x3 (Deployment infer)" in end
    record = json.loads(fk.get("nodes", NODE)["metadata"]["annotations"][dr.ANNOTATION])
    assert sorted(record["unattributed"]) == ["ml/infer-7f9c-x3", "ml/train-3", "ml/train-5"]


def test_a_malformed_holder_name_is_dropped_alone(setup):
    fk, r, a = setup()
    plugin_pods(fk)
    a.batch([ev(1, holders=["ML/Train-3", "ml/train-3/main", "ml/" + "x" * 400, "ml/", "ml/infer-7f9c-x3"])])
    wait_for(lambda: fk.get("pods", "infer-7f9c-x3", "ml") is None, 20, what="the well-formed holder evicted")
    assert r.replica.engine.nodes[NODE].problems[("gpu.ecc.uncorrectable", "gpu3")].holders == ("ml/infer-7f9c-x3",)
    assert fk.get("pods", "train-3", "ml") is not None  # its names were malformed: not attributed, not guessed
    assert r.replica.engine.metrics.truncated.get("holder", 0) >= 4


def test_holders_that_arrive_in_a_later_digest_are_drained(setup):
    """The agent's first event can precede its PodResources read; the next heartbeat's digest names the pods."""
    fk, r, a = setup()
    plugin_pods(fk)
    a.batch([ev(1)])
    wait_for(lambda: events(fk, "VigilDrainFinished"), 20, what="the first drain (nothing attributable)")
    assert fk.get("pods", "train-3", "ml") is not None
    a.send(heartbeat=pb.Heartbeat(digest_seq=1, digest=[pb.Problem(
        check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_UNHEALTHY, severity=pb.SEVERITY_FATAL,
        message="2 uncorrectable ECC errors", holders=["ml/train-3"])]))
    wait_for(lambda: fk.get("pods", "train-3", "ml") is None, 20, what="train-3 evicted on the digest's holders")
    assert fk.get("pods", "train-5", "ml") is not None
    # a digest without the names again (the agent restarted) drains nothing more, and says nothing more
    n = len(events(fk, "VigilDrainFinished"))
    a.send(heartbeat=pb.Heartbeat(digest_seq=1, digest=[pb.Problem(
        check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_UNHEALTHY, severity=pb.SEVERITY_FATAL,
        message="2 uncorrectable ECC errors")]))
    time.sleep(1.5)
    assert len(events(fk, "VigilDrainFinished")) == n


def test_a_dra_node_names_claim_pods_and_plugin_pods_by_their_attribution(setup):
    """A node with a DRA driver: the claim decides for a pod with claims (DRA first), PodResources for the rest."""
    fk, r, a = setup(slices=True)
    dra_pod(fk, "ml", "dra-3", NODE, "gpu-3", owner=("Job", "dra"))
    dra_pod(fk, "ml", "dra-5", NODE, "gpu-5", owner=("Job", "dra5"))
    fk.add_pod("ml", "plugin-3", node_name=NODE, owner=("Job", "plug"), containers=GPU)
    fk.add_pod("ml", "plugin-5", node_name=NODE, owner=("Job", "plug5"), containers=GPU)
    # the agent (wrongly) names dra-5 too: its claim says GPU5, and the claim wins
    a.batch([ev(1, holders=["ml/plugin-3", "ml/dra-5"])])
    wait_for(lambda: fk.get("pods", "plugin-3", "ml") is None and fk.get("pods", "dra-3", "ml") is None, 20,
             what="the pods on GPU3 evicted")
    assert tainted_devices(fk, NODE) == {"gpu-3"}
    for name in ("dra-5", "plugin-5"):
        assert fk.get("pods", name, "ml") is not None and not evictions(fk, "ml", name)
    wait_for(lambda: events(fk, "VigilDeviceTainted"), 10, what="the device Event")
    msg = events(fk, "VigilDeviceTainted")[0]["message"]
    assert "ml/dra-3 (Job dra)" in msg and "ml/plugin-3 (Job plug)" in msg and "ml/plugin-5" not in msg
    assert "attribution: DRA claim, PodResources" in msg and "unattributable" not in msg
    rec = json.loads(fk.get("nodes", NODE)["metadata"]["annotations"][bl.ANNOTATION])
    assert rec["attribution"] == ["DRA claim", "PodResources"] and rec["unattributed"] == 0


def test_the_wire_and_intake_bound_the_holders():
    names = [f"ml/pod-{i}" for i in range(40)]
    e = wire.event_message(1, "state", "gpu.ecc.uncorrectable", "gpu", "gpu3", "unhealthy", "fatal", "m",
                           holders=names + ["ml/" + "p" * 400])
    assert list(e.holders) == names[:wire.MAX_HOLDERS]
    p = wire.problem_message("c", "gpu3", "unhealthy", "fatal", "m", holders=["a/" + "b" * 400])
    assert len(p.holders[0]) == wire.LIMITS["holder"] and p.holders[0].endswith("...")
    cut = []
    assert intake.holders(list(p.holders), cut.append) == () and cut == ["holder"]
    assert intake.holders(["ml/a.b-c", "ml/a..b", "ml/-a", "kube-system/x", "ml/a.b-c"]) == ("ml/a.b-c",
                                                                                              "kube-system/x")
    many = [f"ml/p{i}" for i in range(30)]
    cut = []
    assert intake.holders(many, cut.append) == tuple(many[:wire.MAX_HOLDERS]) and cut == ["holders"]


UUID = "GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36"  # the H100 of fixtures/nodes/h100-row-remap-pending


def test_a_real_agent_names_the_pod_on_its_bad_gpu_from_podresources(setup, tmp_path, monkeypatch):
    """A real agent process (GPU source reading a fake nvidia-smi on PATH that prints the h100-row-remap-pending
    fixture, an uncorrectable ECC error on gpu0; containers source reading a fake kubelet PodResources gRPC server
    on a unix socket, tests/containers/helpers.py) streams to a real aggregator: the fatal state event itself names
    the pod the device plugin gave that GPU, and `--drain ml=device` evicts it and only it."""
    import stat
    import subprocess
    import sys

    from tests.containers.helpers import PodResources
    from tests.support import ROOT

    from .helpers import stop

    seen = []
    real = intake.read_event

    def recording(e, cursor, cut=intake._no_cut):  # what the aggregator read off the wire, event by event
        got = real(e, cursor, cut)
        if isinstance(got, intake.IncomingEvent):
            seen.append(got)
        return got
    monkeypatch.setattr(intake, "read_event", recording)
    fk, r, a = setup()
    a.close()  # the hand-driven stream only made the node known; the real agent streams now
    fk.add_pod("ml", "train-0", node_name=NODE, owner=("PyTorchJob", "bert"), containers=GPU)
    fk.add_pod("ml", "other", node_name=NODE, owner=("Job", "other"), containers=GPU)
    pr = PodResources(str(tmp_path / "kubelet.sock"))
    pr.set({("ml", "train-0"): {"main": [("nvidia.com/gpu", [UUID])]},
            ("ml", "other"): {"main": [("nvidia.com/gpu", ["GPU-00000000-0000-4000-8000-000000000001"])]}})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-smi"
    xml = ROOT / "fixtures" / "nodes" / "h100-row-remap-pending" / "nvidia-smi" / "q.xml"
    tool.write_text(f'#!/bin/sh\ncat "{xml}"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "sys").mkdir()
    cfg = tmp_path / "agent.yaml"
    # raise_after 5: the fault is sent from the GPU source's fifth cycle (1 s apart), well after the containers
    # source's first read (which pays the grpc import; with 2, a loaded machine sent the fault before it once)
    cfg.write_text(json.dumps({
        "gpu": {"backend": "nvidia-smi", "interval_seconds": 1},
        "containers": {"socket": str(tmp_path / "no-containerd.sock"),
                       "pod_resources_socket": str(tmp_path / "kubelet.sock"), "interval_seconds": 1},
        "stream": {"raise_after": 5}}))
    token = tmp_path / f"token-{NODE}"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "agent.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(cfg), "--sysfs", str(tmp_path / "sys"),
         "--node-name", NODE, "--only", "gpu,containers", "--listen", "127.0.0.1:0",
         "--aggregator", f"127.0.0.1:{r.port}", "--spool", str(tmp_path / "spool.db"), "--token-file", str(token)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: fk.get("pods", "train-0", "ml") is None, 40, what="the pod on the bad GPU evicted")
        fatal = [e for e in seen if e.check == "gpu.ecc.uncorrectable" and e.status == "unhealthy"]
        assert fatal and fatal[0].entity == "gpu0" and fatal[0].holders == ("ml/train-0",), \
            (fatal, (tmp_path / "agent.log").read_text()[-2000:])
        assert fatal[0].bus_id == "0000:00:06.0"
        wait_for(lambda: events(fk, "VigilDrainFinished"), 20, what="the end Event")
        assert "ml/train-0 (PyTorchJob bert)" in events(fk, "VigilDrainFinished")[0]["message"]
        assert fk.get("pods", "other", "ml") is not None and not evictions(fk, "ml", "other")
        assert not [e for e in seen if e.check != "gpu.ecc.uncorrectable" and e.holders and e.entity != "gpu0"]
    finally:
        stop(proc)
        log.close()
        pr.stop()


def test_claim_pods_on_a_gpu_that_maps_to_no_dra_device_go_by_the_holders(setup):
    """Device quarantine off (the GPU maps to no DRA device): a pod's claims cannot say whether it holds the sick
    GPU, so the agent's PodResources names decide, as for a device-plugin pod."""
    fk, r, a = setup(slices=False)
    fk.add_resource_slice(NODE, NV, nvidia_gpus())  # a DRA driver publishes, but Vigil taints no device here
    dra_pod(fk, "ml", "dra-3", NODE, "gpu-3", owner=("Job", "dra"))
    dra_pod(fk, "ml", "dra-5", NODE, "gpu-5", owner=("Job", "dra5"))
    a.batch([ev(1, holders=["ml/dra-3"])])
    wait_for(lambda: fk.get("pods", "dra-3", "ml") is None, 20, what="dra-3 evicted")
    wait_for(lambda: events(fk, "VigilDrainFinished"), 10, what="the end Event")
    assert fk.get("pods", "dra-5", "ml") is not None and not evictions(fk, "ml", "dra-5")
    assert "attribution: PodResources" in events(fk, "VigilDrainFinished")[0]["message"]


def test_holders_in_a_reconnecting_agents_hello_are_drained(setup, tmp_path):
    fk, r, a = setup()
    plugin_pods(fk)
    a.batch([ev(1)])
    wait_for(lambda: events(fk, "VigilDrainFinished"), 20, what="the first drain (nothing attributable)")
    a.close()
    b = RawAgent(r.port, (tmp_path / f"token-{NODE}").read_text(), timeout=60)
    try:
        b.hello(NODE, digest=[pb.Problem(check="gpu.ecc.uncorrectable", entity="gpu3", status=pb.STATUS_UNHEALTHY,
                                         severity=pb.SEVERITY_FATAL, message="2 uncorrectable ECC errors",
                                         holders=["ml/infer-7f9c-x3"])], digest_seq=1)
        wait_for(lambda: fk.get("pods", "infer-7f9c-x3", "ml") is None, 20, what="the Hello's holder evicted")
        assert fk.get("pods", "train-3", "ml") is not None
    finally:
        b.close()
