"""Rendering is inside the failure wrapper (issue 12, item 9): a label value that is not valid UTF-8 (a lone
surrogate, as json.loads makes of "\\ud800" in amd-smi's bus id) is made safe, and a collector whose metrics
cannot be rendered costs its own series (an unknown finding), never the agent's start or another collector."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from agent.base.collector import Collector, Context, Output
from agent.base.config import CollectorSettings, Expectations
from agent.base.findings import ok
from agent.base.metrics import Gauge, MetricSet
from agent.base.roots import Roots
from agent.run.loop import Agent
from agent.sources.gpu.collector import GpuCollector, GpuSettings
from tests.support import FIXTURES


def test_lone_surrogate_in_amd_bus_id_is_served(tmp_path):
    snap = tmp_path / "node"
    shutil.copytree(FIXTURES / "mi300x-rocm71-healthy", snap)
    listed = snap / "amd-smi" / "list.json"
    doc = json.loads(listed.read_text())
    doc[0]["bdf"] = "0000:0c:00.0\ud800"
    listed.write_text(json.dumps(doc))  # ensure_ascii: the file holds the escape "\ud800", as amd-smi printed
    agent = Agent([GpuCollector(GpuSettings(), Context(Roots.from_snapshot(snap), "n1", Expectations(gpus=8)))],
                  "n1")
    agent.start()  # raised UnicodeEncodeError here, outside any wrapper
    try:
        body = agent.metrics().decode("utf-8")
        assert 'vigil_collector_success{collector="gpu"} 1.0' in body
        assert 'pci_bus_id="0000:0c:00.0?"' in body
        assert 'vigil_gpu_temperature_celsius{gpu="1",sensor="junction"}' in body
    finally:
        agent.stop()


BROKEN = Gauge("vigil_test_broken", "A sample no exposition can carry.", ("x",))
FINE = Gauge("vigil_test_fine", "A fine sample.", ())


class Source(Collector):
    component = "test"

    def __init__(self, name: str, broken: bool) -> None:
        super().__init__(CollectorSettings(), Context(Roots(Path("/none"), Path("/none")), "n1", Expectations()))
        self.name, self.broken = name, broken

    def read(self):
        return None

    def evaluate(self, reading, previous, elapsed) -> Output:
        ms = MetricSet()
        if self.broken:  # past MetricSet's own checks, as a bug in a source could
            ms.declare(BROKEN)
            ms.families[BROKEN.name].samples.append((BROKEN.name, {"x": "\udcff"}, 1.0))
        else:
            ms.add(FINE, {}, 1)
        return Output(ms, [ok(f"{self.name}.check", "test", "n1", "fine")])


def test_a_render_failure_costs_that_collector_only():
    agent = Agent([Source("bad", True), Source("good", False)], "n1")
    agent.start()
    try:
        body = agent.metrics().decode()
        assert "vigil_test_fine 1.0" in body
        assert 'vigil_collector_success{collector="bad"} 0.0' in body
        assert 'vigil_collector_success{collector="good"} 1.0' in body
        assert 'vigil_check_status{check="test.metrics",entity="n1",severity="fatal"} -1.0' in body
        assert 'vigil_check_status{check="bad.check",entity="n1",severity="fatal"} 1.0' in body
        finding = next(f for f in agent.findings() if f.check == "test.metrics")
        assert finding.status == "unknown"
        assert "bad metrics could not be rendered: UnicodeEncodeError" in finding.message
    finally:
        agent.stop()


def test_the_agent_keeps_findings_not_samples_once_rendered():
    """Its /metrics is joined from parts rendered when each result came; the samples are not kept besides
    (1.4 MB at 64 GPUs, 32 ports and 500 containers, issue 15), the findings are, and /metrics still has them."""
    agent = Agent([Source("good", False)], "n1")
    seen = []
    agent.observers.append(seen.append)
    agent.start()
    try:
        assert "vigil_test_fine 1.0" in agent.metrics().decode()
        assert [f.check for f in agent.findings()] == ["good.check"]
        assert all(not r.output.metrics.families for r in agent._latest.values())
        assert seen and "vigil_test_fine" in seen[0].output.metrics.families  # observers get the whole result
    finally:
        agent.stop()
