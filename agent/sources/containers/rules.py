"""Container rules (pure): OOM kills and non-zero exits of GPU pods become findings, one per event, for the
stream to carry as info events (DESIGN §6: outside the health state machine, so never fatal); the event stream
and the PodResources API get one status finding each.

Events are not level checks: a container that did not OOM produces no "ok" finding (that would be one series
per container in vigil_check_status); the status findings say that the checks ran.
"""
from __future__ import annotations

import time
from typing import Iterable, Mapping

from .model import ReportedEvent, StreamState
from agent.base.findings import EVENT, INFO, WARNING, Finding, bad, ok, unknown

C = "container"

# OOM kills, exits and dropped-event counts are events (kind EVENT: one per occurrence, reported in one cycle
# only), not states: hysteresis would merge two OOM kills of one container in consecutive cycles into one
# state and then report it "ok" when it stops being repeated.


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def event_findings(events: Iterable[ReportedEvent], gpu_pods: Mapping[tuple[str, str], list[str]],
                   all_pods: bool = False) -> list[Finding]:
    """`gpu_pods`: (namespace, pod) -> the GPUs it holds (names, or [] when known to hold some unnamed GPU)."""
    out = []
    for e in events:
        pod = (e.ref.namespace, e.ref.pod)
        if pod not in gpu_pods and not all_pods:
            continue
        gpus = gpu_pods.get(pod)
        on = f" holding {', '.join(gpus)}" if gpus else (" (a GPU pod)" if pod in gpu_pods else "")
        late = "; seen by a re-list after the event stream was down" if e.inferred else ""
        if e.kind == "oom_kill":
            out.append(bad("container.oom_kill", C, str(e.ref),
                           f"container {e.ref.container} of pod {e.ref.namespace}/{e.ref.pod}{on} was OOM-killed "
                           f"at {_when(e.at)}", severity=WARNING,
                           action="raise the container's memory limit or reduce its memory use", kind=EVENT))
        elif e.kind == "exit":
            code = e.exit_status
            signal = f" (signal {code - 128})" if code is not None and code > 128 else ""
            out.append(bad("container.exit_nonzero", C, str(e.ref),
                           f"container {e.ref.container} of pod {e.ref.namespace}/{e.ref.pod}{on} exited with code "
                           f"{code}{signal} at {_when(e.at)}{late}", severity=INFO, value=code, threshold=0,
                           kind=EVENT))
    return out


def dropped_finding(count: int, node: str) -> list[Finding]:
    if count <= 0:
        return []
    return [bad("container.events_dropped", C, node,
                f"{count} OOM kills or exits fell out of the recent-events list before a cycle reported them",
                severity=INFO, value=count, kind=EVENT)]


def runtime_finding(stream: StreamState | None, containers: int, namespaces: list[str], node: str,
                    error: str | None = None) -> Finding:
    where = ", ".join(namespaces)
    if error is not None:
        return unknown("container.runtime", C, node, f"containerd could not be listed: {error}", severity=WARNING)
    if stream is None:  # a one-shot listing (agent --once)
        return ok("container.runtime", C, node, f"containerd answers: {containers} containers in {where}",
                  severity=WARNING)
    if stream.up:
        return ok("container.runtime", C, node, f"containerd event stream up: {containers} containers in {where}"
                  + (f", {stream.reconnects} reconnects" if stream.reconnects else ""), severity=WARNING)
    since = f" for {stream.down_for:.0f}s" if stream.synced_once else ""
    return unknown("container.runtime", C, node,
                   f"containerd event stream down{since} ({stream.last_error or 'connecting'}); reconnecting",
                   severity=WARNING)


def pod_resources_finding(devices: int, pods: int, node: str, error: str | None = None) -> Finding:
    if error is not None:
        return unknown("container.pod_resources", C, node, f"kubelet PodResources List failed: {error}",
                       severity=WARNING)
    return ok("container.pod_resources", C, node, f"kubelet PodResources: {devices} GPU/RDMA devices held by "
              f"{pods} pods", severity=WARNING)
