"""The aggregator's own /metrics, /healthz (the process is alive) and /readyz (this replica holds the Lease: the
Service routes agents only to the Ready one). Counters are plain dicts bumped from the event loop; a scrape
renders them with the agent's MetricSet (the text exposition format, written by agent/base/metrics.py)."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable

from agent.base.metrics import Counter, Gauge, Histogram as HistogramSpec, MetricSet, render

AGGREGATOR_ACTIONS = Counter("vigil_aggregator_actions_total", "Actions on nodes, by action and result (ok, dry_run, "
                             "refused_budget, error; event: ok, exists, error).", ("action", "result"))
AGGREGATOR_BATCHES_RECEIVED = Counter("vigil_aggregator_batches_received_total", "Event batches received.", ())
AGGREGATOR_BREAKER_OPEN = Gauge("vigil_aggregator_breaker_open", "1 while the cordon budget's breaker is open.", ())
AGGREGATOR_CORDON_LATENCY_SECONDS = HistogramSpec("vigil_aggregator_cordon_latency_seconds", "From the report that "
                                                  "made a node unhealthy to Vigil's taint and cordon written.", ())
AGGREGATOR_DECISION_LATENCY_SECONDS = HistogramSpec("vigil_aggregator_decision_latency_seconds", "From the report "
                                                    "that changed a node's verdict to the end of its Kubernetes "
                                                    "writes.", ())
AGGREGATOR_DECISIONS = Counter("vigil_aggregator_decisions_total", "Reconciles of a node, by verdict.", ("verdict",))
AGGREGATOR_EVENTS_REJECTED = Counter("vigil_aggregator_events_rejected_total", "Events refused at the stream, never "
                                     "applied nor acknowledged as applied, by cause (seq, enum, batch_size).",
                                     ("reason",))
AGGREGATOR_EPISODES = Counter("vigil_aggregator_episodes_total", "Agent findings by episode: new (the first of an "
                              "episode of identical findings) or repeat (folded into its episode's count).",
                              ("result",))
AGGREGATOR_JOB_SIGNATURES = Counter("vigil_aggregator_job_signatures_total", "Application-class faults seen on "
                                    "enough nodes of one owner within the window to be that job's signature (no "
                                    "node quarantined for it), by owner kind.", ("kind",))
AGGREGATOR_FIELDS_TRUNCATED = Counter("vigil_aggregator_fields_truncated_total", "Strings from agents shortened to "
                                      "the stream's bounds on arrival, by field (digest: problems left out of a "
                                      "digest over its bound).", ("field",))
AGGREGATOR_EVENTS_RECEIVED = Counter("vigil_aggregator_events_received_total", "Events received from agents, by kind "
                                     "(duplicate: already applied, acknowledged again).", ("kind",))
AGGREGATOR_HEARTBEAT_SECONDS = HistogramSpec("vigil_aggregator_heartbeat_seconds", "Time to apply one Heartbeat on "
                                             "the event loop (its digest read, the node re-judged).", ())
AGGREGATOR_KUBE_RETRIES = Counter("vigil_aggregator_kube_retries_total", "Kubernetes calls retried, by cause.",
                                  ("reason",))
AGGREGATOR_KUBE_REQUESTS = Counter("vigil_aggregator_kube_requests_total", "Requests to the API server let through the "
                                   "client-side rate limit, by class (lease, quarantine, auth, node, event).",
                                   ("class",))
AGGREGATOR_KUBE_THROTTLED_SECONDS = Counter("vigil_aggregator_kube_throttled_seconds_total", "Seconds requests waited "
                                            "for the client-side rate limit (--kube-qps), by class.", ("class",))
AGGREGATOR_NODE_CACHE_NODES = Gauge("vigil_aggregator_node_cache_nodes", "Nodes in the watch-based Node cache.", ())
AGGREGATOR_NODE_CACHE_SYNCED = Gauge("vigil_aggregator_node_cache_synced", "1 once the Node cache has listed every "
                                     "Node (until then a reconcile reads the Node with a GET).", ())
AGGREGATOR_NODE_CACHE_LISTS = Counter("vigil_aggregator_node_cache_lists_total", "Full lists of Nodes the cache made "
                                      "(the first, then one per expired watch).", ())
AGGREGATOR_NODE_CACHE_ERRORS = Counter("vigil_aggregator_node_cache_errors_total", "Failed lists and watches of the "
                                       "Node cache (each retried with backoff).", ())
AGGREGATOR_LEADER = Gauge("vigil_aggregator_leader", "1 while this replica holds the Lease (and is Ready).", ())
AGGREGATOR_MAINTENANCE_SKIPS = Counter("vigil_aggregator_maintenance_skips_total", "Decisions not acted on because "
                                       "the node is annotated vigil.dev/maintenance.", ())
AGGREGATOR_NODES = Gauge("vigil_aggregator_nodes", "Nodes known to this replica, by verdict.", ("verdict",))
AGGREGATOR_VALIDATIONS = Counter("vigil_aggregator_validations_total", "Validations the agents ran (or could not) "
                                 "for this aggregator, by result (pass, fail, unknown, unavailable) and trigger "
                                 "(startup, release, manual, periodic).", ("result", "trigger"))
AGGREGATOR_VALIDATIONS_RUNNING = Gauge("vigil_aggregator_validations_running", "Validations requested and awaiting "
                                       "their result.", ())
AGGREGATOR_STREAMS = Gauge("vigil_aggregator_streams", "Agent streams open now.", ())
AGGREGATOR_STREAMS_REFUSED = Counter("vigil_aggregator_streams_refused_total", "Agent streams refused, by reason.",
                                     ("reason",))

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAST_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.01, 0.1)  # work on the event loop


@dataclass
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.total += v
        self.n += 1

    def cumulative(self) -> list[tuple[float, float]]:
        out, acc = [], 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append((b, float(acc)))
        return out


@dataclass
class AggregatorMetrics:
    events: dict[str, int] = field(default_factory=dict)  # kind: state | info | duplicate
    batches: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason
    rejected: dict[str, int] = field(default_factory=dict)  # events refused, by reason
    truncated: dict[str, int] = field(default_factory=dict)  # field
    streams: int = 0
    decisions: dict[str, int] = field(default_factory=dict)  # verdict
    actions: dict[tuple[str, str], int] = field(default_factory=dict)  # (action, result)
    kube_retries: dict[str, int] = field(default_factory=dict)  # reason: 409, 500, timeout...
    decision_latency: Histogram = field(default_factory=Histogram)
    cordon_latency: Histogram = field(default_factory=Histogram)
    heartbeat_time: Histogram = field(default_factory=lambda: Histogram(FAST_BUCKETS))
    maintenance_skips: int = 0
    episodes: dict[str, int] = field(default_factory=dict)  # new | repeat
    signatures: dict[str, int] = field(default_factory=dict)  # owner kind
    breaker_open: bool = False
    leader: bool = False
    nodes: Callable[[], dict[str, int]] = lambda: {}
    limiter: Any = None  # ratelimit.PriorityLimiter, when --kube-qps is on
    node_cache: Any = None  # nodecache.NodeCache, when on
    validations: dict[tuple[str, str], int] = field(default_factory=dict)  # (result, trigger): validation.py
    validations_running: Callable[[], int] = lambda: 0

    def bump(self, d: dict, key: object, n: int = 1) -> None:
        d[key] = d.get(key, 0) + n

    def metric_set(self) -> MetricSet:
        ms = MetricSet()
        for kind in sorted(set(self.events) | {"state", "info", "duplicate"}):
            ms.add(AGGREGATOR_EVENTS_RECEIVED, {"kind": kind}, self.events.get(kind, 0))
        ms.add(AGGREGATOR_BATCHES_RECEIVED, {}, self.batches)
        ms.declare(AGGREGATOR_EVENTS_REJECTED)
        for reason, n in sorted(self.rejected.items()):
            ms.add(AGGREGATOR_EVENTS_REJECTED, {"reason": reason}, n)
        ms.declare(AGGREGATOR_FIELDS_TRUNCATED)
        for name, n in sorted(self.truncated.items()):
            ms.add(AGGREGATOR_FIELDS_TRUNCATED, {"field": name}, n)
        ms.declare(AGGREGATOR_STREAMS_REFUSED)
        for reason, n in sorted(self.refused.items()):
            ms.add(AGGREGATOR_STREAMS_REFUSED, {"reason": reason}, n)
        ms.add(AGGREGATOR_STREAMS, {}, self.streams)
        ms.declare(AGGREGATOR_DECISIONS)
        for verdict, n in sorted(self.decisions.items()):
            ms.add(AGGREGATOR_DECISIONS, {"verdict": verdict}, n)
        ms.declare(AGGREGATOR_ACTIONS)
        for (action, result), n in sorted(self.actions.items()):
            ms.add(AGGREGATOR_ACTIONS, {"action": action, "result": result}, n)
        ms.declare(AGGREGATOR_KUBE_RETRIES)
        for reason, n in sorted(self.kube_retries.items()):
            ms.add(AGGREGATOR_KUBE_RETRIES, {"reason": reason}, n)
        ms.add(AGGREGATOR_MAINTENANCE_SKIPS, {}, self.maintenance_skips)
        for result in ("new", "repeat"):
            ms.add(AGGREGATOR_EPISODES, {"result": result}, self.episodes.get(result, 0))
        ms.declare(AGGREGATOR_JOB_SIGNATURES)
        for kind, n in sorted(self.signatures.items()):
            ms.add(AGGREGATOR_JOB_SIGNATURES, {"kind": kind}, n)
        ms.declare(AGGREGATOR_VALIDATIONS)
        for (result, trigger), n in sorted(self.validations.items()):
            ms.add(AGGREGATOR_VALIDATIONS, {"result": result, "trigger": trigger}, n)
        ms.add(AGGREGATOR_VALIDATIONS_RUNNING, {}, self.validations_running())
        ms.add(AGGREGATOR_BREAKER_OPEN, {}, 1 if self.breaker_open else 0)
        ms.add(AGGREGATOR_LEADER, {}, 1 if self.leader else 0)
        ms.declare(AGGREGATOR_NODES)
        for verdict, n in sorted(self.nodes().items()):
            ms.add(AGGREGATOR_NODES, {"verdict": verdict}, n)
        h = self.decision_latency
        ms.add_histogram(AGGREGATOR_DECISION_LATENCY_SECONDS, {}, h.cumulative(), h.n, h.total)
        h = self.cordon_latency
        ms.add_histogram(AGGREGATOR_CORDON_LATENCY_SECONDS, {}, h.cumulative(), h.n, h.total)
        h = self.heartbeat_time
        ms.add_histogram(AGGREGATOR_HEARTBEAT_SECONDS, {}, h.cumulative(), h.n, h.total)
        if self.limiter is not None:
            from .ratelimit import CLASSES

            for cls, name in CLASSES.items():
                ms.add(AGGREGATOR_KUBE_REQUESTS, {"class": name}, self.limiter.requests.get(cls, 0))
                ms.add(AGGREGATOR_KUBE_THROTTLED_SECONDS, {"class": name}, self.limiter.waited.get(cls, 0.0))
        cache = self.node_cache
        if cache is not None:
            ms.add(AGGREGATOR_NODE_CACHE_NODES, {}, len(cache))
            ms.add(AGGREGATOR_NODE_CACHE_SYNCED, {}, 1 if cache.synced.is_set() else 0)
            ms.add(AGGREGATOR_NODE_CACHE_LISTS, {}, cache.lists)
            ms.add(AGGREGATOR_NODE_CACHE_ERRORS, {}, cache.errors)
        return ms

    def render(self) -> bytes:
        return render(self.metric_set())


def metrics_http(host: str, port: int, body: Callable[[], bytes], ready: Callable[[], bool]):
    """/metrics, /healthz (the process is alive) and /readyz (200 only on the Lease holder)."""
    from agent.base.http import MetricsServer

    def readyz() -> tuple[int, bytes]:
        return (200, b"leader\n") if ready() else (503, b"standby\n")

    return MetricsServer(host, port, body, lambda: (True, "ok"), {"/readyz": readyz})
