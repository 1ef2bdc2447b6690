"""Plain data shared by the container source's modules. Nothing here imports gRPC."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

# CRI labels that carry a container's pod identity: the only labels a Container keeps (a CRI container has a
# dozen and a sandbox every label of its pod; kept whole they were most of the table's memory, issue 15).
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"
IDENTITY_LABELS = (POD_NAMESPACE, POD_NAME, CONTAINER_NAME)


def identity_labels(labels) -> dict[str, str]:
    """The pod-identity labels of a container's labels (a mapping), nothing else."""
    return {k: labels[k] for k in IDENTITY_LABELS if k in labels}


class PodRef(NamedTuple):
    """Who holds a device or owns a container: (namespace, pod, container)."""

    namespace: str
    pod: str
    container: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@dataclass(frozen=True, slots=True)
class SpecFacts:
    """What a container's OCI spec says about the devices it can open (the attribution fallback)."""

    device_paths: tuple[str, ...] = ()  # linux.devices[].path
    visible_gpus: tuple[str, ...] = ()  # NVIDIA_VISIBLE_DEVICES entries (legacy nvidia-container-runtime)
    privileged: bool = False  # CAP_SYS_ADMIN in the bounding set: sees every device, attributes none


@dataclass(slots=True)  # one per container on the node, copied every cycle: no __dict__ each
class Container:
    """One containerd container in a watched namespace, with its init task's state."""

    id: str
    namespace: str  # the containerd namespace (k8s.io), not the pod's namespace
    labels: dict[str, str] = field(default_factory=dict)  # its identity_labels() (runtime.to_container)
    image: str = ""
    spec: SpecFacts = field(default_factory=SpecFacts)
    status: str = "none"  # none (no task) | created | running | paused | stopped | unknown
    pid: int = 0
    exit_status: int | None = None
    exited_at_ns: int | None = None

    @property
    def ref(self) -> PodRef | None:
        """Pod identity of an application container; None for sandboxes and containers outside Kubernetes."""
        ns, pod, name = (self.labels.get(k) for k in IDENTITY_LABELS)
        return PodRef(ns, pod, name) if ns and pod and name else None

    @property
    def pod(self) -> tuple[str, str] | None:
        """(namespace, pod) of any container of a pod, its sandbox included."""
        ns, pod = self.labels.get(POD_NAMESPACE), self.labels.get(POD_NAME)
        return (ns, pod) if ns and pod else None


class TaskState(NamedTuple):
    """An init task as Tasks/List reports it."""

    container_id: str
    pid: int
    status: str  # created | running | paused | stopped | unknown
    exit_status: int
    exited_at_ns: int | None


@dataclass(frozen=True)
class RawEvent:
    """A decoded containerd event, reduced to what the table needs."""

    kind: str  # task_exit, task_oom, container_create, ... ("other" for types we do not know)
    namespace: str
    container_id: str = ""
    process_id: str = ""  # TaskExit.id / TaskDelete.id: the container id (or "") for the init process
    pid: int = 0
    exit_status: int = 0
    exited_at_ns: int | None = None

    @property
    def is_init(self) -> bool:
        """An exec's exit carries its exec id; only the init process's exit is the container's exit."""
        return self.process_id in ("", self.container_id)


@dataclass(frozen=True, slots=True)
class ReportedEvent:
    """An OOM kill or a non-zero init exit, kept in the table's bounded recent list under a sequence number so
    that each one is reported exactly once (see ContainersCollector.evaluate)."""

    seq: int
    kind: str  # oom_kill | exit
    ref: PodRef
    container_id: str
    exit_status: int | None
    at: float  # wall clock, seconds since the epoch
    inferred: bool = False  # seen by a re-list after the stream was down, not as an event
    spec: SpecFacts = field(default_factory=SpecFacts)


@dataclass(slots=True)
class PodStats:
    """Counters per pod identity, kept while the pod has any container in the table."""

    oom_kills: int = 0
    exits: int = 0
    nonzero_exits: int = 0
    last_exit_code: int | None = None


@dataclass
class StreamState:
    up: bool = False
    synced_once: bool = False
    reconnects: int = 0  # subscriptions after the first one
    possibly_missed: int = 0  # changes a re-list found that no event had told us (a lower bound)
    down_seconds: float = 0.0  # time without a stream after the first sync, ended gaps only
    down_for: float = 0.0  # the current gap, 0 while up
    last_error: str | None = None


@dataclass
class RuntimeView:
    """A copy of the table for one collection cycle."""

    containers: list[Container]
    events_total: dict[str, int]
    stats: dict[PodRef, PodStats]
    recent: list[ReportedEvent]
    last_seq: int
    stream: StreamState | None  # None for a one-shot list (agent --once)
