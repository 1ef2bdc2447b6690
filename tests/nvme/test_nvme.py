"""NVMe SMART logs: nvme-cli's JSON shapes (fixtures/nvme, cited in fixtures/README.md) parsed field by field,
and the collector running the tool as a real child process: a fake `nvme` first on PATH (no NVMe drive exists
on this VM) that prints a fixture, fails, hangs, or is missing; controllers from a sysfs tree."""
from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.base.collector import Context
from agent.base.config import Expectations, build
from agent.base.roots import Roots
from agent.sources.nvme.collector import NvmeCollector, NvmeSettings
from agent.sources.nvme.parsers import parse_smart_log
from tests.support import ROOT
from tests.support.mutate import FAST

NVME = ROOT / "fixtures" / "nvme"


def test_nvme_cli_1x_integers():
    s = parse_smart_log((NVME / "smart-log-wd-2tb.json").read_text())
    assert (s.critical_warning, s.temperature_k, s.avail_spare, s.spare_thresh, s.percent_used, s.media_errors,
            s.num_err_log_entries) == (0, 315, 100, 10, 3, 0, 1)
    assert not s.invalid


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


def fake_node(tmp_path, script: str | None):
    sysfs = tmp_path / "sys"
    for c in ("nvme0", "nvme1"):
        (sysfs / "class" / "nvme" / c).mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if script is not None:
        p = bindir / "nvme"
        p.write_text("#!/bin/sh\n" + script)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return sysfs, bindir


def run(tmp_path, monkeypatch, script, **settings):
    sysfs, bindir = fake_node(tmp_path, script)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin" if script is not None else str(bindir))
    c = NvmeCollector(build(NvmeSettings, settings, "nvme"), Context(Roots(sysfs, tmp_path), "n", Expectations()))
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
