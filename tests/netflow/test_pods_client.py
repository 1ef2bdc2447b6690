"""Pod attribution from what the container source shares, and the probe client's life cycle against fake probe
processes (a probe that dies, hangs, or answers)."""
from __future__ import annotations

import sys
import textwrap

import pytest

from agent.sources.netflow.client import ProbeClient, ProbeUnavailable
from agent.sources.netflow.pods import PodIndex, as_pod


def procfs(tmp_path, pids):
    for pid, path in pids.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(f"12:memory:/x\n0::{path}\n")
    return tmp_path


class Ref:
    namespace, pod, container = "ns3", "p3", "c"


@pytest.mark.parametrize("value,expect", [(("ns", "p"), ("ns", "p")), (("ns", "p", "c"), ("ns", "p")),
                                          ({"namespace": "ns", "pod": "p"}, ("ns", "p")), ("ns/p", ("ns", "p")),
                                          (Ref(), ("ns3", "p3")), ("nope", None), (None, None)])
def test_pod_shapes(value, expect):
    assert as_pod(value) == expect


def test_pods_by_pid_and_by_cgroup_path(tmp_path):
    idx = PodIndex(procfs(tmp_path, {10: "/kubepods/pod-a/ctr-1", 11: "/kubepods/pod-b/ctr-2"}))
    assert idx("x", "/kubepods/pod-a/ctr-1") == ("", "")  # nothing shared yet
    assert idx.pods is None
    idx.refresh({10: ("team-a", "a-0"), 11: ("team-b", "b-0")}, {"/system.slice/x.scope": "ops/x"})
    assert idx(5, "/kubepods/pod-a/ctr-1") == ("team-a", "a-0")
    assert idx(5, "/kubepods/pod-a/ctr-1/sub") == ("team-a", "a-0")  # a child cgroup of the container
    assert idx(5, "/system.slice/x.scope") == ("ops", "x")
    assert idx(5, "/../../kubepods/pod-b/ctr-2") == ("team-b", "b-0")  # seen from another cgroup namespace
    assert idx(5, "/elsewhere") == ("", "") and idx(0, None) == ("", "")
    assert idx.pods == {("team-a", "a-0"), ("team-b", "b-0"), ("ops", "x")}
    idx.refresh({11: ("team-b", "b-0")}, None)
    assert idx(5, "/kubepods/pod-a/ctr-1") == ("", "")


FAKE = textwrap.dedent("""
    import json, sys, time
    mode = sys.argv[1]
    cfg = json.loads(sys.stdin.readline())
    if mode == "die":
        print("boom: no BPF here", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "slow":
        time.sleep(1)
    print(json.dumps({"ready": True, "mode": "bpf", "notes": [], "epoch": "e"}), flush=True)
    n = 0
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        if line.strip() == "read":
            n += 1
            if mode == "hang" and n == 2:
                time.sleep(30)
            print(json.dumps({"epoch": "e", "n": n, "policy": cfg["policy"]}), flush=True)
""")


def fake_client(tmp_path, mode, clock=None, **kw):
    script = tmp_path / "fake_probe.py"
    script.write_text(FAKE)
    return ProbeClient({"policy": "p"}, command=[sys.executable, str(script), mode], **kw,
                       **({"clock": clock} if clock else {}))


def test_answers_reads_in_order(tmp_path):
    c = fake_client(tmp_path, "ok")
    try:
        assert c.read(10) == {"epoch": "e", "n": 1, "policy": "p"}
        assert c.read(10)["n"] == 2
        assert c.info["mode"] == "bpf" and c.restarts == 0
    finally:
        c.close()
    assert c.pid is None


def test_a_probe_that_dies_is_retried_with_growing_backoff(tmp_path):
    now = [1000.0]
    real = __import__("time").monotonic

    def clock():
        return now[0] + (real() - start)

    start = real()
    c = fake_client(tmp_path, "die", clock=clock, backoff_initial=2, backoff_max=5)
    with pytest.raises(ProbeUnavailable, match=r"exited \(code 3\): boom"):
        c.read(10)
    with pytest.raises(ProbeUnavailable, match="next start in 2s"):
        c.read(10)  # too soon: nothing started
    assert c.starts == 1
    now[0] += 2
    with pytest.raises(ProbeUnavailable, match="exited"):
        c.read(10)
    assert c.starts == 2 and c.restarts == 1
    with pytest.raises(ProbeUnavailable, match="next start in 4s"):
        c.read(10)
    now[0] += 4
    with pytest.raises(ProbeUnavailable):
        c.read(10)
    with pytest.raises(ProbeUnavailable, match="next start in 5s"):  # capped
        c.read(10)


def test_a_slow_start_is_reported_as_starting_then_picked_up(tmp_path):
    c = fake_client(tmp_path, "slow")
    try:
        with pytest.raises(ProbeUnavailable, match="starting"):
            c.read(0.3)
        assert c.pid is not None  # still starting, not killed
        assert c.read(5)["n"] == 1
        assert c.starts == 1
    finally:
        c.close()


def test_a_hung_probe_is_killed(tmp_path):
    c = fake_client(tmp_path, "hang")
    try:
        assert c.read(10)["n"] == 1
        pid = c.pid
        with pytest.raises(ProbeUnavailable, match="did not answer"):
            c.read(0.5)
        assert c.pid is None
        import os
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        c.close()
