"""The agent's side of the health stream (DESIGN §6).

    collector Result --observe()--> hysteresis --> spool (state changes, info ring) --> gRPC stream --> aggregator
                                                      ^------------- cumulative acks delete ----------'

`StreamClient.observe` is an Agent observer (cheap: hysteresis in memory, one SQLite transaction per change).
The spool is kept by agent/stream/keeper.py: the file normally; a bounded spool in memory while another agent
holds the file (waiting: nothing is sent) or while the file fails (disk full, read-only, corrupt: sent from
memory), moved back to the file when it works again.
The network side runs in its own thread with its own asyncio loop: it retries the spool file when due,
connects to the first aggregator that answers, sends a Hello (node, boot id, spool epoch, version, digest),
then batches of pending events in seq order (a bounded window of unacknowledged ones) and heartbeats carrying
the digest. On any failure it reconnects with exponential backoff and jitter, trying the next target first (a
standby answers UNAVAILABLE), and resends everything not acknowledged. A refusal that retrying will not cure
(INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED ...) is logged once per distinct answer, counted by code,
reported as the `agent.stream` finding, and retried slowly (never in a tight loop). When the spool switches,
the session ends and a new Hello carries the new epoch.
Stream health is exported through `metrics()` / `exposition()` for the agent's /metrics, and `findings()`
(agent.spool, agent.stream) for the agent's own check (agent/run/selfcheck.py).
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
from agent.base.config import split_targets
from agent.base.errors import error_text
from agent.base.findings import OK, UNHEALTHY, WARNING, Finding, bad, ok
from .episodes import EventEpisodes, episode_message
from .hysteresis import Hysteresis
from agent.base.metrics import Counter, Gauge, MetricSet, render
from .keeper import CLOSED, DISK, LOCK_POLL, REASONS, WAITING, Bounds, SpoolKeeper, SpoolSwitched
from .spool import Spool, SpoolEvent, StateRow

SPOOL_COALESCED_EVENTS = Counter("vigil_spool_coalesced_events_total", "Unsent non-fatal state events superseded by "
                                 "a newer state of the same check.", ())
SPOOL_DROPPED_EVENTS = Counter("vigil_spool_dropped_events_total", "Events the bounded spool dropped (never fatal).",
                               ("kind",))
SPOOL_FAULTS = Counter("vigil_spool_faults_total", "Times the spool file failed and events moved to memory, by "
                       "reason (full, readonly, corrupt, io).", ("reason",))
SPOOL_HEALTHY = Gauge("vigil_spool_healthy", "1 while events are kept in the spool file; 0 while they are kept in "
                      "memory only (the file failed, or another agent holds it).", ())
SPOOL_INFO_BYTES = Gauge("vigil_spool_info_bytes", "Bytes the pending info events take (bounded by "
                         "stream.max_info_bytes; in memory, by stream.memory_max_info_bytes).", ())
SPOOL_MEMORY_EVENTS = Gauge("vigil_spool_memory_events", "Events held in memory only, until the spool file works.",
                            ())
SPOOL_PENDING_EVENTS = Gauge("vigil_spool_pending_events", "Events in the spool awaiting acknowledgement.", ("kind",))
SPOOL_RECOVERIES = Counter("vigil_spool_recoveries_total", "Spool faults the agent recovered from by itself, by "
                           "reason (corrupt: the file was moved aside and a new one started).", ("reason",))
STREAM_CONNECTED = Gauge("vigil_stream_connected", "Whether the health stream to the aggregator is up.", ())
STREAM_CONNECTS = Counter("vigil_stream_connects_total", "Health stream sessions established.", ())
STREAM_EVENTS_ACKED = Counter("vigil_stream_events_acked_total", "Events acknowledged by the aggregator.", ())
STREAM_EVENTS_SENT = Counter("vigil_stream_events_sent_total", "Events sent on the health stream (resends included).",
                             ())
STREAM_DIGEST_TRIMMED = Gauge("vigil_stream_digest_trimmed_problems", "Problems left out of the latest digest to "
                              "fit one message (non-fatal ones first); 0 normally.", ())
STREAM_EVENTS_REJECTED = Counter("vigil_stream_events_rejected_total", "Events the aggregator refused (named in an "
                                 "Ack or Welcome): never applied, dropped from the spool, never sent again.", ())
STREAM_FAILURES = Counter("vigil_stream_failures_total", "Health stream sessions that failed, by gRPC code.",
                          ("code",))
STREAM_LAST_ACK_AGE_SECONDS = Gauge("vigil_stream_last_ack_age_seconds", "Seconds since the last acknowledgement.",
                                    ())
STREAM_UNACKED_EVENTS = Gauge("vigil_stream_unacked_events", "Events sent and not yet acknowledged.", ())

log = logging.getLogger(__name__)

UNKNOWN_BOOT = "unknown-boot"
DROPS_REPORTED_FOR = 600.0  # seconds agent.spool stays unhealthy after the bound dropped an info event
# gRPC answers that the same request will get again: retried slowly, and reported (agent.stream). Assumed of
# the aggregator: it ends the stream with one of these, without acking, when it refuses a message.
REFUSALS = frozenset({"INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION",
                      "OUT_OF_RANGE", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED", "DATA_LOSS"})
# INVALID_ARGUMENT: this agent sent what the protocol forbids (a bug on one side): the slowest retry at once.
PROTOCOL_ERRORS = frozenset({"INVALID_ARGUMENT"})
# The aggregator ended the session for a reason that is not this agent's message: its idle or Hello deadline
# (DEADLINE_EXCEEDED), a newer stream of this spool epoch (ABORTED): reconnect at once (and back off only if
# it keeps happening without progress).
RECONNECT_NOW = frozenset({"ABORTED", "DEADLINE_EXCEEDED"})
REJECTIONS_REPORTED_FOR = 600.0  # seconds agent.stream stays unhealthy after the aggregator refused an event
MESSAGE_MARGIN = 4096  # bytes kept free below Welcome.max_message_bytes for the Batch's own framing


def read_boot_id(roots: Any) -> str:
    """/proc/sys/kernel/random/boot_id through the agent's roots (a snapshot without one replays a fixed id)."""
    return roots.boot_id() or UNKNOWN_BOOT


