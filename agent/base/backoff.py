"""Exponential backoff with jitter, the one helper every retry loop uses (stream reconnects, containerd
re-subscribes, the netflow probe's restarts, Kubernetes retries, reconcile retries).

Jitter spreads a fleet's retries: after an aggregator or containerd restart, thousands of nodes must not come
back in lockstep. `full` (AWS's "full jitter") draws the whole delay at random; `half` keeps half of it fixed,
so a single node never retries in a tight loop; `none` is for one process retrying a local child.
"""
from __future__ import annotations

import random
from typing import Callable, Literal

Jitter = Literal["full", "half", "none"]


def delay(attempt: int, base: float, cap: float, jitter: Jitter = "full",
          rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry): base * 2**attempt, at most
    cap, jittered. Huge attempt counts stay finite (the exponent is clamped before it can overflow)."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 64))
    if jitter == "full":
        return ceiling * rand()
    if jitter == "half":
        return ceiling * (0.5 + 0.5 * rand())
    return ceiling


class Backoff:
    """The stateful form: next() gives the next delay and counts the attempt, reset() after a success."""

    def __init__(self, base: float, cap: float, jitter: Jitter = "full",
                 rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.jitter, self.rand = base, cap, jitter, rand
        self.attempt = 0

    def next(self) -> float:
        d = delay(self.attempt, self.base, self.cap, self.jitter, self.rand)
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0
