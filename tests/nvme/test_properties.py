"""Property tests of the nvme-cli smart-log JSON parser (issue 17; run longer by bench/fuzz_parsers.py).

Inputs: the real published outputs in fixtures/nvme (nvme-cli 1.x integers, 2.x verbose objects and string
counters) with one to three values replaced by what a broken tool could print (huge, negative, non-ASCII
digits, NaN, nested objects), and the text itself cut or padded. Properties: the parser returns a SmartLog or
raises its declared error (ValueError: the output is unusable), never anything else; every field is None or a
possible value; a field the change did not touch parses as before (one bad field costs that field)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.sources.nvme.parsers import SmartLog, parse_smart_log
from agent.sources.nvme.sysfs import STATES, read_controller
from tests.support.mutate import FAST, WEIRD_JSON, WEIRD_TEXT, apply, json_changes
from tests.nvme.test_nvme import NVME

DOCS = {p.name: json.loads(p.read_text()) for p in sorted(NVME.glob("*.json"))}
FIELDS = {"critical_warning": 255, "temperature_k": 65535, "avail_spare": 100, "spare_thresh": 100,
          "percent_used": 255, "media_errors": 2**64 - 1, "num_err_log_entries": 2**64 - 1,
          "power_on_hours": 2**64 - 1}
KEYS = {"critical_warning": "critical_warning", "temperature_k": "temperature", "avail_spare": "avail_spare",
        "spare_thresh": "spare_thresh", "percent_used": "percent_used", "media_errors": "media_errors",
        "num_err_log_entries": "num_err_log_entries", "power_on_hours": "power_on_hours"}
BIG = st.sampled_from(["9" * 5000, "-" + "9" * 5000, "9" * 400, "1e400", "-1e400"])


@st.composite
def outputs(draw):
    name = draw(st.sampled_from(sorted(DOCS)))
    doc = DOCS[name]
    changes = draw(json_changes(doc, leaf=st.one_of(WEIRD_JSON, BIG.map(lambda s: ("raw", s)))))
    raw = {}
    for i, c in enumerate(changes):  # a number json.dumps cannot write (9 x 5000) goes in as raw text
        if isinstance(c.value, tuple):
            raw[f"\"@@raw{i}@@\""] = c.value[1]
            changes[i] = c._replace(value=f"@@raw{i}@@")
    text = json.dumps(apply(doc, changes))
    for k, v in raw.items():
        text = text.replace(k, v)
    return name, text, {c.path[0] for c in changes}


def check_smart_log(sample) -> None:
    name, text, touched = sample
    s = parse_smart_log(text)  # a JSON object whatever the values: never the whole log lost for one of them
    assert isinstance(s, SmartLog)
    for f, hi in FIELDS.items():
        v = getattr(s, f)
        assert v is None or (type(v) is int and 0 <= v <= hi), (f, v)
    clean = parse_smart_log(json.dumps(DOCS[name]))
    for f, key in KEYS.items():
        if key not in touched and not (f == "critical_warning" and "critical_warning" in touched):
            assert getattr(s, f) == getattr(clean, f), f"{f} changed though {key} was not touched"


def check_smart_log_text(sample) -> None:
    name, cut, junk = sample
    text = json.dumps(DOCS[name])
    cut = cut % (len(text) + 1)
    try:
        parse_smart_log(text[:cut] + junk + text[cut:])
    except ValueError:
        pass


SYSFS = {"state": "live", "model": "WDC WDS200T2B0C-00PXH0", "serial": "2035AB440", "firmware_rev": "211070WD",
         "transport": "pcie", "hwmon2/temp1_input": "41850", "hwmon2/temp1_alarm": "0"}
_TMP = Path(tempfile.mkdtemp(prefix="vigil-nvme-fuzz-"))


def check_sysfs(sample) -> None:
    """A controller directory with one to three of its files holding hostile bytes, or missing."""
    changes = sample
    d = Path(tempfile.mkdtemp(dir=_TMP))
    (d / "hwmon2").mkdir()
    files = dict(SYSFS)
    for name, value in changes:
        files[name] = value
    for name, value in files.items():
        if value is not None:
            (d / name).write_bytes(value.encode("utf-8", errors="surrogatepass"))
    info = read_controller(d)
    if info is None:
        return
    assert info.state is None or info.state in STATES
    assert info.temperature_c is None or -273.15 <= info.temperature_c <= 1000.0
    assert info.temperature_alarm in (None, True, False)
    untouched = {n for n in SYSFS} - {n for n, _ in changes}
    if "state" in untouched:
        assert info.state == "live"
    if "hwmon2/temp1_input" in untouched and "hwmon2/temp1_alarm" in untouched:
        assert info.temperature_c == 41.85 and info.temperature_alarm is False


TARGETS = {
    "nvme / sysfs controller files": (st.lists(st.tuples(st.sampled_from(sorted(SYSFS)), st.one_of(
        st.none(), WEIRD_TEXT, BIG, st.sampled_from(["dead", "deleting (no IO)", "-273151", "1000001", "2", " 1 ",
                                                      "\x00", "live\n\n"]))), min_size=1, max_size=3), check_sysfs),
    "nvme / smart-log JSON values": (outputs(), check_smart_log),
    "nvme / smart-log text": (st.tuples(st.sampled_from(sorted(DOCS)), st.integers(0, 10**6),
                                        st.one_of(WEIRD_TEXT, BIG, st.just("["))), check_smart_log_text),
}


@FAST
@given(outputs())
def test_a_bad_value_costs_only_its_field(sample):
    check_smart_log(sample)


@FAST
@given(TARGETS["nvme / smart-log text"][0])
def test_broken_output_is_the_declared_error_or_parsed(sample):
    check_smart_log_text(sample)


@FAST
@given(TARGETS["nvme / sysfs controller files"][0])
def test_hostile_sysfs_files_cost_only_themselves(sample):
    check_sysfs(sample)
