"""The record layer: seal and open application records of an established session.

Session id and 64-bit counter in a cleartext header, nonce = IV xor counter, header and topic
bound as associated data, a sliding replay window, and key updates after a bounded number of
records or seconds (the TLS 1.3 KeyUpdate chain)."""

from __future__ import annotations

import enum
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from pqlink._ascon import decrypt as _ascon_decrypt
from pqlink._ascon import encrypt as _ascon_encrypt
from pqlink._errors import (
    AuthenticationError,
    DecodeError,
    ErrorReason,
    LocalProtocolError,
    ReplayError,
    SessionExpiredError,
)
from pqlink.kdf import expand_label

if TYPE_CHECKING:
    from pqlink.identity import PublicIdentity

#: What seal and open accept: MQTT clients hand out bytearray and memoryview payloads.
BytesLike: TypeAlias = bytes | bytearray | memoryview

RECORD_TYPE = 0x03
_HEADER = struct.Struct(">BB8sQ")
_STATE = struct.Struct(">B8sBHB32sBQQ32sBqIQd")
_STATE_VERSION = 1
HEADER_SIZE = _HEADER.size  # 18
TAG_SIZE = 16
SESSION_ID_SIZE = 8
MAX_RECORD_PAYLOAD = 16 * 1024
MAX_RECORD_SIZE = HEADER_SIZE + MAX_RECORD_PAYLOAD + TAG_SIZE
MAX_EPOCH = 255
#: The last counter value is never used, so a counter never wraps to reuse a nonce.
_MAX_COUNTER = (1 << 64) - 1
#: How far ahead of the receiver's epoch a record may be (records of skipped epochs were lost).
_MAX_EPOCH_JUMP = 4


@dataclass(frozen=True, slots=True)
class RekeyPolicy:
    """When a sender moves to the next traffic key."""

    max_records: int = 1 << 16
    max_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")
        if self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")


