"""`agent --once --snapshot <rdma fixture> --only rdma`, through the installed `agent` command as a user runs it."""
from __future__ import annotations

import json
import subprocess

from .helpers import AGENT, node_dir


def once(node: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT, "--once", "--snapshot", str(node_dir(node)), "--only", "rdma", *extra],
                          capture_output=True, text=True, timeout=120)


def rows(stdout: str, entity: str) -> list[str]:
    return [line for line in stdout.splitlines() if f" {entity} " in f" {line} "]


def test_port_down_exits_1_with_one_row_for_the_down_port():
    p = once("rdma-port-down")
    assert p.returncode == 1, p.stdout + p.stderr
    down = rows(p.stdout, "mlx5_3/1")
    assert len(down) == 1 and "rdma.port_state" in down[0] and "FATAL" in down[0] and "DOWN/Polling" in down[0]
    assert p.stdout.startswith("node rdma-port-down: UNHEALTHY")
    for i in (0, 1, 2, 4, 5, 6, 7):
        assert len(rows(p.stdout, f"mlx5_{i}/1")) == 1


def test_healthy_8_ports_exit_0_with_one_row_per_port():
    p = once("rdma-8port-healthy")
    assert p.returncode == 0, p.stdout + p.stderr
    for i in range(8):
        r = rows(p.stdout, f"mlx5_{i}/1")
        assert len(r) == 1 and " ok " in r[0]
    assert "8 of 8 RDMA ports present" in p.stdout


def test_json_report_lists_every_port_check():
    p = once("rdma-mixed-vendor", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["status"] == "healthy"
    state = {f["entity"] for f in doc["findings"] if f["check"] == "rdma.port_state"}
    assert state == {"mlx4_0/1", "mlx4_0/2", "hfi1_0/1", "i40iw0/1", "ionic_1/1"}


def test_saturated_counters_warn_but_exit_0():
    p = once("rdma-quirks")
    assert p.returncode == 0, p.stdout + p.stderr
    assert any("WARNING" in r and "rdma.counters_saturated" in r for r in rows(p.stdout, "mlx5_0/1"))
