"""Federated feature standardisation on the wire: how a gateway's window statistics ride in an
update vector through the plain or the secure sum, and the pooled mean/std a global model carries.

A statistics round (RoundSettings.feature_stats = d > 0) asks every gateway for the per-feature
moments of its training windows, clipped to [-B, B] (B = RoundSettings.feature_bound):

    v = (mean_1 / B, ..., mean_d / B, meansq_1 / B^2, ..., meansq_d / B^2) * k / sqrt(2 d)

in the first 2d coordinates of an update-sized vector (the rest 0), with k = the round's
clip_norm in secure mode (so that ||v|| <= clip: the clip leaves it untouched) and k = 1 in
plain mode. Each coordinate lies in [-k / sqrt(2 d), k / sqrt(2 d)]. The update's weight is the
gateway's window count, so the sample-weighted mean that both sums already compute
(sum n_i v_i / sum n_i) is the vector of the POOLED moments: the coordinator decodes it into
the pooled mean and the pooled (population) standard deviation and learns nothing per ward in
secure mode. Secure mode quantises each gateway's weighted vector (w_i v_i, w_i = min(n_i,
cap) / cap, wire/weighting.py) with step q = sqrt(2) clip / (2^bits - 1); the weighted mean
of k survivors is then within k q cap / N of the exact one per coordinate (N = sum of the
capped window counts), which decodes to at most k q (cap / N) sqrt(2 d) B / clip on a mean
and that times B on a mean square (`secure_resolution`), plus the round's DP noise when
noise_multiplier > 0. The coordinator floors each deviation at the square root of the mean
square's bound, so that a feature whose spread the round cannot resolve is not blown up.
A statistics round is quantised to at least STATISTICS_PRECISION_BITS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pqlink import DecodeError

#: The version of the `feature_scaling` object a global model carries.
SCALING_VERSION: Final = 1
#: A feature constant over every window keeps its centred value 0 instead of dividing by 0.
MIN_STD: Final = 1e-6
MAX_FEATURES: Final = 4096
#: A deviation comes from E[x^2] - E[x]^2: the statistics round needs finer steps than an
#: update (the ring has room: 24 + log2(gateways) bits and the noise stay far below 64).
STATISTICS_PRECISION_BITS: Final = 24
_SQRT2: Final = math.sqrt(2.0)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FeatureScaling:
    """The pooled per-feature mean and standard deviation every gateway standardises with."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int = 0  # windows pooled (0: not known to the publisher, e.g. a secure round)

    def __post_init__(self) -> None:
        if not 0 < len(self.mean) <= MAX_FEATURES or len(self.std) != len(self.mean):
            raise ValueError(
                f"feature scaling of {len(self.mean)} means and {len(self.std)} deviations"
            )
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError("feature scaling: a mean is not finite")
        if not all(math.isfinite(s) and s >= MIN_STD for s in self.std):
            raise ValueError(f"feature scaling: a deviation is not finite or below {MIN_STD}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"feature scaling: count {self.count!r} is not a count")

    @property
    def features(self) -> int:
        return len(self.mean)

    def apply(self, x: npt.ArrayLike) -> F32:
        """(x - mean) / std as float32 model input."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.features:
            raise ValueError(f"features of shape {arr.shape}, scaling of {self.features}")
        out: F32 = ((arr - np.array(self.mean)) / np.array(self.std)).astype(np.float32)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCALING_VERSION,
            "mean": list(self.mean),
            "std": list(self.std),
            "count": self.count,
        }

    @classmethod
    def from_json(cls, obj: object) -> FeatureScaling:
        """The scaling from its JSON object; DecodeError names what is wrong."""
        if not isinstance(obj, dict):
            raise DecodeError("feature scaling: not an object")
        if obj.get("version") != SCALING_VERSION:
            raise DecodeError(f"feature scaling: version {obj.get('version')!r} is not supported")
        unknown = sorted(set(obj) - {"version", "mean", "std", "count"})
        if unknown:
            raise DecodeError(f"feature scaling: unknown keys {unknown}")
        mean, std = obj.get("mean"), obj.get("std")
        if not isinstance(mean, list) or not isinstance(std, list):
            raise DecodeError("feature scaling: mean and std must be lists")
        for value in (*mean, *std):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DecodeError(f"feature scaling: {value!r} is not a number")
        try:
            return cls(
                tuple(float(m) for m in mean),
                tuple(float(s) for s in std),
                obj.get("count", 0),
            )
        except ValueError as exc:
            raise DecodeError(str(exc)) from None


def _factor(features: int, clip_norm: float) -> float:
    return (clip_norm if clip_norm > 0 else 1.0) / math.sqrt(2 * features)


def moments_vector(x: npt.ArrayLike, bound: float, dimension: int, clip_norm: float = 0.0) -> F64:
    """A gateway's window moments as an update of `dimension` values (module docstring);
    its weight is the window count, len(x)."""
    arr = np.clip(np.asarray(x, dtype=np.float64), -bound, bound)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"windows of shape {arr.shape}: no moments to report")
    d = arr.shape[1]
    if 2 * d > dimension:
        raise ValueError(f"{d} features need {2 * d} coordinates, the update has {dimension}")
    out = np.zeros(dimension, dtype=np.float64)
    k = _factor(d, clip_norm)
    out[:d] = arr.mean(axis=0) / bound * k
    out[d : 2 * d] = (arr * arr).mean(axis=0) / (bound * bound) * k
    return out


def secure_resolution(
    features: int, bound: float, *, precision_bits: int, cap: int, windows: float, survivors: int
) -> tuple[float, float]:
    """The largest error (mean, mean square) that a secure statistics round's quantisation
    leaves on the pooled moments (module docstring); `windows` is the capped window total."""
    q_over_clip = _SQRT2 / ((1 << precision_bits) - 1)
    err = survivors * q_over_clip * cap / max(windows, 1.0) * math.sqrt(2 * features)
    return err * bound, err * bound * bound


def pooled_scaling(
    mean_vector: npt.ArrayLike,
    features: int,
    bound: float,
    clip_norm: float = 0.0,
    count: int = 0,
    *,
    std_floor: float = MIN_STD,
) -> FeatureScaling:
    """The pooled mean/std from the sample-weighted mean of the gateways' moment vectors;
    a deviation below `std_floor` (what the round resolves) is raised to it."""
    v = np.asarray(mean_vector, dtype=np.float64).reshape(-1)
    if 2 * features > v.size:
        raise ValueError(f"{features} features need {2 * features} coordinates, got {v.size}")
    k = _factor(features, clip_norm)
    # a secure sum's quantisation and noise can leave a mean a hair outside the clip range
    mean = np.clip(v[:features] / k * bound, -bound, bound)
    meansq = np.clip(v[features : 2 * features] / k * bound * bound, 0.0, bound * bound)
    floor = max(std_floor, MIN_STD)
    std = np.maximum(np.sqrt(np.maximum(meansq - mean * mean, 0.0)), floor)
    return FeatureScaling(tuple(map(float, mean)), tuple(map(float, std)), count)


def pooled_of(parts: Sequence[npt.ArrayLike], bound: float) -> FeatureScaling:
    """The pooled scaling computed directly from every gateway's windows (the reference a
    federated one is checked against)."""
    arr = np.clip(np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]), -bound, bound)
    mean = arr.mean(axis=0)
    std = np.maximum(arr.std(axis=0), MIN_STD)
    return FeatureScaling(tuple(map(float, mean)), tuple(map(float, std)), len(arr))
