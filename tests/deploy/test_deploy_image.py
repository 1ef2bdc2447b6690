"""The Dockerfile, built and run for real: buildah (Debian) builds the `agent` and `aggregator` targets on a
Debian bookworm base made with mmdebstrap, and a private containerd (REAL-PARTS.md) runs them:
  - the agent image with the DaemonSet's capabilities (every runtime default dropped), a read-only root
    filesystem and a fixture node mounted: `agent --once` answers 1 (unhealthy) with the fixture's fault;
  - the agent image as the DaemonSet runs it on a node: hostNetwork, hostPID, the host's /sys, /proc, tracefs,
    /lib/modules and /usr/src mounted as the manifest says, the DaemonSet's args and the ConfigMap's config:
    /healthz answers, every collector reports, and BCC inside the image loads the netflow probe with only those
    capabilities (the headers strategy: the node's headers, mounted);
  - the aggregator image runs as uid 65532 by default and serves (the Deployment's args) against the project's
    fake API server: /healthz, and /readyz once it holds the Lease.

Opt-in (VIGIL_IMAGE_TEST=1), and on in CI (.ci/run sets it, so a broken Dockerfile cannot land): building needs
the network (Debian's mirror for the base and the images' apt packages, PyPI for the Python dependencies) and takes
6 to 11 minutes on 2 cores (measured 364 s and 655 s), while the rest of the suite runs offline. The
build environment's pip configuration and CA bundle (/etc/pip.conf, the system bundle) are mounted into the
build's RUN steps when present, as a proxy or a local index needs; nothing of them enters the images.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from .helpers import (FIXTURES, ROOT, container, expand, free_port, http_get, one, rendered, split_args,
                      wait_http)

pytestmark = [
    pytest.mark.skipif(os.environ.get("VIGIL_IMAGE_TEST") != "1",
                       reason="image build is opt-in: VIGIL_IMAGE_TEST=1 (needs buildah, mmdebstrap, containerd, "
                              "root and the network to Debian and PyPI; a few minutes)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (buildah, containerd)"),
    # The first test builds both images (6 to 11 minutes on 2 cores); the suite's 300 s would cut it off.
    pytest.mark.timeout(1800),
]
BASE = "localhost/debian:bookworm-slim"
RUNTIME_DEFAULT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                        "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"]


def sh(*argv, timeout=1800, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, argv))} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def have(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: apt-get install buildah mmdebstrap containerd runc")


def build_mounts(tmp: Path) -> list[str]:
    """The build machine's pip configuration and CA bundle, for the images' RUN steps (a proxy or a local index).
    The bundle goes to a path of its own: mounted over /etc/ssl/certs/ca-certificates.crt (read-only), it made
    the image's ca-certificates postinst fail, and with it every apt-get install that pulls that package in."""
    mounts = []
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        mounts += ["-v", f"{bundle}:/run/vigil-build-ca.crt:ro"]
    conf = Path("/etc/pip.conf")
    if conf.exists():
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(conf)
        for section in parser.sections():
            if parser.has_option(section, "cert"):
                parser.set(section, "cert", "/run/vigil-build-ca.crt")
        with open(tmp / "pip.conf", "w") as fh:
            parser.write(fh)
        mounts += ["-v", f"{tmp / 'pip.conf'}:/etc/pip.conf:ro"]
    return mounts


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    have("buildah", "mmdebstrap", "containerd", "ctr")
    tmp = tmp_path_factory.mktemp("image")
    if subprocess.run(["buildah", "inspect", "--type", "image", BASE], capture_output=True).returncode != 0:
        tar = tmp / "debian.tar"
        sh("mmdebstrap", "--variant=minbase", "bookworm", tar, "http://deb.debian.org/debian")
        c = sh("buildah", "from", "scratch").stdout.strip()
        sh("buildah", "add", c, tar, "/")
        sh("buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", c)
        sh("buildah", "commit", "--rm", c, BASE)
    mounts = build_mounts(tmp)
    out = {}
    for target in ("agent", "aggregator"):
        tag = f"localhost/vigil-{target}:test-{uuid.uuid4().hex[:6]}"
        sh("buildah", "bud", "--isolation", "chroot", "--layers", *mounts, "--build-arg", f"BASE={BASE}",
           "--target", target, "-t", tag, ".", cwd=ROOT)
        archive = tmp / f"{target}.tar"
        sh("buildah", "push", tag, f"oci-archive:{archive}:{tag}")
        out[target] = (tag, archive)
    yield out
    for tag, _ in out.values():  # CI runs on a kept machine: no image per run piles up (the layer cache stays)
        subprocess.run(["buildah", "rmi", tag], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def ctr(images, tmp_path_factory):
    """A private containerd (no CRI), the images imported into namespace vigil."""
    d = tmp_path_factory.mktemp("containerd")
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
                                   'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                                   f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
                                   f'[debug]\n  address = "{d}/debug.sock"\n')
    log = open(d / "containerd.log", "wb")
    daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

        def run(*argv, check=True, timeout=600):
            p = subprocess.run(["ctr", "-a", str(sock), "-n", "vigil", *map(str, argv)], capture_output=True,
                               text=True, timeout=timeout)
            if check:
                assert p.returncode == 0, f"ctr {' '.join(map(str, argv))}: {p.returncode}\n{p.stdout}\n{p.stderr}"
            return p
        for tag, archive in images.values():
            run("image", "import", archive)
        yield run
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def daemonset_caps() -> tuple[list[str], list[str]]:
    """The DaemonSet's capabilities that this machine's root holds, and those it lacks (it cannot grant them)."""
    mask = int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("CapBnd")).split()[1], 16)
    bits = {"BPF": 39, "PERFMON": 38, "NET_ADMIN": 12, "SYS_RESOURCE": 24, "SYSLOG": 34, "SYS_ADMIN": 21}
    add = container(rendered("base"), "DaemonSet", "vigil-agent", "agent")["securityContext"]["capabilities"]["add"]
    return [c for c in add if mask >> bits[c] & 1], [c for c in add if not mask >> bits[c] & 1]


