"""The coordinator's secure mode: plan one SecAgg round for the enrolled gateways, route its
sealed protocol messages stage by stage with bounded deadlines, and learn only the sum."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

from aggregator.adverts_ahead import AdvertsAhead
from aggregator.masked import MaskedPartial, MaskedPartialError
from pqlink import ContentType, DecodeError, Identity, PqlinkError, Registry
from pqlink.secagg import (
    AggregateResult,
    ForgedMessageError,
    InputEncoding,
    RoundAborted,
    SecAggError,
    SecAggServer,
    SecAggStateError,
    UnexpectedSenderError,
    WrongRoundError,
    choose_parameters,
    distributed_noise_std,
    modulus_bits_for,
    peek_header,
)
from pqlink.signed_batch import sign_batch
from wire.amqp import (
    MASKED_PARTIALS_QUEUE,
    SECAGG_EXCHANGE,
    SECAGG_QUEUE_ARGUMENTS,
    SECAGG_UP_QUEUE,
    UPDATES_QUEUE,
    UPDATES_QUEUE_ARGUMENTS,
    secagg_queue,
)
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.fl import RoundSettings
from wire.reasons import Reason, reason_for
from wire.secagg import (
    SELF_SIGNED_KINDS,
    AnnouncedAdverts,
    SecAggFrame,
    SecAggKind,
    SecureRoundAnnouncement,
    is_bare_frame,
)

_LOG = logging.getLogger("aggregator.secure_round")
_PERSISTENT = pika.BasicProperties(delivery_mode=2)


def plan_round(
    round_id: int,
    gateways: Sequence[str],
    settings: RoundSettings,
    dimension: int,
    *,
    dropout_fraction: float = 0.3,
    corrupt_fraction: float = 0.0,
    weight_cap: int = 0,
) -> SecureRoundAnnouncement:
    """Ids 1..n in name order, the smallest graph degree and threshold for the given dropout
    and corruption fractions, noise per gateway so that any min_survivors of them carry
    z * (sensitivity) on the sum, and a ring wide enough for n inputs plus that noise never to
    wrap. With `weight_cap` the inputs are sample-weighted (one more coordinate, clip
    sqrt(2) C: the sensitivity, hence the noise, covers the weight too)."""
    names = sorted(set(gateways))
    n = len(names)
    params = choose_parameters(
        n, corrupt_fraction=corrupt_fraction, dropout_fraction=dropout_fraction
    )
    t = params.threshold
    min_survivors = min(n, t + 1)
    b = settings.precision_bits
    shape = SecureRoundAnnouncement(
        round=round_id,
        graph_seed=secrets.token_bytes(32),
        participants={name: i + 1 for i, name in enumerate(names)},
        degree=params.degree,
        threshold=t,
        min_survivors=min_survivors,
        dimension=dimension,
        clip=settings.clip_norm,
        precision_bits=b,
        modulus_bits=64,
        noise_std=0.0,
        weight_cap=weight_cap,
    )
    # the sensitivity does not depend on the ring: any k above the precision will do here
    sensitivity = InputEncoding(shape.encoded_dimension, shape.encoded_clip, b, 64).sensitivity
    noise_std = distributed_noise_std(sensitivity, settings.noise_multiplier, min_survivors)
    bits = modulus_bits_for(n, b, noise_std=noise_std, dimension=shape.encoded_dimension)
    return dataclasses.replace(shape, modulus_bits=bits, noise_std=noise_std)


def secagg_reason(exc: PqlinkError) -> Reason:
    """The stable rejection reason of a refused protocol message."""
    for cls, reason in (
        (ForgedMessageError, Reason.FORGED),
        (WrongRoundError, Reason.WRONG_ROUND),
        (UnexpectedSenderError, Reason.UNEXPECTED_SENDER),
        (SecAggStateError, Reason.WRONG_STAGE),
    ):
        if isinstance(exc, cls):
            return reason
    return reason_for(exc)


@dataclass(frozen=True, slots=True)
class StageDeadlines:
    """Seconds each stage waits for the participants before it closes with whoever answered;
    the inputs stage also covers local training. `adverts_ahead`: how long a round whose
    participants sent adverts ahead waits for the last of them before it falls back to the
    full setup."""

    adverts: float = 10.0
    key_shares: float = 10.0
    inputs: float = 60.0
    unmask: float = 10.0
    adverts_ahead: float = 0.5


@dataclass
class SecureRoundReport:
    """What one secure round did: its outcome (sum or abort), who dropped, what was refused."""

    announcement: SecureRoundAnnouncement
    outcome: AggregateResult | RoundAborted | None = None
    rejections: list[tuple[str, Reason, str]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    bytes_down: int = 0
    # stages in which the coordinator waited for the gateways: each costs a network round trip
    exchanges: int = 0
    pipelined: bool = False  # opened with adverts sent ahead: no advert exchange

    @property
    def dropouts_recovered(self) -> int:
        return len(self.outcome.dropped) if isinstance(self.outcome, AggregateResult) else 0


class SecureRound:
    """One round's SecAggServer between sealed envelopes: transport senders are envelope
    signers, mapped to protocol ids by the announcement; every refusal has a Reason."""

    def __init__(
        self,
        announcement: SecureRoundAnnouncement,
        identity: Identity,
        gateways: Registry,
        codec: EnvelopeCodec | None = None,
        *,
        ahead: AdvertsAhead | None = None,
    ) -> None:
        """`ahead`: where adverts for the next round, sent with this round's answers, are kept
        (and from which this round's own may come)."""
        self.announcement = announcement
        self.identity = identity
        self.gateways = gateways
        self.codec = codec or SealedCodec()
        self.ahead = ahead
        self._verify_keys = {
            u: gateways.lookup(name).verify_key for name, u in announcement.participants.items()
        }
        self.server = SecAggServer(announcement.round_config(), self._verify_keys)
        self.report = SecureRoundReport(announcement)

    def restart_setup(self) -> None:
        """A fresh server for the full setup, when a pipelined opening could not complete:
        the adverts it was given are dropped with it, and every gateway advertises anew."""
        self.server = SecAggServer(self.announcement.round_config(), self._verify_keys)

    def reject(self, who: str, reason: Reason, detail: str) -> None:
        self.report.rejections.append((who, reason, detail))
        _LOG.warning(
            "secagg_message_rejected round=%d gateway=%s reason=%s detail=%s",
            self.announcement.round,
            who,
            reason,
            detail,
        )

    def seal(self, names: Sequence[str], kind: SecAggKind, body: bytes) -> bytes:
        """One frame sealed to the named gateways (each opens its own key slot)."""
        frame = SecAggFrame(kind, self.announcement.round, body).encode()
        return self.codec.seal(
            self.identity,
            [self.gateways.lookup(name) for name in names],
            frame,
            content_type=ContentType.SECAGG,
            round=self.announcement.round,
        )

    def sign_stage(self, kind: SecAggKind, bundles: dict[int, bytes]) -> dict[str, bytes]:
        """One stage's frames by gateway name, signed once for all of them."""
        a = self.announcement
        items = [
            (a.name_of(u), SecAggFrame(kind, a.round, body).encode())
            for u, body in sorted(bundles.items())
        ]
        return sign_batch(self.identity, items, content_type=ContentType.SECAGG, round=a.round)

    def receive(self, envelope: bytes) -> None:
        """One protocol message from a gateway; refused ones are recorded, not raised. Adverts
        and key-and-share messages may come as bare frames: each carries its sender's own ML-DSA
        signature, which the server checks and the neighbours check again, and what is secret
        in them (shares, escrowed halves) is encrypted end to end under keys the coordinator
        does not hold, so an envelope around them would only sign them a second time."""
        if is_bare_frame(envelope):
            self._receive_bare(envelope)
            return
        try:
            opened = self.codec.open(envelope, self.identity, self.gateways)
        except PqlinkError as exc:
            self.reject("-", reason_for(exc), str(exc))
            return
        who = opened.sender
        try:
            if opened.content_type is not ContentType.SECAGG:
                self.reject(who, Reason.WRONG_TYPE, opened.content_type.name)
                return
            frame = SecAggFrame.decode(opened.payload)
            if frame.round != self.announcement.round or opened.round != frame.round:
                raise WrongRoundError(f"frame of round {frame.round}")
            u = self.announcement.participants.get(who)
            if u is None:
                raise UnexpectedSenderError(f"{who} is not a participant")
            s = self.server
            handlers = {
                SecAggKind.ADVERT: s.receive_advert,
                SecAggKind.SHARE_KEYS: s.receive_key_shares,
                SecAggKind.UNMASK_RESPONSE: s.receive_unmask_response,
            }
            handler = handlers.get(frame.kind)
            if handler is None:
                raise UnexpectedSenderError(f"{frame.kind.name} does not travel to the server")
            handler(u, frame.body)
        except (SecAggError, SecAggStateError, DecodeError) as exc:
            self.reject(who, secagg_reason(exc), str(exc))

    def _receive_bare(self, data: bytes) -> None:
        who = "-"
        try:
            frame = SecAggFrame.decode(data)
            if frame.kind not in SELF_SIGNED_KINDS:
                self.reject(who, Reason.WRONG_TYPE, f"{frame.kind.name} without an envelope")
                return
            ahead = frame.kind is SecAggKind.ADVERT and frame.round == self.announcement.round + 1
            if frame.round != self.announcement.round and not (ahead and self.ahead is not None):
                raise WrongRoundError(f"frame of round {frame.round}")
            u, who = self._sender(frame.body)
            if ahead and self.ahead is not None:
                self.ahead.offer(frame.round, who, self._verify_keys[u], frame.body)
                return
            s = self.server
            if frame.kind is SecAggKind.ADVERT:
                s.receive_advert(u, frame.body)
            else:
                s.receive_key_shares(u, frame.body)
        except (SecAggError, SecAggStateError, DecodeError) as exc:
            self.reject(who, secagg_reason(exc), str(exc))

    def _sender(self, body: bytes) -> tuple[int, str]:
        """The client id a bare message claims and its gateway's name: the claim picks the key
        the message's own signature must verify under."""
        u = peek_header(body).sender
        try:
            return u, self.announcement.name_of(u)
        except KeyError:
            raise UnexpectedSenderError(f"client {u} is not a participant") from None

    def receive_ahead(self, data: bytes) -> None:
        """An advert for this round sent ahead, still queued when the round opens; anything
        else is refused (no stage of this round is open yet)."""
        who = "-"
        try:
            if not is_bare_frame(data):
                raise SecAggStateError("only adverts sent ahead are taken before the opening")
            frame = SecAggFrame.decode(data)
            if frame.kind is not SecAggKind.ADVERT:
                raise SecAggStateError(f"{frame.kind.name} before the round opened")
            if frame.round != self.announcement.round:
                raise WrongRoundError(f"advert of round {frame.round}")
            u, who = self._sender(frame.body)
            if self.ahead is not None:
                self.ahead.offer(frame.round, who, self._verify_keys[u], frame.body)
        except (SecAggError, SecAggStateError, DecodeError) as exc:
            self.reject(who, secagg_reason(exc), str(exc))

    def receive_partial(self, partial: MaskedPartial) -> list[str]:
        """A worker's masked partial sum; returns the gateways it counted."""
        for r in partial.rejections:
            self.reject(r.gateway or "-", r.reason, r.detail)
        if partial.total is None:
            return []
        who = ",".join(g for g, _ in partial.senders)
        enc = self.server.config.encoding
        if partial.round != self.announcement.round:
            self.reject(who, Reason.WRONG_ROUND, f"masked partial of round {partial.round}")
            return []
        if partial.modulus_bits != enc.modulus_bits:
            self.reject(who, Reason.MALFORMED, f"partial mod 2^{partial.modulus_bits}")
            return []
        for name, u in partial.senders:
            if self.announcement.participants.get(name) != u:
                self.reject(name, Reason.UNEXPECTED_SENDER, f"input claims id {u}")
                return []
        try:
            self.server.receive_masked_sum([u for _, u in partial.senders], partial.total)
        except (SecAggError, SecAggStateError) as exc:
            self.reject(who, secagg_reason(exc), str(exc))
            return []
        return [g for g, _ in partial.senders]


def declare_secagg_topology(channel: BlockingChannel, gateway_ids: Sequence[str] = ()) -> None:
    """The secure-mode queues; the same declarations as the gateways' and the workers'."""
    # types-pika declares the enum members as plain str, hence the ignore.
    channel.exchange_declare(SECAGG_EXCHANGE, exchange_type=ExchangeType.direct, durable=True)  # type: ignore[arg-type]
    channel.queue_declare(SECAGG_UP_QUEUE, durable=True, arguments=SECAGG_QUEUE_ARGUMENTS)
    channel.queue_declare(MASKED_PARTIALS_QUEUE, durable=True, arguments=SECAGG_QUEUE_ARGUMENTS)
    channel.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)
    for gw in gateway_ids:
        queue = secagg_queue(gw)
        channel.queue_declare(queue, durable=True, arguments=SECAGG_QUEUE_ARGUMENTS)
        channel.queue_bind(queue, SECAGG_EXCHANGE, routing_key=gw)


