"""Info events on the stream as episodes (DESIGN §9 "floods"): a flood of identical events is one record.

Each event finding (Finding.kind EVENT) is keyed by (check, entity, status, severity, value): the value is the
identifying detail (the Xid code, the exit code), the message (pids, addresses, times) is not. Per key:
  * the first occurrence of an episode is sent at once, whatever its severity (a fatal is never delayed);
  * further occurrences are counted, and an update (the same event with its count, first and last seen) is sent
    at most every `update_seconds` while the count grows;
  * an episode with no occurrence for `window_seconds` ends: its unsent count goes in a last update, and the
    next occurrence starts a new episode (sent at once).
At most `max_keys` episodes are open; past it the least recently seen one ends early (its count sent), counted
in vigil_stream_episodes_evicted_total. Memory is bounded by max_keys whatever the flood.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

from agent.base.episodes import Episode, EpisodeTable, describe
from agent.base.findings import Finding
from agent.base.metrics import Counter, Gauge, MetricSet

EVENTS_FOLDED = Counter("vigil_stream_events_folded_total", "Info events folded into an open episode of identical "
                        "ones instead of being sent one by one (they travel as the episode's count).", ())
EPISODES_OPEN = Gauge("vigil_stream_episodes", "Open episodes of identical info events.", ())
EPISODES_EVICTED = Counter("vigil_stream_episodes_evicted_total", "Episodes ended early because more distinct "
                           "info events were open than stream.episode_max_keys (their count was sent).", ())


@dataclass
class _Sent:
    count: int  # occurrences covered by what was sent
    at: float  # clock() of the last send


# send(finding, occurrences, first_seen, last_seen, update) -> None
Send = Callable[[Finding, int, "float | None", "float | None", bool], None]


class EventEpisodes:
    def __init__(self, send: Send, update_seconds: float = 60.0, window_seconds: float = 600.0,
                 max_keys: int = 4096, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.send, self.update_seconds, self.window_seconds = send, update_seconds, window_seconds
        self.clock, self.wall = clock, wall
        self._table: EpisodeTable[Finding] = EpisodeTable(max_keys, on_evict=self._final)
        self._sent: dict[tuple, _Sent] = {}
        self._seen_at: dict[tuple, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(f: Finding) -> tuple:
        try:
            value = json.dumps(f.value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            value = repr(f.value)
        return (f.check, f.entity, f.status, f.severity, value[:256])

    def offer(self, f: Finding) -> None:
        """One event finding of a collector cycle (it may stand for several occurrences: f.count)."""
        now, wall = self.clock(), self.wall()
        n = max(1, f.count or 1)
        first = f.first_seen if f.first_seen is not None else wall
        last = f.last_seen if f.last_seen is not None else wall
        key = self.key(f)
        with self._lock:
            ep = self._table.get(key)
            if ep is not None and now - self._seen_at.get(key, now) > self.window_seconds:
                self._end(key)  # quiet for a window: that episode is over
                ep = None
            ep, new = self._table.add(key, f, first, n)
            if last is not None:
                ep.last_seen = last if ep.last_seen is None else max(ep.last_seen, last)
            self._seen_at[key] = now
            if new:
                self._sent[key] = _Sent(n, now)
                self.send(f, n, ep.first_seen, ep.last_seen, False)
        self.flush()

    def flush(self) -> None:
        """Send the updates that are due and end the quiet episodes (called on every collector cycle)."""
        now = self.clock()
        with self._lock:
            for ep in self._table.values():
                sent = self._sent.get(ep.key)
                if sent is None:
                    continue
                if now - self._seen_at.get(ep.key, now) > self.window_seconds:
                    self._end(ep.key)
                elif ep.count > sent.count and now - sent.at >= self.update_seconds:
                    self._update(ep, now)

    def _update(self, ep: Episode[Finding], now: float) -> None:
        self._sent[ep.key] = _Sent(ep.count, now)
        self.send(ep.latest, ep.count, ep.first_seen, ep.last_seen, True)

    def _end(self, key: tuple) -> None:
        ep = self._table.pop(key)
        if ep is not None:
            self._final(ep)

    def _final(self, ep: Episode[Finding]) -> None:
        sent = self._sent.pop(ep.key, None)
        self._seen_at.pop(ep.key, None)
        if sent is not None and ep.count > sent.count:
            self.send(ep.latest, ep.count, ep.first_seen, ep.last_seen, True)

    def metrics(self) -> MetricSet:
        ms = MetricSet()
        with self._lock:
            ms.add(EVENTS_FOLDED, {}, self._table.folded)
            ms.add(EPISODES_OPEN, {}, len(self._table))
            ms.add(EPISODES_EVICTED, {}, self._table.evicted)
        return ms


def episode_message(f: Finding, occurrences: int, first_seen: float | None, last_seen: float | None,
                    update: bool) -> str:
    """The event's message, with the episode's count when it stands for more than one occurrence."""
    return f.message + describe(occurrences, first_seen, last_seen) if occurrences > 1 else f.message


__all__ = ["EventEpisodes", "episode_message"]
