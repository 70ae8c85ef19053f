"""Feature windows: fixed scaling, neutral values for missing signals, labels that follow the
events, windows that never cross a gap, and features informative enough to classify alerts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.typing import NDArray

from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.features import (
    FEATURE_CLIP,
    FEATURE_NAMES,
    MAX_GAP_INTERVALS,
    N_FEATURES,
    WINDOW,
    FeatureError,
    build_windows,
    window_event,
    window_events,
    window_features,
    window_starts,
)
from gateway.store import SampleRow
from wire.vitals import Activity, EventLabel, VitalsSample

START_MS = 1_700_006_400_000
F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def steady(
    n: int = WINDOW,
    *,
    interval_ms: int = 1000,
    hr: float | None = 75.0,
    label: EventLabel = EventLabel.NONE,
    activity: Activity = Activity.REST,
) -> list[VitalsSample]:
    """A window at exactly the features' reference values."""
    return [
        VitalsSample(i, START_MS + i * interval_ms, hr, 95.0, 36.5, 1.0, activity, label)
        for i in range(n)
    ]


def as_row(s: VitalsSample) -> SampleRow:
    return (s.seq, s.timestamp_ms, s.heart_rate, s.spo2, s.skin_temp, s.accel, s.activity, s.label)


@pytest.fixture(scope="module")
def device_samples() -> list[list[VitalsSample]]:
    """Forty emulated patients of all cohorts, four hours each at one sample every 5 s, their
    start times spread over the day so that nights, mornings and evenings are all there."""
    day_ms = 24 * 3_600_000
    return [
        VitalsGenerator(
            p,
            seed=n,
            start_ms=START_MS + n * day_ms // 40,
            interval_ms=5000,
            event_rate_per_hour=3.0,
        ).samples(2880)
        for n, p in enumerate(make_profiles(40, 17))
    ]


# -- single windows ---------------------------------------------------------------------------


def test_sixteen_named_features() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == 16
    assert len(set(FEATURE_NAMES)) == 16
    assert WINDOW == 30


def test_reference_window_has_all_zero_features() -> None:
    features, label = window_features(steady())
    assert features.shape == (16,)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, np.zeros(16, np.float32))
    assert label == 0


def test_features_follow_the_signals() -> None:
    # Heart rate climbing 1 bpm per second from 75: slope 60 bpm/min, mean 89.5.
    window = [dataclasses.replace(s, heart_rate=75.0 + i) for i, s in enumerate(steady())]
    window[10] = dataclasses.replace(window[10], spo2=85.0, activity=Activity.RUN)
    window[20] = dataclasses.replace(window[20], accel=5.0, activity=Activity.SLEEP)
    f, _ = window_features(window)
    assert f[F["hr_mean"]] == pytest.approx((89.5 - 75) / 25)
    assert f[F["hr_min"]] == pytest.approx(0.0)
    assert f[F["hr_max"]] == pytest.approx((104 - 75) / 25)
    assert f[F["hr_std"]] == pytest.approx(np.std(np.arange(30.0)) / 10, rel=1e-5)
    assert f[F["hr_slope"]] == pytest.approx(60 / 10, rel=1e-5)
    assert f[F["spo2_min"]] == pytest.approx(-2.0)
    assert f[F["spo2_mean"]] == pytest.approx(-10 / 30 / 5, rel=1e-5)
    assert f[F["accel_max"]] == pytest.approx(2.0)
    assert f[F["moving_fraction"]] == pytest.approx(1 / 30)
    assert f[F["sleep_fraction"]] == pytest.approx(1 / 30)


def test_slope_uses_timestamps_not_positions() -> None:
    fast = [dataclasses.replace(s, heart_rate=75.0 + i) for i, s in enumerate(steady())]
    slow = [
        dataclasses.replace(s, heart_rate=75.0 + i) for i, s in enumerate(steady(interval_ms=2000))
    ]
    assert window_features(fast)[0][F["hr_slope"]] == pytest.approx(
        2 * window_features(slow)[0][F["hr_slope"]]
    )


def test_missing_values_are_ignored_and_counted() -> None:
    window = steady()
    holes = [dataclasses.replace(s, heart_rate=None) if i % 2 else s for i, s in enumerate(window)]
    holes[0] = dataclasses.replace(holes[0], heart_rate=175.0)  # only present values count
    f, _ = window_features(holes)
    assert f[F["hr_max"]] == pytest.approx(4.0)
    assert f[F["hr_mean"]] == pytest.approx(100 / 15 / 25, rel=1e-5)
    assert f[F["missing_fraction"]] == pytest.approx(15 / 120 / 0.2, rel=1e-5)


