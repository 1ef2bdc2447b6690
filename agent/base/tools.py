"""Runs a vendor tool (amd-smi, nvidia-smi, and later the diagnostics) as a child process under a deadline.

What a tool may do to us, and what this module does about it:
- hang (stuck in the driver, D-state): past the deadline its process group, its session and every process
  that carries this run's marker in its environment are SIGKILLed. A process that does not die (a D-state one
  cannot until the driver lets go) is *left behind*: it is kept here, reaped as soon as it dies, counted
  (`stuck_counts`, the metric vigil_tool_stuck_processes), and no second call of that tool starts while one is
  left (ToolStuck): DESIGN §2, at most one outstanding call per source.
- escape its process group (setsid): the environment marker still finds it, so it is killed with the rest.
- flood its output: stdout is read as it comes, up to a cap; past the cap the tool is killed and the call
  fails (ToolOutputTooLarge), so a runaway tool costs at most the cap in memory, not what it prints.
- print bytes that are not UTF-8: the output is read as bytes and decoded with replacement characters, and a
  failed run is reported by its exit status and the last line of its own stderr (ToolFailed).
A missing binary is Unavailable (the tool is simply not installed), never a hardware fault.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field


class Unavailable(Exception):
    """The library or tool cannot run on this node (missing, driver not loaded). Not a fault of the hardware."""


class ToolError(RuntimeError):
    """The tool ran and failed: `command` is what was run, as a person would type it."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(message)
        self.command = command


class ToolFailed(ToolError):
    """Non-zero exit. The message is `<command> exited N: <last line of its stderr>`."""

    def __init__(self, command: str, returncode: int, last_line: str) -> None:
        super().__init__(command, f"{command} exited {returncode}" + (f": {last_line}" if last_line else ""))
        self.returncode = returncode
        self.last_line = last_line


class ToolOutputTooLarge(ToolError):
    """The tool printed more than the cap on stdout; it was killed and its output dropped."""

    def __init__(self, command: str, cap: int) -> None:
        super().__init__(command, f"{command} printed more than {_size(cap)} on stdout (the cap): killed, "
                                  f"output dropped")
        self.cap = cap


class ToolHung(TimeoutError):
    """The tool did not finish by its deadline (a stuck SMI call). `left_behind` lists its processes that
    survived SIGKILL. A TimeoutError, so callers that stop on a hang stop on this too."""

    def __init__(self, command: str, message: str, left_behind: list["LeftBehind"] | None = None) -> None:
        super().__init__(message)
        self.command = command
        self.left_behind = left_behind or []


class ToolStuck(ToolHung):
    """Not started: processes of an earlier call of the same tool are still alive after SIGKILL."""


DEFAULT_MAX_STDOUT = 16 * 1024 * 1024  # an 8x MI300X `amd-smi metric --json` is 257 KB; CPX partitions ~2 MB
STDERR_TAIL = 64 * 1024  # stderr is kept only as a tail: its last line is what a failure reports
KILL_GRACE_SECONDS = 1.0  # after SIGKILL, how long to wait for the processes to go before leaving them behind
MARKER = "VIGIL_TOOL_RUN"  # in each run's environment: how its escaped descendants are found again
_CHUNK = 65536
_POLL_SECONDS = 0.1  # how often the read loop checks whether the child has exited
_DRAIN_SECONDS = 0.2  # after the child exits, how long to read what is left before giving up on a held pipe


@dataclass(frozen=True)
class LeftBehind:
    """A process of an abandoned tool run that is still there: alive after SIGKILL, or dead but not reaped."""

    tool: str
    command: str
    pid: int
    state: str  # the kernel's letter: D (uninterruptible: stuck in a driver), Z (zombie), S, R ...
    seconds: float  # since the run started
    escaped: bool  # left the tool's process group or session (setsid) and was found by its environment

    def to_json(self) -> dict:
        return {"tool": self.tool, "command": self.command, "pid": self.pid, "state": self.state,
                "seconds": round(self.seconds, 1), "escaped": self.escaped}

    def describe(self) -> str:
        how = "escaped its process group, " if self.escaped else ""
        return f"{self.command}: pid {self.pid} ({how}state {self.state}, {self.seconds:.0f}s since start)"


@dataclass
class _Run:
    tool: str
    command: str
    proc: subprocess.Popen
    marker: bytes
    started: float
    others: dict[int, str] = field(default_factory=dict)  # pid -> starttime: processes besides proc

    @property
    def sid(self) -> int:
        return self.proc.pid  # start_new_session: the child leads its own session and process group


