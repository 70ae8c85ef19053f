"""The Dash et al. AF rule at its limits, with expected values worked out from its definition
(docs/rhythm.md, the module docstring): a window is AF when, after removing the k = n/16
(rounded) longest and shortest intervals, its normalised RMSSD is > 0.1, its Shannon entropy of
16 bins is > 0.7 and its turning-point count T of the m = n - 2k kept intervals lies within
(2m-4)/3 +- 1.96 sqrt((16m-29)/90). Windows are built with a chosen number of turning points;
each threshold is probed at its exact value and one step past it, and the input checks at
theirs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gateway.af_rule import dash_af, dash_statistics
from gateway.rhythm import RhythmWindowError


def _turning(s: list[float]) -> int:
    return sum(
        1
        for i in range(1, len(s) - 1)
        if (s[i] > s[i - 1] and s[i] > s[i + 1]) or (s[i] < s[i - 1] and s[i] < s[i + 1])
    )


def _nrmssd(s: list[float]) -> float:
    diffs = [(b - a) ** 2 for a, b in itertools.pairwise(s)]
    return math.sqrt(sum(diffs) / len(diffs)) / (sum(s) / len(s))


def _entropy(s: list[float]) -> float:
    low, span = min(s), max(s) - min(s)
    counts = [0] * 16
    for v in s:
        counts[min(int(16 * (v - low) / span), 15)] += 1
    return -sum(c / len(s) * math.log(c / len(s)) for c in counts if c) / math.log(16)


def _kept(m: int, turning: int) -> list[float]:
    """m distinct, evenly spread intervals (high entropy) with exactly `turning` turning points:
    a zigzag of turning + 2 intervals ending on a low one, then a strictly falling tail of the
    smallest intervals."""
    values = [300.0 + 20.0 * j for j in range(m)]
    tail_len = m - turning - 2
    tail = values[:tail_len][::-1]
    zig = values[tail_len:]
    n_low = (len(zig) + 1) // 2
    lows, highs = zig[:n_low], zig[n_low:]
    seq = [lows.pop(0) if (len(zig) - 1 - i) % 2 == 0 else highs.pop(0) for i in range(len(zig))]
    return seq + tail


def _window(kept: list[float], k: int) -> list[float]:
    """`kept` followed by k intervals shorter and k longer than all of them: the outlier
    removal leaves exactly `kept`."""
    short = [min(kept) / 2 - j for j in range(k)]
    long = [max(kept) * 2 + j for j in range(k)]
    return kept + short + long


def _af_with_turning_points(length: int, turning: int) -> bool:
    k = round(length / 16)
    kept = _kept(length - 2 * k, turning)
    # the other two conditions hold, so the turning points alone decide
    assert _turning(kept) == turning
    assert _nrmssd(kept) > 0.1
    assert _entropy(kept) > 0.7
    stats = dash_statistics(_window(kept, k))
    assert stats[0, 2] == turning
    assert stats[0, 0] == pytest.approx(_nrmssd(kept), rel=1e-12)
    assert stats[0, 1] == pytest.approx(_entropy(kept), rel=1e-12)
    return bool(dash_af(_window(kept, k))[0])


@pytest.mark.parametrize(
    ("length", "turning", "af"),
    [
        # 64 beats: k = 4, m = 56, mu = 108/3 = 36, sigma = sqrt(867/90) = 3.1038,
        # 1.96 sigma = 6.0834: random for 30 <= T <= 42
        (64, 29, False),
        (64, 30, True),
        (64, 36, True),
        (64, 42, True),
        (64, 43, False),
        # 44 beats: k = round(2.75) = 3, m = 38, mu = 24, sigma = sqrt(579/90) = 2.5364,
        # 1.96 sigma = 4.9714: random for 20 <= T <= 28
        (44, 19, False),
        (44, 20, True),
        (44, 28, True),
        (44, 29, False),
        # 38 beats: k = round(2.375) = 2, m = 34, mu = 64/3 = 21.333, sigma = sqrt(515/90)
        # = 2.3921, 1.96 sigma = 4.6886: random for 17 <= T <= 26 (26 - 21.333 = 4.667)
        (38, 16, False),
        (38, 17, True),
        (38, 26, True),
        (38, 27, False),
        # 205 beats: k = round(12.8125) = 13, m = 179, mu = 354/3 = 118, sigma^2 = 2835/90
        # = 31.5, (1.96 sigma)^2 = 3.8416 x 31.5 = 121.0104 > 11^2: random for 107 <= T <= 129
        (205, 106, False),
        (205, 107, True),
        (205, 129, True),
        (205, 130, False),
    ],
)
def test_turning_point_interval(length: int, turning: int, af: bool) -> None:
    assert _af_with_turning_points(length, turning) is af


# A +-1 walk of 55 steps over levels -4..4 that sum to 0, with 36 turning points.
WALK = "+-++-++---+-+----+-+-+-++-+-+---+-++++-++++-+-+-+-++--+"


def _levels() -> list[int]:
    levels = [0]
    for step in WALK:
        levels.append(levels[-1] + (1 if step == "+" else -1))
    return levels


@pytest.mark.parametrize(("step", "af"), [(100.0, False), (101.0, True)])
def test_normalised_rmssd_threshold(step: float, af: bool) -> None:
    # intervals 1000 + step x level: the mean is exactly 1000 (the levels sum to 0) and every
    # successive difference is +-step, so the normalised RMSSD is step / 1000: exactly 0.1
    # (not AF) or 0.101 (AF)
    levels = _levels()
    assert len(levels) == 56
    assert sum(levels) == 0
    kept = [1000.0 + step * level for level in levels]
    assert _turning(kept) == 36  # random: 30 <= T <= 42
    assert _entropy(kept) > 0.7
    stats = dash_statistics(_window(kept, 4))
    assert stats[0, 0] == step / 1000
    assert bool(dash_af(_window(kept, 4))[0]) is af


def test_low_entropy_is_not_af_even_when_irregular_and_random() -> None:
    # two values only: the entropy is that of the split of 56 intervals into two bins, at most
    # ln 2 / ln 16 = 0.25; irregular (differences of 300) with 36 turning points (random)
    kept = [700.0 if i % 2 == 0 else 1000.0 for i in range(38)] + [1000.0] * 18
    assert _turning(kept) == 36
    stats = dash_statistics(_window(kept, 4))
    p = 19 / 56  # 19 short intervals, 37 long
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(16)
    assert stats[0, 1] == pytest.approx(expected, rel=1e-12)
    assert stats[0, 0] > 0.1
    assert stats[0, 2] == 36
    assert not dash_af(_window(kept, 4))[0]


def test_statistics_are_per_window() -> None:
    # 8 intervals: k = round(0.5) = 0, nothing removed; two values alternate, so all 6 inner
    # intervals turn and the entropy is ln 2 / ln 16 = 0.25
    rows = [[950.0, 1050.0] * 4, [400.0, 600.0] * 4]
    stats = dash_statistics(rows)
    assert stats.shape == (2, 3)
    assert stats[0, 0] == pytest.approx(100 / 1000)  # RMSSD 100, mean 1000
    assert stats[1, 0] == pytest.approx(200 / 500)  # RMSSD 200, mean 500
    assert stats[:, 1] == pytest.approx([0.25, 0.25])
    assert list(stats[:, 2]) == [6.0, 6.0]


def test_integer_intervals_give_the_float_statistics() -> None:
    # RR intervals in whole ms, as they travel: unsigned differences must not wrap around
    row = [900, 1100] * 4  # mean 1000, every difference +-200: 0.2
    for dtype in (np.uint16, np.int64, np.float32):
        stats = dash_statistics(np.array(row, dtype=dtype))
        assert stats.dtype == np.float64
        assert stats[0, 0] == pytest.approx(0.2, rel=1e-12)
        assert list(stats[0, 1:]) == pytest.approx([0.25, 6.0])
    irregular = np.array([812.5, 640.25, 1033.75, 700.5, 955.125, 601.0, 870.375, 999.5])
    as_single = dash_statistics(irregular.astype(np.float32))
    assert np.array_equal(as_single, dash_statistics(irregular.astype(np.float32).astype(float)))


def test_window_shape_limits() -> None:
    assert dash_statistics(np.full(8, 800.0)).shape == (1, 3)
    assert dash_statistics(np.full((3, 8), 800.0)).shape == (3, 3)
    for bad in (np.full(7, 800.0), np.full((2, 7), 800.0), np.full((1, 8, 8), 800.0), 800.0):
        with pytest.raises(RhythmWindowError):
            dash_statistics(bad)


@pytest.mark.parametrize("bad", [0.0, -5.0, math.inf, -math.inf, math.nan])
def test_intervals_must_be_finite_and_positive(bad: float) -> None:
    row = [800.0] * 8
    row[3] = bad
    with pytest.raises(RhythmWindowError):
        dash_statistics(row)
    with pytest.raises(RhythmWindowError):
        dash_af(row)


def test_small_positive_intervals_are_accepted() -> None:
    row = [0.5, 0.75] * 4  # > 0: accepted, whatever the unit
    stats = dash_statistics(row)
    assert stats[0, 0] == pytest.approx(0.25 / 0.625)
