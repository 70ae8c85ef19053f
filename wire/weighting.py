"""Sample-count weighting of secure updates: each gateway masks w * (clipped update) and w * C
as one more coordinate, so the coordinator divides two sums and never learns a single count."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: The extended vector (w x, w C) has L2 norm <= w sqrt(C^2 + C^2) <= sqrt(2) C: the
#: encoding clips at that, so one gateway's whole contribution, its weight included, is
#: bounded and the noise (z times that bound) covers the weight too.
NORM_FACTOR = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class SampleWeighting:
    """FedAvg's weights n_i / sum n over masked sums, with counts capped at `cap`: above it a
    gateway weighs no more, which bounds its influence (and the DP sensitivity) whatever it
    claims. w_i = min(n_i, cap) / cap lies in [0, 1]."""

    cap: int

    def __post_init__(self) -> None:
        if isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1:
            raise ValueError(f"weight cap {self.cap!r}: expected an integer >= 1")

    def weight(self, samples: int) -> float:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"sample count {samples!r}: expected an integer >= 0")
        return min(samples, self.cap) / self.cap

    @staticmethod
    def encoding_dimension(dimension: int) -> int:
        return dimension + 1

    @staticmethod
    def encoding_clip(clip: float) -> float:
        return NORM_FACTOR * clip

    def extend(self, update: npt.ArrayLike, samples: int, clip: float) -> F64:
        """The vector a gateway encodes: its update clipped to L2 norm `clip`, times its
        weight, then the weight times `clip` (the same scale as the update's coordinates, so
        that both quantise alike)."""
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(x))
        if norm > clip:
            x = x * (clip / norm)
        w = self.weight(samples)
        return np.concatenate([w * x, np.array([w * clip])])

    def mean(self, signed_sum: I64, clip: float, survivors: int, precision_bits: int) -> F64:
        """The weighted mean update from the exact integer sum of the extended inputs:
        sum(w x) / sum(w). The quantisation scale cancels in the ratio. With noise the
        weight sum is noisy too; it is floored at the smallest true value (every survivor
        with one sample), post-processing that costs no privacy and keeps the ratio bounded."""
        if signed_sum.ndim != 1 or signed_sum.size < 2:
            raise ValueError(f"weighted sum of shape {signed_sum.shape}: expected d + 1 values")
        # w C quantises to w (2^b - 1) / sqrt(2): one sample per survivor is the floor
        unit = ((1 << precision_bits) - 1) / NORM_FACTOR / self.cap
        denominator = max(float(signed_sum[-1]), survivors * unit)
        result: F64 = clip * signed_sum[:-1].astype(np.float64) / denominator
        return result
