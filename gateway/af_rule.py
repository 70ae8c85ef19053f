"""A classic, non-learned detector of atrial fibrillation from RR intervals, the clinical rule
the rhythm model is compared with: Dash, Chon, Lu and Raeder (2009), from the paper.

S. Dash, K.H. Chon, S. Lu, E.A. Raeder, "Automatic real time detection of atrial fibrillation",
Annals of Biomedical Engineering 37(9):1701-1709, 2009. A segment is AF when it is irregular
(normalised RMSSD > 0.1), complex (Shannon entropy of 16 bins > 0.7) and random (its number of
turning points inside the 95% interval of a random series, (2N-4)/3 +- 1.96 sqrt((16N-29)/90)),
each computed after removing the 8 longest and the 8 shortest of 128 intervals as outliers. On
our 64-beat windows the removal is scaled to 4 and 4 (the paper's 1/16 of the segment each)."""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.rhythm import (
    OUTLIER_SHARE,
    RhythmWindowError,
    shannon_entropy,
    trimmed,
    turning_points,
)

NRMSSD_THRESHOLD: Final = 0.1
ENTROPY_THRESHOLD: Final = 0.7
TPR_Z: Final = 1.96


def dash_statistics(rr_ms: ArrayLike) -> NDArray[np.float64]:
    """(windows, 3): normalised RMSSD, Shannon entropy and turning-point count of each window
    (rows of RR intervals in ms) after the outlier removal."""
    rr = np.asarray(rr_ms, dtype=np.float64)
    if rr.ndim == 1:
        rr = rr[None, :]
    if rr.ndim != 2 or rr.shape[1] < 8:
        raise RhythmWindowError(f"RR windows must have shape (windows, n >= 8), got {rr.shape}")
    if not (np.isfinite(rr).all() and (rr > 0).all()):
        raise RhythmWindowError("RR intervals must be finite and > 0")
    kept = trimmed(rr)
    nrmssd = np.sqrt((np.diff(kept, axis=1) ** 2).mean(axis=1)) / kept.mean(axis=1)
    return np.stack([nrmssd, shannon_entropy(kept), turning_points(kept)], axis=1)


def dash_af(rr_ms: ArrayLike) -> NDArray[np.bool_]:
    """True for each window (row of RR intervals in ms) the rule calls atrial fibrillation."""
    stats = dash_statistics(rr_ms)
    n = np.asarray(rr_ms).shape[-1] - 2 * round(OUTLIER_SHARE * np.asarray(rr_ms).shape[-1])
    mu = (2 * n - 4) / 3
    sigma = np.sqrt((16 * n - 29) / 90)
    random = np.abs(stats[:, 2] - mu) <= TPR_Z * sigma
    result: NDArray[np.bool_] = (
        (stats[:, 0] > NRMSSD_THRESHOLD) & (stats[:, 1] > ENTROPY_THRESHOLD) & random
    )
    return result
