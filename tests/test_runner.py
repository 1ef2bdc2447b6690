"""The collector framework: deadlines, failure isolation, /metrics and /healthz while a source hangs.

A hanging fake GPU backend stands in for an SMI call stuck in the driver (no GPU here)."""
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from agent.base.collector import Collector, Context, NoData, Output
from agent.sources.gpu.collector import GpuCollector, GpuSettings, _Chain
from agent.sources.gpu.model import GpuInventory, GpuReading
from agent.base.config import CollectorSettings, Expectations
from agent.run.loop import Agent, exposition
from agent.base.http import MetricsServer
from agent.base.roots import Roots
from agent.run.runner import CollectorRunner


def ctx(expect_gpus=None):
    return Context(roots=Roots(Path("/nonexistent/sys"), Path("/nonexistent/proc")), node="n1",
                   expect=Expectations(gpus=expect_gpus))


class HangingBackend:
    """Blocks in read() until released, like amdsmi_get_gpu_metrics_info stuck in D-state."""

    name, vendor = "amdsmi", "amd"

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def read(self):
        self.calls += 1
        self.release.wait()
        return GpuInventory("amdsmi", "amd", [GpuReading(index=0, vendor="amd", uuid="u0")])

    def close(self):
        pass


def test_hung_smi_call_is_abandoned_at_the_deadline_and_reported():
    backend = HangingBackend()
    settings = GpuSettings(timeout_seconds=0.3)
    runner = CollectorRunner(GpuCollector(settings, ctx(), chains=[_Chain("amd", [lambda: backend])]))
    t0 = time.monotonic()
    result = runner.run_once()
    assert time.monotonic() - t0 < 1.0
    assert not result.success
    [f] = result.output.findings
    assert (f.check, f.status, f.severity) == ("gpu.smi_unresponsive", "unhealthy", "fatal")

    # While the call is stuck no second call starts: at most one outstanding per source.
    again = runner.run_once()
    assert backend.calls == 1
    assert again.output.findings[0].check == "gpu.smi_unresponsive"

    backend.release.set()  # the driver comes back
    deadline = time.monotonic() + 2
    while runner._stuck is not None and runner._stuck.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    ok = runner.run_once()
    assert ok.success and backend.calls == 2
    assert not any(f.check == "gpu.smi_unresponsive" for f in ok.output.findings)


class Boom(Collector):
    name, component = "boom", "test"
    Settings = CollectorSettings

    def read(self):
        raise OSError(5, "Input/output error")


class Absent(Collector):
    name, component = "absent", "test"
    Settings = CollectorSettings

    def read(self):
        raise NoData("no such hardware")


def test_a_failing_collector_is_isolated_and_absent_hardware_is_not_a_failure():
    boom = CollectorRunner(Boom(CollectorSettings(), ctx())).run_once()
    absent = CollectorRunner(Absent(CollectorSettings(), ctx())).run_once()
    assert not boom.success and boom.output.findings[0].status == "unknown"
    assert "Input/output error" in boom.output.findings[0].message
    assert absent.success and absent.output.findings == []
    text = exposition([boom, absent], "n1").decode()
    assert 'vigil_collector_success{collector="boom"} 0.0' in text
    assert 'vigil_collector_success{collector="absent"} 1.0' in text
    assert 'vigil_check_status{check="test.collector",entity="n1",severity="fatal"} -1.0' in text


def test_healthz_stays_ok_and_metrics_keep_serving_while_an_smi_call_hangs():
    backend = HangingBackend()
    settings = GpuSettings(timeout_seconds=0.2, interval_seconds=0.3)
    agent = Agent([GpuCollector(settings, ctx(), chains=[_Chain("amd", [lambda: backend])]),
                   Absent(CollectorSettings(interval_seconds=0.3), ctx())], "n1")
    agent.start()
    server = MetricsServer("127.0.0.1", 0, agent.metrics, agent.alive)
    server.start()
    try:
        time.sleep(1.0)  # several cycles with the read stuck
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=2) as r:
            body = r.read().decode()
        assert 'vigil_check_status{check="gpu.smi_unresponsive",entity="n1",severity="fatal"} 0.0' in body
        assert 'vigil_collector_success{collector="gpu"} 0.0' in body
        assert backend.calls == 1
    finally:
        backend.release.set()
        server.stop()
        agent.stop()


