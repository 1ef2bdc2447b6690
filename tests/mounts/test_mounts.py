"""Mounts on real kernel mounts made by the test (root): a FUSE mount whose daemon never answers (opened on
/dev/fuse, mounted, never served: every stat on it waits in the kernel, the hung-NFS case), a tmpfs remounted
read-only, a tiny tmpfs filled up; and the replay format. Skipped where the test cannot mount."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from agent.base.collector import Context, RunMode
from agent.base.config import ConfigError, Expectations, build
from agent.base.findings import node_status
from agent.base.roots import Roots
from agent.run.runner import CollectorRunner
from agent.sources.mounts.collector import MountsCollector, MountsSettings
from agent.sources.mounts.parsers import parse_mounts
from tests.support import is_root

needs_root = pytest.mark.skipif(not is_root() or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse")


def collector(**settings) -> MountsCollector:
    settings.setdefault("ephemeral_paths", [])
    settings.setdefault("fs_types", [])
    return MountsCollector(build(MountsSettings, settings, "mounts"),
                           Context(Roots(), "node-1", Expectations(), mode=RunMode(once=True)))


def checks(out) -> dict:
    return {(f.check, f.entity): f for f in out.findings}


def mount(*args) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(d))
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


@needs_root
def test_a_hung_fuse_mount_is_a_finding_not_a_hung_agent(tmp_path):
    d = tmp_path / "hung"
    d.mkdir()
    fd = os.open("/dev/fuse", os.O_RDWR)
    try:
        subprocess.run(["mount", "-t", "fuse", "-o", f"fd={fd},rootmode=40000,user_id=0,group_id=0", "vigil-hang",
                        str(d)], pass_fds=[fd], check=True, capture_output=True)
        c = collector(paths=[str(d)], probe_timeout_seconds=0.5, timeout_seconds=5)
        runner = CollectorRunner(c)
        start = time.monotonic()
        result = runner.run_once()
        assert time.monotonic() - start < 4  # the read returned: only the probe thread is stuck
        f = checks(result.output)[("mounts.responsive", str(d))]
        assert f.is_fatal and "hung" in f.message and "no answer within 0.5s" in f.message
        # The next cycle starts no second probe on the stuck mount, and still reports it.
        again = checks(runner.run_once().output)[("mounts.responsive", str(d))]
        assert again.is_fatal and "still stuck" in again.message
        assert c._prober.stuck() == [str(d)]
    finally:
        os.close(fd)  # aborts the connection: the stuck stat returns ENOTCONN
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
    time.sleep(0.2)
    assert not c._prober.stuck()  # the stuck probe came back once the daemon went away


@needs_root
def test_a_read_only_remount_fails_writable(tmpfs):
    c = collector(paths=[str(tmpfs)], writable=[str(tmpfs)])
    first = checks(CollectorRunner(c).run_once().output)
    assert first[("mounts.writable", str(tmpfs))].status == "ok"
    assert not list(tmpfs.iterdir())  # the write probe removed its file
    mount("-o", "remount,ro", str(tmpfs))
    f = checks(CollectorRunner(c).run_once().output)[("mounts.writable", str(tmpfs))]
    assert f.is_fatal and "read-only" in f.message


@needs_root
def test_a_full_filesystem_is_fatal_and_exported(tmpfs):
    try:
        (tmpfs / "fill").write_bytes(b"\0" * (1 << 20))  # the whole 1 MiB
    except OSError:
        pass  # ENOSPC at the end: full is what we want
    out = CollectorRunner(collector(paths=[str(tmpfs)])).run_once().output
    f = checks(out)[("mounts.space", str(tmpfs))]
    assert f.is_fatal and f.value < 0.02
    assert node_status(out.findings) == "unhealthy"


@needs_root
def test_inodes_running_out(tmpfs):
    for i in range(62):
        (tmpfs / f"f{i}").write_text("")
    f = checks(CollectorRunner(collector(paths=[str(tmpfs)])).run_once().output)[("mounts.inodes", str(tmpfs))]
    assert f.status == "unhealthy"


def test_a_configured_mount_that_is_not_mounted(tmp_path):
    f = checks(CollectorRunner(collector(paths=[str(tmp_path / "nfs")])).run_once().output)[
        ("mounts.mounted", str(tmp_path / "nfs"))]
    assert f.is_fatal and "not mounted" in f.message


def test_proc_mounts_escapes_and_broken_lines():
    ms = parse_mounts("srv:/data /mnt/my\\040data nfs4 rw,relatime 0 0\ngarbage\n"
                      "/dev/vda / ext4 ro,relatime 0 0\n")
    assert [m.mountpoint for m in ms] == ["/mnt/my data", "/"] and ms[1].read_only


def test_replay_a_snapshot(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "mounts").write_text("/dev/vda / ext4 rw 0 0\nsrv:/data /mnt/data nfs4 rw 0 0\n")
    (tmp_path / "mounts").mkdir()
    (tmp_path / "mounts" / "probes.json").write_text(json.dumps({
        "/": {"ok": True, "bsize": 4096, "blocks": 1000, "bavail": 5, "files": 100, "favail": 50},
        "/mnt/data": {"ok": False, "hung": True, "error": "no answer within 5s", "stuck_seconds": 40}}))
    c = MountsCollector(build(MountsSettings, {}, "mounts"),
                        Context(Roots.from_snapshot(tmp_path), "node-1", Expectations()))
    out = checks(CollectorRunner(c).run_once().output)
    assert out[("mounts.responsive", "/mnt/data")].is_fatal
    assert out[("mounts.space", "/")].is_fatal


def test_a_broken_recorded_probe_costs_its_mount_only(tmp_path):
    """Regressions (bench/fuzz_parsers.py, target "mounts / snapshot probes.json"): a non-number `seconds`
    made the whole source fail in evaluate (a format error), and `"ok": "false"` read as true (bool() of a
    non-empty string): a hung share recorded by a broken tool replayed as responsive."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "mounts").write_text("srv:/a /mnt/a nfs4 rw 0 0\nsrv:/b /mnt/b nfs4 rw 0 0\n"
                                              "srv:/c /mnt/c nfs4 rw 0 0\n")
    (tmp_path / "mounts").mkdir()
    (tmp_path / "mounts" / "probes.json").write_text(json.dumps({
        "/mnt/a": {"ok": True, "bsize": 4096, "blocks": 1000, "bavail": 500, "files": 100, "favail": 50,
                   "seconds": {"value": 1}},
        "/mnt/b": {"ok": "false", "hung": "yes", "error": "no answer within 5s"},
        "/mnt/c": {"ok": False, "hung": True, "error": ["x"], "stuck_seconds": 10 ** 400}}))
    c = MountsCollector(build(MountsSettings, {"ephemeral_paths": []}, "mounts"),
                        Context(Roots.from_snapshot(tmp_path), "node-1", Expectations()))
    out = checks(CollectorRunner(c).run_once().output)
    assert out[("mounts.responsive", "/mnt/a")].status == "ok" and out[("mounts.space", "/mnt/a")].status == "ok"
    assert out[("mounts.responsive", "/mnt/b")].status == "unknown"  # not read, so not probed: never ok
    assert out[("mounts.responsive", "/mnt/c")].is_fatal


def test_config_is_checked():
    with pytest.raises(ConfigError, match="mounts.writable\\[0\\]: /x is not in mounts.paths"):
        build(MountsSettings, {"writable": ["/x"]}, "mounts")
    with pytest.raises(ConfigError, match="mounts.space_fatal_ratio"):
        build(MountsSettings, {"space_fatal_ratio": 0.5}, "mounts")


def test_once_shows_node_checks_in_their_own_section():
    import sys
    from tests.support import ROOT
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--once", "--snapshot", "node-mount-faults"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 1, p.stderr
    head, _, section = p.stdout.partition("node checks (kernel log, mounts, PCIe AER, NVMe)\n")
    assert "mounts.responsive" in section and "/mnt/datasets" in section and "FATAL" in section
    assert "mounts." not in head.split("\n", 2)[2]  # the device table has none of them
    assert "2 fatal" in head.splitlines()[0]  # the summary line counts every section
