"""The GPU health service AMD's device plugin reads (agent/run/amd_health.py, proto/metricssvc).

No AMD GPU, kubelet or device plugin can run here: the agent replays real/derived amd-smi captures of an 8x MI300X
node (fixtures/nodes), serves the real gRPC service on a real unix socket, and the client is the plugin's own
calls (tests/amd_health/plugin_client.py) over the plugin's own compiled descriptor.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from agent.base.collector import Context, RunMode
from agent.base.config import ConfigError, load
from agent.base.findings import FATAL, Finding, bad, ok, unknown
from agent.base.roots import Roots, merge_expectations, read_node_file
from agent.run.amd_health import (HEALTHY, MAX_CONNECTIONS, AmdHealthServer, GpuHealth, SocketBusy,
                                  amd_gpu_addresses, check_path, derive)
from agent.run.loop import build_collectors, collector_schemas, run_all_once
from agent.run.runner import CollectorRunner
from tests.amd_health import plugin_client as plugin
from tests.support import FIXTURES, ROOT

FAULTY_GPU3 = "0000:5c:00.0"
MI300X_BDFS = ["0000:0c:00.0", "0000:22:00.0", "0000:38:00.0", "0000:5c:00.0", "0000:9f:00.0", "0000:af:00.0",
               "0000:bf:00.0", "0000:df:00.0"]


def short_dir() -> Path:
    """A directory for sockets: pytest's tmp_path can pass the 107-byte limit of a socket path."""
    import tempfile
    return Path(tempfile.mkdtemp(prefix="vigil-amd-"))


