"""The container source's pure parts: envelope decoding, the table's bookkeeping (exactly-once exits, pruning,
missed-event counting), cycle-to-cycle event reporting, backoff, configuration and the collector contract."""
from __future__ import annotations

import threading

import pytest
from google.protobuf import any_pb2

from agent._proto.containerd.events import task_pb2
from agent._proto.containerd.types import event_pb2
from agent.base.collector import NoData, Observation
from agent.sources.containers.collector import ContainersReading, ContainersSettings
from agent.base.config import ConfigError, from_mapping
from agent.sources.containers import events
from agent.sources.containers.model import Container, RawEvent, TaskState
from agent.sources.containers.runtime import Watcher
from agent.sources.containers.table import ContainerTable

POD = {"io.kubernetes.pod.namespace": "ml", "io.kubernetes.pod.name": "train-0",
       "io.kubernetes.container.name": "worker"}


def envelope(msg, type_url: str) -> event_pb2.Envelope:
    return event_pb2.Envelope(namespace="k8s.io", topic="/tasks/exit",
                              event=any_pb2.Any(type_url=type_url, value=msg.SerializeToString()))


def test_bare_type_urls_decode_where_any_unpack_fails():
    exit_ = task_pb2.TaskExit(container_id="c1", id="c1", pid=42, exit_status=137)
    env = envelope(exit_, "containerd.events.TaskExit")  # what containerd sends
    assert not env.event.Unpack(task_pb2.TaskExit())
    ev = events.decode(env)
    assert (ev.kind, ev.container_id, ev.pid, ev.exit_status, ev.is_init) == ("task_exit", "c1", 42, 137, True)
    assert events.decode(envelope(exit_, "type.googleapis.com/containerd.events.TaskExit")).kind == "task_exit"
    exec_exit = events.decode(envelope(task_pb2.TaskExit(container_id="c1", id="probe"), "containerd.events.TaskExit"))
    assert not exec_exit.is_init
    # Anyone can Publish any topic: unknown types share one label value, so cardinality stays bounded.
    assert events.decode(envelope(exit_, "example.com/Whatever")).kind == "other"


def container(cid="c1", status="running", pid=10, **kw) -> Container:
    return Container(cid, "k8s.io", dict(POD), status=status, pid=pid, **kw)


def exit_event(pid=10, status=1, at=5_000, cid="c1", kind="task_exit", process="c1"):
    return RawEvent(kind, "k8s.io", cid, process, pid, status, at)


def test_an_exit_counts_once_whatever_repeats_it():
    t = ContainerTable()
    t.resync({"k8s.io": ([container()], {"c1": TaskState("c1", 10, "running", 0, None)})}, baseline=True)
    t.apply(exit_event())
    t.apply(exit_event(kind="task_delete", process=""))  # TaskDelete repeats the status
    t.apply(exit_event())  # a shim re-delivering after a containerd restart
    [stats] = t.view().stats.values()
    assert (stats.exits, stats.nonzero_exits, stats.last_exit_code) == (1, 1, 1)
    assert len(t.view().recent) == 1


def test_a_delete_without_its_exit_still_counts_the_exit():
    t = ContainerTable()
    t.resync({"k8s.io": ([container()], {"c1": TaskState("c1", 10, "running", 0, None)})}, baseline=True)
    t.apply(exit_event(kind="task_delete", process="", status=2))
    [stats] = t.view().stats.values()
    assert stats.nonzero_exits == 1 and stats.last_exit_code == 2


def test_relist_after_a_gap_counts_what_no_event_said():
    t = ContainerTable()
    running = TaskState("c1", 10, "running", 0, None)
    t.resync({"k8s.io": ([container("c1"), container("c2")], {"c1": running})}, baseline=True)
    t.stream_up()
    t.stream_down("UNAVAILABLE")
    stopped = TaskState("c1", 10, "stopped", 137, 7_000)
    missed = t.resync({"k8s.io": ([container("c1"), container("c3")], {"c1": stopped})}, baseline=False)
    assert missed == 3  # c1's exit, c2's delete, c3's create
    [late] = t.view().recent
    assert late.inferred and late.exit_status == 137
    t.apply(exit_event(pid=10, status=137, at=7_000))  # the same exit, delivered late
    assert len(t.view().recent) == 1
    t.stream_up()
    assert t.view().stream.reconnects == 1 and t.view().stream.possibly_missed == 3