def _bodies(channel: BlockingChannel, queue: str, deadline: float) -> Generator[bytes]:
    """Messages of `queue` until the deadline passes. Each is acknowledged as it is taken: a
    round's state lives in this process only, so redelivering a message to a restarted
    coordinator would serve no round. Close the iterator to stop consuming."""
    try:
        for method, _props, body in channel.consume(queue, inactivity_timeout=0.01):
            if method is not None and body is not None and method.delivery_tag is not None:
                channel.basic_ack(method.delivery_tag)
                yield body
            if time.monotonic() >= deadline:
                break
    finally:
        channel.cancel()


class SecureRoundRunner:
    """Runs one SecureRound over a blocking pika channel (confirm mode), stage by stage."""

    def __init__(
        self, channel: BlockingChannel, secure: SecureRound, deadlines: StageDeadlines
    ) -> None:
        self.channel = channel
        self.round = secure
        self.deadlines = deadlines
        self._out: BlockingChannel | None = None

    def _send(self, bundles: dict[int, bytes], kind: SecAggKind) -> None:
        """A stage's frames, all under one signature (pqlink.signed_batch): each gateway gets
        its own bundle with a Merkle path to the signed root, so a stage costs one ML-DSA
        signature whatever the number of gateways, and each gateway receives only its own
        bytes. Nothing sent down needs secrecy: announcements, unmasking requests and adverts
        are public, KEM ciphertexts are too, and shares are encrypted end to end under keys
        the coordinator does not hold. No publisher confirms: waiting for each (a
        quorum-queue commit) cost more than the protocol, and a lost frame makes its gateway
        miss the stage, a dropout the round survives."""
        if not bundles:
            return
        if self._out is None:
            self._out = self.channel.connection.channel()
        t0 = time.monotonic()
        sealed = self.round.sign_stage(kind, bundles)
        for name, frame in sorted(sealed.items()):
            self.round.report.bytes_down += len(frame)
            self._out.basic_publish(SECAGG_EXCHANGE, name, frame, _PERSISTENT)
        seconds = self.round.report.stage_seconds
        key = f"send_{kind.name.lower()}"
        seconds[key] = seconds.get(key, 0.0) + time.monotonic() - t0

    def _collect(self, stage: str, timeout: float) -> None:
        self.round.report.exchanges += 1
        t0 = time.monotonic()
        s = self.round.server
        if s.heard < s.awaited:
            with contextlib.closing(_bodies(self.channel, SECAGG_UP_QUEUE, t0 + timeout)) as it:
                for body in it:
                    self.round.receive(body)
                    if s.heard >= s.awaited:
                        break
        self.round.report.stage_seconds[stage] = time.monotonic() - t0

    def run(self) -> SecureRoundReport:
        try:
            return self._run()
        finally:
            if self._out is not None and self._out.is_open:
                self._out.close()
            self._out = None

    def _run(self) -> SecureRoundReport:
        r, d = self.round, self.deadlines
        a = r.announcement
        if not self._open_pipelined():
            r.restart_setup()
            everyone = {u: a.encode() for u in a.participants.values()}
            self._send(everyone, SecAggKind.ANNOUNCEMENT)
            self._collect("adverts", d.adverts)
            bundles = r.server.close_adverts()
            if isinstance(bundles, RoundAborted):
                return self._aborted(bundles)
            self._send(bundles, SecAggKind.ADVERTS)
        s = r.server
        # pipelined, the gateways train between the opening and their keys and shares: that
        # stage then waits as long as the adverts stage would have
        self._collect("key_shares", d.adverts if r.report.pipelined else d.key_shares)
        shares = s.close_key_shares()
        if isinstance(shares, RoundAborted):
            return self._aborted(shares)
        self._send(shares, SecAggKind.SHARES)
        self._collect_inputs(d.inputs)
        request = s.close_inputs()
        if isinstance(request, RoundAborted):
            return self._aborted(request)
        self._send(dict.fromkeys(s.survivors, request), SecAggKind.UNMASK_REQUEST)
        self._collect("unmask", d.unmask)
        t0 = time.monotonic()
        outcome = s.finish()
        r.report.stage_seconds["finish"] = time.monotonic() - t0
        if isinstance(outcome, RoundAborted):
            return self._aborted(outcome)
        r.report.outcome = outcome
        if r.ahead is not None:
            # the survivors' adverts for the next round follow their answers
            r.ahead.expect(a.round + 1)
        _LOG.info(
            "secagg_round_aggregated round=%d survivors=%d dropped=%d",
            a.round,
            len(outcome.survivors),
            len(outcome.dropped),
        )
        return r.report

    def _open_pipelined(self) -> bool:
        """Open the round with the adverts its participants sent ahead, if every one of them
        did (waiting `adverts_ahead` for the last ones to come in): the announcement and the
        neighbours' adverts go out together and the advert exchange is skipped."""
        r = self.round
        a = r.announcement
        if r.ahead is None:
            return False
        if r.ahead.round != a.round:
            r.ahead.expire()
            return False
        if r.ahead.missing(a.participants):
            # this round's adverts come in as its own: the queue holds what was sent ahead
            self._collect_ahead(self.deadlines.adverts_ahead)
        kept = r.ahead.take(a.round, a.participants)
        if kept is None:
            return False
        s = r.server
        for u, data in sorted(kept.items()):
            try:
                s.receive_advert(u, data, ahead=True)
            except (SecAggError, SecAggStateError, DecodeError) as exc:
                r.reject(a.name_of(u), secagg_reason(exc), str(exc))
                return False
        bundles = s.close_adverts()
        if isinstance(bundles, RoundAborted):
            return False
        r.report.pipelined = True
        self._send(
            {u: AnnouncedAdverts(a, body).encode() for u, body in bundles.items()},
            SecAggKind.ANNOUNCED_ADVERTS,
        )
        _LOG.info("secagg_round_pipelined round=%d gateways=%d", a.round, len(bundles))
        return True

    def _collect_ahead(self, timeout: float) -> None:
        """Adverts sent ahead for this round still in the queue (no request goes out: not an
        exchange); the round's own frames are not expected yet."""
        t0 = time.monotonic()
        r = self.round
        ahead = r.ahead
        if ahead is None:
            return
        participants = r.announcement.participants
        with contextlib.closing(_bodies(self.channel, SECAGG_UP_QUEUE, t0 + timeout)) as it:
            for body in it:
                r.receive_ahead(body)
                if not ahead.missing(participants):
                    break
        r.report.stage_seconds["adverts_ahead"] = time.monotonic() - t0

    def _collect_inputs(self, timeout: float) -> None:
        self.round.report.exchanges += 1
        t0 = time.monotonic()
        s = self.round.server
        with contextlib.closing(_bodies(self.channel, MASKED_PARTIALS_QUEUE, t0 + timeout)) as it:
            for body in it:
                try:
                    partial = MaskedPartial.decode(body)
                except MaskedPartialError as exc:
                    self.round.reject("-", Reason.MALFORMED, str(exc))
                    continue
                self.round.receive_partial(partial)
                if s.heard >= s.awaited:
                    break
        self.round.report.stage_seconds["inputs"] = time.monotonic() - t0

    def _aborted(self, aborted: RoundAborted) -> SecureRoundReport:
        a = self.round.announcement
        self.round.report.outcome = aborted
        if self.round.ahead is not None:
            # after an abort the next round opens with the full setup
            self.round.ahead.expire()
        _LOG.warning(
            "secagg_round_aborted round=%d stage=%s reason=%s detail=%s",
            a.round,
            aborted.stage,
            aborted.reason,
            aborted.detail,
        )
        # tell everyone, so that no gateway waits for a request that will never come
        self._send(dict.fromkeys(a.participants.values(), b""), SecAggKind.ABORTED)
        return self.round.report
