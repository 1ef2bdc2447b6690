"""`agent --once` as an operator runs it at 3 a.m.: the table, the JSON, and the exit status, on fixture nodes
replayed from real captures (no GPU on this machine)."""
import json
import subprocess

import pytest

from tests.support import AGENT, FIXTURES


def once(*args):
    return subprocess.run([AGENT, "--once", *args], capture_output=True, text=True, timeout=120)


def test_faulty_node_table_names_the_broken_gpus_and_exits_1():
    p = once("--snapshot", "mi300x-faulty")
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    assert lines[0].startswith("node mi300x-c14-faulty: UNHEALTHY")
    fatal = [line for line in lines if " FATAL " in line]
    assert len(fatal) == 1 and "gpu.ecc.uncorrectable" in fatal[0] and "gpu3" in fatal[0]
    warn = [line for line in lines if " WARNING " in line]
    assert len(warn) == 1 and "gpu.pcie.width" in warn[0] and "gpu5" in warn[0] and "x8 of x16" in warn[0]
    # problems come before the passing rows
    assert lines.index(fatal[0]) < min(i for i, line in enumerate(lines) if line.split()[2:3] == ["ok"])


def test_json_report_matches_design_contract():
    p = once("--json", "--snapshot", "mi300x-faulty")
    doc = json.loads(p.stdout)
    assert {"node", "status", "findings"} <= set(doc) <= {"node", "status", "findings", "absent", "gpu_pods"}
    assert doc["status"] == "unhealthy"
    f = next(f for f in doc["findings"] if f["status"] == "unhealthy" and f["severity"] == "fatal")
    assert {k: f[k] for k in ("check", "component", "entity", "value", "threshold")} == {
        "check": "gpu.ecc.uncorrectable", "component": "gpu", "entity": "gpu3", "value": 2, "threshold": 0}


@pytest.mark.parametrize("node, code, expect_row", [
    ("mi300x-rocm71-healthy", 0, None),
    ("mi300x-rocm62-healthy", 0, None),
    ("mi300x-rocm71-busy", 0, None),
    ("mi300x-gpu-missing", 1, "7 of 8 GPUs visible"),
    ("mi300x-rocm71-ecc-correctable", 1, "xgmi6 to gpu7"),
    ("mi300x-smi-broken", 2, "GPU backend unavailable"),
    ("mi300x-metric-truncated", 2, "amd-smi metric: incomplete JSON"),
])
def test_exit_status_per_node(node, code, expect_row):
    p = once("--snapshot", node)
    assert p.returncode == code, p.stdout + p.stderr
    if expect_row:
        assert expect_row in p.stdout


def test_warnings_alone_exit_0(tmp_path):
    """Correctable ECC on GPU 1 is a warning: without the XGMI fault the node is healthy and exits 0.
    Same capture minus its xgmi output, so the link check has nothing to judge and the ECC warning remains."""
    snap = tmp_path / "snap"
    src = FIXTURES / "mi300x-rocm71-ecc-correctable"
    (snap / "amd-smi").mkdir(parents=True)
    for f in (src / "amd-smi").iterdir():
        if f.name != "xgmi.json":
            (snap / "amd-smi" / f.name).write_bytes(f.read_bytes())
    p = once("--snapshot", str(snap))
    assert p.returncode == 0, p.stdout
    assert "WARNING" in p.stdout and "12 correctable ECC errors" in p.stdout
    assert p.stdout.startswith("node ") and ": HEALTHY" in p.stdout.splitlines()[0]


