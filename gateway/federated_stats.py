"""Federated feature standardisation: each ward reports only sums (count, sum, sum of squares),
which a secure sum can add, and every ward standardises with the pooled mean and deviation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.errors import GatewayError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# a feature constant over every ward keeps its centred value 0 instead of dividing by 0
MIN_STD = 1e-6


class FeatureStatsError(GatewayError):
    """Sums of different shapes, or no window at all."""


@dataclass(frozen=True, slots=True, eq=False)
class FeatureStats:
    """Per-feature sufficient statistics of some windows: additive across wards."""

    count: int
    total: F64
    squares: F64

    @classmethod
    def of(cls, x: npt.ArrayLike) -> FeatureStats:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2:
            raise FeatureStatsError(f"features must be (n, d), got shape {arr.shape}")
        return cls(arr.shape[0], arr.sum(axis=0), (arr * arr).sum(axis=0))

    @classmethod
    def sum(cls, parts: Sequence[FeatureStats]) -> FeatureStats:
        """The statistics of the union of the parts' windows."""
        if not parts:
            raise FeatureStatsError("no ward statistics to add")
        if len({p.total.shape for p in parts}) != 1:
            raise FeatureStatsError("ward statistics have different feature counts")
        return cls(
            sum(p.count for p in parts),
            np.sum([p.total for p in parts], axis=0),
            np.sum([p.squares for p in parts], axis=0),
        )

    @property
    def mean(self) -> F64:
        if self.count == 0:
            raise FeatureStatsError("no windows: the mean is undefined")
        out: F64 = self.total / self.count
        return out

    @property
    def std(self) -> F64:
        """Population standard deviation (ddof 0), floored at MIN_STD."""
        mean = self.mean
        # E[x^2] - E[x]^2 can come out a hair below 0 in floating point for a constant feature
        var = np.maximum(self.squares / self.count - mean * mean, 0.0)
        out: F64 = np.maximum(np.sqrt(var), MIN_STD)
        return out


def standardise(x: npt.ArrayLike, stats: FeatureStats) -> F32:
    """(x - mean) / std with the pooled statistics, as float32 model input."""
    arr = np.asarray(x, dtype=np.float64)
    out: F32 = ((arr - stats.mean) / stats.std).astype(np.float32)
    return out
