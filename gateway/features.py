"""Fixed windows of features with alert labels over one device's stored vitals: the input of the
gateway's local trainer, scaled by fixed constants so that every gateway's features agree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.errors import GatewayError
from gateway.store import SampleRow
from wire.vitals import Activity, EventLabel, VitalsSample

WINDOW = 30  # samples per window
MAX_GAP_INTERVALS = 3  # a window never spans a gap longer than this many sampling intervals
FEATURE_CLIP = 10.0  # |feature| bound: one wild reading cannot dominate a model update

# Each feature is (statistic - centre) / scale with the fixed centre and scale below: chosen
# from physiology, not from the data, because federated averaging needs every gateway to map
# the same vitals to the same inputs. A signal missing for a whole window gives its centre
# (feature 0) for mean/min/max, and 0 for its spread and slope; missing_fraction says so.
_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("hr_mean", 75.0, 25.0),  # bpm
    ("hr_std", 0.0, 10.0),
    ("hr_min", 75.0, 25.0),
    ("hr_max", 75.0, 25.0),
    ("hr_slope", 0.0, 10.0),  # least-squares slope, bpm per minute
    ("spo2_mean", 95.0, 5.0),  # percent
    ("spo2_min", 95.0, 5.0),
    ("spo2_std", 0.0, 2.0),
    ("temp_mean", 36.5, 1.0),  # degrees C
    ("temp_max", 36.5, 1.0),
    ("accel_mean", 1.0, 0.5),  # g; 1 g is a wrist at rest
    ("accel_std", 0.0, 0.5),
    ("accel_max", 1.0, 2.0),
    ("missing_fraction", 0.0, 0.2),  # share of the window's 4 x n readings that were dropped
    ("moving_fraction", 0.0, 1.0),  # share of samples reported WALK or RUN
    ("sleep_fraction", 0.0, 1.0),  # share of samples reported SLEEP
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _FEATURES)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_CENTRES: tuple[float, ...] = tuple(centre for _, centre, _ in _FEATURES)
FEATURE_SCALES: tuple[float, ...] = tuple(scale for _, _, scale in _FEATURES)

Vitals = VitalsSample | SampleRow

_EVENT_KINDS = np.array([e.value for e in EventLabel if e is not EventLabel.NONE], dtype=np.int8)
_EVENT_KINDS.setflags(write=False)  # a module constant: shared, so never writable


class FeatureError(GatewayError, ValueError):
    """The caller asked for features of nothing, or with a nonsensical window or stride."""


@dataclass(frozen=True, slots=True)
class _Columns:
    """One device's samples as columns; NaN marks a dropped reading."""

    ts_ms: NDArray[np.int64]
    hr: NDArray[np.float64]
    spo2: NDArray[np.float64]
    temp: NDArray[np.float64]
    accel: NDArray[np.float64]
    activity: NDArray[np.int8]
    label: NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.ts_ms)


def _as_row(item: Vitals) -> SampleRow:
    if isinstance(item, VitalsSample):
        return (
            item.seq,
            item.timestamp_ms,
            item.heart_rate,
            item.spo2,
            item.skin_temp,
            item.accel,
            item.activity,
            item.label,
        )
    return item


def _columns(samples: Sequence[Vitals]) -> _Columns:
    if not samples:
        empty = np.zeros(0)
        no_ints = np.zeros(0, np.int8)
        return _Columns(np.zeros(0, np.int64), empty, empty, empty, empty, no_ints, no_ints)
    _, ts, hr, spo2, temp, accel, activity, label = zip(*map(_as_row, samples), strict=True)
    # numpy turns None into NaN for float64 arrays: dropped readings need no special case.
    return _Columns(
        ts_ms=np.array(ts, dtype=np.int64),
        hr=np.array(hr, dtype=np.float64),
        spo2=np.array(spo2, dtype=np.float64),
        temp=np.array(temp, dtype=np.float64),
        accel=np.array(accel, dtype=np.float64),
        activity=np.array(activity, dtype=np.int8),
        label=np.array(label, dtype=np.int8),
    )