def test_truncated_metric_output_makes_its_checks_unknown_and_the_node_unknown():
    """Issue 12 item 1: uncorrectable ECC on GPU 3 sits past the cut of metric.json. The node read as HEALTHY
    (exit 0); now every check that needs `amd-smi metric` is unknown, one table row per GPU, and the node too."""
    p = once("--snapshot", "mi300x-metric-truncated")
    assert p.returncode == 2, p.stdout
    lines = p.stdout.splitlines()
    assert ": UNKNOWN" in lines[0]
    rows = [line for line in lines if line.startswith("gpu.* (9)") and " UNKNOWN " in line]
    assert [r.split()[2] for r in rows] == [f"gpu{i}" for i in range(8)]
    assert all("ecc.uncorrectable" in r and "not read: amd-smi metric: incomplete JSON" in r for r in rows)
    verbose = once("-v", "--snapshot", "mi300x-metric-truncated").stdout.splitlines()
    assert sum(line.startswith("gpu.ecc.uncorrectable ") and " UNKNOWN " in line for line in verbose) == 8
    doc = json.loads(once("--json", "--snapshot", "mi300x-metric-truncated").stdout)
    ecc = next(f for f in doc["findings"] if f["check"] == "gpu.ecc.uncorrectable" and f["entity"] == "gpu3")
    assert (ecc["status"], ecc["severity"]) == ("unknown", "fatal")
    pages = next(f for f in doc["findings"] if f["check"] == "gpu.pages.retired" and f["entity"] == "gpu3")
    assert (pages["status"], pages["value"]) == ("ok", 2)  # bad-pages was whole: still judged
    throttle = next(f for f in doc["findings"] if f["check"] == "gpu.throttle" and f["entity"] == "gpu0")
    assert throttle["status"] == "unknown"  # never "no hardware throttling" when nothing was read


def test_a_fatal_elsewhere_still_exits_1_when_one_command_is_unreadable(tmp_path):
    """What the other commands gave is still judged: XGMI link 6<->7 down (from `xgmi`) with a cut metric."""
    snap = tmp_path / "snap"
    src = FIXTURES / "mi300x-rocm71-ecc-correctable"
    (snap / "amd-smi").mkdir(parents=True)
    for f in (src / "amd-smi").iterdir():
        data = f.read_bytes()
        (snap / "amd-smi" / f.name).write_bytes(data[:65536] if f.name == "metric.json" else data)
    (snap / "node.json").write_bytes((src / "node.json").read_bytes())
    p = once("--json", "--snapshot", str(snap))
    assert p.returncode == 1, p.stdout
    doc = json.loads(p.stdout)
    assert doc["status"] == "unhealthy"
    assert {f["entity"] for f in doc["findings"] if f["check"] == "gpu.xgmi" and f["status"] == "unhealthy"} \
        == {"gpu6", "gpu7"}
    assert {f["status"] for f in doc["findings"] if f["check"] == "gpu.ecc.correctable"} == {"unknown"}


def test_thresholds_come_from_config(tmp_path):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("gpu:\n  ecc_uncorrectable_max: 5\n  temperature_warning_celsius: {junction: 40}\n")
    p = once("--json", "--config", str(cfg), "--snapshot", "mi300x-faulty")
    doc = json.loads(p.stdout)
    ecc = next(f for f in doc["findings"] if f["check"] == "gpu.ecc.uncorrectable" and f["entity"] == "gpu3")
    assert ecc["status"] == "ok" and ecc["threshold"] == 5
    hot = [f for f in doc["findings"] if f["check"] == "gpu.temperature.junction" and f["status"] == "unhealthy"]
    assert hot and all(f["severity"] == "warning" and f["value"] > 40 for f in hot)


def test_expectation_in_config_overrides_node_json(tmp_path):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text("agent:\n  expect: {gpus: 7}\n")
    p = once("--config", str(cfg), "--snapshot", "mi300x-gpu-missing")
    assert p.returncode == 0, p.stdout


