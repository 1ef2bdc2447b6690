"""The aggregator's loop: stream input -> node state -> verdicts -> reconciles -> thin Kubernetes writes.

Stream handlers call hello/batch/heartbeat synchronously on the event loop (cheap, no I/O); a node whose
verdict changed is queued. Workers reconcile one node at a time each (never the same node twice at once):
read the Node, plan (pure), then write through the budget. A ticker re-judges every node each second
(healthy_delay and silence are functions of time). Reconciles are level-triggered: a retry, a resync or a
new leader computes the writes from what the Node shows now, so an action is never applied twice.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from agent import wire
from agent.base.backoff import delay as backoff_delay
from . import intake
from . import state as st
from .intake import printable
from .kube import Kube, node_event, now_iso
from .lease import NotLeader
from .metrics import AggregatorMetrics
from .policy import (ADMIT, ALREADY, NONE, OPENED, UNHEALTHY, BudgetConfig, Ledger, PolicyConfig, Verdict,
                     admit, condition_patch, judge, observe, plan, quarantined, released, unhold)

log = logging.getLogger(__name__)

CONDITION_EVENT = {"False": ("VigilUnhealthy", "Warning"), "True": ("VigilHealthy", "Normal"),
                   "Unknown": ("VigilAgentSilent", "Warning")}


@dataclass
class AggregatorConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
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
    name and the details, and the server, which waits on it with every read, ends the call."""

    def __init__(self, node: str, epoch: str, handles_rejections: bool) -> None:
        self.node, self.epoch = node, epoch
        self.handles_rejections = handles_rejections
        self.cursor = intake.Cursor(0)
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()

    def end(self, code: str, details: str) -> None:
        if not self.ended.done():
            self.ended.set_result((code, details))