def wait_for(cond, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def replay(name: str):
    """One cycle of every collector on a fixture node, in process: (findings, ctx)."""
    roots = Roots.from_snapshot(FIXTURES / name)
    nf = read_node_file(roots.snapshot / "node.json")
    config = load(None, collector_schemas())
    ctx = Context(roots, nf.node or name, merge_expectations(config.agent.expect, nf.expect), mode=RunMode(once=True))
    collectors = build_collectors(config, ctx)
    results = run_all_once([CollectorRunner(c) for c in collectors])
    for c in collectors:
        c.close()
    return [f for r in results for f in r.output.findings], ctx


def health_of(name: str) -> dict[str, str]:
    findings, ctx = replay(name)
    return {g.device: g.health for g in derive(findings, ctx.facts.gpus, amd_gpu_addresses(ctx.roots.sysfs))}


# -- the wire: our proto is the plugin's --------------------------------------------------------------------
def test_our_proto_is_wire_compatible_with_the_plugins_descriptor():
    """Package, service, methods and every field (name, number, type, label) as the plugin compiled them."""
    from google.protobuf import descriptor_pb2

    from agent._proto.metricssvc import metricssvc_pb2

    ours = descriptor_pb2.FileDescriptorProto()
    metricssvc_pb2.DESCRIPTOR.CopyToProto(ours)
    theirs = plugin.plugin_file()
    assert ours.package == theirs.package == "metricssvc"
    shape = lambda m: {f.number: (f.name, f.type, f.label, f.type_name) for f in m.field}  # noqa: E731
    their_msgs = {m.name: m for m in theirs.message_type}
    assert ours.message_type, "no messages"
    for m in ours.message_type:
        assert shape(m) == shape(their_msgs[m.name]), m.name
    [their_svc], [our_svc] = theirs.service, ours.service
    assert our_svc.name == their_svc.name == "MetricsService"
    methods = lambda s: {m.name: (m.input_type, m.output_type) for m in s.method}  # noqa: E731
    assert methods(our_svc) == methods(their_svc)
    assert [(v.name, v.number) for v in ours.enum_type[0].value] == [(v.name, v.number) for v in theirs.enum_type[0].value]


# -- the real agent, the plugin's calls ---------------------------------------------------------------------
def start_agent(tmp: Path, node: str, sock: Path, *extra: str) -> subprocess.Popen:
    config = tmp / "vigil.yaml"
    config.write_text(f"amd_device_plugin:\n  enabled: true\n  socket_path: {sock}\ngpu_events: {{state_dir: ''}}\n")
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "--snapshot", node, "--listen", "127.0.0.1:0",
                             "--config", str(config), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def stop(p: subprocess.Popen) -> str:
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out


def test_eight_gpu_node_with_one_bad_gpu_keeps_seven_allocatable():
    """mi300x-faulty: GPU 3 has 2 uncorrectable ECC errors (fatal), GPU 5 a PCIe link at x8 (a warning). The
    plugin, reading the real agent, tells the kubelet 7 Healthy devices and GPU 3 Unhealthy."""
    tmp = short_dir()
    sock = tmp / "amd" / "health.socket"  # the directory does not exist yet: the agent makes it
    p = start_agent(tmp, "mi300x-faulty", sock)
    try:
        wait_for(sock.exists, what="the agent's socket")
        seen = plugin.device_health(sock, MI300X_BDFS)
        assert seen[FAULTY_GPU3] == plugin.UNHEALTHY
        assert sorted(d for d, h in seen.items() if h == plugin.HEALTHY) == sorted(set(MI300X_BDFS) - {FAULTY_GPU3})
        allocatable = sum(h == plugin.HEALTHY for h in seen.values())
        assert allocatable == 7
        reply = plugin.list_gpus(sock)
        assert [(g.ID, g.Device) for g in reply.GPUState] == [(str(i), b) for i, b in enumerate(MI300X_BDFS)]
        assert all(g.UUID for g in reply.GPUState)
        one = plugin.get_gpu_state(sock, ["3"])
        assert [(g.ID, g.Health) for g in one.GPUState] == [("3", "unhealthy")]
    finally:
        out = stop(p)
    assert p.returncode == 0, out
    assert not sock.exists(), "the agent removes its own socket when it stops"


def test_healthy_node_keeps_all_eight():
    assert set(health_of("mi300x-rocm71-healthy").values()) == {HEALTHY}
    assert len(health_of("mi300x-rocm71-healthy")) == 8


# -- never "healthy" for a GPU the agent could not read -------------------------------------------------------
def test_smi_broken_lists_every_gpu_on_the_bus_as_unknown():
    """No SMI output, 8 AMD GPUs on the PCI bus: each is listed (so the plugin's own DRM check cannot call it
    healthy) as unknown, which the plugin reads as Unhealthy."""
    h = health_of("mi300x-smi-broken")
    assert sorted(h) == MI300X_BDFS and set(h.values()) == {"unknown"}


def test_gpu_whose_metrics_were_cut_short_is_not_healthy():
    """mi300x-metric-truncated: amd-smi metric was cut short, so every GPU's ECC checks could not run."""
    h = health_of("mi300x-metric-truncated")
    assert HEALTHY not in h.values() and len(h) == 8


def test_missing_gpu_leaves_the_others_allocatable():
    """One GPU fewer than expected (gpu.count fails, node-wide): the seven present GPUs stay healthy; the node's
    cordon is the aggregator's business."""
    h = health_of("mi300x-gpu-missing")
    assert len(h) == 7 and set(h.values()) == {HEALTHY}


class G:  # a GpuReading's join fields
    def __init__(self, index, pci, vendor="amd", partition="", uuid="u"):
        self.index, self.pci_bus_id, self.vendor, self.partition, self.uuid = index, pci, vendor, partition, uuid


def test_rules():
    gpus = [G(0, "0000:0C:00.0"), G(1, "0000:22:00.0"), G(0, "0000:0c:00.0", partition="1"), G(9, "0000:99:00.0",
                                                                                            vendor="nvidia")]
    base = [ok("gpu.ecc.uncorrectable", "gpu", "gpu0", ""), ok("gpu.ecc.uncorrectable", "gpu", "gpu1", "")]
    rows = derive(base, gpus)
    assert [(r.index, r.device, r.health) for r in rows] == [("0", "0000:0c:00.0", HEALTHY),
                                                            ("1", "0000:22:00.0", HEALTHY)]
    # a fatal check that could not run on gpu1; a warning that fires on gpu0 withdraws nothing
    rows = derive(base + [unknown("gpu.xgmi", "gpu", "gpu1", "not read"),
                          bad("gpu.pcie.width", "gpu", "gpu0", "x8", "warning")], gpus)
    assert [r.health for r in rows] == [HEALTHY, "unknown"]
    # an event on an unmapped address of a known GPU counts for that GPU
    rows = derive(base + [bad("gpu.ras", "gpu", "pci:0000:22:00.0", "uncorrectable")], gpus)
    assert [r.health for r in rows] == [HEALTHY, "unhealthy"]
    # a hung SMI (node-wide, fatal): nothing read is trusted
    rows = derive(base + [bad("gpu.smi_unresponsive", "gpu", "node", "stuck")], gpus)
    assert {r.health for r in rows} == {"unknown"}
    # a GPU no check has judged yet
    assert [r.health for r in derive([], gpus[:1])] == ["unknown"]
    # an info event does not withdraw a GPU
    info = Finding("gpu.xid", "gpu", "gpu0", "unhealthy", "info", "Xid 13", kind="event")
    assert derive(base + [info], gpus)[0].health == HEALTHY
    # a GPU on the bus that no reading has
    assert [(r.device, r.health) for r in derive(base, gpus, ["0000:22:00.0", "0000:44:00.0"])][-1] == \
        ("0000:44:00.0", "unknown")


# -- the socket path: stale, in use, not a socket, missing ----------------------------------------------------
def serve(sock: Path, rows=None) -> AmdHealthServer:
    rows = rows if rows is not None else [GpuHealth("0", "u", "0000:0c:00.0", HEALTHY, "")]
    server = AmdHealthServer(str(sock), lambda: rows, "node-a")
    return server


def test_stale_socket_file_is_replaced():
    """A socket file left by a dead exporter (or a killed agent): nobody answers, so the agent takes the path."""
    sock = short_dir() / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()  # the file stays; no process listens
    server = serve(sock)
    try:
        server.bind()
        assert plugin.gpu_health(sock) == {"0000:0c:00.0": plugin.HEALTHY}
    finally:
        server.stop()


def test_socket_another_process_serves_is_left_alone_and_taken_once_free():
    """The exporter serving its socket: the agent does not take it (both must not serve it), says so in
    agent.amd_health, and binds once the other process is gone."""
    sock = short_dir() / "s.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock))
    other.listen(1)
    inode = os.stat(sock).st_ino
    server = serve(sock)
    try:
        with pytest.raises(SocketBusy, match="served by another process"):
            server.bind()
        assert os.stat(sock).st_ino == inode, "the other process's socket is untouched"
        [f] = server.findings()
        assert f.check == "agent.amd_health" and f.status == "unhealthy" and "another process" in f.message
        other.close()
        server.recover()
        assert plugin.gpu_health(sock) == {"0000:0c:00.0": plugin.HEALTHY}
        assert server.findings()[0].status == "ok"
    finally:
        other.close()
        server.stop()


def test_path_that_is_not_a_socket_is_never_removed():
    sock = short_dir() / "s.sock"
    sock.write_text("someone's file")
    with pytest.raises(SocketBusy, match="not a socket"):
        check_path(str(sock))
    assert sock.read_text() == "someone's file"


def test_socket_replaced_under_the_agent_ends_serve_and_it_does_not_fight_back():
    """The exporter starts after the agent and takes the path: serve() notices (the supervisor restarts it), and
    recover() refuses while the exporter answers there."""
    sock = short_dir() / "s.sock"
    server = serve(sock)
    server.bind()
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(SocketBusy, server.serve)), daemon=True)
    t.start()
    os.unlink(sock)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock))
    other.listen(1)
    try:
        t.join(10)
        assert not t.is_alive() and errors
        with pytest.raises(SocketBusy):
            server.recover()
        assert os.path.exists(sock)
    finally:
        other.close()
        server.stop()
    assert os.path.exists(sock), "stop() removes only the agent's own socket file"


