"""containerd event envelopes -> model.RawEvent.

The envelope's Any carries the bare message name as its type URL ("containerd.events.TaskExit", no
"type.googleapis.com/" prefix), which google.protobuf's Any.Unpack does not accept; so we map the name to our
own generated class and parse the bytes ourselves. The `kind` label is a fixed vocabulary: anything else
(a new containerd event, or one published by a third party through Events/Publish) counts as "other".
"""
from __future__ import annotations

import re

from agent._proto.containerd.events import container_pb2, task_pb2
from .model import RawEvent

# Message types we decode, by full name.
_DECODED = {f"containerd.events.{m.DESCRIPTOR.name}": m for m in (
    task_pb2.TaskCreate, task_pb2.TaskStart, task_pb2.TaskExit, task_pb2.TaskOOM, task_pb2.TaskDelete,
    task_pb2.TaskExecAdded, task_pb2.TaskExecStarted, task_pb2.TaskPaused, task_pb2.TaskResumed,
    task_pb2.TaskCheckpointed, container_pb2.ContainerCreate, container_pb2.ContainerUpdate,
    container_pb2.ContainerDelete)}

# Types we only count (see ../shared/reference/containerd-events-notes.md for the topics they come with).
_COUNTED = ["containerd.services.images.v1.ImageCreate", "containerd.services.images.v1.ImageUpdate",
            "containerd.services.images.v1.ImageDelete"] + [f"containerd.events.{n}" for n in (
                "NamespaceCreate", "NamespaceUpdate", "NamespaceDelete", "SnapshotPrepare", "SnapshotCommit",
                "SnapshotRemove", "ContentCreate", "ContentDelete", "SandboxCreate", "SandboxStart",
                "SandboxExit")]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("o_o_m", "oom")


KINDS = {full: _snake(full.rsplit(".", 1)[1]) for full in [*_DECODED, *_COUNTED]}


def type_name(type_url: str) -> str:
    """The message's full name, whether the URL is bare (containerd) or prefixed ("type.googleapis.com/...")."""
    return type_url.rsplit("/", 1)[-1]


def _ns(ts) -> int | None:
    if ts is None or (ts.seconds <= 0 and ts.nanos == 0):  # unset, or Go's zero time
        return None
    return ts.seconds * 1_000_000_000 + ts.nanos


def decode(envelope) -> RawEvent:
    """A containerd.types.Envelope -> RawEvent. Raises google.protobuf.message.DecodeError on garbage."""
    name = type_name(envelope.event.type_url)
    kind = KINDS.get(name, "other")
    cls = _DECODED.get(name)
    if cls is None:
        return RawEvent(kind, envelope.namespace)
    m = cls.FromString(envelope.event.value)
    if kind.startswith("container_"):
        return RawEvent(kind, envelope.namespace, container_id=m.id)
    if kind == "task_exit":
        return RawEvent(kind, envelope.namespace, m.container_id, m.id, m.pid, m.exit_status, _ns(m.exited_at))
    if kind == "task_delete":
        return RawEvent(kind, envelope.namespace, m.container_id, m.id, m.pid, m.exit_status, _ns(m.exited_at))
    if kind in ("task_exec_added", "task_exec_started"):
        return RawEvent(kind, envelope.namespace, m.container_id, m.exec_id, getattr(m, "pid", 0))
    return RawEvent(kind, envelope.namespace, m.container_id, pid=getattr(m, "pid", 0))


def tasks_status(value: int) -> str:
    """containerd.v1.types.Status -> our status word."""
    return {1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "paused"}.get(value, "unknown")


def timestamp_ns(ts) -> int | None:
    return _ns(ts)
