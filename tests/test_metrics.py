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
