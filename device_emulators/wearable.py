"""One emulated wearable: enrolled identity, handshake over MQTT, sealed records (vitals samples
or RR batches) at its rate, automatic rekeying, and every record kept until the gateway
acknowledges it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from device_emulators.errors import HubClosedError
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
from pqlink.delivery import DeliveryAck, verify_notice
from wire.topics import TopicKind, TopicLayout
from wire.vitals import MAX_EPOCH, VitalsSample

_LOG = logging.getLogger("device_emulators.wearable")
_SKEW_HINT_AFTER = 3  # failed handshakes before saying that the clock may be the cause
_RESEND_PER_TICK = 500  # records (re)sent per tick at most: acks and notices keep flowing


class Record(Protocol):
    """Any record kind a wearable seals: a vitals sample, a batch of RR intervals."""

    def encode(self) -> bytes: ...


class Sequenced(Record, Protocol):
    """A record kept until acknowledged: `(epoch, seq)` names it (one sequence per boot for
    every kind the wearable sends)."""

    @property
    def seq(self) -> int: ...

    @property
    def epoch(self) -> int: ...


class RecordSource(Protocol):
    def next_sample(self) -> Record: ...


@dataclass
class WearableStats:
    records_sent: int = 0  # distinct samples published at least once
    records_resent: int = 0
    records_acked: int = 0
    buffer_overflow: int = 0  # samples dropped unacknowledged because the buffer was full
    notices: int = 0  # unknown-session notices that made us handshake again
    handshakes: int = 0
    handshake_failures: int = 0
    handshake_seconds: list[float] = field(default_factory=list)
    dropped: int = 0
    gave_up: bool = False  # stopped after `give_up_after` unanswered handshakes in a row


class Wearable:
    """Samples `records` (or forever) at `rate` per second and delivers each one end to end.

    Every sample carries this boot's random `epoch` and its sequence number; it stays in a
    buffer of `buffer_seconds` of samples until a sealed acknowledgement from the gateway
    covers it, and is re-sealed and sent again after a new session, a reconnection, or
    `resend_after` seconds without an acknowledgement. A full buffer drops its oldest sample
    (counted in `stats.buffer_overflow`, logged): the only way a sample is lost."""

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
        buffer_seconds: float = 86_400.0,
        resend_after: float = 60.0,
        max_clock_skew: float = 120.0,
        epoch: int | None = None,
        give_up_after: int | None = None,
    ) -> None:
        self.identity = identity
        self.gateway = gateway
        self.layout = layout
        self.generator = generator
        self.rate = rate
        self.session_max_age = session_max_age
        self.config = HandshakeConfig(rekey=rekey or RekeyPolicy())
        self.handshake_timeout = handshake_timeout
        self.resend_after = resend_after
        self.max_clock_skew = max_clock_skew
        self.give_up_after = give_up_after
        self.epoch = secrets.randbelow(MAX_EPOCH) + 1 if epoch is None else epoch
        self.buffer_limit = max(1, round(buffer_seconds * rate))
        name = identity.name
        self.record_topic = layout.topic(TopicKind.RECORD, name)
        self._record_topic_bytes = self.record_topic.encode()
        self.init_topic = layout.topic(TopicKind.HANDSHAKE, name)
        self.response_topic = layout.topic(TopicKind.RESPONSE, name)
        self.ack_topic = layout.topic(TopicKind.ACK, name)
        self.notice_topic = layout.topic(TopicKind.NOTICE, name)
        self.session: Session | None = None
        self._session_started = 0.0
        self.stats = WearableStats()
        self.generated = 0
        # seq -> record, oldest first: everything not yet acknowledged by the gateway
        self._unacked: OrderedDict[int, Sequenced] = OrderedDict()
        # Samples to publish now (new ones, or all after a new session or reconnection), and
        # (when due, seq) of those sent, to send again if still unacknowledged by then.
        # Entries of samples acknowledged meanwhile are skipped when they come up.
        self._fresh: deque[int] = deque()
        self._timers: deque[tuple[float, int, int]] = deque()  # (due, seq, send number)
        self._ever_sent: set[int] = set()
        self._sends = 0  # publications so far: the gateway acknowledges them in order
        self._send_no: dict[int, int] = {}  # seq -> number of its latest publication
        self._acked_send = -1  # the latest publication the gateway has acknowledged
        self._generation: int | None = None  # the hub connection the records were sent on

    @property
    def unacknowledged(self) -> int:
        return len(self._unacked)

    def subscribe(self, hub: MqttHub) -> None:
        hub.response_queue(self.response_topic)
        hub.response_queue(self.ack_topic, maxsize=4096)
        hub.response_queue(self.notice_topic)

    async def handshake(self, hub: MqttHub) -> Session | None:
        """Run the handshake until it succeeds (new init after each timeout); None after
        `give_up_after` failures in a row, if set."""
        queue = hub.response_queue(self.response_topic)
        delay = 0.5
        failures = 0
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
                    response = await hub.response(queue, remaining)
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
                self._resend_all()  # everything unacknowledged goes again, re-sealed
                return session
            self.stats.handshake_failures += 1
            failures += 1
            if self.give_up_after is not None and failures >= self.give_up_after:
                self.stats.gave_up = True
                return None
            if failures == _SKEW_HINT_AFTER:
                # The gateway answers nothing to an init it refuses; the usual silent cause
                # is a clock that is off by more than its max_clock_skew.
                _LOG.warning(
                    "%s: %d handshakes unanswered; is the gateway running, this device "
                    "enrolled, and this clock (%s UTC) within %.0f s of the gateway's?",
                    self.identity.name,
                    failures,
                    time.strftime("%H:%M:%S", time.gmtime()),
                    self.max_clock_skew,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _resend_all(self) -> None:
        self._fresh = deque(self._unacked)
        self._timers.clear()

    def _keep(self, sample: Sequenced) -> None:
        if len(self._unacked) >= self.buffer_limit:
            dropped, _ = self._unacked.popitem(last=False)
            self._send_no.pop(dropped, None)
            self.stats.buffer_overflow += 1
            if self.stats.buffer_overflow in {1, 10, 100, 1000} or not (
                self.stats.buffer_overflow % 10_000
            ):
                _LOG.warning(
                    "%s: buffer of %d samples full; %d unacknowledged samples dropped",
                    self.identity.name,
                    self.buffer_limit,
                    self.stats.buffer_overflow,
                )
        self._unacked[sample.seq] = sample
        self._fresh.append(sample.seq)

    def _take_acks(self, hub: MqttHub, session: Session) -> None:
        queue = hub.response_queue(self.ack_topic, maxsize=4096)
        while not queue.empty():
            frame = queue.get_nowait()
            try:
                ack = DeliveryAck.decode(session.open(frame, self.ack_topic.encode()))
            except PqlinkError:
                continue  # sealed under an earlier session, or not from the gateway
            if ack.epoch != self.epoch:
                continue
            for r in ack.ranges:
                for seq in range(r.first, r.last + 1):
                    if self._unacked.pop(seq, None) is not None:
                        self.stats.records_acked += 1
                        self._acked_send = max(self._acked_send, self._send_no.pop(seq, -1))

    def _take_notices(self, hub: MqttHub, session: Session) -> bool:
        """True if the gateway says, signed and fresh, that it no longer has our session."""
        queue = hub.response_queue(self.notice_topic)
        while not queue.empty():
            frame = queue.get_nowait()
            try:
                verify_notice(
                    frame,
                    gateway=self.gateway,
                    device_id=self.identity.name,
                    session_id=session.session_id,
                    now_ms=int(time.time() * 1000),
                    max_skew_ms=int(self.max_clock_skew * 1000),
                )
            except PqlinkError:
                continue  # forged, stale, or about an earlier session: ignore
            self.stats.notices += 1
            return True
        return False

    async def _send_due(self, hub: MqttHub, session: Session) -> None:
        """Publish what is due, oldest first. A sample is sent again `resend_after` seconds
        after it was sent only if the gateway has meanwhile acknowledged something published
        after it (records reach it in order, so that one was lost): while the gateway is away
        or working through a backlog, the broker holds what was sent, and resending it would
        only pile copies on its queue."""
        now = time.monotonic()
        budget = _RESEND_PER_TICK
        while self._fresh and budget:
            seq = self._fresh.popleft()
            if seq in self._unacked:
                await self._send(hub, session, seq, now)
                budget -= 1
        timers = self._timers
        while timers and timers[0][0] <= now and budget:
            _, seq, number = timers[0]
            if self._send_no.get(seq) != number:
                timers.popleft()  # acknowledged, dropped or sent again since
                continue
            if number > self._acked_send:
                break  # nothing published after it is acknowledged yet: wait
            timers.popleft()
            await self._send(hub, session, seq, now)
            budget -= 1

    async def _send(self, hub: MqttHub, session: Session, seq: int, now: float) -> None:
        frame = session.seal(self._unacked[seq].encode(), self._record_topic_bytes)
        await hub.publish(self.record_topic, frame)
        self._send_no[seq] = number = self._sends
        self._sends += 1
        self._timers.append((now + self.resend_after, seq, number))
        if seq in self._ever_sent:
            self.stats.records_resent += 1
        else:
            self._ever_sent.add(seq)
            self.stats.records_sent += 1

    async def step(self, hub: MqttHub) -> bool:
        """One turn of delivery: handshake if there is no live session, take acknowledgements
        and notices, queue everything again after a reconnection, publish what is due. False
        if the handshake gave up (`give_up_after`)."""
        session = self.session
        if session is None or time.monotonic() - self._session_started > self.session_max_age:
            session = await self.handshake(hub)
            if session is None:
                return False
        self._take_acks(hub, session)
        if self._take_notices(hub, session):
            self.session = None  # the next turn handshakes at once and resends everything
            return True
        if self._generation is None:
            self._generation = hub.generation
        elif hub.generation != self._generation:
            self._generation = hub.generation
            self._resend_all()  # reconnected: the broker may not have had them all
        await self._send_due(hub, session)
        return True

    async def run(
        self, hub: MqttHub, stop: asyncio.Event, records: int | None, *, wait_acks: bool = True
    ) -> None:
        """Sample and deliver until `records` samples are taken (and, with `wait_acks`, all
        acknowledged), or until `stop` (or the hub stopped under it)."""
        with contextlib.suppress(HubClosedError):
            await self._run(hub, stop, records, wait_acks=wait_acks)

    async def _run(
        self, hub: MqttHub, stop: asyncio.Event, records: int | None, *, wait_acks: bool
    ) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not stop.is_set():
            if records is None or self.generated < records:
                taken = self.generator.next_sample()
                if not isinstance(taken, VitalsSample):
                    raise TypeError("run() delivers vitals samples; ReplayWearable sends batches")
                sample = dataclasses.replace(taken, epoch=self.epoch)
                self.generated += 1
                self._keep(sample)
            elif not self._unacked or (not wait_acks and len(self._ever_sent) >= self.generated):
                return
            if not await self.step(hub):
                return
            if self.session is None:
                continue  # a notice: handshake again at once
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                next_at = time.monotonic()  # behind schedule: do not burst to catch up
                await asyncio.sleep(0)
