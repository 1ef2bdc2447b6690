"""Each capability the agent DaemonSet adds is needed, and each feature works with exactly the DaemonSet's set:
the real operations (BCC loading a tracepoint program, a sock_ops attach to a cgroup v2, reading /dev/kmsg,
prlimit on another process, the real tuner writing sysctls) run as root under `setpriv` with the capability set
a container gets from the rendered manifest (bounding = effective = permitted = the `add` list, as runc sets
them for root), then with one capability removed.

Also proven: the tuner's sysctl writes need none of them (root owns /proc/sys in the host's namespaces;
NET_ADMIN is *not* what net.* sysctls need), kernel.numa_balancing needs SYS_ADMIN (the tuner-enforce
component's addition), the nvme source says exactly what to enable under the DaemonSet's set and tries the
SMART log with the nvme-smart component's (its capability check reads the real effective set), and a socket in a read-only bind-mounted directory stays usable and survives its daemon
re-creating it, while a bind-mounted socket file goes stale (why the DaemonSet mounts /run/containerd and
/var/lib/kubelet/pod-resources as directories, read-only).

Root only (setpriv, unshare, network namespaces, BCC); CI runs the suite as root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from .helpers import AGENT, DAEMONSET, container, kustomize, rendered

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv, namespaces, BCC); CI runs as root")

BASE_CAPS = container(rendered("base"), "DaemonSet", "vigil-agent", "agent")["securityContext"]["capabilities"]["add"]
PY = "/usr/bin/python3"  # Debian's python: BCC's bindings are built for it


def bounding() -> set[str]:
    """Capabilities this machine's root holds (a container can get no others)."""
    mask = int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("CapBnd")).split()[1], 16)
    names = {21: "SYS_ADMIN", 24: "SYS_RESOURCE", 12: "NET_ADMIN", 34: "SYSLOG", 38: "PERFMON", 39: "BPF"}
    return {n for bit, n in names.items() if mask >> bit & 1}


def run_with(caps: list[str], argv: list[str], netns: str | None = None, timeout: float = 120, **kw):
    """argv as root with exactly `caps` (what runc gives a root container: bounding = effective = permitted)."""
    assert shutil.which("setpriv"), "setpriv (util-linux) is missing"
    spec = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    cmd = ["setpriv", f"--bounding-set={spec}", "--inh-caps=-all", "--ambient-caps=-all", "--", *argv]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def without(cap: str) -> list[str]:
    assert cap in BASE_CAPS, f"{cap} is not in the DaemonSet"
    return [c for c in BASE_CAPS if c != cap]


def test_the_daemonset_adds_exactly_these():
    assert BASE_CAPS == ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYSLOG"]


# -- netflow: BCC ------------------------------------------------------------------------------------------------
BCC_TRACEPOINT = textwrap.dedent("""
    from bcc import BPF
    b = BPF(text="TRACEPOINT_PROBE(sock, inet_sock_set_state) { return 0; }")
    print("attached", b.num_open_tracepoints())
""")


def bcc_ready():
    if not Path("/usr/lib/python3/dist-packages/bcc").is_dir():
        pytest.fail("python3-bpfcc is missing: scripts/install-deps.sh installs it")
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        pytest.fail("no kernel headers for BCC: scripts/setup-bpf.sh links them")
    if not Path("/sys/kernel/tracing/events").is_dir():
        pytest.fail("tracefs is not mounted: scripts/setup-bpf.sh mounts it")


def test_bcc_tracepoint_loads_with_the_daemonset_caps():
    bcc_ready()
    p = run_with(BASE_CAPS, [PY, "-c", BCC_TRACEPOINT])
    assert p.returncode == 0 and "attached 1" in p.stdout, p.stderr[-2000:]


@pytest.mark.parametrize("cap", ["BPF", "PERFMON"])
def test_bcc_tracepoint_needs(cap):
    bcc_ready()
    p = run_with(without(cap), [PY, "-c", BCC_TRACEPOINT])
    assert p.returncode != 0, f"loaded without {cap}"
    assert "Need super-user privileges" in p.stderr or "Operation not permitted" in p.stderr, p.stderr[-2000:]


