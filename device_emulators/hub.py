"""One MQTT connection shared by a group of emulated wearables (as a phone or bedside hub
would hold it), with reconnection, QoS 1 publishing and per-device response queues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import aiomqtt

from device_emulators.errors import HubClosedError
from servicekit.backoff import Backoff

_LOG = logging.getLogger("device_emulators.hub")
#: On a stop request, how long publishes already handed to the client may take to be
#: acknowledged before the hub disconnects (milliseconds with a live broker; a publish the
#: disconnect cut off would otherwise wait out the client's whole timeout).
DRAIN_SECONDS = 2.0


class MqttHub:
    """Owns one aiomqtt client; `publish` waits while disconnected instead of failing, until the
    hub stops: from then on `publish` and `response` raise HubClosedError."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        max_inflight: int = 1000,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.max_inflight = max_inflight
        self.tls_context = tls_context
        self._client: aiomqtt.Client | None = None
        self._generation = 0  # one per successful connection
        self._changed = asyncio.Condition()
        self._closed = asyncio.Event()  # set when `run` has returned, for good
        self._publishing = 0  # publishes handed to the client, not yet acknowledged
        self._quiet = asyncio.Event()  # set while none is
        self._quiet.set()
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self.reconnects = 0
        self.publish_retries = 0

    def response_queue(self, topic: str, maxsize: int = 16) -> asyncio.Queue[bytes]:
        """Messages arriving on `topic` (subscribed on every (re)connection); when full, the
        oldest message is dropped (`maxsize` is used when the queue is first made)."""
        return self._queues.setdefault(topic, asyncio.Queue(maxsize=maxsize))

    @property
    def generation(self) -> int:
        """Counts successful connections: a change means the hub reconnected."""
        return self._generation

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            # Whatever ended it (the stop request, a cancellation): wake everyone waiting for a
            # connection, which will not come any more.
            self._closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.1, 5.0)
        while not stop.is_set():
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                max_inflight_messages=self.max_inflight,
                keepalive=30,
                timeout=10,
                tls_context=self.tls_context,
            )
            client.pending_calls_threshold = 1_000_000  # many wearables publish concurrently
            try:
                async with client:
                    if self._queues:
                        await client.subscribe([(t, 1) for t in self._queues])
                    async with self._changed:
                        self._client = client
                        self._generation += 1
                        self._changed.notify_all()
                    backoff.succeeded()
                    # The reader belongs to this connection: a broken link ends it (and the
                    # group), a stop request cancels it.
                    async with asyncio.TaskGroup() as tg:
                        reader = tg.create_task(self._read(client))
                        await stop.wait()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._quiet.wait(), DRAIN_SECONDS)
                        reader.cancel()
            except* aiomqtt.MqttError as group:
                _LOG.debug("hub %s disconnected: %s", self.client_id, group.exceptions[0])
            finally:
                self._client = None
            if stop.is_set():
                break
            self.reconnects += 1
            await backoff.wait(stop)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            queue = self._queues.get(message.topic.value)
            payload = message.payload
            if queue is not None and isinstance(payload, bytes | bytearray):
                if queue.full():
                    queue.get_nowait()  # keep the newest: old responses are useless
                queue.put_nowait(bytes(payload))

    async def _current(self, not_generation: int = -1) -> tuple[aiomqtt.Client, int]:
        """The live connection (a newer one than `not_generation`, if given); HubClosedError
        once the hub has stopped."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._closed.is_set()
                    or (self._client is not None and self._generation != not_generation)
                )
            )
            if self._closed.is_set():
                raise self._stopped()
            assert self._client is not None
            return self._client, self._generation

    def _stopped(self) -> HubClosedError:
        return HubClosedError(f"MQTT hub {self.client_id} has stopped")

    async def response(self, queue: asyncio.Queue[bytes], timeout: float) -> bytes:
        """The next message of a response queue within `timeout` seconds (TimeoutError
        otherwise); HubClosedError if the hub stops first."""
        if self._closed.is_set():
            raise self._stopped()
        got = asyncio.ensure_future(queue.get())
        closed = asyncio.ensure_future(self._closed.wait())
        waiting: set[asyncio.Future[Any]] = {got, closed}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            if not got.done():
                got.cancel()
        if got in done:
            return got.result()
        if closed in done:
            raise self._stopped()
        raise TimeoutError

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._current(), timeout)

    async def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish; after a failure, wait for the hub's next connection and retry."""
        client, generation = await self._current()
        while True:
            self._publishing += 1
            self._quiet.clear()
            try:
                await client.publish(topic, payload, qos=1)
                return
            except aiomqtt.MqttError:
                self.publish_retries += 1
            finally:
                self._publishing -= 1
                if not self._publishing:
                    self._quiet.set()
            client, generation = await self._current(not_generation=generation)
