"""Feature scaling at its limits: known-answer moment vectors (secure factor, float32 windows
read in double precision), pooled moments clipped back into range, the resolution floor, and
every field of the scaling object probed at its exact limit and one past it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pqlink import DecodeError
from wire.feature_scaling import (
    MAX_FEATURES,
    MIN_STD,
    FeatureScaling,
    moments_vector,
    pooled_of,
    pooled_scaling,
    secure_resolution,
)


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


# -- moment vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.25, 0.5, 1.0, 4.0])
def test_a_secure_clip_below_one_still_scales_the_vector(clip: float) -> None:
    """k = clip_norm whenever it is positive: a clip of 0.5 halves a plain vector."""
    # one feature at the bound: mean / B = 1 and meansq / B^2 = 1, times k / sqrt(2)
    v = moments_vector([[10.0], [10.0]], 10.0, 3, clip)
    want = clip / math.sqrt(2.0)
    assert v.tolist() == pytest.approx([want, want, 0.0], rel=1e-15, abs=0.0)
    assert float(np.linalg.norm(v)) == pytest.approx(clip, rel=1e-15)


def test_plain_mode_uses_a_factor_of_one() -> None:
    v = moments_vector([[5.0, -10.0]], 10.0, 4)
    # mean / B = (0.5, -1), meansq / B^2 = (0.25, 1), times 1 / sqrt(4) = 1/2
    assert v.tolist() == pytest.approx([0.25, -0.5, 0.125, 0.5], rel=1e-15, abs=0.0)


def test_float32_windows_are_averaged_in_double_precision() -> None:
    """A gateway's windows are float32; their mean 0.5 + 2^-31 is not a float32 value."""
    x = np.array([[1.0], [2.0**-30]], dtype=np.float32)
    v = moments_vector(x, 10.0, 2)
    assert v.dtype == np.float64
    assert float(v[0]) == pytest.approx((0.5 + 2.0**-31) / 10.0 / math.sqrt(2.0), rel=1e-15)
    assert float(v[1]) == pytest.approx(0.5 / 100.0 / math.sqrt(2.0), rel=1e-15)


# -- the reference pooled scaling ------------------------------------------------------------


def test_the_reference_clips_each_window_on_both_sides() -> None:
    # -20 -> -10 and 0: mean -5, deviation 5; 20 -> 10 and 0: mean 5, deviation 5
    got = pooled_of([[[-20.0, 20.0]], [[0.0, 0.0]]], 10.0)
    assert got == FeatureScaling((-5.0, 5.0), (5.0, 5.0), 2)


def test_the_reference_reads_float32_windows_in_double_precision() -> None:
    x = np.array([[1.0], [2.0**-30]], dtype=np.float32)
    got = pooled_of([x], 10.0)
    assert got.mean[0] == pytest.approx(0.5 + 2.0**-31, rel=1e-15)
    assert got.std[0] == pytest.approx(0.5 - 2.0**-31, rel=1e-15)
    assert got.count == 2


# -- decoding the pooled moments -------------------------------------------------------------


def test_pooled_moments_outside_the_clip_range_are_brought_back_to_it() -> None:
    """Quantisation and noise can push a decoded mean past +-B or a mean square past B^2."""
    k = 1.0 / math.sqrt(2.0)
    high = pooled_scaling([1.1 * k, 1.2 * k], 1, 10.0)
    assert high.mean == (10.0,)
    assert high.std == (MIN_STD,)  # meansq clipped to 100 = mean^2: no spread left
    low = pooled_scaling([-1.1 * k, 1.2 * k], 1, 10.0)
    assert low.mean == (-10.0,)
    assert low.std == (MIN_STD,)
    # just inside: untouched (mean 9, meansq 90 -> deviation 3)
    inside = pooled_scaling([0.9 * k, 0.9 * k], 1, 10.0)
    assert inside.mean[0] == pytest.approx(9.0, rel=1e-14)
    assert inside.std[0] == pytest.approx(3.0, rel=1e-13)


def test_a_small_spread_around_zero_is_kept() -> None:
    """A mean square below 1 is a genuine value, not something to round up."""
    got = pooled_scaling(moments_vector([[0.2], [-0.2]], 10.0, 2), 1, 10.0)
    assert got.mean[0] == pytest.approx(0.0, abs=1e-15)
    assert got.std[0] == pytest.approx(0.2, rel=1e-13)


def test_a_float32_mean_vector_is_decoded_in_double_precision() -> None:
    v = np.array([0.1, 0.05], dtype=np.float32)
    got = pooled_scaling(v, 1, 10.0)
    mean = float(v[0]) * math.sqrt(2.0) * 10.0
    meansq = float(v[1]) * math.sqrt(2.0) * 100.0
    assert got.mean[0] == pytest.approx(mean, rel=1e-15)
    assert got.std[0] == pytest.approx(math.sqrt(meansq - mean * mean), rel=1e-14)


