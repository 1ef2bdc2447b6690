"""A faithful fake Kubernetes API server for tests, benchmarks and the local demo.

Real HTTP (optionally TLS) on 127.0.0.1, speaking enough of the Kubernetes REST API for the official
Python client and kubectl: discovery, nodes (+ /status), pods (+ /status), namespaces, configmaps,
core/v1 and events.k8s.io/v1 Events (one store, as on the real server), coordination.k8s.io/v1
Leases, authentication.k8s.io/v1 TokenReviews, list/watch with label and field selectors, and the
three patch formats. :class:`FakeKube` is the server and its Python helper API; ``README.md`` next
to this file says what is covered and what is not faithful.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from . import schema
from .store import (GROUP_VERSIONS, GROUPS, RESOURCES, TOKENREVIEWS, ApiError, Resource, Store, bad_request,
                    core_resource, find_resource, method_not_allowed, parse_field_selector, parse_label_selector)

DEFAULT_API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
NOT_FOUND_RESOURCE = "the server could not find the requested resource"
_WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected fault. ``times=None`` means every matching request, forever."""

    method: str | tuple | None = None
    path_regex: str = ""
    status: int | None = None
    reason: str | None = None
    message: str | None = None
    timeout_seconds: float | None = None
    delay: float = 0.0
    after_apply: bool = False
    drop: bool = False
    times: int | None = 1
    retry_after: int | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None:
            methods = (self.method,) if isinstance(self.method, str) else tuple(self.method)
            if method not in {m.upper() for m in methods}:
                return False
        return re.search(self.path_regex, path) is not None

    def api_error(self) -> ApiError:
        code = self.status or 500
        reason = self.reason or _REASONS.get(code, "")
        message = self.message or f"injected fault ({code})"
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return ApiError(code, reason, message, {"causes": [{"message": message}]} if code >= 500 else None,
                        headers)


class Faults:
    """``server.faults``: add(), clear(); the first matching fault with uses left fires."""

    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, method: str | Iterable[str] | None = None, path_regex: str = "", *, status: int | None = None,
            reason: str | None = None, message: str | None = None, timeout_seconds: float | None = None,
            delay: float = 0.0, after_apply: bool = False, drop: bool = False, times: int | None = 1,
            retry_after: int | None = None) -> Fault:
        """Inject a fault into requests whose method matches and whose URL path matches ``path_regex``.

        - ``status``: answer with a Status object of this HTTP code (500, 503, 429, ...).
        - ``timeout_seconds``: hang that long, then close the connection without answering.
        - ``drop``: close the connection without answering.
        - ``delay``: sleep first (alone: pure added latency, the request then runs normally).
        - ``after_apply``: run the request for real first (the write happens), then fail as above:
          the ambiguous "did my write land?" case.
        """
        if method is not None and not isinstance(method, str):
            method = tuple(method)
        fault = Fault(method=method, path_regex=path_regex, status=status, reason=reason, message=message,
                      timeout_seconds=timeout_seconds, delay=delay, after_apply=after_apply, drop=drop,
                      times=times, retry_after=retry_after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self):
        with self._lock:
            self._faults.clear()

    def __len__(self):
        with self._lock:
            return len(self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times is not None and fault.times <= 0:
                    continue
                if fault.matches(method, path):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None


# --------------------------------------------------------------------------- request log


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict
    content_type: str
    body: bytes
    user: str | None
    time: float
    status: int | None = None  # None: no answer (timeout or dropped connection)
    fault: Fault | None = None
    headers: dict = field(default_factory=dict)

    @property
    def json(self):
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self):
        return f"<{self.method} {self.path} {self.content_type or '-'} -> {self.status}>"


# --------------------------------------------------------------------------- tokens


@dataclass
class TokenInfo:
    username: str
    uid: str
    groups: list
    audiences: list
    extra: dict
    pod: tuple | None = None  # (namespace, name, uid) for a pod-bound token
    expires_at: float | None = None


# --------------------------------------------------------------------------- helpers


def _human_age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    return f"{d}d"


def _age(obj: dict) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    when = schema.parse_time(created, False)
    return _human_age(time.time() - when.timestamp())


def _node_row(node: dict) -> list:
    status = "Unknown"
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            status = {"True": "Ready", "False": "NotReady"}.get(cond.get("status"), "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    roles = sorted(k.split("/", 1)[1] for k in (node["metadata"].get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/") and "/" in k)
    info = (node.get("status") or {}).get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in (node.get("status") or {}).get("addresses") or []}
    return [node["metadata"]["name"], status, ",".join(r for r in roles if r) or "<none>", _age(node),
            info.get("kubeletVersion", ""), addresses.get("InternalIP", "<none>"),
            addresses.get("ExternalIP", "<none>"), info.get("osImage", ""), info.get("kernelVersion", ""),
            info.get("containerRuntimeVersion", "")]


