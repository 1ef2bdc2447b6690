"""`vigil-aggregator cleanup` and `reset-breaker` against the fake API (through a kubeconfig, as an operator
runs them), flags and listen addresses refused with the flag named, and the local demo end to end."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.aggregator import policy as P
from agent.aggregator.cli import main
from agent.aggregator.kube import Kube

from .helpers import ROOT


def test_cleanup_removes_only_what_vigil_added(fake, tmp_path, capsys):
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    other = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    fake.add_node("mine", taints=[other])
    fake.add_node("human", unschedulable=True)
    fake.add_node("clean")
    k = Kube(fake.api_client())
    for n in ("mine", "human"):
        k.update_node(n, lambda obj: P.quarantined(obj, "gpu.ecc", "t", "ep"))
        k.patch_node_status(n, P.condition_patch("False", "gpu.ecc", "m", "2026-01-01T00:00:00Z", None))
    assert main(["cleanup", "--kubeconfig", kc, "--dry-run"]) == 0
    assert "would clean mine" in capsys.readouterr().out
    assert fake.get("nodes", "mine")["spec"]["unschedulable"]
    assert main(["cleanup", "--kubeconfig", kc]) == 0
    mine, human = fake.get("nodes", "mine"), fake.get("nodes", "human")
    assert mine["spec"]["taints"] == [other] and not mine["spec"].get("unschedulable")
    assert human["spec"]["unschedulable"] is True  # a person's cordon stays
    for node in (mine, human):
        assert not any(c["type"] == P.CONDITION for c in node["status"]["conditions"])
        assert P.RECORD not in (node["metadata"].get("annotations") or {})
    assert any(c["type"] == "Ready" for c in mine["status"]["conditions"])


def test_cleanup_removes_vigils_device_rules_and_drain_record_only(fake, tmp_path, capsys):
    """Finer than a node (DESIGN §9): Vigil's DeviceTaintRules go, a person's stays; the drain record goes."""
    from agent.aggregator import devices as dv
    from agent.aggregator import drain as dr

    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    fake.add_node("gpu-1", annotations={dr.ANNOTATION: "{}", "team": "ml"})
    t = dv.Target("gpu.nvidia.com", "gpu-1", "gpu-3")
    fake.create("devicetaintrules", dv.rule_body("gpu-1", t, "gpu.xid", "gpu3", "m", "NoSchedule", "v1",
                                                 "2026-01-01T00:00:00Z", "ep"))
    fake.create("devicetaintrules", {"metadata": {"name": "human"}, "spec": {
        "deviceSelector": {"device": "gpu-5"}, "taint": {"key": "example.com/x", "effect": "NoSchedule"}}})
    assert main(["cleanup", "--kubeconfig", kc, "--dry-run"]) == 0
    assert "would delete DeviceTaintRule vigil-gpu-1-gpu-3-" in capsys.readouterr().out
    assert len(fake.list("devicetaintrules")) == 2
    assert main(["cleanup", "--kubeconfig", kc]) == 0
    assert [r["metadata"]["name"] for r in fake.list("devicetaintrules")] == ["human"]
    assert fake.get("nodes", "gpu-1")["metadata"]["annotations"] == {"team": "ml"}


def test_reset_breaker_closes_it_and_keeps_held_nodes(fake, tmp_path, capsys):
    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    led = P.Ledger((("a", 1.0),), True, 2.0, ("b",), 0)
    fake.create("leases", {"metadata": {"name": "vigil-aggregator", "namespace": "vigil",
                                        "annotations": {P.LEDGER: led.to_json()}},
                           "spec": {"holderIdentity": "agg-0", "leaseDurationSeconds": 15}}, namespace="vigil")
    assert main(["reset-breaker", "--kubeconfig", kc, "--namespace", "vigil"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["breakerWasOpen"] is True
    after = P.Ledger.from_json(fake.get("leases", "vigil-aggregator", "vigil")["metadata"]["annotations"][P.LEDGER])
    assert not after.breaker_open and after.entries == () and after.held == ("b",) and after.resets == 1


def test_bad_usage_exits_64():
    assert subprocess.run([sys.executable, "-m", "agent.aggregator.cli", "--budget-nodes", "x"], cwd=ROOT,
                          capture_output=True).returncode == 64


def test_demo_cordons_the_faulty_node():
    out = subprocess.run([sys.executable, "-m", "agent.demo"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("gpu-node-3"))
    assert "False" in line and "gpu.ecc.uncorrectable" in line and " no " in line
    for healthy in ("gpu-node-1", "gpu-node-2"):
        row = next(x for x in out.stdout.splitlines() if x.startswith(healthy))
        assert "True" in row and " yes " in row
    # It used to print "logs in /tmp/vigil-demo-.../agents.log", then delete that directory on exit.
    printed = re.findall(r"(/\S*vigil-demo-\S*)", out.stdout + out.stderr)
    assert all(Path(p.rstrip(".,;)")).exists() for p in printed), printed


@pytest.mark.parametrize("argv, flag", [
    (["--healthy-delay", "nan"], "--healthy-delay"),
    (["--heartbeat-timeout", "inf"], "--heartbeat-timeout"),
    (["--heartbeat-interval", "0"], "--heartbeat-interval"),
    (["--budget-percent", "500"], "--budget-percent"),
    (["--budget-nodes", "-1"], "--budget-nodes"),
    (["--budget-window", "-3600"], "--budget-window"),
    (["--resync", "1e300"], "--resync"),
    (["--startup-grace", "-1"], "--startup-grace"),
    (["--kube-qps", "0"], "--kube-qps"),
    (["--kube-burst", "0.5"], "--kube-burst"),
    (["--listen", ":::"], "--listen"),
    (["--metrics-listen", "0.0.0.0:\u00b2"], "--metrics-listen"),
])
def test_bad_flag_values_exit_64_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 64
    assert f"argument {flag}: " in capsys.readouterr().err


def test_a_heartbeat_timeout_within_one_heartbeat_exits_64(capsys):
    """Every agent would read as silent between two heartbeats (condition Unknown fleet-wide)."""
    assert main(["--heartbeat-interval", "10", "--heartbeat-timeout", "5"]) == 64
    assert "--heartbeat-timeout: must be longer than --heartbeat-interval (10s)" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_a_taken_listen_address_exits_75_naming_it(fake, tmp_path, capsys, flag):
    import socket

    kc = fake.write_kubeconfig(str(tmp_path / "kc"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        other = "127.0.0.1:0"
        argv = ["--kubeconfig", kc, "--no-lease", "--insecure-no-auth",
                "--listen", address if flag == "--listen" else other,
                "--metrics-listen", address if flag == "--metrics-listen" else "off"]
        assert main(argv) == 75
    assert f"vigil-aggregator: {flag}: cannot listen on {address}: Address already in use" in capsys.readouterr().err


def cli(*args):
    return subprocess.run([sys.executable, "-m", "agent.aggregator.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_version_and_per_command_help():
    """Issue 12 #20: `--version`, and each command's --help says what it does."""
    from agent import __version__

    out = cli("--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"vigil-aggregator {__version__}")
    top = cli("--help").stdout
    assert all(c in top for c in ("serve", "cleanup", "reset-breaker"))
    cleanup = cli("cleanup", "--help").stdout
    assert "condition" in cleanup and "taint" in cleanup and "a cordon a person made" in cleanup.replace("\n", " ")
    assert "--dry-run" in cleanup and "--listen" not in cleanup
    reset = " ".join(cli("reset-breaker", "--help").stdout.split())
    assert "Close the cordon budget's breaker" in reset and "does not replay old events" in reset
    assert "--hello-timeout" in cli("serve", "--help").stdout


def test_kubeconfig_errors_name_the_path(tmp_path):
    """Issue 12 #20: one line naming the file, exit 78 (bad configuration), no traceback."""
    missing = tmp_path / "nope" / "kc"
    out = cli("cleanup", "--kubeconfig", str(missing))
    assert out.returncode == 78 and out.stderr.strip() == f"vigil-aggregator: --kubeconfig {missing}: no such file"
    assert cli("--kubeconfig", str(missing), "cleanup").stderr == out.stderr  # flags before the command reach it
    garbage = tmp_path / "kc"
    garbage.write_text("this: [is not a kubeconfig\n")
    out = cli("reset-breaker", "--kubeconfig", str(garbage))
    assert out.returncode == 78 and str(garbage) in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run([sys.executable, "-m", "agent.aggregator.cli", "cleanup"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 78 and str(tmp_path / ".kube" / "config") in out.stderr

