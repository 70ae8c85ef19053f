"""Windows of beat-to-beat RR intervals with rhythm labels: the rhythm task's features (HRV and
AF-irregularity measures, premature-beat counts) and its label rule, from the stored beats.

Window: 64 consecutive beats (about a minute at 60-80 bpm), every 32 beats. 64 RR intervals is
the usual order of segment length for AF detection from RR series (Dash et al. 2009 use 128,
Tateno and Glass 2001 use 50, Lake and Moorman 2011 use 12 for COSEn; 64 keeps turning-point
and entropy statistics stable while a 3-minute AF or VT episode still fills whole windows).
A window never spans beats left out by the wearable (a stored beat whose interval is shorter
than the time since the previous stored beat starts a new segment).

Label of a window, from the beats' reference annotations (`window_label`):
  1 AF        more than half of its beats lie in atrial fibrillation or flutter;
  2 other     more than half lie in VT, ventricular flutter, ventricular bigeminy or trigeminy,
              SVTA, idioventricular or nodal rhythm, atrial bigeminy or 2nd-degree block; or
              more than half in normal sinus rhythm with at least FREQUENT_ECTOPY (6) ectopic
              beats (supraventricular or ventricular) in the window: >= 6 premature beats a
              minute is the classic bedside threshold of frequent ectopy;
  0 normal    more than half in normal sinus rhythm (or sinus bradycardia), fewer ectopics;
  EXCLUDED    no rhythm group has a majority, or the majority rhythm is pre-excitation, paced
              or unknown (not a class of this task): such windows are neither trained nor scored.
The premature-beat count among the features comes from the RR series only (a wearable has no
beat classes): an interval shorter than 0.8 x the window's median followed by one longer than
1.1 x the median (the compensatory pause)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.errors import GatewayError
from gateway.store import BeatRow
from wire.rr import BeatClass, Rhythm

RR_WINDOW: Final = 64
RR_STRIDE: Final = 32
FREQUENT_ECTOPY: Final = 6
EXCLUDED: Final = -1
PREMATURE_RATIO: Final = 0.8
PAUSE_RATIO: Final = 1.1
ENTROPY_BINS: Final = 16
OUTLIER_SHARE: Final = 8 / 128  # Dash et al. remove the 8 longest and 8 shortest of 128
FEATURE_CLIP: Final = 10.0


class RhythmClass(enum.IntEnum):
    NORMAL = 0
    AF = 1
    OTHER = 2


CLASS_NAMES: Final = tuple(c.name.lower() for c in RhythmClass)

_AF_RHYTHMS: Final = frozenset({Rhythm.AFIB, Rhythm.AFL})
_OTHER_RHYTHMS: Final = frozenset(
    {
        Rhythm.VT,
        Rhythm.VFL,
        Rhythm.BIGEMINY,
        Rhythm.TRIGEMINY,
        Rhythm.SVTA,
        Rhythm.IVR,
        Rhythm.NODAL,
        Rhythm.ATRIAL_BIGEMINY,
        Rhythm.HEART_BLOCK,
    }
)
_NORMAL_RHYTHMS: Final = frozenset({Rhythm.NORMAL, Rhythm.SINUS_BRADYCARDIA})
_ECTOPIC: Final = frozenset({BeatClass.SUPRAVENTRICULAR, BeatClass.VENTRICULAR})

# (name, centre, scale): fixed from physiology, not from data, so that every gateway maps the
# same beats to the same inputs (federated averaging needs that).
_FEATURES: Final[tuple[tuple[str, float, float], ...]] = (
    ("mean_rr", 0.8, 0.3),  # s
    ("sdnn", 0.0, 0.1),  # s, sample standard deviation
    ("rmssd", 0.0, 0.1),  # s, root mean square of successive differences
    ("sdsd", 0.0, 0.1),  # s, sample standard deviation of successive differences
    ("pnn50", 0.0, 0.5),  # share of successive differences > 50 ms
    ("nrmssd", 0.0, 0.1),  # rmssd / mean_rr (Dash et al.'s threshold is 0.1)
    ("cv", 0.0, 0.1),  # sdnn / mean_rr
    ("shannon_entropy", 0.5, 0.3),  # of 16 equal bins over the window's range, over log 16
    ("turning_point_ratio", 0.667, 0.1),  # turning points / (n - 2); 2/3 for a random series
    ("sd1", 0.0, 0.1),  # s, Poincare plot width
    ("sd2", 0.0, 0.1),  # s, Poincare plot length
    ("sd1_sd2", 0.5, 0.5),
    ("premature_fraction", 0.0, 0.1),  # premature-then-pause beats / n
    ("min_rr_ratio", 0.8, 0.2),  # min / mean
    ("max_rr_ratio", 1.2, 0.3),  # max / mean
    # the three irregularity measures again after removing the n/16 longest and n/16 shortest
    # intervals (Dash et al. 2009): isolated ectopic beats and their pauses no longer count
    ("trimmed_nrmssd", 0.0, 0.1),
    ("trimmed_shannon_entropy", 0.5, 0.3),
    ("trimmed_turning_point_ratio", 0.667, 0.1),
)
FEATURE_NAMES: Final = tuple(name for name, _, _ in _FEATURES)
N_FEATURES: Final = len(_FEATURES)
_CENTRES: Final = np.array([c for _, c, _ in _FEATURES])
_SCALES: Final = np.array([s for _, _, s in _FEATURES])


class RhythmWindowError(GatewayError, ValueError):
    """A window or stride that makes no sense, or RR intervals that are not positive."""


def raw_features(rr_ms: ArrayLike) -> NDArray[np.float64]:
    """Unscaled features (windows, N_FEATURES) of RR windows (windows, n) in milliseconds, in
    the units the table above gives (seconds, shares, ratios). n >= 3."""
    ms = np.asarray(rr_ms, dtype=np.float64)
    if ms.ndim == 1:
        ms = ms[None, :]
    rr = ms / 1000.0
    if rr.ndim != 2 or rr.shape[1] < 3:
        raise RhythmWindowError(f"RR windows must have shape (windows, n >= 3), got {rr.shape}")
    if not (np.isfinite(rr).all() and (rr > 0).all()):
        raise RhythmWindowError("RR intervals must be finite and > 0")
    n = rr.shape[1]
    mean = rr.mean(axis=1)
    sdnn = rr.std(axis=1, ddof=1)
    diff = np.diff(rr, axis=1)
    rmssd = np.sqrt((diff**2).mean(axis=1))
    sdsd = diff.std(axis=1, ddof=1)
    # in milliseconds: a 50 ms difference of whole-millisecond intervals is exact there, while
    # in seconds it may round either side of 0.05
    pnn50 = (np.abs(np.diff(ms, axis=1)) > 50.0).mean(axis=1)
    tpr = turning_points(rr) / (n - 2)
    sd1 = np.sqrt(0.5) * sdsd
    sd2 = np.sqrt(np.maximum(2 * sdnn**2 - 0.5 * sdsd**2, 0.0))
    ratio = np.where(sd2 > 0, sd1 / np.where(sd2 > 0, sd2, 1.0), 0.0)
    median = np.median(rr, axis=1, keepdims=True)
    premature = (rr[:, :-1] < PREMATURE_RATIO * median) & (rr[:, 1:] > PAUSE_RATIO * median)
    kept = trimmed(rr)
    return np.stack(
        [
            mean,
            sdnn,
            rmssd,
            sdsd,
            pnn50,
            rmssd / mean,
            sdnn / mean,
            shannon_entropy(rr),
            tpr,
            sd1,
            sd2,
            ratio,
            premature.sum(axis=1) / n,
            rr.min(axis=1) / mean,
            rr.max(axis=1) / mean,
            np.sqrt((np.diff(kept, axis=1) ** 2).mean(axis=1)) / kept.mean(axis=1),
            shannon_entropy(kept),
            turning_points(kept) / (kept.shape[1] - 2),
        ],
        axis=1,
    )


def trimmed(rr: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each row without its k longest and k shortest intervals (k = n/16 rounded), the rest
    in time order."""
    k = round(OUTLIER_SHARE * rr.shape[1])
    if k == 0 or rr.shape[1] - 2 * k < 3:
        return rr
    order = np.argsort(rr, axis=1, kind="stable")
    keep = np.ones(rr.shape, bool)
    rows = np.arange(rr.shape[0])[:, None]
    keep[rows, order[:, :k]] = False
    keep[rows, order[:, -k:]] = False
    out: NDArray[np.float64] = rr[keep].reshape(rr.shape[0], rr.shape[1] - 2 * k)
    return out


