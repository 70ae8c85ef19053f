"""The gateway's AMQP edge (aio-pika): receives signed global models into the spool and
publishes spooled model updates with publisher confirms, reconnecting with backoff.

aio-pika rather than pika: the daemon is one asyncio program, and aio-pika's awaitable
publisher confirms and async consumers fit its task group; pika's BlockingConnection would
need a thread of its own and hand-written cross-thread signalling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import AMQPError

from gateway.spool import Spool
from pqlink.broadcast import BODY_TYPE, ENTRY_TYPE, join_delivery, peek_broadcast, peek_entry
from servicekit.backoff import Backoff
from servicekit.logs import EventLog
from wire.amqp import (
    GATEWAY_QUEUE_ARGUMENTS,
    GLOBAL_EXCHANGE,
    GLOBAL_KEYS_EXCHANGE,
    GLOBAL_STREAM,
    GLOBAL_STREAM_ARGUMENTS,
    GLOBAL_STREAM_OFFSET,
    UPDATES_QUEUE,
    UPDATES_QUEUE_ARGUMENTS,
    broker_urls,
    gateway_queue,
)
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.reasons import Event


class Uplink:
    """Owns the AMQP connection. Spool calls run in `executor` (the daemon's store thread)."""

    def __init__(  # noqa: PLR0917 -- the daemon wires these once
        self,
        url: str,
        gateway_id: str,
        spool: Spool,
        executor: Executor,
        log: EventLog,
        on_global: Callable[[], Awaitable[None]],
        *,
        max_delay: float = 30.0,
        codec: EnvelopeCodec | None = None,
    ) -> None:
        self.codec = codec or SealedCodec()
        self.url = url
        self.gateway_id = gateway_id
        self.spool = spool
        self.executor = executor
        self.log = log
        self.on_global = on_global
        self.max_delay = max_delay
        # The uplink reports a lost link as its own `uplink_disconnected` event: the AMQP
        # libraries' error lines for the same loss (tracebacks, plain text) would only break
        # the structured log stream.
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.connected = False
        self.published = 0
        self.reconnects = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was spooled: publish it now."""
        self._wake.set()

    async def _spool(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.2, self.max_delay)
        urls = broker_urls(self.url)
        attempt = 0
        while not stop.is_set():
            # Each attempt tries the next node: a cluster that lost one still takes us.
            url = urls[attempt % len(urls)]
            attempt += 1
            try:
                connection = await aio_pika.connect(url, timeout=10)
            except (TimeoutError, AMQPError, OSError) as exc:
                self.log.event(Event.UPLINK_UNREACHABLE, level=logging.WARNING, reason=str(exc))
                await backoff.wait(stop)
                continue
            backoff.succeeded()
            try:
                async with connection:
                    channel = await connection.channel(publisher_confirms=True)
                    await channel.set_qos(prefetch_count=4)
                    self.connected = True
                    self.log.event(Event.UPLINK_CONNECTED)
                    # One group per connection: a failing part (or the connection closing)
                    # cancels the others; a stop request cancels all three.
                    async with asyncio.TaskGroup() as tg:
                        parts = (
                            tg.create_task(self._consume(channel)),
                            tg.create_task(self._publish_loop(channel)),
                            tg.create_task(self._closed(connection)),
                        )
                        await stop.wait()
                        for part in parts:
                            part.cancel()
            except* (AMQPError, OSError, aio_pika.exceptions.AMQPException, RuntimeError) as group:
                self.log.event(
                    Event.UPLINK_DISCONNECTED,
                    level=logging.WARNING,
                    reason=str(group.exceptions[0]),
                )
            finally:
                self.connected = False
            if not stop.is_set():
                self.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.delay)

    async def _closed(self, connection: aio_pika.abc.AbstractConnection) -> None:
        # `connection.closed()` resolves only on a close we asked for: a connection the
        # network reset ends in the close callbacks alone, and without them the consumer and
        # the publisher would wait on a dead connection for ever.
        lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def on_close(_sender: object, exc: BaseException | None = None) -> None:
            if not lost.done():
                lost.set_result(exc)

        connection.close_callbacks.add(on_close)
        try:
            cause = await lost
        finally:
            connection.close_callbacks.discard(on_close)
        raise ConnectionError(f"AMQP connection closed: {cause!r}")

    async def _consume(self, channel: AbstractChannel) -> None:
        exchange = await channel.declare_exchange(
            GLOBAL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        stream = await channel.declare_queue(
            GLOBAL_STREAM, durable=True, arguments=GLOBAL_STREAM_ARGUMENTS
        )
        await stream.bind(exchange)
        queue = await channel.declare_queue(
            gateway_queue(self.gateway_id), durable=True, arguments=GATEWAY_QUEUE_ARGUMENTS
        )
        keys = await channel.declare_exchange(
            GLOBAL_KEYS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        await queue.bind(keys, routing_key=self.gateway_id)
        # Bodies from the shared stream, key entries (one per key epoch) from our own queue;
        # either may come first, the spool pairs them by epoch id.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._drain(queue, {}))
            tg.create_task(self._drain(stream, {"x-stream-offset": GLOBAL_STREAM_OFFSET}))

    async def _drain(self, queue: aio_pika.abc.AbstractQueue, arguments: dict[str, str]) -> None:
        async with queue.iterator(arguments=arguments) as messages:
            async for message in messages:
                await self._received(message)

    async def _received(self, message: AbstractIncomingMessage) -> None:
        body = bytes(message.body)
        part: tuple[bytes, str, int | None] | None = None
        try:
            if body[:1] == bytes((BODY_TYPE,)):  # the broadcast body, from the stream
                meta = peek_broadcast(body)
                part = (meta.epoch_id, "body", meta.round)
            elif body[:1] == bytes((ENTRY_TYPE,)):  # this gateway's key entry of an epoch
                part = (peek_entry(body).epoch_id, "entry", None)
            else:
                round_ = self.codec.peek_round(body)
        except Exception as exc:
            self.log.event(
                Event.GLOBAL_REJECTED, level=logging.WARNING, reason=f"undecodable: {exc}"
            )
            await message.ack()
            return
        # Durable before the ack: a crash after this still applies the model on restart.
        if part is None:
            await self._spool(self.spool.put_global, round_, body)
        else:
            epoch_id, kind, round_or_none = part
            # A body is not synced to disk: the stream keeps it after delivery, and a gateway
            # restarting reads the newest again (an fsync costs milliseconds on the round's
            # path). A key entry leaves its queue with the ack, so it is synced first; it
            # comes once per key epoch, not once per round.
            complete = await self._spool(
                partial(self.spool.put_global_part, synced=kind != "body"),
                epoch_id,
                kind,
                body,
                round_or_none,
                join_delivery,
            )
            if not complete:  # the epoch's entry (or a body of its epoch) is on its way
                if kind == "body":
                    await self._entry_missing(epoch_id, round_or_none)
                await message.ack()
                return
        await message.ack()
        await self.on_global()

    async def _entry_missing(self, epoch_id: bytes, round_: int | None) -> None:
        """A body waits for its epoch's entry. The entry of an epoch's first body may simply
        come a moment after it (two consumers); a second body still without one means the
        entry is gone, which an operator must see."""
        waiting = await self._spool(self.spool.waiting_bodies, epoch_id)
        assert isinstance(waiting, int)
        if waiting >= 2:
            self.log.event(
                Event.GLOBAL_WAITING_FOR_KEY,
                level=logging.WARNING,
                epoch=epoch_id.hex()[:16],
                round=round_,
                waiting=waiting,
            )

    async def _publish_loop(self, channel: AbstractChannel) -> None:
        await channel.declare_queue(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)
        pending = await self._spool(self.spool.pending_updates)
        while True:
            assert isinstance(pending, list)
            if not pending:
                # Cleared only after a read found nothing: an update spooled after that read
                # wakes us again (its wake comes after the read's result on this loop).
                self._wake.clear()
                await self._wake.wait()
                pending = await self._spool(self.spool.pending_updates)
                continue
            item = pending[0]
            # With publisher confirms, publish() returns once the broker has it durably.
            # Headers are not authenticated: they carry timings for reports, nothing else.
            # Integers: AMQP field tables carry floats as 32-bit in aiormq, too coarse here.
            headers = {
                "seal_us": round(item.seal_seconds * 1e6),
                "published_at_us": round(time.time() * 1e6),
            }
            await channel.default_exchange.publish(
                aio_pika.Message(
                    item.envelope,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers=headers,
                ),
                routing_key=UPDATES_QUEUE,
            )
            # Deleted from the outbox and the rest read in one store-thread call.
            pending = await self._spool(self.spool.confirmed_then_pending, item.id)
            self.published += 1
            self.log.event(Event.UPDATE_CONFIRMED, round=item.round, bytes=len(item.envelope))
