"""End-to-end delivery messages from gateway to wearable: the acknowledgement of committed
records (sealed under the session) and the signed answer to a record for an unknown session."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pqlink._codec import Reader, Writer
from pqlink._errors import DecodeError, ErrorReason, ReplayError
from pqlink.identity import Identity, PublicIdentity
from pqlink.record import SESSION_ID_SIZE

ACK_TYPE = 0x41
NOTICE_TYPE = 0x4E
DELIVERY_VERSION = 1
MAX_ACK_RANGES = 64
"""Ranges in one acknowledgement: one batch of a wearable's records rarely has more than a
few gaps; more ranges go in further acknowledgements."""
_MAX_U63 = (1 << 63) - 1
_NOTICE_CONTEXT = b"pqlink1 unknown session"


@dataclass(frozen=True, slots=True)
class SeqRange:
    """Sequence numbers first .. first + count - 1 of one boot epoch."""

    first: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= _MAX_U63 or not 1 <= self.count <= 0xFFFFFFFF:
            raise ValueError(f"bad range first={self.first} count={self.count}")

    @property
    def last(self) -> int:
        return self.first + self.count - 1


def to_ranges(seqs: Iterable[int]) -> list[SeqRange]:
    """Sorted, merged ranges covering exactly `seqs`."""
    ordered = sorted(set(seqs))
    if ordered and ordered[0] < 0:
        raise ValueError(f"sequence number {ordered[0]} is negative")
    ranges: list[SeqRange] = []
    first = last = -2
    for seq in ordered:
        if seq == last + 1:
            last = seq
            continue
        if first >= 0:
            ranges.append(SeqRange(first, last - first + 1))
        first = last = seq
    if first >= 0:
        ranges.append(SeqRange(first, last - first + 1))
    return ranges


@dataclass(frozen=True, slots=True)
class DeliveryAck:
    """The gateway has durably stored these records of boot `epoch` (including any it had
    stored before: a resent record is acknowledged again)."""

    epoch: int
    ranges: tuple[SeqRange, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.epoch <= _MAX_U63:
            raise ValueError(f"epoch={self.epoch} is out of range")
        if not 1 <= len(self.ranges) <= MAX_ACK_RANGES:
            raise ValueError(f"an ack holds 1..{MAX_ACK_RANGES} ranges, got {len(self.ranges)}")

    def covers(self, seq: int) -> bool:
        return any(r.first <= seq <= r.last for r in self.ranges)

    def encode(self) -> bytes:
        w = Writer().u8(ACK_TYPE).u8(DELIVERY_VERSION).u64(self.epoch).u8(len(self.ranges))
        for r in self.ranges:
            w.u64(r.first).u32(r.count)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> DeliveryAck:
        r = Reader(data, "delivery ack")
        if r.u8("type") != ACK_TYPE:
            raise DecodeError("delivery ack: wrong message type", reason=ErrorReason.WRONG_TYPE)
        if (version := r.u8("version")) != DELIVERY_VERSION:
            raise DecodeError(
                f"delivery ack: version {version} is not supported", reason=ErrorReason.BAD_VERSION
            )
        epoch = r.u64("epoch")
        n = r.u8("range count")
        ranges = []
        for i in range(n):
            first, count = r.u64(f"range {i} first"), r.u32(f"range {i} count")
            try:
                ranges.append(SeqRange(first, count))
            except ValueError as exc:
                raise DecodeError(f"delivery ack: {exc}") from None
        r.end()
        try:
            return cls(epoch, tuple(ranges))
        except ValueError as exc:
            raise DecodeError(f"delivery ack: {exc}") from None


def acks_for(epoch: int, seqs: Iterable[int]) -> list[DeliveryAck]:
    """The acknowledgements covering `seqs` of one epoch (several if there are many gaps)."""
    ranges = to_ranges(seqs)
    return [
        DeliveryAck(epoch, tuple(ranges[i : i + MAX_ACK_RANGES]))
        for i in range(0, len(ranges), MAX_ACK_RANGES)
    ]


@dataclass(frozen=True, slots=True)
class UnknownSessionNotice:
    """Signed by the gateway: "I hold no session `session_id` for `device_id`, at
    `timestamp_ms`". It reveals only what the broker already shows (the session id is in the
    clear in every record header) and the gateway's clock."""

    gateway_id: str
    device_id: str
    session_id: bytes
    timestamp_ms: int

    def _signed_part(self) -> bytes:
        return (
            Writer()
            .u8(NOTICE_TYPE)
            .u8(DELIVERY_VERSION)
            .identifier(self.gateway_id)
            .identifier(self.device_id)
            .raw(self.session_id)
            .u64(self.timestamp_ms)
            .getvalue()
        )

    def sign(self, identity: Identity) -> bytes:
        if identity.name != self.gateway_id:
            raise ValueError(f"notice names {self.gateway_id!r}, identity is {identity.name!r}")
        if len(self.session_id) != SESSION_ID_SIZE:
            raise ValueError(f"session id must be {SESSION_ID_SIZE} bytes")
        body = self._signed_part()
        signature = identity.signing_key.sign(body, _NOTICE_CONTEXT)
        return Writer().raw(body).u16(len(signature)).raw(signature).getvalue()


def verify_notice(
    frame: bytes,
    *,
    gateway: PublicIdentity,
    device_id: str,
    session_id: bytes,
    now_ms: int,
    max_skew_ms: int,
) -> UnknownSessionNotice:
    """Check a notice addressed to this wearable about its current session, signed by its
    gateway and fresh; raise DecodeError, SignatureError or ReplayError otherwise."""
    r = Reader(frame, "unknown-session notice")
    if r.u8("type") != NOTICE_TYPE:
        raise DecodeError(
            "unknown-session notice: wrong message type", reason=ErrorReason.WRONG_TYPE
        )
    if (version := r.u8("version")) != DELIVERY_VERSION:
        raise DecodeError(
            f"unknown-session notice: version {version} is not supported",
            reason=ErrorReason.BAD_VERSION,
        )
    notice = UnknownSessionNotice(
        r.identifier("gateway"),
        r.identifier("device"),
        r.raw(SESSION_ID_SIZE, "session id"),
        r.u64("timestamp"),
    )
    body_len = r.offset
    signature = r.raw(r.u16("signature length"), "signature")
    r.end()
    if notice.gateway_id != gateway.name or notice.device_id != device_id:
        raise DecodeError("unknown-session notice is addressed to someone else")
    gateway.verify_key.verify(signature, frame[:body_len], _NOTICE_CONTEXT)
    if notice.session_id != session_id:
        raise ReplayError("unknown-session notice is about another session")
    if abs(now_ms - notice.timestamp_ms) > max_skew_ms:
        raise ReplayError("unknown-session notice is stale")
    return notice
