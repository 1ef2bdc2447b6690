"""HTTP endpoints: /metrics returns the exposition rendered after the last collection (no work per scrape),
/healthz says only whether the agent's loops are alive (a hung SMI call is a finding, never a failed probe)."""
from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


Route = Callable[[], tuple[int, bytes]]  # extra plain-text endpoint: (status, body)


class MetricsServer:
    """Serves the agent's (and the aggregator's) /metrics, /healthz, and any `extra` plain-text routes."""

    def __init__(self, host: str, port: int, metrics: Callable[[], bytes],
                 alive: Callable[[], tuple[bool, str]], extra: dict[str, Route] | None = None) -> None:
        handler = _handler(metrics, alive, extra or {})
        family_host = host
        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer((family_host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
