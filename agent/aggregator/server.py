"""The gRPC side of the aggregator: vigil.v1.Health/Stream on grpc.aio (DESIGN §6).

Per stream: only the Lease holder accepts (a standby answers UNAVAILABLE, so the agent tries the next
address); the token is verified (UNAUTHENTICATED); the Hello must name the token's node (PERMISSION_DENIED,
counted); then every Batch is applied and acknowledged cumulatively, every Heartbeat refreshes the digest.
When this replica loses the Lease it ends every stream with UNAVAILABLE: the agents spool and reconnect.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from agent.base.http import check_bindable

from .._proto.vigil.v1 import health_pb2 as pb
from .._proto.vigil.v1 import health_pb2_grpc as pbg
from .auth import AuthError
from .engine import Engine

log = logging.getLogger(__name__)


class HealthService(pbg.HealthServicer):
    def __init__(self, engine: Engine, auth: Any) -> None:
        self.engine = engine
        self.auth = auth
        self._streams: dict[asyncio.Task, str] = {}
        engine.leader.on_stopped.append(self.drop_all)

    def _refuse(self, reason: str) -> None:
        m = self.engine.metrics
        m.bump(m.refused, reason)

    def drop_all(self) -> None:
        """Lost the Lease: end every stream (each handler answers UNAVAILABLE)."""
        for task in list(self._streams):
            task.cancel()

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        engine = self.engine
        if not engine.leader.is_leader():
            self._refuse("standby")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "standby replica: not the Lease holder")
        try:
            ident = await self.auth.authenticate(context.invocation_metadata())
        except AuthError as e:
            self._refuse(e.reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        except Exception as e:  # noqa: BLE001 - the API server is down: let the agent retry
            self._refuse("auth_unavailable")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot verify the token now: {e}")
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            self._refuse("no_hello")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream must open with a Hello")
        hello = first.hello
        if not hello.node or not hello.spool_epoch:
            self._refuse("bad_hello")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Hello needs node and spool_epoch")
        if ident.node is not None and ident.node != hello.node:
            self._refuse("wrong_node")
            log.warning("refused: %s (node %s) reported for node %s", ident.username, ident.node, hello.node)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"this token's pod runs on {ident.node}, not {hello.node}")
        node, epoch = hello.node, hello.spool_epoch
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = node
        engine.metrics.streams += 1
        try:
            applied = engine.hello(node, hello.boot_id, epoch, hello.digest, hello.digest_seq)
            await context.write(pb.AggregatorMessage(welcome=pb.Welcome(
                applied_seq=applied, heartbeat_seconds=engine.cfg.heartbeat_seconds,
                aggregator=engine.cfg.identity)))
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    return
                which = msg.WhichOneof("body")
                if node not in engine.nodes:  # this replica's state was reset (a Lease change): start over
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "aggregator state reset; reconnect")
                if which == "batch":
                    ack = engine.batch(node, epoch, msg.batch.boot_id, msg.batch.events)
                    await context.write(pb.AggregatorMessage(ack=pb.Ack(seq=ack)))
                elif which == "heartbeat":
                    engine.heartbeat(node, epoch, msg.heartbeat.digest, msg.heartbeat.digest_seq)
                # a second hello, or a message from a newer agent: ignored (additive protocol)
        except asyncio.CancelledError:
            if not engine.leader.is_leader():
                await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica lost the Lease")
            raise
        finally:
            engine.metrics.streams -= 1
            self._streams.pop(task, None)


def make_server(service: HealthService, listen: str, tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 100000),
                                      ("grpc.keepalive_permit_without_calls", 1),
                                      ("grpc.http2.min_ping_interval_without_data_ms", 10000)])
    pbg.add_HealthServicer_to_server(service, server)
    try:
        if tls is not None:
            port = server.add_secure_port(listen, grpc.ssl_server_credentials([tls]))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:  # gRPC says only "Failed to bind": find out why (in use, not this host's address)
        host, _, text = listen.rpartition(":")
        if text.isascii() and text.isdigit():
            check_bindable(host.strip("[]") or "0.0.0.0", int(text))  # raises ListenError with the reason
        raise
    return server, port
