"""Payloads of the federated-learning messages inside sealed envelopes: a gateway's model
update and the aggregator's global model, which opens the next round with typed settings."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from pqlink import DecodeError
from wire.feature_scaling import FeatureScaling

_MAGIC_UPDATE = b"IMU1"
_MAGIC_GLOBAL = b"IMG1"
_HEAD = struct.Struct(">4sII")  # magic, parameter count, metadata JSON length
MAX_PARAMETERS = 10_000_000
MAX_METADATA = 64 * 1024

#: A metric travels as one JSON scalar; nested values would be unbounded to validate.
Metric = int | float | str | bool | None

#: Bounds of each numeric round setting, inclusive (the aggregator's config uses the same).
SETTING_RANGES: Final[dict[str, tuple[float, float]]] = {
    "epochs": (1, 1000),
    "batch_size": (1, 4096),
    "learning_rate": (1e-6, 10),
    "prox_mu": (0, 100),
    "clip_norm": (0, 1e6),
    "noise_multiplier": (0, 100),
    "precision_bits": (1, 30),
    "feature_stats": (0, 4096),
    "feature_bound": (1e-3, 1e6),
}

#: Settings added after version 1 of the payload: sent only when not at their default, so that
#: a peer that predates them still decodes every round that does not use them.
_OPTIONAL: Final = {"feature_stats": 0, "feature_bound": 10.0}

#: Settings that are switches, not numbers.
_FLAGS: Final = frozenset({"final", "secure_aggregation"})


@dataclass(frozen=True, slots=True)
class RoundSettings:
    """How gateways train for one round. `clip_norm` 0 means no clipping (and then no noise);
    `final` tells gateways to apply the model and stop training. With `secure_aggregation`
    the update is clipped to `clip_norm`, quantised to `precision_bits`, noised (its share of
    `noise_multiplier` * clip) and masked: the per-round protocol parameters (participants,
    threshold, ring bits) follow in a SecureRoundAnnouncement. `feature_stats` d > 0 makes
    the round a statistics round: gateways do not train, they report the moments of their
    windows' d features clipped to `feature_bound` (wire/feature_scaling.py)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    prox_mu: float = 0.0
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    final: bool = False
    secure_aggregation: bool = False
    precision_bits: int = 16
    feature_stats: int = 0
    feature_bound: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLAGS:
                if not isinstance(value, bool):
                    raise ValueError(f"round setting {f.name} = {value!r}: expected true or false")
                continue
            lo, hi = SETTING_RANGES[f.name]
            want_int = f.type in ("int", int)
            ok = isinstance(value, int) if want_int else isinstance(value, int | float)
            # an int is finite (math.isfinite overflows on one beyond the float range)
            finite = ok and (isinstance(value, int) or math.isfinite(value))
            if isinstance(value, bool) or not finite:
                kind = "an integer" if want_int else "a number"
                raise ValueError(f"round setting {f.name} = {value!r}: expected {kind}")
            if not lo <= value <= hi:
                raise ValueError(
                    f"round setting {f.name} = {value!r}: expected a value in [{lo:g}, {hi:g}]"
                )
        if self.secure_aggregation and self.clip_norm <= 0:
            raise ValueError("round setting secure_aggregation needs clip_norm > 0")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, default in _OPTIONAL.items():
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_json(cls, obj: object) -> RoundSettings:
        """Settings from their JSON object; a missing key takes its default, an unknown key
        or a bad value raises DecodeError naming it."""
        if not isinstance(obj, dict):
            raise DecodeError("round settings: not an object")
        known = {f.name for f in fields(cls)}
        for key in obj:
            if key not in known:
                raise DecodeError(f"round settings: unknown key {key!r}")
        try:
            return cls(**obj)
        except (TypeError, ValueError) as exc:
            raise DecodeError(str(exc)) from None


def _check_metrics(metrics: dict[str, Any], error: type[Exception]) -> None:
    for key, value in metrics.items():
        if not isinstance(key, str) or not isinstance(value, Metric):
            raise error(f"metric {key!r} = {value!r}: expected a string key and a JSON scalar")


def _encode(magic: bytes, vector: bytes, count: int, meta: dict[str, Any]) -> bytes:
    if not 0 <= count <= MAX_PARAMETERS or len(vector) != 4 * count:
        raise ValueError(f"{len(vector)} bytes of weights do not hold {count} float32 parameters")
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
        # RecursionError: deeply nested JSON must be this typed error, not kill a worker.
        raise DecodeError(f"{what}: metadata is not JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise DecodeError(f"{what}: metadata is not an object")
    return data[_HEAD.size : end], count, meta


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """A gateway's update: the weight delta (local minus global, float32 little-endian) and
    what the report needs (loss, timings, energy) as scalar metrics. Round and sample count
    travel in the envelope's authenticated metadata."""

    delta: bytes
    parameter_count: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        _check_metrics(self.metrics, ValueError)
        return _encode(_MAGIC_UPDATE, self.delta, self.parameter_count, self.metrics)

    @classmethod
    def decode(cls, data: bytes) -> ModelUpdate:
        vector, count, meta = _decode(_MAGIC_UPDATE, data, "model update")
        _check_metrics(meta, DecodeError)
        return cls(vector, count, meta)


@dataclass(frozen=True, slots=True)
class GlobalModel:
    """The aggregator's model for `round` (float32 little-endian weights) and the settings
    gateways use to train for that round; `feature_scaling`, once a statistics round has
    pooled it, the mean/std every gateway standardises its features with (absent before,
    and then the payload is byte for byte what a peer without it sends)."""

    weights: bytes
    parameter_count: int
    round: int
    deadline_ms: int
    settings: RoundSettings = field(default_factory=RoundSettings)
    feature_scaling: FeatureScaling | None = None

    def encode(self) -> bytes:
        if self.round < 0 or self.deadline_ms < 0:
            raise ValueError(f"round {self.round} and deadline {self.deadline_ms} must be >= 0")
        meta = {
            "round": self.round,
            "deadline_ms": self.deadline_ms,
            "settings": self.settings.to_json(),
        }
        if self.feature_scaling is not None:
            meta["feature_scaling"] = self.feature_scaling.to_json()
        return _encode(_MAGIC_GLOBAL, self.weights, self.parameter_count, meta)

    @classmethod
    def decode(cls, data: bytes) -> GlobalModel:
        vector, count, meta = _decode(_MAGIC_GLOBAL, data, "global model")
        unknown = set(meta) - {"round", "deadline_ms", "settings", "feature_scaling"}
        if unknown:
            raise DecodeError(f"global model: unknown metadata {sorted(unknown)}")
        counts: list[int] = []
        for name in ("round", "deadline_ms"):
            value = meta.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DecodeError(f"global model: {name} = {value!r} is not a count")
            counts.append(value)
        if "settings" not in meta:
            raise DecodeError("global model: metadata lacks settings")
        scaling = meta.get("feature_scaling")
        return cls(
            vector,
            count,
            counts[0],
            counts[1],
            RoundSettings.from_json(meta["settings"]),
            None if scaling is None else FeatureScaling.from_json(scaling),
        )
