"""Bounded memory under churn (issue 12 #19): a real `vigil-aggregator serve` process, TokenReview auth against the
project's fake API server (agent/fakekube), and thousands of agent streams over real gRPC that authenticate and
never send a Hello, or connect and close at once (bench/hello_churn.py, the benchmark's own command). Each silent
stream must be ended by the server at its Hello deadline, and the aggregator's RSS, measured from /proc, must stay
within a generous bound: before the deadline existed every such stream was held for ever, about 18 KiB each."""
import json
import subprocess
import sys

from tests.support import ROOT


def test_streams_without_a_hello_are_ended_and_memory_stays_bounded():
    out = subprocess.run([sys.executable, "bench/hello_churn.py", "--silent", "2000", "--closed", "1000",
                          "--warmup", "1000", "--concurrency", "200", "--hello-timeout", "0.3",
                          "--client-timeout", "10", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["aggregator_alive"]
    assert res["silent_ended"] == {"DEADLINE_EXCEEDED": 2000}, "every silent stream is ended by the server"
    growth = res["rss_after_mib"] - res["rss_before_mib"]
    assert growth < 24, f"RSS grew {growth:.1f} MiB over 3,000 streams: {res['samples']}"
