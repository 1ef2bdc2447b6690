"""NVMe SMART logs: nvme-cli's JSON shapes (fixtures/nvme, cited in fixtures/README.md) parsed field by field,
and the collector running the tool as a real child process: a fake `nvme` first on PATH (no NVMe drive exists
on this VM) that prints a fixture, fails, hangs, or is missing; controllers from a sysfs tree in the kernel's
layout (class/nvme/nvmeN -> the PCI device's nvme/nvmeN, with its hwmon directory), built here since the VM
has none. The access check (CAP_SYS_ADMIN, /dev/nvmeN) is injected here; tests/deploy/test_deploy_capabilities.py
runs it under the DaemonSet's real capability set."""
from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.base.collector import Context
from agent.base.config import Expectations, build
from agent.base.findings import node_status
from agent.base.roots import Roots
from agent.sources.nvme.collector import CAP_SYS_ADMIN, NvmeCollector, NvmeSettings
from agent.sources.nvme.parsers import parse_smart_log
from tests.support import ROOT
from tests.support.mutate import FAST

NVME = ROOT / "fixtures" / "nvme"


def test_nvme_cli_1x_integers():
    s = parse_smart_log((NVME / "smart-log-wd-2tb.json").read_text())
    assert (s.critical_warning, s.temperature_k, s.avail_spare, s.spare_thresh, s.percent_used, s.media_errors,
            s.num_err_log_entries) == (0, 315, 100, 10, 3, 0, 1)
    assert not s.invalid


def test_a_real_published_log_with_sensor_temperatures_is_healthy():
    """A real drive's log (netdata/netdata#8594): per-sensor temperature keys the parser does not judge are
    ignored, not invalid, and a new drive reads healthy with its real values."""
    s = parse_smart_log((NVME / "smart-log-samsung-pm983.json").read_text())
    assert (s.critical_warning, s.temperature_k, s.avail_spare, s.spare_thresh, s.percent_used, s.media_errors,
            s.power_on_hours) == (0, 322, 100, 10, 0, 0, 4221)
    assert not s.invalid and s.warnings() == []


def test_nvme_cli_2x_verbose_object_and_string_counters():
    s = parse_smart_log((NVME / "smart-log-verbose-degraded.json").read_text())
    assert s.critical_warning == 13 and s.media_errors == 12 and s.power_on_hours == 31877
    assert s.warnings() == ["available spare below threshold", "NVM subsystem reliability degraded",
                            "media placed in read-only mode"]


def test_a_bad_field_costs_that_field():
    s = parse_smart_log('{"critical_warning": 0, "media_errors": "-3", "percent_used": 1e400, "temperature": 300}')
    assert s.critical_warning == 0 and s.temperature_k == 300 and s.media_errors is None and s.percent_used is None
    assert len(s.invalid) == 2


@pytest.mark.parametrize("text", ["", "[]", "not json", "{" * 100000])
def test_unusable_output_is_an_error(text):
    with pytest.raises(ValueError):
        parse_smart_log(text)


@FAST
@given(st.dictionaries(st.sampled_from(["critical_warning", "media_errors", "percent_used", "avail_spare",
                                        "temperature", "power_on_hours"]),
                       st.one_of(st.integers(), st.text(max_size=30), st.floats(), st.none(), st.booleans(),
                                 st.dictionaries(st.just("value"), st.integers()))))
def test_parser_never_raises_on_a_json_object(doc):
    import json
    s = parse_smart_log(json.dumps(doc))
    for v in (s.critical_warning, s.media_errors, s.percent_used, s.avail_spare):
        assert v is None or (isinstance(v, int) and v >= 0)


PCI = "devices/pci0000:00/0000:00:01.1/0000:01:00.0"


def fake_node(tmp_path, script: str | None, ctrls=("nvme0", "nvme1")):
    """Controllers where the kernel puts them (class/nvme/nvmeN a symlink into the PCI device), each with a
    state file and a hwmon directory; /dev/nvmeN stand-ins (the access check looks for the node)."""
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "nvme").mkdir(parents=True)
    (tmp_path / "dev").mkdir()
    for i, c in enumerate(ctrls):
        d = sysfs / PCI.replace("01:00.0", f"0{i + 1}:00.0") / "nvme" / c
        (d / f"hwmon{i + 2}").mkdir(parents=True)
        for name, text in (("state", "live"), ("model", "WDC WDS200T2B0C-00PXH0"), ("serial", f"2035AB44{i}"),
                           ("firmware_rev", "211070WD"), ("transport", "pcie")):
            (d / name).write_text(text + "\n")
        (d / f"hwmon{i + 2}" / "name").write_text("nvme\n")
        (d / f"hwmon{i + 2}" / "temp1_input").write_text("41850\n")
        (d / f"hwmon{i + 2}" / "temp1_alarm").write_text("0\n")
        (sysfs / "class" / "nvme" / c).symlink_to(d)
        (tmp_path / "dev" / c).write_text("")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if script is not None:
        p = bindir / "nvme"
        p.write_text("#!/bin/sh\n" + script)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return sysfs, bindir


