"""`--log-format json` of both commands, as real processes: an aggregator (`vigil-aggregator serve`) against the
project's fake API server, and an agent on the faulty fixture node streaming to it over real gRPC on loopback.
Every line either writes is strict JSON (json.loads) with time, level, logger and message; the agent's lines name
its node, the aggregator's decision lines the node and the failed check. The default stays text."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from agent.fakekube.server import FakeKube
from tests.aggregator.helpers import agent_pod, stop, wait_for
from tests.deploy.helpers import free_port
from tests.support import ROOT

NODE = "gpu-node-3"


def lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def strict(line: str) -> dict:
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")
    obj = json.loads(line, parse_constant=no_constants)
    assert {"time", "level", "logger", "message"} <= set(obj), obj
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"]), obj
    assert obj["level"] in {"debug", "info", "warning", "error", "critical"}
    return obj


def test_json_logs_of_agent_and_aggregator(tmp_path):
    with FakeKube(namespaces=("vigil",)) as fk:
        token = agent_pod(fk, NODE, tmp_path)
        kubeconfig = tmp_path / "kubeconfig"
        fk.write_kubeconfig(str(kubeconfig), token=fk.admin_token)
        port = free_port()
        agg_log, agent_log = tmp_path / "aggregator.log", tmp_path / "agent.log"
        with open(agg_log, "wb") as fh:
            agg = subprocess.Popen(
                [sys.executable, "-m", "agent.aggregator.cli", "serve", "--kubeconfig", str(kubeconfig),
                 "--namespace", "vigil", "--no-lease", "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off",
                 "--heartbeat-interval", "1", "--log-format", "json"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        with open(agent_log, "wb") as fh:
            ag = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "--snapshot", "mi300x-faulty", "--node-name", NODE, "--only",
                 "gpu", "--listen", "127.0.0.1:0", "--aggregator", f"127.0.0.1:{port}", "--spool",
                 str(tmp_path / "spool.db"), "--token-file", str(token), "--log-format", "json"],
                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "decided unhealthy" in agg_log.read_text() and "established" in agent_log.read_text(),
                     timeout=60, what=f"a decision and a stream\n{agg_log.read_text()}\n{agent_log.read_text()}")
            time.sleep(0.5)
        finally:
            stop(ag)
            stop(agg)
    agg_lines = [strict(x) for x in lines(agg_log)]
    agent_lines = [strict(x) for x in lines(agent_log)]
    decided = [o for o in agg_lines if "decided unhealthy" in o["message"]]
    assert decided and decided[0]["node"] == NODE and decided[0]["check"] == "gpu.ecc.uncorrectable", decided
    assert decided[0]["logger"].startswith("agent.aggregator") and decided[0]["level"] == "info"
    assert any("tainted" in o["message"] and o.get("node") == NODE for o in agg_lines), agg_lines
    assert agent_lines and all(o["node"] == NODE for o in agent_lines), agent_lines


def test_default_log_format_is_text(tmp_path):
    """The same kind of line, readable: 'TIME LEVEL LOGGER: message' (here: a stream that cannot connect)."""
    log = tmp_path / "agent.log"
    with open(log, "wb") as fh:
        ag = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--snapshot", "mi300x-faulty", "--only", "gpu", "--listen",
             "127.0.0.1:0", "--aggregator", f"127.0.0.1:{free_port()}", "--spool", str(tmp_path / "spool.db")],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: lines(log), timeout=60, what="a log line")
    finally:
        stop(ag)
    first = lines(log)[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) agent", first), first
    assert not first.startswith("{")


def test_bad_log_format_exits_64():
    for cmd in (["agent.cli"], ["agent.aggregator.cli", "serve"]):
        p = subprocess.run([sys.executable, "-m", *cmd, "--log-format", "xml"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 64 and "--log-format" in p.stderr, p.stderr
