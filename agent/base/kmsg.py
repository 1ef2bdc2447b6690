"""The kernel log: /dev/kmsg records, their parser, and the one reader every source shares.

Record format (Documentation/ABI/testing/dev-kmsg):

    <priority>,<sequence>,<usec since boot>,<flags>[,...];<message>\\n
     SUBSYSTEM=pci\\n                      (continuation lines start with a space: device properties)

Non-printable bytes in the message are escaped as \\xNN, so a multi-line printk is one record. A snapshot's
DIR/kmsg.txt holds the same records (what `agent snapshot` writes); lines in `dmesg` form ("[ 1843.308145] msg",
`dmesg -r`'s "<4>[ 1843.308145] msg") or journal form are accepted too: their sequence is the line number.

One reader: the GPU events and the kernel rules both read the kernel log. They share one open descriptor per
path (`subscribe`): a feed reads new records once and keeps them until every subscriber has taken them (at most
`RING_RECORDS`), and each subscriber has its own cursor, so a record is parsed once and neither source
steals the other's records. Each source still keeps its own persisted cursor (boot id + sequence) on top.
"""
from __future__ import annotations

import os
import re
import threading
from collections import deque
from dataclasses import dataclass

from .validate import ascii_int

U64 = 2**64 - 1
RING_RECORDS = 20000  # records a feed keeps for a subscriber that has not read them yet (about 4 MB at most)

# ASCII digits only ([0-9], not \d: int() would take other scripts' digits), the numbers then bounded below.
_RECORD = re.compile(r"^([0-9]+),([0-9]+),([0-9]+),([^;,]*)(?:,[^;]*)?;(.*)$")
_DMESG = re.compile(r"^(?:<([0-9]+)>)?\s*\[\s*([0-9]+)\.([0-9]+)\]\s?(.*)$")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_PROPERTY = re.compile(r"^\s+[A-Z][A-Z_]*=")


@dataclass(frozen=True)
class KmsgRecord:
    seq: int
    usec: int | None  # microseconds since boot (CLOCK_MONOTONIC), None when the line had no timestamp
    priority: int | None
    text: str


def unescape(message: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), message)


def parse_record(line: str) -> KmsgRecord | None:
    """One /dev/kmsg record (its first line); None for a continuation line or anything else."""
    line = line.rstrip("\n")
    m = _RECORD.match(line)
    if not m:
        return None
    seq, usec, prio = (ascii_int(m.group(i), 0, U64) for i in (2, 3, 1))
    if seq is None:  # a sequence number past 64 bits: not a kernel record, and it must not move the cursor
        return None
    return KmsgRecord(seq, usec, prio, unescape(m.group(5)))


def parse_text(text: str) -> list[KmsgRecord]:
    """Records from a kmsg.txt: /dev/kmsg records, or dmesg/journal lines (sequence = line number)."""
    out: list[KmsgRecord] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line[0] in " \t":
            # A kmsg device property (" SUBSYSTEM=pci"), or the next line of a multi-line printk as dmesg
            # prints it (indented): the latter belongs to the record before.
            if out and not _PROPERTY.match(line):
                last = out[-1]
                out[-1] = KmsgRecord(last.seq, last.usec, last.priority, last.text + "\n" + line.strip())
            continue
        rec = parse_record(line)
        if rec is None:
            m = _DMESG.match(line)
            secs = ascii_int(m.group(2), 0, U64) if m else None
            if m and secs is not None:
                usec = secs * 1_000_000 + int(m.group(3).ljust(6, "0")[:6])
                rec = KmsgRecord(n, usec, ascii_int(m.group(1), 0, U64) if m.group(1) else None,
                                 unescape(m.group(4)))
            else:
                rec = KmsgRecord(n, None, None, unescape(line.strip()))
        out.append(rec)
    return out


