"""The dead-letter queue of model updates: what a crypto worker puts there (and why), and how
an operator lists it without taking anything out of it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

from aggregator.partials import Rejection
from wire.amqp import (
    DEAD_LETTER_DETAIL_HEADER,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_QUEUE_ARGUMENTS,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_WORKER_HEADER,
    broker_urls,
)
from wire.reasons import Reason

_GATEWAY_HEADER = "x-iomt-gateway"
_ROUND_HEADER = "x-iomt-round"
_MAX_DETAIL = 300  # characters of a rejection's detail kept in a header

#: Rejections that say nothing is wrong with the message itself: the same update delivered
#: twice in one batch was counted once, and its copy needs no operator.
NOT_DEAD_LETTERED: frozenset[Reason] = frozenset({Reason.DUPLICATE})


def should_dead_letter(rejection: Rejection) -> bool:
    return rejection.reason not in NOT_DEAD_LETTERED


def declare_dead_letters(channel: BlockingChannel) -> None:
    """The dead-letter exchange and queue, bound (declared by every worker and coordinator)."""
    # types-pika declares the enum members as plain str, hence the ignore.
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type=ExchangeType.fanout, durable=True)  # type: ignore[arg-type]
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS)
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)


def dead_letter_properties(rejection: Rejection, worker: str) -> pika.BasicProperties:
    """Persistent, with the rejection in headers (the gateway and round only if the envelope
    authenticated far enough to name them)."""
    headers: dict[str, object] = {
        DEAD_LETTER_REASON_HEADER: str(rejection.reason),
        DEAD_LETTER_DETAIL_HEADER: rejection.detail[:_MAX_DETAIL],
        DEAD_LETTER_WORKER_HEADER: worker,
    }
    if rejection.gateway is not None:
        headers[_GATEWAY_HEADER] = rejection.gateway
    if rejection.round is not None:
        headers[_ROUND_HEADER] = rejection.round
    return pika.BasicProperties(delivery_mode=2, headers=headers)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of the dead-letter queue as `iomt-aggregator dead-letters` lists it.

    `source` is "worker" for an explicit rejection, "broker" for one the broker moved (then
    `reason` is the broker's: `delivery_limit` for an update that kept killing workers)."""

    source: str
    reason: str
    detail: str
    worker: str | None
    gateway: str | None
    round: int | None
    size: int
    sha256: str  # of the body, to find the same update in the gateways' logs and spools
    deaths: int  # times the broker dead-lettered it (0 for an explicit rejection)

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "reason": self.reason,
            "detail": self.detail,
            "worker": self.worker,
            "gateway": self.gateway,
            "round": self.round,
            "bytes": self.size,
            "sha256": self.sha256,
            "deaths": self.deaths,
        }


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def describe(properties: pika.BasicProperties, body: bytes) -> DeadLetter:
    """What a dead letter's headers say about it (any publisher may have written them: they
    are read as text, never trusted further)."""
    headers = dict(properties.headers or {})
    digest = hashlib.sha256(body).hexdigest()
    deaths_raw = headers.get("x-death")
    deaths = deaths_raw if isinstance(deaths_raw, list) else []
    count = 0
    for death in deaths:
        if isinstance(death, dict) and isinstance(death.get("count"), int):
            count += int(death["count"])
    explicit = _text(headers.get(DEAD_LETTER_REASON_HEADER))
    round_raw = headers.get(_ROUND_HEADER)
    if explicit is not None:
        return DeadLetter(
            "worker",
            explicit,
            _text(headers.get(DEAD_LETTER_DETAIL_HEADER)) or "",
            _text(headers.get(DEAD_LETTER_WORKER_HEADER)),
            _text(headers.get(_GATEWAY_HEADER)),
            round_raw if isinstance(round_raw, int) else None,
            len(body),
            digest,
            count,
        )
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    reason = _text(headers.get("x-first-death-reason")) or _text(first.get("reason")) or "unknown"
    queue = _text(headers.get("x-first-death-queue")) or _text(first.get("queue")) or "?"
    return DeadLetter(
        "broker", reason, f"from queue {queue}", None, None, None, len(body), digest, count
    )


def list_dead_letters(url: str, limit: int) -> tuple[int, list[DeadLetter]]:
    """(messages in the queue, the first `limit` of them). Each is fetched unacknowledged and
    returned to the queue when the channel closes, in its place: listing takes nothing out."""
    if limit < 0:
        raise ValueError(f"limit {limit} must be >= 0")
    connection = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(url)])
    try:
        channel = connection.channel()
        declare_dead_letters(channel)
        depth = channel.queue_declare(
            DEAD_LETTER_QUEUE, durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS
        ).method.message_count
        out: list[DeadLetter] = []
        while len(out) < limit:
            method, properties, body = channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=False)
            if method is None or properties is None or body is None:
                break
            # types-pika says str; a blocking channel hands the body over as bytes.
            out.append(describe(properties, cast("bytes", body)))
        if out:
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        channel.close()
    finally:
        if connection.is_open:
            connection.close()
    return int(depth or 0), out