def turning_points(rr: NDArray[np.float64]) -> NDArray[np.float64]:
    """How many inner intervals of each row are a strict local maximum or minimum."""
    middle = rr[:, 1:-1]
    turning = ((middle > rr[:, :-2]) & (middle > rr[:, 2:])) | (
        (middle < rr[:, :-2]) & (middle < rr[:, 2:])
    )
    counts: NDArray[np.float64] = turning.sum(axis=1).astype(np.float64)
    return counts


def shannon_entropy(rr: NDArray[np.float64], bins: int = ENTROPY_BINS) -> NDArray[np.float64]:
    """Shannon entropy of each row's histogram in `bins` equal bins between its minimum and
    maximum, divided by log(bins) (so in [0, 1]); 0 for a constant row (Dash et al. 2009)."""
    low = rr.min(axis=1, keepdims=True)
    span = rr.max(axis=1, keepdims=True) - low
    safe = np.where(span > 0, span, 1.0)
    index = np.minimum((bins * (rr - low) / safe).astype(np.int64), bins - 1)
    counts = np.zeros((rr.shape[0], bins))
    np.add.at(counts, (np.arange(rr.shape[0])[:, None], index), 1.0)
    p = counts / rr.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy: NDArray[np.float64] = -terms.sum(axis=1) / np.log(bins)
    return np.where(span[:, 0] > 0, entropy, 0.0)