class Clashing(Collector):
    """Exports a family the agent's core already declares with other labels: rendering the exposition raises,
    so its loop thread dies on every cycle (a rule bug of this kind once shipped in another exporter)."""

    name, component = "clashing", "test"
    Settings = CollectorSettings

    def read(self):
        return 1

    def evaluate(self, reading, previous, elapsed):
        from agent.base.metrics import Gauge, MetricSet

        ms = MetricSet()
        ms.add(Gauge("vigil_collector_success", "clash", ("other",)), {"other": "x"}, 1)
        return Output(metrics=ms)


def test_a_dead_collector_loop_is_restarted_reported_and_healthz_stays_ok():
    from agent.run.selfcheck import SelfCheck
    from agent.run.supervise import Supervisor

    sup = Supervisor(backoff_base=0.05, backoff_max=0.1)
    agent = Agent([Clashing(CollectorSettings(interval_seconds=0.1, timeout_seconds=0.1), ctx()),
                   Absent(CollectorSettings(interval_seconds=0.1, timeout_seconds=0.1), ctx())], "n1", supervisor=sup)
    agent.start()
    try:
        deadline = time.monotonic() + 10
        while next(t for t in sup.status() if t.name == "loop-clashing").restarts < 3:
            assert time.monotonic() < deadline, sup.status()
            time.sleep(0.05)
        assert agent.alive() == (True, "ok")  # it recovers by itself: no reason for the kubelet to restart it
        assert 'vigil_collector_success{collector="absent"} 1.0' in agent.metrics().decode()  # the others go on
        out = CollectorRunner(SelfCheck(ctx(), sup)).run_once().output
        [f] = [f for f in out.findings if f.entity == "loop-clashing"]
        assert (f.check, f.status, f.severity) == ("agent.thread", "unhealthy", "warning")
        assert "declared twice" in f.message
        assert out.metrics.value("vigil_agent_thread_restarts_total", thread="loop-clashing") >= 3
        [healthy] = [f for f in out.findings if f.entity == "loop-absent"]
        assert healthy.status == "ok"
    finally:
        agent.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the watcher's death, on purpose
def test_healthz_fails_once_nothing_can_restart_the_threads(monkeypatch):
    """The supervisor's watcher is the one part that cannot be restarted: if it dies, /healthz fails."""
    agent = Agent([Absent(CollectorSettings(interval_seconds=0.1, timeout_seconds=0.1), ctx())], "n1")

    def die(part):
        raise SystemExit("watcher gone")
    monkeypatch.setattr(agent.supervisor, "_check", die)
    agent.start()
    try:
        agent.supervisor._watcher.join(5)
        ok, why = agent.alive()
        assert not ok and "supervisor" in why
    finally:
        agent.stop()


def test_a_hanging_amdsmi_library_call_trips_the_deadline():
    """The amdsmi backend over the faithful library fake, with one getter stuck as a call in D-state would be."""
    from agent.sources.gpu.amdsmi_lib import AmdSmiLibBackend
    from tests.gpu import fake_amdsmi as fake

    release = threading.Event()

    class StuckLib(fake.FakeAmdSmi):
        def amdsmi_get_processor_handles(self):
            release.wait()
            return super().amdsmi_get_processor_handles()

    lib = StuckLib([fake.mi300x(0), fake.mi300x(1)])
    collector = GpuCollector(GpuSettings(timeout_seconds=0.3), ctx(expect_gpus=2),
                             chains=[_Chain("amd", [lambda: AmdSmiLibBackend(lib=lib)])])
    runner = CollectorRunner(collector)
    t0 = time.monotonic()
    stuck = runner.run_once()
    assert time.monotonic() - t0 < 1.0
    assert [f.check for f in stuck.output.findings] == ["gpu.smi_unresponsive"]
    assert "amd" in stuck.output.findings[0].message
    release.set()
    deadline = time.monotonic() + 2
    while runner._stuck.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    healthy = runner.run_once()
    assert healthy.success
    count = next(f for f in healthy.output.findings if f.check == "gpu.count")
    assert (count.status, count.value) == ("ok", 2)
    assert lib.init_calls == 1  # the library was initialised once, not once per attempt


