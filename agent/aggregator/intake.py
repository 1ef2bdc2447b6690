"""What the aggregator accepts from the stream (DESIGN §0, §6): every field of an AgentMessage is checked and
bounded here, before it touches a node's state. Pure: no I/O, no clock.

- Strings are bounded (agent/wire.py LIMITS): a long check or entity keeps a prefix and a hash of the whole, so a
  fatal report with a 300,000-character name still quarantines its node, under a name Kubernetes accepts. A node
  name longer than Kubernetes allows is refused.
- Enums: a number the proto does not define (or 0) is refused (wire.ON_UNKNOWN is REJECT): a Hello or Heartbeat
  whose digest holds one is refused whole (`Invalid`: the stream ends INVALID_ARGUMENT); an event with one is
  refused alone (a `Rejection`).
- Sequence numbers, per stream (`Cursor`): the agent sends its spool's events in seq order, resuming above the
  Welcome's applied_seq; one stream per (node, spool epoch) at a time (a newer one ends the older), so the only
  seqs a correct agent sends are above everything this epoch has applied. An event is accepted only when its seq is
  within MIN_SEQ..MAX_SEQ, above the stream's last one (and so above every seq already acknowledged: a lower one is
  refused, never acked as a "duplicate" it may not be), and at most SEQ_AHEAD above the highest seq the agent has
  declared (digest_seq) or had accepted. Gaps are normal: the spool coalesces and drops events before they are
  sent. A cumulative ack of N is then true: every event of the epoch the agent sent at or below N was applied, or
  (to an agent that reads rejections) named as refused; an ack never passes a seq refused for being out of order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from agent import wire
from agent.base.pci import normalize as normalize_pci
from agent._proto.vigil.v1 import health_pb2 as pb
from .state import OK, IncomingEvent, Problem

Cut = Callable[[str], None]  # told the name of every field that was shortened (a metric)


def _no_cut(_: str) -> None:
    pass


class Invalid(Exception):
    """A message refused whole: the stream ends with INVALID_ARGUMENT and this text (which names the field)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason  # a bounded label for vigil_aggregator_streams_refused_total


@dataclass(frozen=True)
class Rejection:
    """One event refused: never applied, named to the agent (Ack.rejected) or ending the stream."""

    seq: int
    reason: str  # for the agent's log: what was wrong
    label: str  # a bounded label for vigil_aggregator_events_rejected_total: seq, enum


@dataclass
class Cursor:
    """One stream's position in its spool epoch."""

    last: int  # the highest seq accepted on this stream; starts at the Welcome's applied_seq
    declared: int = 0  # the highest digest_seq the agent declared on this stream

    def ceiling(self) -> int:
        """The highest seq the next event may have."""
        return min(wire.MAX_SEQ, (self.last if self.last > self.declared else self.declared) + wire.SEQ_AHEAD)


@dataclass(frozen=True)
class HelloIn:
    node: str
    boot_id: str
    epoch: str
    version: str
    handles_rejections: bool


def _text(name: str, value: str, cut: Cut) -> str:
    out, shortened = wire.bounded(name, value)
    if shortened:
        cut(name)
    return out


def read_hello(hello: Any, cut: Cut = _no_cut) -> HelloIn:
    """The Hello's identity fields (its digest goes through `read_digest`)."""
    if not hello.node or not hello.spool_epoch:
        raise Invalid("bad_hello", "Hello needs node and spool_epoch")
    if len(hello.node) > wire.LIMITS["node"]:
        raise Invalid("bad_hello", f"Hello.node is {len(hello.node)} characters; a Kubernetes node name has at most "
                                   f"{wire.LIMITS['node']}")
    return HelloIn(hello.node, _text("boot_id", hello.boot_id, cut), _text("spool_epoch", hello.spool_epoch, cut),
                   _text("agent_version", hello.agent_version, cut), bool(hello.handles_rejections))