@dataclass
class BatchResult:
    ack: int  # cumulative: every event of the epoch at or below it was applied (bar those named in `rejected`)
    rejected: list[intake.Rejection] = field(default_factory=list)  # named to an agent that reads rejections
    stop: intake.Rejection | None = None  # set: end the stream INVALID_ARGUMENT after sending the ack


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
        self._reports: set[asyncio.Task] = set()  # Events being created, off the reconcile path
        self._total_nodes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.applied_hooks: list[Callable[[str, str, str, list[int]], None]] = []
        self.latencies: list[float] = []  # quarantine latencies, for the benchmark
        self.decisions: list[Any] = []  # recent (node, verdict, actions), for tests and the demo
        self._streams: dict[tuple[str, str], StreamHandle] = {}  # (node, spool epoch) -> its one live stream
        leader.on_started.append(self._became_leader)
        leader.on_stopped.append(self._lost_leadership)

    async def _io(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn)

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
        self.metrics.leader = True
        self.metrics.breaker_open = self.leader.ledger().breaker_open
        if self._loop is not None and self.kube is not None:
            self._loop.create_task(self._seed())

    def _lost_leadership(self) -> None:
        self.metrics.leader = False
        self.nodes.clear()
        self._last.clear()
        for handle in list(self._streams.values()):
            handle.end("UNAVAILABLE", "this replica lost the Lease")
        self._streams.clear()

    async def _seed(self) -> None:
        """Nodes that carry Vigil's condition are known from the start: silent ones are found after the grace."""
        try:
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
        st.hello(node, boot_id, epoch, problems, digest_seq, now)
        applied = node.applied.get(epoch, 0)
        if stream is not None:
            old = self._streams.get((node_name, epoch))
            if old is not None and old is not stream:
                old.end("ABORTED", "a newer stream of this agent (node, spool epoch) took over")
            self._streams[(node_name, epoch)] = stream
            stream.cursor = intake.Cursor(applied, digest_seq)
        self._touch(node, now)
        return applied

    def close_stream(self, stream: StreamHandle) -> None:
        if self._streams.get((stream.node, stream.epoch)) is stream:
            del self._streams[(stream.node, stream.epoch)]

    def rejections(self, node_name: str, epoch: str) -> list[tuple[int, str]]:
        """The latest events of (node, epoch) refused, for the Welcome."""
        node = self.nodes.get(node_name)
        return list(node.rejections.get(epoch, ())) if node is not None else []

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
        st.heartbeat(node, epoch, problems, digest_seq, now)
        self._touch(node, now)

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
        if res.duplicates:
            m.bump(m.events, "duplicate", res.duplicates)
        if res.new:
            m.bump(m.events, "state", len(res.new) - res.info)
            m.bump(m.events, "info", res.info)
            for hook in self.applied_hooks:
                hook(node_name, boot, epoch, res.new)
        if res.changed:
            self._touch(node, now)
        return BatchResult(res.ack, got.rejected, got.stop)

    def _touch(self, node: st.NodeState, now: float) -> None:
        v = judge(node, self.cfg.policy, now, self.leader_since)
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
            for node in list(self.nodes.values()):
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
        verdict = judge(node, self.cfg.policy, now, self.leader_since)
        m = self.metrics
        m.bump(m.decisions, verdict.kind)
        since = self._since.pop(name, None)
        if verdict.kind == NONE:
            self._last[name] = verdict
            return
        if self.kube is None:  # no API (unit tests of the stream): decide only
            self._last[name] = verdict
            self._remember(name, verdict, ["no-kube"])
            return
        obj = await self._io(lambda: self.kube.get_node(name))  # type: ignore[union-attr]
        obs = observe(obj)
        p = plan(verdict, obs)
        done: list[str] = []
        if p.skipped:
            m.maintenance_skips += 1
            done.append(f"skipped:{p.skipped}")
        if self.cfg.dry_run:
            for action, wanted in (("quarantine", p.quarantine), ("release", p.release),
                                   ("condition", p.condition is not None)):
                if wanted:
                    m.bump(m.actions, (action, "dry_run"))
                    done.append(f"would-{action}")
            if done:
                log.info("dry-run: node %s is %s: would %s", name, verdict.kind, ", ".join(done))
            self._last[name] = verdict
            self._remember(name, verdict, done)
            return
        if p.quarantine and verdict.kind == UNHEALTHY:
            await self._quarantine(name, node, verdict, obj or {}, done, since)
        if p.release:
            await self._release(name, done)
        if p.condition is not None:
            status, reason, message = p.condition
            self._check_leader()
            await self._io(lambda: self.kube.patch_node_status(  # type: ignore[union-attr]
                name, condition_patch(status, reason, message, now_iso(self.wall()), obs.condition)))
            m.bump(m.actions, ("condition", "ok"))
            done.append(f"condition={status}")
            ev_reason, ev_type = CONDITION_EVENT[status]
            rv = ((obj or {}).get("metadata") or {}).get("resourceVersion", "")
            await self._event(obj or {"metadata": {"name": name}}, f"condition-{status}", f"{node.trigger}/{rv}",
                              ev_reason, f"{reason}: {message}", ev_type)
        if since is not None and done:
            m.decision_latency.observe(self.clock() - since)
        self._last[name] = verdict
        self._remember(name, verdict, done)

    def _remember(self, name: str, verdict: Verdict, done: list[str]) -> None:
        self.decisions.append((name, verdict.kind, tuple(done)))
        if len(self.decisions) > 10000:
            del self.decisions[:5000]

    def _check_leader(self) -> None:
        if not self.leader.is_leader():
            raise NotLeader(self.cfg.identity)

    async def _quarantine(self, name: str, node: st.NodeState, verdict: Verdict, obj: dict[str, Any],
                          done: list[str], since: float | None) -> None:
        m = self.metrics
        total = self._total_nodes or len(self.nodes)
        wall = self.wall()
        decision = await self.leader.update_ledger(
            lambda ledger: _admit(ledger, name, wall, self.cfg.budget, total))
        if decision not in (ADMIT, ALREADY):
            m.bump(m.actions, ("quarantine", "refused_budget"))
            done.append("held:budget")
            if decision == OPENED:
                m.breaker_open = True
                log.warning("cordon budget exhausted: breaker open; node %s is not cordoned", name)
                await self._breaker_event(obj, name)
            return
        episode = node.trigger or f"{name}/{node.boot_id}"
        self._check_leader()
        kube = self.kube
        assert kube is not None

        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            return quarantined(n, verdict.reason, now_iso(wall), episode)

        # first with the Node just read (one request saved), then read-modify-write until it sticks
        written, now_obj = await self._io(lambda: kube.update_node(name, change, current=obj or None))
        if written and since is not None:
            lat = self.clock() - since
            m.cordon_latency.observe(lat)
            self.latencies.append(lat)
        if written:
            m.bump(m.actions, ("quarantine", "ok"))
            done.append("quarantine")
            await self._event(now_obj or obj, "quarantine", episode, "VigilCordoned",
                              f"Vigil tainted {name} vigil.dev/unhealthy:NoSchedule and cordoned it: "
                              f"{verdict.message}", "Warning")

    async def _release(self, name: str, done: list[str]) -> None:
        m = self.metrics
        self._check_leader()
        before: dict[str, Any] = {}

        def change(n: dict[str, Any]) -> dict[str, Any] | None:
            before.clear()
            before.update(n)
            return released(n)
        written, now_obj = await self._io(lambda: self.kube.update_node(name, change))  # type: ignore[union-attr]
        if written:
            m.bump(m.actions, ("release", "ok"))
            done.append("release")
            rec = observe(before).record or {}
            kept = "" if rec.get("cordoned") or not (before.get("spec") or {}).get("unschedulable") else \
                " (the node stays cordoned: it was cordoned before Vigil acted)"
            await self._event(now_obj or before, "release", f"{rec.get('episode', '')}/{rec.get('since', '')}",
                              "VigilUncordoned", f"Vigil removed its taint and cordon from {name}{kept}", "Normal")
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
            created = await self._io(lambda: self.kube.create_event(self.cfg.event_namespace, body))  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - an Event is a report, never a reason to redo an action
            log.warning("event %s for %s: %s", reason, body["involvedObject"]["name"], e)
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