class KmsgReader:
    """/dev/kmsg, non-blocking, kept open between reads so each read continues where the last stopped.
    A regular file works too (tests, and kmsg_path pointed at a capture): it is read to its end each time."""

    def __init__(self, path: str, max_records: int) -> None:
        self.path = path
        self.max_records = max_records
        self._fd: int | None = None
        self._partial = b""
        self._pending: list[KmsgRecord] = []  # parsed past max_records (a regular file reads many per chunk)

    def read(self) -> list[KmsgRecord]:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # a new reader starts at the oldest record
        out, self._pending = self._pending[:self.max_records], self._pending[self.max_records:]
        while len(out) < self.max_records:
            try:
                chunk = os.read(self._fd, 65536)  # /dev/kmsg: exactly one record per read
            except BlockingIOError:  # EAGAIN: nothing more for now
                break
            except BrokenPipeError:  # EPIPE: records were overwritten before we read them; go on from the oldest
                continue
            except InterruptedError:
                continue
            if not chunk:
                break
            data = self._partial + chunk
            lines = data.split(b"\n")
            self._partial = lines.pop()  # "" after a complete record
            for line in lines:
                rec = parse_record(line.decode("utf-8", errors="replace"))
                if rec is not None:
                    out.append(rec)
        if len(out) > self.max_records:
            out, self._pending = out[:self.max_records], out[self.max_records:] + self._pending
        return out

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


class _Feed:
    """One open reader of one path, and the records not yet taken by every subscriber."""

    def __init__(self, path: str, max_records: int) -> None:
        self.path = path
        self.reader = KmsgReader(path, max_records)
        self.ring: deque[tuple[int, KmsgRecord]] = deque(maxlen=RING_RECORDS)  # (feed index, record)
        self.next_index = 0  # feed index of the next record read (sequence numbers may repeat in a file)
        self.subscribers: list[KmsgSubscription] = []
        self.lock = threading.Lock()

    def pump(self, max_records: int) -> None:
        # Never more than the ring holds, so the subscriber that pumps loses nothing; a full ring (a subscriber
        # that stopped reading) still takes half a ring, the oldest records going from the slow one (counted
        # in its `missed`), so one stuck source never stops the others.
        free = RING_RECORDS - len(self.ring)
        self.reader.max_records = max(1, min(max_records, max(free, RING_RECORDS // 2)))
        for rec in self.reader.read():
            self.ring.append((self.next_index, rec))
            self.next_index += 1

    def trim(self) -> None:
        low = min((s.position for s in self.subscribers), default=self.next_index)
        while self.ring and self.ring[0][0] < low:
            self.ring.popleft()


_FEEDS: dict[str, _Feed] = {}
_FEEDS_LOCK = threading.Lock()


class KmsgSubscription:
    """A source's view of the shared reader of `path`: read() returns the records this subscriber has not
    had yet (at most max_records), in order. `missed` counts records the feed dropped before this subscriber
    read them (the ring was full)."""

    def __init__(self, path: str, max_records: int) -> None:
        self.path = path
        self.max_records = max_records
        self.position = 0  # feed index of the next record this subscriber wants
        self.missed = 0
        self._closed = False
        with _FEEDS_LOCK:
            feed = _FEEDS.get(path)
            if feed is None:
                feed = _FEEDS[path] = _Feed(path, max_records)
            # A late subscriber starts at what the feed still holds: the backlog not yet taken by the others.
            self.position = feed.ring[0][0] if feed.ring else feed.next_index
            feed.subscribers.append(self)
            self._feed = feed

    def read(self) -> list[KmsgRecord]:
        if self._closed:
            raise OSError(f"{self.path}: subscription closed")
        feed = self._feed
        with feed.lock:
            mine = [r for i, r in feed.ring if i >= self.position]
            if len(mine) < self.max_records:
                feed.pump(self.max_records)  # may raise OSError (open failed): the caller reports it
            oldest = feed.ring[0][0] if feed.ring else feed.next_index
            if oldest > self.position:
                self.missed += oldest - self.position
                self.position = oldest
            out = []
            for i, r in feed.ring:
                if i >= self.position:
                    if len(out) >= self.max_records:
                        break
                    out.append(r)
                    self.position = i + 1
            feed.trim()
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _FEEDS_LOCK:
            feed = self._feed
            with feed.lock:
                if self in feed.subscribers:
                    feed.subscribers.remove(self)
                feed.trim()
                if not feed.subscribers:
                    feed.reader.close()
                    if _FEEDS.get(feed.path) is feed:
                        del _FEEDS[feed.path]


def subscribe(path: str, max_records: int) -> KmsgSubscription:
    """A subscriber of the one shared reader of `path` (opened lazily, on the first read)."""
    return KmsgSubscription(path, max_records)