def _table(res: Resource, objs: list[dict], rv: str) -> dict:
    def col(name, kind="string", priority=0, fmt=""):
        return {"name": name, "type": kind, "format": fmt, "description": name, "priority": priority}

    if res.plural == "nodes":
        columns = [col("Name", fmt="name"), col("Status"), col("Roles"), col("Age"), col("Version"),
                   col("Internal-IP", priority=1), col("External-IP", priority=1), col("OS-Image", priority=1),
                   col("Kernel-Version", priority=1), col("Container-Runtime", priority=1)]
        rows = [_node_row(o) for o in objs]
    elif res.plural == "leases":
        columns = [col("Name", fmt="name"), col("Holder"), col("Age")]
        rows = [[o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), _age(o)] for o in objs]
    elif res.plural == "pods":
        columns = [col("Name", fmt="name"), col("Ready"), col("Status"), col("Restarts", "integer"), col("Age"),
                   col("Node", priority=1)]
        rows = [[o["metadata"]["name"], "1/1" if (o.get("status") or {}).get("phase") == "Running" else "0/1",
                 (o.get("status") or {}).get("phase", ""), 0, _age(o), (o.get("spec") or {}).get("nodeName", "")]
                for o in objs]
    elif res.plural == "events":
        columns = [col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Message")]
        rows = []
        for o in objs:
            ref = o.get("involvedObject") or o.get("regarding") or {}
            rows.append([_age(o), o.get("type", ""), o.get("reason", ""),
                         f"{ref.get('kind', '').lower()}/{ref.get('name', '')}", o.get("message", o.get("note", ""))])
    else:
        columns = [col("Name", fmt="name"), col("Age")]
        rows = [[o["metadata"]["name"], _age(o)] for o in objs]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": columns,
            "rows": [{"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                 "metadata": o["metadata"]}}
                     for cells, o in zip(rows, objs)]}


def make_self_signed_cert(directory: str, host: str = "127.0.0.1") -> tuple[str, str]:
    """Write a self-signed certificate for ``host`` with the openssl CLI; return (cert, key) paths."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("TLS needs the openssl command to make a self-signed certificate")
    cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=IP:{host},DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr, handler, fakekube: "FakeKube"):
        self.fakekube = fakekube
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        pass  # a client that hangs up or fails the TLS handshake is not the server's problem


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakekube"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are reaped

    def setup(self):
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.server.fakekube._conns_add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fakekube._conns_remove(self.connection)

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    def version_string(self):
        return "fakekube"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    # -- plumbing -----------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, payload, headers: dict | None = None, content_type="application/json"):
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload, separators=(",", ":")).encode()
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = payload or b""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in (headers or {}).items():
            if isinstance(value, list):
                for item in value:
                    self.send_header(key, item)
            else:
                self.send_header(key, value)
        self._headers_buffer.append(b"\r\n" + data)  # headers and body in one write
        self.flush_headers()

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _apply_fault(self, fault: Fault, record: RequestRecord) -> bool:
        """Act out a fault's failure; return True when the request is answered (or dropped)."""
        fk = self.server.fakekube
        if fault.timeout_seconds is not None:
            fk._stopping.wait(fault.timeout_seconds)
            self._drop()
            return True
        if fault.drop:
            self._drop()
            return True
        if fault.status is not None:
            err = fault.api_error()
            record.status = err.code
            self._send(err.code, err.status(), err.headers)
            return True
        return False

    def _handle(self, method: str):
        fk = self.server.fakekube
        body = self._read_body()
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
        record = RequestRecord(method, url.path, query, content_type, body, None, time.time(),
                               headers=dict(self.headers.items()))
        fk._log(record)
        fault = fk.faults.take(method, url.path)
        record.fault = fault
        if fault is not None:
            if fault.delay:
                fk._stopping.wait(fault.delay)
            if not fault.after_apply and self._apply_fault(fault, record):
                return
        try:
            record.user = fk._authenticate_request(self.headers.get("Authorization"), url.path)
            result = fk._dispatch(method, url.path, query, self.headers, body, content_type, self)
        except ApiError as err:
            result = (err.code, err.status(), err.headers)
        except Exception as exc:  # noqa: BLE001 - a bug in the fake must still answer like a server
            err = ApiError(500, "InternalError", f"Internal error occurred: {type(exc).__name__}: {exc}")
            result = (500, err.status(), {})
        if result is None:  # streamed (watch)
            record.status = 200
            return
        if fault is not None and fault.after_apply and self._apply_fault(fault, record):
            return
        code, payload, headers = result
        record.status = code
        self._send(code, payload, headers)

    # -- watch streaming ----------------------------------------------------------------------

    def _chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def stream_watch(self, res: Resource, namespace: str | None, query: dict, name: str | None,
                     as_table: bool = False):
        fk = self.server.fakekube
        self._as_table = as_table
        store = fk.store
        match_labels = parse_label_selector(query.get("labelSelector"))
        field_selector = query.get("fieldSelector") or ""
        if name:
            field_selector = ",".join(x for x in (field_selector, f"metadata.name={name}") if x)
        match_fields = parse_field_selector(field_selector, res)

        def matches(obj):
            if obj is None:
                return False
            if namespace is not None and obj["metadata"].get("namespace", "") != namespace:
                return False
            return match_labels(obj["metadata"].get("labels")) and match_fields(obj)

        rv_param = query.get("resourceVersion", "")
        if rv_param not in ("", "0") and not rv_param.isdigit():
            raise bad_request(f'invalid resource version: "{rv_param}"')
        since = int(rv_param) if rv_param not in ("", "0") else None
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise bad_request("invalid timeoutSeconds") from None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            watcher, backlog = store.watch(res.storage, since,
                                           lambda: [o for o in store.items(res.storage, namespace) if matches(o)])
        except ApiError as err:
            self._chunk(json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        deadline = time.monotonic() + timeout
        try:
            for event in backlog:
                self._send_event(res, event, matches)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    event = watcher.queue.get(timeout=min(remaining, fk.bookmark_interval))
                except Exception:  # queue.Empty
                    if bookmarks:
                        bookmark = {"kind": res.kind, "apiVersion": res.group_version,
                                    "metadata": {"resourceVersion": str(store.resource_version)}}
                        self._chunk(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
                    continue
                if event is None:
                    break
                self._send_event(res, event, matches)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, ValueError):
            self.close_connection = True
        finally:
            store.unwatch(watcher)

    def _send_event(self, res: Resource, event, matches: Callable):
        new_match = matches(event.obj) if event.type != "DELETED" else False
        old_match = matches(event.old) if event.type == "DELETED" or event.old is not None else False
        if event.type == "ADDED":
            kind = "ADDED" if new_match else None
        elif event.type == "DELETED":
            kind = "DELETED" if old_match else None
        elif new_match and old_match:
            kind = "MODIFIED"
        elif new_match:
            kind = "ADDED"
        elif old_match:
            kind = "DELETED"
        else:
            kind = None
        if kind is None:
            return
        obj = res.view(event.obj)
        if getattr(self, "_as_table", False):
            obj = _table(res, [obj], obj["metadata"]["resourceVersion"])
        self._chunk(json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n")


# --------------------------------------------------------------------------- the server


class FakeKube:
    """A fake Kubernetes API server with a Python helper API.

    Start and stop::

        with FakeKube() as kube:              # or kube = FakeKube(); kube.start(); ...; kube.stop()
            kube.add_node("gpu-1")
            api = kubernetes.client.CoreV1Api(kube.api_client())
            kube.url                          # http://127.0.0.1:PORT

    Helper API (all thread-safe; objects are returned as plain dicts in their REST JSON form):
    add_node, add_pod, add_namespace, create, get, list, delete, mutate, bump, inject_conflicts,
    compact, add_token, issue_service_account_token, revoke_token, expire_token, requests,
    clear_requests, faults (see :class:`Faults`), client_configuration, api_client, write_kubeconfig.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, kube_version: str = "1.33.0",
                 api_audiences: Iterable[str] = DEFAULT_API_AUDIENCES, namespaces: Iterable[str] = ("vigil",),
                 admin_token: str = "fakekube-admin-token", require_auth: bool = False, tls: bool = False,
                 history: int = 10000, bookmark_interval: float = 1.0, log_limit: int = 100000,
                 resource_versions: Iterable[str] = GROUP_VERSIONS["resource.k8s.io"]):
        self.host = host
        # resource.k8s.io versions served, preferred first: () plays a cluster without Dynamic Resource
        # Allocation, ("v1beta2",) a 1.36 cluster (DeviceTaintRule beta), ("v1", "v1beta2") 1.37.
        self.resource_versions = tuple(v for v in resource_versions if v in GROUP_VERSIONS["resource.k8s.io"])
        self._port = port
        self.kube_version = kube_version
        parts = kube_version.lstrip("v").split(".")
        self.version_tuple = (int(parts[0]), int(parts[1]))
        self.api_audiences = list(api_audiences)
        self.admin_token = admin_token
        self.require_auth = require_auth
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.store = Store(history=history)
        self.faults = Faults()
        self._log_lock = threading.Lock()
        self._log_limit = log_limit
        self._requests: list[RequestRecord] = []
        self._tokens: dict[str, TokenInfo] = {}
        self._sa_uids: dict[tuple[str, str], str] = {}
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self.ca_cert: str | None = None
        self._tls_files: tuple[str, str] | None = None
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease", *namespaces):
            self.add_namespace(ns)
        if admin_token:
            self.add_token(admin_token, "kubernetes-admin", groups=["system:masters", "system:authenticated"])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "FakeKube":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((self.host, self._port), _Handler, self)
        self._port = self._httpd.server_address[1]
        if self.tls:
            if self._tls_files is None:
                self._tmpdir = tempfile.mkdtemp(prefix="fakekube-tls-")
                self._tls_files = make_self_signed_cert(self._tmpdir, self.host)
                self.ca_cert = self._tls_files[0]
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self._tls_files)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fakekube:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving (connections are cut, watches end); the objects stay, start() serves them again
        on the same port, which is how a test plays an API server outage."""
        if self._httpd is None:
            return
        self._stopping.set()
        self.store.close_watchers()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def close(self):
        self.stop()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self._port}"

    @property
    def resource_version(self) -> str:
        return str(self.store.resource_version)

    def _conns_add(self, conn):
        with self._conns_lock:
            self._conns.add(conn)

    def _conns_remove(self, conn):
        with self._conns_lock:
            self._conns.discard(conn)

    # -- clients ------------------------------------------------------------------------------

    def client_configuration(self, token: str | None = None):
        """A ``kubernetes.client.Configuration`` pointing here with a bearer token (admin by default)."""
        from kubernetes import client  # noqa: PLC0415 - optional dependency

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"BearerToken": token or self.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if self.tls:
            cfg.ssl_ca_cert = self.ca_cert
            cfg.verify_ssl = True
        return cfg

    def api_client(self, token: str | None = None):
        from kubernetes import client  # noqa: PLC0415 - optional dependency

        return client.ApiClient(self.client_configuration(token))

    def write_kubeconfig(self, path: str, token: str | None = None) -> str:
        cluster = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = self.ca_cert
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "fakekube",
                  "clusters": [{"name": "fakekube", "cluster": cluster}],
                  "users": [{"name": "fakekube", "user": {"token": token or self.admin_token}}],
                  "contexts": [{"name": "fakekube", "context": {"cluster": "fakekube", "user": "fakekube"}}]}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
        return path

    # -- request log --------------------------------------------------------------------------

    def _log(self, record: RequestRecord):
        with self._log_lock:
            self._requests.append(record)
            if len(self._requests) > self._log_limit:
                del self._requests[: len(self._requests) - self._log_limit]

    def requests(self, method: str | None = None, path: str | None = None, *, status: int | None = None,
                 content_type: str | None = None, writes_only: bool = False) -> list[RequestRecord]:
        """Logged requests, oldest first; ``path`` is a regex searched in the URL path."""
        with self._log_lock:
            records = list(self._requests)
        out = []
        for rec in records:
            if method and rec.method != method.upper():
                continue
            if writes_only and rec.method not in _WRITE_METHODS:
                continue
            if path and not re.search(path, rec.path):
                continue
            if status is not None and rec.status != status:
                continue
            if content_type and rec.content_type != content_type:
                continue
            out.append(rec)
        return out

    def clear_requests(self):
        with self._log_lock:
            self._requests.clear()

    # -- objects: helper API ------------------------------------------------------------------

    def add_namespace(self, name: str) -> dict:
        res = core_resource("namespaces")
        if self.store.get_stored("namespaces", "", name) is not None:
            return res.view(self.store.get_stored("namespaces", "", name))
        obj, _ = self.store.create(res, "", {"metadata": {"name": name}})
        return obj

    def add_node(self, name: str, *, labels: dict | None = None, annotations: dict | None = None,
                 taints: list | None = None, unschedulable: bool = False, ready: bool = True,
                 conditions: list | None = None, kubelet_version: str | None = None,
                 internal_ip: str | None = None) -> dict:
        """Create a Node that looks like a kubelet registered it (Ready condition, nodeInfo, capacity)."""
        now = schema.now_time()
        base_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"}
        base_labels.update(labels or {})
        if conditions is None:
            conditions = []
            for ctype, reason, msg in (
                    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available")):
                conditions.append({"type": ctype, "status": "False", "reason": reason, "message": msg,
                                   "lastHeartbeatTime": now, "lastTransitionTime": now})
            conditions.append({"type": "Ready", "status": "True" if ready else "False",
                               "reason": "KubeletReady" if ready else "KubeletNotReady",
                               "message": "kubelet is posting ready status" if ready else "container runtime is down",
                               "lastHeartbeatTime": now, "lastTransitionTime": now})
        index = self.store.count("nodes") + 10  # not items(): it sorts them all (10,000 Nodes in a benchmark)
        spec = {}
        if taints:
            spec["taints"] = taints
        if unschedulable:
            spec["unschedulable"] = True
        body = {"metadata": {"name": name, "labels": base_labels, "annotations": dict(annotations or {})},
                "spec": spec,
                "status": {
                    "conditions": conditions,
                    "addresses": [{"type": "InternalIP", "address": internal_ip or f"10.0.0.{index}"},
                                  {"type": "Hostname", "address": name}],
                    "capacity": {"cpu": "96", "memory": "1056545640Ki", "pods": "110", "nvidia.com/gpu": "8"},
                    "allocatable": {"cpu": "95", "memory": "1056443240Ki", "pods": "110", "nvidia.com/gpu": "8"},
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": {"machineID": uuid.uuid4().hex, "systemUUID": str(uuid.uuid4()),
                                 "bootID": str(uuid.uuid4()), "kernelVersion": "6.8.0-generic",
                                 "osImage": "Ubuntu 24.04 LTS", "containerRuntimeVersion": "containerd://1.7.24",
                                 "kubeletVersion": kubelet_version or f"v{self.kube_version}",
                                 "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}}
        obj, _ = self.store.create(core_resource("nodes"), "", body)
        return obj

    def add_pod(self, namespace: str, name: str, *, node_name: str | None = None, labels: dict | None = None,
                service_account: str = "default", phase: str = "Running", containers: list | None = None,
                owner: tuple[str, str] | dict | None = None, tolerations: list | None = None,
                resource_claims: list | None = None) -> dict:
        """Create a Pod (scheduled to ``node_name``) with the given phase; the namespace is created if needed.
        ``owner``: its controller, ("Job", "train-1") or a whole ownerReference; ``resource_claims``: the
        pod's spec.resourceClaims (``[{"name": "gpu", "resourceClaimName": "claim-1"}]``)."""
        self.add_namespace(namespace)
        spec = {"containers": containers or [{"name": "main", "image": "registry.example/vigil:dev"}],
                "serviceAccountName": service_account, "serviceAccount": service_account,
                "restartPolicy": "Always", "schedulerName": "default-scheduler"}
        if node_name:
            spec["nodeName"] = node_name
        if tolerations:
            spec["tolerations"] = tolerations
        if resource_claims:
            spec["resourceClaims"] = resource_claims
        meta = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        if owner is not None:
            if isinstance(owner, tuple):
                kind, oname = owner
                api = {"Job": "batch/v1", "Deployment": "apps/v1", "ReplicaSet": "apps/v1",
                       "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "JobSet": "jobset.x-k8s.io/v1alpha2",
                       "PyTorchJob": "kubeflow.org/v1"}.get(kind, "v1")
                uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{kind}/{oname}"))  # one per owner
                owner = {"apiVersion": api, "kind": kind, "name": oname, "uid": uid, "controller": True, "blockOwnerDeletion": True}
            meta["ownerReferences"] = [owner]
        res = core_resource("pods")
        obj, _ = self.store.create(res, namespace, {"metadata": meta, "spec": spec})
        status = {"phase": phase, "startTime": schema.now_time()}
        if phase == "Running":
            status["conditions"] = [{"type": "Ready", "status": "True"}]
            status["podIP"] = "10.244.0.%d" % (len(self.store.items("pods")) % 250 + 2)
        return self.mutate("pods", name, lambda p: p.__setitem__("status", status), namespace=namespace)

    def add_resource_slice(self, node_name: str, driver: str, devices: list[dict], *, pool: str | None = None,
                           name: str | None = None) -> dict:
        """A DRA driver's kubelet plugin publishing its node-local devices (``[{"name": "gpu-0", "attributes":
        {"uuid": {"string": "GPU-..."}}}]``) in one ResourceSlice whose pool is named after the node."""
        body = {"metadata": {"name": name or f"{node_name}-{driver.replace('.', '-')}"[:253]},
                "spec": {"driver": driver, "nodeName": node_name, "devices": devices,
                         "pool": {"name": pool or node_name, "generation": 1, "resourceSliceCount": 1}}}
        return self.create("resourceslices", body)

    def create(self, resource: str, obj: dict, namespace: str | None = None) -> dict:
        """Create any served object through the same validation as a POST ("nodes", "leases", ...)."""
        res = core_resource(resource)
        ns = namespace or obj.get("metadata", {}).get("namespace", "") if res.namespaced else ""
        created, _ = self.store.create(res, ns, copy.deepcopy(obj))
        return created

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        res = core_resource(resource)
        with self.store.lock:
            obj = self.store.get_stored(res.storage, namespace or "", name)
            return res.view(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        res = core_resource(resource)
        return [res.view(o) for o in self.store.items(res.storage, namespace)]

    def delete(self, resource: str, name: str, namespace: str | None = None):
        res = core_resource(resource)
        self.store.delete(res, namespace or "", name)

    def mutate(self, resource: str, name: str, fn: Callable[[dict], None], namespace: str | None = None) -> dict:
        """A write by someone else (a human, the kubelet): ``fn`` edits the object in place, status included.

        The write is validated and moves resourceVersion (unless it changes nothing)."""
        return self.store.mutate(resource, namespace or "", name, fn)

    def bump(self, resource: str, name: str, namespace: str | None = None) -> str:
        """A concurrent write that only moves resourceVersion; returns the new one."""
        return self.store.bump(resource, namespace or "", name)

    def inject_conflicts(self, resource: str, name: str, times: int = 1, namespace: str | None = None):
        """The next ``times`` PUT/PATCH requests on this object each find it just modified by someone else
        (its resourceVersion is bumped first), so one carrying the resourceVersion it read gets 409."""
        self.store.inject_conflicts(resource, namespace or "", name, times)

    def compact(self):
        """Drop the watch history: a watch resuming from an older resourceVersion gets 410 Expired."""
        self.store.compact()

    # -- tokens -------------------------------------------------------------------------------

    def add_token(self, token: str, username: str, *, uid: str | None = None, groups: Iterable[str] | None = None,
                  audiences: Iterable[str] | None = None, extra: dict | None = None,
                  expires_at: float | None = None, pod: tuple | None = None) -> TokenInfo:
        """Register a token the server (and TokenReview) will recognise. Without ``audiences`` the token is
        valid for the API server's own audiences (like a static token)."""
        info = TokenInfo(username=username, uid=uid or str(uuid.uuid4()),
                         groups=list(groups) if groups is not None else ["system:authenticated"],
                         audiences=list(audiences) if audiences is not None else list(self.api_audiences),
                         extra={k: list(v) for k, v in (extra or {}).items()}, pod=pod, expires_at=expires_at)
        self._tokens[token] = info
        return info

    def issue_service_account_token(self, namespace: str, service_account: str, *,
                                    audiences: Iterable[str] = ("vigil",), pod: str | None = None,
                                    token: str | None = None, expiration_seconds: float | None = None) -> str:
        """A projected ServiceAccount token, as the kubelet mounts it: bound to ``pod`` (which must exist)
        it carries the ``authentication.kubernetes.io/pod-name`` and ``pod-uid`` extras, and from
        Kubernetes 1.30 ``node-name`` / ``node-uid`` and ``credential-id``. Deleting the pod revokes it."""
        token = token or f"fake-sa-{uuid.uuid4().hex}"
        sa_uid = self._sa_uids.setdefault((namespace, service_account), str(uuid.uuid4()))
        extra: dict[str, list[str]] = {}
        bound = None
        if pod is not None:
            pod_obj = self.get("pods", pod, namespace)
            if pod_obj is None:
                raise ValueError(f"pod {namespace}/{pod} does not exist")
            pod_uid = pod_obj["metadata"]["uid"]
            bound = (namespace, pod, pod_uid)
            extra["authentication.kubernetes.io/pod-name"] = [pod]
            extra["authentication.kubernetes.io/pod-uid"] = [pod_uid]
            node_name = (pod_obj.get("spec") or {}).get("nodeName")
            if node_name and self.version_tuple >= (1, 30):
                extra["authentication.kubernetes.io/node-name"] = [node_name]
                node = self.get("nodes", node_name)
                if node is not None:
                    extra["authentication.kubernetes.io/node-uid"] = [node["metadata"]["uid"]]
        if self.version_tuple >= (1, 30):
            extra["authentication.kubernetes.io/credential-id"] = [f"JTI={uuid.uuid4()}"]
        self.add_token(token, f"system:serviceaccount:{namespace}:{service_account}", uid=sa_uid,
                       groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                               "system:authenticated"],
                       audiences=audiences, extra=extra, pod=bound,
                       expires_at=time.time() + expiration_seconds if expiration_seconds else None)
        return token

    def revoke_token(self, token: str):
        self._tokens.pop(token, None)

    def expire_token(self, token: str):
        if token in self._tokens:
            self._tokens[token].expires_at = time.time() - 1

    def _check_token(self, token: str, audiences: list[str]) -> tuple[TokenInfo | None, list[str], str]:
        """(info, audiences it is valid for, error) as the token authenticators would answer."""
        info = self._tokens.get(token)
        if info is None:
            return None, [], ""
        if info.expires_at is not None and time.time() >= info.expires_at:
            return None, [], "[invalid bearer token, service account token has expired]"
        if info.pod is not None:
            ns, name, pod_uid = info.pod
            pod = self.get("pods", name, ns)
            if pod is None:
                return None, [], f'[invalid bearer token, pods "{name}" not found]'
            if pod["metadata"]["uid"] != pod_uid:
                return None, [], (f"[invalid bearer token, pod UID ({pod['metadata']['uid']}) does not match "
                                  f"claim ({pod_uid})]")
        valid = [a for a in audiences if a in info.audiences]
        if not valid:
            return None, [], (f"[invalid bearer token, token audiences {json.dumps(info.audiences)} is invalid "
                              f"for the target audiences {json.dumps(audiences)}]")
        return info, valid, ""

    def _authenticate_request(self, authorization: str | None, path: str) -> str | None:
        if not authorization:
            if self.require_auth and path not in ("/healthz", "/livez", "/readyz", "/version"):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return "system:anonymous"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Unauthorized", "Unauthorized")
        info, _, _ = self._check_token(token.strip(), self.api_audiences)
        if info is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return info.username

    def _token_review(self, body) -> dict:
        try:
            review, _ = schema.decode(body, TOKENREVIEWS.definition)
        except schema.DecodeError as exc:
            raise bad_request(f'TokenReview in version "v1" cannot be handled as a TokenReview: {exc}') from None
        spec = review.get("spec") or {}
        token = spec.get("token", "")
        if not token:
            raise bad_request("token is required for TokenReview in authentication")
        requested = spec.get("audiences") or list(self.api_audiences)
        info, valid, error = self._check_token(token, requested)
        status: dict = {"user": {}}
        if info is not None:
            user = {"username": info.username, "uid": info.uid, "groups": list(info.groups)}
            if info.extra:
                user["extra"] = copy.deepcopy(info.extra)
            status = {"authenticated": True, "user": user, "audiences": valid}
        elif error:
            status["error"] = error
        meta = dict(review.get("metadata") or {})
        meta["creationTimestamp"] = None
        return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": meta,
                "spec": spec, "status": status}

    # -- REST dispatch ------------------------------------------------------------------------

    def _serves(self, group: str, version: str) -> bool:
        return group != "resource.k8s.io" or version in self.resource_versions

    def _groups(self) -> list[str]:
        return [g for g in GROUPS if g != "resource.k8s.io" or self.resource_versions]

    def _discovery_resources(self, group: str, version: str) -> dict:
        resources = []
        for res in RESOURCES + [TOKENREVIEWS]:
            if res.group != group or res.version != version or not self._serves(group, version):
                continue
            entry = {"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                     "kind": res.kind, "verbs": list(res.verbs)}
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            resources.append(entry)
            if res.storage == "pods":
                resources.append({"name": "pods/eviction", "singularName": "", "namespaced": True,
                                  "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]})
            if res.status:
                resources.append({"name": f"{res.plural}/status", "singularName": "", "namespaced": res.namespaced,
                                  "kind": res.kind, "verbs": ["get", "patch", "update"]})
        if not resources:
            raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group
                else version, "resources": resources}

    def _group(self, name: str) -> dict:
        versions = self.resource_versions if name == "resource.k8s.io" else (GROUPS[name],)
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}

    def _discovery(self, parts: list[str]) -> tuple[int, dict, dict]:
        if parts == ["api"]:
            return 200, {"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                         "serverAddress": f"{self.host}:{self.port}"}]}, {}
        if parts == ["apis"]:
            return 200, {"kind": "APIGroupList", "apiVersion": "v1",
                         "groups": [self._group(g) for g in self._groups()]}, {}
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in self._groups():
                raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}, {}
        raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})

    def _dispatch(self, method, path, query, headers, body_bytes, content_type, handler):
        parts = [p for p in path.split("/") if p]
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok", {"Content-Type": "text/plain; charset=utf-8"}
        if path == "/version":
            major, minor = self.version_tuple
            return 200, {"major": str(major), "minor": str(minor), "gitVersion": f"v{self.kube_version}",
                         "gitCommit": "fakekube", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                         "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"}, {}
        if not parts or parts[0] not in ("api", "apis"):
            raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        if parts[0] == "api":
            if len(parts) == 1:
                return self._discovery(parts)
            group, version, rest = "", parts[1], parts[2:]
            if version != "v1":
                raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        else:
            if len(parts) <= 2:
                return self._discovery(parts)
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            if method != "GET":
                raise method_not_allowed(method)
            return 200, self._discovery_resources(group, version), {}
        watch = False
        if rest[0] == "watch":
            watch, rest = True, rest[1:]
        namespace = None
        if rest and rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and
                                                                        rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        plural, name = rest[0], rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        res = find_resource(group, version, plural) if self._serves(group, version) else None
        if res is None or (namespace is not None and not res.namespaced):
            raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        if subresource == "eviction" and res.storage == "pods" and name is not None and namespace is not None:
            if method != "POST":
                raise method_not_allowed(method)
            return 201, self.store.evict(namespace, name, self._json_body(body_bytes),
                                         dry_run=query.get("dryRun") == "All"), {}
        if subresource is not None and not (subresource == "status" and res.status):
            raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        if res is TOKENREVIEWS:
            if method != "POST" or name is not None:
                raise method_not_allowed(method)
            return 201, self._token_review(self._json_body(body_bytes)), {}
        if res.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", NOT_FOUND_RESOURCE, {})
        ns = namespace or ""
        dry_run = query.get("dryRun") == "All"
        validation_mode = (query.get("fieldValidation") or "Warn").lower()
        if validation_mode not in ("ignore", "warn", "strict"):
            raise bad_request(f'fieldValidation parameter unsupported: "{query.get("fieldValidation")}"')
        strict = validation_mode == "strict"

        def answer(code, obj, warnings=()):
            extra = {}
            if warnings and validation_mode == "warn":
                extra["Warning"] = ['299 - "%s"' % w.replace("\\", "\\\\").replace('"', '\\"')
                                    for w in warnings]
            return code, obj, extra

        if method == "GET":
            is_watch = watch or query.get("watch") in ("true", "1")
            if is_watch:
                handler.stream_watch(res, namespace, query, name,
                                     as_table="as=Table" in (headers.get("Accept") or ""))
                return None
            if name is None:
                listed = self.store.list(res, namespace, query.get("labelSelector"), query.get("fieldSelector"),
                                         int(query["limit"]) if query.get("limit", "").isdigit() else None,
                                         query.get("continue"))
                if "as=Table" in (headers.get("Accept") or ""):
                    table = _table(res, listed["items"], listed["metadata"]["resourceVersion"])
                    if listed["metadata"].get("continue"):
                        table["metadata"]["continue"] = listed["metadata"]["continue"]
                    return 200, table, {}
                return 200, listed, {}
            obj = self.store.get(res, ns, name)
            if "as=Table" in (headers.get("Accept") or ""):
                return 200, _table(res, [obj], obj["metadata"]["resourceVersion"]), {}
            return 200, obj, {}
        if method == "POST":
            if name is not None:
                raise method_not_allowed(method)
            if res.namespaced and namespace is None:
                raise method_not_allowed(method)
            obj, warnings = self.store.create(res, ns, self._json_body(body_bytes), strict=strict, dry_run=dry_run,
                                              allow_status=False)
            return answer(201, obj, warnings)
        if name is None:
            raise method_not_allowed(method)
        if method == "PUT":
            code, obj, warnings = self.store.update(res, ns, name, self._json_body(body_bytes),
                                                    subresource=subresource, strict=strict, dry_run=dry_run)
            return answer(code, obj, warnings)
        if method == "PATCH":
            obj, warnings = self.store.patch(res, ns, name, content_type, self._json_body(body_bytes),
                                             subresource=subresource, strict=strict, dry_run=dry_run)
            return answer(200, obj, warnings)
        if method == "DELETE":
            if subresource is not None:
                raise method_not_allowed(method)
            options = self._json_body(body_bytes) if body_bytes.strip() else {}
            if not isinstance(options, dict):
                raise bad_request("DeleteOptions must be a JSON object")
            return 200, self.store.delete(res, ns, name, options, dry_run=dry_run), {}
        raise method_not_allowed(method)

    @staticmethod
    def _json_body(body: bytes):
        if not body.strip():
            raise bad_request("the body of the request is empty")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise bad_request(f"error decoding the request body: {exc}") from None
