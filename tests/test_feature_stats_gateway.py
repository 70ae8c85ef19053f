"""The gateway's side of federated feature standardisation: which statistics rounds and scalings
it accepts, the moments it answers with, and the standardised input it trains on."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gateway.energy import RASPBERRY_PI_4, EnergyPolicy, EnergyPolicyConfig
from gateway.learning import FederatedLearner, GlobalModelRejectedError, ReceivedGlobal
from gateway.trainer import NumpyTrainer, load_initial_weights
from pqlink import ContentType, Identity, Role, seal_envelope
from wire.feature_scaling import FeatureScaling, moments_vector
from wire.fl import GlobalModel, RoundSettings
from wire.model import RHYTHM_LAYOUT, RHYTHM_MODEL_PATH

D = RHYTHM_LAYOUT.features


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.fixture(scope="module")
def parties() -> tuple[Identity, Identity]:
    return (
        Identity.generate("gw-01", Role.GATEWAY),
        Identity.generate("aggregator", Role.AGGREGATOR),
    )


def _learner(parties: tuple[Identity, Identity]) -> FederatedLearner:
    gw, agg = parties
    trainer = NumpyTrainer(load_initial_weights(RHYTHM_MODEL_PATH))
    return FederatedLearner(
        gw, agg.public, trainer, EnergyPolicy(EnergyPolicyConfig()), RASPBERRY_PI_4
    )


def _open(
    parties: tuple[Identity, Identity],
    settings: RoundSettings,
    scaling: FeatureScaling | None = None,
) -> ReceivedGlobal:
    gw, agg = parties
    learner = _learner(parties)
    weights = np.zeros(RHYTHM_LAYOUT.parameter_count, "<f4").tobytes()
    model = GlobalModel(weights, RHYTHM_LAYOUT.parameter_count, 1, 10**12, settings, scaling)
    envelope = seal_envelope(
        agg, [gw.public], model.encode(), content_type=ContentType.GLOBAL_MODEL, round=1
    )
    return learner.open_global(envelope)


def _scaling(features: int) -> FeatureScaling:
    return FeatureScaling(tuple(0.5 for _ in range(features)), tuple(2.0 for _ in range(features)))


def test_a_scaling_for_another_feature_count_is_rejected(
    parties: tuple[Identity, Identity],
) -> None:
    received = _open(parties, RoundSettings(), _scaling(D))
    assert received.model.feature_scaling == _scaling(D)
    for wrong in (D - 1, D + 1):
        with pytest.raises(
            GlobalModelRejectedError,
            match=_exactly(f"feature scaling of {wrong} features, the model has {D}"),
        ):
            _open(parties, RoundSettings(), _scaling(wrong))


def test_a_statistics_round_for_another_feature_count_is_rejected(
    parties: tuple[Identity, Identity],
) -> None:
    assert _open(parties, RoundSettings(feature_stats=D)).model.settings.feature_stats == D
    for wrong in (D - 1, D + 1):
        with pytest.raises(
            GlobalModelRejectedError,
            match=_exactly(f"statistics of {wrong} features asked, the model has {D}"),
        ):
            _open(parties, RoundSettings(feature_stats=wrong))


@pytest.mark.parametrize("secure", [False, True])
def test_the_statistics_answer_is_the_windows_moment_vector(
    parties: tuple[Identity, Identity], secure: bool
) -> None:
    settings = RoundSettings(
        feature_stats=D,
        feature_bound=10.0,
        clip_norm=2.0 if secure else 0.0,
        secure_aggregation=secure,
    )
    received = _open(parties, settings)
    x = np.random.default_rng(3).normal(0.0, 4.0, (50, D)).astype(np.float32)
    got = _learner(parties).statistics_update(received, x)
    want = moments_vector(x, 10.0, RHYTHM_LAYOUT.parameter_count, 2.0 if secure else 0.0)
    assert np.array_equal(got, want.astype(np.float32))
    assert float(np.linalg.norm(got)) <= (2.0 if secure else 1.0) + 1e-6


def test_the_model_input_is_standardised_once_a_scaling_is_published(
    parties: tuple[Identity, Identity],
) -> None:
    x = np.full((2, D), 4.5, np.float32)
    before = _open(parties, RoundSettings())
    assert FederatedLearner.model_input(before, x) is x
    after = _open(parties, RoundSettings(), _scaling(D))
    assert np.array_equal(FederatedLearner.model_input(after, x), np.full((2, D), 2.0))