_lock = threading.Lock()
_running: dict[int, _Run] = {}  # in flight, by child pid: --once's shutdown() kills these too
_abandoned: dict[str, list[_Run]] = {}  # tool -> runs killed at their deadline that left processes behind
_tools_seen: set[str] = set()
_closed = False  # shutdown() ran: the agent is exiting, and an abandoned read thread must not start more


def tool_name(argv: list[str]) -> str:
    return os.path.basename(argv[0])


@dataclass(frozen=True)
class Completed:
    """A tool run that finished by itself: its exit status, stdout (decoded, undecodable bytes replaced) and
    the tail of its stderr. A diagnostic exits non-zero when a test fails and still prints its report."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        return last_line(self.stderr.encode()) or last_line(self.stdout.encode())


def run_tool(argv: list[str], timeout: float, max_output: int = DEFAULT_MAX_STDOUT) -> str:
    """Run a vendor CLI under a deadline and return its stdout (decoded, undecodable bytes replaced).

    Raises Unavailable (not installed), ToolStuck (an earlier call of this tool is still stuck: not
    started), ToolHung (deadline passed: killed), ToolOutputTooLarge (stdout over `max_output` bytes: killed)
    or ToolFailed (non-zero exit)."""
    done = run_tool_status(argv, timeout, max_output)
    if done.returncode != 0:
        raise ToolFailed(done.command, done.returncode, done.last_line())
    return done.stdout


def run_tool_status(argv: list[str], timeout: float, max_output: int = DEFAULT_MAX_STDOUT,
                    env: dict[str, str] | None = None) -> Completed:
    """run_tool, but a non-zero exit is returned (with the output) rather than raised: for tools whose exit
    status is part of their report (dcgmi diag, rvs). `env` is added to this process's environment. Raises
    what run_tool raises but ToolFailed."""
    tool, command = tool_name(argv), " ".join(argv)
    with _lock:
        _tools_seen.add(tool)
        left = _settle(tool)
        if _closed:
            raise ToolHung(command, f"{command} not run: the agent is exiting")
    if left:
        raise ToolStuck(command, f"{command} not started: {len(left)} process(es) of an earlier {tool} call "
                                 f"still stuck after SIGKILL ({left[0].describe()})", left)
    marker = uuid.uuid4().hex
    env = dict(os.environ, **(env or {}), **{MARKER: marker})
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=env)
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} not found") from None
    run = _Run(tool, command, proc, f"{MARKER}={marker}".encode(), time.monotonic())
    with _lock:
        _running[proc.pid] = run
        closed = _closed
    if closed:  # shutdown() ran meanwhile and did not see this run: end it here
        _give_up(run)
        with _lock:
            _running.pop(proc.pid, None)
        raise ToolHung(command, f"{command} not run: the agent is exiting")
    try:
        how, out, err = _read(proc, run.started + timeout, max_output)
        if how == "overflow":
            _give_up(run)
            raise ToolOutputTooLarge(command, max_output)
        if how == "timeout":
            left = _give_up(run)
            gone = "; left behind: " + ", ".join(f"pid {p.pid} ({p.state})" for p in left) if left else \
                " (killed)"
            raise ToolHung(command, f"{command} did not finish in {timeout:g}s{gone}", left)
        if how == "held":
            _give_up(run)  # its output is complete; the helper that kept the pipe is killed (or left behind)
    finally:
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()  # a writer still holding the other end (an escaped helper) gets EPIPE, not us
        with _lock:
            _running.pop(proc.pid, None)
    return Completed(command, proc.returncode, out.decode("utf-8", errors="replace"),
                     bytes(err[-STDERR_TAIL:]).decode("utf-8", errors="replace"))


def last_line(data: bytes | bytearray) -> str:
    """The last non-blank line, decoded with replacement characters and cut to a message's length."""
    for line in reversed(bytes(data[-STDERR_TAIL:]).decode("utf-8", errors="replace").splitlines()):
        if line.strip():
            return " ".join(line.split())[:300]
    return ""


