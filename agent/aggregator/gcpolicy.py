"""When the aggregator freezes its objects out of the garbage collector's way (issue 15).

Almost everything the aggregator holds lives as long as an agent's stream: gRPC's call state, the handler's task,
the node's state. Objects made after the start-up freeze pass through the young generations, and at fleet size a
collection that finds them there walks all of them: measured at 10,000 agents (bench/aggregator.md), a
generation-1 collection of 930 ms just after the streams connected held the event loop, and every fatal event that
arrived meanwhile waited for it (fatal -> cordon p99 912 ms).

So, while the streams grow, what they made is frozen (`gc.freeze()`: the collector never walks it again; reference
counting still frees it) each time `step` more streams are open than at the last freeze: a collection then walks
at most about `step` streams' objects (a freeze costs nothing: the generations' lists are joined). Freezing at
every quarter of growth instead still left a 390-450 ms pause at 10,000 (a quarter of them walked at once). Cyclic garbage among frozen objects is never collected, so it is refreshed (unfreeze, one full collection,
freeze again: one pause, as long as the default collector's full collections at that size) when a quarter of the
streams frozen have ended, and at the latest every `max_age` seconds.
"""
from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Callable


class FreezePolicy:
    def __init__(self, streams: Callable[[], int], step: int = 256, max_age: float = 3600.0,
                 freeze: Callable[[], Any] = gc.freeze, unfreeze: Callable[[], Any] = gc.unfreeze,
                 collect: Callable[[], Any] = gc.collect, clock: Callable[[], float] = time.monotonic) -> None:
        self.streams, self.step, self.max_age = streams, step, max_age
        self._freeze, self._unfreeze, self._collect, self.clock = freeze, unfreeze, collect, clock
        self.frozen_at = 0  # streams open at the last freeze (0: none frozen since start-up)
        self.since = clock()  # when the oldest frozen garbage may have been frozen
        self.freezes = self.refreshes = 0

    def tick(self) -> None:
        n, now = self.streams(), self.clock()
        if self.frozen_at and (n < 0.75 * self.frozen_at or now - self.since >= self.max_age):
            self._unfreeze()
            self._collect()
            self._freeze()
            self.refreshes += 1
            self.frozen_at, self.since = n, now
        elif n >= self.frozen_at + self.step:
            self._freeze()
            self.freezes += 1
            if not self.frozen_at:
                self.since = now
            self.frozen_at = n

    async def run(self, stop: asyncio.Event, every: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
            except asyncio.TimeoutError:
                self.tick()


__all__ = ["FreezePolicy"]
