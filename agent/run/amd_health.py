"""The GPU health service AMD's Kubernetes device plugin reads (DESIGN §9): one sick GPU leaves allocation, the
other seven stay allocatable.

AMD's device plugin (ROCm/k8s-device-plugin, internal/pkg/exporter/health.go) asks the ROCm device metrics
exporter for per-GPU health on every heartbeat: it dials the exporter's unix socket, calls
`metricssvc.MetricsService/List` with an Empty, and keys the answer by `GPUState.Device`, the GPU's PCI address.
"healthy" keeps the device Healthy; any other string makes it Unhealthy, which the kubelet takes out of the
node's allocatable count (running pods keep their GPU). A GPU missing from the answer, or no answer at all,
falls back to the plugin's own check (is a GPU node in the KFD topology), which calls almost anything healthy.
The agent serves the same service (proto/metricssvc, our own wire-compatible subset) from its own findings, on
the same socket, when `amd_device_plugin.enabled` is set. The exporter and Vigil must not both serve it: the
agent never takes a socket another process answers on (it reports agent.amd_health and tries again later).

What each GPU gets (`derive`), never "healthy" for a GPU the agent could not vouch for:
  unhealthy  a fatal check of that GPU fails (ECC, retired pages, XGMI, a fatal Xid/RAS/CPER event ...)
  unknown    a fatal check of that GPU could not run; or a node-wide GPU check could not run or the SMI hangs
             (no GPU's reading can be trusted then); or the GPU is on the PCI bus but no SMI reading has it.
             The plugin has no third state: "unknown" reads as Unhealthy there, so a GPU nobody can read takes
             no new pods, rather than being offered on the plugin's DRM check alone.
  healthy    every fatal check of that GPU ran and passed. Warnings (a PCIe link at x8, a temperature
             warning) do not withdraw a GPU, as they do not make a node unhealthy.
A node-wide fault that is not one GPU's (fewer GPUs than expected) leaves the GPUs that are there as they are:
the aggregator cordons for it (DESIGN §9).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.base.findings import FATAL, OK, UNHEALTHY, UNKNOWN, WARNING, Finding, bad, ok
from agent.base.metrics import Counter, Gauge, MetricSet, render
from agent.base.pci import normalize

log = logging.getLogger(__name__)

HEALTHY, UNHEALTHY_TEXT, UNKNOWN_TEXT = "healthy", "unhealthy", "unknown"  # GPUHealth names, lower-cased
# Node-wide checks whose *failure* says nothing about the GPUs that are there (one GPU fewer than expected); when
# they could not run (unknown), no GPU could be read either.
NODE_WIDE_PER_GPU_OK = frozenset({"gpu.count"})

# Bounds of what a client can make the agent hold (DESIGN §0: a hostile or broken client costs itself only).
MAX_REQUEST_BYTES = 16 * 1024  # List is an Empty; GetGPUState a few ids
MAX_IDS = 256
MAX_CONNECTIONS = 16
MAX_CONCURRENT_RPCS = 8
HANDSHAKE_TIMEOUT_MS = 5_000  # a connection that never speaks HTTP/2 gives its slot back
IDLE_MS = 60_000  # the plugin dials anew on every heartbeat
CHECK_EVERY = 2.0  # seconds between checks that the socket file is still ours

SERVING = Gauge("vigil_amd_device_plugin_serving", "1 while the agent serves the AMD device plugin's GPU health "
                "socket (amd_device_plugin.enabled).", ())
REQUESTS = Counter("vigil_amd_device_plugin_requests_total", "GPU health requests answered to AMD's device plugin, "
                   "by method.", ("method",))
GPU_HEALTH = Gauge("vigil_amd_device_plugin_gpus", "GPUs in the last answer to AMD's device plugin, by health.",
                   ("health",))


@dataclass(frozen=True)
class GpuHealth:
    index: str  # "3"
    uuid: str
    device: str  # PCI address, 0000:5c:00.0
    health: str  # healthy | unhealthy | unknown
    reason: str  # the finding behind it, for the log and --once-like views


def _get(g: Any, key: str) -> Any:
    return g.get(key) if isinstance(g, dict) else getattr(g, key, None)


def derive(findings: Iterable[Finding], gpus: Iterable[Any] | None, bus: Iterable[str] = ()) -> list[GpuHealth]:
    """Per-GPU health for the device plugin, from the agent's current findings. `gpus`: the GPU source's
    readings (ctx.facts.gpus; AMD ones are used, a partition counts as its GPU); `bus`: PCI addresses of AMD GPUs
    on the PCI bus, so a GPU no SMI reading has is listed (unknown) instead of left to the plugin's own check."""
    by_entity: dict[str, list[Finding]] = {}
    node_wide: list[Finding] = []
    rows: dict[str, tuple[str, str, str]] = {}  # device -> (index, uuid, entity)
    for g in gpus or []:
        if _get(g, "vendor") != "amd":
            continue
        device = normalize(_get(g, "pci_bus_id"))
        index = _get(g, "index")
        if device is None or index is None or (device in rows and _get(g, "partition")):
            continue
        rows[device] = (str(index), str(_get(g, "uuid") or ""), f"gpu{index}")
    entities = {entity for _, _, entity in rows.values()}
    by_pci = {f"pci:{device}": entity for device, (_, _, entity) in rows.items()}
    for f in findings:
        if f.component != "gpu" or f.is_event:
            continue
        entity = by_pci.get(f.entity, f.entity)
        if entity in entities:
            by_entity.setdefault(entity, []).append(f)
        elif f.severity == FATAL and f.status != OK and not f.entity.startswith("pci:") \
                and not (f.status == UNHEALTHY and f.check in NODE_WIDE_PER_GPU_OK):
            node_wide.append(f)
    out = []
    for device, (index, uuid, entity) in sorted(rows.items(), key=lambda r: (len(r[1][0]), r[1][0])):
        fatal = [f for f in by_entity.get(entity, []) if f.severity == FATAL]
        failed = [f for f in fatal if f.status == UNHEALTHY]
        unread = [f for f in fatal if f.status == UNKNOWN]
        if failed:
            out.append(GpuHealth(index, uuid, device, UNHEALTHY_TEXT, f"{failed[0].check}: {failed[0].message}"))
        elif unread or node_wide:
            f = (unread or node_wide)[0]
            out.append(GpuHealth(index, uuid, device, UNKNOWN_TEXT, f"{f.check}: {f.message}"))
        elif not fatal:  # no fatal check judged this GPU at all: nothing vouches for it
            out.append(GpuHealth(index, uuid, device, UNKNOWN_TEXT, "no health check has judged this GPU yet"))
        else:
            out.append(GpuHealth(index, uuid, device, HEALTHY, f"{len(fatal)} fatal checks ok"))
    for device in sorted({d for d in (normalize(b) for b in bus) if d} - set(rows)):
        out.append(GpuHealth("", "", device, UNKNOWN_TEXT, "on the PCI bus, but no SMI reading has this GPU"))
    return out