def parse_targets(value: str) -> list[str]:
    """--aggregator HOST:PORT[,HOST:PORT...]: a Service address, or replicas to try in turn."""
    try:
        return split_targets(value)  # the one rule, which the config's stream.aggregator follows too
    except ValueError as e:
        raise ValueError(f"--aggregator: {e}") from None


MIB = 1024 * 1024


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
    # The spool file's bounds: info events by the bytes they take (about 240 bytes each), state events by count
    # (coalesced per check, so they stay few); a fatal state event is never dropped.
    max_events: int = 250_000
    max_info: int = 250_000
    max_info_bytes: int = 32 * MIB
    # The memory spool's bounds, while the file cannot be used.
    memory_max_events: int = 50_000
    memory_max_info: int = 50_000
    memory_max_info_bytes: int = 8 * MIB
    reserve_bytes: int = 256 * 1024  # free space kept on the spool's filesystem for acknowledgements
    spool_retry_max_seconds: float = 60.0  # a failed spool file is retried with backoff up to this
    # Identical info events are one episode (agent/stream/episodes.py): first sent at once, then its count.
    episode_update_seconds: float = 60.0
    episode_window_seconds: float = 600.0
    episode_max_keys: int = 4096


def finding_row(collector: str, f: Finding) -> StateRow:
    return StateRow(f.check, f.entity, collector, f.component, f.status, f.severity, f.message)


def event_payload(seq: int, kind: str, check: str, component: str, entity: str, status: str, severity: str,
                  message: str, action: str | None = None, value: Any = None, threshold: Any = None,
                  observed_at: float | None = None, bus_id: str | None = None, **episode: Any) -> bytes:
    """A serialized vigil.v1.Event, as the spool stores it (kind: wire.STATE or wire.INFO); `episode`:
    occurrences, first_seen, last_seen of an episode of identical info events; `bus_id`: the entity's GPU's."""
    return wire.event_message(seq, kind, check, component, entity, status, severity, message, action, value,
                              threshold, observed_at, bus_id=bus_id, **episode).SerializeToString()


def reseq(payload: bytes, seq: int) -> bytes:
    """The same event under another seq (moved between the file and the memory spool)."""
    from agent._proto.vigil.v1 import health_pb2 as pb

    event = pb.Event.FromString(payload)
    event.seq = seq
    return event.SerializeToString()


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
    refused: tuple[str, str] | None = None  # (code, details) of the last refusal, until a session progresses
    last_error: str | None = None
    rejected: int = 0  # events the aggregator refused (Ack.rejected, Welcome.rejected)
    last_rejection: tuple[int, str] | None = None  # (seq, reason) of the latest
    rejected_at: float | None = None  # when the latest was learned (clock)
    digest_trimmed: int = 0  # problems left out of the latest digest to fit one message


