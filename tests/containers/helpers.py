"""Real parts for the container source's tests: a private containerd daemon, an offline busybox OCI image,
a kubelet PodResources gRPC server on a unix socket (our proto), and polling with a deadline."""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc

from agent._proto.kubelet.podresources.v1 import api_pb2, api_pb2_grpc

IMAGE = "docker.io/vigil/busybox:test"
APPLETS = ("sh", "sleep", "dd", "tail", "true", "false", "cat", "head")
POD_LABELS = ("io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name")


def wait_for(what: str, probe: Callable[[], object], timeout: float = 15.0, every: float = 0.05):
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# -- an offline OCI image -------------------------------------------------------------------------------
def _member(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, mode: int = 0o644,
            kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname, ti.mtime = kind, mode, link, 0
    ti.size = len(data) if data is not None else 0
    tar.addfile(ti, io.BytesIO(data) if data is not None else None)


def busybox_layer() -> bytes:
    """One uncompressed layer: /bin/busybox (Debian's busybox-static) and the applets the tests call."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for d in ("bin", "dev", "proc", "sys", "tmp", "etc"):
            _member(t, d, kind=tarfile.DIRTYPE, mode=0o755)
        _member(t, "bin/busybox", Path("/bin/busybox").read_bytes(), mode=0o755)
        for applet in APPLETS:
            _member(t, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
    return buf.getvalue()


def write_oci_image(path: Path) -> None:
    """An OCI image layout tarball that `ctr image import` takes, built with tarfile and hashlib only."""
    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    layer_digest, layer = blob(busybox_layer())
    config_digest, config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode())
    manifest_digest, manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": len(layer)}]}).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest), "annotations": {"io.containerd.image.name": IMAGE,
                                               "org.opencontainers.image.ref.name": "test"}}]}).encode()
    with tarfile.open(path, "w") as t:
        _member(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _member(t, "index.json", index)
        for digest, data in ((layer_digest, layer), (config_digest, config), (manifest_digest, manifest)):
            _member(t, f"blobs/sha256/{digest.split(':')[1]}", data)


def extract_rootfs(directory: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(busybox_layer())) as t:
        t.extractall(directory)  # our own layer, built above
    return directory


# -- a private containerd -------------------------------------------------------------------------------
class Containerd:
    """containerd with its root, state and sockets in a short temp dir (unix socket paths are limited to 108
    bytes), no CRI plugin. Started and stopped by the test; everything it leaves is removed at the end.

    runc's state (/run/containerd/runc/<ns>/<id>) and cgroups (/<ns>/<id>) are host-wide, so two daemons
    running at once (parallel test runs) would collide on container ids: tests name containers briefly and
    every id gets this daemon's token appended."""

    def __init__(self, image_tar: Path) -> None:
        self.token = secrets.token_hex(3)
        self.dir = Path(tempfile.mkdtemp(prefix="vc-", dir="/tmp"))
        self.socket = str(self.dir / "c.sock")
        self.config = self.dir / "config.toml"
        self.config.write_text(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = "{self.dir}/debug.sock"
""")
        self.proc: subprocess.Popen | None = None
        self.log = open(self.dir / "containerd.log", "ab")
        self.image_tar = image_tar
        self.start()
        self.import_image("k8s.io")

    def import_image(self, ns: str) -> None:
        self.ctr("image", "import", str(self.image_tar), ns=ns)

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("containerd's socket", lambda: self._answers(), timeout=10, every=0.02)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"containerd exited with {self.proc.returncode}; see {self.dir}/containerd.log")
        return os.path.exists(self.socket) and subprocess.run(
            ["ctr", "-a", self.socket, "version"], capture_output=True).returncode == 0

    def subscriptions(self) -> int:
        """Event subscriptions containerd is serving now: its handler goroutines, from the debug socket's
        pprof dump. (gRPC multiplexes streams on one connection, so counting connections would not do.)"""
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.dir / "debug.sock"))
        s.sendall(b"GET /debug/pprof/goroutine?debug=2 HTTP/1.0\r\nHost: containerd\r\n\r\n")
        dump = b""
        while chunk := s.recv(1 << 16):
            dump += chunk
        s.close()
        return sum(1 for line in dump.decode(errors="replace").splitlines()
                   if "/services/events.(*service).Subscribe(" in line)

    def stop(self) -> None:
        """SIGTERM, as systemd stops it: tasks and their shims keep running."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctr(self, *args: str, ns: str = "k8s.io", check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["ctr", "-a", self.socket, "-n", ns, *args], capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def id(self, cid: str) -> str:
        return f"{cid}-{self.token}"

    def run(self, cid: str, *cmd: str, pod: tuple[str, str, str] | None = None, ns: str = "k8s.io",
            memory_limit: int | None = None, env: dict[str, str] | None = None) -> None:
        """Start a container in the background, labelled as Kubernetes' CRI labels it when `pod` is given."""
        args = ["run", "-d"]
        for key, value in zip(POD_LABELS, pod or ()):
            args += ["--label", f"{key}={value}"]
        if memory_limit:
            args += ["--memory-limit", str(memory_limit)]
        for k, v in (env or {}).items():
            args += ["--env", f"{k}={v}"]
        self.ctr(*args, IMAGE, self.id(cid), *cmd, ns=ns)

    def create_from_spec(self, cid: str, spec: dict, pod: tuple[str, str, str], start: bool = True) -> None:
        cid = self.id(cid)
        path = self.dir / f"{cid}.json"
        # Its own cgroup, where `ctr run` would put it (the default spec shares one cgroup among all).
        spec = {**spec, "linux": {**spec["linux"], "cgroupsPath": f"/k8s.io/{cid}"}}
        path.write_text(json.dumps(spec))
        labels = [a for key, value in zip(POD_LABELS, pod) for a in ("--label", f"{key}={value}")]
        self.ctr("container", "create", "--config", str(path), *labels, cid)
        if start:
            self.ctr("task", "start", "-d", cid)

    def default_spec(self) -> dict:
        return json.loads(self.ctr("oci", "spec").stdout)

    def task(self, cid: str, ns: str = "k8s.io") -> tuple[int, str] | None:
        """(pid, STATUS) of a container's task as `ctr task ls` shows it, None without a task."""
        for line in self.ctr("task", "ls", ns=ns).stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == self.id(cid):
                return int(parts[1]), parts[2]
        return None

    def kill(self, cid: str) -> None:
        self.ctr("task", "kill", "-s", "KILL", self.id(cid))
        wait_for(f"task {cid} to stop", lambda: (self.task(cid) or (0, ""))[1] == "STOPPED", timeout=10)

    def exec(self, cid: str, exec_id: str, *cmd: str) -> int:
        return self.ctr("task", "exec", "--exec-id", exec_id, self.id(cid), *cmd, check=False).returncode

    def delete(self, cid: str) -> None:
        self.ctr("task", "rm", self.id(cid))
        self.ctr("container", "rm", self.id(cid))

    def remove(self, cid: str) -> None:
        self.kill(cid)
        self.delete(cid)

    def _remove_any(self, real_id: str, ns: str) -> None:
        self.ctr("task", "kill", "-s", "KILL", real_id, ns=ns, check=False)
        self.ctr("task", "rm", "-f", real_id, ns=ns, check=False)
        self.ctr("container", "rm", real_id, ns=ns, check=False)

    def cleanup(self) -> None:
        if self.proc is None:
            try:
                self.start()
            except AssertionError:
                pass
        if self.proc is not None:
            for ns in self.ctr("namespaces", "ls", "-q", ns="default", check=False).stdout.split():
                for real_id in self.ctr("container", "ls", "-q", ns=ns, check=False).stdout.split():
                    self._remove_any(real_id, ns)
            self.stop()
        self._kill_our_shims()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_our_shims(self) -> None:
        """Shims outlive the daemon by design; end the ones started for this daemon (their command line names
        our private socket), by pid."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and self.socket.encode() in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- a kubelet PodResources server ----------------------------------------------------------------------
class PodResources(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet's PodResourcesLister/List on a unix socket, answering whatever `pods` holds:
    {(namespace, pod): {container: [(resource, [device ids])] or DRA entries}}."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.response = api_pb2.ListPodResourcesResponse()
        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{socket}")
        self.server.start()

    def List(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        return self.response

    def set(self, pods: dict) -> None:
        resp = api_pb2.ListPodResourcesResponse()
        for (namespace, name), containers in pods.items():
            pod = resp.pod_resources.add(namespace=namespace, name=name)
            for cname, allocations in containers.items():
                c = pod.containers.add(name=cname)
                for a in allocations:
                    if isinstance(a, api_pb2.DynamicResource):
                        c.dynamic_resources.append(a)
                    else:
                        resource, ids = a
                        c.devices.add(resource_name=resource, device_ids=list(ids))
        self.response = resp

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def dra(driver: str, device: str, cdi: list[str], claim: str = "gpu-claim",
        namespace: str = "") -> api_pb2.DynamicResource:
    return api_pb2.DynamicResource(claim_name=claim, claim_namespace=namespace, claim_resources=[
        api_pb2.ClaimResource(driver_name=driver, pool_name="node-1", device_name=device,
                              cdi_devices=[api_pb2.CDIDevice(name=n) for n in cdi])])
