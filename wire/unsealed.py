"""NO SECURITY: the benchmark baseline's framing of an update or a global model without
sealing, so the same pipeline can be timed with crypto switched off."""

from __future__ import annotations

import json
import struct
from typing import Any

from pqlink import DecodeError

_UNSEALED = b"UNSEALED"


def encode_unsealed(meta: dict[str, Any], payload: bytes) -> bytes:
    """Frame `payload` with its metadata in the clear (benchmark baseline only)."""
    blob = json.dumps(meta, separators=(",", ":")).encode()
    return _UNSEALED + struct.pack(">I", len(blob)) + blob + payload


def decode_unsealed(frame: bytes) -> tuple[dict[str, Any], bytes]:
    if not frame.startswith(_UNSEALED) or len(frame) < len(_UNSEALED) + 4:
        raise DecodeError("not an unsealed benchmark frame")
    (n,) = struct.unpack_from(">I", frame, len(_UNSEALED))
    start = len(_UNSEALED) + 4
    try:
        meta = json.loads(frame[start : start + n])
    except ValueError as exc:
        raise DecodeError(f"unsealed frame: {exc}") from None
    if not isinstance(meta, dict):
        raise DecodeError("unsealed frame: metadata is not an object")
    return meta, frame[start + n :]
