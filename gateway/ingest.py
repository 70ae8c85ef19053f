"""What the daemon does with each MQTT message, without any I/O: route by topic, open records
through their sessions, classify every failure by a stable reason, bound what fails."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import GatewayError
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


class RecordRefusedError(GatewayError):
    """A record frame that did not authenticate (or names no live session): what the
    processor charges to the device's failure budget."""

    def __init__(self, reason: Reason, detail: str, session_id: bytes = b"") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.session_id = session_id


class RecordCodec(Protocol):
    """How a record frame on a device's topic becomes the record's plaintext: chosen once,
    where the daemon is wired. Returns (plaintext, session id); raises RecordRefusedError for a
    frame that fails, DuplicateError for one the session already delivered."""

    def open(self, topic: str, device: str, payload: bytes, now: float) -> tuple[bytes, bytes]:
        """The opened record and the id of the session it came under."""
        ...

    def delivered(self, session_id: bytes, now: float) -> None:
        """The record opened under `session_id` also decoded: it was delivered."""
        ...


class SealedRecords:
    """The protocol: records sealed under the device's pqlink session."""

    def __init__(self, sessions: SessionTable) -> None:
        self.sessions = sessions

    def open(self, topic: str, device: str, payload: bytes, now: float) -> tuple[bytes, bytes]:
        try:
            sid = peek_session_id(payload)
        except DecodeError as exc:
            raise RecordRefusedError(Reason.MALFORMED, str(exc)) from None
        entry = self.sessions.get(sid)
        if entry is None:
            raise RecordRefusedError(Reason.UNKNOWN_SESSION, sid.hex()[:8], sid)
        if entry.device_id != device:
            raise RecordRefusedError(Reason.WRONG_TOPIC, "session belongs to another")
        try:
            plaintext = entry.session.open(payload, topic.encode())
        except DuplicateError:
            raise  # a redelivery, not a failure: the processor counts it apart
        except PqlinkError as exc:
            raise RecordRefusedError(reason_for(exc), str(exc)) from None
        return plaintext, sid

    def delivered(self, session_id: bytes, now: float) -> None:
        # Only a record that also decodes keeps its session alive: authentic garbage does not.
        entry = self.sessions.get(session_id)
        if entry is not None:
            entry.last_seen = now
            entry.dirty = True


class BareRecords:
    """NO SECURITY: the benchmark baseline "crypto switched off" takes the frame as the bare
    record, so ingest can be timed without crypto. Wired in only by `[bench] plaintext_records`."""

    def open(self, topic: str, device: str, payload: bytes, now: float) -> tuple[bytes, bytes]:
        return payload, b""

    def delivered(self, session_id: bytes, now: float) -> None:
        pass  # no sessions


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
        records: RecordCodec | None = None,
    ) -> None:
        self.layout = layout
        self.sessions = sessions
        self.records: RecordCodec = SealedRecords(sessions) if records is None else records
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
        try:
            plaintext, sid = self.records.open(topic, device, payload, now)
        except DuplicateError:
            self.duplicates += 1
            return Duplicate(device)
        except RecordRefusedError as failure:
            return self._fail(device, failure.reason, failure.detail, now, failure.session_id)
        try:
            record = decode_record(plaintext)
        except DecodeError as exc:
            # Authentic but unparseable: a buggy or hostile firmware, not a network fault.
            return self._reject(device, Reason.BAD_PAYLOAD, str(exc))
        self.records.delivered(sid, now)
        self.accepted += 1
        return _accepted(device, record, wall_ms, sid)
