"""The gateway's federated learner piece by piece, in process: the round settings as local
training options, what an opened global model holds, the energy decision against the round's
deadline, the trained update (local minus global weights) and its metrics, and what a sealed
update or statistics answer carries once the aggregator opens it."""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.energy import (
    Decision,
    EnergyPolicy,
    EnergyPolicyConfig,
    EnergyReadings,
    PowerModel,
)
from gateway.learning import (
    FederatedLearner,
    GlobalModelRejectedError,
    ReceivedGlobal,
    TrainedUpdate,
    train_options,
)
from gateway.trainer import (
    FitResult,
    NumpyTrainer,
    TrainOptions,
    fit,
    flatten,
    load_initial_weights,
    unflatten,
)
from pqlink import (
    ContentType,
    DecodeError,
    ErrorReason,
    Identity,
    Registry,
    Role,
    seal_envelope,
)
from wire.envelopes import Opened, SealedCodec
from wire.feature_scaling import FeatureScaling
from wire.fl import GlobalModel, ModelUpdate, RoundSettings
from wire.model import RHYTHM_LAYOUT, RHYTHM_MODEL_PATH

D = RHYTHM_LAYOUT.features
P = RHYTHM_LAYOUT.parameter_count
# a board of round numbers, so the energy of a round is 2.5 J per CPU second
BOARD = PowerModel("test-board", 1.0, 2.5, 2)

Parties = tuple[Identity, Identity]


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.fixture(scope="module")
def parties() -> Parties:
    return (
        Identity.generate("gw-07", Role.GATEWAY),
        Identity.generate("aggregator", Role.AGGREGATOR),
    )


@pytest.fixture(scope="module")
def initial() -> npt.NDArray[np.float32]:
    return flatten(load_initial_weights(RHYTHM_MODEL_PATH), RHYTHM_LAYOUT)


@pytest.fixture(scope="module")
def round_start(initial: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A global model other than the weights a new learner's trainer holds."""
    return initial * np.float32(0.9)


def _learner(
    parties: Parties, *, balanced: bool | None = None, restricted: bool | None = None
) -> FederatedLearner:
    """A learner on the rhythm model; flags left None are not passed (the defaults apply)."""
    gw, agg = parties
    trainer = NumpyTrainer(load_initial_weights(RHYTHM_MODEL_PATH))
    policy = EnergyPolicy(EnergyPolicyConfig())
    if balanced is None and restricted is None:
        return FederatedLearner(gw, agg.public, trainer, policy, BOARD)
    if restricted is None:
        return FederatedLearner(gw, agg.public, trainer, policy, BOARD, balanced=bool(balanced))
    if balanced is None:
        return FederatedLearner(gw, agg.public, trainer, policy, BOARD, restricted=restricted)
    return FederatedLearner(
        gw, agg.public, trainer, policy, BOARD, balanced=balanced, restricted=restricted
    )


def _broadcast(
    parties: Parties,
    weights: npt.NDArray[np.float32],
    settings: RoundSettings,
    *,
    round_: int = 4,
    version: int = 0,
    deadline_ms: int = 10**12,
    scaling: FeatureScaling | None = None,
) -> bytes:
    gw, agg = parties
    model = GlobalModel(weights.astype("<f4").tobytes(), P, round_, deadline_ms, settings, scaling)
    return seal_envelope(
        agg,
        [gw.public],
        model.encode(),
        content_type=ContentType.GLOBAL_MODEL,
        round=round_,
        model_version=version,
    )


def _opened_by_aggregator(parties: Parties, envelope: bytes) -> tuple[Opened, ModelUpdate]:
    gw, agg = parties
    senders = Registry()
    senders.enroll(gw.public)
    opened = SealedCodec().open(envelope, agg, senders)
    return opened, ModelUpdate.decode(opened.payload)


def _windows(n: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, D)).astype(np.float32)


def _skewed_labels(n: int) -> npt.NDArray[np.int32]:
    # mostly class 0, every fifth window class 1, class 2 absent
    return np.array([1 if i % 5 == 0 else 0 for i in range(n)], dtype=np.int32)