def amd_gpu_addresses(sysfs: Path) -> list[str]:
    """PCI addresses of the AMD GPUs on the bus (vendor 0x1002, display or accelerator class)."""
    from agent.base.pci import GPU_CLASSES

    devices = sysfs / "bus" / "pci" / "devices"
    out = []
    try:
        entries = list(devices.iterdir())[:4096]
    except OSError:
        return []
    for dev in entries:
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor == "0x1002" and klass.startswith(GPU_CLASSES) and normalize(dev.name):
            out.append(normalize(dev.name))  # type: ignore[arg-type]
    return out


class SocketBusy(Exception):
    """The socket path is answered by another process, or is not a socket: the agent leaves it alone."""


def check_path(path: str) -> None:
    """Make `path` bindable: create its directory; remove a stale socket file (nobody answers on it). Raises
    SocketBusy when another process serves it or it is something else than a socket (never removed)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketBusy(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: its server is gone
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketBusy(f"{path}: cannot tell whether another process serves it: {e.strerror or e}") from None
    else:
        raise SocketBusy(f"{path} is served by another process (the ROCm device metrics exporter?): the exporter "
                         f"and Vigil must not both serve it")
    finally:
        probe.close()
    try:
        os.unlink(path)
        log.info("amd_device_plugin: removed stale socket %s", path)
    except FileNotFoundError:
        pass


class AmdHealthServer:
    """Serves metricssvc.MetricsService on a unix socket. `provider()` gives the current per-GPU health. Run it
    under the agent's supervisor: serve() binds and blocks, and ends (raises) when the socket stops being ours, so
    the supervisor restarts it after a backoff; findings() reports it while it is not serving."""

    def __init__(self, path: str, provider: Callable[[], list[GpuHealth]], node: str) -> None:
        self.path = path
        self.provider = provider
        self.node = node
        self.stopped = False
        self._stop = threading.Event()
        self._server: Any = None
        self._inode: tuple[int, int] | None = None
        self._problem: str | None = None
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {"List": 0, "GetGPUState": 0}
        self._last: dict[str, int] = {}

    # -- the service ---------------------------------------------------------------------------------
    def _answer(self, ids: list[str] | None) -> Any:
        from agent._proto.metricssvc import metricssvc_pb2 as pb

        rows = self.provider()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.health] = counts.get(r.health, 0) + 1
        self._last = counts
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r.index in wanted or r.device in wanted]
        return pb.GPUStateResponse(GPUState=[pb.GPUState(ID=r.index, UUID=r.uuid, Health=r.health, Device=r.device)
                                             for r in rows])

    def _servicer(self) -> Any:
        import grpc
        from agent._proto.metricssvc import metricssvc_pb2_grpc as pbg

        server = self

        class Servicer(pbg.MetricsServiceServicer):
            def List(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
                server._count("List")
                return server._answer(None)

            def GetGPUState(self, request: Any, context: Any) -> Any:  # noqa: N802
                server._count("GetGPUState")
                if len(request.ID) > MAX_IDS:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_IDS} ids")
                return server._answer(list(request.ID) if request.ID else None)
        return Servicer()

    def _count(self, method: str) -> None:
        with self._lock:
            self._requests[method] += 1

    # -- lifecycle (supervised) --------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind the socket, or raise SocketBusy/OSError saying why not (the supervisor retries)."""
        import grpc
        from agent._proto.metricssvc import metricssvc_pb2_grpc as pbg

        self._close()
        try:
            check_path(self.path)
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="amd-health"),
                maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
                options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                         ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
                         ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
                         ("grpc.max_connection_idle_ms", IDLE_MS),
                         ("grpc.max_concurrent_streams", 4),
                         ("grpc.so_reuseport", 0)])
            pbg.add_MetricsServiceServicer_to_server(self._servicer(), server)
            # gRPC unlinks the path it bound when it stops, whoever holds that path by then: it binds a private
            # name, renamed into place, so stopping never removes a socket another process has put there since.
            private = os.path.join(os.path.dirname(self.path), f".vigil-{os.getpid()}-{id(self):x}.sock")
            old = os.umask(0o117)  # the socket file 0660: root (the device plugin) connects
            try:
                port = server.add_insecure_port(f"unix:{private}")
            except RuntimeError as e:
                raise OSError(f"{self.path}: cannot bind: {e}") from None
            finally:
                os.umask(old)
            if not port:
                raise OSError(f"{self.path}: cannot bind")
            server.start()
            try:
                os.rename(private, self.path)
                st = os.stat(self.path)
            except OSError:
                server.stop(0)
                raise
            self._server, self._inode = server, (st.st_dev, st.st_ino)
        except (SocketBusy, OSError) as e:
            self._problem = str(e)
            raise
        self._problem = None
        log.info("amd_device_plugin: serving GPU health on unix:%s", self.path)

    def serve(self) -> None:
        """Supervisor body: bind when not bound, then watch that the socket file is still ours."""
        if self._server is None:
            self.bind()
        while not self._stop.wait(CHECK_EVERY):
            try:
                st = os.stat(self.path)
                ours = (st.st_dev, st.st_ino) == self._inode
            except OSError:
                ours = False
            if not ours:
                self._problem = f"{self.path} was removed or replaced by another process"
                self._close(unlink=False)
                raise SocketBusy(self._problem)

    def recover(self) -> None:
        """Supervisor hook before a restart: bind again (raises while the path is busy: tried again later)."""
        self.bind()

    def _close(self, unlink: bool = True) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=0.5).wait(2)
        if unlink and self._inode is not None:
            try:  # only our own socket file: another server may have taken the path since
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
        self._inode = None

    def stop(self) -> None:
        self.stopped = True
        self._stop.set()
        self._close()

    # -- health ----------------------------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self._server is not None

    def findings(self) -> list[Finding]:
        """agent.amd_health for the agent's own check: a warning while the plugin cannot read the agent."""
        if self.serving:
            return [ok("agent.amd_health", "agent", self.node, f"serving GPU health on {self.path}", WARNING)]
        why = self._problem or "not serving yet"
        return [bad("agent.amd_health", "agent", self.node, f"AMD device plugin socket not served: {why}", WARNING,
                    action="stop the ROCm device metrics exporter's health socket, or disable amd_device_plugin")]

    def metrics(self) -> MetricSet:
        ms = MetricSet()
        ms.add(SERVING, {}, 1 if self.serving else 0)
        ms.declare(REQUESTS)
        with self._lock:
            for method, n in sorted(self._requests.items()):
                ms.add(REQUESTS, {"method": method}, n)
        ms.declare(GPU_HEALTH)
        for health, n in sorted(self._last.items()):
            ms.add(GPU_HEALTH, {"health": health}, n)
        return ms

    def exposition(self) -> bytes:
        return render(self.metrics())