BCC_SOCK_OPS = textwrap.dedent("""
    import os, sys
    from bcc import BPF, BPFAttachType
    b = BPF(text="int ops(struct bpf_sock_ops *skops) { return 1; }")
    fn = b.load_func("ops", BPF.SOCK_OPS)
    fd = os.open(sys.argv[1], os.O_RDONLY)
    BPF.attach_func(fn, fd, BPFAttachType.CGROUP_SOCK_OPS)
    BPF.detach_func(fn, fd, BPFAttachType.CGROUP_SOCK_OPS)
    print("attached")
""")


@pytest.fixture
def cgroup2():
    """A child cgroup of the cgroup v2 hierarchy (never the root: nothing on the host is affected)."""
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    root = next((m[1] for m in mounts if m[2] == "cgroup2"), None)
    if root is None:
        pytest.fail("no cgroup v2 hierarchy mounted")
    d = Path(root) / f"vigil-captest-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    try:
        yield d
    finally:
        d.rmdir()


def test_sock_ops_attach_with_the_daemonset_caps(cgroup2):
    bcc_ready()
    p = run_with(BASE_CAPS, [PY, "-c", BCC_SOCK_OPS, str(cgroup2)])
    assert p.returncode == 0 and "attached" in p.stdout, p.stderr[-2000:]


def test_sock_ops_attach_needs_net_admin(cgroup2):
    bcc_ready()
    p = run_with(without("NET_ADMIN"), [PY, "-c", BCC_SOCK_OPS, str(cgroup2)])
    assert p.returncode != 0, "attached without NET_ADMIN"


# -- GPU events: /dev/kmsg -----------------------------------------------------------------------------------------
KMSG = "import os; fd = os.open('/dev/kmsg', os.O_RDONLY | os.O_NONBLOCK); print('read', len(os.read(fd, 8192)))"


def test_kmsg_reads_with_the_daemonset_caps():
    p = run_with(BASE_CAPS, [PY, "-c", KMSG])
    assert p.returncode == 0 and p.stdout.startswith("read "), p.stderr


def test_kmsg_needs_syslog():
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() != "1":
        pytest.fail("kernel.dmesg_restrict is 0 here: /dev/kmsg would be readable without SYSLOG; the test cannot "
                    "show the need (production kernels default to 1)")
    p = run_with(without("SYSLOG"), [PY, "-c", KMSG])
    assert p.returncode != 0 and "Operation not permitted" in p.stderr


# -- tuner: prlimit on host daemons --------------------------------------------------------------------------------
PRLIMIT = textwrap.dedent("""
    import resource, subprocess, psutil
    child = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096)))
    try:
        p = psutil.Process(child.pid)
        p.rlimit(psutil.RLIMIT_NOFILE, (2048, 4096))          # within the hard limit: no capability
        print("soft", p.rlimit(psutil.RLIMIT_NOFILE))
        p.rlimit(psutil.RLIMIT_NOFILE, (1048576, 1048576))    # raising the hard limit
        print("hard", p.rlimit(psutil.RLIMIT_NOFILE))
    finally:
        child.kill()
""")


def test_prlimit_raising_a_hard_limit_fails_without_sys_resource():
    p = run_with(without("SYS_RESOURCE"), [sys.executable, "-c", PRLIMIT])
    assert "soft (2048, 4096)" in p.stdout, p.stderr
    assert p.returncode != 0 and "AccessDenied" in p.stderr


def test_prlimit_raising_a_hard_limit_works_with_the_daemonset_caps():
    if "SYS_RESOURCE" not in bounding():
        pytest.skip("this machine's root lacks CAP_SYS_RESOURCE itself (CapBnd), so no process here can raise a "
                    "hard limit: only the other half (fails without it) is shown")
    p = run_with(BASE_CAPS, [sys.executable, "-c", PRLIMIT])
    assert p.returncode == 0 and "hard (1048576, 1048576)" in p.stdout, p.stderr


