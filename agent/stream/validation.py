"""The agent's side of a validation the aggregator asks for (vigil.v1.ValidateRequest, agent/aggregator/validation.py).

The request comes on the stream's reader (its asyncio loop); `handle` only checks it and starts a thread, so the
stream keeps reading acks and the collectors keep running while the probes load the GPUs for minutes. Results go
back as info events through the spool (acknowledged, resent after a reconnect like every event): each finding of
each probe (check probe.<name>...), then one summary, check `probe.validation`, whose value names the request.

- One validation at a time: a request while one runs is answered at once with an unknown summary ("busy"), not
  queued or coalesced: the aggregator decides whether to ask again (it retries an unknown after its retry delay),
  and a queue here could run a stale request long after the aggregator stopped waiting for it. The probe lock
  (agent/probes/runner.py NodeLock) also keeps an operator's `agent validate` and this one apart: the one that
  comes second is refused, unknown.
- A request is bounded before anything runs: its id, its probe names (each known to this agent), its level. A bad
  one is answered unknown, naming what was wrong; it never runs anything.
- `quarantined`: the aggregator says Vigil keeps the node out of the schedule; the probes may then run where the
  PodResources attribution cannot be read (agent/probes/validate.py decides, as for `agent validate`).
- `timeout_seconds` caps each probe's own deadline, so a validation ends (unknown) before the aggregator stops
  waiting for it rather than long after.
"""
from __future__ import annotations

import copy
import logging
import re
import threading
import time
from typing import Any, Callable

from agent.base.errors import error_text
from agent.base.findings import OK, UNHEALTHY, UNKNOWN

log = logging.getLogger(__name__)

SUMMARY = "probe.validation"
MAX_ID = 64
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_PROBES = 16  # more names than the agent has probes is not a request a correct aggregator sends
MAX_NAME = 64
MAX_TIMEOUT = 86400
STATUS = {"healthy": OK, "unhealthy": UNHEALTHY}  # Validation.status (node_status) -> the summary's status


class Refused(ValueError):
    """The request cannot be run as given: answered unknown with this text."""


def read_request(req: Any, known: list[str]) -> dict[str, Any]:
    """The request's fields, checked and bounded (a huge or hostile one costs a short refusal, nothing else)."""
    rid = req.request_id
    if not ID_RE.fullmatch(rid):
        shown = rid[:MAX_ID].encode("unicode_escape").decode("ascii")
        raise Refused(f"request_id {shown!r}{'...' if len(rid) > MAX_ID else ''} is not 1-{MAX_ID} characters of "
                      f"[A-Za-z0-9._:-]")
    names = list(req.probes)
    if len(names) > MAX_PROBES:
        raise Refused(f"{len(names)} probe names (at most {MAX_PROBES})")
    for n in names:
        if n not in known:
            shown = n[:MAX_NAME].encode("unicode_escape").decode("ascii")
            raise Refused(f"unknown probe {shown!r} (known: {', '.join(known)})")
    level = req.level or "quick"
    if level not in ("quick", "full"):
        raise Refused(f"unknown level {level[:MAX_NAME]!r} (quick or full)")
    return {"id": rid, "probes": list(dict.fromkeys(names)) or None, "level": level,
            "quarantined": bool(req.quarantined), "timeout": min(int(req.timeout_seconds), MAX_TIMEOUT)}


def capped(settings: Any, timeout: float) -> Any:
    """The probe settings with every probe's deadline at most `timeout` seconds (a copy)."""
    from agent.probes.validate import names
    s = copy.deepcopy(settings)
    for name in names():  # every probe the registry knows: one left out would keep its own, longer deadline
        a = s.adapter(name)
        a.quick_timeout_seconds = min(a.quick_timeout_seconds, timeout)
        a.full_timeout_seconds = min(a.full_timeout_seconds, timeout)
    return s