def test_config_keys_are_checked():
    schemas = collector_schemas()
    assert load(None, schemas).amd_device_plugin.enabled is False  # off by default
    for text, key in (("amd_device_plugin: {socket_path: rel/path.sock}", "absolute"),
                      ("amd_device_plugin: {socket_path: /" + "a" * 120 + "}", "at most 107"),
                      ("amd_device_plugin: {enabled: yes please}", "true or false"),
                      ("amd_device_plugin: {port: 5}", "unknown key")):
        with pytest.raises(ConfigError, match=key) as e:
            load(None, schemas, text=text)
        assert str(e.value).startswith("amd_device_plugin.")


def test_enabled_without_the_gpu_collector_exits_78(tmp_path):
    config = tmp_path / "v.yaml"
    config.write_text("amd_device_plugin: {enabled: true, socket_path: /tmp/x.sock}\n")
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--snapshot", "mi300x-faulty", "--only", "rdma",
                        "--listen", "127.0.0.1:0", "--config", str(config)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 78 and "amd_device_plugin.enabled" in p.stderr


# -- hostile clients: bounded -----------------------------------------------------------------------------------
def test_huge_request_is_refused_and_the_service_goes_on():
    sock = short_dir() / "s.sock"
    server = serve(sock)
    server.bind()
    try:
        with pytest.raises(grpc.RpcError) as e:
            plugin.get_gpu_state(sock, ["x" * 1000] * 1000)  # about 1 MB
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as e:
            plugin.get_gpu_state(sock, ["0"] * 300)  # fits, but more ids than a node has GPUs
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert plugin.gpu_health(sock) == {"0000:0c:00.0": plugin.HEALTHY}
    finally:
        server.stop()


def test_many_silent_connections_cost_a_bounded_number_of_slots():
    """Connections that never speak HTTP/2 hold at most MAX_CONNECTIONS slots, each only for the handshake
    deadline; the agent's threads do not grow with them, and the plugin gets its answer again."""
    sock = short_dir() / "s.sock"
    server = serve(sock)
    server.bind()
    silent = []
    try:
        before = threading.active_count()
        for _ in range(4 * MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            silent.append(s)
        assert threading.active_count() <= before + 2

        def answers():
            try:
                return plugin.gpu_health(sock) == {"0000:0c:00.0": plugin.HEALTHY}
            except grpc.RpcError:
                return False
        wait_for(answers, timeout=30, what="an answer past the silent connections")
    finally:
        for s in silent:
            s.close()
        server.stop()