def collector(tmp_path, sysfs, caps=1 << CAP_SYS_ADMIN, **settings):
    return NvmeCollector(build(NvmeSettings, settings, "nvme"), Context(Roots(sysfs, tmp_path), "n", Expectations()),
                         dev=tmp_path / "dev", capabilities=lambda: caps)


def run(tmp_path, monkeypatch, script, caps=1 << CAP_SYS_ADMIN, edit=None, **settings):
    sysfs, bindir = fake_node(tmp_path, script)
    if edit:
        edit(tmp_path, sysfs)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin" if script is not None else str(bindir))
    c = collector(tmp_path, sysfs, caps, **settings)
    out = c.evaluate(c.read(), None, None)
    return {(f.check, f.entity): f for f in out.findings}


def test_the_real_tool_path(tmp_path, monkeypatch):
    script = (f'case "$2" in /dev/nvme0) cat {NVME / "smart-log-wd-2tb.json"};; '
              f'*) cat {NVME / "smart-log-verbose-degraded.json"};; esac\n')
    f = run(tmp_path, monkeypatch, script)
    assert f[("nvme.critical_warning", "nvme0")].status == "ok"
    assert f[("nvme.critical_warning", "nvme1")].is_fatal
    assert f[("nvme.percentage_used", "nvme1")].value == 104


def test_a_failing_hanging_or_missing_tool_is_unknown(tmp_path, monkeypatch):
    f = run(tmp_path / "a", monkeypatch, 'echo "nvme0: Permission denied" >&2; exit 1\n')
    assert f[("nvme.critical_warning", "nvme0")].status == "unknown"
    assert "Permission denied" in f[("nvme.critical_warning", "nvme0")].message
    f = run(tmp_path / "b", monkeypatch, "exec sleep 30\n", smi_timeout_seconds=0.5)
    assert f[("nvme.media_errors", "nvme1")].status == "unknown"
    f = run(tmp_path / "c", monkeypatch, None)
    assert "not available" in f[("nvme.critical_warning", "nvme0")].message


def test_a_number_past_int_limits_costs_only_its_field():
    """Regression (bench/fuzz_parsers.py): a 5,000-digit value made json.loads raise (int()'s 4,300-digit limit),
    and the whole log, critical warning included, was lost for one field."""
    text = (NVME / "smart-log-wd-2tb.json").read_text().replace('"media_errors":0', '"media_errors":' + "9" * 5000)
    assert "9" * 5000 in text
    s = parse_smart_log(text)
    assert s.critical_warning == 0 and s.percent_used == 3 and s.media_errors is None
    assert s.invalid == ["media_errors=" + "9" * 24]


SMART = ("nvme.critical_warning", "nvme.media_errors", "nvme.percentage_used")


def test_without_the_device_node_the_smart_checks_say_what_to_enable(tmp_path, monkeypatch):
    """The base DaemonSet: no /dev/nvmeN in the container. Unknown with the exact message, never ok, and the
    unprivileged checks (state, temperature from sysfs) still run."""
    marker = tmp_path / "ran"
    f = run(tmp_path, monkeypatch, f"touch {marker}; cat {NVME / 'smart-log-wd-2tb.json'}\n",
            edit=lambda root, _: [p.unlink() for p in (root / "dev").iterdir()])
    for check in SMART:
        for ctrl in ("nvme0", "nvme1"):
            got = f[(check, ctrl)]
            assert (got.status, got.severity) == ("unknown", "warning")
            assert got.message == f"nvme smart-log needs CAP_SYS_ADMIN and /dev/{ctrl}: enable component nvme-smart"
    assert not marker.exists()  # the tool is not even tried
    assert f[("nvme.controller_state", "nvme0")].status == "ok"
    assert f[("nvme.temperature", "nvme1")].status == "ok" and f[("nvme.temperature", "nvme1")].value == 41.85
    assert node_status(f.values()) == "healthy"  # warning checks that could not run leave the node alone


