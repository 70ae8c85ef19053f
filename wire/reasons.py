"""The one vocabulary of rejection reasons and log events: gateways and the aggregator count,
log and document every refusal under a `Reason`, and the gateway logs only `Event`s."""

from __future__ import annotations

import enum

from pqlink import (
    AuthenticationError,
    ClockSkewError,
    DecodeError,
    ErrorReason,
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
    # Aggregator: secure-aggregation protocol messages.
    FORGED = "forged"
    WRONG_ROUND = "wrong_round"
    UNEXPECTED_SENDER = "unexpected_sender"
    WRONG_STAGE = "wrong_stage"


class Event(enum.StrEnum):
    """Stable names of the gateway's structured log events (docs/operations.md lists them)."""

    BROKER_CONNECTED = "broker_connected"
    BROKER_DISCONNECTED = "broker_disconnected"
    DAEMON_FAILED = "daemon_failed"
    DAEMON_READY = "daemon_ready"
    DAEMON_STARTED = "daemon_started"
    DAEMON_STOPPED = "daemon_stopped"
    DAEMON_STOPPING = "daemon_stopping"
    FEATURE_STATS_SENT = "feature_stats_sent"
    GLOBAL_APPLIED = "global_applied"
    GLOBAL_REJECTED = "global_rejected"
    GLOBAL_WAITING_FOR_KEY = "global_waiting_for_key"
    INSECURE_BENCHMARK_MODE = "insecure_benchmark_mode"
    METRICS_LISTENING = "metrics_listening"
    RECORD_REJECTED = "record_rejected"
    REGISTRY_RELOAD_FAILED = "registry_reload_failed"
    REGISTRY_RELOADED = "registry_reloaded"
    RETENTION_APPLIED = "retention_applied"
    RETENTION_FAILED = "retention_failed"
    ROUND_DEFERRED = "round_deferred"
    ROUND_SKIPPED = "round_skipped"
    ROUND_TRAINED = "round_trained"
    SECURE_ROUND_FINISHED = "secure_round_finished"
    SECURE_ROUND_REFUSED = "secure_round_refused"
    SESSION_ESTABLISHED = "session_established"
    SESSION_EXPIRED = "session_expired"
    SESSION_REJECTED = "session_rejected"
    SESSIONS_RESTORED = "sessions_restored"
    STORE_FAILED = "store_failed"
    STORE_FULL = "store_full"
    STORE_IO_FAILED = "store_io_failed"
    STORE_RESUMED = "store_resumed"
    UPDATE_CONFIRMED = "update_confirmed"
    UPLINK_CONNECTED = "uplink_connected"
    UPLINK_DISCONNECTED = "uplink_disconnected"
    UPLINK_UNREACHABLE = "uplink_unreachable"


def reason_for(exc: PqlinkError) -> Reason:
    """Map a pqlink error to its rejection reason (most specific class first)."""
    for cls, reason in (
        (RevokedPeerError, Reason.REVOKED),
        (UnknownPeerError, Reason.UNENROLLED),
        (SignatureError, Reason.BAD_SIGNATURE),
        (AuthenticationError, Reason.TAMPERED),
        (ClockSkewError, Reason.EXPIRED),
        (ReplayError, Reason.REPLAY),
        (NegotiationError, Reason.NEGOTIATION),
        (SessionExpiredError, Reason.EXPIRED),
    ):
        if isinstance(exc, cls):
            return reason
    if isinstance(exc, DecodeError) and exc.reason is ErrorReason.TOO_LARGE:
        # a frame over its size limit, refused before it is parsed: what the plain path's
        # own size check reports
        return Reason.OVERSIZED
    return Reason.MALFORMED
