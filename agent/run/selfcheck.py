"""The agent's own check (DESIGN §0): its supervised threads and its stream, as findings and metrics.

A collector of the serving agent (not of `--once`, where nothing lives long): it reads the supervisor's view of
every thread (collector loops, stream, http) and the stream client's own findings (agent.spool, agent.stream).
All are warnings: the node is not sick because the agent's disk or thread is, but someone should look, and
the aggregator hears of it (the findings travel on the stream like any other). Checks:
  agent.thread  one per supervised thread (entity: its name): unhealthy while it is down, and for RECENT
                seconds after a restart; ok otherwise
  agent.spool   the spool file is in use / held by another agent / unusable (events kept in memory)
  agent.stream  the aggregator refuses the stream (a status retrying will not cure)
  agent.amd_health  the AMD device plugin's GPU health socket is not served (amd_device_plugin.enabled)
"""
from __future__ import annotations

from typing import Any, Iterable

from agent.base.collector import Collector, Context, Output
from agent.base.config import CollectorSettings
from agent.base.findings import WARNING, bad, ok
from agent.base.metrics import Counter, Gauge, MetricSet

from .supervise import Supervisor

THREAD_RESTARTS = Counter("vigil_agent_thread_restarts_total", "Times a supervised agent thread (collector loop, "
                          "stream, http) ended unasked and was restarted.", ("thread",))
THREAD_UP = Gauge("vigil_agent_thread_up", "1 while the supervised agent thread runs.", ("thread",))

RECENT = 300.0  # seconds a restart stays reported


class SelfCheck(Collector):
    name = "agent"
    component = "agent"

    def __init__(self, ctx: Context, supervisor: Supervisor, sources: Iterable[Any] = (),
                 settings: CollectorSettings | None = None) -> None:
        super().__init__(settings or CollectorSettings(interval_seconds=5.0, timeout_seconds=2.0), ctx)
        self.supervisor = supervisor
        self.sources = list(sources)  # objects with findings() (the stream client)

    def read(self) -> Any:
        return self.supervisor.status(), [f for s in self.sources for f in s.findings()], self.supervisor.clock()

    def evaluate(self, reading: Any, previous: Any, elapsed: float | None) -> Output:
        threads, findings, now = reading
        ms = MetricSet()
        ms.declare(THREAD_RESTARTS)
        out = list(findings)
        for t in threads:
            ms.add(THREAD_RESTARTS, {"thread": t.name}, t.restarts)
            ms.add(THREAD_UP, {"thread": t.name}, 1 if t.running else 0)
            if not t.running and t.restart_at is not None:
                out.append(bad("agent.thread", "agent", t.name, f"thread {t.name} ended ({t.last_exit}); restarting "
                               f"in {max(0.0, t.restart_at - now):.0f}s (restart {t.restarts})", WARNING,
                               value=t.restarts))
            elif not t.running:
                out.append(bad("agent.thread", "agent", t.name, f"thread {t.name} is not running", WARNING,
                               value=t.restarts))
            elif t.restarts and now - t.since < RECENT:
                out.append(bad("agent.thread", "agent", t.name, f"thread {t.name} restarted {t.restarts} times, last "
                               f"{now - t.since:.0f}s ago after: {t.last_exit}", WARNING, value=t.restarts))
            else:
                more = f"; restarted {t.restarts} times, last after: {t.last_exit}" if t.restarts else ""
                out.append(ok("agent.thread", "agent", t.name, f"thread {t.name} running{more}", WARNING,
                              value=t.restarts))
        return Output(ms, out)
