"""The aggregator's client-side limit on requests to the API server: a token bucket (qps, burst) with priorities.

At fleet size the API server is shared by every controller; a storm of 500 unhealthy nodes, or a new leader
publishing 10,000 conditions, must not become a flood. So every request waits for a token (client-go's default
limiter does the same, at 5 qps: far too few for a fleet), and when requests queue, the most urgent goes first:
the Lease (losing it stops everything), then quarantines (the taint and cordon, and the read before them), then
agents' token reviews, then conditions and releases, then Events (reports: they may wait). Within a class,
first come first served.

Blocking, for the executor threads that make the requests (kube.Kube is blocking). Pure apart from the clock and
the wait, both injectable for the tests.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable

LEASE, QUARANTINE, AUTH, NODE, EVENT = 0, 1, 2, 3, 4
CLASSES = {LEASE: "lease", QUARANTINE: "quarantine", AUTH: "auth", NODE: "node", EVENT: "event"}


def classify(path: str) -> int:
    """A request's class from its path, where the caller did not say (a quarantine says so itself)."""
    if "/leases" in path:
        return LEASE
    if "/tokenreviews" in path or "/pods/" in path:
        return AUTH
    if "/events" in path:
        return EVENT
    return NODE


class PriorityLimiter:
    """`acquire(cls)` blocks until a token is free and no more urgent (or older, same-class) request waits.

    Tokens accrue at `qps` up to `burst`. `waited` and `requests` count, per class, the seconds spent waiting
    and the requests let through (the aggregator's metrics)."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (qps > 0 and burst >= 1):
            raise ValueError("need qps > 0 and burst >= 1")
        self.qps, self.burst = float(qps), int(burst)
        self.clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # heap of (class, arrival)
        self._seq = itertools.count()
        self.waited: dict[int, float] = {c: 0.0 for c in CLASSES}
        self.requests: dict[int, int] = {c: 0 for c in CLASSES}

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
        self._at = now

    def acquire(self, cls: int = NODE) -> float:
        """Take a token for a request of class `cls`; returns the seconds waited."""
        start = self.clock()
        with self._cond:
            me = (cls, next(self._seq))
            heapq.heappush(self._waiting, me)
            try:
                while True:
                    now = self.clock()
                    self._refill(now)
                    if self._waiting[0] == me and self._tokens >= 1.0:
                        self._tokens -= 1.0
                        break
                    # not our turn, or no token: wait until one accrues (or a turn passes: notify below)
                    self._cond.wait(max(0.001, (1.0 - self._tokens) / self.qps) if self._waiting[0] == me else None)
            finally:
                self._waiting.remove(me)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
        waited = self.clock() - start
        self.waited[cls] = self.waited.get(cls, 0.0) + waited
        self.requests[cls] = self.requests.get(cls, 0) + 1
        return waited

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)


__all__ = ["AUTH", "CLASSES", "EVENT", "LEASE", "NODE", "PriorityLimiter", "QUARANTINE", "classify"]
