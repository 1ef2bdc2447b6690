"""The gRPC side of the aggregator: vigil.v1.Health/Stream on grpc.aio (DESIGN §6).

Per stream: only the Lease holder accepts (a standby answers UNAVAILABLE, so the agent tries the next
address); the token is verified (UNAUTHENTICATED); a Hello must come within the Hello deadline
(DEADLINE_EXCEEDED) and name the token's node (PERMISSION_DENIED, counted); then every Batch is applied and
acknowledged cumulatively, every Heartbeat refreshes the digest. What the stream accepts is bounded (intake.py):
a message that cannot be accepted ends the stream with INVALID_ARGUMENT naming the field, an event that cannot be
applied is named in the Ack (to an agent that reads rejections) and never acknowledged as applied. A stream that
sends nothing for the idle timeout is ended; so is an older stream of the same (node, spool epoch) (ABORTED), and
every stream when this replica loses the Lease (UNAVAILABLE): the agents spool and reconnect.

A pending read is never cancelled: grpc.aio leaks a little native memory for each cancelled read
(grpc/grpc#43360). Each read waits beside the deadline and the stream's end, and a stream that must end returns
its status with the read still pending: finishing the call completes it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from agent import wire
from agent.base.http import check_bindable

from .._proto.vigil.v1 import health_pb2 as pb
from .._proto.vigil.v1 import health_pb2_grpc as pbg
from . import intake
from .auth import AuthError
from .engine import Engine, StreamHandle
from .intake import printable

log = logging.getLogger(__name__)

_TIMEOUT, _ENDED = object(), object()


class _End(Exception):
    """End the call with this status (raised inside the handler, turned into set_code/set_details)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a read left pending when its stream ended: its outcome is of no interest


