"""The gateway's federated-learning client, without I/O of its own: open and check a signed
global model, decide with the energy policy, train locally on the stored windows, and seal
the signed update for the aggregator."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.energy import (
    EnergyPolicy,
    EnergyReadings,
    PowerModel,
    ScheduleDecision,
    estimate_energy,
)
from gateway.errors import GatewayError
from gateway.trainer import Trainer, TrainOptions, fit, flatten, unflatten
from pqlink import (
    ContentType,
    DecodeError,
    Identity,
    PublicIdentity,
    Registry,
)
from wire.envelopes import EnvelopeCodec, SealedCodec
from wire.feature_scaling import moments_vector
from wire.fl import GlobalModel, ModelUpdate, RoundSettings

F32 = npt.NDArray[np.float32]


class GlobalModelRejectedError(GatewayError):
    """A global model failed a check (signature, recipient, content, shape)."""


@dataclass(frozen=True, slots=True)
class ReceivedGlobal:
    model: GlobalModel
    version: int
    weights: list[F32]
    received_at: float
    open_cpu_seconds: float = 0.0  # verifying and opening the broadcast (thread CPU)


@dataclass(frozen=True, slots=True)
class TrainedUpdate:
    round: int
    envelope: bytes
    metrics: dict[str, Any] = field(default_factory=dict)


def train_options(
    settings: RoundSettings, seed: int, *, balanced: bool = False, restricted: bool = False
) -> TrainOptions:
    """The aggregator's per-round settings as local training options; `balanced` and
    `restricted` are the gateway's own choices for its task, not round settings. In secure
    mode the clip and the noise belong to the encoding of the update (clip, quantise, this
    gateway's share of the distributed noise), not to local training."""
    clipping = settings.clip_norm > 0 and not settings.secure_aggregation
    return TrainOptions(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        prox_mu=settings.prox_mu,
        clip_norm=settings.clip_norm if clipping else None,
        noise_multiplier=settings.noise_multiplier if clipping else 0.0,
        seed=seed,
        balanced=balanced,
        restricted_softmax=restricted,
    )


class FederatedLearner:
    """Used from worker threads: `open_global` (crypto), `train_and_seal` (trainer thread)."""

    def __init__(
        self,
        identity: Identity,
        aggregator: PublicIdentity,
        trainer: Trainer,
        policy: EnergyPolicy,
        power_model: PowerModel,
        *,
        codec: EnvelopeCodec | None = None,
        balanced: bool = False,
        restricted: bool = False,
    ) -> None:
        self.codec = codec or SealedCodec()
        self.balanced = balanced
        self.restricted = restricted
        self.identity = identity
        self.aggregator = aggregator
        self.senders = Registry()
        self.senders.enroll(aggregator)
        self.trainer = trainer
        self.policy = policy
        self.power_model = power_model

    def open_global(self, envelope: bytes) -> ReceivedGlobal:
        received_at = time.time()
        try:
            cpu0 = time.thread_time()
            opened = self.codec.open(envelope, self.identity, self.senders)
            open_cpu = time.thread_time() - cpu0
            if opened.content_type is not ContentType.GLOBAL_MODEL:
                raise GlobalModelRejectedError(f"content type {opened.content_type.name}")
            signed_round, version = opened.round, opened.model_version
            model = GlobalModel.decode(opened.payload)
        except (DecodeError, ValueError, KeyError) as exc:
            raise GlobalModelRejectedError(str(exc)) from None
        if model.round != signed_round:
            raise GlobalModelRejectedError("round in payload differs from the signed metadata")
        expected = self.trainer.layout.parameter_count
        if model.parameter_count != expected:
            raise GlobalModelRejectedError(
                f"{model.parameter_count} parameters, expected {expected}"
            )
        vector = np.frombuffer(model.weights, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(vector)):
            raise GlobalModelRejectedError("global model holds NaN or infinity")
        features = self.trainer.layout.features
        scaling = model.feature_scaling
        if scaling is not None and scaling.features != features:
            raise GlobalModelRejectedError(
                f"feature scaling of {scaling.features} features, the model has {features}"
            )
        if model.settings.feature_stats not in {0, features}:
            raise GlobalModelRejectedError(
                f"statistics of {model.settings.feature_stats} features asked, "
                f"the model has {features}"
            )
        return ReceivedGlobal(
            model, version, unflatten(vector, self.trainer.layout), received_at, open_cpu
        )

    def decide(
        self, readings: EnergyReadings, received: ReceivedGlobal, now: float
    ) -> ScheduleDecision:
        return self.policy.decide(readings, now=now, deadline=received.model.deadline_ms / 1000)

    def apply(self, received: ReceivedGlobal) -> None:
        self.trainer.set_weights(received.weights)

    @staticmethod
    def model_input(received: ReceivedGlobal, x: F32) -> F32:
        """Features as the global model takes them: standardised with the pooled mean/std it
        carries, or as they are before any statistics round (training and inference alike)."""
        scaling = received.model.feature_scaling
        return x if scaling is None else scaling.apply(x)

    def statistics_update(self, received: ReceivedGlobal, x: F32) -> F32:
        """A statistics round's answer: the moments of this gateway's windows as an update
        vector (wire/feature_scaling.py), whose weight is the window count."""
        s = received.model.settings
        clip = s.clip_norm if s.secure_aggregation else 0.0
        vector = moments_vector(x, s.feature_bound, self.trainer.layout.parameter_count, clip)
        return vector.astype(np.float32)

    def seal_statistics(self, received: ReceivedGlobal, x: F32) -> TrainedUpdate:
        """The statistics update sealed for the aggregator (plain rounds), as an update is."""
        vector = self.statistics_update(received, x)
        metrics: dict[str, Any] = {"windows": len(x), "feature_stats": True}
        metrics["global_open_cpu_seconds"] = received.open_cpu_seconds
        return self._seal(received, vector, len(x), metrics)

    def _seal(
        self, received: ReceivedGlobal, vector: F32, samples: int, metrics: dict[str, Any]
    ) -> TrainedUpdate:
        """`vector` as a signed, sealed update to the aggregator, carrying `metrics`."""
        t1 = time.perf_counter()
        cpu1 = time.thread_time()
        payload = ModelUpdate(
            vector.astype("<f4").tobytes(), self.trainer.layout.parameter_count, metrics
        )
        # The seal time cannot be inside the sealed metrics; the envelope is timed around it.
        envelope = self.codec.seal(
            self.identity,
            [self.aggregator],
            payload.encode(),
            content_type=ContentType.MODEL_UPDATE,
            round=received.model.round,
            model_version=received.version,
            sample_count=samples,
        )
        metrics["seal_seconds"] = time.perf_counter() - t1
        metrics["seal_cpu_seconds"] = time.thread_time() - cpu1
        return TrainedUpdate(received.model.round, envelope, metrics)

    def train_and_seal(
        self,
        received: ReceivedGlobal,
        x: F32,
        y: npt.NDArray[np.int32],
        seed: int,
        extra_metrics: dict[str, float] | None = None,
    ) -> TrainedUpdate:
        """Train on (x, y) from the received weights and seal the signed update; the metrics it
        carries (sealed, for the aggregator's report) include `extra_metrics`."""
        delta, metrics = self.train_delta(received, x, y, seed, extra_metrics)
        metrics["global_open_cpu_seconds"] = received.open_cpu_seconds
        return self._seal(received, delta, len(y), metrics)

    def train_delta(
        self,
        received: ReceivedGlobal,
        x: F32,
        y: npt.NDArray[np.int32],
        seed: int,
        extra_metrics: dict[str, float] | None = None,
    ) -> tuple[F32, dict[str, Any]]:
        """Train locally; the update (local minus global weights) and its metrics."""
        options = train_options(
            received.model.settings, seed, balanced=self.balanced, restricted=self.restricted
        )
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        result = fit(self.trainer, self.model_input(received, x), y, options, received.weights)
        cpu = time.thread_time() - cpu0
        train_seconds = time.perf_counter() - t0
        layout = self.trainer.layout
        delta = flatten(list(result.weights), layout) - flatten(received.weights, layout)
        energy = estimate_energy(cpu, train_seconds, self.power_model)
        metrics: dict[str, Any] = {
            "backend": result.backend,
            "windows": len(y),
            "alert_windows": int(np.sum(y > 0)),
            "loss_before": result.loss_before,
            "loss_after": result.loss_after,
            "steps": result.steps,
            "update_norm": result.update_norm,
            "clipped": result.clipped,
            "noise_std": result.noise_std,
            "train_seconds": train_seconds,
            "cpu_seconds": cpu,
            "energy_joules": energy.joules,
            "power_model": self.power_model.name,
            "global_received_at": received.received_at,
            **(extra_metrics or {}),
        }
        return delta.astype(np.float32), metrics
