import os
import shutil
import tempfile
from pathlib import Path

import pytest

from agent.base.collector import Context, Facts, RunMode
from agent.sources.containers.collector import ContainersCollector, ContainersSettings
from agent.base.config import Expectations, build
from agent.run.runner import CollectorRunner

from .helpers import Containerd, PodResources, write_oci_image


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "busybox-oci.tar"
    write_oci_image(path)
    return path


@pytest.fixture
def containerd(oci_image):
    """A real containerd daemon, private to the test. Missing parts fail the test: CI installs them
    (scripts/install-deps.sh: containerd, runc, busybox-static) and runs as root."""
    missing = [b for b in ("containerd", "ctr", "runc") if shutil.which(b) is None]
    if missing or not Path("/bin/busybox").exists():
        pytest.fail(f"missing {missing or ['/bin/busybox']}: run scripts/install-deps.sh")
    if os.geteuid() != 0:
        pytest.fail("containerd tests run a private daemon and need root (CI runs them as root)")
    daemon = Containerd(oci_image)
    yield daemon
    daemon.cleanup()


@pytest.fixture
def pod_resources():
    d = tempfile.mkdtemp(prefix="vp-", dir="/tmp")
    server = PodResources(f"{d}/kubelet.sock")
    yield server
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_collector(tmp_path):
    """Build a containers collector the way the agent does (config section -> settings -> collector); every
    collector is closed at the end so no watcher thread outlives its test."""
    made = []

    def make(socket="/nonexistent/containerd.sock", pod_resources_socket="/nonexistent/kubelet.sock",
             sysfs=None, procfs=None, shared=None, snapshot=None, **section):
        from agent.base.roots import Roots

        settings = build(ContainersSettings, {"socket": socket, "pod_resources_socket": pod_resources_socket,
                                              **section}, "containers")
        roots = Roots.from_snapshot(snapshot) if snapshot else Roots(Path(sysfs or tmp_path / "sys"),
                                                                     Path(procfs or tmp_path / "proc"))
        shared = dict(shared or {})
        mode = RunMode(once=shared.pop("once", False))
        ctx = Context(roots, "node-1", Expectations(), mode=mode, facts=Facts(**shared))
        c = ContainersCollector(settings, ctx)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Cycles:
    """Runs a collector cycle by cycle through the real runner, keeping every finding it produced."""

    def __init__(self, collector) -> None:
        self.collector = collector
        self.runner = CollectorRunner(collector)
        self.findings = []
        self.result = None

    def once(self):
        self.result = self.runner.run_once()
        assert self.result.success, [f.message for f in self.result.output.findings]
        self.findings += self.result.output.findings
        return self.result

    def value(self, name, **labels):
        return self.result.output.metrics.value(name, **labels)

    def until(self, what, probe, timeout=15.0):
        from .helpers import wait_for

        return wait_for(what, lambda: (self.once(), probe())[1], timeout=timeout)

    def findings_of(self, check):
        return [f for f in self.findings if f.check == check]


@pytest.fixture
def cycles():
    return Cycles
