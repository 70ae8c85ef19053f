"""Rhythm windows field by field: every feature of several windows at once against a plain
Python computation from the definitions in docs/rhythm.md, the Poincaré ratio, pNN50, turning
points and the trimming at their edge cases, the fixed scaling and its clip, each label-rule
threshold at its value and one past it, the window boundaries at left-out beats, and the shapes
and types of the window containers."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from gateway.rhythm import (
    EXCLUDED,
    FEATURE_CLIP,
    FEATURE_NAMES,
    N_FEATURES,
    RhythmClass,
    RhythmWindowError,
    RhythmWindows,
    build_rhythm_windows,
    raw_features,
    rhythm_windows,
    scale_features,
    segment_starts,
    trimmed,
    turning_points,
    window_label,
)
from wire.rr import BeatClass, Rhythm

N, AF, VT, PREX = Rhythm.NORMAL, Rhythm.AFIB, Rhythm.VT, Rhythm.PREEXCITATION
NB = BeatClass.NORMAL

# (centre, scale) of each feature as docs/rhythm.md's table of physiological constants gives it
_SCALING = {
    "mean_rr": (0.8, 0.3),
    "sdnn": (0.0, 0.1),
    "rmssd": (0.0, 0.1),
    "sdsd": (0.0, 0.1),
    "pnn50": (0.0, 0.5),
    "nrmssd": (0.0, 0.1),
    "cv": (0.0, 0.1),
    "shannon_entropy": (0.5, 0.3),
    "turning_point_ratio": (0.667, 0.1),
    "sd1": (0.0, 0.1),
    "sd2": (0.0, 0.1),
    "sd1_sd2": (0.5, 0.5),
    "premature_fraction": (0.0, 0.1),
    "min_rr_ratio": (0.8, 0.2),
    "max_rr_ratio": (1.2, 0.3),
    "trimmed_nrmssd": (0.0, 0.1),
    "trimmed_shannon_entropy": (0.5, 0.3),
    "trimmed_turning_point_ratio": (0.667, 0.1),
}


def _entropy(values: list[float]) -> float:
    low, high = min(values), max(values)
    if high == low:
        return 0.0
    counts: dict[int, int] = {}
    for v in values:
        b = min(int(16 * (v - low) / (high - low)), 15)
        counts[b] = counts.get(b, 0) + 1
    shares = [c / len(values) for c in counts.values()]
    return -sum(p * math.log(p) for p in shares) / math.log(16)


def _turning_ratio(values: list[float]) -> float:
    count = 0
    for a, b, c in zip(values, values[1:], values[2:], strict=False):
        if (b > a and b > c) or (b < a and b < c):
            count += 1
    return count / (len(values) - 2)


def _nrmssd(values: list[float]) -> float:
    steps = [b - a for a, b in itertools.pairwise(values)]
    return math.sqrt(statistics.fmean(d * d for d in steps)) / statistics.fmean(values)


def _reference(rr_ms: list[int]) -> list[float]:
    s = [v / 1000 for v in rr_ms]
    n = len(s)
    mean = statistics.fmean(s)
    sdnn = statistics.stdev(s)
    steps = [b - a for a, b in itertools.pairwise(s)]
    rmssd = math.sqrt(statistics.fmean(d * d for d in steps))
    sdsd = statistics.stdev(steps)
    pnn50 = sum(abs(b - a) > 50 for a, b in itertools.pairwise(rr_ms)) / (n - 1)
    sd1 = math.sqrt(sdsd**2 / 2)
    sd2 = math.sqrt(max(2 * sdnn**2 - sdsd**2 / 2, 0.0))
    median = statistics.median(s)
    premature = sum(1 for a, b in itertools.pairwise(s) if a < 0.8 * median and b > 1.1 * median)
    k = round(n / 16)
    by_size = sorted(range(n), key=lambda i: (s[i], i))
    dropped = set(by_size[:k]) | set(by_size[n - k :]) if k else set()
    kept = [v for i, v in enumerate(s) if i not in dropped]
    return [
        mean,
        sdnn,
        rmssd,
        sdsd,
        pnn50,
        rmssd / mean,
        sdnn / mean,
        _entropy(s),
        _turning_ratio(s),
        sd1,
        sd2,
        sd1 / sd2 if sd2 > 0 else 0.0,
        premature / n,
        min(s) / mean,
        max(s) / mean,
        _nrmssd(kept),
        _entropy(kept),
        _turning_ratio(kept),
    ]


def _batch() -> list[list[int]]:
    rng = np.random.default_rng(21)
    return [
        [int(v) for v in rng.integers(400, 1100, 64)],  # irregular, median near 750 ms
        [int(v) for v in 600 + rng.integers(-15, 15, 64)],  # regular and fast
        [int(v) for v in 1200 + rng.integers(-200, 200, 64)],  # slow and variable
        [int(v) for v in 800 + rng.integers(-40, 40, 64)],
    ]


def test_every_feature_of_several_windows_matches_the_definitions() -> None:
    batch = _batch()
    # a regular 800 ms rhythm with premature beats and pauses, so the premature share is not 0
    ectopic = [800 + (i % 5) for i in range(64)]
    for i in (7, 23, 41):
        ectopic[i], ectopic[i + 1] = 560, 1040
    batch.append(ectopic)
    got = raw_features(batch)
    assert got.shape == (5, N_FEATURES)
    for row, rr in zip(got.tolist(), batch, strict=True):
        expected = dict(zip(FEATURE_NAMES, _reference(rr), strict=True))
        assert dict(zip(FEATURE_NAMES, row, strict=True)) == pytest.approx(expected, abs=1e-9)
    assert got[4, FEATURE_NAMES.index("premature_fraction")] == pytest.approx(3 / 64)
    # the rows differ, so a statistic pooled over the batch would show
    assert len(set(got[:, FEATURE_NAMES.index("min_rr_ratio")].tolist())) == 5


def test_features_of_a_window_of_twenty_intervals() -> None:
    # 20 intervals: k = round(20/16) = 1 outlier of each kind removed, 18 kept, 16 inner ones
    rng = np.random.default_rng(5)
    rr = [int(v) for v in rng.integers(500, 1000, 20)]
    got = raw_features(rr)[0].tolist()
    assert got == pytest.approx(_reference(rr), abs=1e-9)


def test_three_intervals_are_enough() -> None:
    # 800, 1000, 700: mean 5/6 s, one turning point among one inner interval
    f = dict(zip(FEATURE_NAMES, raw_features([800, 1000, 700])[0].tolist(), strict=True))
    assert f["mean_rr"] == pytest.approx(2.5 / 3)
    assert f["turning_point_ratio"] == 1.0
    assert f["pnn50"] == 1.0
    assert f["max_rr_ratio"] == pytest.approx(1.0 / (2.5 / 3))
    with pytest.raises(RhythmWindowError):
        raw_features([800, 1000])


def test_float32_input_gives_the_same_float64_features() -> None:
    rr = _batch()[0]
    got = raw_features(np.array(rr, dtype=np.float32))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, raw_features(rr))


def test_a_difference_of_exactly_fifty_ms_is_not_counted() -> None:
    # pNN50 counts differences > 50 ms: 1000 -> 1050 is not one, 1000 -> 1051 is
    exact = dict(zip(FEATURE_NAMES, raw_features([1000, 1050, 1000, 1050])[0], strict=True))
    assert exact["pnn50"] == 0.0
    exact_low = dict(zip(FEATURE_NAMES, raw_features([800, 850, 800, 850])[0], strict=True))
    assert exact_low["pnn50"] == 0.0
    past = dict(zip(FEATURE_NAMES, raw_features([1000, 1051, 1000, 1050])[0], strict=True))
    assert past["pnn50"] == pytest.approx(2 / 3)


def test_poincare_ratio_when_sd2_vanishes() -> None:
    # 800, 1000, 800, 1000, 800 (d = 0.2 s): SDNN^2 = 3 d^2 / 10, SDSD^2 = 4 d^2 / 3, so
    # 2 SDNN^2 - SDSD^2 / 2 = 0.6 d^2 - 0.667 d^2 < 0: SD2 = 0 and the ratio is 0, not SD1
    f = dict(zip(FEATURE_NAMES, raw_features([800, 1000, 800, 1000, 800])[0], strict=True))
    assert f["sd1"] == pytest.approx(math.sqrt(0.5 * 4 * 0.04 / 3))
    assert f["sd2"] == 0.0
    assert f["sd1_sd2"] == 0.0


def test_poincare_ratio_of_a_small_window() -> None:
    # 800, 900, 1000, 800: mean 0.875, deviations -75, 25, 125, -75 ms: SDNN^2 = 0.0275 / 3;
    # steps 0.1, 0.1, -0.2 (mean 0): SDSD^2 = 0.03, SD1^2 = 0.015, SD2^2 = 0.055 / 3 - 0.015
    f = dict(zip(FEATURE_NAMES, raw_features([800, 900, 1000, 800])[0], strict=True))
    sd1 = math.sqrt(0.015)
    sd2 = math.sqrt(1 / 300)
    assert f["sd1"] == pytest.approx(sd1)
    assert f["sd2"] == pytest.approx(sd2)
    assert f["sd1_sd2"] == pytest.approx(sd1 / sd2)


@pytest.mark.parametrize(
    ("row", "count"),
    [
        ([800, 900, 900, 800], 0),  # a plateau at the top is no strict maximum
        ([900, 800, 800, 900], 0),  # nor at the bottom
        ([800, 900, 800, 800], 1),
        ([900, 800, 900, 900], 1),
        ([800, 800, 900, 800], 1),
        ([900, 900, 800, 900], 1),
    ],
)
def test_turning_points_are_strict(row: list[float], count: int) -> None:
    got = turning_points(np.array([row], dtype=np.float64))
    assert got.tolist() == [count]
    assert got.dtype == np.float64


def test_trimming_drops_the_earliest_shortest_and_latest_longest_of_ties() -> None:
    # 64 intervals from three levels: k = 4 of the shortest (700) and of the longest (900) go;
    # among equal values the earliest shortest and the latest longest are the ones dropped
    rng = np.random.default_rng(8)
    row = [float(v) for v in rng.choice([700.0, 800.0, 900.0], 64)]
    order = sorted(range(64), key=lambda i: (row[i], i))
    dropped = set(order[:4]) | set(order[-4:])
    expected = [v for i, v in enumerate(row) if i not in dropped]
    got = trimmed(np.array([row, row[::-1]]))
    assert got.shape == (2, 56)
    assert got[0].tolist() == expected
    order_rev = sorted(range(64), key=lambda i: (row[::-1][i], i))
    dropped_rev = set(order_rev[:4]) | set(order_rev[-4:])
    assert got[1].tolist() == [v for i, v in enumerate(row[::-1]) if i not in dropped_rev]


def test_scaled_features_of_a_constant_rhythm() -> None:
    # 64 beats at 800 ms: no variability, min and max equal the mean
    raw = dict.fromkeys(FEATURE_NAMES, 0.0)
    raw.update(mean_rr=0.8, min_rr_ratio=1.0, max_rr_ratio=1.0)
    expected = [(raw[name] - c) / s for name, (c, s) in _SCALING.items()]
    features, labels = build_rhythm_windows(_rows([800] * 64), 64, 64)
    assert features.dtype == np.float32
    assert features.shape == (1, N_FEATURES)
    assert features[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert labels.tolist() == [RhythmClass.NORMAL]


def test_scaling_uses_the_fixed_constants_and_clips() -> None:
    raw = np.array([[0.8 + 0.3 * (i - 9) / 3 for i in range(N_FEATURES)]])
    raw[0, 0] = -5.0  # (-5 - 0.8) / 0.3 is below -10
    raw[0, 1] = 3.0  # 3 / 0.1 is above 10
    got = scale_features(raw)
    assert got.dtype == np.float32
    expected = [
        min(max((raw[0, i] - c) / s, -FEATURE_CLIP), FEATURE_CLIP)
        for i, (c, s) in enumerate(_SCALING.values())
    ]
    assert got[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert got[0, 0] == -FEATURE_CLIP
    assert got[0, 1] == FEATURE_CLIP


def _counts(parts: list[tuple[Rhythm, int]], ectopic: int = 0) -> tuple[list[int], list[int]]:
    rhythms = [int(r) for r, n in parts for _ in range(n)]
    classes = [int(BeatClass.VENTRICULAR)] * ectopic + [int(NB)] * (len(rhythms) - ectopic)
    return rhythms, classes


@pytest.mark.parametrize(
    ("parts", "label"),
    [
        ([(VT, 32), (N, 32)], EXCLUDED),  # exactly half is no majority
        ([(VT, 33), (N, 31)], RhythmClass.OTHER),
        ([(VT, 30), (N, 34)], RhythmClass.NORMAL),  # a third or more is still no majority
        ([(VT, 22), (N, 42)], RhythmClass.NORMAL),
        ([(Rhythm.NODAL, 1)], RhythmClass.OTHER),
        ([(N, 1)], RhythmClass.NORMAL),
    ],
)
def test_other_rhythm_majority(parts: list[tuple[Rhythm, int]], label: int) -> None:
    rhythms, classes = _counts(parts)
    assert window_label(rhythms, classes) == label


@pytest.mark.parametrize(
    ("rhythms", "classes"), [([], []), ([int(N)] * 3, [int(NB)] * 2), ([int(N)], [])]
)
def test_label_needs_one_class_per_beat(rhythms: list[int], classes: list[int]) -> None:
    with pytest.raises(RhythmWindowError):
        window_label(rhythms, classes)


def _rows(
    rrs: list[int], rhythm: Rhythm = N, t0: int = 0, gap: int = 0
) -> list[tuple[int, int, int, int]]:
    out, t = [], t0 + gap
    for rr in rrs:
        t += rr
        out.append((t, rr, int(rhythm), int(NB)))
    return out


def test_window_and_stride_limits() -> None:
    rows = _rows([800] * 10)
    assert segment_starts(rows, 3, 1).tolist() == list(range(8))
    assert segment_starts(rows, 3, 4).tolist() == [0, 4]
    for window, stride in ((2, 1), (3, 0), (2, 0), (64, 0)):
        with pytest.raises(RhythmWindowError):
            segment_starts(rows, window, stride)


def test_a_window_needs_as_many_beats_as_its_length() -> None:
    rows = _rows([800] * 10)
    assert segment_starts(rows, 10, 5).tolist() == [0]
    starts = segment_starts(rows, 11, 5)
    assert starts.tolist() == []
    assert starts.dtype == np.intp


@pytest.mark.parametrize(("gap", "starts"), [(0, [0, 5]), (1, [0, 5]), (2, [0, 6])])
def test_rounding_slack_at_a_gap(gap: int, starts: list[int]) -> None:
    # beat times and intervals are rounded separately: a beat up to 1 ms later than its
    # interval says is still contiguous; 2 ms later means beats were left out
    rows = _rows([800] * 6) + _rows([800] * 5, t0=800 * 6, gap=gap)
    assert segment_starts(rows, 5, 5).tolist() == starts


def test_excluded_windows_are_dropped_unless_asked_for() -> None:
    # windows of 5 beats every 5: normal, pre-excitation (excluded), AF
    rows = _rows([800] * 5) + _rows([800] * 5, PREX, 4000) + _rows([700, 900] * 2 + [800], AF, 8000)
    default = rhythm_windows(rows, 5, 5)
    assert default.labels.tolist() == [RhythmClass.NORMAL, RhythmClass.AF]
    assert default.labels.dtype == np.int32
    assert default.rr_ms.tolist() == [[800.0] * 5, [700.0, 900.0, 700.0, 900.0, 800.0]]
    everything = rhythm_windows(rows, 5, 5, keep_excluded=True)
    assert everything.labels.tolist() == [RhythmClass.NORMAL, EXCLUDED, RhythmClass.AF]
    assert everything.labels.dtype == np.int32
    assert everything.rr_ms.shape == (3, 5)
    assert everything.features.shape == (3, N_FEATURES)
    np.testing.assert_array_equal(everything.features[[0, 2]], default.features)


def test_no_windows_keep_the_window_length() -> None:
    few = rhythm_windows(_rows([800] * 4), 5, 5)
    assert len(few) == 0
    assert few.rr_ms.shape == (0, 5)
    excluded = rhythm_windows(_rows([800] * 5, PREX), 5, 5)
    assert len(excluded) == 0
    assert excluded.rr_ms.shape == (0, 5)
    assert excluded.features.shape == (0, N_FEATURES)


def test_build_rhythm_windows_gives_the_features_and_labels() -> None:
    rows = _rows([800] * 6) + _rows([700, 900] * 3, AF, 4800)
    features, labels = build_rhythm_windows(rows, 6, 3)
    # starts 0, 3, 6: beats 0-5 normal, 3-8 half and half (excluded), 6-11 AF
    assert labels.tolist() == [RhythmClass.NORMAL, RhythmClass.AF]
    assert features.shape == (2, N_FEATURES)
    mean_rr = FEATURE_NAMES.index("mean_rr")
    assert features[:, mean_rr].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    pnn50 = FEATURE_NAMES.index("pnn50")
    assert features[:, pnn50].tolist() == pytest.approx([0.0, 2.0])


def test_empty_windows_have_the_declared_shapes() -> None:
    empty = RhythmWindows.empty(7)
    assert empty.features.shape == (0, N_FEATURES)
    assert empty.features.dtype == np.float32
    assert empty.labels.shape == (0,)
    assert empty.labels.dtype == np.int32
    assert empty.rr_ms.shape == (0, 7)
    assert empty.rr_ms.dtype == np.float64
    assert len(empty) == 0


def test_concat_stacks_the_parts_in_order() -> None:
    a = rhythm_windows(_rows([800] * 5), 5, 5)
    b = rhythm_windows(_rows([700, 900] * 2 + [800], AF), 5, 5)
    both = RhythmWindows.concat([a, b], 5)
    assert both.labels.tolist() == [RhythmClass.NORMAL, RhythmClass.AF]
    assert both.labels.dtype == np.int32
    assert both.rr_ms.tolist() == [[800.0] * 5, [700.0, 900.0, 700.0, 900.0, 800.0]]
    assert both.features.dtype == np.float32
    np.testing.assert_array_equal(both.features, np.concatenate([a.features, b.features]))
    none = RhythmWindows.concat([], 5)
    assert none.rr_ms.shape == (0, 5)
    assert none.features.shape == (0, N_FEATURES)
    assert none.labels.dtype == np.int32
