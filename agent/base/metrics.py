"""Metric families, declared once with their label names, rendered with prometheus_client's exposition code.

A source declares each family once, at module level, in its metrics.py (the shape of client_python's
`GaugeMetricFamily(name, doc, labels=...)`):

    TEMPERATURE = Gauge("vigil_gpu_temperature_celsius", "GPU temperature by sensor.", ("gpu", "sensor"))

and fills a MetricSet each cycle with samples of those families (`ms.add(TEMPERATURE, labels, value)`). A
sample whose label names differ from the family's is a programming error, raised at once. The exporter merges
the sets of every collector and renders them once per cycle, so a scrape only returns cached bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

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


class _Families:
    def __init__(self, families: Iterable[Family]):
        self._families = list(families)

    def collect(self):
        for fam in self._families:
            m = Metric(fam.name, fam.spec.doc, fam.kind)
            for sname, labels, value in fam.samples:
                m.add_sample(sname, labels, value)
            yield m


def render(metrics: MetricSet) -> bytes:
    """The Prometheus text exposition (0.0.4) of a MetricSet."""
    fams = sorted(metrics.families.values(), key=lambda f: f.name)
    return generate_latest(_Families(fams))  # type: ignore[arg-type]


Parts = dict[str, tuple[Spec, bytes, bytes]]  # family name -> (its spec, "# HELP"/"# TYPE" lines, sample lines)


def render_parts(metrics: MetricSet) -> Parts:
    """Each family of a MetricSet rendered on its own, split into its header and its sample lines, so that an
    exposition can be assembled from parts rendered at different times (`assemble`). The same code renders
    them (render's), so the bytes are the same: a family's text does not depend on the families beside it."""
    out: Parts = {}
    for fam in metrics.families.values():
        text = generate_latest(_Families([fam]))  # type: ignore[arg-type]
        cut = text.index(b"\n", text.index(b"\n") + 1) + 1  # HELP and TYPE: one line each (help's \n escaped)
        out[fam.name] = (fam.spec, text[:cut], text[cut:])
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
