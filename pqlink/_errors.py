"""Every error pqlink raises derives from PqlinkError.

Subclasses say whose fault it is (the peer's: RemoteProtocolError; the caller's:
LocalProtocolError); `reason` names the exact check that failed, as a stable machine name."""

from __future__ import annotations

import enum


class ErrorReason(enum.StrEnum):
    """Stable names of the checks that can fail; docs/protocol.md lists them with the frames."""

    # Generic reasons, one per class: used where no more precise check applies.
    ERROR = "error"
    LOCAL = "local"
    REMOTE = "remote"
    MALFORMED = "malformed"
    BAD_TAG = "bad_tag"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    NEGOTIATION = "negotiation"
    UNKNOWN_PEER = "unknown_peer"
    REVOKED_PEER = "revoked_peer"
    SESSION_EXPIRED = "session_expired"
    KEY_FILE = "key_file"
    # Framing
    TRUNCATED = "truncated"
    TRAILING_BYTES = "trailing_bytes"
    TOO_LARGE = "too_large"
    WRONG_TYPE = "wrong_type"
    BAD_IDENTIFIER = "bad_identifier"
    BAD_COUNT = "bad_count"
    BAD_SIGNATURE_LENGTH = "bad_signature_length"
    UNKNOWN_SIG_ALG = "unknown_sig_alg"
    BAD_KEY = "bad_key"
    # Handshake
    NO_COMMON_VERSION = "no_common_version"
    NO_COMMON_SUITE = "no_common_suite"
    VERSION_NOT_OFFERED = "version_not_offered"
    SUITE_NOT_OFFERED = "suite_not_offered"
    UNKNOWN_SUITE = "unknown_suite"
    WRONG_RESPONDER = "wrong_responder"
    SIG_ALG_MISMATCH = "sig_alg_mismatch"
    CLOCK_SKEW = "clock_skew"
    INIT_REPLAYED = "init_replayed"
    REPLAY_CACHE_FULL = "replay_cache_full"
    BAD_FINISHED = "bad_finished"
    WRONG_STATE = "wrong_state"
    # Records
    WRONG_SESSION = "wrong_session"
    OUTSIDE_WINDOW = "outside_window"
    DUPLICATE = "duplicate"
    EPOCH_UNUSABLE = "epoch_unusable"
    COUNTER_EXHAUSTED = "counter_exhausted"
    EPOCHS_EXHAUSTED = "epochs_exhausted"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BAD_STATE = "bad_state"
    # Envelopes
    BAD_VERSION = "bad_version"
    UNKNOWN_CONTENT_TYPE = "unknown_content_type"
    DUPLICATE_RECIPIENT = "duplicate_recipient"
    BODY_TOO_SHORT = "body_too_short"
    NOT_A_RECIPIENT = "not_a_recipient"
    # Secure aggregation
    SECAGG_REJECTED = "rejected"
    FORGED = "forged"
    REPLAYED = "replayed"
    WRONG_ROUND = "wrong_round"
    UNEXPECTED_SENDER = "unexpected_sender"
    UNMASK_REFUSED = "unmask_refused"
    TOO_FEW_NEIGHBOURS = "too_few_neighbours"


class PqlinkError(Exception):
    """Base class of every error raised by pqlink."""

    default_reason = ErrorReason.ERROR

    def __init__(self, message: str, *, reason: ErrorReason | None = None) -> None:
        super().__init__(message)
        self.reason: ErrorReason = reason if reason is not None else self.default_reason


class LocalProtocolError(PqlinkError):
    """The caller used the API wrongly (e.g. sealing before a session is established)."""

    default_reason = ErrorReason.LOCAL


class RemoteProtocolError(PqlinkError):
    """Input from the peer (or the network) is not acceptable."""

    default_reason = ErrorReason.REMOTE


class DecodeError(RemoteProtocolError):
    """A frame is malformed: truncated, wrong type or version, bad length, bad field."""

    default_reason = ErrorReason.MALFORMED


class AuthenticationError(RemoteProtocolError):
    """An AEAD tag or a key-confirmation MAC did not verify; nothing was released."""

    default_reason = ErrorReason.BAD_TAG


class SignatureError(RemoteProtocolError):
    """An ML-DSA signature did not verify."""

    default_reason = ErrorReason.BAD_SIGNATURE


class ReplayError(RemoteProtocolError):
    """A record or message was seen before or is too old for the replay window."""

    default_reason = ErrorReason.REPLAY


class NegotiationError(RemoteProtocolError):
    """No common version or suite, or a negotiated value the initiator never offered."""

    default_reason = ErrorReason.NEGOTIATION


class UnknownPeerError(RemoteProtocolError):
    """The peer's identity is not enrolled in the registry."""

    default_reason = ErrorReason.UNKNOWN_PEER


class RevokedPeerError(UnknownPeerError):
    """The peer's identity is enrolled but revoked."""

    default_reason = ErrorReason.REVOKED_PEER


class SessionExpiredError(RemoteProtocolError):
    """The session has used up its rekey budget or is unknown; a new handshake is needed."""

    default_reason = ErrorReason.SESSION_EXPIRED


class KeyFileError(PqlinkError):
    """A key file is missing, malformed, unsafe (writable by others, not ours, a symlink)
    or unreadable; the message names the path and the cause."""

    default_reason = ErrorReason.KEY_FILE
