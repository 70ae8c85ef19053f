"""Federated feature standardisation: the pooled mean and deviation from the wards' sums equal
those of the pooled windows, on a hand-computed case and on random wards of unequal size."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gateway.federated_stats import MIN_STD, FeatureStats, FeatureStatsError, standardise


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_hand_computed_two_wards() -> None:
    # feature 0 pooled: 1, 3, 5, 7 -> mean 4, population variance (9+1+1+9)/4 = 5
    # feature 1 pooled: 2, 2, 2, 2 -> mean 2, deviation 0 (floored)
    a = FeatureStats.of([[1.0, 2.0]])
    b = FeatureStats.of([[3.0, 2.0], [5.0, 2.0], [7.0, 2.0]])
    assert (a.count, a.total.tolist(), a.squares.tolist()) == (1, [1.0, 2.0], [1.0, 4.0])
    pooled = FeatureStats.sum([a, b])
    assert pooled.count == 4
    assert pooled.total.tolist() == [16.0, 8.0]
    assert pooled.squares.tolist() == [84.0, 16.0]
    assert pooled.mean.tolist() == [4.0, 2.0]
    assert pooled.std.tolist() == [np.sqrt(5.0), MIN_STD]
    z = standardise([[7.0, 2.0]], pooled)
    assert z.dtype == np.float32
    assert z.tolist() == np.array([[3.0 / np.sqrt(5.0), 0.0]], np.float32).tolist()


def test_sums_equal_the_pooled_statistics() -> None:
    rng = np.random.default_rng(7)
    wards = [rng.normal(3.0, 2.0, (n, 5)) * rng.uniform(0.1, 10, 5) for n in (1, 40, 333)]
    pooled = np.concatenate(wards)
    stats = FeatureStats.sum([FeatureStats.of(w) for w in wards])
    assert stats.count == len(pooled)
    np.testing.assert_allclose(stats.mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pooled.std(axis=0), rtol=1e-9)
    z = standardise(pooled, stats).astype(np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-6)


def test_a_ward_without_windows_adds_nothing() -> None:
    ward = FeatureStats.of([[2.0], [4.0]])
    empty = FeatureStats.of(np.zeros((0, 1)))
    both = FeatureStats.sum([ward, empty])
    assert (both.count, both.mean.tolist(), both.std.tolist()) == (2, [3.0], [1.0])


def test_errors() -> None:
    with pytest.raises(FeatureStatsError, match=_exactly("no ward statistics to add")):
        FeatureStats.sum([])
    with pytest.raises(
        FeatureStatsError, match=_exactly("ward statistics have different feature counts")
    ):
        FeatureStats.sum([FeatureStats.of([[1.0]]), FeatureStats.of([[1.0, 2.0]])])
    with pytest.raises(FeatureStatsError, match=_exactly("no windows: the mean is undefined")):
        _ = FeatureStats.of(np.zeros((0, 3))).mean
    with pytest.raises(
        FeatureStatsError, match=_exactly("features must be (n, d), got shape (3,)")
    ):
        FeatureStats.of([1.0, 2.0, 3.0])