class StreamValidation:
    """`info` is the stream client's info(): it spools one info event."""

    def __init__(self, info: Callable[..., int], settings: Any, node: str, facts: Any = None,
                 run: Callable[..., Any] | None = None) -> None:
        self.info, self.settings, self.node, self.facts = info, settings, node, facts
        self._run_validation = run
        self._busy = threading.Lock()
        self.running: str | None = None  # the request id being run
        self.done = 0  # validations finished (tests, the log)
        self.last: Any = None  # the latest Validation, for its vigil_probe_* metrics

    def _known(self) -> list[str]:
        from agent.probes.validate import names
        return names()

    def handle(self, req: Any) -> None:
        """From the stream's reader: check the request and start it in a thread; never blocks, never raises."""
        try:
            r = read_request(req, self._known())
        except Refused as e:
            rid = req.request_id if ID_RE.fullmatch(req.request_id) else ""
            log.warning("validation request refused: %s", e)
            self._summary(rid, UNKNOWN, f"validation request refused: {e}", {}, "")
            return
        if not self._busy.acquire(blocking=False):
            self._summary(r["id"], UNKNOWN, f"not run: validation {self.running} is still running on this node "
                          "(one at a time)", {}, r["level"])
            return
        self.running = r["id"]
        log.info("validation %s requested by the aggregator: probes %s, level %s%s", r["id"],
                 ",".join(r["probes"] or ["(enabled)"]), r["level"], ", node quarantined" if r["quarantined"] else "")
        threading.Thread(target=self._thread, args=(r,), name=f"validate-{r['id']}", daemon=True).start()

    def _thread(self, r: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            self._validate(r)
        except Exception as e:  # noqa: BLE001 - a bug costs this validation (unknown), never the agent
            log.exception("validation %s failed", r["id"])
            self._summary(r["id"], UNKNOWN, f"internal error: {error_text(e)}", {}, r["level"])
        finally:
            self.running = None
            self.done += 1
            self._busy.release()
            log.info("validation %s finished in %.1fs", r["id"], time.monotonic() - started)

    def _validate(self, r: dict[str, Any]) -> None:
        from agent.probes.validate import validate
        run = self._run_validation or validate
        settings = capped(self.settings, r["timeout"]) if r["timeout"] else self.settings
        try:
            v = run(settings, r["probes"], r["level"], quarantined=r["quarantined"], node=self.node, facts=self.facts)
        except ValueError as e:  # a probe this agent knows by name but not at this level: a usage error
            self._summary(r["id"], UNKNOWN, f"validation request refused: {e}", {}, r["level"])
            return
        self.last = v
        for f in v.findings:
            self.info(f.check, f.component, f.entity, f.message, status=f.status, severity=f.severity,
                      action=f.action, value=f.value)
        probes = {res.name: res.status for res in v.results}
        status = STATUS.get(v.status, UNKNOWN)
        bad = [f"{res.name} {res.status}" for res in v.results if res.status not in ("pass", "unavailable")]
        text = {OK: "every probe that ran passed", UNHEALTHY: "a probe failed", UNKNOWN: "a probe could not run"}
        detail = "; ".join(f"{f.check} on {f.entity}: {f.message}" for f in v.findings
                           if f.status != OK)[:800]
        self._summary(r["id"], status, f"validation {r['id']} ({r['level']}): {text[status]}"
                      + (f" ({', '.join(bad)})" if bad else "") + (f": {detail}" if detail else ""), probes,
                      r["level"])

    def _summary(self, rid: str, status: str, message: str, probes: dict[str, str], level: str) -> None:
        self.info(SUMMARY, "probe", self.node, message, status=status, severity="fatal",
                  value={"request": rid, "level": level, "probes": probes})

    def metrics(self) -> Any:
        """vigil_probe_* of the latest validation (empty before the first)."""
        from agent.base.metrics import MetricSet
        return self.last.metrics() if self.last is not None else MetricSet()
