"""Payloads of the federated-learning messages inside sealed envelopes: a gateway's model
update and the aggregator's global model (which also opens the next round)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from pqlink._errors import DecodeError

_MAGIC_UPDATE = b"IMU1"
_MAGIC_GLOBAL = b"IMG1"
_HEAD = struct.Struct(">4sII")  # magic, parameter count, metadata JSON length
MAX_PARAMETERS = 10_000_000
MAX_METADATA = 64 * 1024


def _encode(magic: bytes, vector: bytes, count: int, meta: dict[str, Any]) -> bytes:
    blob = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    if len(blob) > MAX_METADATA:
        raise ValueError(f"metadata of {len(blob)} bytes exceeds {MAX_METADATA}")
    return _HEAD.pack(magic, count, len(blob)) + vector + blob


def _decode(magic: bytes, data: bytes, what: str) -> tuple[bytes, int, dict[str, Any]]:
    if len(data) < _HEAD.size:
        raise DecodeError(f"{what} of {len(data)} bytes is truncated")
    got, count, meta_len = _HEAD.unpack_from(data)
    if got != magic:
        raise DecodeError(f"{what}: wrong magic {got!r}")
    if count > MAX_PARAMETERS or meta_len > MAX_METADATA:
        raise DecodeError(f"{what}: implausible sizes ({count} parameters, {meta_len} B metadata)")
    end = _HEAD.size + 4 * count
    if len(data) != end + meta_len:
        raise DecodeError(f"{what}: length {len(data)} does not match its header")
    try:
        meta = json.loads(data[end:])
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{what}: metadata is not JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise DecodeError(f"{what}: metadata is not an object")
    return data[_HEAD.size : end], count, meta


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A gateway's update: the weight delta (local minus global, float32 little-endian) and
    what the report needs (loss, timings, energy). Round and sample count travel in the
    envelope's authenticated metadata."""

    delta: bytes
    parameter_count: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _encode(_MAGIC_UPDATE, self.delta, self.parameter_count, self.metrics)

    @classmethod
    def decode(cls, data: bytes) -> ModelUpdate:
        vector, count, meta = _decode(_MAGIC_UPDATE, data, "model update")
        return cls(vector, count, meta)


@dataclass(frozen=True, slots=True)
class GlobalModel:
    """The aggregator's model for `round` (float32 little-endian weights) and the settings
    gateways use to train for that round."""

    weights: bytes
    parameter_count: int
    round: int
    deadline_ms: int
    settings: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        meta = {"round": self.round, "deadline_ms": self.deadline_ms, "settings": self.settings}
        return _encode(_MAGIC_GLOBAL, self.weights, self.parameter_count, meta)

    @classmethod
    def decode(cls, data: bytes) -> GlobalModel:
        vector, count, meta = _decode(_MAGIC_GLOBAL, data, "global model")
        round_, deadline, settings = (
            meta.get("round"),
            meta.get("deadline_ms"),
            meta.get("settings"),
        )
        if (
            not isinstance(round_, int)
            or not isinstance(deadline, int)
            or not isinstance(settings, dict)
        ):
            raise DecodeError("global model: metadata lacks round, deadline_ms or settings")
        return cls(vector, count, round_, deadline, settings)


# --- RabbitMQ topology shared by gateways and the aggregator --------------------------------

#: Durable queue of sealed model updates; crypto workers consume it as competing consumers.
UPDATES_QUEUE = "iomt.updates"
#: Durable queue of partial sums from the crypto workers to the coordinator.
PARTIALS_QUEUE = "iomt.partials"
#: Fanout exchange of signed global models; each gateway has its own durable queue on it.
GLOBAL_EXCHANGE = "iomt.global"
#: Only the newest global models matter to a gateway that was offline.
GATEWAY_QUEUE_ARGUMENTS: dict[str, Any] = {"x-max-length": 4, "x-overflow": "drop-head"}


def gateway_queue(gateway_id: str) -> str:
    return f"iomt.gateway.{gateway_id}"


# --- benchmark-only unsealed framing ---------------------------------------------------------

_UNSEALED = b"UNSEALED"


def encode_unsealed(meta: dict[str, Any], payload: bytes) -> bytes:
    """NO SECURITY: the benchmark baseline "crypto switched off" frames an update or global
    model this way instead of sealing it, so the same pipeline can be timed without crypto.
    Only reachable through the `[bench] plaintext_envelopes` switches of the two configs."""
    blob = json.dumps(meta, separators=(",", ":")).encode()
    return _UNSEALED + struct.pack(">I", len(blob)) + blob + payload


def decode_unsealed(frame: bytes) -> tuple[dict[str, Any], bytes]:
    if not frame.startswith(_UNSEALED) or len(frame) < len(_UNSEALED) + 4:
        raise DecodeError("not an unsealed benchmark frame")
    (n,) = struct.unpack_from(">I", frame, len(_UNSEALED))
    start = len(_UNSEALED) + 4
    try:
        meta = json.loads(frame[start : start + n])
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"unsealed frame: {exc}") from None
    if not isinstance(meta, dict):
        raise DecodeError("unsealed frame: metadata is not an object")
    return meta, frame[start + n :]