def test_a_signal_missing_for_the_whole_window_gets_neutral_features() -> None:
    f, _ = window_features(steady(hr=None))
    assert np.isfinite(f).all()
    hr = [F[n] for n in ("hr_mean", "hr_std", "hr_min", "hr_max", "hr_slope")]
    np.testing.assert_array_equal(f[hr], np.zeros(5, np.float32))
    assert f[F["missing_fraction"]] == pytest.approx(0.25 / 0.2)
    nothing = [
        dataclasses.replace(s, spo2=None, skin_temp=None, accel=None) for s in steady(hr=None)
    ]
    f, _ = window_features(nothing)
    assert np.isfinite(f).all()
    assert f[F["missing_fraction"]] == pytest.approx(1 / 0.2)


def test_wild_values_are_clipped() -> None:
    f, _ = window_features(steady(hr=6000.0))
    assert f[F["hr_mean"]] == FEATURE_CLIP


def test_rows_and_samples_give_the_same_features() -> None:
    window = steady(label=EventLabel.FALL)
    by_sample = window_features(window)
    by_row = window_features([as_row(s) for s in window])
    np.testing.assert_array_equal(by_sample[0], by_row[0])
    assert by_sample[1] == by_row[1] == 1


def test_empty_window_is_an_error() -> None:
    with pytest.raises(FeatureError):
        window_features([])
    with pytest.raises(FeatureError):
        build_windows(steady(), window=0)
    with pytest.raises(FeatureError):
        window_starts([1, 2, 3], window=2, stride=0)


# -- labels -----------------------------------------------------------------------------------


def test_any_event_sample_makes_an_alert_window() -> None:
    window = steady()
    assert window_features(window)[1] == 0
    window[29] = dataclasses.replace(window[29], label=EventLabel.BRADYCARDIA)
    assert window_features(window)[1] == 1
    assert window_event(window) is EventLabel.BRADYCARDIA


def test_window_event_is_the_most_frequent_label() -> None:
    labels = [EventLabel.FEVER] * 3 + [EventLabel.FALL] * 5 + [EventLabel.NONE] * 22
    window = [dataclasses.replace(s, label=lab) for s, lab in zip(steady(), labels, strict=True)]
    assert window_event(window) is EventLabel.FALL
    assert window_event(steady()) is EventLabel.NONE
    assert window_event([]) is EventLabel.NONE
    tie = [EventLabel.FALL, EventLabel.TACHYCARDIA, EventLabel.NONE]
    window = [dataclasses.replace(s, label=lab) for s, lab in zip(steady(3), tie, strict=True)]
    assert window_event(window) is EventLabel.TACHYCARDIA  # ties go to the lower label value


def test_window_labels_match_the_events(device_samples: list[list[VitalsSample]]) -> None:
    alerts = 0
    for samples in device_samples[:10]:
        x, y = build_windows(samples)
        events = window_events(samples)
        starts = window_starts([s.timestamp_ms for s in samples])
        assert len(events) == len(y) == len(starts) == x.shape[0]
        for start, label, event in zip(starts, y, events, strict=True):
            chunk = samples[start : start + WINDOW]
            expect = any(s.label is not EventLabel.NONE for s in chunk)
            assert label == int(expect)
            assert (event is not EventLabel.NONE) == expect
            alerts += int(label)
    assert alerts > 20


def test_event_windows_show_their_signature(device_samples: list[list[VitalsSample]]) -> None:
    by_event: dict[EventLabel, list[NDArray[np.float32]]] = {}
    for samples in device_samples:
        x, _ = build_windows(samples)
        for row, event in zip(x, window_events(samples), strict=True):
            by_event.setdefault(event, []).append(row)
    mean = {e: np.mean(rows, axis=0) for e, rows in by_event.items()}
    normal = mean[EventLabel.NONE]
    assert mean[EventLabel.TACHYCARDIA][F["hr_mean"]] > (110 - 75) / 25
    assert mean[EventLabel.BRADYCARDIA][F["hr_min"]] < (45 - 75) / 25
    assert mean[EventLabel.BRADYCARDIA][F["hr_mean"]] < normal[F["hr_mean"]] - 0.3
    assert mean[EventLabel.DESATURATION][F["spo2_min"]] < normal[F["spo2_min"]] - 1
    assert mean[EventLabel.FEVER][F["temp_max"]] > normal[F["temp_max"]] + 1
    assert mean[EventLabel.FALL][F["accel_max"]] > normal[F["accel_max"]] + 0.5


# -- windows over a device's series -----------------------------------------------------------


