"""Supervision of the agent's long-lived threads (DESIGN §0): the collector loops, the stream, the HTTP server.

A supervised thread that ends while its owner has not asked it to (an exception, or a return) is restarted
after a backoff (base doubling to cap, half jitter: never a tight loop), once its optional `recover` hook has
run (the HTTP server rebinds its socket there). The backoff starts over once a thread has run for
`healthy_after` seconds. Each death is logged, counted and kept for the agent's own check
(agent/run/selfcheck.py: the `agent.thread` findings and vigil_agent_thread_restarts_total).

The supervisor's own watcher is the one thing that cannot be restarted: `alive()` says whether it runs, and
the agent's /healthz fails when it does not (the kubelet restarting the pod is then the only cure).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from agent.base.backoff import Backoff
from agent.base.errors import error_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadStatus:
    name: str
    running: bool
    restarts: int
    last_exit: str | None  # how it last ended ("RuntimeError: ...", "returned"), None if never
    since: float  # clock() when it last started (running) or ended (not running)
    restart_at: float | None  # clock() of the planned restart, while it is down


class _Part:
    def __init__(self, name: str, run: Callable[[], None], recover: Callable[[], None] | None,
                 stopped: Callable[[], bool], backoff: Backoff, now: float) -> None:
        self.name, self.run, self.recover, self.stopped, self.backoff = name, run, recover, stopped, backoff
        self.thread: threading.Thread | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self.since = now
        self.restart_at: float | None = None
        self.exit: str | None = None  # set by the thread as it ends


class Supervisor:
    def __init__(self, clock: Callable[[], float] = time.monotonic, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, healthy_after: float = 60.0, poll: float = 0.2) -> None:
        self.clock = clock  # restart times and ages; the watcher's polling is real time
        self.backoff_base, self.backoff_max, self.healthy_after, self.poll = backoff_base, backoff_max, healthy_after, poll
        self._parts: dict[str, _Part] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def add(self, name: str, run: Callable[[], None], recover: Callable[[], None] | None = None,
            stopped: Callable[[], bool] = lambda: False) -> None:
        """Run `run` in a thread named `name` now, and keep it running. `stopped()` True: its owner stopped
        it, so its end is not a death."""
        part = _Part(name, run, recover, stopped, Backoff(self.backoff_base, self.backoff_max, "half"), self.clock())
        with self._lock:
            self._parts[name] = part
            self._start(part)

    def start(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        """No more restarts (the agent is shutting down); the threads' owners stop them."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def alive(self) -> tuple[bool, str]:
        if self._watcher is not None and not self._watcher.is_alive() and not self._stop.is_set():
            return False, "the thread supervisor died: the agent can no longer restart its threads"
        return True, "ok"

    def status(self) -> list[ThreadStatus]:
        with self._lock:
            return [ThreadStatus(p.name, p.thread is not None and p.thread.is_alive(), p.restarts, p.last_exit,
                                 p.since, p.restart_at) for p in self._parts.values()]

    def thread(self, name: str) -> threading.Thread | None:
        with self._lock:
            part = self._parts.get(name)
            return part.thread if part else None

    def _start(self, part: _Part) -> None:
        part.exit = None
        part.thread = threading.Thread(target=self._body, args=(part,), name=part.name, daemon=True)
        part.since = self.clock()
        part.restart_at = None
        part.thread.start()

    def _body(self, part: _Part) -> None:
        try:
            part.run()
            part.exit = "returned"
        except BaseException as e:  # noqa: BLE001 - reported and restarted, never lost with the thread
            part.exit = error_text(e)
            if not part.stopped() and not self._stop.is_set():
                log.exception("thread %s died", part.name)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            with self._lock:
                parts = list(self._parts.values())
            for part in parts:
                try:
                    self._check(part)
                except Exception:  # noqa: BLE001 - one part's recover hook must not end the watcher
                    log.exception("supervising %s failed", part.name)

    def _check(self, part: _Part) -> None:
        now = self.clock()
        t = part.thread
        if t is not None and t.is_alive():
            if part.backoff.attempt and now - part.since >= self.healthy_after:
                part.backoff.reset()
            return
        if part.stopped() or self._stop.is_set():
            return
        if part.restart_at is None:  # it has just died
            part.restarts += 1
            part.last_exit = part.exit or "ended"
            part.since = now
            delay = part.backoff.next()
            part.restart_at = now + delay
            log.error("thread %s ended (%s); restarting in %.1fs (restart %d)", part.name, part.last_exit, delay,
                      part.restarts)
            return
        if now < part.restart_at:
            return
        if part.recover is not None:
            try:
                part.recover()
            except Exception as e:  # noqa: BLE001 - try again later
                part.last_exit = f"recovery failed: {error_text(e)}"
                part.restart_at = now + part.backoff.next()
                log.error("thread %s: %s; next try in %.1fs", part.name, part.last_exit, part.restart_at - now)
                return
        with self._lock:
            self._start(part)
        log.warning("thread %s restarted", part.name)
