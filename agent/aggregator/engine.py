"""The aggregator's loop: stream input -> node state -> verdicts -> reconciles -> thin Kubernetes writes.

Stream handlers call hello/batch/heartbeat synchronously on the event loop (cheap, no I/O); a node whose
verdict changed is queued. Workers reconcile one node at a time each (never the same node twice at once):
read the Node, plan (pure), then write through the budget. A ticker re-judges every node each second
(healthy_delay and silence are functions of time). Reconciles are level-triggered: a retry, a resync or a
new leader computes the writes from what the Node shows now, so an action is never applied twice; and a write
whose answer was lost is still reported once (metric, Event, log line) when a later read shows it landed.
Every decision and every action is one INFO log line naming the node, the check and the reason.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from agent import wire
from agent.base.backoff import delay as backoff_delay
from . import intake
from . import state as st
from .blast import Blast, without_annotation
from .intake import printable
from .devices import DeviceConfig
from .drain import Drain, DrainConfig
from .kube import ApiError, Kube, node_event, now_iso
from .lease import NotLeader
from .metrics import AggregatorMetrics
from .policy import (ADMIT, ALREADY, HEALTHY, MAX_EPISODE, MAX_MESSAGE, NONE, OPENED, RECORD_FULL, RECORD_MINIMAL,
                     RECORD_NONE, RECOVERING, TAINT_EFFECT, TAINT_KEY, UNHEALTHY, BudgetConfig, Ledger, PolicyConfig,
                     Verdict, admit, condition_patch, judge, observe, plan, quarantined, released, unhold)
from .ratelimit import EVENT, QUARANTINE
from .remedy import Remedy, Signatures
from .signatures import SignatureConfig
from .validation import SUMMARY, ValidationConfig, Validator

log = logging.getLogger(__name__)

TICK_SLICE = 500  # nodes judged per slice of the ticker's sweep
CONDITION_EVENT = {"False": ("VigilUnhealthy", "Warning"), "True": ("VigilHealthy", "Normal"),
                   "Unknown": ("VigilAgentSilent", "Warning")}


@dataclass
class AggregatorConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    devices: DeviceConfig = field(default_factory=DeviceConfig)  # per-device quarantine (DRA): remedy.py
    signatures: SignatureConfig = field(default_factory=SignatureConfig)  # job signatures: signatures.py
    drain: DrainConfig = field(default_factory=DrainConfig)  # opt-in partial drain: drain.py
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # active validation gates: validation.py
    dry_run: bool = False
    identity: str = "vigil-aggregator"
    event_namespace: str = "default"  # where Node Events go (kubectl describe node looks there)
    heartbeat_seconds: int = 10  # told to agents in the Welcome
    workers: int = 16  # reconciles at once (each waits on the API server most of the time)
    tick_seconds: float = 1.0
    resync_seconds: float = 300.0
    retry_seconds: float = 1.0  # first retry of a failed reconcile (doubles, up to 30 s)
    hello_seconds: float = 10.0  # a stream that sends no Hello this long after it opened is ended

    @property
    def idle_seconds(self) -> float:
        """A stream that sends nothing at all (no batch, no heartbeat) this long is ended: its agent is gone."""
        return max(3.0 * self.heartbeat_seconds, self.policy.heartbeat_timeout)


class StreamHandle:
    """One agent stream as the engine knows it: its place in its spool epoch, whether the agent reads rejections,
    and how the engine ends it (a newer stream of the same (node, epoch), a lost Lease): `ended` gets the gRPC code
    name and the details, and `on_end`, the server's, ends the call."""

    def __init__(self, node: str, epoch: str, handles_rejections: bool) -> None:
        self.node, self.epoch = node, epoch
        self.handles_rejections = handles_rejections
        self.cursor = intake.Cursor(0)
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.on_end: Callable[[str, str], Any] | None = None  # the server's: ends the call
        self.handles_validation = False  # Hello.handles_validation: the agent runs ValidateRequests
        self.agent_version = ""
        self.send: Callable[[Any], Any] | None = None  # the server's, once the Welcome is out: a message to the agent

    def end(self, code: str, details: str) -> None:
        if not self.ended.done():
            self.ended.set_result((code, details))
            if self.on_end is not None:
                self.on_end(code, details)


@dataclass
class BatchResult:
    ack: int  # cumulative: every event of the epoch at or below it was applied (bar those named in `rejected`)
    rejected: list[intake.Rejection] = field(default_factory=list)  # named to an agent that reads rejections
    stop: intake.Rejection | None = None  # set: end the stream INVALID_ARGUMENT after sending the ack


@dataclass
class _Pending:
    """A write whose answer has not been seen: reported once, when it answers or when a read shows it landed."""

    landed: Callable[[dict[str, Any]], bool]
    report: Callable[[dict[str, Any], list[str]], Any]  # (the Node as it is now, done) -> awaitable