def read_seq(name: str, seq: int, ceiling: int | None = None) -> int:
    """A digest_seq: 0 (no event yet) up to MAX_SEQ, and on a Heartbeat at most `ceiling`."""
    if seq > wire.MAX_SEQ:
        raise Invalid("bad_seq", f"{name} {seq} is above {wire.MAX_SEQ}, the largest seq a spool can hold")
    if ceiling is not None and seq > ceiling:
        raise Invalid("bad_seq", f"{name} {seq} jumps more than {wire.SEQ_AHEAD} past the highest seq this stream "
                                 f"has seen")
    return seq


def read_digest(digest: Iterable[Any], where: str, cut: Cut = _no_cut) -> tuple[list[Problem], int]:
    """(the digest's non-ok problems, how many were left out). An unknown enum refuses the whole digest: it alone
    rebuilds the node's state, and no guess of what the number meant is safe. Past MAX_DIGEST entries the fatal ones
    are kept first: the verdict needs only them."""
    out: list[Problem] = []
    for i, p in enumerate(digest):
        try:
            status, severity = wire.status_from_proto(p.status), wire.severity_from_proto(p.severity)
        except wire.BadEnum as e:
            raise Invalid("bad_enum", f"{where}.digest[{i}] ({_show(p.check)}): {e}") from None
        if status == OK:
            continue
        out.append(Problem(_text("check", p.check, cut), _text("entity", p.entity, cut), status, severity,
                           _text("message", p.message, cut), bus_id(p.bus_id, cut) if p.bus_id else "",
                           holders(p.holders, cut) if p.holders else ()))
    dropped = max(0, len(out) - wire.MAX_DIGEST)
    if dropped:
        out.sort(key=lambda q: not q.fatal)  # stable: fatal first, each group in the agent's order
        del out[wire.MAX_DIGEST:]
    return out, dropped


_L_CHECK, _L_ENTITY, _L_MESSAGE = wire.LIMITS["check"], wire.LIMITS["entity"], wire.LIMITS["message"]
_L_VALUE = wire.LIMITS["value"]


def _known(read: Callable[[int], str], numbers: Iterable[int]) -> dict[int, str]:
    """wire's map, as a dict for the hot path (an absent number goes through wire again, for its error)."""
    out = {}
    for n in numbers:
        try:
            out[n] = read(n)
        except wire.BadEnum:
            pass
    return out


_KINDS = _known(wire.kind_from_proto, pb.Kind.values())
_STATUSES = _known(wire.status_from_proto, pb.Status.values())
_SEVERITIES = _known(wire.severity_from_proto, pb.Severity.values())


def read_event(e: Any, cursor: Cursor, cut: Cut = _no_cut) -> IncomingEvent | Rejection:
    """One event of a Batch, against the stream's cursor (not advanced here: the caller advances it when it takes
    the event). On the hot path (100,000 events/s): the common case costs a few comparisons."""
    seq, last, declared = e.seq, cursor.last, cursor.declared
    if not last < seq <= min(wire.MAX_SEQ, (last if last > declared else declared) + wire.SEQ_AHEAD) \
            or seq < wire.MIN_SEQ:
        return _bad_seq(seq, cursor)
    kind, status, severity = _KINDS.get(e.kind), _STATUSES.get(e.status), _SEVERITIES.get(e.severity)
    if kind is None or status is None or severity is None:
        try:
            kind = wire.kind_from_proto(e.kind)
            status, severity = wire.status_from_proto(e.status), wire.severity_from_proto(e.severity)
        except wire.BadEnum as err:
            return Rejection(seq, f"seq {seq} ({_show(e.check)}): {err}", "enum")
    check, entity, message = e.check, e.entity, e.message
    if len(check) > _L_CHECK:
        check = _text("check", check, cut)
    if len(entity) > _L_ENTITY:
        entity = _text("entity", entity, cut)
    if len(message) > _L_MESSAGE:
        message = _text("message", message, cut)
    value = e.value
    if len(value) > _L_VALUE:
        value = _text("value", value, cut)
    return IncomingEvent(seq, kind, check, entity, status, severity, message,
                         bus_id=bus_id(e.bus_id, cut) if e.bus_id else "", value=value,
                         holders=holders(e.holders, cut) if e.holders else ())


