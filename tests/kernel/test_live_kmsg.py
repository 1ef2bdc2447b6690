"""The real /dev/kmsg (root on this machine can write it): a line written to the kernel log is judged by a
rule, once, through the shared reader, while gpu_events reads the same device."""
from __future__ import annotations

import json
import os
import uuid

import pytest

from agent.base.collector import Context
from agent.base.config import Expectations, build
from agent.base.roots import Roots
from agent.sources.gpu_events.collector import GpuEventsCollector, GpuEventsSettings
from tests.kernel.helpers import Node, by_check, run

pytestmark = pytest.mark.skipif(not (os.access("/dev/kmsg", os.R_OK) and os.access("/dev/kmsg", os.W_OK)),
                                reason="/dev/kmsg not readable and writable here")


def test_a_line_written_to_dev_kmsg_fires_its_rule_once(tmp_path):
    token = uuid.uuid4().hex[:12]
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({
        "plugin": "kmsg", "conditions": [{"type": "TestCondition", "reason": "Fine", "message": "fine"}],
        "rules": [{"type": "permanent", "condition": "TestCondition", "reason": "TestHit",
                   "pattern": f"vigil-test-{token}: condition marker \\(\\w+\\)"},
                  {"type": "temporary", "reason": "TestEvent", "pattern": f"vigil-test-{token}: event \\d+"}]}))
    node = Node(tmp_path)
    live = dict(kmsg_path="/dev/kmsg", rule_files=[str(rules)])
    c = node.collector(**live)
    g = GpuEventsCollector(build(GpuEventsSettings, {"state_dir": "", "nvml_events": False, "cper": False},
                                 "gpu_events"), Context(Roots(node.sys, node.proc), "node-1", Expectations()))
    try:
        assert by_check(run(c))["kernel.test_condition"][0].status == "ok"  # the backlog: nothing of ours
        g.read()
        with open("/dev/kmsg", "w") as k:
            k.write(f"vigil-test-{token}: condition marker (loop7)\n")  # matches no default rule
            k.flush()
            for i in range(5):
                k.write(f"vigil-test-{token}: event {i}\n")
                k.flush()
        checks = by_check(run(c))
        assert checks["kernel.test_condition"][0].is_fatal
        (ev,) = checks["kernel.event.test_event"]
        assert ev.value == 5
        assert g.read() is not None  # gpu_events reads the same device through the same descriptor
        assert "kernel.event.test_event" not in by_check(run(c))  # read once
    finally:
        c.close()
        g.close()
    # A restarted agent (a new reader from the oldest record) does not fire the old lines again, and the
    # burst going on across the restart stays the episode already shown (the real ring, twice).
    for n in range(2):
        again = node.collector(**live)
        try:
            checks = by_check(run(again))
            assert checks["kernel.test_condition"][0].is_fatal and "kernel.event.test_event" not in checks
            with open("/dev/kmsg", "w") as k:
                k.write(f"vigil-test-{token}: event {10 + n}\n")
            assert "kernel.event.test_event" not in by_check(run(again))  # counted, not announced again
        finally:
            again.close()
    assert node.state()["episodes"]["TestEvent"]["total"] == 7
