"""Opening and checking one sealed model update, as a crypto worker does: every way an
update can be bad ends in an `UpdateRejectedError` with a stable reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies import Contribution
from pqlink import (
    AuthenticationError,
    ContentType,
    DecodeError,
    Identity,
    PqlinkError,
    Registry,
    RevokedPeerError,
    SignatureError,
    UnknownPeerError,
    open_envelope,
)
from pqlink.fl import ModelUpdate, decode_unsealed


class UpdateRejectedError(Exception):
    """An update failed a check; `reason` is a stable machine name."""

    def __init__(
        self, reason: str, detail: str, gateway: str | None = None, round_: int | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.gateway = gateway
        self.round = round_


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    parameter_count: int
    max_update_norm: float = 1e3
    max_envelope_bytes: int = 4 * 1024 * 1024
    max_samples: int = 10_000_000


@dataclass(frozen=True, slots=True)
class ValidUpdate:
    contribution: Contribution
    round: int
    envelope_id: bytes
    metrics: dict[str, object]


def _reason(exc: PqlinkError) -> str:
    if isinstance(exc, RevokedPeerError):
        return "revoked"
    if isinstance(exc, UnknownPeerError):
        return "unenrolled"
    if isinstance(exc, SignatureError):
        return "forged"
    if isinstance(exc, AuthenticationError):
        return "tampered"
    return "malformed"


def _open_unsealed(frame: bytes) -> tuple[str, int, int, bytes, bytes]:
    """Benchmark baseline (crypto off): sender, round, samples, envelope id, payload."""
    meta, payload = decode_unsealed(frame)
    try:
        return str(meta["sender"]), int(meta["round"]), int(meta["samples"]), b"", payload
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"unsealed frame: {exc}") from None


def validate_update(
    frame: bytes,
    aggregator: Identity,
    gateways: Registry,
    limits: ValidationLimits,
    *,
    unsealed: bool = False,
) -> ValidUpdate:
    if len(frame) > limits.max_envelope_bytes:
        raise UpdateRejectedError("oversized", f"{len(frame)} bytes > {limits.max_envelope_bytes}")
    try:
        if unsealed:
            who, rnd, samples, envelope_id, payload = _open_unsealed(frame)
        else:
            opened = open_envelope(frame, aggregator, gateways, max_size=limits.max_envelope_bytes)
            meta = opened.metadata
            who, rnd, samples = meta.sender, meta.round, meta.sample_count
            envelope_id, payload = meta.envelope_id, opened.payload
            if meta.content_type is not ContentType.MODEL_UPDATE:
                raise UpdateRejectedError("wrong_type", meta.content_type.name, who, rnd)
    except PqlinkError as exc:
        raise UpdateRejectedError(_reason(exc), str(exc)) from None
    if not 1 <= samples <= limits.max_samples:
        raise UpdateRejectedError("bad_sample_count", str(samples), who, rnd)
    try:
        update = ModelUpdate.decode(payload)
    except DecodeError as exc:
        raise UpdateRejectedError("malformed", str(exc), who, rnd) from None
    if update.parameter_count != limits.parameter_count:
        raise UpdateRejectedError(
            "wrong_shape",
            f"{update.parameter_count} parameters, expected {limits.parameter_count}",
            who,
            rnd,
        )
    delta = np.frombuffer(update.delta, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(delta)):
        raise UpdateRejectedError("non_finite", "NaN or infinity in the update", who, rnd)
    norm = float(np.linalg.norm(delta))
    if norm > limits.max_update_norm:
        raise UpdateRejectedError(
            "norm_exceeded", f"norm {norm:.3g} > {limits.max_update_norm}", who, rnd
        )
    return ValidUpdate(Contribution(who, samples, delta), rnd, envelope_id, update.metrics)
