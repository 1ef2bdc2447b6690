"""The container source's metric families, declared once with their label names, and readings -> samples."""
from __future__ import annotations

from .attribution import Attribution
from .model import RuntimeView
from agent.base.metrics import Counter, Gauge, MetricSet

STATES = ("running", "created", "paused", "stopped", "none", "unknown")
CONTAINER_DEVICE_INFO = Gauge("vigil_container_device_info", "A GPU or RDMA device a container holds, as its source "
                              "names it.",
                              ("container", "device_id", "kind", "namespace", "pod", "resource", "source"))
CONTAINER_EVENT_STREAM_DOWN_SECONDS = Counter("vigil_container_event_stream_down_seconds_total", "Seconds without an "
                                              "event stream since the first subscription.", ())
CONTAINER_EVENT_STREAM_RECONNECTS = Counter("vigil_container_event_stream_reconnects_total", "Event stream "
                                            "subscriptions after the first (containerd restarts, broken streams).",
                                            ())
CONTAINER_EVENT_STREAM_UP = Gauge("vigil_container_event_stream_up", "1 while the containerd event stream is "
                                  "subscribed.", ())
CONTAINER_EVENTS_POSSIBLY_MISSED = Counter("vigil_container_events_possibly_missed_total", "Changes a re-list found "
                                           "that no event reported (a lower bound of missed events).", ())
CONTAINER_EVENTS = Counter("vigil_container_events_total", "containerd events received, by type.", ("type",))
CONTAINER_LAST_EXIT_CODE = Gauge("vigil_container_last_exit_code", "Exit code of the container's last init process "
                                 "exit.", ("container", "namespace", "pod"))
CONTAINER_NONZERO_EXITS = Counter("vigil_container_nonzero_exits_total", "Non-zero exits of containers' init "
                                  "processes.", ("container", "namespace", "pod"))
CONTAINER_OOM_KILLS = Counter("vigil_container_oom_kills_total", "OOM kills per container.",
                              ("container", "namespace", "pod"))
CONTAINER_POD_RESOURCES_UP = Gauge("vigil_container_pod_resources_up", "1 when the kubelet PodResources List "
                                   "answered.", ())
CONTAINERS = Gauge("vigil_containers", "Containers in the watched containerd namespaces, by task state.", ("state",))
GPU_POD_INFO = Gauge("vigil_gpu_pod_info", "The pod using a GPU (1); join with vigil_gpu_info on gpu.",
                     ("container", "gpu", "namespace", "pod"))
RDMA_POD_INFO = Gauge("vigil_rdma_pod_info", "The pod using an RDMA device (1); join with vigil_rdma_port_info on "
                      "device.", ("container", "device", "namespace", "pod"))


def runtime_metrics(ms: MetricSet, rt: RuntimeView) -> None:
    ms.declare(CONTAINER_EVENTS)
    for kind, n in sorted(rt.events_total.items()):
        ms.add(CONTAINER_EVENTS, {"type": kind}, n)
    states = {st: 0 for st in STATES}
    for c in rt.containers:
        states[c.status if c.status in states else "unknown"] += 1
    for st, n in states.items():
        ms.add(CONTAINERS, {"state": st}, n)
    ms.declare(CONTAINER_OOM_KILLS)
    ms.declare(CONTAINER_NONZERO_EXITS)
    ms.declare(CONTAINER_LAST_EXIT_CODE)
    for ref, st in sorted(rt.stats.items()):
        labels = {"namespace": ref.namespace, "pod": ref.pod, "container": ref.container}
        ms.add(CONTAINER_OOM_KILLS, labels, st.oom_kills)
        ms.add(CONTAINER_NONZERO_EXITS, labels, st.nonzero_exits)
        ms.add(CONTAINER_LAST_EXIT_CODE, labels, st.last_exit_code)
    if rt.stream is not None:
        st = rt.stream
        ms.add(CONTAINER_EVENT_STREAM_UP, {}, 1 if st.up else 0)
        ms.add(CONTAINER_EVENT_STREAM_RECONNECTS, {}, st.reconnects)
        ms.add(CONTAINER_EVENTS_POSSIBLY_MISSED, {}, st.possibly_missed)
        ms.add(CONTAINER_EVENT_STREAM_DOWN_SECONDS, {}, round(st.down_seconds + st.down_for, 3))


def attribution_metrics(ms: MetricSet, a: Attribution, gpu_rows) -> None:
    if gpu_rows is not None:
        ms.declare(GPU_POD_INFO)
        for r in sorted(set(gpu_rows), key=lambda r: (r.gpu, r.namespace, r.pod, r.container)):
            ms.add(GPU_POD_INFO, {"gpu": r.gpu, "namespace": r.namespace, "pod": r.pod, "container": r.container}, 1)
    rdma = sorted({(k[3:], *d.ref) for d in a.devices if d.kind == "rdma" for k in d.keys if k.startswith("ib:")})
    for device, ns, pod, container in rdma:
        ms.add(RDMA_POD_INFO, {"device": device, "namespace": ns, "pod": pod, "container": container}, 1)
    held = sorted({(*d.ref, d.kind, d.resource, d.device_id, d.source) for d in a.devices})
    for ns, pod, container, kind, resource, device_id, source in held:
        ms.add(CONTAINER_DEVICE_INFO, {"namespace": ns, "pod": pod, "container": container, "kind": kind,
                                       "resource": resource, "device_id": device_id, "source": source}, 1)
