"""Opening and checking one sealed model update, as a crypto worker does: every way an
update can be bad ends in an `UpdateRejectedError` with a stable reason."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from aggregator.errors import AggregatorError
from aggregator.strategies import Contribution
from pqlink import (
    ContentType,
    DecodeError,
    Identity,
    PqlinkError,
    Registry,
)
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.fl import ModelUpdate
from wire.reasons import Reason, reason_for


class UpdateRejectedError(AggregatorError):
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
    open_cpu_seconds: float = 0.0  # verifying and decrypting the envelope (thread CPU)


def validate_update(
    frame: bytes,
    aggregator: Identity,
    gateways: Registry,
    limits: ValidationLimits,
    *,
    codec: EnvelopeCodec | None = None,
) -> ValidUpdate:
    if len(frame) > limits.max_envelope_bytes:
        raise UpdateRejectedError(
            Reason.OVERSIZED, f"{len(frame)} bytes > {limits.max_envelope_bytes}"
        )
    try:
        cpu0 = time.thread_time()
        opened = (codec or SealedCodec()).open(
            frame, aggregator, gateways, max_size=limits.max_envelope_bytes
        )
        open_cpu = time.thread_time() - cpu0
        who, rnd, samples = opened.sender, opened.round, opened.sample_count
        envelope_id, payload = opened.envelope_id, opened.payload
        if opened.content_type is not ContentType.MODEL_UPDATE:
            raise UpdateRejectedError(Reason.WRONG_TYPE, opened.content_type.name, who, rnd)
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
    return ValidUpdate(
        Contribution(who, samples, delta), rnd, envelope_id, update.metrics, open_cpu
    )