# ---------------------------------------------------------------- train_options


def test_train_options_carry_every_plain_round_setting() -> None:
    settings = RoundSettings(
        epochs=3,
        batch_size=16,
        learning_rate=0.125,
        prox_mu=0.25,
        clip_norm=1.5,
        noise_multiplier=0.75,
    )
    got = train_options(settings, 9, balanced=True, restricted=True)
    assert got == TrainOptions(
        epochs=3,
        batch_size=16,
        learning_rate=0.125,
        prox_mu=0.25,
        clip_norm=1.5,
        noise_multiplier=0.75,
        seed=9,
        balanced=True,
        restricted_softmax=True,
    )


def test_train_options_are_unbalanced_and_unrestricted_unless_asked() -> None:
    got = train_options(RoundSettings(), 0)
    assert got.balanced is False
    assert got.restricted_softmax is False
    assert train_options(RoundSettings(), 0, balanced=True).restricted_softmax is False
    assert train_options(RoundSettings(), 0, restricted=True).balanced is False


@pytest.mark.parametrize("clip", [1e-6, 0.5, 1.0, 1.5])
def test_any_positive_clip_clips_and_noises_a_plain_round(clip: float) -> None:
    got = train_options(RoundSettings(clip_norm=clip, noise_multiplier=2.0), 1)
    assert (got.clip_norm, got.noise_multiplier) == (clip, 2.0)


def test_a_zero_clip_means_no_clipping_and_no_noise() -> None:
    got = train_options(RoundSettings(clip_norm=0.0, noise_multiplier=2.0), 1)
    assert got.clip_norm is None
    assert got.noise_multiplier == 0.0
    assert got.noise_std == 0.0


def test_a_secure_round_leaves_clip_and_noise_to_the_encoding() -> None:
    settings = RoundSettings(clip_norm=1.5, noise_multiplier=2.0, secure_aggregation=True)
    got = train_options(settings, 1)
    assert got.clip_norm is None
    assert got.noise_multiplier == 0.0


# ---------------------------------------------------------------- open_global


def test_the_opened_model_holds_the_sent_weights_version_and_times(
    parties: Parties, initial: npt.NDArray[np.float32]
) -> None:
    sent = initial + np.float32(0.25)
    envelope = _broadcast(parties, sent, RoundSettings(), round_=4, version=7)
    learner = _learner(parties)
    wall0, cpu0 = time.time(), time.thread_time()
    received = learner.open_global(envelope)
    wall1, cpu1 = time.time(), time.thread_time()
    assert received.model.round == 4
    assert received.version == 7
    assert wall0 <= received.received_at <= wall1
    # verifying and decrypting a post-quantum envelope takes measurable CPU
    assert 0.0 < received.open_cpu_seconds <= cpu1 - cpu0
    # the six arrays in layout order, float32, each of its shape
    start = 0
    assert len(received.weights) == len(RHYTHM_LAYOUT.weight_shapes)
    for w, (_, shape) in zip(received.weights, RHYTHM_LAYOUT.weight_shapes, strict=True):
        size = math.prod(shape)
        assert w.dtype == np.float32
        assert w.shape == shape
        assert np.array_equal(w.reshape(-1), sent[start : start + size])
        start += size
    assert start == P


def test_an_undecodable_global_model_is_rejected_with_the_decoders_reason(
    parties: Parties,
) -> None:
    gw, agg = parties
    envelope = seal_envelope(
        agg, [gw.public], b"abc", content_type=ContentType.GLOBAL_MODEL, round=1
    )
    with pytest.raises(
        GlobalModelRejectedError, match=_exactly("global model of 3 bytes is truncated")
    ):
        _learner(parties).open_global(envelope)


