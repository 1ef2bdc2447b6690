"""Small pieces every benchmark needs: a free loopback port, and waiting for a server's /readyz."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until http://127.0.0.1:PORT/readyz answers 200; exits the benchmark after `timeout` seconds, or at once
    when `proc` (the server being waited for) has died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise SystemExit("the aggregator did not become ready")
        time.sleep(0.2)