def test_snapshot_capture_then_replay(tmp_path):
    """`agent snapshot DIR` on this (GPU-less) machine writes the replay format, and replaying it agrees with
    the live run."""
    snap = tmp_path / "snap"
    p = subprocess.run([AGENT, "snapshot", str(snap), "--node-name", "ci-node"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads((snap / "node.json").read_text()) == {"node": "ci-node"}
    assert (snap / "proc" / "sys" / "vm" / "max_map_count").read_text().strip().isdigit()
    assert (snap / "sys" / "bus" / "pci" / "devices").is_dir()
    live = json.loads(once("--json", "--only", "gpu", "--node-name", "ci-node").stdout)
    replay = json.loads(once("--json", "--only", "gpu", "--snapshot", str(snap)).stdout)
    assert live == replay


def test_nothing_checked_is_unknown_not_healthy(tmp_path):
    """A machine with neither GPUs nor RDMA ports, asked about exactly those: the agent could not look at
    anything, so it must not say HEALTHY (DESIGN §0)."""
    (tmp_path / "sys").mkdir()
    (tmp_path / "proc").mkdir()
    p = once("--only", "gpu,rdma", "--sysfs", str(tmp_path / "sys"), "--procfs", str(tmp_path / "proc"))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "UNKNOWN" in p.stdout.splitlines()[0]
    assert "agent.coverage" in p.stdout and "nothing was checked" in p.stdout
    assert "not on this node: gpu (no GPU found" in p.stdout and "rdma (no RDMA devices" in p.stdout
    doc = json.loads(once("--json", "--only", "gpu,rdma", "--sysfs", str(tmp_path / "sys"),
                          "--procfs", str(tmp_path / "proc")).stdout)
    assert doc["status"] == "unknown" and set(doc["absent"]) == {"gpu", "rdma"}


@pytest.mark.parametrize("flag", ["--sysfs", "--procfs"])
def test_a_root_that_does_not_exist_is_a_configuration_error(tmp_path, flag):
    p = once(flag, str(tmp_path / "nope"))
    assert p.returncode == 78
    assert f"{flag}: {tmp_path / 'nope'} is not a directory" in p.stderr and "Traceback" not in p.stderr


def test_no_gpu_is_said_as_zero_devices_and_in_the_report():
    """A node with RDMA ports and no GPU is judged on its ports, says it has no GPU, and exports 0 devices."""
    p = once("--snapshot", "rdma-8port-healthy")
    assert p.returncode == 0 and "not on this node: gpu (no GPU found" in p.stdout
    assert "vigil_gpu_devices 0.0" in (FIXTURES / "rdma-8port-healthy" / "golden" / "metrics.prom").read_text()


def test_an_unknown_node_names_what_could_not_run():
    """Exit 2 lists the collectors behind it (docs/deploy.md promises this line): here GPUs are on the PCI bus
    and no SMI output was captured, so the GPU source ran but its fatal checks could not."""
    p = once("--snapshot", "mi300x-smi-broken")
    assert p.returncode == 2
    assert "collectors that failed: gpu" in p.stdout


def test_listen_on_a_taken_port_names_the_address_and_exits_75():
    """Issue 12 item 11: a port already in use was a 14-line traceback and exit 1 (read as "unhealthy")."""
    import os
    import socket
    import sys

    from tests.support import ROOT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        p = subprocess.run([sys.executable, "-m", "agent.cli", "--snapshot", "mi300x-rocm71-healthy", "--only", "gpu",
                            "--listen", address], capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 75, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"agent: cannot serve: --listen: {address} is already in use (another agent still stopping, or another "
        "exporter on that port): free it or choose another with --listen"]


def test_an_internal_error_is_one_line_and_exit_70_never_1(monkeypatch, capsys):
    """A bug must not read as "unhealthy" (1) or print a traceback at the operator."""
    import agent.cli as cli

    def bug(args):
        raise RuntimeError("something the code did not expect")
    monkeypatch.setattr(cli, "cmd_once", bug)
    assert cli.main(["--once"]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["agent: internal error: RuntimeError: something the code did not expect "
                   "(rerun with --log-level debug for the traceback)"]
