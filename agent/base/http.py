"""HTTP endpoints: /metrics returns the exposition rendered after the last collection (no work per scrape),
/healthz says only whether the agent's loops are alive (a hung SMI call is a finding, never a failed probe).

The server is bounded: at most MAX_CONNECTIONS connections have a thread, each socket times out after
IDLE_TIMEOUT_SECONDS, and when every thread is taken a new connection closes the oldest one that is not in
the middle of answering a request (idle keep-alive, or a request still arriving). So slow or idle clients
cannot grow the agent's threads, and a scrape that arrives among them is still answered."""
from __future__ import annotations

import errno
import gzip
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CONNECTIONS = 16  # Prometheus HA pairs, a person with curl, a probe: 16 is plenty; threads never exceed it
IDLE_TIMEOUT_SECONDS = 30.0  # per socket operation: longer than a 15 s scrape interval, so keep-alive still works
SLOT_WAIT_SECONDS = 2.0  # every thread is busy answering: wait this long for one, then refuse the connection

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, bytes]]  # extra plain-text endpoint: (status, body)


class ListenError(OSError):
    """Cannot listen on `address`; `in_use` when another process already holds it. `what` says which of a
    program's listeners failed ("metrics", "grpc"), so its CLI can name the flag."""

    def __init__(self, address: str, err: OSError, what: str = "") -> None:
        super().__init__(err.errno, err.strerror or str(err))
        self.address = address
        self.what = what

    @property
    def in_use(self) -> bool:
        return self.errno == errno.EADDRINUSE

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_bindable(host: str, port: int) -> None:
    """Raise ListenError when HOST:PORT cannot be bound now (used to explain a library's bare "failed to
    bind", as gRPC's). The probe socket is closed at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ListenError(show_address(host, port), e) from None


class MetricsServer:
    """Serves the agent's (and the aggregator's) /metrics, /healthz, and any `extra` plain-text routes.
    Binds in the constructor (raising ListenError). start() serves in a thread of its own; the agent instead
    supervises serve() (agent/run/supervise.py) and, should it die, calls recover() (the listening socket is
    bound again, on the same port) before serving again."""

    def __init__(self, host: str, port: int, metrics: Callable[[], bytes],
                 alive: Callable[[], tuple[bool, str]], extra: dict[str, Route] | None = None,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
        self._handler = _handler(metrics, alive, extra or {}, idle_timeout)
        self.host, self._max_connections = host, max_connections
        self.httpd = self._bind(host, port)
        self.port = self.httpd.server_address[1]
        self.stopped = False
        self._serving = threading.Event()
        self._thread = threading.Thread(target=self.serve, name="http", daemon=True)

    def _bind(self, host: str, port: int) -> "_BoundedServer":
        try:
            return _BoundedServer((host, port), self._handler, self._max_connections)
        except OSError as e:  # EADDRINUSE, EADDRNOTAVAIL, EACCES, an unresolvable host
            raise ListenError(show_address(host, port), e) from None

    def serve(self) -> None:
        """Serve until stop(); blocks."""
        self._serving.set()
        try:
            self.httpd.serve_forever()
        finally:
            self._serving.clear()

    def recover(self) -> None:
        """serve() died (its socket closed or broken): bind the same port again."""
        try:
            self.httpd.server_close()
        except OSError:
            pass
        self.httpd = self._bind(self.host, self.port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped = True
        if self._serving.is_set():  # shutdown() waits for serve_forever: only when one runs
            self.httpd.shutdown()
        self.httpd.server_close()


class _BoundedServer(HTTPServer):
    """HTTPServer with one thread per connection, at most `max_connections` of them (see the module doc)."""

    allow_reuse_address = True
    request_queue_size = 128  # the accept loop never waits long, but a burst of connections must not see RSTs

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._evictable: dict[socket.socket, float] = {}  # connection -> since when; not answering a request
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self._evict_oldest()
            if not self._slots.acquire(timeout=SLOT_WAIT_SECONDS):
                self.shutdown_request(request)  # every thread is answering: refuse rather than grow
                return
        self.idle(request, True)
        threading.Thread(target=self._serve, args=(request, client_address), name="http-conn",
                         daemon=True).start()

    def _serve(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a client that hangs up mid-answer is no error of ours
            self.handle_error(request, client_address)
        finally:
            with self._lock:
                self._evictable.pop(request, None)
            self.shutdown_request(request)
            self._slots.release()

    def idle(self, conn: socket.socket, idle: bool) -> None:
        """The handler says when it answers a request (not evictable) and when it waits for one again."""
        with self._lock:
            if idle:
                self._evictable[conn] = time.monotonic()
            else:
                self._evictable.pop(conn, None)

    def _evict_oldest(self) -> None:
        with self._lock:
            if not self._evictable:
                return
            conn = min(self._evictable, key=self._evictable.__getitem__)
            del self._evictable[conn]
        try:
            conn.shutdown(socket.SHUT_RDWR)  # its thread's blocked read returns EOF; the thread ends, freeing a slot
        except OSError:
            pass

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("http: connection from %s failed", client_address, exc_info=True)  # not a traceback on stderr

    def service_actions(self) -> None:
        # serve_forever polls a listening socket that was closed under it for ever, busy and deaf (POLLNVAL):
        # end it instead, so the supervisor binds the port again.
        os.fstat(self.socket.fileno())


class _GzipCache:
    """Prometheus asks for gzip on every scrape: compress each exposition once, not once per scrape."""

    def __init__(self) -> None:
        self._src: bytes | None = None
        self._gz = b""
        self._lock = threading.Lock()

    def get(self, body: bytes) -> bytes:
        with self._lock:
            if body != self._src:  # equal bytes (not only the same object): the stream's metrics are appended
                self._src, self._gz = body, gzip.compress(body, 6)
            return self._gz


def _handler(metrics: Callable[[], bytes], alive: Callable[[], tuple[bool, str]], extra: dict[str, Route],
             idle_timeout: float) -> type:
    gz = _GzipCache()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall
        timeout = idle_timeout  # socket timeout: an idle or stalled client lets go of its thread

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.server.idle(self.connection, False)  # type: ignore[attr-defined]
            try:
                self._get()
            finally:
                self.server.idle(self.connection, True)  # type: ignore[attr-defined]

        def _get(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body = metrics()
                headers = {"Content-Type": CONTENT_TYPE}
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body, headers["Content-Encoding"] = gz.get(body), "gzip"
                self._send(200, body, headers)
            elif path == "/healthz":
                ok, why = alive()
                self._send(200 if ok else 503, (why + "\n").encode(), {"Content-Type": "text/plain"})
            elif path in extra:
                code, body = extra[path]()
                self._send(code, body, {"Content-Type": "text/plain"})
            elif path == "/":
                self._send(200, b'<html><body><a href="/metrics">metrics</a> <a href="/healthz">healthz</a>'
                                b'</body></html>\n', {"Content-Type": "text/html"})
            else:
                self._send(404, b"not found\n", {"Content-Type": "text/plain"})

        def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes every 15 s need no log line each
            pass

    return Handler
