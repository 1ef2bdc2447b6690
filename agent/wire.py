"""Findings <-> vigil.v1 messages (DESIGN §6, §10): the one place that maps between a finding's strings
(status ok/unhealthy/unknown, severity fatal/warning/info, kind state/info) and the wire's enum numbers.

The maps are built from the proto's own enum descriptors (`STATUS_UNHEALTHY` <-> "unhealthy"), so a value added
to proto/vigil/v1/health.proto is mapped by regenerating the stubs, never by editing a table here.

- Agent side (strings -> numbers): `status_to_proto`, `severity_to_proto`, `kind_to_proto`, or whole messages
  with `event_message` and `problem_message`. A string outside the enum raises BadEnum (a ValueError): the
  agent never puts a number it did not mean on the wire.
- Aggregator side (numbers -> strings): `status_from_proto`, `severity_from_proto`, `kind_from_proto`. What an
  unspecified (0) or unknown number reads as is ON_UNKNOWN, named below: REJECT, so the stream refuses it.
- Bounds of the wire (both sides): LIMITS (characters per string field), MIN_SEQ..MAX_SEQ, SEQ_AHEAD,
  MAX_MESSAGE_BYTES, MAX_BATCH_EVENTS, MAX_DIGEST; `bounded(field, text)` shortens a string to its limit the way
  the aggregator does on arrival (an agent calls it before spooling, so what it spools is what gets applied).
Imports only agent._proto and agent.base.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Iterable

from agent._proto.vigil.v1 import health_pb2 as pb

STATE, INFO = "state", "info"  # Event kinds: a state change (the health state machine), or informational

# How an unspecified (0) or unknown enum number reads on the aggregator side, per enum. REJECT makes *_from_proto
# raise BadEnum, so the stream refuses the message (DESIGN §0: the aggregator bounds the enum values it accepts).
# No guess is safe: reading an unknown severity (a newer agent's) as fatal cordons healthy nodes fleet-wide, as
# anything else can miss a fatal one. A string value here would be the reading instead.
REJECT = None
ON_UNKNOWN: dict[str, str | None] = {"status": REJECT, "severity": REJECT, "kind": REJECT}

# -- bounds of the wire ----------------------------------------------------------------------------------------
# Characters per string field. Kubernetes caps what these end up in (a Node's annotations at 256 KiB together, an
# Event's message at 1 KiB); a real check name is under 64 characters, an entity under 300 (namespace/pod/container).
LIMITS: dict[str, int] = {
    "node": 253,  # a Kubernetes node name (a DNS subdomain): longer is refused, not shortened
    "boot_id": 128, "spool_epoch": 128, "agent_version": 128,
    "check": 256, "component": 64, "entity": 512,
    "message": 4096, "action": 1024, "value": 1024, "threshold": 1024,
    "bus_id": 64,  # a PCI address is 12 characters; the aggregator drops (the field only) one it cannot parse
    "holder": 317,  # "namespace/pod": a namespace is a DNS label (63), a pod name a DNS subdomain (253)
}
MAX_HOLDERS = 16  # Event.holders / Problem.holders kept (a GPU is held by one pod, a time-sliced one by a few)
IDENTITY = frozenset({"boot_id", "spool_epoch", "check", "entity"})  # keys: shortened with a hash of the whole
MIN_SEQ, MAX_SEQ = 1, 2**63 - 1  # the spool's counter starts at 1 and is an SQLite INTEGER (signed 64-bit)
# How far an event's seq may run ahead of the highest seq the agent has declared (its digest_seq) or had applied.
# The spool allocates one seq per event, fsynced: 2^32 of them within one heartbeat would take hours at any rate a
# disk allows, while 2^63 or a flipped high bit is caught.
SEQ_AHEAD = 2**32
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the largest AgentMessage the aggregator reads (gRPC's usual default)
MAX_BATCH_EVENTS = 5000  # events applied from one Batch; the rest is not acknowledged (the agent resends it)
MAX_DIGEST = 10000  # problems kept from one digest (fatal ones first); a real node has well under 1,000
_HASH = 16  # hex digits of sha256 kept when an identity field is shortened


def bounded(field: str, text: str) -> tuple[str, bool]:
    """`text` within LIMITS[field], and whether it was shortened. An identity field keeps a prefix and a hash of
    the whole ("<prefix>~<16 hex>"), so two long names stay two keys and a digest and an event agree on one; any
    other keeps a prefix ending in "...". Deterministic: the same input always gives the same output."""
    limit = LIMITS[field]
    if len(text) <= limit:
        return text, False
    if field in IDENTITY:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH]
        return f"{text[:limit - _HASH - 1]}~{digest}", True
    return text[:limit - 3] + "...", True


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
        raise BadEnum(f"{what} {number!r} is not one of {', '.join(f'{n} ({s})' for n, s in table.items())}")
    return default


# -- agent side: strings -> numbers ----------------------------------------------------------------------------
def status_to_proto(status: str) -> int:
    return _to(_STATUS_TO, "status", status)


def severity_to_proto(severity: str) -> int:
    return _to(_SEVERITY_TO, "severity", severity)


def kind_to_proto(kind: str) -> int:
    return _to(_KIND_TO, "kind", kind)


def _b(field: str, text: str) -> str:
    return bounded(field, text)[0]


def event_message(seq: int, kind: str, check: str, component: str, entity: str, status: str, severity: str,
                  message: str, action: str | None = None, value: Any = None, threshold: Any = None,
                  observed_at: float | None = None, occurrences: int = 0, first_seen: float | None = None,
                  last_seen: float | None = None, bus_id: str | None = None,
                  holders: Iterable[str] = ()) -> Any:
    """A vigil.v1.Event. kind: STATE or INFO; value and threshold travel as JSON ("" when None); observed_at:
    wall-clock seconds, now when None. Every string within LIMITS, shortened as the aggregator would shorten it
    on arrival: what the agent spools is what gets applied, and no event outgrows a message. occurrences,
    first_seen, last_seen: an episode's count and times (0/None for a single occurrence)."""
    return pb.Event(
        occurrences=max(0, min(int(occurrences), 2**64 - 1)),
        first_seen_unix_ms=int(first_seen * 1000) if first_seen is not None else 0,
        last_seen_unix_ms=int(last_seen * 1000) if last_seen is not None else 0,
        seq=seq, kind=kind_to_proto(kind), check=_b("check", check), component=_b("component", component),
        entity=_b("entity", entity), status=status_to_proto(status), severity=severity_to_proto(severity),
        message=_b("message", message), action=_b("action", action or ""),
        observed_at_unix_ms=int((observed_at if observed_at is not None else time.time()) * 1000),
        value="" if value is None else _b("value", json.dumps(value, default=str)),
        threshold="" if threshold is None else _b("threshold", json.dumps(threshold, default=str)),
        bus_id=_b("bus_id", bus_id or ""), holders=_holders(holders),
    )


