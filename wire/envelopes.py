"""How FL payloads travel between gateways and the aggregator: sealed pqlink envelopes, or
(for the benchmark's crypto-off baseline only) unsealed frames; chosen once at wiring time."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pqlink import (
    ContentType,
    DecodeError,
    ErrorReason,
    Identity,
    PublicIdentity,
    Registry,
    open_envelope,
    peek_envelope,
    seal_envelope,
)
from pqlink.broadcast import DELIVERY_TYPE, EpochKeyCache, open_delivery
from pqlink.envelope import DEFAULT_MAX_ENVELOPE_SIZE


@dataclass(frozen=True, slots=True)
class Opened:
    """An envelope's authenticated metadata (unauthenticated when unsealed) and payload."""

    sender: str
    content_type: ContentType
    round: int
    model_version: int
    sample_count: int
    envelope_id: bytes
    payload: bytes


class EnvelopeCodec(Protocol):
    def seal(
        self,
        sender: Identity,
        recipients: Sequence[PublicIdentity],
        payload: bytes,
        *,
        content_type: ContentType,
        round: int,
        model_version: int = 0,
        sample_count: int = 0,
    ) -> bytes: ...

    def open(
        self,
        frame: bytes,
        recipient: Identity,
        senders: Registry,
        *,
        max_size: int = DEFAULT_MAX_ENVELOPE_SIZE,
    ) -> Opened: ...

    def peek_round(self, frame: bytes) -> int:
        """The round a frame claims, before any check (to route or drop it early)."""
        ...


class SealedCodec:
    """Signed, encrypted pqlink envelopes: what every deployment uses. A gateway's codec keeps
    the epoch keys of the global-model broadcasts it opened, in memory, so that it
    decapsulates once per key epoch rather than once per round."""

    def __init__(self) -> None:
        self.epoch_keys = EpochKeyCache()

    def seal(
        self,
        sender: Identity,
        recipients: Sequence[PublicIdentity],
        payload: bytes,
        *,
        content_type: ContentType,
        round: int,
        model_version: int = 0,
        sample_count: int = 0,
    ) -> bytes:
        return seal_envelope(
            sender,
            recipients,
            payload,
            content_type=content_type,
            round=round,
            model_version=model_version,
            sample_count=sample_count,
        )

    def open(
        self,
        frame: bytes,
        recipient: Identity,
        senders: Registry,
        *,
        max_size: int = DEFAULT_MAX_ENVELOPE_SIZE,
    ) -> Opened:
        if frame[:1] == bytes((DELIVERY_TYPE,)):  # a global-model broadcast as kept by a gateway
            b = open_delivery(
                frame, recipient, senders, max_size=max_size, epoch_keys=self.epoch_keys
            )
            bm = b.metadata
            return Opened(
                bm.sender,
                bm.content_type,
                bm.round,
                bm.model_version,
                0,
                bm.broadcast_id,
                b.payload,
            )
        opened = open_envelope(frame, recipient, senders, max_size=max_size)
        m = opened.metadata
        return Opened(
            m.sender,
            m.content_type,
            m.round,
            m.model_version,
            m.sample_count,
            m.envelope_id,
            opened.payload,
        )

    def peek_round(self, frame: bytes) -> int:
        return peek_envelope(frame).round


_UNSEALED = b"UNSEALED"
_LEN = struct.Struct(">I")


class UnsealedCodec:
    """NO SECURITY: the benchmark baseline "crypto switched off" frames the payload with its
    metadata in the clear, so the same pipeline can be timed without crypto. Only wired in
    through the `[bench] plaintext_envelopes` switches of the two configs."""

    def seal(
        self,
        sender: Identity,
        recipients: Sequence[PublicIdentity],
        payload: bytes,
        *,
        content_type: ContentType,
        round: int,
        model_version: int = 0,
        sample_count: int = 0,
    ) -> bytes:
        meta = {
            "sender": sender.name,
            "type": int(content_type),
            "round": round,
            "version": model_version,
            "samples": sample_count,
        }
        blob = json.dumps(meta, separators=(",", ":")).encode()
        return _UNSEALED + _LEN.pack(len(blob)) + blob + payload

    def open(
        self,
        frame: bytes,
        recipient: Identity,
        senders: Registry,
        *,
        max_size: int = DEFAULT_MAX_ENVELOPE_SIZE,
    ) -> Opened:
        if len(frame) > max_size:
            raise DecodeError(
                f"unsealed frame of {len(frame)} bytes exceeds {max_size}",
                reason=ErrorReason.TOO_LARGE,
            )
        meta, payload = self._split(frame)
        try:
            return Opened(
                str(meta["sender"]),
                ContentType(int(meta["type"])),
                int(meta["round"]),
                int(meta["version"]),
                int(meta["samples"]),
                b"",
                payload,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"unsealed frame: {exc}") from None

    def peek_round(self, frame: bytes) -> int:
        meta, _ = self._split(frame)
        value = meta.get("round")
        if not isinstance(value, int):
            raise DecodeError("unsealed frame: no round")
        return value

    @staticmethod
    def _split(frame: bytes) -> tuple[dict[str, Any], bytes]:
        if not frame.startswith(_UNSEALED) or len(frame) < len(_UNSEALED) + _LEN.size:
            raise DecodeError("not an unsealed benchmark frame")
        (n,) = _LEN.unpack_from(frame, len(_UNSEALED))
        start = len(_UNSEALED) + _LEN.size
        if start + n > len(frame):
            raise DecodeError(
                f"unsealed frame: truncated in metadata (need {n} bytes at offset {start}, "
                f"frame has {len(frame)})",
                reason=ErrorReason.TRUNCATED,
            )
        try:
            meta = json.loads(frame[start : start + n])
        except (ValueError, RecursionError) as exc:
            raise DecodeError(f"unsealed frame: {exc}") from None
        if not isinstance(meta, dict):
            raise DecodeError("unsealed frame: metadata is not an object")
        return meta, frame[start + n :]


def envelope_codec(unsealed: bool) -> EnvelopeCodec:
    """The codec for a deployment: sealed unless the benchmark's crypto-off switch is on."""
    return UnsealedCodec() if unsealed else SealedCodec()
