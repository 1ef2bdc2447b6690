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
(grpc/grpc#43360), so a deadline is not a wait_for around the read. The handler reads plainly (the hot path costs
what it did), and a per-call `_Watch` (one timer) ends the call from outside with context.abort: the pending read
then raises the AbortError, which ends the handler.
"""
from __future__ import annotations

import asyncio
import logging
from time import perf_counter
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


class _End(Exception):
    """End the call with this status (raised inside the handler, where no read is pending)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Watch:
    """The end of one call, decided once: by the handler (a refusal, EOF), by a deadline (no Hello, or nothing
    received for the idle timeout), or by the engine (a newer stream, a lost Lease). A deadline and the engine end
    the call from outside, with context.abort in a task of its own, while the handler's read is still pending."""

    def __init__(self, context: grpc.aio.ServicerContext, limit: float, reason: str, text: str,
                 on_timeout: Any) -> None:
        self.context = context
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()  # the handler sets it on every message
        self.claimed = False
        self.task: asyncio.Task | None = None
        self.aborted: BaseException | None = None
        self._on_timeout = on_timeout
        self._timer: asyncio.TimerHandle | None = None
        self.arm(limit, reason, text)

    def arm(self, limit: float, reason: str, text: str) -> None:
        """(Re)start the deadline: `limit` seconds without a message ends the call with DEADLINE_EXCEEDED."""
        self.limit, self.reason, self.text = limit, reason, text
        self.last = self.loop.time()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self.last + limit, self._check)

    def _check(self) -> None:
        quiet = self.loop.time() - self.last
        if quiet < self.limit:  # a message came since: look again when the rest has passed
            self._timer = self.loop.call_at(self.last + self.limit, self._check)
            return
        self._timer = None
        if self.end_soon(grpc.StatusCode.DEADLINE_EXCEEDED, self.text) and self.reason:
            self._on_timeout(self.reason)

    def claim(self) -> bool:
        """The handler ends the call itself: True unless a deadline or the engine got there first."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.claimed:
            return False
        self.claimed = True
        return True

    def end_soon(self, code: grpc.StatusCode, details: str) -> bool:
        if not self.claim():
            return False
        self.task = self.loop.create_task(self._abort(code, details))
        return True

    async def _abort(self, code: grpc.StatusCode, details: str) -> None:
        try:
            await self.context.abort(code, details)
        except BaseException as e:  # noqa: BLE001 - grpc's AbortError: how abort() returns
            self.aborted = e

    async def end(self, code: grpc.StatusCode, details: str) -> None:
        """From the handler: end the call with this status, or, when a deadline or the engine ended it first, wait
        for that and leave the way abort() does (raising its AbortError)."""
        if self.claim():
            await self.context.abort(code, details)
        if self.task is not None:
            await asyncio.shield(self.task)
        if self.aborted is not None:
            raise self.aborted
        raise asyncio.CancelledError  # pragma: no cover - abort() always raises


class HealthService(pbg.HealthServicer):
    def __init__(self, engine: Engine, auth: Any) -> None:
        self.engine = engine
        self.auth = auth

    def _refuse(self, reason: str) -> None:
        m = self.engine.metrics
        m.bump(m.refused, reason)

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        watch = _Watch(context, self.engine.cfg.hello_seconds, "hello_timeout",
                       f"no Hello within {self.engine.cfg.hello_seconds:g}s of the stream's start: the stream must "
                       f"open with one", self._refuse)
        try:
            await self._serve(context, watch)
        except _End as e:
            await watch.end(e.code, e.details)
        finally:
            watch.claim()  # ended: no deadline fires on a finished call

    async def _serve(self, context: grpc.aio.ServicerContext, watch: _Watch) -> None:
        engine = self.engine
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
        first = await context.read()  # the Hello deadline runs from the stream's start (the watch)
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
        stream.handles_validation, stream.agent_version = bool(first.hello.handles_validation), hello.version
        stream.on_end = lambda code, details: watch.end_soon(getattr(grpc.StatusCode, code), details)
        engine.metrics.streams += 1
        try:
            await self._session(context, watch, stream, hello, first.hello)
        finally:
            engine.metrics.streams -= 1
            engine.close_stream(stream)

    async def _session(self, context: grpc.aio.ServicerContext, watch: _Watch, stream: StreamHandle,
                       hello: intake.HelloIn, msg: Any) -> None:
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
        # From here the engine may write too (a ValidateRequest): one write at a time on a call, so acks and
        # requests take turns on a lock (uncontended, as it almost always is, it costs no yield).
        lock, sending = asyncio.Lock(), set()

        async def write(m: Any) -> None:
            async with lock:
                await context.write(m)

        async def write_quietly(m: Any) -> None:
            try:
                await write(m)
            except Exception as e:  # noqa: BLE001 - the call ended meanwhile: the request times out (unknown)
                log.info("node %s: a message to the agent was not sent: %s", printable(node), e)

        def send(m: Any) -> None:
            task = asyncio.get_running_loop().create_task(write_quietly(m))
            sending.add(task)
            task.add_done_callback(sending.discard)
        stream.send = send
        engine.validation.connected(node, stream)
        idle = engine.cfg.idle_seconds
        watch.arm(idle, "", f"nothing received for {idle:g}s (no heartbeat)")  # not a refusal: the agent left
        loop = watch.loop
        while True:
            msg = await context.read()
            watch.last = loop.time()
            if msg is grpc.aio.EOF:
                return
            if stream.ended.done():  # ended by the engine since this message came: it must not be applied
                code, details = stream.ended.result()
                await watch.end(getattr(grpc.StatusCode, code), details)
            if node not in engine.nodes:  # this replica's state was reset (a Lease change): start over
                raise _End(grpc.StatusCode.UNAVAILABLE, "aggregator state reset; reconnect")
            which = msg.WhichOneof("body")
            try:
                if which == "batch":
                    res = engine.batch(node, epoch, msg.batch.boot_id, msg.batch.events, stream)
                    ack = pb.Ack(seq=res.ack)
                    ack.rejected.extend(pb.Rejection(seq=r.seq, reason=r.reason) for r in res.rejected)
                    await write(pb.AggregatorMessage(ack=ack))
                    if res.stop is not None:
                        raise _End(grpc.StatusCode.INVALID_ARGUMENT, f"Batch refused at {res.stop.reason}; nothing "
                                   f"from seq {res.stop.seq} on was applied")
                elif which == "heartbeat":
                    t0 = perf_counter()
                    engine.heartbeat(node, epoch, msg.heartbeat.digest, msg.heartbeat.digest_seq, stream)
                    engine.metrics.heartbeat_time.observe(perf_counter() - t0)
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
