"""A benchmark fleet: many wearables in one process speaking pqlink over one MQTT connection,
with pre-sealed records so that the publisher costs as little as possible."""

from __future__ import annotations

import asyncio
import time

import aiomqtt

from pqlink import HandshakeInitiator, Identity, PublicIdentity, Session
from wire.topics import TopicKind, TopicLayout
from wire.vitals import Activity, EventLabel, VitalsSample


def sample(seq: int) -> VitalsSample:
    return VitalsSample(
        seq,
        1_700_000_000_000 + seq * 1000,
        60 + seq % 50,
        97.5,
        33.2,
        1.0,
        Activity.WALK,
        EventLabel.NONE,
    )


async def establish(
    port: int,
    layout: TopicLayout,
    gateway: PublicIdentity,
    identities: list[Identity],
    timeout: float = 60.0,
) -> tuple[dict[str, Session], float]:
    """Handshake every identity at once; return the sessions and the seconds until the last."""
    initiators: dict[str, HandshakeInitiator] = {}
    sessions: dict[str, Session] = {}
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-fleet-hs", max_inflight_messages=1000, timeout=30
    ) as client:
        client.pending_calls_threshold = 1_000_000
        await client.subscribe(layout.subscription(TopicKind.RESPONSE), qos=1)
        t0 = time.perf_counter()
        frames = []
        for ident in identities:
            init = HandshakeInitiator(ident, gateway)
            initiators[ident.name] = init
            frames.append((layout.topic(TopicKind.HANDSHAKE, ident.name), init.start()))
        await asyncio.gather(*(client.publish(t, f, qos=1) for t, f in frames))

        async def collect() -> None:
            async for message in client.messages:
                device = message.topic.value.rsplit("/", 1)[1]
                init = initiators.get(device)
                if init is not None and device not in sessions:
                    sessions[device] = init.receive(bytes(message.payload))
                    if len(sessions) == len(initiators):
                        return

        await asyncio.wait_for(collect(), timeout)
        return sessions, time.perf_counter() - t0


async def publish_all(port: int, frames: list[tuple[str, bytes]], window: int = 800) -> float:
    """QoS 1 publish of every frame with up to `window` in flight; returns seconds taken."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-fleet-pub", max_inflight_messages=window, timeout=60
    ) as client:
        client.pending_calls_threshold = 1_000_000
        t0 = time.perf_counter()
        for i in range(0, len(frames), window):
            await asyncio.gather(*(client.publish(t, f, qos=1) for t, f in frames[i : i + window]))
        return time.perf_counter() - t0
