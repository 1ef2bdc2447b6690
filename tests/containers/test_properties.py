"""Property tests of the container source's parsers (issue 12, item 4): the OCI runtime spec, containerd
event envelopes, and the kubelet PodResources answer a snapshot stores.

Inputs: an OCI spec in the shape `ctr oci spec` prints (containerd's default, plus the GPU and RDMA device
nodes a device plugin adds), containerd events encoded with the generated classes of our wire-compatible
protos, and a PodResources List answer with NVIDIA UUIDs, AMD bus addresses and a DRA claim, as
tests/containers/test_attribution.py builds them. Each is broken in a few fields. Properties: parse_spec and
from_json never raise and keep what was not broken; events.decode raises nothing but protobuf's DecodeError
(the watcher skips that event)."""
from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from agent._proto.containerd.events import container_pb2, task_pb2
from agent._proto.containerd.types import event_pb2
from agent._proto.kubelet.podresources.v1 import api_pb2
from agent.sources.containers import events, podresources
from agent.sources.containers.attribution import keys_for_id, parse_spec
from tests.support.mutate import FAST, WEIRD_JSON, WEIRD_TEXT, apply, json_changes

SPEC = {
    "ociVersion": "1.1.0",
    "process": {"user": {"uid": 0, "gid": 0}, "args": ["python3", "train.py"], "cwd": "/",
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "NVIDIA_VISIBLE_DEVICES=GPU-4cff74a1-0000-1000-8019-b7e2a0d35f86,3"],
                "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                                 "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
                "noNewPrivileges": True},
    "root": {"path": "rootfs"},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec"]}],
    "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]},
              "devices": [{"path": "/dev/nvidia3", "type": "c", "major": 195, "minor": 3},
                          {"path": "/dev/dri/renderD128", "type": "c", "major": 226, "minor": 128},
                          {"path": "/dev/infiniband/uverbs0", "type": "c", "major": 231, "minor": 192}],
              "namespaces": [{"type": "pid"}, {"type": "network"}], "maskedPaths": ["/proc/kcore"]},
}
SPEC_BASE = parse_spec(json.dumps(SPEC))
spec_samples = st.one_of(
    json_changes(SPEC).map(lambda ch: ("dict", apply(SPEC, ch))),
    st.sampled_from(["[" * 100_000, '{"linux": []}', '{"process": {"env": 5}}', "null", "", "\xff", "{}"]).map(
        lambda t: ("text", t)),
)


def check_spec(sample) -> None:
    kind, spec = sample
    for raw in ((spec, json.dumps(spec).encode()) if kind == "dict" else (spec, spec.encode("utf-8", "surrogatepass"))):
        facts = parse_spec(raw)
        assert all(isinstance(p, str) for p in facts.device_paths)
        assert all(isinstance(v, str) for v in facts.visible_gpus)
        for v in facts.visible_gpus:
            keys_for_id(v, nvidia_index=True)


@FAST
@given(spec_samples)
def test_oci_spec_never_raises(sample):
    check_spec(sample)


def test_one_bad_device_entry_costs_that_entry():
    spec = json.loads(json.dumps(SPEC))
    spec["linux"]["devices"][0]["path"] = 10**400
    spec["process"]["capabilities"] = ["CAP_SYS_ADMIN"]  # a list where an object belongs
    facts = parse_spec(spec)
    assert facts.device_paths == SPEC_BASE.device_paths[1:] and facts.visible_gpus == SPEC_BASE.visible_gpus


# -- containerd events ------------------------------------------------------------------------------------
MESSAGES = [task_pb2.TaskExit(container_id="c1", id="c1", pid=4242, exit_status=137),
            task_pb2.TaskOOM(container_id="c1"), task_pb2.TaskStart(container_id="c1", pid=4242),
            task_pb2.TaskDelete(container_id="c1", pid=4242, exit_status=1),
            task_pb2.TaskExecAdded(container_id="c1", exec_id="e1"),
            container_pb2.ContainerCreate(id="c1"), container_pb2.ContainerDelete(id="c1")]


