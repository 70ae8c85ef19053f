"""Global-model fan-out through a private RabbitMQ: the sealed body is stored once, in the stream
every gateway reads, and each gateway's queue holds only its own key entries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from aggregator.coordinator import publish_broadcast
from aggregator.worker import declare_topology
from pqlink import ContentType, Registry
from pqlink.broadcast import (
    BODY_TYPE,
    ENTRY_TYPE,
    join_delivery,
    open_delivery,
    peek_broadcast,
    seal_broadcast,
)
from testbed import RabbitMQ
from wire.amqp import GLOBAL_STREAM, GLOBAL_STREAM_OFFSET, gateway_queue

from .conftest import Parties

ROUNDS = 3


@pytest.fixture
def channel(vhost: str) -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(vhost))
    try:
        yield conn.channel()
    finally:
        conn.close()


def _announce(channel: BlockingChannel, parties: Parties) -> None:
    declare_topology(channel, [parties.gateway.name, parties.other_gateway.name])
    channel.tx_select()
    for r in range(1, ROUNDS + 1):
        sealed = seal_broadcast(
            parties.aggregator,
            [parties.gateway.public, parties.other_gateway.public],
            b"global model %d" % r,
            content_type=ContentType.GLOBAL_MODEL,
            round=r,
        )
        publish_broadcast(channel, sealed)


def _counts(rabbitmq: RabbitMQ, vhost: str) -> dict[str, int]:
    name = vhost.rsplit("/", 1)[1]
    out = rabbitmq.ctl("list_queues", "-q", "-p", name, "name", "messages")
    rows = (line.split() for line in out.splitlines())
    return {p[0]: int(p[1]) for p in rows if len(p) == 2 and p[1].isdigit()}


def _get(channel: BlockingChannel, queue: str) -> bytes | None:
    method, _props, frame = channel.basic_get(queue, auto_ack=True)
    # types-pika declares the body as str; pika hands over bytes.
    return None if method is None else cast("bytes", frame)


def _newest_body(channel: BlockingChannel) -> bytes:
    """What a gateway attaching to the stream (back from being offline) reads first."""
    got: list[bytes] = []
    channel.basic_qos(prefetch_count=4)  # streams need a prefetch
    channel.basic_consume(
        GLOBAL_STREAM,
        lambda ch, method, _props, body: got.append(body),
        arguments={"x-stream-offset": GLOBAL_STREAM_OFFSET},
    )
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=1)
    assert got, "nothing read from the stream within 30 s"
    return got[0]


def test_body_stored_once_and_entries_addressed(
    channel: BlockingChannel, parties: Parties, rabbitmq: RabbitMQ, vhost: str
) -> None:
    _announce(channel, parties)
    # Quorum-queue counters are refreshed by the broker every few seconds: poll them.
    want = {GLOBAL_STREAM: ROUNDS}
    want |= {gateway_queue(g.name): ROUNDS for g in (parties.gateway, parties.other_gateway)}
    deadline = time.monotonic() + 30
    counts = _counts(rabbitmq, vhost)
    while any(counts.get(q) != n for q, n in want.items()) and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=1)
        counts = _counts(rabbitmq, vhost)
    for queue, n in want.items():
        assert counts.get(queue) == n, (queue, counts)
    for gw in (parties.gateway, parties.other_gateway):
        kinds = []
        for _ in range(ROUNDS):
            frame = _get(channel, gateway_queue(gw.name))
            assert frame is not None
            kinds.append(frame[0])
        assert kinds == [ENTRY_TYPE] * ROUNDS  # no body copy in a gateway's own queue


def test_gateway_back_online_opens_the_newest_model(
    channel: BlockingChannel, parties: Parties
) -> None:
    _announce(channel, parties)
    body = _newest_body(channel)
    assert body[0] == BODY_TYPE
    assert peek_broadcast(body).round == ROUNDS  # the newest, not the history
    senders = Registry()
    senders.enroll(parties.aggregator.public)
    for gw in (parties.gateway, parties.other_gateway):
        entries = []
        while True:
            frame = _get(channel, gateway_queue(gw.name))
            if frame is None:
                break
            entries.append(frame)
        assert len(entries) == ROUNDS
        # Every gateway verifies the one signed body with its own newest entry.
        opened = open_delivery(join_delivery(body, entries[-1]), gw, senders)
        assert opened.payload == b"global model %d" % ROUNDS
