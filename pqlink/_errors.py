"""Every error pqlink raises derives from PqlinkError.

Subclasses say what went wrong and whose fault it is: the peer's (RemoteProtocolError and
its children) or the caller's (LocalProtocolError)."""

from __future__ import annotations


class PqlinkError(Exception):
    """Base class of every error raised by pqlink."""


class LocalProtocolError(PqlinkError):
    """The caller used the API wrongly (e.g. sealing before a session is established)."""


class RemoteProtocolError(PqlinkError):
    """Input from the peer (or the network) is not acceptable."""


class DecodeError(RemoteProtocolError):
    """A frame is malformed: truncated, wrong type or version, bad length, bad field."""


class AuthenticationError(RemoteProtocolError):
    """An AEAD tag or a key-confirmation MAC did not verify; nothing was released."""


class SignatureError(RemoteProtocolError):
    """An ML-DSA signature did not verify."""


class ReplayError(RemoteProtocolError):
    """A record or message was seen before or is too old for the replay window."""


class DuplicateError(ReplayError):
    """A record with this counter was already received in this session (a redelivery)."""


class ClockSkewError(ReplayError):
    """A timestamp is further from our clock than the allowed skew (stale or from the future)."""


class NegotiationError(RemoteProtocolError):
    """No common version or suite, or a negotiated value the initiator never offered."""


class UnknownPeerError(RemoteProtocolError):
    """The peer's identity is not enrolled in the registry."""


class RevokedPeerError(UnknownPeerError):
    """The peer's identity is enrolled but revoked."""


class SessionExpiredError(RemoteProtocolError):
    """The session has used up its rekey budget or is unknown; a new handshake is needed."""


class KeyFileError(PqlinkError):
    """A key file is missing, malformed or readable by others."""
