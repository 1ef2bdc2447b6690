"""kubelet PodResources API v1 (List) over its unix socket, flattened to one Allocation per device.

The DaemonSet mounts /var/lib/kubelet/pod-resources (the directory: a bind-mounted socket file goes stale
when the kubelet restarts). A snapshot stores the List answer as protobuf JSON in DIR/containers/pod-resources.json.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from agent._proto.kubelet.podresources.v1 import api_pb2
from .model import PodRef


@dataclass(frozen=True)
class Allocation:
    ref: PodRef
    resource: str  # device plugin resource name, or the DRA driver
    device_id: str  # the plugin's device id, or the DRA device name
    source: str  # device-plugin | dra
    match_text: tuple[str, ...]  # every string that may name the device (the id; a DRA device's CDI names)


def flatten(resp: api_pb2.ListPodResourcesResponse) -> list[Allocation]:
    out = []
    for pod in resp.pod_resources:
        for c in pod.containers:
            ref = PodRef(pod.namespace, pod.name, c.name)
            for dev in c.devices:
                out += [Allocation(ref, dev.resource_name, i, "device-plugin", (i,)) for i in dev.device_ids]
            for dr in c.dynamic_resources:
                for cr in dr.claim_resources:
                    cdi = tuple(d.name for d in cr.cdi_devices)
                    name = cr.device_name or (cdi[0] if cdi else "")
                    if not name:
                        continue
                    resource = cr.driver_name or f"claim:{dr.claim_namespace}/{dr.claim_name}"
                    out.append(Allocation(ref, resource, name, "dra", tuple(dict.fromkeys((name, *cdi)))))
    return out


def list_allocations(socket: str, timeout: float) -> list[Allocation]:
    # grpc only here: a snapshot replay (from_json) never loads it, which is 10 MB of the agent's RSS (issue 15)
    import grpc

    from agent._proto.kubelet.podresources.v1 import api_pb2_grpc

    channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.max_receive_message_length", 16 << 20)])
    try:
        resp = api_pb2_grpc.PodResourcesListerStub(channel).List(api_pb2.ListPodResourcesRequest(), timeout=timeout)
    finally:
        channel.close()
    return flatten(resp)


def from_json(text: str) -> list[Allocation]:
    """A snapshot's List answer. Pod by pod: a pod entry that does not fit the message (a number where a
    name belongs, an unknown field) costs that pod, not every pod's attribution. Raises ValueError only when
    the text is not a JSON object with a podResources list at all."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ValueError("pod-resources JSON nested too deep") from None
    pods = doc.get("podResources", doc.get("pod_resources")) if isinstance(doc, dict) else None
    if pods is None and isinstance(doc, dict) and not doc:
        pods = []  # an empty answer: no pod holds anything
    if not isinstance(pods, list):
        raise ValueError("pod-resources JSON: no podResources list")
    # Here only: json_format (and the text_format it loads) is 1.7 MB of a live agent's imports (issue 15).
    from google.protobuf import json_format

    resp = api_pb2.ListPodResourcesResponse()
    for pod in pods:
        try:
            resp.pod_resources.append(json_format.ParseDict(pod, api_pb2.PodResources()))
        except Exception:  # noqa: BLE001 - ParseError, or what protobuf raises on a non-object: skip the pod
            continue
    return flatten(resp)

