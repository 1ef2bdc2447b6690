"""The agent's side of the health stream (DESIGN §6).

    collector Result --observe()--> hysteresis --> spool (state changes, info ring) --> gRPC stream --> aggregator
                                                      ^------------- cumulative acks delete ----------'

`StreamClient.observe` is an Agent observer (cheap: hysteresis in memory, one SQLite transaction per change).
The network side runs in its own thread with its own asyncio loop: it opens the spool (waiting while another
agent holds its lock), connects to the first aggregator that answers, sends a Hello (node, boot id, spool
epoch, version, digest), then batches of pending events in seq order (a bounded window of unacknowledged
ones) and heartbeats carrying the digest. On any failure it reconnects with full-jitter exponential backoff,
trying the next target first (a standby answers UNAVAILABLE), and resends everything not acknowledged.
Stream health is exported through `metrics()` / `exposition()` for the agent's /metrics.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent import __version__, wire
from agent.base import backoff
from agent.base.findings import OK, Finding
from agent.base.config import split_targets
from .hysteresis import Hysteresis
from agent.base.metrics import Counter, Gauge, MetricSet, render
from .spool import Spool, SpoolEvent, SpoolLocked, StateRow

SPOOL_COALESCED_EVENTS = Counter("vigil_spool_coalesced_events_total", "Unsent non-fatal state events superseded by "
                                 "a newer state of the same check.", ())
SPOOL_DROPPED_EVENTS = Counter("vigil_spool_dropped_events_total", "Events the bounded spool dropped (never fatal).",
                               ("kind",))
SPOOL_PENDING_EVENTS = Gauge("vigil_spool_pending_events", "Events in the spool awaiting acknowledgement.", ("kind",))
STREAM_CONNECTED = Gauge("vigil_stream_connected", "Whether the health stream to the aggregator is up.", ())
STREAM_CONNECTS = Counter("vigil_stream_connects_total", "Health stream sessions established.", ())
STREAM_EVENTS_ACKED = Counter("vigil_stream_events_acked_total", "Events acknowledged by the aggregator.", ())
STREAM_EVENTS_SENT = Counter("vigil_stream_events_sent_total", "Events sent on the health stream (resends included).",
                             ())
STREAM_FAILURES = Counter("vigil_stream_failures_total", "Health stream sessions that failed, by gRPC code.",
                          ("code",))
STREAM_LAST_ACK_AGE_SECONDS = Gauge("vigil_stream_last_ack_age_seconds", "Seconds since the last acknowledgement.",
                                    ())
STREAM_UNACKED_EVENTS = Gauge("vigil_stream_unacked_events", "Events sent and not yet acknowledged.", ())

log = logging.getLogger(__name__)

UNKNOWN_BOOT = "unknown-boot"


def read_boot_id(roots: Any) -> str:
    """/proc/sys/kernel/random/boot_id through the agent's roots (a snapshot without one replays a fixed id)."""
    return roots.boot_id() or UNKNOWN_BOOT


def parse_targets(value: str) -> list[str]:
    """--aggregator HOST:PORT[,HOST:PORT...]: a Service address, or replicas to try in turn."""
    try:
        return split_targets(value)  # the one rule, which the config's stream.aggregator follows too
    except ValueError as e:
        raise ValueError(f"--aggregator: {e}") from None


@dataclass
class StreamSettings:
    targets: list[str]
    spool_path: str
    token_file: str | None = None
    tls_ca: str | None = None
    batch_size: int = 100  # events per Batch message
    max_inflight: int = 2000  # unacknowledged events on the wire
    heartbeat_seconds: float = 10.0  # until the aggregator's Welcome says otherwise
    ack_timeout_seconds: float = 30.0  # events in flight and no ack this long: reconnect
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    raise_after: int = 1
    clear_after: int = 2
    max_events: int = 10000
    max_info: int = 1000
    lock_timeout: float | None = None  # None: wait for ever for another agent's spool lock


def finding_row(collector: str, f: Finding) -> StateRow:
    return StateRow(f.check, f.entity, collector, f.component, f.status, f.severity, f.message)