def test_build_windows_shapes_and_agreement_with_single_windows(
    device_samples: list[list[VitalsSample]],
) -> None:
    samples = device_samples[0]
    x, y = build_windows(samples)
    assert x.dtype == np.float32
    assert y.dtype == np.int32
    assert x.shape == (len(samples) // WINDOW, 16)
    for i in range(0, len(y), 7):
        f, label = window_features(samples[i * WINDOW : (i + 1) * WINDOW])
        np.testing.assert_allclose(x[i], f, rtol=1e-6, atol=1e-6)
        assert y[i] == label
    overlapping, _ = build_windows(samples, window=WINDOW, stride=10)
    assert overlapping.shape[0] == (len(samples) - WINDOW) // 10 + 1
    np.testing.assert_allclose(overlapping[::3], x, rtol=1e-6, atol=1e-7)


def test_scaling_is_fixed_not_fitted_to_the_data(device_samples: list[list[VitalsSample]]) -> None:
    # The same window gets the same features whatever else a gateway holds.
    a, b = device_samples[0], device_samples[1]
    alone, _ = build_windows(a)
    shifted = [
        dataclasses.replace(s, seq=s.seq + 10**6, timestamp_ms=s.timestamp_ms + 10**9) for s in b
    ]
    together, _ = build_windows(a + shifted)
    np.testing.assert_allclose(together[: len(alone)], alone, rtol=1e-6, atol=1e-7)


def test_features_are_finite_and_roughly_unit_scale(
    device_samples: list[list[VitalsSample]],
) -> None:
    x = np.concatenate([build_windows(s)[0] for s in device_samples])
    assert np.isfinite(x).all()
    assert (np.abs(x) <= FEATURE_CLIP).all()
    typical = np.median(np.abs(x), axis=0)
    assert (typical < 3).all(), dict(zip(FEATURE_NAMES, typical, strict=True))
    assert (x.std(axis=0) > 0).all(), "a feature that never varies carries no information"


def test_windows_never_span_a_gap() -> None:
    samples = steady(100)
    # Lose MAX_GAP_INTERVALS samples after seq 44: one step of 4 intervals splits the series
    # into 45 samples (one window, 15 left over) and 52 (one window at 45, 22 left over).
    gap = samples[:45] + samples[45 + MAX_GAP_INTERVALS :]
    starts = window_starts([s.timestamp_ms for s in gap])
    assert list(starts) == [0, 45]
    for start in starts:
        stamps = [s.timestamp_ms for s in gap[start : start + WINDOW]]
        assert max(np.diff(stamps)) <= 1000 * MAX_GAP_INTERVALS
    assert build_windows(gap)[0].shape == (2, 16)
    # One sample fewer lost: a step of exactly 3 intervals is tolerated, windows run through it.
    tolerable = samples[:45] + samples[45 + MAX_GAP_INTERVALS - 1 :]
    assert list(window_starts([s.timestamp_ms for s in tolerable])) == [0, 30, 60]


def test_time_going_backwards_splits_too() -> None:
    samples = steady(60)
    replayed = samples[:40] + samples[30:60]  # a resend of 10 old samples after seq 39
    assert list(window_starts([s.timestamp_ms for s in replayed])) == [0, 40]


def test_short_or_empty_series_give_no_windows() -> None:
    for series in ([], steady(WINDOW - 1)):
        x, y = build_windows(series)
        assert x.shape == (0, 16)
        assert y.shape == (0,)
        assert window_events(series) == []


# -- informative ------------------------------------------------------------------------------


def _logistic_regression(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(1500):
        p = 1 / (1 + np.exp(-(xb @ w)))
        w -= 0.5 * (xb.T @ (p - y) / len(y) + 1e-3 * w)
    return w


def test_features_beat_the_majority_class_on_held_out_patients(
    device_samples: list[list[VitalsSample]],
) -> None:
    windows = [build_windows(s) for s in device_samples]
    train_x = np.concatenate([x for x, _ in windows[:30]]).astype(np.float64)
    train_y = np.concatenate([y for _, y in windows[:30]]).astype(np.float64)
    test_x = np.concatenate([x for x, _ in windows[30:]]).astype(np.float64)
    test_y = np.concatenate([y for _, y in windows[30:]])
    w = _logistic_regression(train_x, train_y)
    predicted = (np.hstack([test_x, np.ones((len(test_x), 1))]) @ w > 0).astype(np.int32)
    accuracy = float((predicted == test_y).mean())
    majority = max(float(test_y.mean()), 1 - float(test_y.mean()))
    recall = float(predicted[test_y == 1].mean())
    specificity = float(1 - predicted[test_y == 0].mean())
    assert 0.1 < test_y.mean() < 0.5  # both classes present in the held-out patients
    assert accuracy > majority + 0.1, (accuracy, majority)
    assert (recall + specificity) / 2 > 0.8, (recall, specificity)
