"""The gateway's secure-aggregation transport: its own durable queue in, sealed frames out
(protocol messages to the coordinator, the masked input to the crypto workers' queue)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from pika.exchange_type import ExchangeType

from gateway.secure_update import SecureRoundRefusedError, SecureUpdateSession
from pqlink import ContentType, DecodeError, Identity, PqlinkError, PublicIdentity, Registry
from pqlink.secagg import RoundKeys
from pqlink.signed_batch import is_batch_item, open_batch_item
from wire.amqp import (
    SECAGG_EXCHANGE,
    SECAGG_QUEUE_ARGUMENTS,
    SECAGG_UP_QUEUE,
    UPDATES_QUEUE,
    UPDATES_QUEUE_ARGUMENTS,
    broker_urls,
    secagg_queue,
)
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.secagg import (
    SELF_SIGNED_KINDS,
    AnnouncedAdverts,
    SecAggFrame,
    SecAggKind,
    SecureRoundAnnouncement,
)

_LOG = logging.getLogger("gateway.secure_link")
_PERSISTENT = pika.BasicProperties(delivery_mode=2)
_BYTES_ROUNDS_KEPT = 64

#: the round's update (flat, before clipping) and the number of samples it was trained on
UpdateSource = Callable[[SecureRoundAnnouncement], tuple[npt.NDArray[np.float64], int]]


@dataclass
class SecureRoundResult:
    """How this gateway's part of one round ended."""

    round: int = -1
    finished: bool = False
    aborted: bool = False
    encoded: npt.NDArray[np.uint64] | None = None
    refused: list[str] = field(default_factory=list)
    sent: list[SecAggKind] = field(default_factory=list)


def declare_gateway_secagg(channel: BlockingChannel, gateway_id: str) -> None:
    # types-pika declares the enum members as plain str, hence the ignore.
    channel.exchange_declare(SECAGG_EXCHANGE, exchange_type=ExchangeType.direct, durable=True)  # type: ignore[arg-type]
    queue = secagg_queue(gateway_id)
    channel.queue_declare(queue, durable=True, arguments=SECAGG_QUEUE_ARGUMENTS)
    channel.queue_bind(queue, SECAGG_EXCHANGE, routing_key=gateway_id)
    channel.queue_declare(SECAGG_UP_QUEUE, durable=True, arguments=SECAGG_QUEUE_ARGUMENTS)
    channel.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)