def bus_id(text: str, cut: Cut = _no_cut) -> str:
    """Event.bus_id / Problem.bus_id as the one PCI address spelling (agent/base/pci.py), or "" when it is not an
    address: a malformed bus id costs that field alone (the event is applied; its GPU is matched by its entity,
    as for an older agent), counted as a cut field."""
    out = normalize_pci(text[:wire.LIMITS["bus_id"]]) if len(text) <= wire.LIMITS["bus_id"] else None
    if out is None:
        cut("bus_id")
        return ""
    return out


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def holders(names: Iterable[str], cut: Cut = _no_cut) -> tuple[str, ...]:
    """Event.holders / Problem.holders: the first MAX_HOLDERS names that are "namespace/pod" as Kubernetes spells
    them (a DNS label, a DNS subdomain). A malformed one (a "..." the agent's bound left, a slash too many, upper
    case) costs that name alone, counted as a cut field: those pods are then not attributed, never guessed."""
    out: list[str] = []
    for n in list(names)[:wire.MAX_HOLDERS]:
        ns, sep, pod = n.partition("/") if len(n) <= wire.LIMITS["holder"] else ("", "", "")
        if sep and _DNS_LABEL.fullmatch(ns) and len(pod) <= 253 and all(
                _DNS_LABEL.fullmatch(part) for part in pod.split(".")):
            if n not in out:
                out.append(n)
        else:
            cut("holder")
    if len(names) > wire.MAX_HOLDERS:
        cut("holders")
    return tuple(out)


def _bad_seq(seq: int, cursor: Cursor) -> Rejection:
    if not wire.MIN_SEQ <= seq <= wire.MAX_SEQ:
        return Rejection(seq, f"seq {seq} is outside {wire.MIN_SEQ}..{wire.MAX_SEQ}", "seq")
    if seq <= cursor.last:
        return Rejection(seq, f"seq {seq} is not above {cursor.last}, the last seq of this stream (or already "
                              f"acknowledged): events go in seq order, once", "seq")
    return Rejection(seq, f"seq {seq} jumps more than {wire.SEQ_AHEAD} past {max(cursor.last, cursor.declared)}, "
                          f"the highest seq this stream has seen", "seq")


@dataclass
class BatchIn:
    """A Batch read against its stream: the events to apply, those refused, and where it had to stop."""

    events: list[IncomingEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    stop: Rejection | None = None  # set: the stream ends INVALID_ARGUMENT after acknowledging `events`


def read_batch(events: Any, cursor: Cursor, handles_rejections: bool, cut: Cut = _no_cut) -> BatchIn:
    """Check a Batch's events in order, advancing the cursor over those taken.

    To an agent that reads Ack.rejected, a refused event is named and the batch goes on. To any other, the first
    refused event stops the batch: it must not be acknowledged, so nothing at or above its seq is taken, unless its
    seq is at or below what this stream had already acknowledged (then the ack claims nothing new about it). A Batch
    of more than MAX_BATCH_EVENTS stops at that many, for every agent (the Welcome says the limit)."""
    out = BatchIn()
    floor = cursor.last
    for i, e in enumerate(events):
        if i >= wire.MAX_BATCH_EVENTS:
            out.stop = Rejection(e.seq, f"a Batch carries at most {wire.MAX_BATCH_EVENTS} events "
                                        f"(Welcome.max_batch_events); this one has {len(events)}", "batch_size")
            break
        got = read_event(e, cursor, cut)
        if isinstance(got, IncomingEvent):
            out.events.append(got)
            cursor.last = got.seq
        elif handles_rejections:
            out.rejected.append(got)
        else:
            out.stop = got
            break
    if out.stop is not None and out.stop.seq > floor:
        out.events = [ev for ev in out.events if ev.seq < out.stop.seq]
    return out


def _show(text: str, limit: int = 80) -> str:
    """A field quoted for a message or a log line: bounded, control characters escaped (no forged log lines)."""
    return printable(text[:limit] + ("..." if len(text) > limit else ""))


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


__all__ = ["BatchIn", "bus_id", "Cursor", "holders", "HelloIn", "Invalid", "Rejection", "printable", "read_batch",
           "read_digest", "read_event", "read_hello", "read_seq"]