def test_without_cap_sys_admin_the_smart_checks_say_what_to_enable(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    f = run(tmp_path, monkeypatch, f"touch {marker}; cat {NVME / 'smart-log-wd-2tb.json'}\n", caps=0x1ffffffffff & ~(1 << 21))
    assert f[("nvme.media_errors", "nvme0")].message == \
        "nvme smart-log needs CAP_SYS_ADMIN and /dev/nvme0: enable component nvme-smart"
    assert not marker.exists()


def test_a_refused_ioctl_says_the_same(tmp_path, monkeypatch):
    """The capability and the node are there but the device cgroup refuses the open (a hostPath /dev without
    privileged): nvme-cli's own error, after the same instruction."""
    f = run(tmp_path, monkeypatch, 'echo "open: Operation not permitted" >&2; exit 1\n')
    msg = f[("nvme.percentage_used", "nvme1")].message
    assert msg.startswith("nvme smart-log needs CAP_SYS_ADMIN and /dev/nvme1: enable component nvme-smart (")
    assert "Operation not permitted" in msg


def test_sysfs_state_and_temperature_without_privileges(tmp_path, monkeypatch):
    def edit(root, sysfs):
        (sysfs / "class/nvme/nvme0/state").write_text("dead\n")
        (sysfs / "class/nvme/nvme1/state").write_text("resetting\n")
        (sysfs / "class/nvme/nvme1/hwmon3/temp1_alarm").write_text("1\n")
        (sysfs / "class/nvme/nvme1/hwmon3/temp1_input").write_text("-999999999\n")  # below absolute zero
        for p in (root / "dev").iterdir():
            p.unlink()
    sysfs, bindir = fake_node(tmp_path, None)
    edit(tmp_path, sysfs)
    c = collector(tmp_path, sysfs)
    out = c.evaluate(c.read(), None, None)
    f = {(x.check, x.entity): x for x in out.findings}
    assert f[("nvme.controller_state", "nvme0")].is_fatal
    assert (f[("nvme.controller_state", "nvme1")].status, f[("nvme.controller_state", "nvme1")].severity) == \
        ("unhealthy", "warning")
    assert f[("nvme.temperature", "nvme1")].status == "unhealthy"
    temps = {lab["device"]: v for _, lab, v in out.metrics.families["vigil_nvme_temperature_celsius"].samples}
    assert temps == {"nvme0": 41.85}  # the impossible reading is not exported
    info = out.metrics.families["vigil_nvme_info"].samples
    assert {(lab["device"], lab["state"], lab["model"]) for _, lab, _ in info} == {
        ("nvme0", "dead", "WDC WDS200T2B0C-00PXH0"), ("nvme1", "resetting", "WDC WDS200T2B0C-00PXH0")}


def test_a_snapshot_without_smart_logs_still_has_the_controllers(tmp_path):
    snap = tmp_path / "snap"
    sysfs, _ = fake_node(snap, None, ctrls=("nvme0",))
    c = NvmeCollector(NvmeSettings(), Context(Roots(sysfs, snap / "proc", snapshot=snap), "n", Expectations()))
    f = {(x.check, x.entity): x for x in c.evaluate(c.read(), None, None).findings}
    assert f[("nvme.critical_warning", "nvme0")].status == "unknown"
    assert "not in the snapshot" in f[("nvme.critical_warning", "nvme0")].message
    assert f[("nvme.controller_state", "nvme0")].status == "ok"


def test_a_snapshot_carries_what_sysfs_showed(tmp_path):
    """`agent snapshot` of a node whose SMART logs it cannot read (no nvme-cli, or no access) keeps the
    controllers' sysfs view: the replay judges state and temperature and names the missing log."""
    from agent.run.snapshot import capture
    sysfs, _ = fake_node(tmp_path / "live", None, ctrls=("nvme0",))
    (sysfs / "class/nvme/nvme0/hwmon2/temp1_alarm").write_text("1\n")
    (tmp_path / "live" / "proc").mkdir()
    capture(tmp_path / "snap", "n", sysfs=sysfs, procfs=tmp_path / "live" / "proc")
    roots = Roots.from_snapshot(tmp_path / "snap")
    c = NvmeCollector(NvmeSettings(), Context(roots, "n", Expectations()))
    f = {(x.check, x.entity): x for x in c.evaluate(c.read(), None, None).findings}
    assert f[("nvme.controller_state", "nvme0")].status == "ok"
    assert f[("nvme.temperature", "nvme0")].status == "unhealthy" and f[("nvme.temperature", "nvme0")].value == 41.85
    assert f[("nvme.media_errors", "nvme0")].status == "unknown"


def test_the_5_5_kernel_hwmon_place(tmp_path):
    """Kernel 5.5 registered the hwmon device on the PCI function (nvmeN/device/hwmon/hwmonM), later kernels
    on the controller (nvmeN/hwmonM): both are read."""
    sysfs, _ = fake_node(tmp_path, None, ctrls=("nvme0",))
    ctrl = sysfs / "class/nvme/nvme0"
    hw = ctrl / "hwmon2"
    (ctrl / "device").symlink_to(ctrl.resolve().parent.parent)  # the PCI function, as in the kernel's tree
    moved = ctrl.resolve().parent.parent / "hwmon" / "hwmon2"
    moved.parent.mkdir()
    hw.rename(moved)
    (moved / "temp1_input").write_text("38000\n")
    c = collector(tmp_path, sysfs)
    out = c.evaluate(c.read(), None, None)
    assert out.metrics.value("vigil_nvme_temperature_celsius", device="nvme0") == 38.0
