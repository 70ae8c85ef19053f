"""What the daemon does with each MQTT message, without any I/O: route by topic, open records
through their sessions, classify every failure by a stable reason, bound what fails."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway.sessions import RateLimiter, SessionTable
from gateway.store import RRBeatRow, VitalsRow, rr_beat_rows, vitals_row
from pqlink import (
    DecodeError,
    DuplicateError,
    PqlinkError,
    peek_session_id,
)
from pqlink.handshake import MAX_INIT_SIZE
from wire.reasons import Reason, reason_for
from wire.rr import RRBatch, decode_record
from wire.topics import INBOUND, TopicKind, TopicLayout
from wire.vitals import VitalsSample


@dataclass(frozen=True, slots=True)
class Accepted:
    """An opened record: a vitals row, or the beats of an RR batch; `record_id` is its
    (boot epoch, seq), which the gateway acknowledges to the wearable once committed."""

    device_id: str
    row: VitalsRow | None = None
    beats: tuple[RRBeatRow, ...] = ()
    session_id: bytes = b""  # empty for the plaintext benchmark baseline
    record_id: tuple[int, int] = (0, 0)


def _accepted(
    device: str, record: VitalsSample | RRBatch, wall_ms: int, session_id: bytes = b""
) -> Accepted:
    record_id = (record.epoch, record.seq)
    if isinstance(record, RRBatch):
        return Accepted(
            device,
            beats=rr_beat_rows(device, record, wall_ms),
            session_id=session_id,
            record_id=record_id,
        )
    return Accepted(
        device,
        row=vitals_row(device, record, wall_ms),
        session_id=session_id,
        record_id=record_id,
    )


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    device_id: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    device_id: str | None
    reason: Reason
    detail: str
    session_id: bytes = b""  # set for unknown_session: the id the wearable still uses
    quiet: bool = False  # over the device's failure budget: count only, no log, no answer


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A record this session already delivered (the broker redelivered it after a restart):
    stored already, so counted as a duplicate rather than as a replay attack."""

    device_id: str


Outcome = Accepted | HandshakeRequest | Rejected | Duplicate


class IngestProcessor:
    """Classifies and opens incoming messages; owns the session table and the limiters.

    A record that authenticates is never dropped for rate: its cost to the gateway is the
    commit, and the commit pipeline pushes back on the broker (receive maximum, batches).
    What fails authentication (or names no live session) is charged to the device's
    `failure_limiter` bucket, apart from anything an honest record spends: beyond the bucket
    such frames are only counted, so a flood on a device's topic buys the attacker no log
    lines and no answers, and the device's own records pass as before."""

    def __init__(
        self,
        layout: TopicLayout,
        sessions: SessionTable,
        *,
        max_record_bytes: int,
        failure_limiter: RateLimiter,
        handshake_limiter: RateLimiter,
        plaintext: bool = False,
    ) -> None:
        self.plaintext = plaintext  # benchmark baseline only: records are bare vitals
        self.layout = layout
        self.sessions = sessions
        self.max_record_bytes = max_record_bytes
        self.failure_limiter = failure_limiter
        self.handshake_limiter = handshake_limiter
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.over_budget = 0
        self.duplicates = 0

    def _reject(
        self, device: str | None, reason: Reason, detail: str, session_id: bytes = b""
    ) -> Rejected:
        self.rejected[reason.value] += 1
        return Rejected(device, reason, detail, session_id)

    def _fail(
        self, device: str, reason: Reason, detail: str, now: float, session_id: bytes = b""
    ) -> Rejected:
        """A record that did not authenticate: counted always, logged and answered only
        within the device's failure budget."""
        self.rejected[reason.value] += 1
        quiet = not self.failure_limiter.allow(device, now)
        self.over_budget += quiet
        return Rejected(device, reason, detail, session_id, quiet)

    def handle(self, topic: str, payload: bytes, now: float, wall_ms: int) -> Outcome:
        parsed = self.layout.parse(topic)
        if parsed is None or parsed[0] not in INBOUND:
            return self._reject(None, Reason.WRONG_TOPIC, "topic outside the gateway's layout")
        kind, device = parsed
        if kind is TopicKind.HANDSHAKE:
            if len(payload) > MAX_INIT_SIZE:
                return self._reject(device, Reason.OVERSIZED, f"{len(payload)} bytes")
            if not self.handshake_limiter.allow(device, now):
                return self._reject(device, Reason.RATE_LIMITED, "handshakes")
            return HandshakeRequest(device, payload)
        if len(payload) > self.max_record_bytes:
            return self._reject(device, Reason.OVERSIZED, f"{len(payload)} bytes")
        if self.plaintext:
            return self._plaintext(device, payload, wall_ms)
        try:
            sid = peek_session_id(payload)
        except DecodeError as exc:
            return self._fail(device, Reason.MALFORMED, str(exc), now)
        entry = self.sessions.get(sid)
        if entry is None:
            return self._fail(device, Reason.UNKNOWN_SESSION, sid.hex()[:8], now, sid)
        if entry.device_id != device:
            return self._fail(device, Reason.WRONG_TOPIC, "session belongs to another", now)
        try:
            plaintext = entry.session.open(payload, topic.encode())
        except DuplicateError:
            self.duplicates += 1
            return Duplicate(device)
        except PqlinkError as exc:
            return self._fail(device, reason_for(exc), str(exc), now)
        try:
            record = decode_record(plaintext)
        except DecodeError as exc:
            # Authentic but unparseable: a buggy or hostile firmware, not a network fault.
            return self._reject(device, Reason.BAD_PAYLOAD, str(exc))
        entry.last_seen = now
        entry.dirty = True
        self.accepted += 1
        return _accepted(device, record, wall_ms, sid)

    def _plaintext(self, device: str, payload: bytes, wall_ms: int) -> Outcome:
        try:
            record = decode_record(payload)
        except DecodeError as exc:
            return self._reject(device, Reason.BAD_PAYLOAD, str(exc))
        self.accepted += 1
        return _accepted(device, record, wall_ms)
