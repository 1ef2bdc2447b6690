"""The agent: builds the enabled collectors, runs each on its own interval, and keeps one pre-rendered
exposition that /metrics serves as is."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Iterable

from agent import __version__
from agent.sources import REGISTRY, load
from agent.base.collector import Collector, Context, Output
from agent.base.config import Config
from agent.base.errors import error_text
from agent.base.findings import UNHEALTHY, UNKNOWN, Finding, unknown
from agent.base import tools
from agent.base.metrics import Gauge, MetricSet, Parts, assemble, render, render_parts
from .runner import CollectorRunner, Result
from .supervise import Supervisor

AGENT_INFO = Gauge("vigil_agent_info", "Agent identity.", ("node", "version"))
CHECK_STATUS = Gauge("vigil_check_status", "Health check status: 1 ok, 0 unhealthy, -1 unknown.",
                     ("check", "entity", "severity"))
COLLECTOR_DURATION_SECONDS = Gauge("vigil_collector_duration_seconds", "Duration of the collector's last read.",
                                   ("collector",))
COLLECTOR_SUCCESS = Gauge("vigil_collector_success", "Whether the collector's last read succeeded.", ("collector",))
TOOL_STUCK_PROCESSES = Gauge("vigil_tool_stuck_processes",
                             "Processes of a vendor tool's calls still alive after their deadline and SIGKILL "
                             "(stuck in the driver); while any is left, no new call of that tool starts.",
                             ("tool",))

log = logging.getLogger(__name__)

CHECK_STATUS_VALUE = {"ok": 1, UNHEALTHY: 0, UNKNOWN: -1}


def collector_schemas(names: Iterable[str] | None = None) -> dict[str, type]:
    schemas = {name: load(name).Settings for name in (names or REGISTRY)}
    if names is None:  # the `probes` section (agent validate) lives in the same file as the collectors'
        from agent.probes.settings import ProbeSettings
        schemas["probes"] = ProbeSettings
    return schemas


def build_collectors(config: Config, ctx: Context, only: Iterable[str] | None = None) -> list[Collector]:
    wanted = set(only) if only else None
    out = []
    for name in REGISTRY:
        settings = config.section(name)
        if not settings.enabled or (wanted is not None and name not in wanted):
            continue
        out.append(load(name)(settings, ctx))
    return out


def core_metrics(results: Iterable[Result], node: str, stuck: dict[str, int] | None = None) -> MetricSet:
    """`stuck`: tool -> processes left behind (tools.stuck_counts()); None leaves the family out (replays
    of a snapshot run no tools)."""
    ms = MetricSet()
    ms.add(AGENT_INFO, {"version": __version__, "node": node}, 1)
    if stuck is not None:
        ms.declare(TOOL_STUCK_PROCESSES)
        for tool, n in sorted(stuck.items()):
            ms.add(TOOL_STUCK_PROCESSES, {"tool": tool}, n)
    ms.declare(CHECK_STATUS)
    for r in results:
        _result_core(ms, r)
    return ms


def _result_core(ms: MetricSet, r: Result) -> MetricSet:
    """The agent's own series about one collector's result (success, duration, its checks' status)."""
    ms.add(COLLECTOR_SUCCESS, {"collector": r.collector}, 1 if r.success else 0)
    ms.add(COLLECTOR_DURATION_SECONDS, {"collector": r.collector}, round(r.duration, 6))
    for f in r.output.findings:
        if f.is_event:
            continue
        ms.add(CHECK_STATUS, {"check": f.check, "entity": f.entity, "severity": f.severity},
               CHECK_STATUS_VALUE[f.status])
    return ms


def exposition(results: Iterable[Result], node: str, stuck: dict[str, int] | None = None) -> bytes:
    results = list(results)
    ms = core_metrics(results, node, stuck)
    for r in results:
        ms.merge(r.output.metrics)
    return render(ms)


def renderable(result: Result, component: str, node: str) -> Result:
    """`result` when its metrics render; else the same findings without its metrics, plus an unknown finding
    saying why: a value no exposition can carry costs that collector's series, never the process or the
    other collectors' series."""
    return rendered(result, component, node)[0]


def rendered(result: Result, component: str, node: str) -> tuple[Result, Parts]:
    """renderable's result, and its metrics rendered (per family: assemble() joins them without rendering
    them again)."""
    try:
        return result, render_parts(result.output.metrics)
    except Exception as e:  # noqa: BLE001 - whatever broke rendering, it must not leave this collector
        log.exception("collector %s: its metrics do not render", result.collector)
        finding = unknown(f"{component}.metrics", component, node,
                          f"{result.collector} metrics could not be rendered: {error_text(e)}")
        return Result(result.collector, Output(findings=[*result.output.findings, finding],
                                               absent=result.output.absent), False, result.duration), {}


def run_all_once(runners: list[CollectorRunner]) -> list[Result]:
    """Every collector once, concurrently, each under its own deadline (for `--once` and the first cycle)."""
    results: dict[str, Result] = {}

    def run(r: CollectorRunner) -> None:
        try:
            results[r.name] = r.run_once()
        except Exception as e:  # a runner bug: that collector is unknown, not a KeyError for the whole report
            log.exception("collector %s: runner failed", r.name)
            results[r.name] = Result(r.name, Output(findings=r.collector.failed(e)), False, 0.0)
    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[r.name] for r in runners]


