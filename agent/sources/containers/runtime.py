"""containerd over gRPC: list containers and tasks, and the event watcher thread.

The watcher keeps one Events/Subscribe stream open on the containerd socket. Each session:
  1. opens a channel and starts Subscribe (filters: namespace=="k8s.io" ..., ORed by containerd);
  2. lists containers and tasks of every watched namespace and resyncs the table (the first listing is the
     baseline; later ones count what changed while we were away as possibly missed events);
  3. applies events until the stream breaks (containerd restarting: UNAVAILABLE).
Subscribing before listing means an event that lands between the two is both in the listing and in the
stream; the table applies events idempotently (exits deduplicated by pid and time), so nothing is counted
twice and nothing that happens after the listing is lost. Between sessions: jittered exponential backoff.
The old call is cancelled and its channel closed before the next one opens, so a restart leaks nothing.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

import grpc

from agent._proto.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from agent._proto.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from agent._proto.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from agent.base import backoff
from agent.base.errors import error_text
from . import events
from .attribution import parse_spec
from .model import Container, TaskState, identity_labels
from .table import ContainerTable, Listing

log = logging.getLogger(__name__)

# A node with a few hundred containers returns a few MB of specs from Containers/List.
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


def open_channel(socket: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{socket}", options=_OPTIONS)


def _md(namespace: str) -> tuple[tuple[str, str], ...]:
    return (("containerd-namespace", namespace),)


def to_container(namespace: str, c) -> Container:
    return Container(id=c.id, namespace=namespace, labels=identity_labels(c.labels), image=c.image,
                     spec=parse_spec(c.spec.value))


def list_namespace(channel: grpc.Channel, namespace: str, timeout: float) -> tuple[list[Container],
                                                                                    dict[str, TaskState]]:
    resp = containers_pb2_grpc.ContainersStub(channel).List(
        containers_pb2.ListContainersRequest(), metadata=_md(namespace), timeout=timeout)
    tasks = tasks_pb2_grpc.TasksStub(channel).List(
        tasks_pb2.ListTasksRequest(), metadata=_md(namespace), timeout=timeout)
    states = {}
    for p in tasks.tasks:
        cid = p.container_id or p.id  # containerd fills `id` with the container id here, not container_id
        states[cid] = TaskState(cid, p.pid, events.tasks_status(p.status), p.exit_status,
                                events.timestamp_ns(p.exited_at) if p.HasField("exited_at") else None)
    return [to_container(namespace, c) for c in resp.containers], states


def list_all(channel: grpc.Channel, namespaces: list[str], timeout: float) -> Listing:
    return {ns: list_namespace(channel, ns, timeout) for ns in namespaces}


def get_container(channel: grpc.Channel, namespace: str, container_id: str, timeout: float) -> Container | None:
    try:
        resp = containers_pb2_grpc.ContainersStub(channel).Get(
            containers_pb2.GetContainerRequest(id=container_id), metadata=_md(namespace), timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:  # deleted again before we asked
            return None
        raise
    return to_container(namespace, resp.container)


def list_once(socket: str, namespaces: list[str], timeout: float) -> Listing:
    """One listing without a stream (agent --once)."""
    channel = open_channel(socket)
    try:
        return list_all(channel, namespaces, timeout)
    finally:
        channel.close()


def subscribe_filters(namespaces: list[str]) -> list[str]:
    return [f'namespace=="{ns}"' for ns in namespaces]


class Watcher:
    """The event watcher thread. Started lazily by the collector's first live read; never in --once or replay."""

    THREAD_NAME = "vigil-containerd-events"

    def __init__(self, socket: str, namespaces: list[str], table: ContainerTable, *,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, rpc_timeout: float = 5.0,
                 stable_seconds: float = 10.0, rand: Callable[[], float] = random.random) -> None:
        self.socket, self.namespaces, self.table = socket, list(namespaces), table
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.rpc_timeout, self.stable_seconds, self._rand = rpc_timeout, stable_seconds, rand
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        self._channel: grpc.Channel | None = None
        self._thread: threading.Thread | None = None
        self.sessions = 0  # streams opened, for tests and debugging

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
                self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, so a node never retries in a tight loop
        and a fleet whose containerd was upgraded at once does not reconnect in lockstep."""
        return backoff.delay(attempt, self.backoff_initial, self.backoff_max, "half", self._rand)

    # -- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            began = time.monotonic()
            synced = False
            try:
                synced = self._session()
            except grpc.RpcError as e:
                if not self._stop.is_set():
                    self._lost(f"{e.code().name}: {e.details()}")
            except Exception as e:  # a bug or a garbled message: report it, keep watching
                log.exception("containerd event watcher failed")
                self._lost(error_text(e))
            finally:
                self._cancel()
            if self._stop.is_set():
                break
            if synced and time.monotonic() - began >= self.stable_seconds:
                attempt = 0  # a stream that lived a while: the next failure starts over from the short delay
            self._stop.wait(self.delay(attempt))
            attempt += 1

    def _lost(self, why: str) -> None:
        self.table.stream_down(why)
        log.info("containerd event stream on %s lost: %s", self.socket, why)

    def _session(self) -> bool:
        channel = open_channel(self.socket)
        call = events_pb2_grpc.EventsStub(channel).Subscribe(
            events_pb2.SubscribeRequest(filters=subscribe_filters(self.namespaces)))
        with self._lock:
            self._channel, self._call = channel, call
        if self._stop.is_set():
            return False
        listing = list_all(channel, self.namespaces, self.rpc_timeout)
        missed = self.table.resync(listing, baseline=not self._synced.is_set())
        if missed:
            log.info("containerd re-list after a gap: %d changes had no event", missed)
        self.table.stream_up()
        self._synced.set()
        self.sessions += 1
        for envelope in call:
            try:
                ev = events.decode(envelope)
            except Exception as e:  # one undecodable event must not end the stream
                log.warning("undecodable containerd event %s: %s", envelope.event.type_url, error_text(e))
                continue
            fetched = None
            if ev.container_id and (ev.kind in ("container_create", "container_update") or (
                    ev.kind.startswith("task_") and not self.table.knows(ev.namespace, ev.container_id))):
                fetched = get_container(channel, ev.namespace, ev.container_id, self.rpc_timeout)
            self.table.apply(ev, fetched)
        self.table.stream_down("stream ended")
        return True

    def _cancel(self) -> None:
        with self._lock:
            call, channel = self._call, self._channel
            self._call = self._channel = None
        if call is not None:
            call.cancel()
        if channel is not None:
            channel.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
