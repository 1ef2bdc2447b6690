"""Metric families, declared once with their label names, rendered in the Prometheus text exposition (0.0.4).

A source declares each family once, at module level, in its metrics.py (the shape of client_python's
`GaugeMetricFamily(name, doc, labels=...)`):

    TEMPERATURE = Gauge("vigil_gpu_temperature_celsius", "GPU temperature by sensor.", ("gpu", "sensor"))

and fills a MetricSet each cycle with samples of those families (`ms.add(TEMPERATURE, labels, value)`). A
sample whose label names differ from the family's is a programming error, raised at once. The exporter merges
the sets of every collector and renders them once per cycle, so a scrape only returns cached bytes.

The text is written here, byte for byte what prometheus_client's generate_latest writes (tests/test_metrics.py
compares the two on every family shape, names and values that need escaping included): importing
prometheus_client for it loaded 51 modules (urllib.request and hashlib among them; http.server and ssl too,
which only the serving agent needs): 2.7 MB of the serving agent's RSS at 64x32x500 and 8 MB of `agent --once`'s
import (issue 15).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .validate import safe_text

PREFIX = "vigil_"  # every family Vigil exports is named vigil_*: enforced below


@dataclass(frozen=True)
class Spec:
    """One metric family: its name (counters without the _total suffix), type, help and label names."""

    name: str
    kind: str  # gauge | counter | histogram
    doc: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"metric {self.name}: every Vigil metric is named {PREFIX}*")
        if self.kind not in ("gauge", "counter", "histogram"):
            raise ValueError(f"metric {self.name}: unknown type {self.kind}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"metric {self.name}: a label name repeats in {self.labels}")


def Gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Spec:  # noqa: N802 - reads like a type
    return Spec(name, "gauge", doc, tuple(labels))


def Counter(name: str, doc: str, labels: Sequence[str] = ()) -> Spec:  # noqa: N802
    return Spec(name.removesuffix("_total"), "counter", doc, tuple(labels))


def Histogram(name: str, doc: str, labels: Sequence[str] = ()) -> Spec:  # noqa: N802
    return Spec(name, "histogram", doc, tuple(labels))


@dataclass
class Family:
    spec: Spec
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


class MetricSet:
    """Families keyed by name, each with the samples of one cycle."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def _family(self, spec: Spec) -> Family:
        fam = self.families.get(spec.name)
        if fam is None:
            fam = self.families[spec.name] = Family(spec)
        elif fam.spec != spec:
            raise ValueError(f"metric {spec.name} declared twice, differently: {fam.spec} and {spec}")
        return fam

    def _labels(self, spec: Spec, labels: Mapping[str, object]) -> dict[str, str]:
        if tuple(labels) != spec.labels and set(labels) != set(spec.labels):
            raise ValueError(f"metric {spec.name}: labels {sorted(labels)}, declared {list(spec.labels)}")
        # Label values are text a source read (a bus id, a device name): valid UTF-8 or the whole exposition
        # fails to encode.
        return {k: "" if labels[k] is None else safe_text(str(labels[k])) for k in spec.labels}

    def add(self, spec: Spec, labels: Mapping[str, object], value: float | None) -> None:
        """One gauge or counter sample; a None value (a reading the hardware did not give) is not exported."""
        if spec.kind == "histogram":
            raise ValueError(f"metric {spec.name}: a histogram takes add_histogram()")
        fam = self._family(spec)
        lv = self._labels(spec, labels)
        if value is not None:
            fam.samples.append((spec.name + ("_total" if spec.kind == "counter" else ""), lv, float(value)))

    def add_histogram(self, spec: Spec, labels: Mapping[str, object], buckets: Sequence[tuple[float, float]],
                      count: float, total: float) -> None:
        """`buckets`: (upper bound, cumulative count) pairs, ascending; +Inf is added from `count`."""
        if spec.kind != "histogram":
            raise ValueError(f"metric {spec.name}: add_histogram() on a {spec.kind}")
        fam = self._family(spec)
        base = self._labels(spec, labels)
        for le, cum in buckets:
            if math.isinf(le):
                continue
            fam.samples.append((spec.name + "_bucket", {**base, "le": _float_str(le)}, float(cum)))
        fam.samples.append((spec.name + "_bucket", {**base, "le": "+Inf"}, float(count)))
        fam.samples.append((spec.name + "_count", base, float(count)))
        fam.samples.append((spec.name + "_sum", base, float(total)))

    def declare(self, spec: Spec) -> None:
        """Make a family exist (with HELP/TYPE) even when it has no samples this cycle."""
        self._family(spec)

    def merge(self, other: "MetricSet") -> None:
        for fam in other.families.values():
            self._family(fam.spec).samples.extend(fam.samples)

    def __iter__(self):
        return iter(self.families.values())

    def value(self, name: str, **labels: str) -> float | None:
        """Test and diagnosis helper: the value of the one sample matching all given labels."""
        for fam in self.families.values():
            for sname, slabels, v in fam.samples:
                if sname == name and all(slabels.get(k) == str(val) for k, val in labels.items()):
                    return v
        return None


