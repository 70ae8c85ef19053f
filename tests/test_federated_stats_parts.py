"""Federated feature statistics of float32 windows, as a gateway stores them: the sums are
accumulated in float64, so a ward's count, sum and sum of squares stay exact where float32
arithmetic would drop the small values next to a large one."""

from __future__ import annotations

import numpy as np

from gateway.federated_stats import FeatureStats


def test_float32_windows_are_summed_in_float64() -> None:
    # 2**24 + 1 is not a float32: summed in float32, each added 1.0 would be rounded away
    big = float(2**24)
    x = np.array([[big, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    stats = FeatureStats.of(x)
    assert stats.count == 3
    assert stats.total.dtype == np.float64
    assert stats.squares.dtype == np.float64
    assert stats.total.tolist() == [big + 2.0, 3.0]
    assert stats.squares.tolist() == [big * big + 2.0, 3.0]
    assert stats.mean.tolist() == [(big + 2.0) / 3.0, 1.0]


def test_float32_ward_sums_pool_exactly() -> None:
    big = float(2**24)
    ward_a = FeatureStats.of(np.array([[big]], dtype=np.float32))
    ward_b = FeatureStats.of(np.array([[1.0], [1.0], [1.0]], dtype=np.float32))
    pooled = FeatureStats.sum([ward_a, ward_b])
    # 2**24 + 3 lies between two float32 values: only a float64 sum keeps it
    assert (pooled.count, pooled.total.tolist()) == (4, [big + 3.0])
    assert pooled.squares.tolist() == [big * big + 3.0]
    assert pooled.mean.tolist() == [(big + 3.0) / 4.0]