class SessionRole(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


def _epoch_keys(secret: bytes) -> tuple[bytes, int]:
    key = expand_label(secret, "key", b"", 16)
    iv = expand_label(secret, "iv", b"", 16)
    return key, int.from_bytes(iv, "big")


def next_traffic_secret(secret: bytes) -> bytes:
    return expand_label(secret, "traffic upd", b"", 32)


class ReplayWindow:
    """Sliding window over 64-bit counters: accepts each counter once, rejects those older
    than `size` behind the highest seen."""

    __slots__ = ("_mask", "_top", "size")

    def __init__(self, size: int = 1024) -> None:
        if size < 1:
            raise ValueError(f"replay window size must be >= 1, got {size}")
        self.size = size
        self._top = -1
        self._mask = 0

    def check(self, counter: int) -> None:
        """Raise ReplayError if `counter` was seen or is outside the window; do not record it."""
        top = self._top
        if counter > top:
            return
        behind = top - counter
        if behind >= self.size:
            raise ReplayError(
                f"record counter {counter} is outside the replay window",
                reason=ErrorReason.OUTSIDE_WINDOW,
            )
        if (self._mask >> behind) & 1:
            raise ReplayError(
                f"record counter {counter} was already received", reason=ErrorReason.DUPLICATE
            )

    def accept(self, counter: int) -> None:
        """Record `counter` as received (call only after the record authenticated)."""
        top = self._top
        if counter > top:
            shift = counter - top
            self._mask = (
                ((self._mask << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            )
            self._top = counter
        else:
            self._mask |= 1 << (top - counter)

    @property
    def highest(self) -> int:
        return self._top


class Session:
    """Both directions of an established session. Built by the handshake, not by callers."""

    __slots__ = (
        "_recv_epoch",
        "_recv_keys",
        "_recv_secret",
        "_send_counter",
        "_send_epoch",
        "_send_epoch_start",
        "_send_epoch_started_at",
        "_send_iv",
        "_send_key",
        "_send_secret",
        "_sid_int",
        "confirmed",
        "established_at",
        "peer",
        "rekey",
        "role",
        "session_id",
        "suite",
        "window",
    )

    def __init__(
        self,
        *,
        session_id: bytes,
        role: SessionRole,
        peer: PublicIdentity,
        suite: int,
        send_secret: bytes,
        recv_secret: bytes,
        rekey: RekeyPolicy,
        now: float,
        replay_window: int = 1024,
    ) -> None:
        if len(session_id) != SESSION_ID_SIZE:
            raise LocalProtocolError("session id must be 8 bytes", reason=ErrorReason.BAD_STATE)
        self.session_id = session_id
        self.role = role
        self.peer = peer
        self.suite = suite
        self.rekey = rekey
        self.established_at = now
        # The responder learns that the initiator holds the keys from its first authentic record.
        self.confirmed = role is SessionRole.INITIATOR
        self.window = ReplayWindow(replay_window)
        self._send_secret = send_secret
        self._send_key, self._send_iv = _epoch_keys(send_secret)
        self._send_epoch = 0
        self._send_epoch_start = 0
        self._send_epoch_started_at = now
        self._send_counter = 0
        self._recv_secret = recv_secret
        self._recv_epoch = 0
        self._recv_keys: dict[int, tuple[bytes, int]] = {0: _epoch_keys(recv_secret)}

    # -- sending ---------------------------------------------------------------------------

    @property
    def send_epoch(self) -> int:
        return self._send_epoch

    @property
    def recv_epoch(self) -> int:
        return self._recv_epoch

    @property
    def records_sent(self) -> int:
        return self._send_counter

    def _advance_send_epoch(self, now: float) -> None:
        if self._send_epoch >= MAX_EPOCH:
            raise SessionExpiredError(
                "session used all 255 key updates: run a new handshake",
                reason=ErrorReason.EPOCHS_EXHAUSTED,
            )
        self._send_secret = next_traffic_secret(self._send_secret)
        self._send_key, self._send_iv = _epoch_keys(self._send_secret)
        self._send_epoch += 1
        self._send_epoch_start = self._send_counter
        self._send_epoch_started_at = now

    def seal(self, payload: BytesLike, topic: BytesLike, now: float | None = None) -> bytes:
        """Encrypt one record for the peer, binding it to `topic` (any bytes-like objects)."""
        payload = bytes(payload)
        if len(payload) > MAX_RECORD_PAYLOAD:
            raise LocalProtocolError(
                f"record payload of {len(payload)} bytes exceeds {MAX_RECORD_PAYLOAD}",
                reason=ErrorReason.PAYLOAD_TOO_LARGE,
            )
        if now is None:
            now = time.monotonic()
        counter = self._send_counter
        if counter >= _MAX_COUNTER:
            raise SessionExpiredError(
                "record counter exhausted: run a new handshake",
                reason=ErrorReason.COUNTER_EXHAUSTED,
            )
        rekey = self.rekey
        if (
            counter - self._send_epoch_start >= rekey.max_records
            or now - self._send_epoch_started_at >= rekey.max_seconds
        ):
            self._advance_send_epoch(now)
        header = _HEADER.pack(RECORD_TYPE, self._send_epoch, self.session_id, counter)
        nonce = (self._send_iv ^ counter).to_bytes(16, "big")
        self._send_counter = counter + 1
        return header + _ascon_encrypt(self._send_key, nonce, header + bytes(topic), payload)

    # -- receiving -------------------------------------------------------------------------

    def _keys_for_epoch(self, epoch: int) -> tuple[bytes, int] | None:
        keys = self._recv_keys.get(epoch)
        if keys is not None:
            return keys
        current = self._recv_epoch
        if epoch <= current or epoch - current > _MAX_EPOCH_JUMP:
            return None
        secret = self._recv_secret
        for _ in range(epoch - current):
            secret = next_traffic_secret(secret)
        return _epoch_keys(secret)

    def open(self, frame: BytesLike, topic: BytesLike) -> bytes:
        """Authenticate and decrypt one record from the peer (any bytes-like objects);
        raise a pqlink error otherwise."""
        frame = bytes(frame)
        size = len(frame)
        if size < HEADER_SIZE + TAG_SIZE:
            raise DecodeError(
                f"record of {size} bytes is shorter than header and tag",
                reason=ErrorReason.TRUNCATED,
            )
        if size > MAX_RECORD_SIZE:
            raise DecodeError(
                f"record of {size} bytes exceeds the {MAX_RECORD_SIZE}-byte limit",
                reason=ErrorReason.TOO_LARGE,
            )
        rtype, epoch, sid, counter = _HEADER.unpack_from(frame)
        if rtype != RECORD_TYPE:
            raise DecodeError(
                f"frame type {rtype:#04x} is not a record", reason=ErrorReason.WRONG_TYPE
            )
        if sid != self.session_id:
            raise DecodeError("record belongs to another session", reason=ErrorReason.WRONG_SESSION)
        self.window.check(counter)
        keys = self._keys_for_epoch(epoch)
        if keys is None:
            raise AuthenticationError(
                f"record epoch {epoch} is not usable (current {self._recv_epoch})",
                reason=ErrorReason.EPOCH_UNUSABLE,
            )
        key, iv = keys
        header = frame[:HEADER_SIZE]
        nonce = (iv ^ counter).to_bytes(16, "big")
        plaintext = _ascon_decrypt(key, nonce, header + bytes(topic), frame[HEADER_SIZE:])
        self.window.accept(counter)
        self.confirmed = True
        if epoch > self._recv_epoch:
            self._commit_recv_epoch(epoch, keys)
        return plaintext

    def _commit_recv_epoch(self, epoch: int, keys: tuple[bytes, int]) -> None:
        for _ in range(epoch - self._recv_epoch):
            self._recv_secret = next_traffic_secret(self._recv_secret)
        # Keep the previous epoch's keys so records reordered across a key update still open.
        previous = self._recv_keys.get(epoch - 1)
        self._recv_keys = {epoch: keys}
        if previous is not None:
            self._recv_keys[epoch - 1] = previous
        self._recv_epoch = epoch


def export_session(session: Session) -> bytes:
    """Serialise a session's live state (including traffic secrets!) so a daemon can resume it
    after a restart. The caller must store it as it stores keys: private to the service."""
    window = session.window
    mask_len = (window.size + 7) // 8
    return _STATE.pack(
        _STATE_VERSION,
        session.session_id,
        0 if session.role is SessionRole.INITIATOR else 1,
        session.suite,
        int(session.confirmed),
        session._send_secret,
        session._send_epoch,
        session._send_epoch_start,
        session._send_counter,
        session._recv_secret,
        session._recv_epoch,
        window._top,
        window.size,
        session.rekey.max_records,
        session.rekey.max_seconds,
    ) + window._mask.to_bytes(mask_len, "big")


def restore_session(state: bytes, peer: PublicIdentity, now: float | None = None) -> Session:
    """Rebuild a session exported by `export_session`; raises DecodeError (reason `bad_state`)
    if the state is malformed or inconsistent."""

    def bad(detail: str) -> DecodeError:
        return DecodeError(f"session state: {detail}", reason=ErrorReason.BAD_STATE)

    if len(state) < _STATE.size:
        raise bad(f"{len(state)} bytes is truncated")
    (
        version,
        sid,
        role,
        suite,
        confirmed,
        send_secret,
        send_epoch,
        send_epoch_start,
        send_counter,
        recv_secret,
        recv_epoch,
        top,
        size,
        max_records,
        max_seconds,
    ) = _STATE.unpack_from(state)
    if version != _STATE_VERSION:
        raise bad(f"version {version} is not supported")
    if not 1 <= size <= 1 << 16 or len(state) != _STATE.size + (size + 7) // 8:
        raise bad("bad replay window size")
    if role > 1 or confirmed > 1:
        raise bad(f"role {role} or confirmation flag {confirmed} is not 0 or 1")
    if send_epoch_start > send_counter:
        raise bad(f"epoch start {send_epoch_start} is after the send counter {send_counter}")
    if top < -1:
        raise bad(f"highest received counter {top} is negative")
    mask = int.from_bytes(state[_STATE.size :], "big")
    if mask >> size:
        raise bad("replay window bits beyond its size are set")
    try:
        rekey = RekeyPolicy(max_records, max_seconds)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if now is None:
        now = time.monotonic()
    session = Session(
        session_id=sid,
        role=SessionRole.INITIATOR if role == 0 else SessionRole.RESPONDER,
        peer=peer,
        suite=suite,
        send_secret=send_secret,
        recv_secret=recv_secret,
        rekey=rekey,
        now=now,
        replay_window=size,
    )
    # The stored secrets are already those of the stored epochs: derive keys, don't ratchet.
    session._send_epoch = send_epoch
    session._send_epoch_start = send_epoch_start
    session._send_counter = send_counter
    session._recv_epoch = recv_epoch
    session._recv_keys = {recv_epoch: _epoch_keys(recv_secret)}
    session.confirmed = bool(confirmed)
    session.window._top = top
    session.window._mask = mask
    return session


def peek_session_id(frame: BytesLike) -> bytes:
    """The session id of a record frame, to find its session; raises DecodeError if malformed."""
    if len(frame) < HEADER_SIZE + TAG_SIZE:
        raise DecodeError(
            f"record of {len(frame)} bytes is shorter than header and tag",
            reason=ErrorReason.TRUNCATED,
        )
    if frame[0] != RECORD_TYPE:
        raise DecodeError(
            f"frame type {frame[0]:#04x} is not a record", reason=ErrorReason.WRONG_TYPE
        )
    return bytes(frame[2:10])
