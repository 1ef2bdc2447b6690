"""Issue 12 item 15: the stream, the spool and the HTTP server are supervised. A dead thread restarts with
backoff and is a finding (agent.thread) and a metric (vigil_agent_thread_restarts_total); /healthz stays ok
while the agent can recover by itself. Also the whole agent (a real process) on a read-only spool directory."""
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from agent.base.http import MetricsServer
from agent.run.runner import CollectorRunner
from agent.run.selfcheck import SelfCheck
from agent.run.supervise import Supervisor
from tests.support import FIXTURES, ROOT

from .helpers import ReadOnly, client, free_port, replica, wait_for


def get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status, r.read().decode()


def self_findings(sup):
    from agent.base.collector import Context
    from agent.base.config import Expectations
    from agent.base.roots import Roots

    ctx = Context(Roots(ROOT / "nonexistent", ROOT / "nonexistent"), "n1", Expectations())
    return CollectorRunner(SelfCheck(ctx, sup)).run_once().output


def test_a_dead_stream_thread_is_restarted_and_reported(tmp_path):
    """The stream thread dies of a bug (injected: its loop raises once). The supervisor restarts it after a
    backoff, the events accepted meanwhile are delivered, and agent.thread{stream} says it happened."""
    r, applied = replica()
    sup = Supervisor(backoff_base=0.05, backoff_max=0.1)
    c = client(tmp_path, r.port)
    real, calls = c._connect_loop, []

    async def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected: a bug in the stream loop")
        await real()
    c._connect_loop = flaky
    try:
        sup.start()
        c.start(sup)
        c.info("container.oom_kill", "containers", "pod-1", "OOM kill")
        wait_for(lambda: applied.entities("container.oom_kill") == ["pod-1"], 10, "delivery after the restart")
        out = self_findings(sup)
        [f] = [f for f in out.findings if f.entity == "stream"]
        assert (f.check, f.status, f.severity) == ("agent.thread", "unhealthy", "warning")
        assert "injected" in f.message
        assert out.metrics.value("vigil_agent_thread_restarts_total", thread="stream") == 1
    finally:
        sup.stop()
        c.stop()
        r.stop()


def test_a_dead_http_server_is_restarted_on_the_same_port():
    """The listening socket is closed under the server (a double close elsewhere): serve_forever used to spin
    on it, deaf and busy. Now the thread ends, the supervisor binds the same port again and /metrics answers."""
    sup = Supervisor(backoff_base=0.05, backoff_max=0.1)
    server = MetricsServer("127.0.0.1", 0, lambda: b"vigil_up 1\n", lambda: (True, "ok"))
    sup.add("http", server.serve, server.recover, stopped=lambda: server.stopped)
    sup.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        assert get(url + "/metrics") == (200, "vigil_up 1\n")
        server.httpd.socket.close()
        wait_for(lambda: next(t for t in sup.status() if t.name == "http").restarts == 1, 10, "a restart")
        wait_for(lambda: next(t for t in sup.status() if t.name == "http").running, 10, "running again")
        assert get(url + "/metrics") == (200, "vigil_up 1\n")
        out = self_findings(sup)
        assert out.metrics.value("vigil_agent_thread_restarts_total", thread="http") == 1
    finally:
        sup.stop()
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_the_agent_runs_on_a_read_only_spool_directory_and_recovers(tmp_path):
    """Issue 13 end to end: `agent --aggregator ... --spool DIR/spool.db` with DIR read-only exited 1 with a
    traceback (CrashLoopBackOff: the node unmonitored). Now it serves /metrics and /healthz, says why, delivers
    the faulty GPU from memory, and takes the spool file once DIR is writable; `--once` works throughout."""
    ro = ReadOnly(tmp_path / "spooldir")
    ro.ro()
    r, applied = replica()
    port = free_port()
    spool = ro.path / "spool.db"
    cmd = [sys.executable, "-m", "agent.cli", "--snapshot", str(FIXTURES / "mi300x-faulty"), "--only", "gpu",
           "--aggregator", f"127.0.0.1:{r.port}", "--spool", str(spool)]
    log = open(tmp_path / "agent.log", "w")
    proc = subprocess.Popen(cmd + ["--listen", f"127.0.0.1:{port}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def metrics():
            try:
                return get(f"http://127.0.0.1:{port}/metrics")[1]
            except OSError:
                assert proc.poll() is None, (tmp_path / "agent.log").read_text()
                return ""
        wait_for(lambda: "vigil_spool_healthy 0.0" in metrics(), 30, "the agent serving, spool in memory")
        body = metrics()
        assert 'vigil_check_status{check="agent.spool",entity="mi300x-c14-faulty",severity="warning"} 0.0' in body
        assert 'vigil_spool_faults_total{reason="readonly"} 1.0' in body
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        wait_for(lambda: r.run(lambda: [p.entity for n in r.replica.engine.nodes.values()
                                        for p in n.fatal_problems()]) == ["gpu3"], 20, "gpu3 reported from memory")
        once = subprocess.run(cmd + ["--once", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert once.returncode == 1 and '"gpu.ecc.uncorrectable"' in once.stdout, once.stderr
        ro.rw()
        wait_for(lambda: "vigil_spool_healthy 1.0" in metrics(), 30, "the spool file in use")
        assert spool.exists()
    finally:
        proc.terminate()
        try:
            rc = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
            r.stop()
            ro.close()
    assert rc == 0, (tmp_path / "agent.log").read_text()