def event_payload(seq: int, kind: str, check: str, component: str, entity: str, status: str, severity: str,
                  message: str, action: str | None = None, value: Any = None, threshold: Any = None,
                  observed_at: float | None = None) -> bytes:
    """A serialized vigil.v1.Event, as the spool stores it (kind: wire.STATE or wire.INFO)."""
    return wire.event_message(seq, kind, check, component, entity, status, severity, message, action, value,
                              threshold, observed_at).SerializeToString()


@dataclass
class _Counters:
    connects: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    acked: int = 0
    connected: bool = False
    target: str = ""
    inflight: int = 0
    last_ack_at: float | None = None


class StreamClient:
    def __init__(self, settings: StreamSettings, node: str, boot_id: str, version: str = __version__,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock  # every age and timeout it computes; sleeps and waits stay real time
        self.node = node
        self.boot_id = boot_id
        self.version = version
        self.hysteresis = Hysteresis(settings.raise_after, settings.clear_after)
        self.spool: Spool | None = None
        self._lock = threading.Lock()  # observe() comes from every collector thread
        self._current: dict[tuple[str, str], tuple[str, Finding]] = {}  # key -> (collector, stable finding)
        self._succeeded: set[str] = set()  # collectors with at least one successful result
        self._c = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._cache: tuple[float, bytes] = (0.0, b"")
        self._early_info: collections.deque = collections.deque(maxlen=settings.max_info)

    # -- the agent side: findings in -----------------------------------------------------------------------
    def observe(self, result: Any) -> None:
        """Agent observer: one collector Result (agent.run.runner.Result)."""
        findings = [f for f in result.output.findings if not f.is_event]
        for f in result.output.findings:
            if f.is_event:  # one-shot: an info event each, never merged by hysteresis
                self.info(f.check, f.component, f.entity, f.message, status=f.status, severity=f.severity,
                          action=f.action, value=f.value)
        with self._lock:
            stable, gone = self.hysteresis.update(result.collector, findings, result.success)
            for f in stable:
                self._current[(f.check, f.entity)] = (result.collector, f)
            for key in gone:
                self._current.pop(key, None)
            if result.success:
                self._succeeded.add(result.collector)
            if self.spool is not None:
                self._write(result.collector, stable, gone if result.success else None)

    def info(self, check: str, component: str, entity: str, message: str, *, status: str = OK,
             severity: str = "info", action: str | None = None, value: Any = None) -> int | None:
        """An informational event (tuner write, OOM kill, container exit). Returns its seq, or None while the
        spool is not open yet (another agent holds it): then it waits in a bounded memory ring (max_info)."""
        observed_at = time.time()

        def payload(seq: int) -> bytes:
            return event_payload(seq, wire.INFO, check, component, entity, status, severity, message, action, value,
                                 observed_at=observed_at)
        with self._lock:  # held while writing: the spool cannot close under us, nor an early event overtake
            spool = self.spool
            if spool is None:  # kept in memory (bounded) until the spool opens
                self._early_info.append((check, entity, payload))
                return None
            return spool.record_info(check, entity, self.boot_id, payload)

    def _write(self, collector: str, stable: list[Finding], gone: list[tuple[str, str]] | None) -> None:
        spool = self.spool
        assert spool is not None
        findings = list(stable)
        if gone:  # None: a failed result clears nothing
            known = {(r.check, r.entity): r for r in spool.states(collector)}
            for key in gone:
                r = known.get(key)
                if r is not None and r.status != OK:
                    findings.append(Finding(r.check, r.component, r.entity, OK, r.severity, "no longer reported"))
        spool.record_states([self._item(collector, f) for f in findings], self.boot_id)

    def _item(self, collector: str, f: Finding):
        return finding_row(collector, f), lambda seq: event_payload(
            seq, wire.STATE, f.check, f.component, f.entity, f.status, f.severity, f.message, f.action, f.value,
            f.threshold)

    def _record(self, spool: Spool, collector: str, f: Finding) -> None:
        spool.record_states([self._item(collector, f)], self.boot_id)

    def _sync_opened_spool(self) -> None:
        """The spool just opened: bring it up to what hysteresis holds now, and report ok whatever it holds
        that a successful collector no longer reports (a GPU gone, a check renamed across an upgrade).
        The caller holds self._lock."""
        spool = self.spool
        assert spool is not None
        for collector, f in self._current.values():
            self._record(spool, collector, f)
        for r in spool.states():
            if r.collector in self._succeeded and (r.check, r.entity) not in self._current and r.status != OK:
                self._record(spool, r.collector, Finding(r.check, r.component, r.entity, OK, r.severity,
                                                         "no longer reported"))
        while self._early_info:
            check, entity, payload = self._early_info.popleft()
            spool.record_info(check, entity, self.boot_id, payload)

    # -- metrics ------------------------------------------------------------------------------------------
    def metrics(self) -> MetricSet:
        c = self._c
        ms = MetricSet()
        ms.add(STREAM_CONNECTED, {}, 1 if c.connected else 0)
        ms.add(STREAM_CONNECTS, {}, c.connects)
        ms.declare(STREAM_FAILURES)
        for code, n in sorted(c.failures.items()):
            ms.add(STREAM_FAILURES, {"code": code}, n)
        ms.add(STREAM_EVENTS_SENT, {}, c.sent)
        ms.add(STREAM_EVENTS_ACKED, {}, c.acked)
        ms.add(STREAM_UNACKED_EVENTS, {}, c.inflight)
        ms.add(STREAM_LAST_ACK_AGE_SECONDS, {},
               None if c.last_ack_at is None else round(self.clock() - c.last_ack_at, 3))
        spool = self.spool
        if spool is not None:
            st = spool.stats()
            for kind in ("state", "info"):
                ms.add(SPOOL_PENDING_EVENTS, {"kind": kind}, st[f"pending_{kind}"])
                ms.add(SPOOL_DROPPED_EVENTS, {"kind": kind}, st[f"dropped_{kind}"])
            ms.add(SPOOL_COALESCED_EVENTS, {}, st["coalesced"])
        return ms

    def exposition(self) -> bytes:
        """Rendered at most once a second (a scrape stays cheap)."""
        at, body = self._cache
        now = self.clock()
        if now - at >= 1.0 or not body:
            body = render(self.metrics())
            self._cache = (now, body)
        return body

    # -- lifecycle ----------------------------------------------------------------------------------------
    def open_spool(self) -> bool:
        """Open the spool now if it is free. Call it before the agent's first cycle: hysteresis then starts
        from what the spool remembers (a check fatal before a restart is not reported ok, then fatal again)."""
        if self.spool is not None:
            return True
        try:
            self._adopt(Spool(self.settings.spool_path, max_events=self.settings.max_events,
                              max_info=self.settings.max_info, lock_timeout=0))
            return True
        except SpoolLocked:
            log.warning("spool %s is held by another agent; waiting", self.settings.spool_path)
            return False

    def start(self) -> None:
        """Open the spool if it is free and not yet open, then run the network side in its own thread."""
        self.open_spool()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="stream", daemon=True)
        self._thread.start()
        ready.wait(5)

    def _thread_main(self, ready: threading.Event) -> None:
        asyncio.run(self.run(ready))

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed
                pass

    async def run(self, ready: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        if ready is not None:
            ready.set()
        try:
            if self.spool is None:
                await self._open_spool()
            if self.spool is None:
                return
            await self._connect_loop()
        finally:
            self._c.connected = False
            with self._lock:
                spool, self.spool = self.spool, None
                if spool is not None:
                    spool.close()

    async def _open_spool(self) -> None:
        s = self.settings
        deadline = None if s.lock_timeout is None else self.clock() + s.lock_timeout
        while not self._stop.is_set():  # type: ignore[union-attr]
            try:
                spool = Spool(s.spool_path, max_events=s.max_events, max_info=s.max_info, lock_timeout=0)
            except SpoolLocked:
                if deadline is not None and self.clock() >= deadline:
                    raise
                await self._sleep(0.5)
                continue
            self._adopt(spool)
            return

    def _adopt(self, spool: Spool) -> None:
        spool.on_change = self._poke
        with self._lock:
            # What the spool remembers is each key's prior stable state: hysteresis continues from it, and a
            # key no successful read reports any more (a GPU gone, a check renamed by an upgrade) is "gone".
            for r in spool.states():
                self.hysteresis.seed(r.collector, Finding(r.check, r.component, r.entity, r.status, r.severity,
                                                          r.message))
            self.spool = spool
            self._sync_opened_spool()  # in the same critical section: no info() overtakes the early events
        log.info("spool %s open (epoch %s)", self.settings.spool_path, spool.epoch)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            pass

    async def _connect_loop(self) -> None:
        import grpc

        attempt = 0
        standby_streak = 0
        i = 0
        while not self._stop.is_set():  # type: ignore[union-attr]
            target = self.settings.targets[i % len(self.settings.targets)]
            code = "OK"
            standby = False
            try:
                established = await self._session(target)
                if established:
                    attempt = standby_streak = 0
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                standby = code == "UNAVAILABLE" and "standby" in (e.details() or "")
                log.info("stream to %s: %s %s", target, code, e.details())
            except (OSError, asyncio.TimeoutError, _StreamBroken) as e:
                code = "UNAVAILABLE" if not isinstance(e, _StreamBroken) else e.code
                log.info("stream to %s: %s", target, e)
            finally:
                self._c.connected = False
            if self._stop.is_set():  # type: ignore[union-attr]
                break
            self._c.failures[code] = self._c.failures.get(code, 0) + 1
            i += 1
            if standby:
                # Behind one Service address a new connection may reach the other replica (each session has
                # its own channel, so kube-proxy picks again): retry soon, slowing only if no leader answers
                # for a while (a failover in progress), instead of backing off as from a failure.
                standby_streak += 1
                delay = backoff.delay(standby_streak // 4, self.settings.backoff_base, self.settings.backoff_max)
            elif i % len(self.settings.targets) == 0 or code != "UNAVAILABLE":
                attempt += 1
                delay = backoff.delay(attempt, self.settings.backoff_base, self.settings.backoff_max)
            else:  # a standby or a dead replica: the next one may be the leader, try it at once
                delay = backoff.delay(0, self.settings.backoff_base / 5, self.settings.backoff_max)
            await self._sleep(delay)

    def _channel(self, target: str) -> Any:
        import grpc

        opts = [("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000)]
        if self.settings.tls_ca:
            creds = grpc.ssl_channel_credentials(Path(self.settings.tls_ca).read_bytes())
            return grpc.aio.secure_channel(target, creds, options=opts)
        return grpc.aio.insecure_channel(target, options=opts)

    def _metadata(self) -> list[tuple[str, str]]:
        if not self.settings.token_file:
            return []
        token = Path(self.settings.token_file).read_text().strip()  # re-read: projected tokens rotate
        return [("authorization", f"Bearer {token}")]

    async def _session(self, target: str) -> bool:
        """One stream: hello, then send and receive until it breaks. Returns whether it got a Welcome."""
        from agent._proto.vigil.v1 import health_pb2 as pb
        from agent._proto.vigil.v1 import health_pb2_grpc as pbg

        spool = self.spool
        assert spool is not None
        channel = self._channel(target)
        call = None
        try:
            call = pbg.HealthStub(channel).Stream(metadata=self._metadata())
            rows, as_of = spool.digest()
            await call.write(pb.AgentMessage(hello=pb.Hello(
                node=self.node, boot_id=self.boot_id, spool_epoch=spool.epoch, agent_version=self.version,
                digest=_problems(rows), digest_seq=as_of)))
            first = await asyncio.wait_for(call.read(), self.settings.ack_timeout_seconds)
            if first is grpc_eof() or not first.HasField("welcome"):
                await _raise_status(call)
                raise _StreamBroken("UNKNOWN", "no welcome")
            welcome = first.welcome
            heartbeat = welcome.heartbeat_seconds or self.settings.heartbeat_seconds
            if welcome.applied_seq:
                self._c.acked += spool.ack(welcome.applied_seq)
            c = self._c
            c.connected, c.target, c.connects = True, target, c.connects + 1
            log.info("stream to %s (%s) established; resuming after seq %d", target, welcome.aggregator,
                     welcome.applied_seq)
            state = _Session(sent=welcome.applied_seq, acked=welcome.applied_seq)
            reader = asyncio.create_task(self._read_acks(call, state))
            try:
                await self._send_loop(call, pb, state, heartbeat, reader)
            finally:
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):
                    pass
            return True
        finally:
            self._c.inflight = 0
            if call is not None:
                call.cancel()
            await channel.close(None)

    async def _read_acks(self, call: Any, state: "_Session") -> None:
        spool = self.spool
        assert spool is not None
        while True:
            msg = await call.read()
            if msg is grpc_eof():
                return
            if msg.HasField("ack") and msg.ack.seq > state.acked:
                state.acked = msg.ack.seq
                state.last_ack = self.clock()
                self._c.last_ack_at = state.last_ack
                self._c.acked += spool.ack(msg.ack.seq)
                self._c.inflight = max(0, state.unacked())
                self._wake.set()  # type: ignore[union-attr]

    async def _send_loop(self, call: Any, pb: Any, state: "_Session", heartbeat: float,
                         reader: asyncio.Task) -> None:
        spool = self.spool
        assert spool is not None
        s = self.settings
        last_beat = self.clock()
        wake = self._wake
        assert wake is not None
        while not self._stop.is_set():  # type: ignore[union-attr]
            if reader.done():
                exc = reader.exception()
                if exc is not None:
                    raise exc
                await _raise_status(call)
                raise _StreamBroken("UNAVAILABLE", "the aggregator closed the stream")
            wake.clear()
            room = s.max_inflight - state.unacked()
            batch = spool.pending(state.sent, min(s.batch_size, room)) if room > 0 else []
            if batch:
                for boot_id, events in _by_boot(batch):
                    msg = pb.AgentMessage(batch=pb.Batch(boot_id=boot_id))
                    msg.batch.events.extend(pb.Event.FromString(e.payload) for e in events)
                    await call.write(msg)
                state.sent_seqs.extend(e.seq for e in batch)
                state.sent = batch[-1].seq
                self._c.sent += len(batch)
                self._c.inflight = state.unacked()
                if state.oldest_unacked_at is None:
                    state.oldest_unacked_at = self.clock()
                continue
            now = self.clock()
            if state.unacked() and now - max(state.last_ack, state.oldest_unacked_at or now) > s.ack_timeout_seconds:
                raise _StreamBroken("DEADLINE_EXCEEDED", f"no ack for {s.ack_timeout_seconds:.0f}s")
            if now - last_beat >= heartbeat:
                rows, as_of = spool.digest()
                await call.write(pb.AgentMessage(heartbeat=pb.Heartbeat(digest=_problems(rows),
                                                                        digest_seq=as_of)))
                last_beat = now
            timeout = max(0.01, min(heartbeat - (self.clock() - last_beat), 1.0))
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass


class _StreamBroken(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass
class _Session:
    sent: int
    acked: int
    sent_seqs: collections.deque = field(default_factory=collections.deque)
    last_ack: float = 0.0
    oldest_unacked_at: float | None = None

    def unacked(self) -> int:
        # seqs have gaps (coalesced, dropped): count what was sent above the ack
        while self.sent_seqs and self.sent_seqs[0] <= self.acked:
            self.sent_seqs.popleft()
        if not self.sent_seqs:
            self.oldest_unacked_at = None
        return len(self.sent_seqs)


def grpc_eof() -> Any:
    import grpc

    return grpc.aio.EOF


async def _raise_status(call: Any) -> None:
    """If the call ended with an error status, raise it as the AioRpcError it is."""
    import grpc

    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(code, await call.initial_metadata(), await call.trailing_metadata(),
                                   await call.details())


def _by_boot(batch: list[SpoolEvent]) -> list[tuple[str, list[SpoolEvent]]]:
    out: list[tuple[str, list[SpoolEvent]]] = []
    for e in batch:
        if out and out[-1][0] == e.boot_id:
            out[-1][1].append(e)
        else:
            out.append((e.boot_id, [e]))
    return out


def _problems(rows: list[StateRow]) -> list[Any]:
    return [wire.problem_message(r.check, r.entity, r.status, r.severity, r.message) for r in rows]
