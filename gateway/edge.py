"""The gateway's MQTT edge: one broker connection as an async context manager, incoming
messages as an async iterator, and acknowledgements the caller sends once work is durable.

Built on paho-mqtt's public API (manual acknowledgement is public there): paho's network
thread hands each message to the event loop, which is the only place it is handled."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import GatewayError

_CONNECT_TIMEOUT: Final = 10.0


class EdgeError(GatewayError):
    """The broker refused us, could not be reached, or the connection dropped."""


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    receive_maximum: int = 1000  # unacknowledged QoS 1 messages the broker may send us
    session_expiry: int = 7 * 24 * 3600  # seconds the broker keeps our queue while we are down
    tls_context: ssl.SSLContext | None = None  # TLS to the broker (servicekit.mqtt_tls)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


_DISCONNECTED: Final = object()


class MqttEdge:
    """One connection, resumed from the broker-side session (clean_start=False), so nothing
    queued while we were away is lost; messages are acknowledged only through `ack`."""

    def __init__(self, settings: EdgeSettings, subscriptions: Sequence[str]) -> None:
        self.settings = settings
        self.subscriptions = tuple(subscriptions)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[Message | object] = asyncio.Queue()
        self._connected: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._closed = False
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,  # the daemon reconnects with backoff, as a new edge
            manual_ack=True,
        )
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls_context is not None:
            self._client.tls_set_context(settings.tls_context)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # -- paho's network thread: hand everything to the event loop ---------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._call(self._settle, self._connected, None if reason == 0 else str(reason))

    def _on_subscribe(self, _c: Any, _u: Any, _m: int, reasons: list[ReasonCode], _p: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        self._call(self._settle, self._subscribed, ", ".join(failed) or None)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._call(self._dropped, str(reason))

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        message = Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos)
        self._call(self._inbox.put_nowait, message)

    # -- the event loop ---------------------------------------------------------------------

    @staticmethod
    def _settle(future: asyncio.Future[None] | None, error: str | None) -> None:
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(EdgeError(error))

    def _dropped(self, reason: str) -> None:
        for future in (self._connected, self._subscribed):
            self._settle(future, f"disconnected: {reason}")
        self._inbox.put_nowait(_DISCONNECTED)

    async def __aenter__(self) -> MqttEdge:
        self._loop = asyncio.get_running_loop()
        self._connected = self._loop.create_future()
        self._subscribed = self._loop.create_future()
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = s.receive_maximum
        try:
            await self._loop.run_in_executor(
                None,
                lambda: self._client.connect(
                    s.host, s.port, s.keepalive, clean_start=False, properties=props
                ),
            )
        except OSError as exc:
            raise EdgeError(f"cannot reach {s.host}:{s.port}: {exc}") from None
        self._client.loop_start()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await self._connected
                if self.subscriptions:
                    self._client.subscribe([(t, 1) for t in self.subscriptions])
                    await self._subscribed
        except BaseException as exc:
            await self._shutdown()
            if isinstance(exc, TimeoutError):
                raise EdgeError(f"no answer from {s.host}:{s.port}") from None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self._client.disconnect()
        # loop_stop joins paho's thread: not on the event loop.
        await asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages until the connection drops (then EdgeError)."""
        while True:
            item = await self._inbox.get()
            if isinstance(item, Message):
                yield item
            else:
                raise EdgeError("connection lost")

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message; void once this connection is gone (the broker then
        redelivers it to the next connection, and the store drops the duplicate)."""
        if message.qos > 0 and not self._closed:
            self._client.ack(message.mid, message.qos)

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, fire and forget: paho's thread sends it and handles the PUBACK."""
        if not self._closed:
            self._client.publish(topic, payload, qos=1)
