"""Federated feature standardisation on the wire: moment vectors whose weighted mean is the
pooled moments, the versioned scaling a global model carries, and payloads old peers still read."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pqlink import DecodeError
from wire.feature_scaling import (
    MIN_STD,
    FeatureScaling,
    moments_vector,
    pooled_of,
    pooled_scaling,
    secure_resolution,
)
from wire.fl import GlobalModel, RoundSettings

_HEAD = 12  # magic, parameter count, metadata length


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _wards() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.normal(0.0, 1.0, (40, 3)),
        rng.normal(2.0, 3.0, (300, 3)),
        rng.normal(-1.0, 0.5, (25, 3)),
    ]


@pytest.mark.parametrize("clip", [0.0, 1.0, 3.5])
def test_the_weighted_mean_of_moment_vectors_is_the_pooled_scaling(clip: float) -> None:
    wards = _wards()
    vectors = [moments_vector(x, 10.0, 8, clip) for x in wards]
    counts = [len(x) for x in wards]
    mean = np.sum([n * v for n, v in zip(counts, vectors, strict=True)], axis=0) / sum(counts)
    got = pooled_scaling(mean, 3, 10.0, clip, sum(counts))
    want = pooled_of(wards, 10.0)
    assert np.allclose(got.mean, want.mean, rtol=0, atol=1e-12)
    assert np.allclose(got.std, want.std, rtol=0, atol=1e-12)
    assert got.count == want.count == 365
    # not a per-ward or unweighted result: the test can fail
    unweighted = pooled_scaling(np.mean(vectors, axis=0), 3, 10.0, clip)
    assert np.max(np.abs(np.subtract(unweighted.mean, want.mean))) > 0.3
    assert np.all(np.array(vectors)[:, 6:] == 0.0)  # coordinates past 2d stay 0


def test_features_are_clipped_to_the_bound_before_their_moments() -> None:
    # known answer: +-20 clipped to +-10 have mean 0 and deviation 10
    got = pooled_scaling(moments_vector([[20.0], [-20.0]], 10.0, 2), 1, 10.0)
    assert got.mean == (0.0,)
    assert got.std == (10.0,)
    # a constant feature keeps a deviation of MIN_STD rather than 0
    const = pooled_scaling(moments_vector([[3.0], [3.0]], 10.0, 2), 1, 10.0)
    assert const.std == (MIN_STD,)


def test_a_deviation_below_the_resolution_is_raised_to_it() -> None:
    v = moments_vector([[1.0, 0.0], [1.0002, 3.0]], 10.0, 4)
    plain = pooled_scaling(v, 2, 10.0)
    assert plain.std[0] == pytest.approx(1e-4, rel=1e-6)
    floored = pooled_scaling(v, 2, 10.0, std_floor=0.01)
    assert floored.std == (0.01, plain.std[1])  # only the unresolved one moves
    assert floored.mean == plain.mean


def test_secure_resolution_known_answer() -> None:
    # k q (cap / N) sqrt(2 d) B / clip with q / clip = sqrt(2) / (2^b - 1): b = 2 gives 1/3 x sqrt 2
    mean, square = secure_resolution(2, 10.0, precision_bits=2, cap=100, windows=50.0, survivors=3)
    assert mean == pytest.approx(3 * np.sqrt(2) / 3 * 2 * 2 * 10.0)
    assert square == pytest.approx(mean * 10.0)


def test_a_secure_moment_vector_fits_its_clip_exactly() -> None:
    extreme = np.full((5, 4), 10.0)
    v = moments_vector(extreme, 10.0, 8, 2.0)
    assert float(np.linalg.norm(v)) == pytest.approx(2.0, abs=1e-12)
    assert float(np.max(np.abs(v))) == pytest.approx(2.0 / np.sqrt(8), abs=1e-12)
    plain = moments_vector(extreme, 10.0, 8)
    assert float(np.linalg.norm(plain)) == pytest.approx(1.0, abs=1e-12)


def test_moment_vectors_refuse_what_they_cannot_hold() -> None:
    x = np.zeros((3, 4))
    assert moments_vector(x, 10.0, 8).shape == (8,)  # 2d coordinates: exactly enough
    with pytest.raises(
        ValueError, match=_exactly("4 features need 8 coordinates, the update has 7")
    ):
        moments_vector(x, 10.0, 7)
    with pytest.raises(ValueError, match=_exactly("windows of shape (0, 4): no moments to report")):
        moments_vector(np.zeros((0, 4)), 10.0, 8)


def test_scaling_round_trips_and_refuses_bad_objects() -> None:
    s = FeatureScaling((0.5, -1.0), (2.0, MIN_STD), 12)
    assert FeatureScaling.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert s.apply([[2.5, -1.0]]).tolist() == [[1.0, 0.0]]
    bad = [
        ({**s.to_json(), "version": 2}, "feature scaling: version 2 is not supported"),
        ({**s.to_json(), "extra": 1}, "feature scaling: unknown keys ['extra']"),
        (
            {**s.to_json(), "std": [2.0, MIN_STD / 2]},
            f"feature scaling: a deviation is not finite or below {MIN_STD}",
        ),
        ({**s.to_json(), "std": [2.0]}, "feature scaling of 2 means and 1 deviations"),
        ({**s.to_json(), "mean": [0.5, True]}, "feature scaling: True is not a number"),
        ({**s.to_json(), "count": -1}, "feature scaling: count -1 is not a count"),
    ]
    for obj, message in bad:
        with pytest.raises(DecodeError, match=_exactly(message)):
            FeatureScaling.from_json(obj)


def _meta(payload: bytes) -> dict[str, object]:
    count = int.from_bytes(payload[4:8], "big")
    return dict(json.loads(payload[_HEAD + 4 * count :]))


def test_a_global_model_without_statistics_is_what_an_older_peer_sends() -> None:
    weights = np.arange(4, dtype="<f4").tobytes()
    meta = _meta(GlobalModel(weights, 4, 3, 1000, RoundSettings()).encode())
    assert set(meta) == {"round", "deadline_ms", "settings"}
    settings = meta["settings"]
    assert isinstance(settings, dict)
    assert "feature_stats" not in settings
    assert "feature_bound" not in settings
    # an older peer's settings (no statistics keys) still decode
    assert RoundSettings.from_json(settings) == RoundSettings()


def test_a_global_model_carries_its_statistics_round_and_scaling() -> None:
    weights = np.arange(4, dtype="<f4").tobytes()
    scaling = FeatureScaling((1.0, 2.0), (3.0, 4.0), 9)
    asked = GlobalModel(weights, 4, 1, 1000, RoundSettings(feature_stats=2, feature_bound=8.0))
    assert GlobalModel.decode(asked.encode()) == asked
    given = GlobalModel(weights, 4, 2, 1000, RoundSettings(), scaling)
    assert GlobalModel.decode(given.encode()) == given
    assert _meta(given.encode())["feature_scaling"] == scaling.to_json()


def test_statistics_settings_are_bounded() -> None:
    assert RoundSettings(feature_stats=4096).feature_stats == 4096
    with pytest.raises(
        ValueError,
        match=_exactly("round setting feature_stats = 4097: expected a value in [0, 4096]"),
    ):
        RoundSettings(feature_stats=4097)
