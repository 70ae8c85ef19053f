"""What the daemon does with each MQTT message, without any I/O: route by topic, rate-limit,
open records through their sessions, classify every failure by a stable reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gateway.sessions import RateLimiter, SessionTable
from gateway.store import RRBeatRow, VitalsRow, rr_beat_rows, vitals_row
from pqlink import (
    DecodeError,
    PqlinkError,
    peek_session_id,
)
from pqlink.handshake import MAX_INIT_SIZE
from wire.reasons import Reason, reason_for
from wire.rr import RRBatch, decode_record
from wire.topics import TopicKind, TopicLayout
from wire.vitals import VitalsSample


@dataclass(frozen=True, slots=True)
class Accepted:
    """An opened record: a vitals row, or the beats of an RR batch."""

    device_id: str
    row: VitalsRow | None = None
    beats: tuple[RRBeatRow, ...] = ()


def _accepted(device: str, record: VitalsSample | RRBatch, wall_ms: int) -> Accepted:
    if isinstance(record, RRBatch):
        return Accepted(device, beats=rr_beat_rows(device, record, wall_ms))
    return Accepted(device, row=vitals_row(device, record, wall_ms))


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    device_id: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    device_id: str | None
    reason: Reason
    detail: str


Outcome = Accepted | HandshakeRequest | Rejected


class IngestProcessor:
    """Classifies and opens incoming messages; owns the session table and the rate limiters."""

    def __init__(
        self,
        layout: TopicLayout,
        sessions: SessionTable,
        *,
        max_record_bytes: int,
        record_limiter: RateLimiter,
        handshake_limiter: RateLimiter,
        plaintext: bool = False,
    ) -> None:
        self.plaintext = plaintext  # benchmark baseline only: records are bare vitals
        self.layout = layout
        self.sessions = sessions
        self.max_record_bytes = max_record_bytes
        self.record_limiter = record_limiter
        self.handshake_limiter = handshake_limiter
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def _reject(self, device: str | None, reason: Reason, detail: str) -> Rejected:
        self.rejected[reason.value] += 1
        return Rejected(device, reason, detail)

    def handle(self, topic: str, payload: bytes, now: float, wall_ms: int) -> Outcome:
        parsed = self.layout.parse(topic)
        if parsed is None or parsed[0] is TopicKind.RESPONSE:
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
        if not self.record_limiter.allow(device, now):
            return self._reject(device, Reason.RATE_LIMITED, "records")
        if self.plaintext:
            return self._plaintext(device, payload, wall_ms)
        try:
            sid = peek_session_id(payload)
        except DecodeError as exc:
            return self._reject(device, Reason.MALFORMED, str(exc))
        entry = self.sessions.get(sid)
        if entry is None:
            return self._reject(device, Reason.UNKNOWN_SESSION, sid.hex()[:8])
        if entry.device_id != device:
            return self._reject(device, Reason.WRONG_TOPIC, "session belongs to another device")
        try:
            plaintext = entry.session.open(payload, topic.encode())
        except PqlinkError as exc:
            return self._reject(device, reason_for(exc), str(exc))
        try:
            record = decode_record(plaintext)
        except DecodeError as exc:
            # Authentic but unparseable: a buggy or hostile firmware, not a network fault.
            return self._reject(device, Reason.BAD_PAYLOAD, str(exc))
        entry.last_seen = now
        entry.dirty = True
        self.accepted += 1
        return _accepted(device, record, wall_ms)

    def _plaintext(self, device: str, payload: bytes, wall_ms: int) -> Outcome:
        try:
            record = decode_record(payload)
        except DecodeError as exc:
            return self._reject(device, Reason.BAD_PAYLOAD, str(exc))
        self.accepted += 1
        return _accepted(device, record, wall_ms)
