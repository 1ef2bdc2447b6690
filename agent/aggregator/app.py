"""One aggregator replica, wired: gRPC server + engine + Lease + auth + /metrics. The CLI, the demo and the tests
all build it through `Replica`."""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from .auth import AllowAll, TokenReviewer
from .engine import AggregatorConfig, Engine
from .kube import Kube
from .lease import LeaderElector, StaticLeader
from agent.base.config import parse_listen
from agent.base.http import ListenError, MetricsServer
from .metrics import AggregatorMetrics, metrics_http
from .server import HealthService, make_server

log = logging.getLogger(__name__)


@dataclass
class ReplicaOptions:
    listen: str = "0.0.0.0:50051"
    metrics_listen: str | None = None  # HOST:PORT, None: no HTTP endpoint
    namespace: str = "vigil"
    lease_name: str = "vigil-aggregator"
    use_lease: bool = True
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    auth: bool = True
    agent_usernames: set[str] = field(default_factory=lambda: {"system:serviceaccount:vigil:vigil-agent"})
    audience: str = "vigil"
    tls: tuple[bytes, bytes] | None = None  # (key, cert) PEM
    journal: str | None = None
    node_cache: bool = True  # read Nodes from a watch (nodecache.py) instead of a GET per reconcile
    kube_qps: float | None = 100.0  # client-side rate limit of requests to the API server (ratelimit.py); None: off
    kube_burst: int = 200


class Replica:
    def __init__(self, cfg: AggregatorConfig, opts: ReplicaOptions, kube: Kube | None) -> None:
        self.cfg, self.opts, self.kube = cfg, opts, kube
        self.metrics = AggregatorMetrics()
        if opts.use_lease and kube is not None:
            self.leader: Any = LeaderElector(kube, opts.namespace, opts.lease_name, cfg.identity,
                                             duration=opts.lease_duration, renew_deadline=opts.renew_deadline,
                                             retry_period=opts.retry_period)
        else:
            self.leader = StaticLeader(cfg.identity)
        self.engine = Engine(cfg, kube, self.leader, self.metrics)
        self.node_cache: Any = None
        if kube is not None:
            if opts.kube_qps is not None and getattr(kube, "limiter", "absent") is None:
                from .ratelimit import PriorityLimiter

                kube.limiter = self.metrics.limiter = PriorityLimiter(opts.kube_qps, opts.kube_burst)
            if opts.node_cache:
                from .nodecache import NodeCache

                self.node_cache = self.metrics.node_cache = NodeCache(kube, self.engine.nodes_changed)
                self.engine.nodecache = self.node_cache
        if opts.journal:
            from .engine import journal_writer

            self.engine.applied_hooks.append(journal_writer(opts.journal))
        auth: Any = AllowAll()
        if opts.auth:
            if kube is None:
                raise ValueError("authentication needs the Kubernetes API")
            auth = TokenReviewer(kube, opts.agent_usernames, opts.audience,
                                 run=lambda fn: self.engine._io(fn))
        self.service = HealthService(self.engine, auth)
        self.server: Any = None
        self.port = 0
        self.http: MetricsServer | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self.server, self.port = make_server(self.service, self.opts.listen, self.opts.tls)
        if self.opts.metrics_listen:  # bound before gRPC serves: a taken port fails the start, not a thread
            host, port = parse_listen(self.opts.metrics_listen, "metrics_listen")
            try:
                self.http = metrics_http(host, port, self.metrics.render, self.leader.is_leader)
            except ListenError as e:
                e.what = "metrics"
                raise
        await self.server.start()
        if self.http is not None:
            self.http.start()
        if self.node_cache is not None:
            self.node_cache.start()
        self._tasks = [asyncio.create_task(self.engine.run(self._stop)),
                       asyncio.create_task(self.leader.run(self._stop))]
        log.info("vigil-aggregator %s: gRPC on port %d%s%s", self.cfg.identity, self.port,
                 f", metrics on {self.http.port}" if self.http else "", " (dry run)" if self.cfg.dry_run else "")

    async def stop(self, grace: float | None = 1.0) -> None:
        """A clean stop: give the Lease up (the standby takes over at once), close the streams."""
        if self._stop is not None:
            self._stop.set()
        if self.node_cache is not None:
            self.node_cache.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(grace)
        if self.http is not None:
            self.http.stop()

    async def kill(self) -> None:
        """As abrupt as it gets in one process (tests): streams cut, no Lease release, nothing flushed."""
        for t in self._tasks:
            t.cancel()
        if self.node_cache is not None:
            self.node_cache.stop()
        if self.server is not None:
            await self.server.stop(None)
        if self.http is not None:
            self.http.stop()

    async def serve_forever(self) -> None:
        if self._stop is None:
            await self.start()
        assert self._stop is not None
        await self._stop.wait()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()


class ReplicaThread:
    """A replica on its own event loop in a background thread (tests, the demo, the benchmark)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"replica-{replica.cfg.identity}",
                                        daemon=True)
        self._thread.start()
        self.call(replica.start())

    @property
    def port(self) -> int:
        return self.replica.port

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Any) -> Any:
        """Run a plain function on the replica's loop (engine state is only touched there)."""
        async def wrap() -> Any:
            return fn()
        return self.call(wrap())

    def stop(self, kill: bool = False) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.replica.kill() if kill else self.replica.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
