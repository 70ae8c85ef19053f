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
from pqlink.fl import ModelUpdate


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


def validate_update(
    frame: bytes, aggregator: Identity, gateways: Registry, limits: ValidationLimits
) -> ValidUpdate:
    if len(frame) > limits.max_envelope_bytes:
        raise UpdateRejectedError("oversized", f"{len(frame)} bytes > {limits.max_envelope_bytes}")
    try:
        opened = open_envelope(frame, aggregator, gateways, max_size=limits.max_envelope_bytes)
    except PqlinkError as exc:
        raise UpdateRejectedError(_reason(exc), str(exc)) from None
    meta = opened.metadata
    who, rnd = meta.sender, meta.round
    if meta.content_type is not ContentType.MODEL_UPDATE:
        raise UpdateRejectedError("wrong_type", meta.content_type.name, who, rnd)
    if not 1 <= meta.sample_count <= limits.max_samples:
        raise UpdateRejectedError("bad_sample_count", str(meta.sample_count), who, rnd)
    try:
        update = ModelUpdate.decode(opened.payload)
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
    return ValidUpdate(
        Contribution(who, meta.sample_count, delta), rnd, meta.envelope_id, update.metrics
    )