def test_applying_a_global_model_loads_its_weights(
    parties: Parties, initial: npt.NDArray[np.float32]
) -> None:
    sent = initial * np.float32(0.5)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, sent, RoundSettings()))
    assert not np.array_equal(learner.trainer.get_flat(), sent)
    learner.apply(received)
    assert np.array_equal(learner.trainer.get_flat(), sent)


# ---------------------------------------------------------------- decide


def _readings(cpu_load: float) -> EnergyReadings:
    return EnergyReadings(None, None, cpu_load, None, 4096.0, 0.0)


def test_the_decision_is_taken_against_the_models_deadline_in_seconds(
    parties: Parties, initial: npt.NDArray[np.float32]
) -> None:
    learner = _learner(parties)
    received = learner.open_global(
        _broadcast(parties, initial, RoundSettings(), deadline_ms=20_000)
    )
    at = learner.decide(_readings(0.1), received, 20.0)
    assert (at.decision, at.reason) == (Decision.SKIP, "deadline_passed")
    just_before = learner.decide(_readings(0.1), received, 19.999)
    assert (just_before.decision, just_before.reason) == (Decision.TRAIN_NOW, "ok")
    busy = learner.decide(_readings(0.95), received, 10.0)
    assert (busy.decision, busy.reason, busy.detail) == (Decision.DEFER, "cpu_busy", "load 0.95")


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("clip", [0.0, 0.5, 2.0])
def test_a_plain_statistics_answer_ignores_the_clip(
    parties: Parties, initial: npt.NDArray[np.float32], clip: float
) -> None:
    # every window 5.0 within a bound of 10: mean 0.5 and mean square 0.25 of the bound,
    # each scaled by 1 / sqrt(2 d) so that the vector's norm is at most 1
    settings = RoundSettings(feature_stats=D, feature_bound=10.0, clip_norm=clip)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, initial, settings))
    got = learner.statistics_update(received, np.full((4, D), 5.0, np.float32))
    k = 1.0 / math.sqrt(2 * D)
    want = np.zeros(P, np.float32)
    want[:D] = np.float32(0.5 * k)
    want[D : 2 * D] = np.float32(0.25 * k)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0.0)


def test_a_sealed_statistics_answer_carries_the_moments_and_the_window_count(
    parties: Parties, initial: npt.NDArray[np.float32]
) -> None:
    settings = RoundSettings(feature_stats=D, feature_bound=10.0)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, initial, settings, round_=6, version=3))
    x = np.full((5, D), 5.0, np.float32)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    update = learner.seal_statistics(received, x)
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    assert isinstance(update, TrainedUpdate)
    assert update.round == 6
    opened, payload = _opened_by_aggregator(parties, update.envelope)
    assert opened.sender == "gw-07"
    assert opened.content_type is ContentType.MODEL_UPDATE
    assert (opened.round, opened.model_version, opened.sample_count) == (6, 3, 5)
    assert payload.parameter_count == P
    vector = np.frombuffer(payload.delta, "<f4")
    k = 1.0 / math.sqrt(2 * D)
    np.testing.assert_allclose(vector[:D], 0.5 * k, rtol=1e-6)
    np.testing.assert_allclose(vector[D : 2 * D], 0.25 * k, rtol=1e-6)
    assert not vector[2 * D :].any()
    assert payload.metrics == {
        "windows": 5,
        "feature_stats": True,
        "global_open_cpu_seconds": received.open_cpu_seconds,
    }
    _check_seal_times(update.metrics, wall1 - wall0, cpu1 - cpu0)
    unsealed = {key: v for key, v in update.metrics.items() if not key.startswith("seal_")}
    assert unsealed == payload.metrics


def _check_seal_times(metrics: dict[str, Any], wall: float, cpu: float) -> None:
    assert 0.0 < metrics["seal_seconds"] <= wall
    # signing and encapsulating for the recipient take measurable CPU
    assert 0.0 < metrics["seal_cpu_seconds"] <= cpu


# ---------------------------------------------------------------- training


