"""Fixtures of the netflow tests that run real eBPF on this kernel (root, BCC, tracefs, kernel headers: CI
installs them with scripts/install-deps.sh and runs as root). A missing part fails the test instead of
skipping it; only a run without root skips, saying so."""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.sources.netflow.probe import cgroup2_mount

from .helpers import HOST4, HOST6, POD4, POD6, REPO, make_collector, peer_classes


@pytest.fixture(scope="session")
def bpf_host():
    """This machine, ready for BCC: root, headers linked, tracefs mounted (scripts/setup-bpf.sh does both)."""
    if os.geteuid() != 0:
        pytest.skip("netflow's eBPF tests need root (CI runs the suite as root)")
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists() or not Path("/sys/kernel/tracing/events/sock").exists():
        subprocess.run(["bash", str(REPO / "scripts" / "setup-bpf.sh")], check=True)
    probe = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", "import bcc"], capture_output=True,
                           text=True, check=False)
    if probe.returncode != 0:
        pytest.fail(f"BCC is not importable from the venv (scripts/install-deps.sh sets it up): {probe.stderr}")
    if not Path("/sys/kernel/tracing/events/sock/inet_sock_set_state").exists():
        pytest.fail("tracefs has no sock:inet_sock_set_state (setup-bpf.sh mounts /sys/kernel/tracing)")
    if cgroup2_mount() is None:
        pytest.fail("no cgroup v2 mount: the sock_ops program needs one")


@pytest.fixture(scope="session")
def testnet(bpf_host):
    """A network namespace joined to the host by a veth pair, with addresses of the tests' own (IPv4 and IPv6)
    on those two veths only; deleted afterwards."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, pod_if = f"vigil-nf-{tag}", f"vnf{tag}h", f"vnf{tag}p"

    def ip(*args, netns=None):
        cmd = ["ip", *(["-n", netns] if netns else []), *args]
        subprocess.run(cmd, check=True, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", pod_if)
        ip("link", "set", pod_if, "netns", ns)
        ip("addr", "add", f"{HOST4}/30", "dev", host_if)
        ip("-6", "addr", "add", f"{HOST6}/64", "dev", host_if, "nodad")
        ip("link", "set", host_if, "up")
        ip("addr", "add", f"{POD4}/30", "dev", pod_if, netns=ns)
        ip("-6", "addr", "add", f"{POD6}/64", "dev", pod_if, "nodad", netns=ns)
        ip("link", "set", pod_if, "up", netns=ns)
        ip("link", "set", "lo", "up", netns=ns)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True, check=False)


@pytest.fixture(scope="session")
def v6_port():
    """A port for the IPv6 loopback test's peer class (ports of interest classify both ends)."""
    s = socket.socket(socket.AF_INET6)
    s.bind(("::1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def facts():
    """What the container source would publish; tests set its pod maps."""
    from agent.base.collector import Facts

    return Facts()


@pytest.fixture(scope="session")
def netflow(testnet, v6_port, facts):
    """One probe for the session (compiling and loading BPF takes a second or two): a netflow collector with
    the tests' peer classes."""
    classes, ports = peer_classes(v6_port)
    c = make_collector({"classes": classes, "ports": ports}, facts)
    yield c
    c.close()


@pytest.fixture
def cgroup(bpf_host):
    """A cgroup v2 directory of the test's own; its processes go back to the root before it is removed."""
    root = Path(cgroup2_mount())
    path = root / f"vigil-nf-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            try:
                (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        path.rmdir()