def cap_flags() -> list[str]:
    have_caps, lacking = daemonset_caps()
    assert set(lacking) <= {"SYS_RESOURCE"}, lacking  # this VM's root lacks only that one
    return [f for c in RUNTIME_DEFAULT_CAPS for f in ("--cap-drop", f"CAP_{c}")] + \
           [f for c in have_caps for f in ("--cap-add", f"CAP_{c}")]


def test_agent_image_diagnoses_a_fixture_node(images, ctr):
    tag, _ = images["agent"]
    name = f"once-{uuid.uuid4().hex[:6]}"
    p = ctr("run", "--rm", "--read-only", *cap_flags(),
            "--mount", f"type=bind,src={FIXTURES / 'mi300x-faulty'},dst=/snap,options=rbind:ro",
            tag, name, "agent", "--once", "--json", "--snapshot", "/snap", check=False, timeout=300)
    report = json.loads(p.stdout)
    assert report["status"] == "unhealthy"
    assert any(f["check"] == "gpu.ecc.uncorrectable" and f["entity"] == "gpu3" and f["status"] == "unhealthy"
               for f in report["findings"])


def test_agent_image_runs_as_the_daemonset(images, ctr, tmp_path):
    tag, _ = images["agent"]
    objs = rendered("base")
    c = container(objs, "DaemonSet", "vigil-agent", "agent")
    spec = one(objs, "DaemonSet", "vigil-agent")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = []
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        if "hostPath" in v:
            src = v["hostPath"]["path"]
            if src == "/var/lib/vigil":
                src = tmp_path / "spool"
                src.mkdir()
            elif not Path(src).exists():
                continue  # /run/containerd, pod-resources: no kubelet on this machine
            mounts += ["--mount", f"type=bind,src={src},dst={m['mountPath']},options=rbind:{'ro' if m.get('readOnly') else 'rw'}"]
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("vigil-agent-config"))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "vigil.yaml").write_text(cm["data"]["vigil.yaml"])
    mounts += ["--mount", f"type=bind,src={tmp_path / 'etc'},dst=/etc/vigil,options=rbind:ro",
               "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev"]
    port = free_port()
    args = [a for a in c["args"] if not a.startswith(("--aggregator", "--token-file"))]  # no aggregator here
    args.append(f"--listen=127.0.0.1:{port}")  # the node's port 9847 may be taken on a shared machine
    name = f"ds-{uuid.uuid4().hex[:6]}"
    ctr("run", "-d", "--read-only", "--net-host", "--with-ns", f"pid:/proc/{os.getpid()}/ns/pid", *cap_flags(),
        *mounts, "--env", "NODE_NAME=image-test-node", tag, name, "agent", *args)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        body = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _, raw = http_get(f"http://127.0.0.1:{port}/metrics")
            body = raw.decode()
            if "vigil_netflow_programs_loaded 2.0" in body or "vigil_netflow_programs_loaded 1.0" in body:
                break
            time.sleep(1)
        assert 'vigil_agent_info{node="image-test-node"' in body
        for collector in ("gpu", "sysctl", "rdma", "netflow"):
            assert f'vigil_collector_success{{collector="{collector}"}} 1.0' in body, collector
        # BCC in the image compiled and attached the netflow probe with the DaemonSet's capabilities only.
        assert "vigil_netflow_programs_loaded 0.0" not in body and "vigil_netflow_programs_loaded" in body, body[-3000:]
    finally:
        ctr("task", "kill", "-s", "SIGKILL", name, check=False)
        time.sleep(1)
        ctr("task", "rm", "-f", name, check=False)
        ctr("container", "rm", name, check=False)


