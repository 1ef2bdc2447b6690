"""Real eBPF: the probe process's life. Killed, it is reported unavailable (the counters stay exported), then
started again; its sock_ops program goes with it (a BPF link, not a cgroup attachment that would outlive it);
a connection opened under the first probe and closed under the second still counts each byte once. Without
BPF the source degrades to live sockets and says so."""
from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest

from agent.sources.netflow.probe import BPF_CGROUP_SOCK_OPS, cgroup2_mount

from .helpers import Scrape, connect, delta, exchange, flow, listener, make_collector

pytestmark = pytest.mark.root


def sock_ops_programs() -> int:
    """Programs attached to the cgroup v2 root for sock_ops (BPF_PROG_QUERY, effective)."""
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = os.open(cgroup2_mount(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ctypes.c_uint32 * 64)()
        cnt = ctypes.c_uint32(64)
        flags = ctypes.c_uint32(0)
        rc = libbpf.bpf_prog_query(fd, BPF_CGROUP_SOCK_OPS, 1, ctypes.byref(flags), ids, ctypes.byref(cnt))
        assert rc == 0, os.strerror(ctypes.get_errno())
        return cnt.value
    finally:
        os.close(fd)


def test_killed_probe_is_unavailable_then_restarted_and_counts_once(bpf_host):
    base = sock_ops_programs()
    c = make_collector({"classes": {"t7_srv": ["127.77.10.1/32"], "t7_cli": ["127.77.10.2/32"]}})
    try:
        start = Scrape(c)
        assert sock_ops_programs() == base + 1
        srv = listener("127.77.10.1")
        long = connect(srv, src="127.77.10.2")
        long.up(5_000)
        first = Scrape(c, start.observation)
        assert flow(first, start, "t7_srv") == (5_000, 0)

        pid = c.client.pid
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if sock_ops_programs() == base:
                break
            time.sleep(0.05)
        assert sock_ops_programs() == base  # the kernel detached the dead probe's program
        long.up(300)
        down = Scrape(c, first.observation)
        assert down.reading.state == "unavailable"
        probe = down.finding("netflow.probe", "test-node")
        assert (probe.status, probe.severity) == ("unknown", "warning") and "exited" in probe.message
        assert down.total("vigil_netflow_probe_up") == 0
        assert flow(down, start, "t7_srv") == (5_000, 0)  # counters stay, never backwards

        time.sleep(1.1)  # the first restart waits one second
        back = Scrape(c, down.observation)
        assert back.reading.state == "ok", back.reading.reason
        assert c.client.pid not in (None, pid)
        assert back.total("vigil_netflow_probe_restarts_total") == 1
        assert sock_ops_programs() == base + 1
        assert flow(back, start, "t7_srv") == (5_300, 0)  # the live socket, now untracked, read on

        exchange(srv, 77, 88, src="127.77.10.2")  # a connection of the new probe's own
        long.up(20)
        long.close()  # set up by the first probe, closed under the second: an orphan record
        end = Scrape(c, back.observation)
        assert flow(end, start, "t7_srv") == (5_000 + 300 + 20 + 77, 88)
        assert flow(end, start, "t7_cli") == (88, 5_397)
        assert delta(end, back, "vigil_netflow_map_overflows_total", map="records") == 0
        srv.close()
    finally:
        c.close()
    assert sock_ops_programs() == base


def test_without_bpf_live_sockets_only_and_said_so(bpf_host):
    c = make_collector({"classes": {"t8_srv": ["127.77.11.1/32"]}, "bpf": False})
    try:
        start = Scrape(c)
        assert start.reading.mode == "inet_diag"
        probe = start.finding("netflow.probe", "test-node")
        assert probe.status == "unknown" and "degraded" in probe.message
        srv = listener("127.77.11.1")
        p = connect(srv, src="127.77.11.2")
        p.up(4_000)
        live = Scrape(c, start.observation)
        assert flow(live, start, "t8_srv") == (4_000, 0)
        assert live.total("vigil_netflow_programs_loaded") == 0
        p.close()
        srv.close()
    finally:
        c.close()


def test_dump_fallback_counts_the_same(bpf_host):
    """Kernels without namespace cookies (< 5.14) dump every socket on each read instead of looking up the
    listed ones; the storage in the dump tells the kernel program's view. Same bytes."""
    c = make_collector({"classes": {"t9_srv": ["127.77.12.1/32"], "t9_cli": ["127.77.12.2/32"]}})
    client = c._make_client()
    client.config["dump"] = True  # what the probe does when SO_NETNS_COOKIE is missing
    c._client = client
    try:
        start = Scrape(c)
        assert start.reading.state == "ok" and "live" not in [m[0] for m in start.reading.maps]
        srv = listener("127.77.12.1")
        exchange(srv, 1_234, 56, src="127.77.12.2")
        long = connect(srv, src="127.77.12.2")
        long.up(10_000)
        mid = Scrape(c, start.observation)
        assert flow(mid, start, "t9_srv") == (11_234, 56)
        assert flow(mid, start, "t9_cli") == (56, 11_234)
        long.down(5)
        long.close("server")
        end = Scrape(c, mid.observation)
        assert flow(end, start, "t9_srv") == (11_234, 61)
        assert flow(end, start, "t9_cli") == (61, 11_234)
        srv.close()
    finally:
        c.close()


def test_tracepoint_fallback_counts_connections_and_live_bytes(bpf_host):
    """Where sock_ops cannot run (no cgroup v2, verifier refusal), the tracepoint counts opens and failed
    connects, and live sockets are still read: the source says it is degraded."""
    c = make_collector({"classes": {"t10_srv": ["127.77.13.1/32"], "t10_cli": ["127.77.13.2/32"]}})
    client = c._make_client()
    client.config["sock_ops"] = False
    c._client = client
    try:
        start = Scrape(c)
        assert start.reading.mode == "tracepoint"
        assert start.finding("netflow.probe", "test-node").status == "unknown"
        assert start.total("vigil_netflow_programs_loaded") == 1
        srv = listener("127.77.13.1")
        exchange(srv, 10, 20, src="127.77.13.2")
        long = connect(srv, src="127.77.13.2")
        long.up(3_000)
        mid = Scrape(c, start.observation)
        assert delta(mid, start, "vigil_tcp_connections_total", direction="egress", peer_class="t10_srv") == 2
        assert delta(mid, start, "vigil_tcp_connections_total", direction="ingress", peer_class="t10_cli") == 2
        # Live sockets are read (an active open's SYN assumed: no listener on the client's port).
        assert flow(mid, start, "t10_srv") == (3_000, 0)
        long.close()
        port = srv.getsockname()[1]
        srv.close()
        import socket as _s
        with pytest.raises(ConnectionRefusedError):
            _s.create_connection(("127.77.13.1", port), timeout=2)
        end = Scrape(c, mid.observation)
        assert delta(end, start, "vigil_tcp_connect_failures_total", peer_class="t10_srv") == 1
    finally:
        c.close()


def test_probe_outlives_the_threads_that_read_it(bpf_host):
    """The agent's runner reads each collector from a short-lived thread: the probe started by the first one
    must keep running after that thread ends."""
    from agent.run.runner import CollectorRunner

    c = make_collector({"classes": {"t12": ["127.77.16.0/24"]}})
    runner = CollectorRunner(c)
    try:
        first = runner.run_once()
        pid = c.client.pid
        assert first.success and pid is not None
        time.sleep(0.5)
        second = runner.run_once()
        probe = [f for f in second.output.findings if f.check == "netflow.probe"]
        assert probe[0].status == "ok", probe
        assert c.client.pid == pid and c.client.restarts == 0
    finally:
        c.close()


AGENT_SCRIPT = """
import time
from tests.netflow.helpers import make_collector
c = make_collector({})
r = c.read()
print(r.state, c.client.pid, flush=True)
time.sleep(60)
"""


def test_probe_exits_when_the_agent_is_killed(bpf_host):
    """An agent killed outright (SIGKILL: no close()) takes its probe along: the probe sees its pipe close,
    exits, and the kernel detaches its program."""
    import subprocess
    import sys

    from .helpers import REPO

    base = sock_ops_programs()
    agent = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        state, pid = agent.stdout.readline().split()
        assert state == "ok"
        assert sock_ops_programs() == base + 1
        agent.kill()
        agent.wait(10)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}") and sock_ops_programs() == base:
                break
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
        assert sock_ops_programs() == base
    finally:
        if agent.poll() is None:
            agent.kill()