class StreamClient:
    def __init__(self, settings: StreamSettings, node: str, boot_id: str, version: str = __version__,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock  # every age and timeout it computes; sleeps and waits stay real time
        self.node = node
        self.boot_id = boot_id
        self.version = version
        self.hysteresis = Hysteresis(settings.raise_after, settings.clear_after)
        s = settings
        self.keeper = SpoolKeeper(
            s.spool_path, Bounds(s.max_events, s.max_info, s.max_info_bytes),
            Bounds(s.memory_max_events, s.memory_max_info, s.memory_max_info_bytes), reseq,
            reserve_bytes=s.reserve_bytes, clock=clock, backoff_max=s.spool_retry_max_seconds)
        self.keeper.sync, self.keeper.seed, self.keeper.notice = self._sync_spool, self._seed, self._notice
        self.keeper.on_change = self._poke
        self._lock = self.keeper.lock  # observe() comes from every collector thread; hysteresis and spool together
        self._current: dict[tuple[str, str], tuple[str, Finding]] = {}  # key -> (collector, stable finding)
        self._succeeded: set[str] = set()  # collectors with at least one successful result
        # entity -> the PCI bus id its GPU findings carried (this process's: a digest sent before the GPU source's
        # first cycle after a restart has none, and the aggregator keeps the one it learnt)
        self._bus_ids: dict[str, str] = {}
        # GPU entity -> "namespace/pod" holding it (agent/run/holders.py, set by cli.py); None: not known here
        self.holders: Callable[[], dict[str, tuple[str, ...]]] | None = None
        self._c = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache: tuple[float, bytes] = (0.0, b"")
        self._progressed = False
        self._drops_seen: tuple[int, float | None] | None = None  # info drops counted so far, when the last came
        self.episodes = EventEpisodes(self._send_episode, s.episode_update_seconds, s.episode_window_seconds,
                                      s.episode_max_keys, clock=clock)
        # Set (agent/stream/validation.py StreamValidation) to run the aggregator's ValidateRequests: the Hello then
        # says handles_validation. None: the aggregator never asks this agent.
        self.validation: Any = None

    @property
    def spool(self) -> Spool:
        """The spool events go to now: the file, or the memory spool while the file cannot be used."""
        return self.keeper.spool

    # -- the agent side: findings in -----------------------------------------------------------------------
    def observe(self, result: Any) -> None:
        """Agent observer: one collector Result (agent.run.runner.Result)."""
        findings = [f for f in result.output.findings if not f.is_event]
        for f in result.output.findings:
            if f.is_event:  # an info event, never merged by hysteresis; identical ones fold into an episode
                self.episodes.offer(f)
        self.episodes.flush()
        with self._lock:
            stable, gone = self.hysteresis.update(result.collector, findings, result.success)
            for f in stable:
                self._current[(f.check, f.entity)] = (result.collector, f)
            for key in gone:
                self._current.pop(key, None)
            if result.success:
                self._succeeded.add(result.collector)
            self._write(result.collector, stable, gone if result.success else None)

    def info(self, check: str, component: str, entity: str, message: str, *, status: str = OK,
             severity: str = "info", action: str | None = None, value: Any = None, **episode: Any) -> int:
        """An informational event (tuner write, OOM kill, container exit). Returns its seq in the current
        spool (the file's, or the memory spool's while the file cannot be used)."""
        observed_at = time.time()

        def payload(seq: int) -> bytes:
            return event_payload(seq, wire.INFO, check, component, entity, status, severity, message, action, value,
                                 observed_at=observed_at, **episode)
        return self.keeper.record_info(check, entity, self.boot_id, payload)

    def _send_episode(self, f: Finding, occurrences: int, first_seen: float | None, last_seen: float | None,
                      update: bool) -> None:
        self.info(f.check, f.component, f.entity, episode_message(f, occurrences, first_seen, last_seen, update),
                  status=f.status, severity=f.severity, action=f.action, value=f.value, occurrences=occurrences,
                  first_seen=first_seen, last_seen=last_seen)

    def _holders(self) -> dict[str, tuple[str, ...]]:
        """The pods holding each GPU now ({} when unknown): a failure costs the names, never the event."""
        try:
            return self.holders() if self.holders is not None else {}
        except Exception:  # noqa: BLE001 - a half-published fact; the next event or heartbeat has them
            log.debug("reading the GPUs' holders", exc_info=True)
            return {}

    def _write(self, collector: str, stable: list[Finding], gone: list[tuple[str, str]] | None) -> None:
        findings = list(stable)
        if gone:  # None: a failed result clears nothing
            known = {(r.check, r.entity): r for r in self.keeper.states(collector)}
            for key in gone:
                r = known.get(key)
                if r is not None and r.status != OK:
                    findings.append(Finding(r.check, r.component, r.entity, OK, r.severity, "no longer reported"))
        self.keeper.record_states([self._item(collector, f) for f in findings], self.boot_id)

    def _item(self, collector: str, f: Finding):
        if f.bus_id:  # for the digest (the spool's state rows keep no bus id)
            self._bus_ids[f.entity] = f.bus_id
        return finding_row(collector, f), lambda seq: event_payload(
            seq, wire.STATE, f.check, f.component, f.entity, f.status, f.severity, f.message, f.action, f.value,
            f.threshold, bus_id=f.bus_id or self._bus_ids.get(f.entity),
            holders=_held(self._holders(), f.entity) if f.status != OK else ())

    def _sync_spool(self, spool: Spool) -> None:
        """Keeper hook (under the lock): bring a spool up to what hysteresis holds now, and report ok whatever it
        holds that a successful collector no longer reports (a GPU gone, a check renamed across an upgrade)."""
        items = [self._item(collector, f) for collector, f in self._current.values()]
        for r in spool.states():
            if r.collector in self._succeeded and (r.check, r.entity) not in self._current and r.status != OK:
                items.append(self._item(r.collector, Finding(r.check, r.component, r.entity, OK, r.severity,
                                                             "no longer reported")))
        spool.record_states(items, self.boot_id)

    def _seed(self, states: list[StateRow]) -> None:
        """Keeper hook: what the spool file remembers is each key's prior stable state; hysteresis continues
        from it (a check fatal before a restart is not reported ok, then fatal again), and a key no successful
        read reports any more is "gone"."""
        for r in states:
            self.hysteresis.seed(r.collector, Finding(r.check, r.component, r.entity, r.status, r.severity,
                                                      r.message))

    def _notice(self, message: str) -> None:
        """Keeper hook: a bad spool file was replaced. An info event, so the aggregator's log has it too."""
        self.info("agent.spool", "agent", self.node, message, status=UNHEALTHY, severity=WARNING)

    # -- health: metrics and the agent's own findings ------------------------------------------------------
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
        ms.add(STREAM_EVENTS_REJECTED, {}, c.rejected)
        ms.add(STREAM_DIGEST_TRIMMED, {}, c.digest_trimmed)
        ms.add(STREAM_UNACKED_EVENTS, {}, c.inflight)
        ms.add(STREAM_LAST_ACK_AGE_SECONDS, {},
               None if c.last_ack_at is None else round(self.clock() - c.last_ack_at, 3))
        st = self.keeper.stats()
        health = self.keeper.health()
        for kind in ("state", "info"):
            ms.add(SPOOL_PENDING_EVENTS, {"kind": kind}, st[f"pending_{kind}"])
            ms.add(SPOOL_DROPPED_EVENTS, {"kind": kind}, st[f"dropped_{kind}"])
        ms.add(SPOOL_COALESCED_EVENTS, {}, st["coalesced"])
        ms.add(SPOOL_INFO_BYTES, {}, st["info_bytes"])
        ms.add(SPOOL_HEALTHY, {}, 1 if health.mode == DISK else 0)
        ms.add(SPOOL_MEMORY_EVENTS, {}, health.memory_events)
        for reason in REASONS:
            ms.add(SPOOL_FAULTS, {"reason": reason}, health.faults[reason])
            ms.add(SPOOL_RECOVERIES, {"reason": reason}, health.recoveries[reason])
        ms.merge(self.episodes.metrics())
        if self.validation is not None:
            ms.merge(self.validation.metrics())  # vigil_probe_* of the latest validation the aggregator asked for
        return ms

    def exposition(self) -> bytes:
        """Rendered at most once a second (a scrape stays cheap)."""
        at, body = self._cache
        now = self.clock()
        if now - at >= 1.0 or not body:
            body = render(self.metrics())
            self._cache = (now, body)
        return body

    def findings(self) -> list[Finding]:
        """agent.spool and agent.stream, for the agent's own check (warnings: the node is not sick for them,
        but someone should look)."""
        h = self.keeper.health()
        node = self.node
        dropped = self.keeper.stats()["dropped_info"]
        now = self.clock()
        seen, at = self._drops_seen if self._drops_seen is not None else (dropped, None)  # drops of past runs: old
        if dropped > seen:
            at = now
        self._drops_seen = (dropped, at)
        recent_drops = at is not None and now - at < DROPS_REPORTED_FOR
        if h.mode == DISK and recent_drops:
            spool = bad("agent.spool", "agent", node, f"spool {h.path} full of info events: {dropped} dropped "
                        "(oldest first) since it was created; state events are kept", WARNING,
                        action="raise stream.max_info_bytes, or find why the aggregator does not acknowledge")
        elif h.mode == DISK:
            spool = ok("agent.spool", "agent", node, f"spool {h.path} in use (epoch {h.epoch})", WARNING)
        elif h.mode == WAITING:
            spool = bad("agent.spool", "agent", node, f"spool {h.path} is held by another agent (a rolling update?); "
                        f"{h.memory_events} events wait in memory", WARNING)
        else:
            spool = bad("agent.spool", "agent", node,
                        f"spool {h.path} unusable ({h.reason}: {h.error}); {h.memory_events} events kept in memory "
                        "(bounded) and sent from there until it works again", WARNING,
                        action="free or fix the spool's host path (--spool); the agent recovers by itself")
        c = self._c
        recent_rejection = c.rejected_at is not None and now - c.rejected_at < REJECTIONS_REPORTED_FOR
        if c.refused is not None:
            code, details = c.refused
            stream = bad("agent.stream", "agent", node, f"the aggregator refuses this agent's stream: {code} "
                         f"{details}; retried with backoff, events wait in the spool", WARNING,
                         action="see the aggregator's log and vigil_stream_failures_total{code}")
        elif recent_rejection and c.last_rejection is not None:
            seq, reason = c.last_rejection
            stream = bad("agent.stream", "agent", node, f"the aggregator refused {c.rejected} event(s) since the agent "
                         f"started (latest: seq {seq}: {reason}); they were never applied and are dropped from the "
                         "spool", WARNING, action="a bug in the agent or the aggregator: see both logs and "
                         "vigil_stream_events_rejected_total")
        elif c.connected:
            stream = ok("agent.stream", "agent", node, f"connected to {c.target}", WARNING)
        else:
            stream = ok("agent.stream", "agent", node, "not connected" + (f" ({c.last_error})" if c.last_error
                                                                         else "") + "; events wait in the spool",
                        WARNING)
        return [spool, stream]

    # -- lifecycle ----------------------------------------------------------------------------------------
    def open_spool(self) -> bool:
        """Open the spool file now if it is free and usable. Call it before the agent's first cycle: hysteresis
        then starts from what the spool remembers. Never raises: a locked or failing file leaves events in
        memory (see keeper.py). True when the file is in use."""
        in_use = self.keeper.open()
        if self._drops_seen is None:  # drops of earlier runs are old news for agent.spool
            self._drops_seen = (self.keeper.stats()["dropped_info"], None)
        return in_use

    def start(self, supervisor: Any = None) -> None:
        """Open the spool if it is free and not yet open, then run the network side in its own thread: under
        `supervisor` (agent/run/supervise.py: restarted with backoff if it dies), else a plain thread."""
        self.open_spool()
        if supervisor is not None:
            supervisor.add("stream", self._thread_main, stopped=self._stopping.is_set)
        else:
            self._thread = threading.Thread(target=self._thread_main, name="stream", daemon=True)
            self._thread.start()

    def _thread_main(self) -> None:
        self._thread = threading.current_thread()
        asyncio.run(self.run())

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.keeper.close()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # loop closed
                pass

    async def run(self) -> None:
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()  # after _stop: stop() reads _loop first
        if self._stopping.is_set():
            self._stop.set()
        keeper = asyncio.create_task(self._keep_spool())
        try:
            await self._connect_loop()
        finally:
            self._c.connected = False
            keeper.cancel()
            try:
                await keeper
            except (asyncio.CancelledError, Exception):
                pass

    async def _keep_spool(self) -> None:
        """Retry the spool file when it is due (another agent's lock, or a fault)."""
        while not self._stop.is_set():  # type: ignore[union-attr]
            if self.keeper.mode != DISK:
                self.keeper.tick()  # never raises
            await self._sleep(0.25)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)  # type: ignore[union-attr]
        except asyncio.TimeoutError:
            pass

    async def _connect_loop(self) -> None:
        import grpc

        attempt = 0
        standby_streak = 0
        refusals = 0
        i = 0
        s = self.settings
        while not self._stop.is_set():  # type: ignore[union-attr]
            if self.keeper.mode in (WAITING, CLOSED):  # another agent streams this node's spool meanwhile
                await self._sleep(LOCK_POLL)
                continue
            target = s.targets[i % len(s.targets)]
            code = "OK"
            standby = False
            self._progressed = False
            try:
                await self._session(target)
            except SpoolSwitched:  # the spool moved (file <-> memory): a new Hello with its epoch, at once
                log.info("stream to %s: the spool switched; saying Hello again", target)
                continue
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                standby = code == "UNAVAILABLE" and "standby" in (e.details() or "")
                self._failed(target, code, e.details() or "")
            except (OSError, asyncio.TimeoutError, _StreamBroken) as e:
                code = "UNAVAILABLE" if not isinstance(e, _StreamBroken) else e.code
                self._failed(target, code, str(e))
            except Exception as e:  # noqa: BLE001 - a bug must cost a session, not the stream thread
                code = "INTERNAL"
                log.exception("stream to %s: unexpected error", target)
                self._failed(target, code, error_text(e))
            finally:
                self._c.connected = False
                if self._progressed:  # it delivered: back off from scratch next time
                    attempt = standby_streak = refusals = 0
            if self._stop.is_set():  # type: ignore[union-attr]
                break
            self._c.failures[code] = self._c.failures.get(code, 0) + 1
            i += 1
            if code in PROTOCOL_ERRORS:
                # A protocol error repeats on every retry: the slowest retry, and agent.stream says so.
                refusals += 1
                delay = backoff.delay(64, s.backoff_base, s.backoff_max, "half")
            elif code in REFUSALS:
                # The same request will be refused again: slow down (never a tight loop), whatever the target.
                refusals += 1
                delay = backoff.delay(refusals + 1, s.backoff_base, s.backoff_max, "half")
            elif code in RECONNECT_NOW:
                # Not this agent's message: reconnect now; only a run of them without progress backs off.
                attempt += 1
                delay = backoff.delay(attempt - 1, s.backoff_base / 5, s.backoff_max)
            elif standby:
                # Behind one Service address a new connection may reach the other replica (each session has
                # its own channel, so kube-proxy picks again): retry soon, slowing only if no leader answers
                # for a while (a failover in progress), instead of backing off as from a failure.
                standby_streak += 1
                delay = backoff.delay(standby_streak // 4, s.backoff_base, s.backoff_max)
            elif i % len(s.targets) == 0 or code != "UNAVAILABLE":
                attempt += 1
                delay = backoff.delay(attempt, s.backoff_base, s.backoff_max)
            else:  # a standby or a dead replica: the next one may be the leader, try it at once
                delay = backoff.delay(0, s.backoff_base / 5, s.backoff_max)
            await self._sleep(delay)

    def _failed(self, target: str, code: str, details: str) -> None:
        text = f"{code} {details}".strip()
        if code in REFUSALS:
            if self._c.refused != (code, details):  # once per distinct refusal, not once per retry
                log.warning("stream to %s refused: %s", target, text)
            self._c.refused = (code, details)
        else:
            log.info("stream to %s: %s", target, text)
        self._c.last_error = text

    def _rejected(self, rejections: list[tuple[int, str]]) -> None:
        """Events the aggregator refused: the cumulative ack already covers (and so deletes) them; count them,
        log them (bounded: the first few of a batch, then a count) and let agent.stream report it."""
        if not rejections:
            return
        c = self._c
        c.rejected += len(rejections)
        seq, reason = rejections[-1]
        c.last_rejection = (seq, reason[:300])  # the aggregator's words, bounded: they go into a finding
        c.rejected_at = self.clock()
        for seq, reason in rejections[:3]:
            log.warning("the aggregator refused event seq %d: %s (never applied; dropped from the spool)", seq,
                        reason[:300])
        if len(rejections) > 3:
            log.warning("... and %d more refused events in the same answer", len(rejections) - 3)

    def _rejected_before(self, generation: int, welcome: Any) -> None:
        """Welcome.rejected names the epoch's latest refusals: one this spool still holds was named in an Ack this
        agent never read (the session broke first). Count it before the applied_seq deletes it."""
        held = []
        for r in list(welcome.rejected)[:100]:
            if not 0 < r.seq <= welcome.applied_seq:
                continue
            try:
                nxt = self.keeper.pending(generation, r.seq - 1, 1)
            except SpoolSwitched:
                return
            if nxt and nxt[0].seq == r.seq:
                held.append((r.seq, r.reason))
        self._rejected(held)

    def _digest(self, rows: list[StateRow], max_bytes: int) -> list[Any]:
        """The digest as Problems, fatal first when it must be trimmed to fit one message (the verdict needs only
        the fatal ones; a real node has a few dozen problems at most). Counts what was left out."""
        problems = _problems(rows, dict(self._bus_ids), self._holders())
        budget = max_bytes - MESSAGE_MARGIN
        size = sum(p.ByteSize() + 8 for p in problems)
        before = self._c.digest_trimmed
        self._c.digest_trimmed = 0
        if size <= budget and len(problems) <= wire.MAX_DIGEST:
            return problems
        problems.sort(key=lambda p: p.severity != wire.severity_to_proto("fatal"))
        kept, used = [], 0
        for p in problems[:wire.MAX_DIGEST]:
            n = p.ByteSize() + 8
            if used + n > budget:
                break
            kept.append(p)
            used += n
        self._c.digest_trimmed = len(problems) - len(kept)
        if self._c.digest_trimmed != before:  # once per change, not every heartbeat
            log.warning("digest trimmed to %d of %d problems to fit one message (fatal first)", len(kept),
                        len(problems))
        return kept

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

    async def _session(self, target: str) -> None:
        """One stream: hello, then send and receive until it breaks (or the client stops). Sets _progressed
        when it got an ack or outlived a heartbeat."""
        from agent._proto.vigil.v1 import health_pb2 as pb
        from agent._proto.vigil.v1 import health_pb2_grpc as pbg

        keeper = self.keeper
        generation, epoch = keeper.session()
        channel = self._channel(target)
        call = None
        state: _Session | None = None
        try:
            call = pbg.HealthStub(channel).Stream(metadata=self._metadata())
            rows, as_of = keeper.digest(generation)
            await call.write(pb.AgentMessage(hello=pb.Hello(
                node=self.node, boot_id=self.boot_id, spool_epoch=epoch, agent_version=self.version,
                digest=self._digest(rows, wire.MAX_MESSAGE_BYTES), digest_seq=as_of, handles_rejections=True,
                handles_validation=self.validation is not None)))
            first = await asyncio.wait_for(call.read(), self.settings.ack_timeout_seconds)
            if first is grpc_eof() or not first.HasField("welcome"):
                await _raise_status(call)
                raise _StreamBroken("UNKNOWN", "no welcome")
            welcome = first.welcome
            heartbeat = welcome.heartbeat_seconds or self.settings.heartbeat_seconds
            self._rejected_before(generation, welcome)
            if welcome.applied_seq:
                self._c.acked += keeper.ack(generation, welcome.applied_seq)
            c = self._c
            c.connected, c.target, c.connects = True, target, c.connects + 1
            log.info("stream to %s (%s) established; resuming after seq %d", target, welcome.aggregator,
                     welcome.applied_seq)
            state = _Session(generation, sent=welcome.applied_seq, acked=welcome.applied_seq,
                             started=self.clock(),
                             max_bytes=welcome.max_message_bytes or wire.MAX_MESSAGE_BYTES,  # 0: an older one
                             max_events=welcome.max_batch_events or wire.MAX_BATCH_EVENTS)
            reader = asyncio.create_task(self._read_acks(call, state))
            try:
                await self._send_loop(call, pb, state, heartbeat, reader)
            finally:
                if not reader.done():  # half-close, so the pending read ends with EOF rather than a cancel
                    await _half_close(call)
                    await asyncio.wait({reader}, timeout=2.0)
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):
                    pass
        finally:
            if state is not None and state.progressed:  # a session that delivered was not refused
                self._progressed = True
                self._c.refused = None
            self._c.inflight = 0
            if call is not None and not call.done():
                await _half_close(call)
                try:
                    await asyncio.wait_for(call.code(), 2.0)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - it did not end by itself: cancel it
                    call.cancel()
            await channel.close(None)

    async def _read_acks(self, call: Any, state: "_Session") -> None:
        while True:
            msg = await call.read()
            if msg is grpc_eof():
                return
            if msg.HasField("validate") and self.validation is not None:
                self.validation.handle(msg.validate)  # starts a thread: the reader goes on at once
                continue
            if msg.HasField("ack") and msg.ack.rejected:
                self._rejected([(r.seq, r.reason) for r in msg.ack.rejected])
            if msg.HasField("ack") and msg.ack.seq > state.acked:
                state.acked = msg.ack.seq
                state.last_ack = self.clock()
                state.progressed = True
                self._c.last_ack_at = state.last_ack
                self._c.acked += self.keeper.ack(state.generation, msg.ack.seq)
                self._c.inflight = max(0, state.unacked())
                self._wake.set()  # type: ignore[union-attr]

    async def _send_loop(self, call: Any, pb: Any, state: "_Session", heartbeat: float,
                         reader: asyncio.Task) -> None:
        keeper = self.keeper
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
            if keeper.generation != state.generation:
                raise SpoolSwitched()
            wake.clear()
            room = s.max_inflight - state.unacked()
            limit = min(s.batch_size, room, state.max_events)
            batch = keeper.pending(state.generation, state.sent, limit) if limit > 0 else []
            if batch:
                for boot_id, events in _by_boot(batch):
                    for part in _within_bytes(events, state.max_bytes - MESSAGE_MARGIN):
                        msg = pb.AgentMessage(batch=pb.Batch(boot_id=boot_id))
                        msg.batch.events.extend(pb.Event.FromString(e.payload) for e in part)
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
                rows, as_of = keeper.digest(state.generation)
                await call.write(pb.AgentMessage(heartbeat=pb.Heartbeat(
                    digest=self._digest(rows, state.max_bytes), digest_seq=as_of)))
                last_beat = now
                if now - state.started >= heartbeat:
                    state.progressed = True  # a heartbeat's worth of session without a refusal
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
    generation: int  # of the keeper's spool this session reads
    sent: int
    acked: int
    started: float = 0.0
    sent_seqs: collections.deque = field(default_factory=collections.deque)
    last_ack: float = 0.0
    oldest_unacked_at: float | None = None
    progressed: bool = False  # an ack advanced, or it outlived a heartbeat
    max_bytes: int = 4 * MIB  # Welcome.max_message_bytes
    max_events: int = 5000  # Welcome.max_batch_events

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