def test_a_mean_vector_of_any_shape_is_read_in_flat_order() -> None:
    flat = [0.1, -0.2, 0.05, 0.08]
    want = pooled_scaling(flat, 2, 10.0)
    assert pooled_scaling(np.array([flat]), 2, 10.0) == want
    assert pooled_scaling(np.array(flat).reshape(2, 2), 2, 10.0) == want
    assert want.mean[0] == pytest.approx(0.1 * 2.0 * 10.0, rel=1e-14)  # k = 1 / sqrt(4)


def test_a_mean_vector_needs_two_coordinates_per_feature() -> None:
    assert pooled_scaling([0.0] * 4, 2, 10.0).features == 2  # exactly enough
    with pytest.raises(ValueError, match=_exactly("2 features need 4 coordinates, got 3")):
        pooled_scaling([0.0] * 3, 2, 10.0)


def test_the_pooled_count_defaults_to_unknown() -> None:
    assert pooled_scaling([0.0, 0.0], 1, 10.0).count == 0
    assert pooled_scaling([0.0, 0.0], 1, 10.0, 0.0, 7).count == 7


# -- resolution ------------------------------------------------------------------------------


def test_the_resolution_divides_by_at_least_one_window() -> None:
    # k q (cap / N) sqrt(2 d) B / clip with q / clip = sqrt(2) / (2^2 - 1), d = 2: sqrt(4) = 2
    one = secure_resolution(2, 10.0, precision_bits=2, cap=5, windows=1.0, survivors=3)
    assert one[0] == pytest.approx(3 * math.sqrt(2.0) / 3 * 5 * 2 * 10.0, rel=1e-15)
    assert one[1] == pytest.approx(one[0] * 10.0, rel=1e-15)
    for fewer in (0.0, 0.5):
        assert secure_resolution(
            2, 10.0, precision_bits=2, cap=5, windows=fewer, survivors=3
        ) == pytest.approx(one, rel=1e-15)
    two = secure_resolution(2, 10.0, precision_bits=2, cap=5, windows=2.0, survivors=3)
    assert two[0] == pytest.approx(one[0] / 2, rel=1e-15)


# -- the scaling object ----------------------------------------------------------------------


def test_a_scaling_holds_one_to_max_features_features() -> None:
    assert MAX_FEATURES == 4096
    assert FeatureScaling((0.0,), (1.0,)).features == 1
    assert FeatureScaling((0.0,) * 4096, (1.0,) * 4096).features == 4096
    with pytest.raises(
        ValueError, match=_exactly("feature scaling of 4097 means and 4097 deviations")
    ):
        FeatureScaling((0.0,) * 4097, (1.0,) * 4097)
    with pytest.raises(ValueError, match=_exactly("feature scaling of 0 means and 0 deviations")):
        FeatureScaling((), ())


@pytest.mark.parametrize("count", [True, False, 1.5, 2.0, "3", None])
def test_a_count_must_be_a_non_negative_int(count: object) -> None:
    with pytest.raises(
        ValueError, match=_exactly(f"feature scaling: count {count!r} is not a count")
    ):
        FeatureScaling((0.0,), (1.0,), count)  # type: ignore[arg-type]
    obj = {"version": 1, "mean": [0.0], "std": [1.0], "count": count}
    with pytest.raises(
        DecodeError, match=_exactly(f"feature scaling: count {count!r} is not a count")
    ):
        FeatureScaling.from_json(obj)


def test_a_count_of_zero_is_a_count() -> None:
    assert FeatureScaling((0.0,), (1.0,), 0).count == 0
    assert FeatureScaling((0.0,), (1.0,)).count == 0


def test_a_scaling_without_a_count_decodes_with_count_zero() -> None:
    got = FeatureScaling.from_json({"version": 1, "mean": [0.5], "std": [2.0]})
    assert got == FeatureScaling((0.5,), (2.0,), 0)


@pytest.mark.parametrize(
    ("mean", "std"), [([0.5], 2.0), (0.5, [2.0]), ([0.5], None), ((0.5,), (2.0,))]
)
def test_mean_and_std_must_both_be_lists(mean: object, std: object) -> None:
    with pytest.raises(DecodeError, match=_exactly("feature scaling: mean and std must be lists")):
        FeatureScaling.from_json({"version": 1, "mean": mean, "std": std})


def test_apply_takes_a_matrix_of_exactly_its_features() -> None:
    s = FeatureScaling((0.5, -1.0), (2.0, 4.0))
    out = s.apply([[2.5, 3.0], [0.5, -1.0]])
    assert out.dtype == np.float32
    assert out.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    for shape in [(2,), (1, 3), (1, 1), (1, 1, 2)]:
        x = np.zeros(shape)
        with pytest.raises(ValueError, match=_exactly(f"features of shape {shape}, scaling of 2")):
            s.apply(x)
