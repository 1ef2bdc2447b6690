"""HTTP endpoints: /metrics returns the exposition rendered after the last collection (no work per scrape),
/healthz says only whether the agent's loops are alive (a hung SMI call is a finding, never a failed probe)."""
from __future__ import annotations

import gzip
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Route = Callable[[], tuple[int, bytes]]  # extra plain-text endpoint: (status, body)


class MetricsServer:
    """Serves the agent's (and the aggregator's) /metrics, /healthz, and any `extra` plain-text routes.

    start() runs it in a thread of its own; the agent instead supervises serve() (agent/run/supervise.py) and,
    should it die, calls recover() (the listening socket is bound again, on the same port) before serving
    again."""

    def __init__(self, host: str, port: int, metrics: Callable[[], bytes],
                 alive: Callable[[], tuple[bool, str]], extra: dict[str, Route] | None = None) -> None:
        self._handler = _handler(metrics, alive, extra or {})
        self.host = host
        self.httpd = self._bind(host, port)
        self.port = self.httpd.server_address[1]
        self.stopped = False
        self._serving = threading.Event()
        self._thread = threading.Thread(target=self.serve, name="http", daemon=True)

    def _bind(self, host: str, port: int) -> ThreadingHTTPServer:
        ThreadingHTTPServer.allow_reuse_address = True
        httpd = _Server((host, port), self._handler)
        httpd.daemon_threads = True
        return httpd

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


class _Server(ThreadingHTTPServer):
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


def _handler(metrics: Callable[[], bytes], alive: Callable[[], tuple[bool, str]], extra: dict[str, Route]) -> type:
    gz = _GzipCache()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
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