async def _half_close(call: Any, wait: float = 2.0) -> None:
    """End a session by half-closing (done_writing): the aggregator then ends the call cleanly, and no pending
    read is cancelled (grpc.aio leaks native memory for each cancelled call, grpc/grpc#43360)."""
    try:
        await asyncio.wait_for(call.done_writing(), wait)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - ending anyway; the caller cancels if need be
        pass


def _within_bytes(events: list[SpoolEvent], budget: int) -> list[list[SpoolEvent]]:
    """Split events into runs whose payloads fit one message (an event is bounded by wire.LIMITS, ~10 KB, so
    each run holds at least one)."""
    out: list[list[SpoolEvent]] = [[]]
    used = 0
    for e in events:
        n = len(e.payload) + 8  # the field's tag and length
        if out[-1] and used + n > budget:
            out.append([])
            used = 0
        out[-1].append(e)
        used += n
    return out


def _by_boot(batch: list[SpoolEvent]) -> list[tuple[str, list[SpoolEvent]]]:
    out: list[tuple[str, list[SpoolEvent]]] = []
    for e in batch:
        if out and out[-1][0] == e.boot_id:
            out[-1][1].append(e)
        else:
            out.append((e.boot_id, [e]))
    return out


def _problems(rows: list[StateRow], bus: dict[str, str] | None = None,
              holders: dict[str, tuple[str, ...]] | None = None) -> list[Any]:
    bus, holders = bus or {}, holders or {}
    return [wire.problem_message(r.check, r.entity, r.status, r.severity, r.message, bus.get(r.entity),
                                 _held(holders, r.entity)) for r in rows]


def _held(table: dict[str, tuple[str, ...]], entity: str) -> tuple[str, ...]:
    """A finding's holders: its entity's entry, else its GPU's ("gpu3/1" -> "gpu3"); () for a non-GPU entity."""
    return table.get(entity) or table.get(entity.split("/", 1)[0]) or ()
