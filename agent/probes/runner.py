"""Runs one probe safely: finds its tool, starts it under the base tool runner (deadline, process group killed
and reaped, output capped), and turns what it printed into findings, never raising.

What can go wrong, and what a probe's result then says:
- the tool is not installed: `unavailable` (not a failure; --once's "not on this node");
- it hangs past its deadline: killed, and `unknown`: a probe that did not finish has no result, whatever it
  printed before (a half-finished bandwidth table is not a measurement);
- it floods its output past the cap: killed, `unknown`;
- it exits non-zero: its output is still parsed (dcgmi exits non-zero when a test fails and prints the
  report), and a report that is incomplete is `unknown` for what it does not cover;
- its parser meets something it does not understand: the parser says so (each parser never raises); a bug
  that raises anyway is caught here and the probe is `unknown`.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.base import tools
from agent.base.errors import error_text
from agent.base.findings import FATAL, OK, UNHEALTHY, UNKNOWN, Finding, ok, unknown

from .settings import ProbeSettings

COMPONENT = "probe"


@dataclass
class ProbeContext:
    """What a probe is run with: the node, the settings, the level and the devices it may use."""

    node: str
    settings: ProbeSettings
    level: str = "quick"
    gpus: list[int] | None = None  # GPU indices (NVML / PCI order) it may use; None: every GPU
    gpu_names: dict[int, str] = field(default_factory=dict)  # index -> model name, when known (facts)
    gpu_buses: dict[int, str] = field(default_factory=dict)  # index -> PCI address, when known (facts)
    sysfs: str = "/sys"  # for the RDMA ports perftest probes
    test_options: dict[str, Any] = field(default_factory=dict)  # hidden test-only knobs (builtin: corrupt)


@dataclass
class Parsed:
    """A parser's answer: findings for what the output covered, and `problem` when it did not cover what it
    should (no JSON at all, a truncated table): the probe's run is then unknown."""

    findings: list[Finding] = field(default_factory=list)
    problem: str | None = None
    summary: str = ""  # one line for the run's finding when all went well
    unavailable: str = ""  # the tool ran and says it cannot work here (torch missing): not available


@dataclass
class ProbeResult:
    name: str
    status: str  # pass | fail | warn | unknown | unavailable
    findings: list[Finding]
    duration: float | None = None
    command: str = ""
    absent: str = ""  # why unavailable

    def to_json(self) -> dict:
        d = {"probe": self.name, "status": self.status, "duration_seconds":
             round(self.duration, 3) if self.duration is not None else None, "command": self.command}
        if self.absent:
            d["absent"] = self.absent
        return d


class Probe:
    """An adapter: a tool, how to call it, and how to read what it printed."""

    name: ClassVar[str]
    tools: ClassVar[tuple[str, ...]]  # usual binary names, looked up on PATH
    uses_gpus: ClassVar[bool] = True
    uses_rdma: ClassVar[bool] = False
    gpu_subset: ClassVar[bool] = False  # can be told to use only some GPUs
    what: ClassVar[str] = ""  # one line: what it tests and what it costs
    floor_metrics: ClassVar[tuple[str, ...]] = ()  # floors.py metrics it is judged by, per GPU model

    def find(self, ctx: ProbeContext) -> str | None:
        configured = ctx.settings.adapter(self.name).path
        if configured:
            return configured if os.path.isfile(configured) and os.access(configured, os.X_OK) else None
        for name in self.tools:
            found = shutil.which(name)
            if found:
                return found
        return None

    def commands(self, binary: str, ctx: ProbeContext) -> list[tuple[list[str], dict[str, str]]]:
        """The runs to make, (argv, extra environment) each: one for most tools, one per port for perftest."""
        raise NotImplementedError

    def parse(self, done: tools.Completed, ctx: ProbeContext) -> Parsed:
        raise NotImplementedError

    def timeout(self, ctx: ProbeContext) -> float:
        return ctx.settings.adapter(self.name).timeout(ctx.level)

    def run(self, ctx: ProbeContext) -> ProbeResult:
        return run_probe(self, ctx)


def run_check(name: str) -> str:
    return f"probe.{name}.run"


