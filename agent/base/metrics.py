"""A small builder for metric families, rendered with prometheus_client's own exposition code.

Collectors fill a MetricSet from their readings; the exporter merges the sets of every collector and renders
them once per cycle, so a scrape only returns cached bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

PREFIX = "vigil_"


@dataclass
class Family:
    name: str  # for counters: without the _total suffix
    kind: str  # gauge | counter | histogram | info
    doc: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


class MetricSet:
    """Families keyed by name. Adding the same name twice with another type or help is a programming error."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def _family(self, name: str, kind: str, doc: str) -> Family:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name, kind, doc)
        elif fam.kind != kind:
            raise ValueError(f"metric {name} registered as {fam.kind} and {kind}")
        return fam

    def gauge(self, name: str, doc: str, labels: Mapping[str, object], value: float | None) -> None:
        """Add one gauge sample; a None value (a reading the hardware did not give) is simply not exported."""
        fam = self._family(name, "gauge", doc)
        if value is not None:
            fam.samples.append((name, _labels(labels), float(value)))

    def counter(self, name: str, doc: str, labels: Mapping[str, object], value: float | None) -> None:
        if name.endswith("_total"):
            name = name[: -len("_total")]
        fam = self._family(name, "counter", doc)
        if value is not None:
            fam.samples.append((name + "_total", _labels(labels), float(value)))

    def histogram(self, name: str, doc: str, labels: Mapping[str, object],
                  buckets: Sequence[tuple[float, float]], count: float, total: float) -> None:
        """`buckets`: (upper bound, cumulative count) pairs, ascending; +Inf is added from `count`."""
        fam = self._family(name, "histogram", doc)
        base = _labels(labels)
        for le, cum in buckets:
            if math.isinf(le):
                continue
            fam.samples.append((name + "_bucket", {**base, "le": _float_str(le)}, float(cum)))
        fam.samples.append((name + "_bucket", {**base, "le": "+Inf"}, float(count)))
        fam.samples.append((name + "_count", base, float(count)))
        fam.samples.append((name + "_sum", base, float(total)))

    def declare(self, name: str, kind: str, doc: str) -> None:
        """Make a family exist (with HELP/TYPE) even when it has no samples this cycle."""
        self._family(name if kind != "counter" else name.removesuffix("_total"), kind, doc)

    def merge(self, other: "MetricSet") -> None:
        for fam in other.families.values():
            mine = self._family(fam.name, fam.kind, fam.doc)
            mine.samples.extend(fam.samples)

    def __iter__(self):
        return iter(self.families.values())

    def value(self, name: str, **labels: str) -> float | None:
        """Test and diagnosis helper: the value of the one sample matching all given labels."""
        for fam in self.families.values():
            for sname, slabels, v in fam.samples:
                if sname == name and all(slabels.get(k) == str(val) for k, val in labels.items()):
                    return v
        return None


def _labels(labels: Mapping[str, object]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in labels.items()}


def _float_str(v: float) -> str:
    return repr(float(v))


class _Families:
    def __init__(self, families: Iterable[Family]):
        self._families = list(families)

    def collect(self):
        for fam in self._families:
            m = Metric(fam.name, fam.doc, fam.kind)
            for sname, labels, value in fam.samples:
                m.add_sample(sname, labels, value)
            yield m


def render(metrics: MetricSet) -> bytes:
    """The Prometheus text exposition (0.0.4) of a MetricSet."""
    fams = sorted(metrics.families.values(), key=lambda f: f.name)
    return generate_latest(_Families(fams))  # type: ignore[arg-type]