def _read(proc: subprocess.Popen, deadline: float, max_output: int) -> tuple[str, bytearray, bytearray]:
    """Read stdout and stderr as they come. Returns (how, stdout, stderr), `how` one of: "exited" (the child
    exited and its pipes closed), "held" (the child exited but something it started still holds a pipe open),
    "timeout" (the deadline passed first) or "overflow" (stdout exceeded `max_output`)."""
    out, err = bytearray(), bytearray()
    exited_at = None
    with selectors.DefaultSelector() as sel:
        for pipe in (proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return "timeout", out, err
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            elif exited_at is not None and now - exited_at > _DRAIN_SECONDS:
                return "held", out, err  # an escaped helper keeps the pipe: do not wait on it
            for key, _ in sel.select(min(deadline - now, _POLL_SECONDS)):
                try:
                    chunk = os.read(key.fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    if len(out) + len(chunk) > max_output:
                        return "overflow", out, err
                    out += chunk
                else:
                    err += chunk
                    if len(err) > 2 * STDERR_TAIL:
                        del err[:-STDERR_TAIL]
    try:  # both pipes closed: the child may still be running (it closed them and went on)
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return "timeout", out, err
    return "exited", out, err


def _give_up(run: _Run) -> list[LeftBehind]:
    """Kill the run (group, session, marked escapees), wait a little for it to go, and keep what stays."""
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    with _lock:
        left = _kill_and_reap(run)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        with _lock:
            left = _kill_and_reap(run)
    if left:
        with _lock:
            _abandoned.setdefault(run.tool, []).append(run)
    return left


def _settle(tool: str | None = None) -> list[LeftBehind]:
    """Reap what has died among the abandoned runs (of one tool, or all), kill again what has not, and return
    what is still there. Called with _lock held."""
    left: list[LeftBehind] = []
    for name in [tool] if tool is not None else list(_abandoned):
        runs = []
        for run in _abandoned.get(name, []):
            still = _kill_and_reap(run)
            if still:
                runs.append(run)
                left += still
        if runs:
            _abandoned[name] = runs
        else:
            _abandoned.pop(name, None)
    return left


def _kill_and_reap(run: _Run) -> list[LeftBehind]:
    """SIGKILL every process of the run that is still alive, reap the ones that are ours and dead, and return
    the rest. A zombie whose parent is not us is dead for our purposes (its parent reaps it)."""
    if run.proc.returncode is None:  # once the child is reaped its number may be reused: no killpg then
        try:
            os.killpg(run.sid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    now = time.monotonic()
    left = []
    if run.proc.poll() is None:  # poll() reaps our direct child once it has died
        left.append(LeftBehind(run.tool, run.command, run.proc.pid, _stat(run.proc.pid)[0] or "?",
                               now - run.started, False))
    found = _members(run, by_session=run.proc.returncode is None)
    run.others = {pid: start for pid, (start, _, _, _) in found.items()}
    me = os.getpid()
    for pid, (start, state, ppid, sid) in found.items():
        if state == "Z":
            if ppid == me:  # an escapee reparented to us (we are PID 1 or a subreaper): ours to reap
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        left.append(LeftBehind(run.tool, run.command, pid, state, now - run.started, sid != run.sid))
    return left


def _members(run: _Run, by_session: bool) -> dict[int, tuple[str, str, int, int]]:
    """Processes besides the direct child that belong to the run: in its session or process group (only
    while the child is unreaped, so its number cannot have been reused), seen before, or carrying its marker
    in their environment (an escapee that called setsid). pid -> (starttime, state, ppid, session); a pid seen
    before with another start time is a new process that reused the number, not ours."""
    out = {}
    me, child = os.getpid(), run.proc.pid
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        if pid in (me, child):
            continue
        state, ppid, pgrp, sid, start = _stat(pid)
        if state is None or (pid in run.others and run.others[pid] != start):
            continue
        in_session = by_session and run.sid in (sid, pgrp)
        if not in_session and pid not in run.others and not _marked(pid, run.marker):
            continue
        out[pid] = (start, state, ppid, sid)
    return out


def _stat(pid: int) -> tuple:
    """(state, ppid, pgrp, session, starttime) from /proc/PID/stat; Nones when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), fields[19].decode()
    except (OSError, IndexError, ValueError):
        return None, None, None, None, None


def _marked(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def left_behind() -> list[LeftBehind]:
    """Every process still left behind by an abandoned run, after reaping what has died since."""
    with _lock:
        return _settle()


def stuck_counts() -> dict[str, int]:
    """Processes left behind per tool, 0 for every tool run so far: the vigil_tool_stuck_processes series."""
    counts = {tool: 0 for tool in _tools_seen}
    for p in left_behind():
        counts[p.tool] = counts.get(p.tool, 0) + 1
    return counts


def shutdown(grace: float = KILL_GRACE_SECONDS, refuse_new: bool = True) -> list[LeftBehind]:
    """Before the agent exits: kill every run still in flight (a read thread abandoned at its collector's
    deadline would otherwise go on to its next command) or left behind, wait up to `grace` seconds for them
    to go, and return what could not be ended (`agent --once` prints it). From then on no tool starts, unless
    `refuse_new` is False (tests that go on running tools)."""
    global _closed
    with _lock:
        _closed = refuse_new
        for run in list(_running.values()):
            if run not in _abandoned.get(run.tool, []):
                _abandoned.setdefault(run.tool, []).append(run)
        left = _settle()
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = left_behind()
    return left


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
