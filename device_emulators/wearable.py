"""One emulated wearable: enrolled identity, handshake over MQTT, sealed vitals records at its
rate, automatic rekeying, and a fresh handshake when the gateway asks for one or times out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from device_emulators.hub import MqttHub
from device_emulators.signals import VitalsGenerator
from pqlink import (
    HandshakeConfig,
    HandshakeInitiator,
    Identity,
    PqlinkError,
    PublicIdentity,
    RekeyPolicy,
    Session,
)
from servicekit.backoff import Backoff
from wire.topics import TopicKind, TopicLayout


class Record(Protocol):
    """Any record kind a wearable seals: a vitals sample, a batch of RR intervals."""

    def encode(self) -> bytes: ...


class RecordSource(Protocol):
    def next_sample(self) -> Record: ...


@dataclass
class WearableStats:
    records_sent: int = 0
    handshakes: int = 0
    handshake_failures: int = 0
    handshake_seconds: list[float] = field(default_factory=list)
    dropped: int = 0


class Wearable:
    """Sends `records` samples (or forever) at `rate` per second through a hub."""

    def __init__(
        self,
        identity: Identity,
        gateway: PublicIdentity,
        layout: TopicLayout,
        generator: VitalsGenerator | RecordSource,
        *,
        rate: float,
        session_max_age: float = 3600.0,
        rekey: RekeyPolicy | None = None,
        handshake_timeout: float = 10.0,
        outbox_limit: int = 10_000,
    ) -> None:
        self.identity = identity
        self.gateway = gateway
        self.layout = layout
        self.generator = generator
        self.rate = rate
        self.session_max_age = session_max_age
        self.config = HandshakeConfig(rekey=rekey or RekeyPolicy())
        self.handshake_timeout = handshake_timeout
        self.record_topic = layout.topic(TopicKind.RECORD, identity.name)
        self._record_topic_bytes = self.record_topic.encode()
        self.init_topic = layout.topic(TopicKind.HANDSHAKE, identity.name)
        self.response_topic = layout.topic(TopicKind.RESPONSE, identity.name)
        self.session: Session | None = None
        self._session_started = 0.0
        self.stats = WearableStats()
        # Samples taken but not yet published survive disconnections (bounded: oldest dropped).
        self._outbox: deque[Record] = deque(maxlen=outbox_limit)

    async def handshake(self, hub: MqttHub) -> Session:
        """Run the handshake until it succeeds (new init after each timeout)."""
        queue = hub.response_queue(self.response_topic)
        backoff = Backoff(0.5, 10.0)
        while True:
            initiator = HandshakeInitiator(self.identity, self.gateway, self.config)
            t0 = time.perf_counter()
            frame = initiator.start()
            while not queue.empty():
                queue.get_nowait()
            await hub.publish(self.init_topic, frame)
            deadline = time.monotonic() + self.handshake_timeout
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    response = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                try:
                    session = initiator.receive(response)
                except PqlinkError:
                    # A late response to an earlier init, or a forgery: start over.
                    break
                self.stats.handshakes += 1
                self.stats.handshake_seconds.append(time.perf_counter() - t0)
                self.session = session
                self._session_started = time.monotonic()
                return session
            self.stats.handshake_failures += 1
            # Not a wait for a condition: handshakes back off so a busy gateway can recover.
            await asyncio.sleep(backoff.failed())

    async def send_outbox(self, hub: MqttHub) -> None:
        """Seal and publish what the outbox holds, after a handshake if the session is gone."""
        session = self.session
        if session is None or time.monotonic() - self._session_started > self.session_max_age:
            session = await self.handshake(hub)
        while self._outbox:
            sample = self._outbox[0]
            frame = session.seal(sample.encode(), self._record_topic_bytes)
            await hub.publish(self.record_topic, frame)
            self._outbox.popleft()
            self.stats.records_sent += 1

    async def run(self, hub: MqttHub, stop: asyncio.Event, records: int | None) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not stop.is_set() and (records is None or self.stats.records_sent < records):
            if records is None or self.stats.records_sent + len(self._outbox) < records:
                self._outbox.append(self.generator.next_sample())
            await self.send_outbox(hub)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                next_at = time.monotonic()  # behind schedule: do not burst to catch up
                await asyncio.sleep(0)