class HealthService(pbg.HealthServicer):
    def __init__(self, engine: Engine, auth: Any) -> None:
        self.engine = engine
        self.auth = auth

    def _refuse(self, reason: str) -> None:
        m = self.engine.metrics
        m.bump(m.refused, reason)

    async def _next(self, context: grpc.aio.ServicerContext, timeout: float,
                    stream: StreamHandle | None = None) -> Any:
        """The next message, EOF, _TIMEOUT after `timeout` seconds, or _ENDED when the engine ended the stream."""
        read = asyncio.ensure_future(context.read())
        read.add_done_callback(_retrieve)  # also when this handler is cancelled (the agent went away) mid-wait
        waits: set[asyncio.Future] = {read}
        if stream is not None:
            waits.add(stream.ended)
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if read in done:
            return read.result()
        # the read is left pending, not cancelled: see the module's docstring
        return _ENDED if stream is not None and stream.ended.done() else _TIMEOUT

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        try:
            await self._serve(context)
        except _End as e:
            context.set_code(e.code)
            context.set_details(e.details)

    async def _serve(self, context: grpc.aio.ServicerContext) -> None:
        engine = self.engine
        cfg = engine.cfg
        if not engine.leader.is_leader():
            self._refuse("standby")
            raise _End(grpc.StatusCode.UNAVAILABLE, "standby replica: not the Lease holder")
        try:
            ident = await self.auth.authenticate(context.invocation_metadata())
        except AuthError as e:
            self._refuse(e.reason)
            raise _End(grpc.StatusCode.UNAUTHENTICATED, str(e)) from None
        except Exception as e:  # noqa: BLE001 - the API server is down: let the agent retry
            self._refuse("auth_unavailable")
            raise _End(grpc.StatusCode.UNAVAILABLE, f"cannot verify the token now: {e}") from None
        first = await self._next(context, cfg.hello_seconds)
        if first is _TIMEOUT:
            self._refuse("hello_timeout")
            raise _End(grpc.StatusCode.DEADLINE_EXCEEDED,
                       f"no Hello within {cfg.hello_seconds:g}s of the stream's start: the stream must open with one")
        if first is grpc.aio.EOF or not first.HasField("hello"):
            self._refuse("no_hello")
            raise _End(grpc.StatusCode.INVALID_ARGUMENT, "the stream must open with a Hello")
        try:
            hello = intake.read_hello(first.hello, engine._cut)
        except intake.Invalid as e:
            self._refuse(e.reason)
            raise _End(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if ident.node is not None and ident.node != hello.node:
            self._refuse("wrong_node")
            log.warning("refused: %s (node %s) reported for node %s", printable(ident.username), ident.node,
                        printable(hello.node[:253]))
            raise _End(grpc.StatusCode.PERMISSION_DENIED,
                       f"this token's pod runs on {ident.node}, not {hello.node}")
        if not engine.leader.is_leader():  # lost the Lease while authenticating
            self._refuse("standby")
            raise _End(grpc.StatusCode.UNAVAILABLE, "this replica lost the Lease")
        node, epoch = hello.node, hello.epoch
        stream = StreamHandle(node, epoch, hello.handles_rejections)
        engine.metrics.streams += 1
        try:
            await self._session(context, stream, hello, first.hello)
        finally:
            engine.metrics.streams -= 1
            engine.close_stream(stream)

    async def _session(self, context: grpc.aio.ServicerContext, stream: StreamHandle, hello: intake.HelloIn,
                       msg: Any) -> None:
        engine = self.engine
        node, epoch = hello.node, hello.epoch
        try:
            applied = engine.hello(node, hello.boot_id, epoch, msg.digest, msg.digest_seq, stream)
        except intake.Invalid as e:
            self._refuse(e.reason)
            raise _End(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        welcome = pb.Welcome(applied_seq=applied, heartbeat_seconds=engine.cfg.heartbeat_seconds,
                             aggregator=engine.cfg.identity, max_message_bytes=wire.MAX_MESSAGE_BYTES,
                             max_batch_events=wire.MAX_BATCH_EVENTS)
        if stream.handles_rejections:
            welcome.rejected.extend(pb.Rejection(seq=s, reason=r) for s, r in engine.rejections(node, epoch))
        await context.write(pb.AggregatorMessage(welcome=welcome))
        idle = engine.cfg.idle_seconds
        while True:
            msg = await self._next(context, idle, stream)
            if msg is grpc.aio.EOF:
                return
            if msg is _ENDED or stream.ended.done():
                code, details = stream.ended.result()
                raise _End(getattr(grpc.StatusCode, code), details)
            if msg is _TIMEOUT:
                self._refuse("idle")
                raise _End(grpc.StatusCode.DEADLINE_EXCEEDED, f"nothing received for {idle:g}s (no heartbeat)")
            if node not in engine.nodes:  # this replica's state was reset (a Lease change): start over
                raise _End(grpc.StatusCode.UNAVAILABLE, "aggregator state reset; reconnect")
            which = msg.WhichOneof("body")
            try:
                if which == "batch":
                    res = engine.batch(node, epoch, msg.batch.boot_id, msg.batch.events, stream)
                    ack = pb.Ack(seq=res.ack)
                    ack.rejected.extend(pb.Rejection(seq=r.seq, reason=r.reason) for r in res.rejected)
                    await context.write(pb.AggregatorMessage(ack=ack))
                    if res.stop is not None:
                        raise _End(grpc.StatusCode.INVALID_ARGUMENT, f"Batch refused at {res.stop.reason}; nothing "
                                   f"from seq {res.stop.seq} on was applied")
                elif which == "heartbeat":
                    engine.heartbeat(node, epoch, msg.heartbeat.digest, msg.heartbeat.digest_seq, stream)
                # a second hello, or a message from a newer agent: ignored (additive protocol)
            except intake.Invalid as e:
                self._refuse(e.reason)
                raise _End(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None


def make_server(service: HealthService, listen: str, tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 100000),
        ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),  # explicit: the Welcome tells agents
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_ping_interval_without_data_ms", 10000),
        # ping idle connections so that a peer gone without a FIN (a node powered off) is noticed in a minute,
        # not after the kernel's TCP timeout of hours
        ("grpc.keepalive_time_ms", 60000), ("grpc.keepalive_timeout_ms", 20000)])
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