class SecureLink:
    """One gateway's secure rounds over a blocking pika connection (run it in a thread, one
    round at a time; `close` it when done)."""

    def __init__(
        self,
        url: str,
        me: Identity,
        aggregator: PublicIdentity,
        peers: Registry,
        update: UpdateSource,
        *,
        codec: EnvelopeCodec | None = None,
        on_sent: Callable[[SecAggKind], None] | None = None,
    ) -> None:
        self.url = url
        self.me = me
        self.aggregator = aggregator
        self.senders = Registry()
        self.senders.enroll(aggregator)
        self.peers = peers
        self.update = update
        self.codec = codec or SealedCodec()
        self.on_sent = on_sent
        self.bytes_sent: dict[int, int] = {}  # by round: what this gateway published
        self._after = -1
        # keys made for the next round, whose advert went out with this round's answer
        self._ahead: RoundKeys | None = None
        # ... made while waiting for the unmasking request, their advert not sent yet
        self._made_ahead: tuple[RoundKeys, SecAggFrame] | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _send(
        self, channel: BlockingChannel, frame: SecAggFrame, result: SecureRoundResult
    ) -> None:
        """Adverts and key-and-share messages go bare (their own signature says who sent them and
        nothing in them is secret); the rest sealed to the aggregator. No publisher confirms:
        a lost frame makes this gateway a dropout of the round, which the round survives, and
        waiting for a quorum commit per frame cost more than the protocol's own work."""
        masked = frame.kind is SecAggKind.MASKED_INPUT
        if frame.kind in SELF_SIGNED_KINDS:
            data = frame.encode()
        else:
            data = self.codec.seal(
                self.me,
                [self.aggregator],
                frame.encode(),
                content_type=ContentType.MASKED_INPUT if masked else ContentType.SECAGG,
                round=frame.round,
                sample_count=1 if masked else 0,
            )
        queue = UPDATES_QUEUE if masked else SECAGG_UP_QUEUE
        channel.basic_publish("", queue, data, _PERSISTENT)
        self.bytes_sent[frame.round] = self.bytes_sent.get(frame.round, 0) + len(data)
        if len(self.bytes_sent) > _BYTES_ROUNDS_KEPT:  # one link serves every round
            del self.bytes_sent[min(self.bytes_sent)]
        result.sent.append(frame.kind)
        if self.on_sent is not None:
            self.on_sent(frame.kind)

    def run_round(
        self,
        stop: threading.Event,
        *,
        after_round: int = -1,
        timeout: float = 120.0,
        on_ready: Callable[[], None] | None = None,
    ) -> SecureRoundResult:
        """Take part in the next round announced after `after_round` until it finishes,
        aborts, or `timeout` (announcements of older rounds left in the queue are dropped);
        `on_ready` is called once the queue is declared and consumed."""
        result = SecureRoundResult()
        self._after = after_round
        session: SecureUpdateSession | None = None
        channel = self._open_channel()
        try:
            if on_ready is not None:
                on_ready()
            deadline = threading.Event()
            timer = threading.Timer(timeout, deadline.set)
            timer.start()
            try:
                for method, _p, body in channel.consume(
                    secagg_queue(self.me.name), inactivity_timeout=0.05
                ):
                    if method is not None and body is not None and method.delivery_tag is not None:
                        session = self._handle(channel, body, session, result)
                        channel.basic_ack(method.delivery_tag)
                    if result.finished or stop.is_set() or deadline.is_set():
                        break
                channel.cancel()
            finally:
                timer.cancel()
        except BaseException:
            self.close()  # a connection that failed mid-round is not reused
            raise
        return result

    def _open_channel(self) -> BlockingChannel:
        """The link's channel, kept from round to round: a new connection, its declarations
        and its QoS cost a dozen broker round trips, which a round would otherwise wait for.
        One that died while the gateway was idle (missed heartbeats) is replaced."""
        if self._channel is not None and self._connection is not None:
            try:
                self._connection.process_data_events(0)
                if self._channel.is_open:
                    return self._channel
            except AMQPError:
                pass
            self.close()
        # every node of the setting, tried in turn (a cluster node lost moves us to the next)
        connection = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(self.url)])
        try:
            channel = connection.channel()
            declare_gateway_secagg(channel, self.me.name)
            channel.basic_qos(prefetch_count=8)
        except BaseException:
            connection.close()
            raise
        self._connection, self._channel = connection, channel
        return channel

    def close(self) -> None:
        """Close the link's connection, if any (the next round opens a new one)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(AMQPError):
                connection.close()

    def _handle(
        self,
        channel: BlockingChannel,
        body: bytes,
        session: SecureUpdateSession | None,
        result: SecureRoundResult,
    ) -> SecureUpdateSession | None:
        try:
            # the coordinator signs each stage once for all gateways (pqlink.signed_batch)
            if is_batch_item(body):
                item = open_batch_item(body, self.me.name, self.senders)
                content_type, payload, round_ = item.content_type, item.payload, item.round
            else:
                opened = self.codec.open(body, self.me, self.senders)
                content_type, payload, round_ = opened.content_type, opened.payload, opened.round
            if content_type is not ContentType.SECAGG:
                raise DecodeError(f"content type {content_type.name}")
            frame = SecAggFrame.decode(payload)
            if frame.round != round_:
                raise DecodeError("frame round differs from the signed metadata")
        except PqlinkError as exc:
            self._refused(result, "envelope", str(exc))
            return session
        if frame.kind in (SecAggKind.ANNOUNCEMENT, SecAggKind.ANNOUNCED_ADVERTS):
            return self._join(channel, frame, session, result)
        if session is None:
            self._refused(result, frame.kind.name, "no round announced")
            return None
        step = session.handle(frame)
        for event in step.events:
            _LOG.warning("%s %s", event.name, " ".join(f"{k}={v}" for k, v in event.fields.items()))
        for r in step.rejected:
            self._refused(result, r.kind.name, f"{r.reason}: {r.detail}")
        for out in step.outgoing:
            self._send(channel, out, result)
        if any(out.kind is SecAggKind.MASKED_INPUT for out in step.outgoing):
            # idle until the unmasking request: the next round's keys now, off the critical
            # path of both rounds
            self._made_ahead = session.keys_ahead()
        if step.finished:
            result.finished = True
            result.aborted = frame.kind is SecAggKind.ABORTED
            made, self._made_ahead = self._made_ahead, None
            if frame.kind is SecAggKind.UNMASK_REQUEST and step.outgoing and made is not None:
                # the advert travels right after the answer: only a round that completes
                # for this gateway leads to a pipelined one
                self._ahead, advert = made
                self._send(channel, advert, result)
        return session

    def _join(
        self,
        channel: BlockingChannel,
        frame: SecAggFrame,
        session: SecureUpdateSession | None,
        result: SecureRoundResult,
    ) -> SecureUpdateSession | None:
        """A round's opening: a plain announcement (fresh keys, advert sent now) or a
        pipelined one (the keys made ahead for exactly this round, neighbours' adverts in)."""
        what = "announcement"
        if session is not None:
            self._refused(result, what, "a round is already running")
            return session
        # keys made ahead serve at most one round, and only the pipelined opening of it
        ahead, self._ahead, self._made_ahead = self._ahead, None, None
        if frame.round <= self._after:
            self._refused(result, what, f"round {frame.round} is over")
            return None
        pipelined = frame.kind is SecAggKind.ANNOUNCED_ADVERTS
        try:
            if pipelined:
                opening = AnnouncedAdverts.decode(frame.body)
                announcement, adverts = opening.announcement, opening.adverts
                if ahead is None or ahead.round_id != announcement.round:
                    raise SecureRoundRefusedError(
                        f"no keys made ahead for round {announcement.round}"
                    )
            else:
                announcement, adverts, ahead = SecureRoundAnnouncement.decode(frame.body), b"", None
            if announcement.round != frame.round:
                raise DecodeError(f"announcement of round {announcement.round} in {frame.round}")
            session = SecureUpdateSession(announcement, self.me, self.peers, advertised=ahead)
        except (DecodeError, SecureRoundRefusedError) as exc:
            self._refused(result, what, str(exc))
            if pipelined:
                # no keys for it (say, restarted since it sent its advert): this round goes
                # on without this gateway, which joins the next one through the full setup
                result.round, result.finished = frame.round, True
            return None
        result.round = announcement.round
        update, samples = self.update(announcement)
        try:
            session.set_update(update, samples)
        except SecureRoundRefusedError as exc:
            self._refused(result, what, str(exc))
            return None
        result.encoded = session.encoded
        if not pipelined:
            self._send(channel, session.start(), result)
            return session
        step = session.handle(SecAggFrame(SecAggKind.ADVERTS, frame.round, adverts))
        for r in step.rejected:
            self._refused(result, r.kind.name, f"{r.reason}: {r.detail}")
        for out in step.outgoing:
            self._send(channel, out, result)
        if step.finished:  # it could not take part after all: this round is over for it
            result.finished = True
            return None
        return session

    def _refused(self, result: SecureRoundResult, what: str, detail: str) -> None:
        result.refused.append(f"{what}: {detail}")
        _LOG.warning(
            "secagg_message_refused gateway=%s what=%s detail=%s", self.me.name, what, detail
        )
