"""Crypto workers: competing consumers of the sealed-update queue. Each verifies, opens and
validates every update as it arrives, and folds a batch of them into one partial sum per round
for the coordinator.

Exactly-once: an update delivered for the first time can be in no earlier partial, so fresh
updates are summed together; a redelivered one (its worker died before acknowledging) travels
alone, so the coordinator can drop it if it was counted already."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from pika.exchange_type import ExchangeType
from pika.spec import Basic

from aggregator.dead_letters import dead_letter_properties, declare_dead_letters, should_dead_letter
from aggregator.masked import CheckedMasked, MaskedFolder
from aggregator.metrics import WorkerMetrics
from aggregator.partials import Partial, Rejection, make_partial
from aggregator.strategies import Contribution, bound_norm
from aggregator.validation import UpdateRejectedError, ValidationLimits, validate_update
from pqlink import ContentType, Identity, Registry
from pqlink.envelope import ENVELOPE_TYPE
from servicekit.backoff import Backoff
from wire.amqp import (
    DEAD_LETTER_EXCHANGE,
    GATEWAY_QUEUE_ARGUMENTS,
    GLOBAL_EXCHANGE,
    GLOBAL_KEYS_EXCHANGE,
    GLOBAL_STREAM,
    GLOBAL_STREAM_ARGUMENTS,
    MASKED_PARTIALS_QUEUE,
    PARTIALS_QUEUE,
    PARTIALS_QUEUE_ARGUMENTS,
    SECAGG_QUEUE_ARGUMENTS,
    UPDATES_QUEUE,
    UPDATES_QUEUE_ARGUMENTS,
    broker_urls,
    gateway_queue,
)
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.reasons import Reason

_LOG = logging.getLogger("aggregator.worker")


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    redelivered: bool
    headers: dict[str, object] | None = None  # unauthenticated timing hints for reports


def _timings(headers: dict[str, object] | None) -> dict[str, float]:
    """The uplink's timing headers (integer microseconds) as seconds, for the report."""
    out: dict[str, float] = {}
    for key, name in (
        ("seal_us", "uplink_seal_seconds"),
        ("published_at_us", "uplink_published_at"),
    ):
        value = (headers or {}).get(key)
        if isinstance(value, int):
            out[name] = value / 1e6
    return out


@dataclass(frozen=True, slots=True)
class Checked:
    """One update after `CryptoWorker.check`: valid (round, contribution, report metrics) or
    its rejection."""

    redelivered: bool
    outcome: tuple[int, Contribution, dict[str, object]] | Rejection


class CryptoWorker:
    """The sans-IO part: deliveries in, partials out."""

    def __init__(
        self,
        name: str,
        identity: Identity,
        gateways: Registry,
        limits: ValidationLimits,
        *,
        individual: bool,
        norm_bound: float | None,
        codec: EnvelopeCodec | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.codec = codec or SealedCodec()
        self.metrics = metrics
        self.name = name
        self.identity = identity
        self.gateways = gateways
        self.limits = limits
        self.individual = individual
        self.norm_bound = norm_bound
        self.processed = 0

    def check(self, d: Delivery) -> Checked:
        """Verify, open and validate one update: done as each arrives, so the crypto overlaps
        the wait for the rest of the batch."""
        t0 = time.perf_counter()
        try:
            valid = validate_update(
                d.body, self.identity, self.gateways, self.limits, codec=self.codec
            )
        except UpdateRejectedError as exc:
            if self.metrics is not None:
                self.metrics.updates.labels("rejected").inc()
                self.metrics.rejected.labels(exc.reason).inc()
            return Checked(d.redelivered, Rejection(exc.reason, exc.gateway, exc.round, exc.detail))
        finally:
            self.processed += 1
        elapsed = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.updates.labels("valid").inc()
            self.metrics.open_seconds.observe(elapsed)
        c = valid.contribution
        c = Contribution(c.gateway, c.samples, bound_norm(c.delta, self.norm_bound))
        m = {
            **valid.metrics,
            **_timings(d.headers),
            "update_bytes": len(d.body),
            "open_seconds": elapsed,
            "worker_open_cpu_seconds": valid.open_cpu_seconds,
            "worker": self.name,
            "worker_received_at": time.time(),
        }
        return Checked(d.redelivered, (valid.round, c, m))

    def process(self, deliveries: Sequence[Delivery]) -> list[Partial]:
        return self.fold([self.check(d) for d in deliveries])

    def fold(self, checked: Sequence[Checked]) -> list[Partial]:
        """One partial sum per round for the fresh updates, one each for redelivered ones."""
        fresh: dict[int, dict[str, Contribution]] = {}
        alone: list[tuple[int, Contribution, dict[str, object]]] = []
        metrics: dict[str, dict[str, object]] = {}
        rejections: list[Rejection] = []
        for item in checked:
            if isinstance(item.outcome, Rejection):
                rejections.append(item.outcome)
                continue
            rnd, c, m = item.outcome
            if item.redelivered:
                alone.append((rnd, c, m))
                continue
            same_round = fresh.setdefault(rnd, {})
            if c.gateway in same_round:
                rejections.append(Rejection(Reason.DUPLICATE, c.gateway, rnd, "twice in one batch"))
                continue
            same_round[c.gateway] = c
            metrics[c.gateway] = m
        if self.metrics is not None:
            self.metrics.batches.inc()
        partials = [
            make_partial(
                self.name,
                rnd,
                list(group.values()),
                self.individual,
                metrics={g: metrics[g] for g in group},
            )
            for rnd, group in fresh.items()
        ]
        partials += [
            make_partial(self.name, rnd, [c], self.individual, metrics={c.gateway: m})
            for rnd, c, m in alone
        ]
        if rejections:
            if partials:
                first = partials[0]
                partials[0] = Partial(
                    first.worker,
                    first.round,
                    first.contributors,
                    first.weighted_sum,
                    first.individual,
                    tuple(rejections),
                    first.metrics,
                )
            else:
                partials.append(make_partial(self.name, -1, [], self.individual, rejections))
        return partials


def declare_topology(channel: BlockingChannel, gateway_ids: Sequence[str] = ()) -> None:
    """Durable exchange and queues; the same declarations (and arguments) as the gateways'."""
    # types-pika declares the enum members as plain str, hence the ignore.
    channel.exchange_declare(GLOBAL_EXCHANGE, exchange_type=ExchangeType.fanout, durable=True)  # type: ignore[arg-type]
    channel.exchange_declare(GLOBAL_KEYS_EXCHANGE, exchange_type=ExchangeType.direct, durable=True)  # type: ignore[arg-type]
    channel.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)
    channel.queue_declare(PARTIALS_QUEUE, durable=True, arguments=PARTIALS_QUEUE_ARGUMENTS)
    channel.queue_declare(MASKED_PARTIALS_QUEUE, durable=True, arguments=SECAGG_QUEUE_ARGUMENTS)
    declare_dead_letters(channel)
    declare_global_stream(channel)
    declare_gateway_queues(channel, gateway_ids)