@dataclass(frozen=True, slots=True)
class _Stats:
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    min: NDArray[np.float64]
    max: NDArray[np.float64]
    present: NDArray[np.bool_]  # per reading
    deviation: NDArray[np.float64]  # reading - window mean, 0 where missing


def _masked_stats(x: NDArray[np.float64], neutral: float) -> _Stats:
    """Row-wise statistics of (windows, samples) ignoring NaN, `neutral` for all-NaN rows."""
    present = ~np.isnan(x)
    count = present.sum(axis=1)
    denom = np.maximum(count, 1)
    mean = np.where(present, x, 0.0).sum(axis=1) / denom
    deviation = np.where(present, x - mean[:, None], 0.0)
    std = np.sqrt((deviation**2).sum(axis=1) / denom)
    low = np.where(present, x, np.inf).min(axis=1)
    high = np.where(present, x, -np.inf).max(axis=1)
    empty = count == 0
    mean[empty] = low[empty] = high[empty] = neutral
    return _Stats(mean, std, low, high, present, deviation)


def _slope_per_minute(t_ms: NDArray[np.int64], stats: _Stats) -> NDArray[np.float64]:
    """Least-squares slope of each row against time; 0 where fewer than two distinct times."""
    minutes = (t_ms - t_ms[:, :1]).astype(np.float64) / 60_000.0
    present = stats.present
    mean_minute = np.where(present, minutes, 0.0).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    centred = np.where(present, minutes - mean_minute[:, None], 0.0)
    var = (centred**2).sum(axis=1)
    cov = (centred * stats.deviation).sum(axis=1)
    return np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)


def _features(cols: _Columns, index: NDArray[np.intp]) -> NDArray[np.float32]:
    """Features of the windows whose sample indices are the rows of `index` (windows, n)."""
    hr = _masked_stats(cols.hr[index], FEATURE_CENTRES[0])
    spo2 = _masked_stats(cols.spo2[index], FEATURE_CENTRES[5])
    temp = _masked_stats(cols.temp[index], FEATURE_CENTRES[8])
    accel = _masked_stats(cols.accel[index], FEATURE_CENTRES[10])
    activity = cols.activity[index]
    readings = 4 * index.shape[1]
    missing = readings - (
        hr.present.sum(axis=1)
        + spo2.present.sum(axis=1)
        + temp.present.sum(axis=1)
        + accel.present.sum(axis=1)
    )
    raw: NDArray[np.float64] = np.stack(
        [
            hr.mean,
            hr.std,
            hr.min,
            hr.max,
            _slope_per_minute(cols.ts_ms[index], hr),
            spo2.mean,
            spo2.min,
            spo2.std,
            temp.mean,
            temp.max,
            accel.mean,
            accel.std,
            accel.max,
            missing / readings,
            ((activity == Activity.WALK) | (activity == Activity.RUN)).mean(axis=1),
            (activity == Activity.SLEEP).mean(axis=1),
        ],
        axis=1,
    )
    centres = np.array(FEATURE_CENTRES, dtype=np.float64)
    scaled = (raw - centres) / np.array(FEATURE_SCALES, dtype=np.float64)
    return np.clip(scaled, -FEATURE_CLIP, FEATURE_CLIP).astype(np.float32)


def _events(labels: NDArray[np.int8]) -> NDArray[np.int8]:
    """Most frequent non-NONE label of each row (ties: the lower label value), else NONE."""
    counts = (labels[:, :, None] == _EVENT_KINDS).sum(axis=1)
    winner = _EVENT_KINDS[counts.argmax(axis=1)]
    return np.where(counts.max(axis=1) > 0, winner, EventLabel.NONE.value).astype(np.int8)


def _check(window: int, stride: int) -> None:
    if window < 1 or stride < 1:
        raise FeatureError(f"window={window} and stride={stride} must both be >= 1")


