"""Agent-side hysteresis (DESIGN §1): the agent sees every reading, so it decides when a check's state has
really changed; the stream then carries only changes.

A (check, entity) moves to a worse state (ok -> unhealthy/unknown) after `raise_after` consecutive
observations of it, and back to ok after `clear_after` consecutive ok observations. A key seen for the first
time is compared against ok. Pure: no clock, no I/O; the caller feeds one collector Result at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from agent.base.findings import OK, Finding

Key = tuple[str, str]  # (check, entity)


@dataclass
class _Track:
    stable: Finding  # the state last judged stable (with the freshest message for that state)
    candidate: tuple[str, str] | None = None  # a different (status, severity) being observed
    streak: int = 0


@dataclass
class Hysteresis:
    raise_after: int = 1
    clear_after: int = 2
    _tracks: dict[Key, _Track] = field(default_factory=dict)
    _by_collector: dict[str, set[Key]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.raise_after < 1 or self.clear_after < 1:
            raise ValueError("hysteresis counts must be >= 1")

    def update(self, collector: str, findings: list[Finding], success: bool) -> tuple[list[Finding], list[Key]]:
        """Feed one collector's findings. Returns (the stable finding of every key in this result, keys of this
        collector that a *successful* result no longer reports: gone, the caller reports them ok).
        A failed result (the collector could not read) never clears the keys it does not mention."""
        out: list[Finding] = []
        seen: set[Key] = set()
        for f in findings:
            key = (f.check, f.entity)
            seen.add(key)
            out.append(self._observe(key, f))
        known = self._by_collector.setdefault(collector, set())
        gone: list[Key] = []
        if success:
            gone = sorted(known - seen)
            for key in gone:
                self._tracks.pop(key, None)
            known.clear()
        known |= seen
        return out, gone

    def seed(self, collector: str, prior: Finding) -> None:
        """A key's stable state from before this process (the spool). A key already observed keeps its track;
        a seeded key that the collector's next successful result does not report is gone."""
        key = (prior.check, prior.entity)
        if key in self._tracks:
            return
        self._tracks[key] = _Track(prior)
        self._by_collector.setdefault(collector, set()).add(key)

    def _observe(self, key: Key, f: Finding) -> Finding:
        t = self._tracks.get(key)
        if t is None:
            baseline = Finding(f.check, f.component, f.entity, OK, f.severity, "")
            t = self._tracks[key] = _Track(baseline)
        if f.status == t.stable.status and f.severity == t.stable.severity:
            t.stable, t.candidate, t.streak = f, None, 0
            return f
        state = (f.status, f.severity)
        if t.candidate == state:
            t.streak += 1
        else:
            t.candidate, t.streak = state, 1
        need = self.clear_after if f.status == OK else self.raise_after
        if t.streak >= need:
            t.stable, t.candidate, t.streak = f, None, 0
            return f
        return t.stable