# -- tuner: sysctls ----------------------------------------------------------------------------------------------
@pytest.fixture
def netns():
    name = f"vigil-cap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_tuner_writes_net_sysctls_with_no_capability_at_all(netns, tmp_path):
    """The real agent's tuner (--once --tune, enforce) in a network namespace of our own, with *no* capability:
    root in the host's user namespace owns /proc/sys/net, so NET_ADMIN is not needed for sysctls."""
    host_before = Path("/proc/sys/net/core/somaxconn").read_text()
    cur = int(subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/net/core/somaxconn"],
                             capture_output=True, text=True, check=True).stdout)
    want = cur + 17
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"sysctl:\n  mode: enforce\n  profile:\n    net.core.somaxconn: {{value: {want}, policy: exact}}\n"
                   "  file_limits: {}\n")
    p = run_with([], [str(AGENT), "--once", "--json", "--tune", "--only", "sysctl", "--config", str(cfg)], netns=netns)
    after = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/sys/net/core/somaxconn"],
                           capture_output=True, text=True, check=True).stdout
    assert int(after) == want, p.stdout + p.stderr
    assert Path("/proc/sys/net/core/somaxconn").read_text() == host_before  # the host's own is untouched


@pytest.mark.parametrize("key", ["vm/max_map_count", "fs/file-max", "kernel/pid_max"])
def test_host_global_sysctls_write_with_no_capability(key):
    """Writing the current value back (no change on the host): the permission check without the effect."""
    p = run_with([], ["sh", "-c", f'v=$(cat /proc/sys/{key}) && echo "$v" > /proc/sys/{key}'])
    assert p.returncode == 0, p.stderr


def test_numa_balancing_needs_sys_admin():
    """kernel.numa_balancing (in the shipped profile, exact 0) refuses writers without SYS_ADMIN: the
    tuner-enforce component adds it; the base leaves it out."""
    path = Path("/proc/sys/kernel/numa_balancing")
    if not path.exists():
        pytest.fail("this kernel has no kernel.numa_balancing")
    write = ["sh", "-c", f'v=$(cat {path}) && echo "$v" > {path}']
    assert run_with(BASE_CAPS, write).returncode != 0, "written without SYS_ADMIN"
    enforce = kustomize_component_caps("tuner-enforce")
    assert "SYS_ADMIN" in enforce and run_with(enforce, write).returncode == 0


def kustomize_component_caps(component: str) -> list[str]:
    import tempfile

    import yaml
    with tempfile.TemporaryDirectory() as d:
        Path(d, "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(DAEMONSET / "base", d)],
            "components": [os.path.relpath(DAEMONSET / "components" / component, d)]}))
        objs = kustomize(Path(d))
    return [c for c in container(objs, "DaemonSet", "vigil-agent", "agent")["securityContext"]["capabilities"]["add"]
            if c in bounding()]


# -- kernel rules: /dev/kmsg ------------------------------------------------------------------------------------
KERNEL_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from agent.base.collector import Context
    from agent.base.config import Expectations, build
    from agent.base.roots import Roots
    from agent.sources.kernel.collector import KernelCollector, KernelSettings
    c = KernelCollector(build(KernelSettings, {"state_dir": ""}, "kernel"), Context(Roots(), "n", Expectations()))
    print(json.dumps({f.check: [f.status, f.message] for f in c.evaluate(c.read(), None, None).findings}))
""")


def test_kernel_rules_without_syslog_are_unknown_and_say_why():
    """The kernel source on the real /dev/kmsg: with the DaemonSet's set it reads the log; without SYSLOG
    (kernel.dmesg_restrict=1 here) every condition is unknown, never ok, and the message says what is needed."""
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() != "1":
        pytest.fail("kernel.dmesg_restrict is 0 here: /dev/kmsg would be readable without SYSLOG")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = run_with(without("SYSLOG"), [sys.executable, "-c", KERNEL_CHILD], env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["kernel.kernel_deadlock"][0] == "unknown"
    assert "Operation not permitted (needs CAP_SYSLOG where kernel.dmesg_restrict=1, and in a container device " \
        "access to /dev/kmsg" in got["kernel.kernel_deadlock"][1]
    p = run_with(BASE_CAPS, [sys.executable, "-c", KERNEL_CHILD], env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["kernel.readonly_filesystem"][0] != "unknown"


# -- nvme: the SMART log needs SYS_ADMIN (components/nvme-smart) ---------------------------------------------------
NVME_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from agent.base.collector import Context
    from agent.base.config import Expectations
    from agent.base.roots import Roots
    from agent.sources.nvme.collector import NvmeCollector, NvmeSettings
    root = Path(sys.argv[1])
    c = NvmeCollector(NvmeSettings(), Context(Roots(root / "sys", root), "n", Expectations()), dev=root / "dev")
    print(json.dumps({f"{f.check} {f.entity}": [f.status, f.message] for f in c.evaluate(c.read(), None, None).findings}))
""")