def test_series_of_a_pod_stay_while_any_of_its_containers_does():
    sandbox = Container("sb", "k8s.io", {k: v for k, v in POD.items() if "container" not in k})
    t = ContainerTable()
    t.resync({"k8s.io": ([container(), sandbox], {})}, baseline=True)
    t.apply(RawEvent("container_delete", "k8s.io", "c1"))
    assert len(t.view().stats) == 1  # the sandbox keeps the pod alive (a restart is coming)
    t.apply(RawEvent("container_delete", "k8s.io", "sb"))
    assert t.view().stats == {}


def reading(table: ContainerTable) -> ContainersReading:
    return ContainersReading(runtime=table.view())


def test_events_are_reported_in_the_next_cycle_once_and_overflow_is_said(make_collector):
    collector = make_collector(findings_for_all_pods=True, recent_events=2)
    t = ContainerTable(recent_capacity=2)
    t.resync({"k8s.io": ([container()], {"c1": TaskState("c1", 10, "running", 0, None)})}, baseline=True)
    t.apply(RawEvent("task_oom", "k8s.io", "c1"))
    first = reading(t)
    out = collector.evaluate(first, None, None)
    assert [f.check for f in out.findings if f.check.startswith("container.oom")] == ["container.oom_kill"]
    prev = Observation.now(first)
    assert not [f for f in collector.evaluate(reading(t), prev, 1.0).findings if f.check == "container.oom_kill"]
    for _ in range(3):  # three more between two cycles, one more than the list holds
        t.apply(RawEvent("task_oom", "k8s.io", "c1"))
    out = collector.evaluate(reading(t), prev, 1.0)
    assert len([f for f in out.findings if f.check == "container.oom_kill"]) == 2
    [dropped] = [f for f in out.findings if f.check == "container.events_dropped"]
    assert dropped.value == 1 and dropped.severity == "info"
    # The stream must send these as events, not fold them into per-check state.
    assert all(f.is_event for f in out.findings if f.status == "unhealthy")


def test_backoff_grows_with_jitter_and_stays_capped():
    low = Watcher("/x", ["k8s.io"], ContainerTable(), backoff_initial=0.5, backoff_max=8, rand=lambda: 0.0)
    high = Watcher("/x", ["k8s.io"], ContainerTable(), backoff_initial=0.5, backoff_max=8, rand=lambda: 1.0)
    assert [low.delay(a) for a in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [high.delay(a) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


@pytest.mark.parametrize("section, key", [
    ({"namespaces": []}, "containers.namespaces"),
    ({"socket": "run/containerd.sock"}, "containers.socket"),
    ({"reconnect_initial_seconds": 5, "reconnect_max_seconds": 1}, "containers.reconnect_max_seconds"),
    ({"recent_events": 0}, "containers.recent_events"),
    ({"namespace": ["k8s.io"]}, "containers.namespace"),
])
def test_bad_configuration_names_the_key(section, key):
    with pytest.raises(ConfigError, match=rf"^{key}"):
        from_mapping({"containers": section}, {"containers": ContainersSettings})


def test_absent_sources_are_no_data_and_nothing_starts(make_collector):
    before = {t.ident for t in threading.enumerate()}
    collector = make_collector()  # neither containerd nor a kubelet on these paths
    with pytest.raises(NoData):
        collector.read()
    assert {t.ident for t in threading.enumerate()} <= before
    assert collector._watcher is None


def test_a_listed_container_keeps_its_pod_identity_and_no_other_label():
    """A CRI container carries a dozen labels and its sandbox every label of the pod; the table keeps only the
    three that name the pod (memory that grew with the node's labels, issue 15), and the identity is intact."""
    from agent._proto.containerd.services.containers.v1 import containers_pb2
    from agent.sources.containers.runtime import to_container

    labels = {**POD, "io.kubernetes.pod.uid": "0b6f3c8e", "io.cri-containerd.kind": "container",
              "app.kubernetes.io/name": "trainer", "batch.kubernetes.io/job-name": "job-0"}
    c = to_container("k8s.io", containers_pb2.Container(id="c1", labels=labels, image="busybox"))
    assert c.labels == POD
    assert (c.ref.namespace, c.ref.pod, c.ref.container) == ("ml", "train-0", "worker")
    assert c.pod == ("ml", "train-0")
    sandbox = to_container("k8s.io", containers_pb2.Container(id="sb", labels={
        k: v for k, v in labels.items() if k != "io.kubernetes.container.name"}))
    assert sandbox.ref is None and sandbox.pod == ("ml", "train-0")
