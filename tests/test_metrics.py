"""Metric families are declared once with their label names; a sample that does not fit is an error at once,
so a typo in a label cannot ship a second, silently different series."""
import pytest

from agent.base.metrics import Counter, Gauge, Histogram, MetricSet, render

TEMP = Gauge("vigil_test_temperature_celsius", "A temperature.", ("gpu", "sensor"))


def test_a_sample_with_other_labels_is_refused():
    ms = MetricSet()
    ms.add(TEMP, {"gpu": "gpu0", "sensor": "edge"}, 40)
    with pytest.raises(ValueError, match="labels"):
        ms.add(TEMP, {"gpu": "gpu0"}, 41)
    with pytest.raises(ValueError, match="labels"):
        ms.add(TEMP, {"gpu": "gpu0", "sensor": "edge", "extra": "x"}, 41)


def test_the_same_name_declared_twice_differently_is_refused():
    ms = MetricSet()
    ms.add(TEMP, {"gpu": "gpu0", "sensor": "edge"}, 40)
    other = Gauge("vigil_test_temperature_celsius", "A temperature.", ("gpu",))
    with pytest.raises(ValueError, match="declared twice"):
        ms.add(other, {"gpu": "gpu0"}, 1)


def test_every_family_is_named_vigil():
    with pytest.raises(ValueError, match="vigil_"):
        Gauge("gpu_temperature", "no prefix")


def test_counters_histograms_and_absent_values_render_as_prometheus_expects():
    ms = MetricSet()
    errors = Counter("vigil_test_errors_total", "Errors.", ("kind",))
    rtt = Histogram("vigil_test_rtt_seconds", "RTT.", ())
    ms.add(errors, {"kind": "a"}, 3)
    ms.add(TEMP, {"gpu": "gpu1", "sensor": "edge"}, None)  # not read: not exported, family still declared
    ms.add_histogram(rtt, {}, [(0.1, 1), (1.0, 2)], 3, 2.5)
    text = render(ms).decode()
    assert 'vigil_test_errors_total{kind="a"} 3.0' in text
    assert "# TYPE vigil_test_temperature_celsius gauge" in text and 'gpu="gpu1"' not in text
    assert 'vigil_test_rtt_seconds_bucket{le="+Inf"} 3.0' in text and "vigil_test_rtt_seconds_sum 2.5" in text
    with pytest.raises(ValueError):
        ms.add(rtt, {}, 1)


# -- the text is prometheus_client's, byte for byte --------------------------------------------------------------
# agent/base/metrics.py writes the exposition itself (importing prometheus_client cost the agent 4 MB of RSS);
# here prometheus_client's own generate_latest, fed the same families, is the reference (tests/test_golden.py
# holds every fixture node's exposition, as written before, to the byte).
from hypothesis import given, settings, strategies as st  # noqa: E402
from prometheus_client.core import Metric  # noqa: E402
from prometheus_client.exposition import generate_latest  # noqa: E402

from agent.base.metrics import Family, Spec, assemble, render_parts  # noqa: E402


class _Reference:
    def __init__(self, ms: MetricSet) -> None:
        self.fams = sorted(ms.families.values(), key=lambda f: f.name)

    def collect(self):
        for fam in self.fams:
            m = Metric(fam.name, fam.spec.doc, fam.kind)
            for sname, labels, value in fam.samples:
                m.add_sample(sname, labels, value)
            yield m


def reference(ms: MetricSet) -> bytes:
    return generate_latest(_Reference(ms))  # type: ignore[arg-type]


ODD = ["", "a", "gpu", "0000:0c:00.0", 'quote"d', "back\\slash", "new\nline", "tab\t", "ünïcode", "☃", "x=y,z",
       "{}", "# HELP", "0", "-1", "__reserved"]
NAMES = ["vigil_a", "vigil_b_seconds", "vigil_c:colon", "vigil_dash-ed", "vigil_dot.ted", "vigil_ünï", "vigil_9",
         "vigil_x\n", "vigil_sp ace"]
LABELS = ["gpu", "sensor", "le_x", "_under", "__reserved", "9lead", "da-sh", "dot.ted", "ünï", "UPPER"]
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20).map(float),
                   st.sampled_from([0.0, -0.0, 1e6, 1234567.0, 12345678.9, 1e-7, 1e22, 123456789012.0]))


@st.composite
def metric_sets(draw):
    ms = MetricSet()
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4)):
        kind = draw(st.sampled_from(["gauge", "counter", "histogram"]))
        labels = tuple(draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=3)))
        doc = draw(st.sampled_from(ODD + ["Help with \\ and \n and \"quotes\"."]))
        spec = Spec(name, kind, doc, labels)
        ms.declare(spec)
        fam = ms.families[name]
        for _ in range(draw(st.integers(0, 4))):
            vals = {k: draw(st.sampled_from(ODD)) for k in labels}
            if kind == "histogram":
                bounds = sorted(set(draw(st.lists(st.floats(0.001, 1e9), max_size=3))))
                ms.add_histogram(spec, vals, [(b, i) for i, b in enumerate(bounds)], len(bounds), draw(VALUES))
            else:
                ms.add(spec, vals, draw(VALUES))
        if draw(st.booleans()):  # OpenMetrics-only sample names, as a source could append them by hand
            fam.samples.append((name + draw(st.sampled_from(["_created", "_gsum", "_gcount"])), {}, draw(VALUES)))
    return ms


@settings(max_examples=400, deadline=None)
@given(metric_sets())
def test_the_exposition_is_prometheus_clients_byte_for_byte(ms):
    want = reference(ms)
    assert render(ms) == want
    assert assemble([render_parts(ms)]) == want


def test_a_surrogate_still_fails_to_render_as_before():
    ms = MetricSet()
    fam = Family(Spec("vigil_t", "gauge", "t", ("x",)))
    fam.samples.append(("vigil_t", {"x": "\udcff"}, 1.0))
    ms.families["vigil_t"] = fam
    with pytest.raises(UnicodeEncodeError):
        reference(ms)
    with pytest.raises(UnicodeEncodeError):
        render(ms)
