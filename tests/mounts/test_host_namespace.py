"""The mounts source as it runs in a pod: the mount table is the host's (pid 1's, through the host's /proc at
--procfs), and its paths exist only in the host's mount namespace. Real namespaces, made by the test (root):

  "host"   `unshare --mount --pid --fork --mount-proc`: its own mount namespace where a tmpfs (size 3m) is
           mounted on a directory, and its own PID namespace where it is pid 1, with its own /proc; from here
           that /proc is /proc/<its pid>/root/proc, the test's stand-in for the pod's /host/proc;
  "pod"    the agent, here: the same directory exists but nothing is mounted on it (private propagation).
Probed in the pod's namespace the directory answers with the size of the filesystem under it (a hung or gone
share would look fine); through the host's root it is the tmpfs. The agent runs as the real CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.base.collector import Context, RunMode
from agent.base.config import Expectations, build
from agent.base.roots import Roots
from agent.sources.mounts.collector import MountsCollector, MountsSettings
from tests.support import ROOT, is_root

pytestmark = pytest.mark.skipif(not is_root() or not shutil.which("unshare"), reason="needs root and unshare")
SIZE = 3 * 1024 * 1024


@pytest.fixture
def host(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    ready = tmp_path / "ready"
    script = (f"mount -t tmpfs -o size=3m vigil-host-share {share} && touch {share}/from-the-host && "
              f"touch {ready} && exec sleep 600")
    p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
                          "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() < deadline, "the host namespace did not start"
        time.sleep(0.05)
    try:
        yield p.pid, share
    finally:
        p.kill()
        p.wait(timeout=10)


def agent(tmp_path, procfs: Path, **mounts):
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(json.dumps({"mounts": {"fs_types": [], "ephemeral_paths": [], **mounts}}))
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--once", "--json", "--only", "mounts", "--config",
                        str(cfg), "--procfs", str(procfs), "--node-name", "n"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode in (0, 1, 2), p.stderr
    return json.loads(p.stdout)


def finding(doc, check, entity):
    found = [f for f in doc["findings"] if f["check"] == check and f["entity"] == entity]
    assert len(found) == 1, doc["findings"]
    return found[0]


def test_a_host_mount_is_probed_through_the_host_root(tmp_path, host):
    pid, share = host
    host_proc = Path(f"/proc/{pid}/root/proc")
    assert str(share) in (host_proc / "1" / "mounts").read_text()  # the host's table lists it ...
    assert str(share) not in Path("/proc/self/mounts").read_text()  # ... and this namespace has nothing there
    assert os.statvfs(share).f_blocks * os.statvfs(share).f_frsize != SIZE
    doc = agent(tmp_path, host_proc, paths=[str(share)], writable=[str(share)])
    assert finding(doc, "mounts.mounted", str(share))["status"] == "ok"
    assert finding(doc, "mounts.responsive", str(share))["status"] == "ok"
    assert finding(doc, "mounts.writable", str(share))["status"] == "ok"  # written in the host's tmpfs
    # The host's tmpfs was the one probed: its size, not the size of what lies under the pod's directory.
    col = MountsCollector(build(MountsSettings, {"paths": [str(share)], "fs_types": [], "ephemeral_paths": []},
                                "mounts"), Context(Roots(procfs=host_proc), "n", Expectations(), mode=RunMode(once=True)))
    out = col.evaluate(col.read(), None, None)
    assert out.metrics.value("vigil_mount_size_bytes", mountpoint=str(share)) == SIZE
    assert col.host_root() == f"{host_proc}/1/root"
    assert not (share / "from-the-host").exists() and (host_proc / "1" / "root" / str(share).lstrip("/") /
                                                       "from-the-host").exists()


def test_the_share_gone_on_the_host_is_not_mounted_though_the_pod_has_the_directory(tmp_path, host):
    pid, share = host
    host_proc = Path(f"/proc/{pid}/root/proc")
    subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", str(share)], check=True, capture_output=True)
    doc = agent(tmp_path, host_proc, paths=[str(share)])
    f = finding(doc, "mounts.mounted", str(share))
    assert (f["status"], f["severity"]) == ("unhealthy", "fatal")


def test_an_explicit_host_root_wins(tmp_path, host):
    """mounts.host_root (the DaemonSet's /host/root) is used as given: here pointed at the host's root."""
    pid, share = host
    host_proc = Path(f"/proc/{pid}/root/proc")
    doc = agent(tmp_path, Path("/proc"), paths=[str(share)], host_root=f"/proc/{pid}/root")
    # The table is this namespace's pid 1's (no share there): not mounted, whatever the root.
    assert finding(doc, "mounts.mounted", str(share))["status"] == "unhealthy"
    doc = agent(tmp_path, host_proc, paths=[str(share)], host_root=f"/proc/{pid}/root")
    assert finding(doc, "mounts.responsive", str(share))["status"] == "ok"
