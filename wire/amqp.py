"""RabbitMQ topology shared by gateways and the aggregator: exchange and queue names and their
arguments, declared the same way on both sides."""

from __future__ import annotations

from typing import Any, Final

#: Durable queue of sealed model updates; crypto workers consume it as competing consumers.
UPDATES_QUEUE: Final = "iomt.updates"
#: Durable queue of partial sums from the crypto workers to the coordinator.
PARTIALS_QUEUE: Final = "iomt.partials"
#: Fanout exchange of signed global-model bodies, bound to GLOBAL_STREAM alone: the body is
#: stored once however many gateways read it.
GLOBAL_EXCHANGE: Final = "iomt.global"
#: Direct exchange of each gateway's key entry of a key epoch of global-model broadcasts
#: (routing key: the gateway id), bound to that gateway's own queue.
GLOBAL_KEYS_EXCHANGE: Final = "iomt.global.keys"
#: The replicated stream of global-model bodies every gateway reads (RabbitMQ 3.9+ streams: an
#: append-only log that consumers read without removing, from an offset they choose). A
#: gateway attaches at "last", the newest chunk, so one back after an hour offline starts at
#: the newest model and never replays the history.
GLOBAL_STREAM: Final = "iomt.global.models"
#: Attach offset of a gateway's stream consumer (see GLOBAL_STREAM).
GLOBAL_STREAM_OFFSET: Final = "last"
#: Retention by size, in whole segments: far more than the newest body (a few KB each), far
#: less than a history. Every client declares the stream with these exact arguments.
GLOBAL_STREAM_ARGUMENTS: Final[dict[str, Any]] = {
    "x-queue-type": "stream",
    "x-max-length-bytes": 8 * 1024 * 1024,
    "x-stream-max-segment-size-bytes": 1024 * 1024,
}
#: Quorum queues: replicated over the broker's nodes (Raft), so a node lost mid-round loses
#: neither a queued update nor an unacknowledged one (RabbitMQ 3.8+, the only replicated type
#: left in 4.x). Every client declares a queue with these exact arguments.
#: Dead letters: updates no crypto worker can process. A worker that rejects an update for a
#: lasting cause publishes it here itself, with the reason in DEAD_LETTER_REASON_HEADER, before it
#: acknowledges it; an update that keeps killing workers (delivered UPDATE_DELIVERY_LIMIT times
#: without an acknowledgement) is moved here by the broker, its `x-death` header saying
#: `delivery_limit`. A fanout exchange: the routing key of either path does not matter.
DEAD_LETTER_EXCHANGE: Final = "iomt.dead"
DEAD_LETTER_QUEUE: Final = "iomt.dead-letters"
#: Quorum like the queue it serves, and without a delivery limit of its own: listing it (get,
#: then requeue) must never drop what it holds.
DEAD_LETTER_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-queue-type": "quorum"}
#: Headers of an explicit dead letter: the stable reason, its detail, and who rejected it.
DEAD_LETTER_REASON_HEADER: Final = "x-iomt-reason"
DEAD_LETTER_DETAIL_HEADER: Final = "x-iomt-detail"
DEAD_LETTER_WORKER_HEADER: Final = "x-iomt-worker"
#: Deliveries of one update without an acknowledgement (workers that died holding it) before
#: the broker dead-letters it: a crash that an honest update causes once (a worker killed
#: mid-batch, an OOM) is survived four times over.
UPDATE_DELIVERY_LIMIT: Final = 5
UPDATES_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": UPDATE_DELIVERY_LIMIT,
    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    # At-least-once dead-lettering (RabbitMQ 3.10+): the broker keeps the message until the
    # dead-letter queue confirmed it; it requires reject-publish overflow, which changes
    # nothing here since the updates queue has no length limit.
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
PARTIALS_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-queue-type": "quorum"}
#: A gateway's own queue holds only its key entries of global-model broadcasts, one per key
#: epoch (the bodies are in GLOBAL_STREAM). Only the newest matter to a gateway that was
#: offline: a bounded quorum queue dropping its oldest (quorum queues support x-max-length with
#: drop-head); the gateway's spool keeps as many (gateway.spool.MAX_GLOBAL_ENTRIES).
GATEWAY_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {
    "x-queue-type": "quorum",
    "x-max-length": 4,
    "x-overflow": "drop-head",
}


def broker_urls(setting: str) -> list[str]:
    """The AMQP URLs of a setting listing one or more broker nodes, comma-separated: clients
    try them in turn, so losing one node of a cluster only moves them to the next."""
    urls = [u.strip() for u in setting.split(",") if u.strip()]
    if not urls:
        raise ValueError(f"no AMQP URL in {setting!r}")
    return urls


def gateway_queue(gateway_id: str) -> str:
    """The durable queue of one gateway's key entries (bound to GLOBAL_KEYS_EXCHANGE)."""
    return f"iomt.gateway.{gateway_id}"


#: Secure aggregation, gateways to coordinator: sealed protocol messages (not masked inputs,
#: which travel in UPDATES_QUEUE so that the crypto workers open and sum them).
SECAGG_UP_QUEUE: Final = "iomt.secagg.up"
#: Secure aggregation, crypto workers to coordinator: partial sums of masked inputs mod 2^k.
MASKED_PARTIALS_QUEUE: Final = "iomt.secagg.partials"
#: Direct exchange, coordinator to one gateway (routing key: the gateway's name).
SECAGG_EXCHANGE: Final = "iomt.secagg"
#: Replicated like the update and partial-sum queues: a round survives the loss of a node.
SECAGG_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-queue-type": "quorum"}


def secagg_queue(gateway_id: str) -> str:
    """The durable queue of one gateway's secure-aggregation messages."""
    return f"iomt.secagg.gw.{gateway_id}"
