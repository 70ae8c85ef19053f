"""The one vocabulary of rejection reasons: gateways and the aggregator count, log and document
every refused handshake, record, update or partial under one of these stable names."""

from __future__ import annotations

import enum

from pqlink import (
    AuthenticationError,
    NegotiationError,
    PqlinkError,
    ReplayError,
    RevokedPeerError,
    SessionExpiredError,
    SignatureError,
    UnknownPeerError,
)


class Reason(enum.StrEnum):
    """Stable names of rejection reasons: counters, log fields and docs use these."""

    # Either side.
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    TAMPERED = "tampered"
    UNENROLLED = "unenrolled"
    REVOKED = "revoked"
    BAD_SIGNATURE = "bad_signature"
    # Gateway: handshakes and records.
    WRONG_TOPIC = "wrong_topic"
    UNKNOWN_SESSION = "unknown_session"
    REPLAY = "replay"
    NEGOTIATION = "negotiation"
    EXPIRED = "expired"
    RATE_LIMITED = "rate_limited"
    BAD_PAYLOAD = "bad_payload"
    # Aggregator: model updates.
    WRONG_TYPE = "wrong_type"
    BAD_SAMPLE_COUNT = "bad_sample_count"
    WRONG_SHAPE = "wrong_shape"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    DUPLICATE = "duplicate"
    STALE = "stale"
    FUTURE_ROUND = "future_round"
    CONFLICT = "conflict"


def reason_for(exc: PqlinkError) -> Reason:
    """Map a pqlink error to its rejection reason (most specific class first)."""
    for cls, reason in (
        (RevokedPeerError, Reason.REVOKED),
        (UnknownPeerError, Reason.UNENROLLED),
        (SignatureError, Reason.BAD_SIGNATURE),
        (AuthenticationError, Reason.TAMPERED),
        (ReplayError, Reason.REPLAY),
        (NegotiationError, Reason.NEGOTIATION),
        (SessionExpiredError, Reason.EXPIRED),
    ):
        if isinstance(exc, cls):
            return reason
    return Reason.MALFORMED