def declare_gateway_queues(channel: BlockingChannel, gateway_ids: Sequence[str]) -> None:
    """Each gateway's queue of key entries, bound to GLOBAL_KEYS_EXCHANGE: declared before an
    epoch's entries are published, since an entry routed to no queue is lost until the next
    key epoch (a gateway declares its own queue only when it first connects)."""
    for gw in gateway_ids:
        queue = gateway_queue(gw)
        channel.queue_declare(queue, durable=True, arguments=GATEWAY_QUEUE_ARGUMENTS)
        channel.queue_bind(queue, GLOBAL_KEYS_EXCHANGE, routing_key=gw)


def declare_global_stream(channel: BlockingChannel) -> None:
    """The stream of global-model bodies on the fanout: one stored copy per round, read by
    every gateway (the gateways declare the same)."""
    channel.queue_declare(GLOBAL_STREAM, durable=True, arguments=GLOBAL_STREAM_ARGUMENTS)
    channel.queue_bind(GLOBAL_STREAM, GLOBAL_EXCHANGE)


PERSISTENT = pika.BasicProperties(delivery_mode=2)  # persistent


#: Where an envelope states its content type: after its type and version octets.
_CONTENT_TYPE_OFFSET = 2


def is_masked_input(frame: bytes) -> bool:
    """Routing only (unauthenticated): the secure half opens and checks it in full. Two
    octets are read rather than the whole envelope parsed, as `open` parses it again."""
    return (
        len(frame) > _CONTENT_TYPE_OFFSET
        and frame[0] == ENVELOPE_TYPE
        and frame[_CONTENT_TYPE_OFFSET] == ContentType.MASKED_INPUT
    )


def broker_parameters(setting: str, heartbeat: int) -> list[pika.URLParameters]:
    """Connection parameters of every node listed: pika tries them in order."""
    out = []
    for url in broker_urls(setting):
        params = pika.URLParameters(url)
        params.heartbeat = heartbeat
        params.connection_attempts = 1
        out.append(params)
    return out


#: How long an idle worker blocks before it looks at its stop flag again.
STOP_CHECK_SECONDS = 0.5


Received = tuple[Basic.Deliver, pika.BasicProperties, bytes]


def collect_into(box: deque[Received]) -> Callable[..., None]:
    """A basic_consume callback that only queues what pika delivers, for the caller's loop."""

    def on_message(
        _ch: BlockingChannel, method: Basic.Deliver, props: pika.BasicProperties, body: bytes
    ) -> None:
        box.append((method, props, body))

    return on_message


def dead_letter_of(checked: Checked | CheckedMasked) -> Rejection | None:
    """The rejection to dead-letter the update with, if the worker rejected it for a cause
    that lies in the update itself."""
    outcome = checked.outcome
    if isinstance(outcome, Rejection) and should_dead_letter(outcome):
        return outcome
    return None