def scale_features(raw: NDArray[np.float64]) -> NDArray[np.float32]:
    scaled: NDArray[np.float64] = (raw - _CENTRES) / _SCALES
    return np.clip(scaled, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)


def window_label(rhythms: Sequence[int], beat_classes: Sequence[int]) -> int:
    """The class of one window from its beats' rhythms and classes (module docstring)."""
    n = len(rhythms)
    if n == 0 or len(beat_classes) != n:
        raise RhythmWindowError(f"{n} rhythms and {len(beat_classes)} beat classes")
    af = sum(1 for r in rhythms if r in _AF_RHYTHMS)
    other = sum(1 for r in rhythms if r in _OTHER_RHYTHMS)
    normal = sum(1 for r in rhythms if r in _NORMAL_RHYTHMS)
    ectopic = sum(1 for c in beat_classes if c in _ECTOPIC)
    if 2 * af > n:
        return RhythmClass.AF.value
    if 2 * other > n:
        return RhythmClass.OTHER.value
    if 2 * normal > n:
        return (RhythmClass.OTHER if ectopic >= FREQUENT_ECTOPY else RhythmClass.NORMAL).value
    return EXCLUDED


def segment_starts(
    rows: Sequence[BeatRow], window: int = RR_WINDOW, stride: int = RR_STRIDE
) -> NDArray[np.intp]:
    """Start indices of windows of `window` beats every `stride` over time-ordered beats, never
    across a gap where beats were left out (the remainder of each segment is dropped)."""
    if window < 3 or stride < 1:
        raise RhythmWindowError(f"window={window} must be >= 3 and stride={stride} >= 1")
    if len(rows) < window:
        return np.zeros(0, dtype=np.intp)
    ts = np.array([r[0] for r in rows], dtype=np.int64)
    rr = np.array([r[1] for r in rows], dtype=np.int64)
    # +1: beat times and intervals are rounded to the millisecond separately
    breaks = np.flatnonzero(np.diff(ts) > rr[1:] + 1) + 1
    bounds = zip(np.concatenate(([0], breaks)), np.concatenate((breaks, [len(ts)])), strict=True)
    pieces = [np.arange(lo, hi - window + 1, stride, dtype=np.intp) for lo, hi in bounds]
    return np.concatenate(pieces)


@dataclass(frozen=True, slots=True)
class RhythmWindows:
    """Windows of one or more devices: scaled features, labels (EXCLUDED kept only when asked
    for) and the RR intervals themselves (for rule-based detectors)."""

    features: NDArray[np.float32]
    labels: NDArray[np.int32]
    rr_ms: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, window: int = RR_WINDOW) -> RhythmWindows:
        return cls(
            np.zeros((0, N_FEATURES), np.float32),
            np.zeros(0, np.int32),
            np.zeros((0, window), np.float64),
        )

    @classmethod
    def concat(cls, parts: Sequence[RhythmWindows], window: int = RR_WINDOW) -> RhythmWindows:
        parts = [cls.empty(window), *parts]
        return cls(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.rr_ms for p in parts]),
        )


def rhythm_windows(
    rows: Sequence[BeatRow],
    window: int = RR_WINDOW,
    stride: int = RR_STRIDE,
    *,
    keep_excluded: bool = False,
) -> RhythmWindows:
    """The windows of one device's time-ordered stored beats (ts_ms, rr_ms, rhythm, class)."""
    starts = segment_starts(rows, window, stride)
    if not len(starts):
        return RhythmWindows.empty(window)
    arr = np.array(rows, dtype=np.int64)
    index = starts[:, None] + np.arange(window, dtype=np.intp)
    labels = np.array(
        [window_label(arr[i, 2].tolist(), arr[i, 3].tolist()) for i in index], dtype=np.int32
    )
    keep = np.ones(len(labels), bool) if keep_excluded else labels != EXCLUDED
    rr = arr[index[keep], 1].astype(np.float64)
    if not len(rr):
        return RhythmWindows.empty(window)
    return RhythmWindows(scale_features(raw_features(rr)), labels[keep], rr)


def build_rhythm_windows(
    rows: Sequence[BeatRow], window: int = RR_WINDOW, stride: int = RR_STRIDE
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Features and labels for training, the shape `build_windows` gives for vitals."""
    w = rhythm_windows(rows, window, stride)
    return w.features, w.labels