def _expected_round(
    weights: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int32],
    options: TrainOptions,
) -> tuple[npt.NDArray[np.float32], FitResult]:
    """Training as the round asks, on a trainer of its own: the update and the fit result."""
    trainer = NumpyTrainer(load_initial_weights(RHYTHM_MODEL_PATH))
    result = fit(trainer, x, y, options, unflatten(weights, RHYTHM_LAYOUT))
    delta = flatten(list(result.weights), RHYTHM_LAYOUT) - weights
    return delta, result


def test_a_trained_update_is_the_local_minus_the_global_weights(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    settings = RoundSettings(epochs=2, batch_size=8, learning_rate=0.1, prox_mu=0.01)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, round_start, settings))
    x, y = _windows(40, 1), _skewed_labels(40)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    delta, metrics = learner.train_delta(received, x, y, 5)
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    options = TrainOptions(epochs=2, batch_size=8, learning_rate=0.1, prox_mu=0.01, seed=5)
    want, result = _expected_round(round_start, x, y, options)
    assert delta.dtype == np.float32
    assert np.array_equal(delta, want)
    assert float(np.linalg.norm(delta)) > 0.0
    assert metrics["backend"] == "numpy"
    assert metrics["windows"] == 40
    assert metrics["alert_windows"] == 8  # windows 0, 5, ..., 35
    assert metrics["steps"] == 2 * 5  # two epochs of five batches of 8
    assert (metrics["loss_before"], metrics["loss_after"]) == (
        result.loss_before,
        result.loss_after,
    )
    assert metrics["update_norm"] == result.update_norm
    assert (metrics["clipped"], metrics["noise_std"]) == (False, 0.0)
    assert 0.0 < metrics["train_seconds"] <= wall1 - wall0
    assert 0.0 <= metrics["cpu_seconds"] <= cpu1 - cpu0
    assert metrics["energy_joules"] == pytest.approx(2.5 * metrics["cpu_seconds"], abs=1e-12)
    assert metrics["power_model"] == "test-board"
    assert metrics["global_received_at"] == received.received_at
    assert len(metrics) == 14


def test_a_plain_round_clips_and_noises_the_update(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    settings = RoundSettings(epochs=1, batch_size=8, clip_norm=0.05, noise_multiplier=0.5)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, round_start, settings))
    x, y = _windows(24, 2), _skewed_labels(24)
    delta, metrics = learner.train_delta(received, x, y, 3)
    options = TrainOptions(batch_size=8, clip_norm=0.05, noise_multiplier=0.5, seed=3)
    want, _ = _expected_round(round_start, x, y, options)
    assert np.array_equal(delta, want)
    assert metrics["clipped"] is True
    assert metrics["noise_std"] == 0.5 * 0.05


def test_a_secure_round_trains_without_clip_or_noise(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    settings = RoundSettings(
        batch_size=8, clip_norm=0.05, noise_multiplier=0.5, secure_aggregation=True
    )
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, round_start, settings))
    x, y = _windows(24, 2), _skewed_labels(24)
    delta, metrics = learner.train_delta(received, x, y, 3)
    want, _ = _expected_round(round_start, x, y, TrainOptions(batch_size=8, seed=3))
    assert np.array_equal(delta, want)
    assert float(np.linalg.norm(delta)) > 0.05
    assert (metrics["clipped"], metrics["noise_std"]) == (False, 0.0)


@pytest.mark.parametrize(
    ("balanced", "restricted"),
    [(None, None), (True, None), (None, True), (True, False), (False, True), (True, True)],
)
def test_the_learners_balance_and_restriction_choices_shape_training(
    parties: Parties,
    round_start: npt.NDArray[np.float32],
    balanced: bool | None,
    restricted: bool | None,
) -> None:
    settings = RoundSettings(batch_size=8, learning_rate=0.2)
    learner = _learner(parties, balanced=balanced, restricted=restricted)
    received = learner.open_global(_broadcast(parties, round_start, settings))
    x, y = _windows(40, 4), _skewed_labels(40)
    delta, _ = learner.train_delta(received, x, y, 11)
    outcomes = {
        (b, r): _expected_round(
            round_start,
            x,
            y,
            TrainOptions(
                batch_size=8, learning_rate=0.2, seed=11, balanced=b, restricted_softmax=r
            ),
        )[0]
        for b in (False, True)
        for r in (False, True)
    }
    # each choice changes the update on these windows (class 2 absent, class 0 dominant)
    keys = list(outcomes)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not np.array_equal(outcomes[a], outcomes[b])
    assert np.array_equal(delta, outcomes[(bool(balanced), bool(restricted))])