def _holders(names: Iterable[str]) -> list[str]:
    """At most MAX_HOLDERS names, each within LIMITS (an over-long one ends in "...": the aggregator drops it)."""
    return [_b("holder", n) for n in list(dict.fromkeys(names))[:MAX_HOLDERS]]


def problem_message(check: str, entity: str, status: str, severity: str, message: str,
                    bus_id: str | None = None, holders: Iterable[str] = ()) -> Any:
    """A vigil.v1.Problem: one entry of a Hello's or Heartbeat's digest (strings bounded as in event_message)."""
    return pb.Problem(check=_b("check", check), entity=_b("entity", entity), status=status_to_proto(status),
                      severity=severity_to_proto(severity), message=_b("message", message),
                      bus_id=_b("bus_id", bus_id or ""), holders=_holders(holders))


# -- aggregator side: numbers -> strings -----------------------------------------------------------------------
def status_from_proto(number: int) -> str:
    return _from(_STATUS_FROM, "status", number)


def severity_from_proto(number: int) -> str:
    return _from(_SEVERITY_FROM, "severity", number)


def kind_from_proto(number: int) -> str:
    return _from(_KIND_FROM, "kind", number)


__all__ = ["BadEnum", "IDENTITY", "INFO", "KINDS", "LIMITS", "MAX_BATCH_EVENTS", "MAX_DIGEST", "MAX_HOLDERS",
           "MAX_MESSAGE_BYTES", "MAX_SEQ", "MIN_SEQ", "ON_UNKNOWN", "REJECT", "SEQ_AHEAD", "SEVERITIES", "STATE", "STATUSES", "bounded",
           "event_message", "kind_from_proto", "kind_to_proto", "problem_message", "severity_from_proto",
           "severity_to_proto", "status_from_proto", "status_to_proto"]