def test_nvme_smart_log_without_sys_admin_says_what_to_enable(tmp_path):
    """The nvme source as the DaemonSet runs it (its capability set, no SYS_ADMIN), then with the nvme-smart
    component's set. No NVMe drive exists here: the sysfs tree and /dev/nvmeN are stand-ins and `nvme` is a
    fake printing a real nvme-cli output; what is real is the capability set the check reads."""
    from tests.nvme.test_nvme import NVME, fake_node
    _, bindir = fake_node(tmp_path, f"cat {NVME / 'smart-log-wd-2tb.json'}\n", ctrls=("nvme0",))
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def findings(caps):
        p = run_with(caps, [sys.executable, "-c", NVME_CHILD, str(tmp_path)], env=env, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    base = findings(BASE_CAPS)
    for check in ("nvme.critical_warning", "nvme.media_errors", "nvme.percentage_used"):
        assert base[f"{check} nvme0"] == ["unknown", "nvme smart-log needs CAP_SYS_ADMIN and /dev/nvme0: "
                                                     "enable component nvme-smart"]
    assert base["nvme.controller_state nvme0"][0] == "ok"  # sysfs needs no capability
    smart = kustomize_component_caps("nvme-smart")
    assert "SYS_ADMIN" in smart and set(smart) - {"SYS_ADMIN"} <= set(BASE_CAPS)  # (those this machine has)
    with_it = findings(smart)
    assert with_it["nvme.critical_warning nvme0"] == ["ok", "no critical warning"]
    assert with_it["nvme.percentage_used nvme0"][0] == "ok"


# -- sockets: directories, read-only ------------------------------------------------------------------------------
SOCKETS = textwrap.dedent("""
    set -e
    d=$1
    mkdir -p $d/daemon $d/dir-mount $d/file-mount
    python3 $d/serve.py $d/daemon/api.sock first & first=$!
    while [ ! -S $d/daemon/api.sock ]; do sleep 0.05; done
    mount --bind $d/daemon $d/dir-mount && mount -o remount,bind,ro $d/dir-mount
    touch $d/file-mount/api.sock && mount --bind $d/daemon/api.sock $d/file-mount/api.sock
    setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- python3 $d/ask.py $d/dir-mount/api.sock
    kill $first; wait $first 2>/dev/null || true
    rm -f $d/daemon/api.sock                      # the daemon restarts: a new socket inode
    python3 $d/serve.py $d/daemon/api.sock second & second=$!
    while [ ! -S $d/daemon/api.sock ]; do sleep 0.05; done
    setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- python3 $d/ask.py $d/dir-mount/api.sock
    setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- python3 $d/ask.py $d/file-mount/api.sock || echo "file-mount: stale"
    kill $second
""")
SERVE = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
    while True:
        c, _ = s.accept(); c.sendall(sys.argv[2].encode()); c.close()
""")
ASK = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(sys.argv[1].split("/")[-2], s.recv(64).decode())
""")


def test_socket_directories_read_only_survive_a_daemon_restart(tmp_path):
    (tmp_path / "serve.py").write_text(SERVE)
    (tmp_path / "ask.py").write_text(ASK)
    (tmp_path / "run.sh").write_text(SOCKETS)
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", str(tmp_path / "run.sh"),
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "dir-mount first" in p.stdout, p.stdout + p.stderr  # read-only directory mount, no capability
    assert "dir-mount second" in p.stdout, p.stdout + p.stderr  # still reaches the restarted daemon
    assert "file-mount: stale" in p.stdout and "file-mount second" not in p.stdout, p.stdout + p.stderr