def test_aggregator_image_is_non_root_and_serves(images, ctr, tmp_path):
    from agent.fakekube.server import FakeKube

    tag, _ = images["aggregator"]
    uid = ctr("run", "--rm", tag, f"id-{uuid.uuid4().hex[:6]}", "id", "-u").stdout.strip()
    assert uid == "65532"
    objs = rendered("base")
    c = container(objs, "Deployment", "vigil-aggregator", "aggregator")
    env = dict(one(objs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])["data"])
    env.update(POD_NAMESPACE="vigil", POD_NAME="vigil-aggregator-image-test")
    grpc_port, metrics_port = free_port(), free_port()
    argv = []
    for flag, value in split_args(c["args"]):
        value = {"--listen": f"127.0.0.1:{grpc_port}", "--metrics-listen": f"127.0.0.1:{metrics_port}"}.get(
            flag, expand(value, env) if value is not None else None)
        argv.append(flag if value is None else f"{flag}={value}")
    with FakeKube(namespaces=("vigil",)) as kube:
        kube.add_node("gpu-node-1")
        (tmp_path / "kube").mkdir()
        kube.write_kubeconfig(str(tmp_path / "kube" / "config"), token=kube.admin_token)
        os.chmod(tmp_path / "kube", 0o755)
        os.chmod(tmp_path / "kube" / "config", 0o644)
        name = f"agg-{uuid.uuid4().hex[:6]}"
        ctr("run", "-d", "--read-only", "--net-host",
            *[f for cap in RUNTIME_DEFAULT_CAPS for f in ("--cap-drop", f"CAP_{cap}")],
            "--mount", f"type=bind,src={tmp_path / 'kube'},dst=/kube,options=rbind:ro",
            tag, name, "vigil-aggregator", *argv, "--kubeconfig=/kube/config")
        try:
            wait_http(f"http://127.0.0.1:{metrics_port}/healthz", timeout=60)
            wait_http(f"http://127.0.0.1:{metrics_port}/readyz", timeout=60)  # it took the Lease
            lease = kube.get("leases", "vigil-aggregator", "vigil")
            assert lease["spec"]["holderIdentity"] == "vigil-aggregator-image-test"
        finally:
            ctr("task", "kill", "-s", "SIGKILL", name, check=False)
            time.sleep(1)
            ctr("task", "rm", "-f", name, check=False)
            ctr("container", "rm", name, check=False)