def run_probe(probe: Probe, ctx: ProbeContext) -> ProbeResult:
    started = time.monotonic()
    binary = probe.find(ctx)
    if binary is None:
        path = ctx.settings.adapter(probe.name).path
        where = f"{path} not found (probes.{probe.name}.path)" if path else f"{' or '.join(probe.tools)} not on PATH"
        return ProbeResult(probe.name, "unavailable", [], absent=where)
    try:
        runs = probe.commands(binary, ctx)
    except Unrunnable as e:
        return _not_run(probe, ctx, str(e), started)
    findings: list[Finding] = []
    problems: list[str] = []
    summaries: list[str] = []
    commands = []
    for argv, env in runs:
        command = " ".join(argv)
        commands.append(command)
        try:
            done = tools.run_tool_status(argv, probe.timeout(ctx), ctx.settings.max_output_bytes, env=env)
        except tools.Unavailable as e:
            return ProbeResult(probe.name, "unavailable", [], absent=str(e), command=command)
        except tools.ToolStuck as e:
            problems.append(f"not started: {e}")
            continue
        except tools.ToolHung:
            problems.append(f"{os.path.basename(argv[0])} did not finish in {probe.timeout(ctx):g}s: killed; a probe "
                            f"that did not finish has no result")
            continue
        except tools.ToolOutputTooLarge as e:
            problems.append(str(e))
            continue
        except OSError as e:  # not executable, a bad interpreter line
            problems.append(f"{command}: cannot start: {error_text(e)}")
            continue
        try:
            parsed = probe.parse(done, ctx)
        except Exception as e:  # noqa: BLE001 - parsers never raise; if one does, its probe is unknown
            parsed = Parsed(problem=f"could not read {probe.name} output: {error_text(e)}")
        if parsed.unavailable:
            return ProbeResult(probe.name, "unavailable", [], absent=parsed.unavailable, command=command)
        findings += parsed.findings
        if parsed.problem:
            problems.append(parsed.problem)
        elif parsed.summary:
            summaries.append(parsed.summary)
    duration = time.monotonic() - started
    if problems:
        run = unknown(run_check(probe.name), COMPONENT, ctx.node, "; ".join(problems)[:1000],
                      value=round(duration, 3))
    else:
        run = ok(run_check(probe.name), COMPONENT, ctx.node,
                 f"ran in {duration:.1f}s" + (f": {'; '.join(summaries)}" if summaries else ""),
                 value=round(duration, 3))
    findings.append(run)
    return ProbeResult(probe.name, verdict(findings), findings, duration, "; ".join(commands))


class Unrunnable(Exception):
    """The probe cannot be started on this node as it is (no RDMA port to test): its run is unknown."""


def _not_run(probe: Probe, ctx: ProbeContext, why: str, started: float) -> ProbeResult:
    f = unknown(run_check(probe.name), COMPONENT, ctx.node, why)
    return ProbeResult(probe.name, "unknown", [f], time.monotonic() - started)


def refused(name: str, node: str, why: str) -> ProbeResult:
    """A probe the safety rules did not let run: unknown, saying why (never a pass)."""
    return ProbeResult(name, "unknown", [unknown(run_check(name), COMPONENT, node, f"not run: {why}")])


def verdict(findings: list[Finding]) -> str:
    if any(f.status == UNHEALTHY and f.severity == FATAL for f in findings):
        return "fail"
    if any(f.status == UNKNOWN for f in findings):
        return "unknown"
    if any(f.status == UNHEALTHY for f in findings):
        return "warn"
    return "pass" if any(f.status == OK for f in findings) else "unknown"


# -- one probe at a time per node ----------------------------------------------------------------------------
class Busy(Exception):
    """Another validation holds the node's probe lock."""


class NodeLock:
    """An exclusive flock on <state_dir>/probe.lock, held for a whole validation: two `agent validate`
    processes (or the agent and an operator) never load the GPUs at once. The kernel drops the lock when the
    holder dies, so a killed validation never leaves the node locked."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "probe.lock")
        self.fd: int | None = None

    def __enter__(self) -> "NodeLock":
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise Busy(f"cannot open the probe lock {self.path}: {error_text(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_small(fd)
            os.close(fd)
            raise Busy(f"another validation is running on this node ({self.path} is locked"
                       + (f" by pid {holder}" if holder else "") + ")") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _read_small(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