def _float_str(v: float) -> str:
    return repr(float(v))


# The text format as prometheus_client 0.26 writes it (exposition.generate_latest, its default "underscores"
# escaping of names; label values always UTF-8): its regular expressions, so a name it leaves alone is left alone.
_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")  # OpenMetrics-only samples: moved to gauges after the family


def _name_rune(c: str, i: int, colon: bool) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z" or c == "_" or ("0" <= c <= "9" and i > 0) or (colon and c == ":")


def _metric_name(name: str) -> str:
    if not name or _METRIC_NAME_RE.match(name):
        return name
    return "".join(c if _name_rune(c, i, True) else "_" for i, c in enumerate(name))


def _label_name(name: str) -> str:
    if not name or (_LABEL_NAME_RE.match(name) and not name.startswith("__")):
        return name
    return "".join(c if _name_rune(c, i, False) else "_" for i, c in enumerate(name))


def _label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


def _go_float(d: float) -> str:
    """prometheus_client.utils.floatToGoString: Go's formatting of a sample value."""
    d = float(d)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _sample_line(name: str, labels: Mapping[str, str], value: float) -> str:
    if labels:
        inner = ",".join(f'{_label_name(k)}="{_label_value(v)}"' for k, v in sorted(labels.items()))
        return f"{_metric_name(name)}{{{inner}}} {_go_float(value)}\n"
    return f"{_metric_name(name)} {_go_float(value)}\n"


def _family_text(fam: Family) -> tuple[str, str, str]:
    """One family's "# HELP"/"# TYPE" lines, its sample lines, and what follows them (OpenMetrics-only
    samples, as gauges of their own: never made by MetricSet, kept for the same bytes)."""
    if not fam.name:
        raise ValueError("metric name cannot be empty")
    mname = fam.name + "_total" if fam.kind == "counter" else fam.name
    doc = _help(fam.spec.doc)
    head = f"# HELP {_metric_name(mname)} {doc}\n# TYPE {_metric_name(mname)} {fam.kind}\n"
    lines: list[str] = []
    om: dict[str, list[str]] = {}
    for sname, labels, value in fam.samples:
        for suffix in _OM_SUFFIXES:
            if sname == fam.name + suffix:
                om.setdefault(suffix, []).append(_sample_line(sname, labels, value))
                break
        else:
            lines.append(_sample_line(sname, labels, value))
    tail = "".join(f"# HELP {_metric_name(fam.name + suffix)} {doc}\n# TYPE {_metric_name(fam.name + suffix)} gauge\n"
                   + "".join(om_lines) for suffix, om_lines in sorted(om.items()))
    return head, "".join(lines), tail


def render(metrics: MetricSet) -> bytes:
    """The Prometheus text exposition (0.0.4) of a MetricSet."""
    fams = sorted(metrics.families.values(), key=lambda f: f.name)
    return "".join("".join(_family_text(f)) for f in fams).encode("utf-8")


Parts = dict[str, tuple[Spec, bytes, bytes]]  # family name -> (its spec, "# HELP"/"# TYPE" lines, sample lines)


def render_parts(metrics: MetricSet) -> Parts:
    """Each family of a MetricSet rendered on its own, split into its header and its sample lines, so that an
    exposition can be assembled from parts rendered at different times (`assemble`). The same code renders
    them (render's), so the bytes are the same: a family's text does not depend on the families beside it."""
    out: Parts = {}
    for fam in metrics.families.values():
        head, body, tail = _family_text(fam)
        out[fam.name] = (fam.spec, head.encode("utf-8"), (body + tail).encode("utf-8"))
    return out


def assemble(parts: Iterable[Parts]) -> bytes:
    """The exposition of the MetricSets whose parts these are, merged in this order: what render() of their
    merge gives, without rendering anything again (families by name; a family's samples in merge order)."""
    specs: dict[str, Spec] = {}
    heads: dict[str, bytes] = {}
    bodies: dict[str, list[bytes]] = {}
    for p in parts:
        for name, (spec, head, body) in p.items():
            if name not in heads:
                specs[name], heads[name] = spec, head
                bodies[name] = []
            elif specs[name] != spec:  # as MetricSet.merge refuses it
                raise ValueError(f"metric {name} declared twice, differently: {specs[name]} and {spec}")
            if body:
                bodies[name].append(body)
    return b"".join(heads[n] + b"".join(bodies[n]) for n in sorted(heads))