class Agent:
    """The long-running agent loop. `on_cycle` observers get every Result (the stream uses it). Each collector
    loop runs in a thread the supervisor restarts should it die (agent/run/supervise.py); the stream and the
    HTTP server join the same supervisor (cli.py)."""

    def __init__(self, collectors: list[Collector], node: str, clock: Callable[[], float] = time.monotonic,
                 supervisor: Supervisor | None = None) -> None:
        self.node = node
        # Heartbeats and liveness ages use `clock`; the loops' schedule is real time (they sleep on an Event).
        self.clock = clock
        self.runners = [CollectorRunner(c, clock) for c in collectors]
        self._components = {c.name: c.component for c in collectors}
        self.supervisor = supervisor or Supervisor(clock)
        self._latest: dict[str, Result] = {}
        self._parts: dict[str, tuple[Parts, Parts]] = {}  # collector -> (the agent's series about it, its own)
        self._lock = threading.Lock()
        self._exposition = exposition([], node)
        self._stop = threading.Event()
        self._heartbeats: dict[str, float] = {}
        self.observers: list[Callable[[Result], None]] = []

    # -- loop -------------------------------------------------------------------------------------------
    def start(self) -> None:
        for result in run_all_once(self.runners):  # first cycle at once, so /metrics is full from the start
            try:
                self._publish(result)
            except Exception:  # noqa: BLE001 - the loop (supervised) will try again
                log.exception("collector %s: publishing its first result failed", result.collector)
        for runner in self.runners:
            self.supervisor.add(f"loop-{runner.name}", lambda r=runner: self._loop(r), stopped=self._stop.is_set)
        self.supervisor.start()

    def _loop(self, runner: CollectorRunner) -> None:
        next_at = time.monotonic() + runner.interval
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += runner.interval
            if next_at < time.monotonic():  # fell behind (a long read): skip missed ticks, no burst
                next_at = time.monotonic() + runner.interval
            self._publish(runner.run_once())

    def _publish(self, result: Result) -> None:
        # Rendering runs after the runner's wrapper returned: it gets its own, so one collector's bad label
        # or value costs its own series (an unknown finding), not the loop thread or the agent's start.
        # Each result is rendered once, when it comes (its metrics and the agent's series about it); the
        # exposition is then joined from the parts: re-rendering every collector's series at every publish
        # was most of the agent's CPU on a large node (issue 15). Same bytes as exposition().
        result, own = rendered(result, self._components.get(result.collector, "agent"), self.node)
        # What is kept of a result is its findings: its metrics live on as rendered parts (at 64 GPUs, 32 ports
        # and 500 containers the samples kept besides were 1.4 MB, issue 15). Observers get the whole result.
        kept = replace(result, output=replace(result.output, metrics=MetricSet()))
        with self._lock:
            previous = self._latest.get(result.collector)
            previous_parts = self._parts.get(result.collector)
            self._latest[result.collector] = kept
            self._heartbeats[result.collector] = self.clock()
            try:
                self._parts[result.collector] = (render_parts(_result_core(MetricSet(), result)), own)
                head = render_parts(core_metrics([], self.node, tools.stuck_counts()))
                parts = list(self._parts.values())
                body = assemble([head, *(core for core, _ in parts), *(mine for _, mine in parts)])
            except Exception:  # /metrics keeps the last good exposition; the loop dies and is restarted
                if previous is None:
                    del self._latest[result.collector]
                    self._parts.pop(result.collector, None)
                else:
                    self._latest[result.collector] = previous
                    self._parts[result.collector] = previous_parts
                raise
            self._exposition = body
        for obs in self.observers:
            try:
                obs(result)
            except Exception:
                log.exception("observer failed")

    def stop(self) -> None:
        self._stop.set()
        self.supervisor.stop()
        for r in self.runners:
            t = self.supervisor.thread(f"loop-{r.name}")
            if t is not None:
                t.join(timeout=2)
        for r in self.runners:
            r.collector.close()

    # -- views ------------------------------------------------------------------------------------------
    def metrics(self) -> bytes:
        return self._exposition

    def findings(self) -> list[Finding]:
        with self._lock:
            return [f for r in self._latest.values() for f in r.output.findings]

    def alive(self) -> tuple[bool, str]:
        """/healthz: fails only when the agent can no longer recover by itself. A stuck read still comes round
        (the runner abandons it) and a dead loop is restarted (the supervisor), so what fails it is a loop that
        has not come round within a few intervals (stuck outside any deadline), or a dead supervisor."""
        ok, why = self.supervisor.alive()
        if not ok:
            return ok, why
        now = self.clock()
        with self._lock:
            for runner in self.runners:
                last = self._heartbeats.get(runner.name)
                limit = 3 * runner.interval + runner.timeout + 5
                if last is None or now - last > limit:
                    return False, f"collector loop {runner.name} silent for {now - (last or 0):.0f}s"
        return True, "ok"
