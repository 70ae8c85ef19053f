"""Rhythm windows: feature values on hand-computed RR series, the label rule on crafted
annotation sequences (each threshold at its value and one past it), segmentation at left-out
beats, and the Dash et al. AF rule on regular and irregular series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.af_rule import dash_af, dash_statistics
from gateway.rhythm import (
    EXCLUDED,
    FEATURE_NAMES,
    FREQUENT_ECTOPY,
    RR_WINDOW,
    RhythmClass,
    RhythmWindowError,
    raw_features,
    rhythm_windows,
    segment_starts,
    window_label,
)
from wire.rr import BeatClass, Rhythm

N, AF, VT, PREX = Rhythm.NORMAL, Rhythm.AFIB, Rhythm.VT, Rhythm.PREEXCITATION
NB, VB, SB = BeatClass.NORMAL, BeatClass.VENTRICULAR, BeatClass.SUPRAVENTRICULAR


def _named(rr: list[int]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, raw_features(rr)[0].tolist(), strict=True))


def test_features_of_a_steady_acceleration() -> None:
    # 800, 840, 880, 920, 960 ms: mean 0.88 s; deviations -80..80 ms, squares sum to 0.016 s^2
    f = _named([800, 840, 880, 920, 960])
    expected = {
        "mean_rr": 0.88,
        "sdnn": math.sqrt(0.016 / 4),
        "rmssd": 0.04,  # every successive difference is 40 ms
        "sdsd": 0.0,
        "pnn50": 0.0,
        "nrmssd": 0.04 / 0.88,
        "cv": math.sqrt(0.004) / 0.88,
        "shannon_entropy": math.log(5) / math.log(16),  # five values in five distinct bins
        "turning_point_ratio": 0.0,
        "sd1": 0.0,
        "sd2": math.sqrt(2 * 0.004),  # sqrt(2 SDNN^2 - SDSD^2 / 2)
        "sd1_sd2": 0.0,
        "premature_fraction": 0.0,
        "min_rr_ratio": 0.8 / 0.88,
        "max_rr_ratio": 0.96 / 0.88,
        # five intervals: 5/16 rounds to no outlier removal, so the trimmed measures agree
        "trimmed_nrmssd": 0.04 / 0.88,
        "trimmed_shannon_entropy": math.log(5) / math.log(16),
        "trimmed_turning_point_ratio": 0.0,
    }
    assert f == pytest.approx(expected, abs=1e-9)


def test_features_of_an_alternans() -> None:
    # 800, 1000 x3: every inner interval is a turning point, every difference 200 ms
    f = _named([800, 1000, 800, 1000, 800, 1000])
    assert f["mean_rr"] == pytest.approx(0.9)
    assert f["sdnn"] == pytest.approx(math.sqrt(0.06 / 5))
    assert f["rmssd"] == pytest.approx(0.2)
    # differences +0.2, -0.2, +0.2, -0.2, +0.2: mean 0.04, squared deviations sum to 0.192
    assert f["sdsd"] == pytest.approx(math.sqrt(0.192 / 4))
    assert f["pnn50"] == 1.0
    assert f["turning_point_ratio"] == 1.0
    assert f["shannon_entropy"] == pytest.approx(0.25)  # two bins at 1/2: ln 2 / ln 16
    assert f["sd1"] == pytest.approx(math.sqrt(0.5 * 0.048))
    assert f["sd2"] == pytest.approx(0.0, abs=1e-9)


def test_trimmed_measures_drop_the_outliers() -> None:
    # 32 intervals: one longest and one shortest (32/16 = 2 -> k = 2) of each kind removed
    rr = [1000] * 32
    rr[5], rr[6], rr[20], rr[21] = 600, 1500, 650, 1400
    f = _named(rr)
    assert f["nrmssd"] > 0.1
    assert f["trimmed_nrmssd"] == 0.0
    assert f["trimmed_shannon_entropy"] == 0.0
    assert f["trimmed_turning_point_ratio"] == 0.0


def test_premature_beat_needs_the_compensatory_pause() -> None:
    base = [1000] * 8
    with_pause = [*base[:3], 700, 1300, *base[5:]]
    assert _named(with_pause)["premature_fraction"] == pytest.approx(1 / 8)
    no_pause = [*base[:3], 700, 1100, *base[5:]]  # 1100 is not > 1.1 x the 1000 ms median
    assert _named(no_pause)["premature_fraction"] == 0.0
    not_short = [*base[:3], 800, 1300, *base[5:]]  # 800 is not < 0.8 x the median
    assert _named(not_short)["premature_fraction"] == 0.0


@pytest.mark.parametrize("rr", [[800, 800], [[800, 0, 800]], [800, float("nan"), 800]])
def test_bad_rr_windows_are_refused(rr: list[float]) -> None:
    with pytest.raises(RhythmWindowError):
        raw_features(rr)


def _labels(
    rhythm_counts: list[tuple[Rhythm, int]], ectopic: int = 0
) -> tuple[list[int], list[int]]:
    rhythms = [int(r) for r, n in rhythm_counts for _ in range(n)]
    classes = [int(VB)] * ectopic + [int(NB)] * (len(rhythms) - ectopic)
    return rhythms, classes


@pytest.mark.parametrize(
    ("counts", "ectopic", "label"),
    [
        ([(N, 64)], 0, RhythmClass.NORMAL),
        ([(N, 64)], FREQUENT_ECTOPY - 1, RhythmClass.NORMAL),
        ([(N, 64)], FREQUENT_ECTOPY, RhythmClass.OTHER),
        ([(AF, 33), (N, 31)], 0, RhythmClass.AF),
        ([(AF, 32), (N, 32)], 0, EXCLUDED),  # exactly half is no majority
        ([(N, 33), (AF, 31)], 0, RhythmClass.NORMAL),
        ([(VT, 33), (N, 31)], 0, RhythmClass.OTHER),
        ([(Rhythm.AFL, 40), (VT, 24)], 0, RhythmClass.AF),
        ([(Rhythm.BIGEMINY, 64)], 32, RhythmClass.OTHER),
        ([(PREX, 64)], 0, EXCLUDED),
        ([(Rhythm.UNKNOWN, 33), (N, 31)], 0, EXCLUDED),
        ([(Rhythm.SINUS_BRADYCARDIA, 64)], 0, RhythmClass.NORMAL),
    ],
)
def test_label_rule(counts: list[tuple[Rhythm, int]], ectopic: int, label: int) -> None:
    rhythms, classes = _labels(counts, ectopic)
    assert window_label(rhythms, classes) == label


def test_supraventricular_beats_count_as_ectopic_fusion_does_not() -> None:
    rhythms = [int(N)] * 64
    assert window_label(rhythms, [int(SB)] * 6 + [int(NB)] * 58) == RhythmClass.OTHER
    fusion = [int(BeatClass.FUSION)] * 6 + [int(NB)] * 58
    assert window_label(rhythms, fusion) == RhythmClass.NORMAL


def _rows(rrs: list[int], rhythm: Rhythm = N, t0: int = 0) -> list[tuple[int, int, int, int]]:
    out, t = [], t0
    for rr in rrs:
        t += rr
        out.append((t, rr, int(rhythm), int(NB)))
    return out


def test_windows_never_span_left_out_beats() -> None:
    first = _rows([800] * 70)
    # a beat left out: the next stored beat is 1600 ms later but reports an 800 ms interval
    second = _rows([800] * 70, t0=first[-1][0] + 800)
    rows = first + second
    assert segment_starts(rows, 64, 32).tolist() == [0, 70]
    assert segment_starts(rows[:70] + _rows([800] * 70, t0=first[-1][0]), 64, 32).tolist() == [
        0,
        32,
        64,
    ]
    assert segment_starts(rows, 64, 1).tolist() == [*range(7), *range(70, 77)]


def test_rhythm_windows_labels_and_shapes() -> None:
    rng = np.random.default_rng(3)
    normal = _rows([800 + int(d) for d in rng.integers(-20, 20, 128)])
    af = _rows([int(v) for v in rng.integers(400, 1100, 128)], AF, t0=normal[-1][0])
    w = rhythm_windows(normal + af, RR_WINDOW, RR_WINDOW)
    assert w.labels.tolist() == [0, 0, 1, 1]
    assert w.features.shape == (4, len(FEATURE_NAMES))
    assert w.rr_ms.shape == (4, RR_WINDOW)
    assert w.features.dtype == np.float32


def test_dash_rule_on_regular_and_irregular_series() -> None:
    rng = np.random.default_rng(11)
    regular = 800 + rng.normal(0, 15, (20, 64))
    irregular = rng.uniform(400, 1100, (20, 64))
    assert not dash_af(regular).any()
    assert dash_af(irregular).mean() >= 0.8  # the turning-point test is a 95% interval
    stats = dash_statistics(irregular)
    assert (stats[:, 0] > 0.1).all()
    # 64 beats lose 4 + 4 outliers: 56 remain, the turning points of 54 inner intervals
    assert (stats[:, 2] <= 54).all()


def test_dash_rule_outlier_removal_ignores_single_ectopics() -> None:
    # a regular rhythm with four premature beats and their pauses: the trimming removes them
    rr = np.full(64, 800.0)
    for i in (10, 25, 40, 55):
        rr[i], rr[i + 1] = 500.0, 1100.0
    nrmssd = dash_statistics(rr)[0, 0]
    assert nrmssd == pytest.approx(0.0)
    assert not dash_af(rr)[0]
