"""The container source against a real containerd (Debian's 1.6, started privately per test, CRI disabled),
driven with `ctr` as the kubelet would drive it through CRI: containers carry the io.kubernetes.* labels.
Runs, execs, kills, OOM-kills under a memory limit and restarts the daemon mid-stream, checking the agent's
table, metrics and findings after each step through the real collector runner."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from agent.sources.gpu.model import GpuReading
from agent.base.metrics import render

from .helpers import wait_for

GPU_POD = ("ml", "train-0", "worker")
WEB_POD = ("web", "frontend-0", "nginx")
AMD_GPU0 = GpuReading(index=0, vendor="amd", uuid="4cff74a1-0000-1000-8019-b7e2a0d35f86", pci_bus_id="0000:0c:00.0")
NV_GPU3 = GpuReading(index=3, vendor="nvidia", uuid="GPU-ad9cc515-dcd1-b74b-a284-9bafdf16ab36",
                     pci_bus_id="0000:5c:00.0")


def labels(pod):
    return dict(zip(("namespace", "pod", "container"), pod))


def watcher_threads():
    return [t for t in threading.enumerate() if t.name == "vigil-containerd-events" and t.is_alive()]


def test_first_cycle_lists_existing_containers_with_pod_identity(containerd, make_collector, cycles):
    containerd.run("c-run", "sleep", "1000", pod=GPU_POD)
    containerd.run("c-done", "sh", "-c", "exit 7", pod=WEB_POD)
    containerd.import_image("default")
    containerd.run("c-other-ns", "sleep", "1000", pod=("x", "y", "z"), ns="default")
    wait_for("c-done to exit", lambda: (containerd.task("c-done") or (0, ""))[1] == "STOPPED")
    c = cycles(make_collector(socket=containerd.socket))

    c.once()  # the very first cycle already has the listing

    assert c.value("vigil_container_event_stream_up") == 1
    assert c.value("vigil_containers", state="running") == 1
    assert c.value("vigil_containers", state="stopped") == 1
    assert c.value("vigil_container_oom_kills_total", **labels(GPU_POD)) == 0
    # An exit from before the agent watched is state (the last exit code), not an event to report.
    assert c.value("vigil_container_last_exit_code", **labels(WEB_POD)) == 7
    assert c.value("vigil_container_nonzero_exits_total", **labels(WEB_POD)) == 0
    assert not c.findings_of("container.exit_nonzero")
    assert c.value("vigil_container_oom_kills_total", namespace="x") is None  # "default" is not watched
    [runtime] = c.findings_of("container.runtime")
    assert runtime.status == "ok" and "2 containers in k8s.io" in runtime.message
    # The netflow source attributes sockets to pods through the running containers' init pids.
    pid, _ = containerd.task("c-run")
    assert c.collector.ctx.facts.pid_pods == {pid: GPU_POD[:2]}


def test_run_exec_kill_delete(containerd, make_collector, cycles, pod_resources, promtool):
    # ml/train-0 holds GPU 0 (AMD plugin: PCI bus address); web/frontend-0 holds no GPU.
    pod_resources.set({GPU_POD[:2]: {"worker": [("amd.com/gpu", ["0000:0c:00.0"])]}})
    c = cycles(make_collector(socket=containerd.socket, pod_resources_socket=pod_resources.socket,
                              shared={"gpus": [AMD_GPU0]}))
    c.once()
    assert c.value("vigil_containers", state="running") == 0

    containerd.run("train", "sleep", "1000", pod=GPU_POD)
    containerd.run("web", "sleep", "1000", pod=WEB_POD)
    c.until("both containers running", lambda: c.value("vigil_containers", state="running") == 2)
    assert c.value("vigil_container_events_total", type="task_start") == 2
    assert c.value("vigil_gpu_pod_info", gpu="0", **labels(GPU_POD)) == 1

    # An exec that fails is not the container failing.
    assert containerd.exec("train", "probe", "sh", "-c", "exit 3") == 3
    c.until("the exec's exit event", lambda: c.value("vigil_container_events_total", type="task_exit") == 1)
    assert c.value("vigil_container_last_exit_code", **labels(GPU_POD)) is None
    assert c.value("vigil_container_nonzero_exits_total", **labels(GPU_POD)) == 0
    assert c.value("vigil_containers", state="running") == 2

    containerd.kill("train")
    containerd.kill("web")
    c.until("both exits", lambda: c.value("vigil_containers", state="stopped") == 2)
    assert c.value("vigil_container_last_exit_code", **labels(GPU_POD)) == 137
    assert c.value("vigil_container_nonzero_exits_total", **labels(GPU_POD)) == 1
    assert c.value("vigil_container_nonzero_exits_total", **labels(WEB_POD)) == 1
    for _ in range(3):  # later cycles must not report the same exit again
        c.once()
    [exit_finding] = c.findings_of("container.exit_nonzero")  # the GPU pod only
    assert exit_finding.entity == "ml/train-0/worker"
    assert exit_finding.severity == "info" and exit_finding.status == "unhealthy" and exit_finding.value == 137
    assert "gpu0" in exit_finding.message and "signal 9" in exit_finding.message

    p = subprocess.run([promtool, "check", "metrics"], input=render(c.result.output.metrics).decode(),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr

    containerd.delete("train")
    c.until("the deleted container's series to go",
            lambda: c.value("vigil_container_nonzero_exits_total", **labels(GPU_POD)) is None)
    assert c.value("vigil_container_last_exit_code", **labels(GPU_POD)) is None
    assert c.value("vigil_container_events_total", type="container_delete") == 1
    assert c.value("vigil_container_nonzero_exits_total", **labels(WEB_POD)) == 1  # its pod is still there


def test_oom_kill_of_a_gpu_pod_under_a_memory_limit(containerd, make_collector, cycles):
    # No PodResources here: the GPU comes from the legacy NVIDIA_VISIBLE_DEVICES in the container's spec, and
    # the container is dead before any cycle sees it running; the event still knows it was a GPU pod.
    c = cycles(make_collector(socket=containerd.socket, shared={"gpus": [NV_GPU3]}))
    c.once()
    containerd.run("hog", "sh", "-c", 'x=0123456789; while true; do x="$x$x"; done', pod=GPU_POD,
                   memory_limit=20971520, env={"NVIDIA_VISIBLE_DEVICES": NV_GPU3.uuid})
    c.until("the OOM kill", lambda: (c.value("vigil_container_oom_kills_total", **labels(GPU_POD)) or 0) >= 1
            and c.value("vigil_container_last_exit_code", **labels(GPU_POD)) == 137)
    assert c.value("vigil_container_events_total", type="task_oom") >= 1
    ooms = c.findings_of("container.oom_kill")
    assert ooms and all(f.entity == "ml/train-0/worker" and f.severity == "warning" for f in ooms)
    assert "gpu3" in ooms[0].message and ooms[0].action
    [exit_finding] = c.findings_of("container.exit_nonzero")
    assert exit_finding.value == 137


def test_containerd_restart_reconnects_relists_and_counts_missed_events(containerd, make_collector, cycles,
                                                                         tmp_path):
    # The agent reaches containerd through a symlink the test controls, so that it is provably away while
    # containerd changes things (with a real restart in between).
    link = tmp_path / "containerd.sock"
    link.symlink_to(containerd.socket)
    containerd.run("keep", "sleep", "1000", pod=("a", "keep-0", "main"))
    containerd.run("die", "sleep", "1000", pod=("b", "die-0", "main"))
    containerd.run("gone", "sleep", "1000", pod=("c", "gone-0", "main"))
    collector = make_collector(socket=str(link), findings_for_all_pods=True, reconnect_initial_seconds=0.1,
                               reconnect_max_seconds=0.5)
    c = cycles(collector)
    c.once()
    assert c.value("vigil_containers", state="running") == 3

    containerd.stop()
    c.until("the stream to go down", lambda: c.value("vigil_container_event_stream_up") == 0)
    [down] = [f for f in c.result.output.findings if f.check == "container.runtime"]
    assert down.status == "unknown" and "reconnecting" in down.message
    assert c.value("vigil_containers", state="running") == 3  # the table survives the outage

    link.unlink()
    containerd.start()
    containerd.kill("die")  # exits while the agent is away
    containerd.remove("gone")
    containerd.run("new", "sleep", "1000", pod=("d", "new-0", "main"))
    time.sleep(0.3)  # a few failed reconnects against the missing socket
    assert c.once() and c.value("vigil_container_event_stream_up") == 0
    link.symlink_to(containerd.socket)

    c.until("the stream to come back", lambda: c.value("vigil_container_event_stream_up") == 1)
    assert c.value("vigil_container_event_stream_reconnects_total") == 1
    # die's exit + gone's delete + new's create and start: what the re-list saw and no event told us.
    assert c.value("vigil_container_events_possibly_missed_total") == 4
    assert c.value("vigil_container_event_stream_down_seconds_total") > 0.3
    assert c.value("vigil_container_last_exit_code", namespace="b") == 137
    assert c.value("vigil_container_oom_kills_total", namespace="c") is None  # gone, series dropped
    assert c.value("vigil_container_oom_kills_total", namespace="d") == 0
    assert c.value("vigil_containers", state="running") == 2
    [late] = c.findings_of("container.exit_nonzero")
    assert late.entity == "b/die-0/main" and "re-list" in late.message

    # Events flow on the new stream.
    containerd.kill("keep")
    c.until("keep's exit by event", lambda: c.value("vigil_container_last_exit_code", namespace="a") == 137)
    assert c.value("vigil_container_events_possibly_missed_total") == 4

    # A real restart with an exit during the outage: the re-list sees it, and the shim re-delivers the same
    # TaskExit once containerd is back. It must count once.
    before = c.value("vigil_container_events_total", type="task_exit") or 0
    pid = containerd.task("new")[0]
    containerd.stop()
    os.kill(pid, signal.SIGKILL)  # the container's own process, while containerd is down
    containerd.start()
    c.until("new's exit", lambda: c.value("vigil_container_nonzero_exits_total", namespace="d") == 1)
    try:
        c.until("the shim's re-delivered exit", lambda: (c.value("vigil_container_events_total", type="task_exit")
                                                           or 0) > before, timeout=3)
    except AssertionError:
        pass  # delivered before we re-subscribed: then only the re-list saw it
    c.once()
    assert c.value("vigil_container_nonzero_exits_total", namespace="d") == 1
    assert len([f for f in c.findings_of("container.exit_nonzero") if f.entity == "d/new-0/main"]) == 1

    # Nothing leaked: one watcher thread and one subscription after three sessions; none after close().
    assert len(watcher_threads()) == 1
    assert collector._watcher.sessions == 3
    assert containerd.subscriptions() == 1
    collector.close()
    wait_for("the watcher to stop", lambda: not watcher_threads(), timeout=5)
    wait_for("containerd to drop the subscription", lambda: containerd.subscriptions() == 0, timeout=5)


def test_a_failing_session_is_replaced_while_containerd_stays_up(containerd, make_collector, cycles):
    # A bug while applying one event ends the session with containerd still serving: the old stream must be
    # cancelled (not left open beside the new one) and the re-list must recover what the event would have said.
    collector = make_collector(socket=containerd.socket, reconnect_initial_seconds=0.05)
    c = cycles(collector)
    c.once()
    table = collector._table
    apply = table.apply

    def broken_once(*args, **kwargs):
        table.apply = apply
        raise RuntimeError("a bug in the table")

    table.apply = broken_once
    containerd.run("c1", "sleep", "1000", pod=GPU_POD)
    c.until("the new session", lambda: c.value("vigil_container_event_stream_reconnects_total") == 1
            and c.value("vigil_containers", state="running") == 1)
    assert c.value("vigil_container_events_possibly_missed_total") >= 1
    assert c.value("vigil_container_event_stream_up") == 1
    wait_for("one subscription", lambda: containerd.subscriptions() == 1, timeout=5)
    time.sleep(0.2)  # had the old stream stayed open, it would still be counted now
    assert containerd.subscriptions() == 1
    assert len(watcher_threads()) == 1


def test_once_mode_lists_without_a_watcher(containerd, make_collector, cycles):
    containerd.run("c1", "sleep", "1000", pod=GPU_POD)
    c = cycles(make_collector(socket=containerd.socket, shared={"once": True}))
    c.once()
    assert not watcher_threads()
    assert c.value("vigil_containers", state="running") == 1
    assert c.value("vigil_container_event_stream_up") is None  # no stream in a one-shot run
    [runtime] = c.findings_of("container.runtime")
    assert runtime.status == "ok" and "containerd answers" in runtime.message
