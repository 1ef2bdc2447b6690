"""The agent's side of the probe process: start it on first use, ask it for readings over a pipe, notice when
it dies or hangs, and start it again with exponential backoff. BCC never loads in the agent's process."""
from __future__ import annotations

import collections
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.base import backoff

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]


class ProbeUnavailable(Exception):
    """The probe is not running (failed, or waiting to be restarted); the message says why."""


class ProbeStarting(ProbeUnavailable):
    """The probe is still compiling and loading its BPF program."""


class ProbeClient:
    def __init__(self, config: dict[str, Any], python: str | None = None, backoff_initial: float = 1.0,
                 backoff_max: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 command: list[str] | None = None) -> None:
        self.config = config
        self.command = command or [python or sys.executable, "-m", "agent.sources.netflow.probe"]
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.clock = clock
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}  # the probe's "ready" message
        self.starts = 0
        self.restarts = 0
        self.last_error: str | None = None
        # A local child, not a fleet reconnecting: no jitter needed.
        self._backoff = backoff.Backoff(backoff_initial, backoff_max, jitter="none")
        self._retry_at = 0.0
        self._ready = False
        self._started_at = 0.0
        self._buf = b""
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def read(self, timeout: float) -> dict[str, Any]:
        """One reading, within `timeout` seconds (starting the probe first if it is not running).
        Raises ProbeUnavailable when it cannot."""
        deadline = self.clock() + timeout
        with self._lock:
            if self.proc is None:
                now = self.clock()
                if now < self._retry_at:
                    raise ProbeUnavailable(f"{self.last_error}; next start in {self._retry_at - now:.0f}s")
                self._spawn()
            if not self._ready:
                msg = self._receive(deadline)
                if msg is None:
                    raise ProbeStarting("probe starting (compiling and loading BPF)")
                if "error" in msg or not msg.get("ready"):
                    self._fail(f"probe failed to start: {msg.get('error', msg)}")
                self.info, self._ready = msg, True
                log.info("netflow probe pid %d ready: mode %s, programs %s%s", self.proc.pid, msg.get("mode"),
                         msg.get("programs"), f", notes: {'; '.join(msg['notes'])}" if msg.get("notes") else "")
            self._send("read")
            msg = self._receive(deadline)
            if msg is None:
                self._fail(f"probe did not answer within {timeout:.1f}s")
            if "error" in msg:
                raise ProbeUnavailable(f"probe read failed: {msg['error']}")
            if self.clock() - self._started_at > 60:
                self._backoff.reset()  # healthy for a while: the next failure retries soon
            return msg

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO_ROOT),
                                     close_fds=True)
        self.starts += 1
        if self.starts > 1:
            self.restarts += 1
        self._ready, self._buf, self._started_at = False, b"", self.clock()
        threading.Thread(target=self._drain_stderr, args=(self.proc,), name="netflow-probe-stderr",
                         daemon=True).start()
        self._send(json.dumps(self.config, separators=(",", ":")))

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("netflow probe: %s", line)

    def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(self._death_note())

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        """The next message, or None at the deadline; a dead probe raises ProbeUnavailable."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - self.clock()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self._fail(self._death_note())
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _death_note(self) -> str:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        tail = " | ".join(list(self._stderr)[-3:])
        return f"probe exited ({'code ' + str(code) if code is not None else 'still running'})" + \
            (f": {tail}" if tail else "")

    def _fail(self, why: str) -> None:
        """Stop the probe, schedule the next start, and raise."""
        self._stop(kill=True)
        self.last_error = why
        wait = self._backoff.next()
        self._retry_at = self.clock() + wait
        log.warning("netflow probe: %s; restart in %.0fs", why, wait)
        raise ProbeUnavailable(why)

    def _stop(self, kill: bool = False) -> None:
        proc, self.proc, self._ready = self.proc, None, False
        if proc is None:
            return
        try:
            if not kill and proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(b"stop\n")
                proc.stdin.close()
                proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self._stop()