def test_two_backend_errors_make_one_check_status_series():
    """Every (check, entity) appears once per cycle: two failed amd-smi commands are one gpu.backend row."""
    from agent.sources.gpu.model import GpuReadings
    from agent.run.runner import Result

    c = GpuCollector(GpuSettings(), ctx(), chains=[])
    inv = GpuInventory("amd-smi", "amd", [GpuReading(0, "amd")],
                       errors=["amd-smi metric: no JSON in output", "amd-smi process: no JSON in output"])
    out = c.evaluate(GpuReadings([inv], {"amd": 1}), None, None)
    [backend] = [f for f in out.findings if f.check == "gpu.backend"]
    assert "metric" in backend.message and "process" in backend.message
    body = exposition([Result("gpu", out, True, 0.1)], "n1").decode()
    series = [line.rsplit(" ", 1)[0] for line in body.splitlines() if line and not line.startswith("#")]
    assert len(series) == len(set(series))


def test_once_header_counts_info_events_apart_from_warnings():
    from agent.run.report import report_table
    from agent.base.findings import INFO, bad, ok

    findings = [bad("gpu.xid", "gpu", "gpu0", "Xid 13: application fault", INFO),
                ok("gpu.count", "gpu", "n1", "1 of 1 GPUs visible")]
    header = report_table("n1", findings).splitlines()[0]
    assert "(0 fatal, 0 warning, 0 unknown, 1 ok, 1 info)" in header, header


class Elapsed(Collector):
    """Reports the `elapsed` the runner hands to evaluate() (what every rate divides by)."""

    name, component = "elapsed", "test"
    Settings = CollectorSettings

    def read(self):
        return 1

    def evaluate(self, reading, previous, elapsed):
        from agent.base.findings import ok

        return Output(findings=[ok("test.rate", "test", "n1", "rate", value=elapsed)])


def test_rates_are_timed_on_the_runners_clock():
    """Two reads 30 s apart on the injected clock: evaluate() divides by 30."""
    from tests.support.clock import FakeClock

    clock = FakeClock()
    runner = CollectorRunner(Elapsed(CollectorSettings(), ctx()), clock=clock)
    assert runner.run_once().output.findings[0].value is None  # first reading: no rate yet
    clock.step(30)
    second = runner.run_once()
    assert second.output.findings[0].value == 30
    assert second.duration == 0  # the clock stood still during the read


def test_healthz_goes_stale_on_the_agents_clock():
    """A loop that has not come round for 3 intervals + deadline + 5 s fails liveness; before that it passes.
    Hours of silence, stepped on the injected clock."""
    from tests.support.clock import FakeClock

    clock = FakeClock()
    agent = Agent([Absent(CollectorSettings(interval_seconds=3600, timeout_seconds=10), ctx())], "n1", clock=clock)
    agent.start()  # the first cycle runs at once; the next one is an hour away in real time
    try:
        assert agent.alive() == (True, "ok")
        clock.step(3 * 3600 + 10 + 5)
        assert agent.alive() == (True, "ok")
        clock.step(1)
        ok, why = agent.alive()
        assert not ok and why == "collector loop absent silent for 10816s"
    finally:
        agent.stop()


def test_a_runner_that_raises_leaves_its_collector_unknown_not_the_report_lost():
    """`timeout_seconds: .inf` once reached the runner (Thread.join raised OverflowError) and `--once` died
    with a KeyError (exit 1, "unhealthy"). The config refuses it now; should anything else make a runner
    raise, the report still comes, with that collector unknown."""
    from agent.run.loop import run_all_once

    class Other(Absent):
        name = "other"

    broken = CollectorRunner(Absent(CollectorSettings(timeout_seconds=float("inf")), ctx()))
    fine = CollectorRunner(Other(CollectorSettings(), ctx()))
    bad, good = run_all_once([broken, fine])
    assert not bad.success and [f.status for f in bad.output.findings] == ["unknown"]
    assert good.success