def test_training_uses_the_published_feature_scaling(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    scaling = FeatureScaling(tuple(0.5 for _ in range(D)), tuple(2.0 for _ in range(D)))
    settings = RoundSettings(batch_size=8)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, round_start, settings, scaling=scaling))
    x, y = _windows(16, 6), _skewed_labels(16)
    delta, _ = learner.train_delta(received, x, y, 2)
    standardised = ((x.astype(np.float64) - 0.5) / 2.0).astype(np.float32)
    want, _ = _expected_round(round_start, standardised, y, TrainOptions(batch_size=8, seed=2))
    assert np.array_equal(delta, want)


def test_extra_metrics_join_the_training_metrics(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, round_start, RoundSettings(batch_size=8)))
    x, y = _windows(16, 6), _skewed_labels(16)
    _, metrics = learner.train_delta(received, x, y, 2, {"queue_seconds": 1.25})
    assert metrics["queue_seconds"] == 1.25
    assert metrics["windows"] == 16
    _, plain = learner.train_delta(received, x, y, 2)
    assert "queue_seconds" not in plain
    assert set(metrics) - set(plain) == {"queue_seconds"}


def test_a_sealed_trained_update_carries_the_delta_and_its_metrics(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    settings = RoundSettings(epochs=1, batch_size=8)
    learner = _learner(parties)
    received = learner.open_global(_broadcast(parties, round_start, settings, round_=9, version=2))
    x, y = _windows(24, 8), _skewed_labels(24)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    update = learner.train_and_seal(received, x, y, 4, {"queue_seconds": 0.5})
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    want, result = _expected_round(round_start, x, y, TrainOptions(batch_size=8, seed=4))
    assert update.round == 9
    opened, payload = _opened_by_aggregator(parties, update.envelope)
    assert opened.sender == "gw-07"
    assert opened.content_type is ContentType.MODEL_UPDATE
    assert (opened.round, opened.model_version, opened.sample_count) == (9, 2, 24)
    assert payload.parameter_count == P
    assert np.array_equal(np.frombuffer(payload.delta, "<f4"), want)
    m = payload.metrics
    assert m["queue_seconds"] == 0.5
    assert m["global_open_cpu_seconds"] == received.open_cpu_seconds
    assert m["windows"] == 24
    assert m["alert_windows"] == 5  # windows 0, 5, 10, 15, 20
    assert m["loss_after"] == result.loss_after
    assert "seal_seconds" not in m
    _check_seal_times(update.metrics, wall1 - wall0, cpu1 - cpu0)
    unsealed = {key: v for key, v in update.metrics.items() if not key.startswith("seal_")}
    assert unsealed == m
    assert len(m) == 16


def test_a_learner_seals_for_its_own_aggregator_only(
    parties: Parties, round_start: npt.NDArray[np.float32]
) -> None:
    gw, _ = parties
    other = Identity.generate("aggregator-b", Role.AGGREGATOR)
    learner = _learner(parties)
    received: ReceivedGlobal = learner.open_global(
        _broadcast(parties, round_start, RoundSettings())
    )
    update = learner.seal_statistics(received, np.full((2, D), 1.0, np.float32))
    senders = Registry()
    senders.enroll(gw.public)
    with pytest.raises(
        DecodeError, match=_exactly("envelope is not addressed to 'aggregator-b'")
    ) as info:
        SealedCodec().open(update.envelope, other, senders)
    assert info.value.reason is ErrorReason.NOT_A_RECIPIENT
