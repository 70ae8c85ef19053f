"""Feature windows field by field: the smallest window and stride, the types of empty results,
windows cut by `cut_windows` and reported by `window_events`, where a series splits (equal or
sub-millisecond timestamps, millisecond sampling), the neutral values of each missing signal,
the lower clip, and slopes and means over sparse readings, computed here independently."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest

from gateway.features import (
    FEATURE_CLIP,
    N_FEATURES,
    FeatureError,
    build_windows,
    cut_windows,
    window_events,
    window_features,
    window_starts,
)
from gateway.store import SampleRow
from wire.vitals import EventLabel, VitalsSample

from .test_features import START_MS, F, steady


def as_row(s: VitalsSample) -> SampleRow:
    return (s.seq, s.timestamp_ms, s.heart_rate, s.spo2, s.skin_temp, s.accel, s.activity, s.label)


# -- window and stride ------------------------------------------------------------------------


def test_window_and_stride_of_one_are_the_smallest_accepted() -> None:
    starts = window_starts([0, 1000, 2000], window=1, stride=1)
    assert list(starts) == [0, 1, 2]
    assert list(window_starts([0, 1000, 2000, 3000], window=2, stride=1)) == [0, 1, 2]
    assert list(window_starts([0, 1000, 2000, 3000], window=1, stride=2)) == [0, 2]
    x, y = build_windows(steady(3), window=1, stride=1)
    assert x.shape == (3, N_FEATURES)
    assert list(y) == [0, 0, 0]
    for window, stride in ((0, 1), (1, 0), (-1, 1), (1, -1)):
        with pytest.raises(FeatureError):
            window_starts([0, 1000, 2000], window=window, stride=stride)


# -- empty results keep their types -----------------------------------------------------------


@pytest.mark.parametrize("window", [1, 5])
def test_no_windows_still_have_the_types_of_windows(window: int) -> None:
    for series in ([], steady(window - 1)):
        x, y = build_windows(series, window=window, stride=1)
        assert x.shape == (0, N_FEATURES)
        assert x.dtype == np.float32
        assert y.shape == (0,)
        assert y.dtype == np.int32
        cut = cut_windows(series, window=window)
        assert cut.features.shape == (0, N_FEATURES)
        assert cut.features.dtype == np.float32
        assert cut.labels.shape == (0,)
        assert cut.labels.dtype == np.int32
        assert cut.start_ms.shape == (0,)
        assert cut.start_ms.dtype == np.int64
        assert cut.used == 0
        assert window_events(series, window=window, stride=1) == []


def test_window_starts_of_a_short_series_are_empty_indices() -> None:
    starts = window_starts([0, 1000], window=3, stride=1)
    assert starts.shape == (0,)
    assert starts.dtype == np.intp
    assert window_starts([], window=1).dtype == np.intp


# -- cut_windows and window_events ------------------------------------------------------------


def test_cut_windows_steps_by_the_window_and_says_where_it_stopped() -> None:
    # Four whole windows of 5 in 23 samples; window k has heart rate 60 + 10 k throughout and
    # window 2 carries one event sample.
    samples = [
        dataclasses.replace(s, heart_rate=60.0 + 10 * (i // 5)) for i, s in enumerate(steady(23))
    ]
    samples[12] = dataclasses.replace(samples[12], label=EventLabel.FEVER)
    cut = cut_windows([as_row(s) for s in samples], window=5)
    assert cut.used == 20
    assert cut.start_ms.dtype == np.int64
    assert list(cut.start_ms) == [START_MS, START_MS + 5000, START_MS + 10_000, START_MS + 15_000]
    assert cut.labels.dtype == np.int32
    assert list(cut.labels) == [0, 0, 1, 0]
    assert cut.features.dtype == np.float32
    assert cut.features.shape == (4, N_FEATURES)
    expected_hr_mean = [(60 + 10 * k - 75) / 25 for k in range(4)]
    np.testing.assert_allclose(cut.features[:, F["hr_mean"]], expected_hr_mean, rtol=1e-6)


def test_window_events_follow_window_and_stride() -> None:
    # Windows of 4 every 2 over 10 samples start at 0, 2, 4 and 6.
    labels = [EventLabel.NONE] * 10
    labels[1] = EventLabel.FALL
    labels[4] = labels[5] = EventLabel.FEVER
    labels[9] = EventLabel.TACHYCARDIA
    samples = [dataclasses.replace(s, label=lab) for s, lab in zip(steady(10), labels, strict=True)]
    assert window_events(samples, window=4, stride=2) == [
        EventLabel.FALL,  # 0-3
        EventLabel.FEVER,  # 2-5
        EventLabel.FEVER,  # 4-7
        EventLabel.TACHYCARDIA,  # 6-9
    ]
    assert window_events(samples, window=4, stride=4) == [EventLabel.FALL, EventLabel.FEVER]


# -- where a series splits --------------------------------------------------------------------


def test_a_repeated_timestamp_splits_the_series() -> None:
    stamps = [0, 1000, 2000, 2000, 3000, 4000]
    assert list(window_starts(stamps, window=3, stride=1)) == [0, 3]


def test_standing_still_is_ignored_when_finding_the_sampling_interval() -> None:
    # Four steps of 0 and two of 3 s: the interval is 3 s, so the 3 s steps are no gap.
    stamps = [0, 0, 0, 0, 0, 3000, 6000]
    assert list(window_starts(stamps, window=2, stride=1)) == [4, 5]
    assert list(window_starts(stamps, window=3, stride=1)) == [4]


def test_time_that_never_advances_gives_one_sample_pieces() -> None:
    assert list(window_starts([7, 7, 7], window=1, stride=1)) == [0, 1, 2]
    assert list(window_starts([7, 7, 7], window=2, stride=1)) == []
    assert list(window_starts([7], window=1, stride=1)) == [0]


def test_millisecond_sampling_has_no_gaps() -> None:
    stamps = list(range(10))
    assert list(window_starts(stamps, window=5, stride=5)) == [0, 5]
    # One lost sample is a step of 2 intervals, inside the tolerance; 4 intervals is a gap.
    assert list(window_starts([0, 1, 3, 4, 5, 6], window=6, stride=1)) == [0]
    assert list(window_starts([0, 1, 5, 6, 7, 8], window=3, stride=1)) == [2, 3]


def test_timestamps_count_in_whole_milliseconds() -> None:
    # 1000.2 and 1000.7 fall in the same millisecond: time does not advance between them.
    stamps = [0.0, 1000.2, 1000.7, 2000.0, 3000.0]
    assert list(window_starts(stamps, window=2, stride=1)) == [0, 2, 3]


# -- neutral values, clip, sparse readings ----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("heart_rate", ("hr_mean", "hr_std", "hr_min", "hr_max", "hr_slope")),
        ("spo2", ("spo2_mean", "spo2_min", "spo2_std")),
        ("skin_temp", ("temp_mean", "temp_max")),
        ("accel", ("accel_mean", "accel_std", "accel_max")),
    ],
)
def test_each_signal_missing_for_the_whole_window_is_neutral(
    field: str, names: tuple[str, ...]
) -> None:
    window = [dataclasses.replace(s, **{field: None}) for s in steady(10)]  # type: ignore[arg-type]
    f, _ = window_features(window)
    expected = np.zeros(N_FEATURES, np.float32)
    expected[F["missing_fraction"]] = 0.25 / 0.2
    np.testing.assert_allclose(f, expected, rtol=1e-6, atol=0)
    assert all(f[F[name]] == 0.0 for name in names)


def test_features_are_clipped_from_below_too() -> None:
    # Heart rate falling 5 bpm a second is -300 bpm/min: -30 scale units, clipped to -10.
    # Skin at 20 C is -16.5 units, also clipped; the other features stay as computed.
    falling = [
        dataclasses.replace(s, heart_rate=200.0 - 5 * i, skin_temp=20.0)
        for i, s in enumerate(steady(10))
    ]
    f, _ = window_features(falling)
    assert f[F["hr_slope"]] == -FEATURE_CLIP
    assert f[F["temp_mean"]] == -FEATURE_CLIP
    assert f[F["temp_max"]] == -FEATURE_CLIP
    assert f[F["hr_min"]] == pytest.approx((155 - 75) / 25)


def test_a_single_reading_is_its_own_mean_minimum_and_maximum() -> None:
    window = [dataclasses.replace(s, heart_rate=None) for s in steady(5)]
    window[3] = dataclasses.replace(window[3], heart_rate=100.0)
    f, _ = window_features(window)
    assert f[F["hr_mean"]] == pytest.approx(1.0)
    assert f[F["hr_min"]] == pytest.approx(1.0)
    assert f[F["hr_max"]] == pytest.approx(1.0)
    assert f[F["hr_std"]] == 0.0
    assert f[F["hr_slope"]] == 0.0
    assert f[F["missing_fraction"]] == pytest.approx(4 / 20 / 0.2)


def test_slope_and_spread_over_sparse_readings() -> None:
    # Readings at irregular seconds, some dropped: the slope is the least-squares fit over the
    # readings present, against their times in minutes.
    hr = [70.0, None, 74.0, 71.0, None, None, 80.0, 78.0, None, 83.0, 81.0, None]
    window = [
        dataclasses.replace(s, heart_rate=h)
        for s, h in zip(steady(12, interval_ms=3000), hr, strict=True)
    ]
    present = [(i * 3000 / 60_000, h) for i, h in enumerate(hr) if h is not None]
    minutes = [m for m, _ in present]
    values = [h for _, h in present]
    slope, _ = statistics.linear_regression(minutes, values)
    f, _ = window_features(window)
    assert f[F["hr_slope"]] == pytest.approx(slope / 10, rel=1e-5)
    assert f[F["hr_mean"]] == pytest.approx((statistics.fmean(values) - 75) / 25, rel=1e-5)
    assert f[F["hr_std"]] == pytest.approx(statistics.pstdev(values) / 10, rel=1e-5)
    assert f[F["missing_fraction"]] == pytest.approx(5 / 48 / 0.2, rel=1e-5)


def test_slope_keeps_its_precision_at_epoch_timestamps() -> None:
    # A 1 kHz burst: heart rate rising 0.001 bpm per millisecond is exactly 60 bpm/min.
    burst = [
        dataclasses.replace(s, heart_rate=75.0 + 0.001 * i)
        for i, s in enumerate(steady(30, interval_ms=1))
    ]
    f, _ = window_features(burst)
    assert f[F["hr_slope"]] == pytest.approx(6.0, rel=1e-6)


def test_a_row_of_the_wrong_width_is_rejected_not_truncated() -> None:
    rows: list[tuple[object, ...]] = [as_row(s) for s in steady(5)]
    rows[2] = (*rows[2], 0)
    with pytest.raises(ValueError, match="is longer than"):
        build_windows(rows, window=5)  # type: ignore[arg-type]
    rows[2] = rows[2][:7]
    with pytest.raises(ValueError, match="is shorter than"):
        build_windows(rows, window=5)  # type: ignore[arg-type]
