"""Opening and checking one sealed model update, as a crypto worker does: every way an
update can be bad ends in an `UpdateRejectedError` with a stable reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aggregator.strategies import Contribution
from pqlink import (
    ContentType,
    DecodeError,
    Identity,
    PqlinkError,
    Registry,
    open_envelope,
)
from wire.fl import ModelUpdate
from wire.reasons import Reason, reason_for
from wire.unsealed import decode_unsealed


class UpdateRejectedError(Exception):
    """An update failed a check; `reason` is a stable machine name."""

    def __init__(
        self, reason: Reason, detail: str, gateway: str | None = None, round_: int | None = None
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
        raise UpdateRejectedError(
            Reason.OVERSIZED, f"{len(frame)} bytes > {limits.max_envelope_bytes}"
        )
    try:
        if unsealed:
            who, rnd, samples, envelope_id, payload = _open_unsealed(frame)
        else:
            opened = open_envelope(frame, aggregator, gateways, max_size=limits.max_envelope_bytes)
            meta = opened.metadata
            who, rnd, samples = meta.sender, meta.round, meta.sample_count
            envelope_id, payload = meta.envelope_id, opened.payload
            if meta.content_type is not ContentType.MODEL_UPDATE:
                raise UpdateRejectedError(Reason.WRONG_TYPE, meta.content_type.name, who, rnd)
    except PqlinkError as exc:
        raise UpdateRejectedError(reason_for(exc), str(exc)) from None
    if not 1 <= samples <= limits.max_samples:
        raise UpdateRejectedError(Reason.BAD_SAMPLE_COUNT, str(samples), who, rnd)
    try:
        update = ModelUpdate.decode(payload)
    except DecodeError as exc:
        raise UpdateRejectedError(Reason.MALFORMED, str(exc), who, rnd) from None
    if update.parameter_count != limits.parameter_count:
        raise UpdateRejectedError(
            Reason.WRONG_SHAPE,
            f"{update.parameter_count} parameters, expected {limits.parameter_count}",
            who,
            rnd,
        )
    delta = np.frombuffer(update.delta, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(delta)):
        raise UpdateRejectedError(Reason.NON_FINITE, "NaN or infinity in the update", who, rnd)
    norm = float(np.linalg.norm(delta))
    if norm > limits.max_update_norm:
        raise UpdateRejectedError(
            Reason.NORM_EXCEEDED, f"norm {norm:.3g} > {limits.max_update_norm}", who, rnd
        )
    return ValidUpdate(Contribution(who, samples, delta), rnd, envelope_id, update.metrics)
