"""Runs collectors with hard deadlines and isolates their failures (node_exporter's execute(), in one place).

A read runs in its own daemon thread. If it misses its deadline the thread is abandoned, not killed (a call
stuck in a driver cannot be), and no second read of that collector starts until the stuck one returns: at most
one outstanding call per source. SMI libraries go through ctypes, which releases the GIL, so a stuck call
does not stall the rest of the agent.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from agent.base.collector import Collector, NoData, Observation, Output
from agent.base.errors import error_text
from agent.base.findings import Finding

log = logging.getLogger(__name__)


@dataclass
class Result:
    collector: str
    output: Output
    success: bool
    duration: float


class CollectorRunner:
    def __init__(self, collector: Collector, clock: Callable[[], float] = time.monotonic) -> None:
        self.collector = collector
        self.clock = clock  # durations, rates' elapsed, stuck time; the read's join deadline stays real time
        self.timeout = collector.settings.timeout_seconds
        self.interval = collector.settings.interval_seconds
        self._previous: Observation | None = None
        self._stuck: threading.Thread | None = None
        self._stuck_since = 0.0
        self._last_error: str | None = None

    @property
    def name(self) -> str:
        return self.collector.name

    def run_once(self) -> Result:
        start = self.clock()
        if self._stuck is not None:
            if self._stuck.is_alive():
                return self._unresponsive(start)
            self._stuck = None  # it came back: start afresh
        box: dict[str, object] = {}
        t = threading.Thread(target=self._read, args=(box,), name=f"read-{self.name}", daemon=True)
        t.start()
        t.join(self.timeout)
        if t.is_alive():
            self._stuck, self._stuck_since = t, start
            log.warning("collector %s: read exceeded %.1fs deadline; abandoned", self.name, self.timeout)
            return self._unresponsive(self.clock())
        duration = self.clock() - start
        if "error" in box:
            err = box["error"]
            if isinstance(err, NoData):
                self._previous = None
                return self._result(Output(absent=[str(err) or "nothing to read"]), True, duration)
            self._log_error(err)  # type: ignore[arg-type]
            return self._result(Output(findings=self.collector.failed(err)), False, duration)  # type: ignore[arg-type]
        obs = Observation(box["reading"], self.clock())
        prev = self._previous
        try:
            out = self.collector.evaluate(obs.reading, prev, obs.at - prev.at if prev else None)
        except Exception as e:  # a rule bug must not take the scrape down either
            log.exception("collector %s: evaluate failed", self.name)
            return self._result(Output(findings=self.collector.failed(e)), False, duration)
        self._previous = obs
        self._last_error = None
        return self._result(out, not out.partial, duration)

    def _result(self, output: Output, success: bool, duration: float) -> Result:
        return Result(self.name, output, success, duration)

    def _read(self, box: dict[str, object]) -> None:
        try:
            box["reading"] = self.collector.read()
        except BaseException as e:  # noqa: BLE001 - everything is reported, nothing escapes the thread
            box["error"] = e

    def _unresponsive(self, now: float) -> Result:
        stuck_for = now - self._stuck_since
        findings: list[Finding] = self.collector.unresponsive(stuck_for)
        return self._result(Output(findings=findings), False, stuck_for)

    def _log_error(self, err: BaseException) -> None:
        text = error_text(err)
        if text != self._last_error:  # one line per distinct error, not one per cycle
            log.warning("collector %s failed: %s", self.name, text)
        self._last_error = text