def window_starts(
    timestamps_ms: ArrayLike, window: int = WINDOW, stride: int = WINDOW
) -> NDArray[np.intp]:
    """Start indices of the windows over time-ordered timestamps.

    The sampling interval is the median step between consecutive timestamps; the series is
    split wherever a step exceeds MAX_GAP_INTERVALS intervals (or time does not advance), and
    each piece is cut into windows of `window` samples every `stride`, dropping the remainder."""
    _check(window, stride)
    ts = np.asarray(timestamps_ms, dtype=np.int64)
    if len(ts) < window:
        return np.zeros(0, dtype=np.intp)
    steps = np.diff(ts)
    forward = steps[steps > 0]
    interval = float(np.median(forward)) if forward.size else 0.0
    breaks = np.flatnonzero((steps <= 0) | (steps > MAX_GAP_INTERVALS * interval)) + 1
    bounds = zip(np.concatenate(([0], breaks)), np.concatenate((breaks, [len(ts)])), strict=True)
    pieces = [np.arange(lo, hi - window + 1, stride, dtype=np.intp) for lo, hi in bounds]
    return np.concatenate(pieces)


def _window_index(starts: NDArray[np.intp], window: int) -> NDArray[np.intp]:
    return starts[:, None] + np.arange(window, dtype=np.intp)


def build_windows(
    samples: Sequence[Vitals], window: int = WINDOW, stride: int = WINDOW
) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Features (n, N_FEATURES) and binary alert labels (n,) of one device's time-ordered
    samples, in windows that never span a gap (see `window_starts`)."""
    cols = _columns(samples)
    starts = window_starts(cols.ts_ms, window, stride)
    if not len(starts):
        return np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int32)
    index = _window_index(starts, window)
    labels = (cols.label[index] != EventLabel.NONE).any(axis=1).astype(np.int32)
    return _features(cols, index), labels


@dataclass(frozen=True, slots=True)
class WindowCut:
    """Consecutive windows cut from the front of a row sequence: their features, labels and
    first timestamps, and `used`, the index of the first row no window covers."""

    features: NDArray[np.float32]
    labels: NDArray[np.int32]
    start_ms: NDArray[np.int64]
    used: int


def cut_windows(samples: Sequence[Vitals], window: int = WINDOW) -> WindowCut:
    """`build_windows` with stride = window, also saying where the last window ended: rows from
    `used` on are where the next window may start once more rows arrive."""
    cols = _columns(samples)
    starts = window_starts(cols.ts_ms, window, window)
    if not len(starts):
        return WindowCut(
            np.zeros((0, N_FEATURES), np.float32),
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            0,
        )
    index = _window_index(starts, window)
    labels = (cols.label[index] != EventLabel.NONE).any(axis=1).astype(np.int32)
    return WindowCut(_features(cols, index), labels, cols.ts_ms[starts], int(starts[-1]) + window)


def window_events(
    samples: Sequence[Vitals], window: int = WINDOW, stride: int = WINDOW
) -> list[EventLabel]:
    """The `window_event` of each window `build_windows` makes, in the same order (reporting)."""
    cols = _columns(samples)
    starts = window_starts(cols.ts_ms, window, stride)
    if not len(starts):
        return []
    return [EventLabel(int(e)) for e in _events(cols.label[_window_index(starts, window)])]


def window_features(samples: Sequence[Vitals]) -> tuple[NDArray[np.float32], int]:
    """Features (N_FEATURES,) of one window, taken as given, and its label: 1 if any sample
    carries an event (an alert window), else 0."""
    if not samples:
        raise FeatureError("a window needs at least one sample")
    cols = _columns(samples)
    index = np.arange(len(cols), dtype=np.intp)[None, :]
    label = int((cols.label != EventLabel.NONE).any())
    return _features(cols, index)[0], label


def window_event(samples: Sequence[Vitals]) -> EventLabel:
    """The most frequent event label in a window (ties: the lower label value), NONE if none."""
    if not samples:
        return EventLabel.NONE
    labels = np.array([_as_row(s)[7] for s in samples], dtype=np.int8)
    return EventLabel(int(_events(labels[None, :])[0]))