#: (delivery tag, outcome, body): the body is kept only for an update to dead-letter.
_Held = tuple[int, Checked | CheckedMasked, bytes | None]


def _flush(
    channel: BlockingChannel,
    worker: CryptoWorker,
    batch: list[_Held],
    masked: MaskedFolder | None = None,
) -> None:
    plain = [c for _, c, _ in batch if isinstance(c, Checked)]
    secure = [c for _, c, _ in batch if isinstance(c, CheckedMasked)]
    for _, checked, body in batch:
        rejection = dead_letter_of(checked)
        if rejection is not None and body is not None:
            # Confirmed before the ack below: a worker dying in between leaves the update
            # queued, to be rejected (and dead-lettered) once more, never lost.
            channel.basic_publish(
                DEAD_LETTER_EXCHANGE, "", body, dead_letter_properties(rejection, worker.name)
            )
            _LOG.warning(
                "update_dead_lettered worker=%s reason=%s gateway=%s round=%s bytes=%d",
                worker.name,
                rejection.reason,
                rejection.gateway,
                rejection.round,
                len(body),
            )
            if worker.metrics is not None:
                worker.metrics.dead_lettered.labels(str(rejection.reason)).inc()
    for partial in worker.fold(plain) if plain else []:
        # With confirms on, this returns once the broker has the partial on disk, and raises
        # if it refused it: only then are the updates acknowledged.
        channel.basic_publish("", PARTIALS_QUEUE, partial.encode(), PERSISTENT)
    for summed in masked.fold(secure) if masked is not None and secure else []:
        channel.basic_publish("", MASKED_PARTIALS_QUEUE, summed.encode(), PERSISTENT)
    channel.basic_ack(batch[-1][0], multiple=True)


def run_worker(
    worker: CryptoWorker,
    url: str,
    *,
    prefetch: int,
    batch_max: int,
    batch_wait: float,
    stop: threading.Event,
    heartbeat: int = 30,
    masked: MaskedFolder | None = None,
) -> None:
    """Consume until `stop` is set; reconnect with backoff on broker failures. Each update
    is checked on arrival; a batch is folded, published and acknowledged when it holds
    `batch_max` updates, or once the oldest has waited `batch_wait` seconds (with 0: as soon
    as no further update has arrived while the last was checked, so batches form only under
    load). With `masked`, masked inputs of secure rounds are opened and summed modulo 2^k
    into their own partials."""
    params = broker_parameters(url, heartbeat)
    backoff = Backoff(0.2, 10.0)
    while not stop.is_set():
        try:
            connection = pika.BlockingConnection(params)
        except AMQPError as exc:
            _LOG.warning("worker %s cannot connect: %r", worker.name, exc)
            backoff.wait_blocking(stop)
            continue
        backoff.succeeded()
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            declare_topology(channel)
            # A batch is acknowledged only once folded and published, so its updates hold
            # the prefetch window meanwhile: a window of two batches keeps the next one
            # arriving while this one is checked, where a window of one batch leaves the
            # worker idle for a broker round trip after every fold.
            channel.basic_qos(prefetch_count=max(prefetch, 2 * batch_max))
            inbox: deque[Received] = deque()
            channel.basic_consume(UPDATES_QUEUE, collect_into(inbox), auto_ack=False)
            batch: list[_Held] = []
            oldest = 0.0
            while not stop.is_set():
                # Block until a delivery or the batch's deadline: no wake-ups while idle other
                # than the rare one that notices `stop`.
                wait = STOP_CHECK_SECONDS
                if batch:
                    wait = max(0.0, oldest + batch_wait - time.monotonic())
                # types-pika says int; pika takes any non-negative number of seconds.
                connection.process_data_events(time_limit=wait)  # type: ignore[arg-type]
                while inbox:
                    method, props, body = inbox.popleft()
                    headers = dict(props.headers) if props.headers else None
                    if not batch:
                        oldest = time.monotonic()
                    checked: Checked | CheckedMasked
                    if masked is not None and is_masked_input(body):
                        checked = masked.check(body)
                    else:
                        checked = worker.check(Delivery(body, bool(method.redelivered), headers))
                    keep = body if dead_letter_of(checked) is not None else None
                    batch.append((int(method.delivery_tag or 0), checked, keep))
                    if len(batch) >= batch_max:
                        _flush(channel, worker, batch, masked)
                        batch = []
                    if not inbox:  # what arrived while checking joins this batch
                        connection.process_data_events(time_limit=0)
                if batch and time.monotonic() - oldest >= batch_wait:
                    _flush(channel, worker, batch, masked)
                    batch = []
            channel.cancel()
            connection.close()
        except AMQPError as exc:
            _LOG.warning("worker %s lost the broker: %s", worker.name, exc)
            stop.wait(backoff.delay)
