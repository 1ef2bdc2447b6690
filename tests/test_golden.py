"""Golden output for every fixture node: the /metrics exposition and `agent --once --json`, replayed from the
node's real (or documented derived) captures. `pytest tests/test_golden.py --update-golden` rewrites them;
every exposition must also pass `promtool check metrics`."""
import json
import re
import subprocess

import pytest

from agent.cli import main as cli_main  # noqa: F401  (the CLI must import cleanly)
from agent.base.collector import Context, RunMode
from agent.base.config import load
from agent.base import tools
from agent.run.loop import Agent, build_collectors, collector_schemas, exposition, run_all_once
from agent.base.roots import Roots, merge_expectations, read_node_file
from agent.run.runner import CollectorRunner
from tests.support import AGENT, FIXTURES

NODES = sorted(p.name for p in FIXTURES.iterdir()
               if p.is_dir() and any((p / d).exists() for d in ("amd-smi", "nvidia-smi", "sys", "proc")))


def render_node(name: str) -> str:
    roots = Roots.from_snapshot(FIXTURES / name)
    nf = read_node_file(roots.snapshot / "node.json")
    config = load(None, collector_schemas())
    ctx = Context(roots, nf.node or name, merge_expectations(config.agent.expect, nf.expect), mode=RunMode(once=True))
    collectors = build_collectors(config, ctx)
    results = run_all_once([CollectorRunner(c) for c in collectors])
    for c in collectors:
        c.close()
    text = exposition(results, ctx.node).decode()
    # Durations are the only values that change from run to run.
    return re.sub(r"^(vigil_collector_duration_seconds\{[^}]*\}) .*$", r"\1 0", text, flags=re.M)


def once_json(name: str) -> tuple[int, dict]:
    p = subprocess.run([AGENT, "--once", "--json", "--snapshot", str(FIXTURES / name)], capture_output=True,
                       text=True, timeout=120)
    return p.returncode, json.loads(p.stdout)


def check(path, actual: str, update: bool) -> None:
    if update:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"no golden file {path}: run pytest tests/test_golden.py --update-golden"
    assert actual == path.read_text(), f"{path} differs: review, then --update-golden if intended"


@pytest.mark.parametrize("node", NODES)
def test_metrics_golden_and_promtool(node, update_golden, promtool):
    text = render_node(node)
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert len(series) == len(set(series)), "a series appears twice (promtool does not catch it)"
    check(FIXTURES / node / "golden" / "metrics.prom", text, update_golden)
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("node", NODES)
def test_once_json_golden(node, update_golden):
    code, doc = once_json(node)
    assert code == {"healthy": 0, "unhealthy": 1, "unknown": 2}[doc["status"]]
    check(FIXTURES / node / "golden" / "once.json", json.dumps({"exit": code, **doc}, indent=2) + "\n",
          update_golden)


@pytest.mark.parametrize("node", NODES)
def test_served_metrics_are_the_exposition_of_the_latest_results(node):
    """The agent renders each result once and joins the parts (issue 15: re-rendering everything at every
    publish was most of its CPU on a large node); /metrics must still be byte for byte what exposition() of the
    latest results gives, after every publish and after a collector publishes again."""
    roots = Roots.from_snapshot(FIXTURES / node)
    nf = read_node_file(roots.snapshot / "node.json")
    config = load(None, collector_schemas())
    ctx = Context(roots, nf.node or node, merge_expectations(config.agent.expect, nf.expect), mode=RunMode(once=True))
    collectors = build_collectors(config, ctx)
    results = run_all_once([CollectorRunner(c) for c in collectors])
    agent = Agent(collectors, ctx.node)
    try:
        for i, r in enumerate(results):
            agent._publish(r)
            assert agent.metrics() == exposition(results[:i + 1], ctx.node, tools.stuck_counts())
        agent._publish(results[0])  # keeps its place
        assert agent.metrics() == exposition(results, ctx.node, tools.stuck_counts())
    finally:
        for c in collectors:
            c.close()
