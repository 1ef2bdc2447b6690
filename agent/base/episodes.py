"""Episodes: repeated identical occurrences are one record (count, first seen, last seen), not one each.

A kernel that logs the same Xid 800,000 times has had one problem, not 800,000: the sources fold identical events
(same check, entity and identifying detail; never the timestamp, pid or counter in the line) into an episode, and
the stream sends an episode's first occurrence at once and then its count now and then (agent/stream/episodes.py).

`EpisodeTable` is the bounded fold both use: at most `max_keys` distinct keys; a new key past that evicts the one
seen least recently (its record is handed to `on_evict`, so nothing is silently lost) and is counted. Not
thread-safe: each user holds its own lock.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


@dataclass
class Episode(Generic[T]):
    key: Hashable
    sample: T  # the first occurrence (what the episode is about)
    count: int
    first_seen: float | None
    last_seen: float | None
    latest: T  # the most recent occurrence

    def add(self, item: T, at: float | None, n: int = 1) -> None:
        self.count += n
        self.latest = item
        if at is not None:
            self.last_seen = at if self.last_seen is None else max(self.last_seen, at)
            self.first_seen = at if self.first_seen is None else min(self.first_seen, at)


class EpisodeTable(Generic[T]):
    def __init__(self, max_keys: int, on_evict: Callable[[Episode[T]], None] | None = None) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self.on_evict = on_evict
        self._eps: OrderedDict[Hashable, Episode[T]] = OrderedDict()  # least recently seen first
        self.folded = 0  # occurrences added to an episode that already existed
        self.evicted = 0  # episodes pushed out by a new key past max_keys

    def add(self, key: Hashable, item: T, at: float | None, n: int = 1) -> tuple[Episode[T], bool]:
        """Fold one occurrence (or `n` already counted together); (its episode, whether the episode is new)."""
        ep = self._eps.get(key)
        if ep is not None:
            ep.add(item, at, n)
            self._eps.move_to_end(key)
            self.folded += n
            return ep, False
        while len(self._eps) >= self.max_keys:
            _, old = self._eps.popitem(last=False)
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(old)
        ep = Episode(key, item, n, at, at, item)
        self._eps[key] = ep
        return ep, True

    def get(self, key: Hashable) -> Episode[T] | None:
        return self._eps.get(key)

    def pop(self, key: Hashable) -> Episode[T] | None:
        return self._eps.pop(key, None)

    def values(self) -> list[Episode[T]]:
        return list(self._eps.values())

    def __len__(self) -> int:
        return len(self._eps)


def describe(count: int, first_seen: float | None, last_seen: float | None) -> str:
    """" (x800000 from 12:01:07 to 14:22:31 UTC)" for a message; "" for a single occurrence."""
    if count <= 1:
        return ""
    import time as _time

    def hms(t: float) -> str:
        return _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(t))
    if first_seen is None or last_seen is None:
        return f" (x{count})"
    return f" (x{count} from {hms(first_seen)} to {hms(last_seen)} UTC)"


__all__ = ["Episode", "EpisodeTable", "describe"]