def _short(text: str, limit: int = 300) -> str:
    """Agent-provided text for a log line: bounded, one line."""
    return printable(text if len(text) <= limit else text[:limit] + "...")


class Engine:
    def __init__(self, cfg: AggregatorConfig, kube: Kube | None, leader: Any, metrics: AggregatorMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.kube = kube
        self.leader = leader
        self.metrics = metrics or AggregatorMetrics()
        self.metrics.nodes = self._node_counts
        if kube is not None and kube.on_retry is None:
            kube.on_retry = lambda reason: self.metrics.bump(self.metrics.kube_retries, reason)
        self.clock, self.wall = clock, wall
        self.nodes: dict[str, st.NodeState] = {}
        self.leader_since = clock()
        self._last: dict[str, Verdict] = {}
        self._queue: asyncio.Queue[str] | None = None
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._since: dict[str, float] = {}  # when the input that changed the verdict arrived
        self._executor = ThreadPoolExecutor(2 * max(4, cfg.workers), thread_name_prefix="kube")
        # Events wait for the rate limit on threads of their own: a backlog of them (a storm, a new leader's
        # thousands of conditions) must not hold every thread while a quarantine waits for one.
        self._event_executor = ThreadPoolExecutor(4, thread_name_prefix="kube-events")
        self._reports: set[asyncio.Task] = set()  # Events being created, off the reconcile path
        self._total_nodes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.applied_hooks: list[Callable[[str, str, str, list[int]], None]] = []
        self.latencies: list[float] = []  # quarantine latencies, for the benchmark
        self.decisions: list[Any] = []  # recent (node, verdict, actions), for tests and the demo
        self._streams: dict[tuple[str, str], StreamHandle] = {}  # (node, spool epoch) -> its one live stream
        self._pending: dict[str, dict[str, _Pending]] = {}  # node -> action -> a write not yet reported
        self._logged: dict[str, Verdict] = {}  # the last decision logged per node (a change is logged once)
        self.remedy = Remedy(self)  # finer than a node: device quarantine (DESIGN §9)
        self.signatures = Signatures(self)  # floods are episodes; a job's application fault is its signature
        self.drain = Drain(self)  # after a quarantine, evict the pods the policy names (PDBs hold)
        self.blast = Blast(self)  # the pods a quarantine affects, named in its Event and the node annotation
        self.validation = Validator(self)  # startup taint, release gate, on demand, periodic (validation.py)
        self.nodecache: Any = None  # nodecache.NodeCache (Replica sets it): reads without a GET per reconcile
        leader.on_started.append(self._became_leader)
        leader.on_stopped.append(self._lost_leadership)

    async def _io(self, fn: Callable[[], Any], urgency: int | None = None) -> Any:
        """Run a blocking Kubernetes call in the executor; `urgency` (ratelimit's classes) orders its requests
        in the client-side rate limit (a quarantine's before a condition's, Events last)."""
        loop = asyncio.get_running_loop()
        kube = self.kube
        if urgency is None or getattr(kube, "urgency", None) is None:
            return await loop.run_in_executor(self._executor, fn)

        def call() -> Any:
            with kube.urgency(urgency):
                return fn()
        return await loop.run_in_executor(self._event_executor if urgency == EVENT else self._executor, call)

    async def _read_node(self, name: str, urgency: int | None) -> dict[str, Any] | None:
        """The Node from the watch cache when it has it, else a GET (not synced yet, or a Node it has not seen)."""
        cache = self.nodecache
        if cache is not None:
            obj = cache.get(name)
            if obj is not None:
                return obj
        return await self._io(lambda: self.kube.get_node(name), urgency)  # type: ignore[union-attr]

    def nodes_changed(self, names: list[str]) -> None:
        """From the node cache's thread: someone else changed what Vigil judges on these Nodes: reconcile them."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._external, list(names))

    def _external(self, names: list[str]) -> None:
        if not self.leader.is_leader():
            return
        for name in names:
            if name in self.nodes:  # a reconcile of a node with nothing to decide ends at its verdict
                self._enqueue(name)

    def _node_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in list(self._last.values()):
            out[v.kind] = out.get(v.kind, 0) + 1
        return out

    # -- leadership ---------------------------------------------------------------------------------------
    def _became_leader(self) -> None:
        self.leader_since = self.clock()
        self.nodes.clear()
        self._last.clear()
        self.validation.reset()
        self.metrics.leader = True
        self.metrics.breaker_open = self.leader.ledger().breaker_open
        self.signatures.restore()  # the previous leader's job signatures (kept on the Lease)
        if self._loop is not None and self.kube is not None:
            self._loop.create_task(self._seed())

    def _lost_leadership(self) -> None:
        self.metrics.leader = False
        self.nodes.clear()
        self._last.clear()
        self._logged.clear()
        self._pending.clear()
        self.drain.stop_all()
        self.validation.reset()
        for handle in list(self._streams.values()):
            handle.end("UNAVAILABLE", "this replica lost the Lease")
        self._streams.clear()

    async def _seed(self) -> None:
        """Nodes that carry Vigil's condition are known from the start: silent ones are found after the grace."""
        cache = self.nodecache
        try:
            if cache is not None and cache.synced.is_set():
                items = cache.items()
            else:
                items = await self._io(lambda: self.kube.list_nodes())  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001
            log.warning("seeding nodes: %s", e)
            return
        self._total_nodes = len(items)
        now = self.clock()
        for obj in items:
            if observe(obj).condition is not None:
                name = obj["metadata"]["name"]
                st.seed(self.nodes.setdefault(name, st.NodeState(name)), now)
        await self.remedy.seed()

    # -- stream input (synchronous, on the loop) ----------------------------------------------------------
    # Each validates what it is given (intake.py) before it changes anything: intake.Invalid refuses the message.
    def _cut(self, what: str) -> None:
        self.metrics.bump(self.metrics.truncated, what)

    def _digest(self, node_name: str, digest: Iterable[Any], where: str) -> list[st.Problem]:
        found, dropped = intake.read_digest(digest, where, self._cut)
        if dropped:
            self.metrics.bump(self.metrics.truncated, "digest", dropped)
            log.warning("node %s: %s digest has more than %d problems; %d non-fatal ones left out",
                        node_name, where, wire.MAX_DIGEST, dropped)
        return found

    def hello(self, node_name: str, boot_id: str, epoch: str, digest: Iterable[Any], digest_seq: int,
              stream: StreamHandle | None = None) -> int:
        """Returns the highest seq of this (node, epoch) already applied. With `stream`: it becomes the one live
        stream of (node, epoch), and an older one is ended (it could otherwise still apply a batch above what this
        stream's Welcome says)."""
        problems = self._digest(node_name, digest, "Hello")
        intake.read_seq("Hello.digest_seq", digest_seq)
        now = self.clock()
        node = self.nodes.get(node_name)
        if node is None:
            node = self.nodes[node_name] = st.NodeState(node_name)
        held = st.fatal_holders(node.problems) if self.cfg.drain.enabled else None
        self.validation.hello(node_name, st.hello(node, boot_id, epoch, problems, digest_seq, now))
        applied = node.applied.get(epoch, 0)
        if stream is not None:
            old = self._streams.get((node_name, epoch))
            if old is not None and old is not stream:
                old.end("ABORTED", "a newer stream of this agent (node, spool epoch) took over")
            self._streams[(node_name, epoch)] = stream
            stream.cursor = intake.Cursor(applied, digest_seq)
        self._touch(node, now)
        if held is not None and held != st.fatal_holders(node.problems):
            self._enqueue(node_name)  # as in heartbeat: new holders of a sick GPU
        return applied

    def close_stream(self, stream: StreamHandle) -> None:
        if self._streams.get((stream.node, stream.epoch)) is stream:
            del self._streams[(stream.node, stream.epoch)]
        self.validation.disconnected(stream)

    def rejections(self, node_name: str, epoch: str) -> list[tuple[int, str]]:
        """The latest events of (node, epoch) refused at or below its applied seq, for the Welcome (one above it is
        still the agent's to send, and is refused again, by name, if it comes)."""
        node = self.nodes.get(node_name)
        if node is None:
            return []
        upto = node.applied.get(epoch, 0)
        return [(seq, why) for seq, why in node.rejections.get(epoch, ()) if seq <= upto]

    def heartbeat(self, node_name: str, epoch: str, digest: Iterable[Any], digest_seq: int,
                  stream: StreamHandle | None = None) -> None:
        problems = self._digest(node_name, digest, "Heartbeat")
        intake.read_seq("Heartbeat.digest_seq", digest_seq, stream.cursor.ceiling() if stream is not None else None)
        if stream is not None:
            stream.cursor.declared = max(stream.cursor.declared, digest_seq)
        node = self.nodes.get(node_name)
        if node is None:
            return
        now = self.clock()
        held = st.fatal_holders(node.problems) if self.cfg.drain.enabled else None
        st.heartbeat(node, epoch, problems, digest_seq, now)
        self._touch(node, now)
        if held is not None and held != st.fatal_holders(node.problems):
            self._enqueue(node_name)  # the pods on a sick GPU named late (drain.py): a device drain may act now

    def batch(self, node_name: str, epoch: str, boot_id: str, events: Any,
              stream: StreamHandle | None = None) -> BatchResult:
        """Apply a batch; the result carries the cumulative ack (the highest applied seq of this epoch) and the
        events refused. Without `stream` (tests, tools) a cursor starts at what the epoch has applied."""
        node = self.nodes.get(node_name)
        if node is None:
            return BatchResult(0)
        now = self.clock()
        m = self.metrics
        m.batches += 1
        if stream is None:
            cursor, aware = intake.Cursor(node.applied.get(epoch, 0)), False
        else:
            cursor, aware = stream.cursor, stream.handles_rejections
        cursor.last = max(cursor.last, node.applied.get(epoch, 0))
        got = intake.read_batch(events, cursor, aware, self._cut)
        boot, _ = wire.bounded("boot_id", boot_id)
        held = st.fatal_holders(node.problems) if self.cfg.drain.enabled else None
        res = st.apply_batch(node, boot, epoch, got.events, now)
        refused = got.rejected + ([got.stop] if got.stop is not None else [])
        for r in refused:
            node.reject(epoch, r.seq, r.reason)
            m.bump(m.rejected, r.label)
        if refused:
            log.warning("node %s: refused %d event(s) of spool epoch %s%s; first: %s", node_name, len(refused),
                        _short(epoch, 40), "" if got.stop is None else " (the stream ends: the agent does not read "
                        "rejections)" if got.stop.label != "batch_size" else " (the stream ends)",
                        _short(refused[0].reason))
        if aware and got.rejected:
            # Acknowledge past the events refused for their content (their seq was in order): the Ack names them,
            # the agent drops them, and they do not come back every session. Never past a seq out of order.
            past = max((r.seq for r in got.rejected if r.label != "seq"), default=0)
            if past > node.applied.get(epoch, 0):
                node.applied[epoch] = past
                cursor.last = max(cursor.last, past)
                res.ack = max(res.ack, past)
        if res.duplicates:
            m.bump(m.events, "duplicate", res.duplicates)
        if res.new and boot == node.boot_id:  # an older boot's events never trigger anything
            fresh = set(res.new)
            new_events = [e for e in got.events if e.seq in fresh]
            self.signatures.observe(node_name, new_events, now)
            if self.validation.wants(node_name):  # a validation's findings and summary (or a new leader's first)
                self.validation.observe(node_name, new_events)
        if res.new:
            m.bump(m.events, "state", len(res.new) - res.info)
            m.bump(m.events, "info", res.info)
            for hook in self.applied_hooks:
                hook(node_name, boot, epoch, res.new)
        if res.changed:
            self._touch(node, now)
        if held is not None and held != st.fatal_holders(node.problems):
            self._enqueue(node_name)  # as in heartbeat: new holders of a sick GPU
        return BatchResult(res.ack, got.rejected, got.stop)

    def _touch(self, node: st.NodeState, now: float) -> None:
        v = judge(node, self.cfg.policy, now, self.leader_since, self.signatures.ignore(node.name, now))
        if v != self._last.get(node.name):
            self._since.setdefault(node.name, now)
            self._enqueue(node.name)

    def _enqueue(self, name: str) -> None:
        if name in self._busy:
            self._again.add(name)
        elif name not in self._queued and self._queue is not None:
            self._queued.add(name)
            self._queue.put_nowait(name)

    # -- the loops ----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        if self.leader.is_leader():
            self._became_leader()
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.cfg.workers)]
        tasks.append(asyncio.create_task(self._ticker(stop)))
        try:
            await stop.wait()
        finally:  # a stop, or this task cancelled (a kill): the workers go with it
            for t in tasks:
                t.cancel()
            if stop.is_set():
                try:
                    await asyncio.wait_for(self.drain_reports(), 2.0)
                except asyncio.TimeoutError:
                    pass
            await asyncio.gather(*tasks, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._event_executor.shutdown(wait=False, cancel_futures=True)

    async def _ticker(self, stop: asyncio.Event) -> None:
        last_resync = self.clock()
        while not stop.is_set():
            await asyncio.sleep(self.cfg.tick_seconds)
            if not self.leader.is_leader():
                continue
            now = self.clock()
            if now - last_resync >= self.cfg.resync_seconds:
                last_resync = now
                self._last.clear()
            self.validation.tick(now)
            # In slices, yielding between them: 10,000 nodes judged at once held the loop (and every stream's
            # batch, a fatal one included) for tens of ms every tick.
            batch = list(self.nodes.values())
            for i in range(0, len(batch), TICK_SLICE):
                if i:
                    await asyncio.sleep(0)
                    now = self.clock()
                for node in batch[i:i + TICK_SLICE]:
                    self._touch(node, now)

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            name = await self._queue.get()
            self._queued.discard(name)
            self._busy.add(name)
            try:
                await self.reconcile(name)
                self._failures.pop(name, None)
            except NotLeader:
                pass
            except Exception as e:  # noqa: BLE001 - retried with backoff, level-triggered
                n = self._failures[name] = self._failures.get(name, 0) + 1
                # no jitter: one process retrying its own reconcile
                delay = backoff_delay(n - 1, self.cfg.retry_seconds, 30.0, jitter="none")
                log.warning("reconcile %s failed (%s); retrying in %.1fs", name, e, delay)
                asyncio.get_running_loop().call_later(delay, self._enqueue, name)
            finally:
                self._busy.discard(name)
                if name in self._again:
                    self._again.discard(name)
                    self._enqueue(name)

    # -- one reconcile ------------------------------------------------------------------------------------
    async def reconcile(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None or not self.leader.is_leader():
            return
        now = self.clock()
        ignore = self.signatures.ignore(name, now)
        verdict = judge(node, self.cfg.policy, now, self.leader_since, ignore)
        if verdict.kind in (HEALTHY, RECOVERING):  # a failed periodic validation quarantines (validation.py (d))
            failed = self.validation.failed_periodic(name, node.boot_id)
            if failed is not None:
                verdict = Verdict(UNHEALTHY, SUMMARY, f"periodic validation {failed.id} failed: "
                                  f"{failed.message}"[:MAX_MESSAGE])
        m = self.metrics
        m.bump(m.decisions, verdict.kind)
        since = self._since.pop(name, None)
        if verdict.kind == NONE:
            self._last[name] = verdict
            return
        self._log_decision(name, verdict)
        if self.kube is None:  # no API (unit tests of the stream): decide only
            self._last[name] = verdict
            self._remember(name, verdict, ["no-kube"])
            return
        obj = await self._read_node(name, QUARANTINE if verdict.kind == UNHEALTHY else None)
        done: list[str] = []
        if obj is not None:
            await self._settle(name, obj, done)
        obs = observe(obj)
        p = plan(verdict, obs)
        # Finer than a node: when every fatal fault is one device's and maps to a DRA device, taint the devices
        # instead (remedy.py); otherwise the node, and its Event says why not the device.
        dplan = None
        if verdict.kind == UNHEALTHY and not p.skipped and obj is not None:
            dplan = await self.remedy.device_plan(name, [f for f in node.fatal_problems() if not ignore(f)])
            if dplan.device:
                p = replace(p, quarantine=False)
        # Validation (validation.py): the startup taint, and the release gate (a release waits for a pass)
        p, devices_ok = await self.validation.reconcile(name, node, verdict, obj, obs, p, done,
                                                        name in self.remedy.known)
        if p.skipped:
            m.maintenance_skips += 1
            done.append(f"skipped:{p.skipped}")
            log.info("node %s: not acted on (%s): annotated vigil.dev/maintenance", name, verdict.kind)
        if self.cfg.dry_run:
            would = []
            for action, wanted, what in (
                    ("quarantine", p.quarantine, f"taint {TAINT_KEY}:{TAINT_EFFECT} and cordon"),
                    ("release", p.release, "remove its taint and cordon"),
                    ("condition", p.condition is not None, f"set VigilHealthy={p.condition and p.condition[0]}")):
                if wanted:
                    m.bump(m.actions, (action, "dry_run"))
                    done.append(f"would-{action}")
                    would.append(what)
            if would:
                log.info("dry-run: node %s is %s, %s; would %s", name, verdict.kind, self._why(verdict),
                         ", ".join(would))
            if p.quarantine and verdict.kind == UNHEALTHY:
                self._spawn(self._would_radius(name))
            if dplan is not None and dplan.device:
                await self.remedy.quarantine(name, obj or {}, node, verdict, dplan, done)
            if verdict.kind == HEALTHY and not p.skipped and devices_ok:
                await self.remedy.release(name, obj, done)
            self._drain(name, node, verdict, obs, dplan, done)
            self._last[name] = verdict
            self._remember(name, verdict, done)
            return
        # Each write is attempted even when another failed: audit detail (the condition's text, Vigil's record)
        # never blocks the taint and cordon, nor the reverse. The first failure is raised for the retry.
        failed: BaseException | None = None
        if p.quarantine and verdict.kind == UNHEALTHY:
            try:
                await self._quarantine(name, node, verdict, obj or {}, done, since)
            except NotLeader:
                raise
            except Exception as e:  # noqa: BLE001 - retried by the worker
                m.bump(m.actions, ("quarantine", "error"))
                log.warning("node %s: taint and cordon failed: %s", name, _short(str(e)))
                failed = e
        for wanted, step, what in (
                (dplan is not None and dplan.device,
                 lambda: self.remedy.quarantine(name, obj or {}, node, verdict, dplan, done), "device quarantine"),
                (verdict.kind == HEALTHY and not p.skipped and devices_ok, lambda: self.remedy.release(name, obj, done),
                 "device release")):
            if not wanted:
                continue
            try:
                await step()
            except NotLeader:
                raise
            except Exception as e:  # noqa: BLE001 - retried by the worker
                m.bump(m.actions, (what.replace(" ", "_"), "error"))
                log.warning("node %s: %s failed: %s", name, what, _short(str(e)))
                failed = failed or e
        if p.release:
            try:
                await self._release(name, verdict, done)
            except NotLeader:
                raise
            except Exception as e:  # noqa: BLE001
                m.bump(m.actions, ("release", "error"))
                log.warning("node %s: release failed: %s", name, _short(str(e)))
                failed = failed or e
        if p.condition is not None:
            try:
                await self._condition(name, node, verdict, obj or {"metadata": {"name": name}}, obs, p.condition, done)
            except NotLeader:
                raise
            except Exception as e:  # noqa: BLE001
                m.bump(m.actions, ("condition", "error"))
                log.warning("node %s: condition VigilHealthy=%s failed: %s", name, p.condition[0], _short(str(e)))
                failed = failed or e
        if failed is not None:
            raise failed
        self._drain(name, node, verdict, obs, dplan, done)
        if since is not None and done:
            m.decision_latency.observe(self.clock() - since)
        self._last[name] = verdict
        self._remember(name, verdict, done)

    def _drain(self, name: str, node: st.NodeState, verdict: Verdict, obs: Any, dplan: Any, done: list[str]) -> None:
        """Opt-in partial drain (drain.py) once the device or the node is quarantined (not when the budget held it)."""
        if verdict.kind != UNHEALTHY or not self.cfg.drain.enabled or obs.maintenance or "held:budget" in done:
            return
        if dplan is not None and dplan.device:
            targets = [(t.driver, t.pool, t.device) for _, ts in dplan.targets for t in ts]
            holders = [h for p, _ in dplan.targets for h in p.holders]  # PodResources, for pods without claims
            self.drain.start(name, f"{node.trigger}/devices", f"{verdict.reason} on a device", targets, holders)
        elif obs.tainted or "quarantine" in done or "would-quarantine" in done:
            from .devices import device_scoped

            ignore = self.signatures.ignore(name, self.clock())
            fatal = [f for f in node.fatal_problems() if not ignore(f)]
            if any(not device_scoped(f.check, f.entity, self.cfg.devices) for f in fatal):
                self.drain.start(name, f"{node.trigger}/node", f"{verdict.reason}, node-wide", None)
            else:  # a device's fault, no DRA device: `device` evicts the pods the agent's PodResources names, if any
                self.drain.start(name, f"{node.trigger}/node", f"{verdict.reason} on a device", [],
                                 [h for f in fatal for h in f.holders])

    @staticmethod
    def _why(verdict: Verdict) -> str:
        """'check X: message' for an unhealthy verdict (its reason is the check), 'reason X: message' otherwise."""
        word = "check" if verdict.kind == UNHEALTHY else "reason"
        return f"{word} {_short(verdict.reason, 100)}: {_short(verdict.message)}"

    @staticmethod
    def _fields(name: str, verdict: Verdict) -> dict[str, str]:
        """The JSON log fields of a decision line (agent/base/logs.py): the node, and the check when it failed."""
        return {"node": name, "check": verdict.reason} if verdict.kind == UNHEALTHY else {"node": name}

    def _log_decision(self, name: str, verdict: Verdict) -> None:
        """One line per new decision (a resync that finds the same verdict logs nothing at INFO)."""
        if self._logged.get(name) == verdict:
            log.debug("node %s: still %s", name, verdict.kind)
            return
        self._logged[name] = verdict
        log.info("node %s: decided %s, %s", name, verdict.kind, self._why(verdict), extra=self._fields(name, verdict))

    def _remember(self, name: str, verdict: Verdict, done: list[str]) -> None:
        self.decisions.append((name, verdict.kind, tuple(done)))
        if len(self.decisions) > 10000:
            del self.decisions[:5000]

    def _check_leader(self) -> None:
        if not self.leader.is_leader():
            raise NotLeader(self.cfg.identity)

    # -- writes that are reported once ----------------------------------------------------------------------
    async def _settle(self, name: str, obj: dict[str, Any], done: list[str]) -> None:
        """Report the writes of an earlier reconcile whose answers were lost but which this read shows landed."""
        pending = self._pending.get(name)
        if not pending:
            return
        for action, p in list(pending.items()):
            if p.landed(obj):
                pending.pop(action, None)
                log.info("node %s: the %s written earlier landed (its answer was lost)", name, action)
                await p.report(obj, done)
        if not pending:
            self._pending.pop(name, None)

    async def _written(self, name: str, action: str, pend: _Pending, written: bool, now_obj: dict[str, Any] | None,
                       done: list[str]) -> None:
        """After a write call answered: report it if it wrote, or if the Node shows it landed anyway (a retried
        request whose first attempt went through: its retry finds nothing to do)."""
        if self._pending.get(name, {}).get(action) is pend:
            self._pending[name].pop(action)
        if written or (now_obj is not None and pend.landed(now_obj)):
            await pend.report(now_obj or {"metadata": {"name": name}}, done)

    def _expect(self, name: str, action: str, pend: _Pending) -> None:
        self._pending.setdefault(name, {})[action] = pend

    async def _quarantine(self, name: str, node: st.NodeState, verdict: Verdict, obj: dict[str, Any],
                          done: list[str], since: float | None) -> None:
        m = self.metrics
        cache = self.nodecache
        total = (len(cache) if cache is not None and cache.synced.is_set() else 0) or self._total_nodes or len(self.nodes)
        wall = self.wall()
        decision = await self.leader.update_ledger(
            lambda ledger: _admit(ledger, name, wall, self.cfg.budget, total))
        if decision not in (ADMIT, ALREADY):
            m.bump(m.actions, ("quarantine", "refused_budget"))
            done.append("held:budget")
            if decision == OPENED:
                m.breaker_open = True
                log.warning("cordon budget exhausted: breaker open; node %s is not cordoned (%s)", name,
                            self._why(verdict))
                await self._breaker_event(obj, name)
            else:
                log.warning("node %s: not cordoned: the cordon budget's breaker is open (%s)", name, self._why(verdict))
            return
        episode = (node.trigger or f"{name}/{node.boot_id}")[:MAX_EPISODE]
        self._check_leader()
        kube = self.kube
        assert kube is not None
        note = [""]

        def landed(o: dict[str, Any]) -> bool:
            seen = observe(o)
            return seen.tainted and (seen.record or {}).get("episode", episode) == episode

        async def report(o: dict[str, Any], out: list[str]) -> None:
            if since is not None:
                lat = self.clock() - since
                m.cordon_latency.observe(lat)
                self.latencies.append(lat)
            m.bump(m.actions, ("quarantine", "ok"))
            out.append("quarantine")
            log.info("node %s: tainted %s:%s and cordoned, %s%s", name, TAINT_KEY, TAINT_EFFECT, self._why(verdict),
                     note[0], extra=self._fields(name, verdict))
            text = (f"Vigil tainted {name} {TAINT_KEY}:{TAINT_EFFECT} and cordoned it: "
                    f"{verdict.message}{self.remedy.notes.get(name, '')}{note[0]}")
            # the pods are read after the write, in the background: the names never delay a quarantine
            # (no annotation where the Node refused Vigil's record: its annotations are full)
            self._spawn(self._node_radius(o, name, episode, verdict.reason, wall, text, annotate=not note[0],
                                          holders=[h for p in node.fatal_problems() for h in p.holders]))

        pend = _Pending(landed, report)
        self._expect(name, "quarantine", pend)
        # The record is audit detail: when the API server refuses the Node with it (its annotations would pass
        # 256 KiB), the taint and cordon go on with less of it rather than not at all.
        for level in (RECORD_FULL, RECORD_MINIMAL, RECORD_NONE):
            def change(n: dict[str, Any], level: str = level) -> dict[str, Any] | None:
                return quarantined(n, verdict.reason, now_iso(wall), episode, record=level)
            try:
                # first with the Node just read (one request saved), then read-modify-write until it sticks
                written, now_obj = await self._io(lambda: kube.update_node(name, change, current=obj or None),
                                                  QUARANTINE)
                break
            except ApiError as e:
                if e.status not in (413, 422) or level == RECORD_NONE:
                    raise
                log.warning("node %s: the API server refused Vigil's %s record (%s); writing the taint and cordon "
                            "with less", name, level, _short(str(e), 200))
                note[0] = (" (Vigil's record of what it did could not be written: its cordon will not be undone "
                           "automatically)" if level == RECORD_MINIMAL else
                           " (Vigil's record was written without its details: the Node's annotations are full)")
        await self._written(name, "quarantine", pend, written, now_obj, done)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _node_radius(self, o: dict[str, Any], name: str, episode: str, reason: str, wall: float,
                           text: str, annotate: bool = True, holders: list[str] | None = None) -> None:
        """The blast radius of a node quarantine (blast.py): its GPU pods and their owners, in the annotation
        first (whoever reads the Event finds it), then in the Event."""
        from .blast import annotation_value

        radius = await self.blast.node(name, holders or ())  # holders: the pods on the sick GPU (PodResources)
        if annotate:
            await self.blast.annotate(name, annotation_value("node", reason, now_iso(wall), [], radius))
        pods = radius.text()
        await self._event(o, "quarantine", episode, "VigilCordoned", f"{text[:1020 - len(pods)]}. {pods}",
                          "Warning")

    async def _would_radius(self, name: str) -> None:
        """Dry-run: the pods the quarantine would affect, in the log only (dry-run writes no Event, no annotation)."""
        radius = await self.blast.node(name)
        log.info("dry-run: node %s: the quarantine would affect: %s", name, radius.text())

    async def _condition(self, name: str, node: st.NodeState, verdict: Verdict, obj: dict[str, Any], obs: Any,
                         want: tuple[str, str, str], done: list[str]) -> None:
        status, reason, message = want
        m = self.metrics
        self._check_leader()
        ev_reason, ev_type = CONDITION_EVENT[status]
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        episode = f"{node.trigger}/{rv}"

        def landed(o: dict[str, Any]) -> bool:
            return observe(o).condition == want

        async def report(o: dict[str, Any], out: list[str]) -> None:
            m.bump(m.actions, ("condition", "ok"))
            out.append(f"condition={status}")
            log.info("node %s: condition VigilHealthy=%s, %s", name, status, self._why(verdict),
                     extra=self._fields(name, verdict))
            await self._event(obj, f"condition-{status}", episode, ev_reason, f"{reason}: {message}", ev_type)

        pend = _Pending(landed, report)
        self._expect(name, "condition", pend)
        await self._io(lambda: self.kube.patch_node_status(  # type: ignore[union-attr]
            name, condition_patch(status, reason, message, now_iso(self.wall()), obs.condition)))
        await self._written(name, "condition", pend, True, None, done)

    async def _release(self, name: str, verdict: Verdict, done: list[str]) -> None:
        m = self.metrics
        self._check_leader()
        before: dict[str, Any] = {}

        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            out = released(n)
            if out is not None:  # the Node as it was before this release (a retry that finds it done keeps it)
                before.clear()
                before.update(n)
                without_annotation(out)  # the quarantine's blast-radius record goes with it (only Vigil's)
            return out

        def landed(o: dict[str, Any]) -> bool:
            seen = observe(o)
            return bool(before) and seen.record is None and not seen.tainted

        async def report(o: dict[str, Any], out: list[str]) -> None:
            m.bump(m.actions, ("release", "ok"))
            out.append("release")
            rec = observe(before).record
            was_cordoned = bool((before.get("spec") or {}).get("unschedulable"))
            if rec is None and was_cordoned:
                kept = " (the node stays cordoned: Vigil has no record of whether it was cordoned before)"
            elif was_cordoned and not rec.get("cordoned"):  # type: ignore[union-attr]
                kept = " (the node stays cordoned: it was cordoned before Vigil acted)"
            else:
                kept = ""
            log.info("node %s: released: removed Vigil's taint%s, %s", name,
                     "" if kept else " and cordon", self._why(verdict))
            rec = rec or {}
            await self._event(o if o.get("metadata", {}).get("uid") else before, "release",
                              f"{rec.get('episode', '')}/{rec.get('since', '')}", "VigilUncordoned",
                              f"Vigil removed its taint and cordon from {name}{kept}", "Normal")

        pend = _Pending(landed, report)
        self._expect(name, "release", pend)
        written, now_obj = await self._io(lambda: self.kube.update_node(name, change))  # type: ignore[union-attr]
        await self._written(name, "release", pend, written, now_obj, done)
        if name in self.leader.ledger().held:
            await self.leader.update_ledger(lambda ledger: (None, unhold(ledger, name)))

    async def _event(self, obj: dict[str, Any], action: str, episode: str, reason: str, message: str,
                     kind: str) -> None:
        """Create the Event in the background: a report, so the worker goes on to the next node at once."""
        body = node_event(obj, self.cfg.event_namespace, action, episode, reason, message, kind,
                          self.cfg.identity, self.wall())
        task = asyncio.get_running_loop().create_task(self._create_event(body, reason))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def drain_reports(self) -> None:
        """Wait for the Events still being created (tests; a clean stop)."""
        while self._reports:
            await asyncio.gather(*list(self._reports), return_exceptions=True)

    async def _create_event(self, body: dict[str, Any], reason: str) -> None:
        try:
            created = await self._io(lambda: self.kube.create_event(self.cfg.event_namespace, body),  # type: ignore[union-attr]
                                     EVENT)
        except Exception as e:  # noqa: BLE001 - an Event is a report, never a reason to redo an action
            self.metrics.bump(self.metrics.actions, ("event", "error"))
            log.warning("event %s for %s: %s", reason, body["involvedObject"]["name"], _short(str(e)))
            return
        self.metrics.bump(self.metrics.actions, ("event", "ok" if created else "exists"))

    async def _breaker_event(self, obj: dict[str, Any], name: str) -> None:
        ledger = self.leader.ledger()
        await self._event(obj or {"metadata": {"name": name}}, "breaker", f"{ledger.opened_at}/{ledger.resets}",
                          "VigilCordonBudgetExhausted",
                          f"Vigil's cordon budget is exhausted; it cordons no more nodes until a person resets the "
                          f"breaker (vigil-aggregator reset-breaker). {name} was not cordoned.", "Warning")


def _admit(ledger: Ledger, name: str, wall: float, budget: BudgetConfig, total: int) -> tuple[str, Ledger | None]:
    decision, new = admit(ledger, name, wall, budget, total)
    return decision, (None if new == ledger else new)


def journal_writer(path: str) -> Callable[[str, str, str, list[int]], None]:
    """--journal FILE: one JSON line per applied batch (node, boot, epoch, seqs), flushed at once: an audit of
    what was applied, and what the delivery tests count."""
    f = open(path, "a", buffering=1)

    def hook(node: str, boot: str, epoch: str, seqs: list[int]) -> None:
        f.write(json.dumps({"node": node, "boot": boot, "epoch": epoch, "seqs": seqs}) + "\n")
    return hook


__all__ = ["AggregatorConfig", "BatchResult", "Engine", "StreamHandle", "journal_writer"]