def envelope(type_url: str, value: bytes) -> event_pb2.Envelope:
    e = event_pb2.Envelope(namespace="k8s.io", topic="/tasks/exit")
    e.event.type_url, e.event.value = type_url, value
    return e


@st.composite
def event_samples(draw):
    m = draw(st.sampled_from(MESSAGES))
    raw = bytearray(m.SerializeToString())
    for _ in range(draw(st.integers(0, 4))):
        if raw and draw(st.booleans()):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        else:
            raw[draw(st.integers(0, len(raw))):0] = draw(st.binary(max_size=12))
    url = draw(st.one_of(st.just(f"containerd.events.{m.DESCRIPTOR.name}"), st.sampled_from(sorted(events.KINDS)),
                         WEIRD_TEXT.map(lambda t: t.encode("utf-8", "replace").decode())))  # protobuf text is UTF-8
    return url, bytes(raw)


def check_event(sample) -> None:
    url, raw = sample
    try:
        ev = events.decode(envelope(url, raw))
    except DecodeError:  # documented: the watcher logs and skips an undecodable event
        return
    assert ev.kind in set(events.KINDS.values()) | {"other"}


@FAST
@given(event_samples())
def test_containerd_event_decode_raises_only_decode_error(sample):
    check_event(sample)


def test_valid_events_still_decode_the_same():
    ev = events.decode(envelope("containerd.events.TaskExit", MESSAGES[0].SerializeToString()))
    assert (ev.kind, ev.container_id, ev.pid, ev.exit_status) == ("task_exit", "c1", 4242, 137)


# -- PodResources ------------------------------------------------------------------------------------------
def _response() -> dict:
    r = api_pb2.ListPodResourcesResponse()
    p = r.pod_resources.add(name="train-0", namespace="ml")
    c = p.containers.add(name="worker")
    c.devices.add(resource_name="nvidia.com/gpu", device_ids=["GPU-4cff74a1-0000-1000-8019-b7e2a0d35f86::2", "3"])
    p = r.pod_resources.add(name="infer-1", namespace="serve")
    c = p.containers.add(name="server")
    c.devices.add(resource_name="amd.com/gpu", device_ids=["0000:0c:00.0"])
    p = r.pod_resources.add(name="dra-2", namespace="ml")
    c = p.containers.add(name="main")
    d = c.dynamic_resources.add(claim_name="gpu", claim_namespace="ml")
    cr = d.claim_resources.add(driver_name="gpu.nvidia.com", device_name="gpu-1")
    cr.cdi_devices.add(name="k8s.gpu.nvidia.com/device=GPU-e7ff74a1-0000-1000-80a2-0d5c913b48f1")
    return json.loads(json_format.MessageToJson(r))


PODS = _response()
PODS_BASE = podresources.from_json(json.dumps(PODS))
pod_samples = json_changes(PODS, allowed=lambda p: len(p) > 2)


def check_pods(changes) -> None:
    doc = apply(PODS, changes)
    allocations = podresources.from_json(json.dumps(doc))
    broken = {c.path[1] for c in changes}  # the pods a change reached
    untouched = {PODS["podResources"][i]["name"] for i in range(len(PODS["podResources"])) if i not in broken}
    kept = [a for a in PODS_BASE if a.ref.pod in untouched]
    assert [a for a in allocations if a.ref.pod in untouched] == kept
    for a in allocations:
        keys_for_id(a.device_id, nvidia_index=True)


@FAST
@given(pod_samples)
def test_pod_resources_never_raise_and_one_pod_costs_one_pod(changes):
    check_pods(changes)


TARGETS = {
    "OCI spec": (spec_samples, check_spec),
    "containerd events": (event_samples(), check_event),
    "PodResources": (pod_samples, check_pods),
}
