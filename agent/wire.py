"""Findings <-> vigil.v1 messages (DESIGN §6, §10): the one place that maps between a finding's strings
(status ok/unhealthy/unknown, severity fatal/warning/info, kind state/info) and the wire's enum numbers.

The maps are built from the proto's own enum descriptors (`STATUS_UNHEALTHY` <-> "unhealthy"), so a value added
to proto/vigil/v1/health.proto is mapped by regenerating the stubs, never by editing a table here.

- Agent side (strings -> numbers): `status_to_proto`, `severity_to_proto`, `kind_to_proto`, or whole messages
  with `event_message` and `problem_message`. A string outside the enum raises BadEnum (a ValueError): the
  agent never puts a number it did not mean on the wire.
- Aggregator side (numbers -> strings): `status_from_proto`, `severity_from_proto`, `kind_from_proto`. What an
  unspecified (0) or unknown number reads as is ON_UNKNOWN, named below.
Imports only agent._proto and agent.base.
"""
from __future__ import annotations

import json
import time
from typing import Any

from agent._proto.vigil.v1 import health_pb2 as pb

STATE, INFO = "state", "info"  # Event kinds: a state change (the health state machine), or informational

# How an unspecified (0) or unknown enum number reads on the aggregator side, per enum. Today each reads as its
# cautious value: a status nobody can read is unknown, a severity fatal, a kind a state change. A value of
# REJECT makes *_from_proto raise BadEnum instead, so the stream can refuse the message (DESIGN §0: the
# aggregator bounds the enum values it accepts): that later change is this one line.
REJECT = None
ON_UNKNOWN: dict[str, str | None] = {"status": "unknown", "severity": "fatal", "kind": STATE}


class BadEnum(ValueError):
    """A string that is not in the enum (agent side), or a number read with ON_UNKNOWN set to REJECT."""


def _maps(enum: Any, prefix: str) -> tuple[dict[str, int], dict[int, str]]:
    """("STATUS_UNHEALTHY", 2) -> {"unhealthy": 2} and {2: "unhealthy"}; the UNSPECIFIED zero maps to no string."""
    to: dict[str, int] = {}
    for name, number in enum.items():
        if number == 0:
            continue
        if not name.startswith(prefix):  # pragma: no cover - a proto naming mistake, caught by the tests
            raise AssertionError(f"{name}: expected the {prefix} prefix")
        to[name[len(prefix):].lower()] = number
    return to, {n: s for s, n in to.items()}


_STATUS_TO, _STATUS_FROM = _maps(pb.Status, "STATUS_")
_SEVERITY_TO, _SEVERITY_FROM = _maps(pb.Severity, "SEVERITY_")
_KIND_TO, _KIND_FROM = _maps(pb.Kind, "KIND_")
STATUSES, SEVERITIES, KINDS = tuple(_STATUS_TO), tuple(_SEVERITY_TO), tuple(_KIND_TO)


def _to(table: dict[str, int], what: str, value: str) -> int:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise BadEnum(f"{what} {value!r} is not one of {', '.join(table)}") from None


def _from(table: dict[int, str], what: str, number: int) -> str:
    out = table.get(number)
    if out is not None:
        return out
    default = ON_UNKNOWN[what]
    if default is REJECT:
        raise BadEnum(f"{what} {number!r} is not one of {', '.join(map(str, table))}")
    return default


# -- agent side: strings -> numbers ----------------------------------------------------------------------------
def status_to_proto(status: str) -> int:
    return _to(_STATUS_TO, "status", status)


def severity_to_proto(severity: str) -> int:
    return _to(_SEVERITY_TO, "severity", severity)


def kind_to_proto(kind: str) -> int:
    return _to(_KIND_TO, "kind", kind)


def event_message(seq: int, kind: str, check: str, component: str, entity: str, status: str, severity: str,
                  message: str, action: str | None = None, value: Any = None, threshold: Any = None,
                  observed_at: float | None = None) -> Any:
    """A vigil.v1.Event. kind: STATE or INFO; value and threshold travel as JSON ("" when None); observed_at:
    wall-clock seconds, now when None."""
    return pb.Event(
        seq=seq, kind=kind_to_proto(kind), check=check, component=component, entity=entity,
        status=status_to_proto(status), severity=severity_to_proto(severity), message=message,
        action=action or "",
        observed_at_unix_ms=int((observed_at if observed_at is not None else time.time()) * 1000),
        value="" if value is None else json.dumps(value, default=str),
        threshold="" if threshold is None else json.dumps(threshold, default=str),
    )


def problem_message(check: str, entity: str, status: str, severity: str, message: str) -> Any:
    """A vigil.v1.Problem: one entry of a Hello's or Heartbeat's digest."""
    return pb.Problem(check=check, entity=entity, status=status_to_proto(status),
                      severity=severity_to_proto(severity), message=message)


# -- aggregator side: numbers -> strings -----------------------------------------------------------------------
def status_from_proto(number: int) -> str:
    return _from(_STATUS_FROM, "status", number)


def severity_from_proto(number: int) -> str:
    return _from(_SEVERITY_FROM, "severity", number)


def kind_from_proto(number: int) -> str:
    return _from(_KIND_FROM, "kind", number)


__all__ = ["BadEnum", "INFO", "KINDS", "ON_UNKNOWN", "REJECT", "SEVERITIES", "STATE", "STATUSES", "event_message",
           "kind_from_proto", "kind_to_proto", "problem_message", "severity_from_proto", "severity_to_proto",
           "status_from_proto", "status_to_proto"]
