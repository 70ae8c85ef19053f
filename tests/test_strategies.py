"""Aggregation rules with non-constant vectors: trimmed mean and median along the right axis,
even and odd counts, norm bounding at its edges, and every rejected setting with its message."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from aggregator.strategies import (
    Contribution,
    FedAvg,
    Median,
    TrimmedMean,
    bound_norm,
    make_strategy,
)
from wire.fl import RoundSettings


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def _c(*values: float, samples: int = 1) -> Contribution:
    return Contribution(f"gw-{values[0]}", samples, np.array(values, np.float32))


def _exact(got: np.ndarray, expected: list[float]) -> None:
    assert got.dtype == np.float32
    assert got.tolist() == np.array(expected, np.float32).tolist()


def test_bound_norm_none_returns_the_update_itself() -> None:
    delta = np.array([30.0, 40.0], np.float32)
    assert bound_norm(delta, None) is delta


@pytest.mark.parametrize("bound", [50.0, 50.5, 1e6])
def test_bound_norm_leaves_updates_within_the_bound(bound: float) -> None:
    delta = np.array([30.0, -40.0], np.float32)  # norm 50
    out = bound_norm(delta, bound)
    assert out is delta


def test_bound_norm_leaves_a_small_update_small() -> None:
    delta = np.array([0.3, 0.4], np.float32)  # norm 0.5, far under the bound
    _exact(bound_norm(delta, 10.0), [0.3, 0.4])


def test_bound_norm_leaves_a_zero_update_alone() -> None:
    delta = np.zeros(3, np.float32)
    assert bound_norm(delta, 0.0) is delta


@pytest.mark.parametrize(
    ("values", "bound", "expected"),
    [
        ([30.0, -40.0], 49.5, [29.7, -39.6]),
        ([30.0, -40.0], 5.0, [3.0, -4.0]),
        ([0.0, 1.0], 0.5, [0.0, 0.5]),  # a norm of exactly 1.0 is scaled too
    ],
)
def test_bound_norm_scales_large_updates_exactly(
    values: list[float], bound: float, expected: list[float]
) -> None:
    out = bound_norm(np.array(values, np.float32), bound)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert float(np.linalg.norm(out)) == pytest.approx(bound, rel=1e-6)


def test_fedavg_divides_the_weighted_sum() -> None:
    fed = FedAvg()
    _exact(fed.aggregate(4.0, np.array([4.0, -8.0, 2.0], np.float32), ()), [1.0, -2.0, 0.5])
    _exact(fed.aggregate(1.0, np.array([3.0, -1.0], np.float32), ()), [3.0, -1.0])
    _exact(fed.aggregate(0.5, np.array([3.0, -1.0], np.float32), ()), [6.0, -2.0])
    assert fed.needs_individual_updates is False
    assert fed.name == "fedavg"
    assert fed.norm_bound is None


@pytest.mark.parametrize(
    ("total_weight", "weighted_sum"),
    [(0.0, np.ones(2, np.float32)), (-1.0, np.ones(2, np.float32)), (3.0, None)],
)
def test_fedavg_without_contributions_is_an_error(
    total_weight: float, weighted_sum: np.ndarray | None
) -> None:
    with pytest.raises(
        ValueError, match=_exactly("FedAvg needs at least one contribution")
    ) as info:
        FedAvg().aggregate(total_weight, weighted_sum, ())
    assert type(info.value) is ValueError


def test_trimmed_mean_is_coordinate_wise() -> None:
    # each coordinate has its own outlier, in a different contribution
    updates = [_c(1.0, 100.0, 7.0), _c(2.0, 20.0, -50.0), _c(900.0, 30.0, 9.0)]
    # n=3, fraction 0.34: one value dropped at each end of every coordinate
    _exact(TrimmedMean(0.34).aggregate(0, None, updates), [2.0, 30.0, 7.0])


def test_trimmed_mean_keeps_the_middle_of_five() -> None:
    updates = [_c(5.0, 1.0), _c(1.0, 2.0), _c(4.0, 3.0), _c(2.0, 50.0), _c(3.0, -50.0)]
    # k = int(5 * 0.2) = 1: drop the extremes of each coordinate, average the middle three
    _exact(TrimmedMean(0.2).aggregate(0, None, updates), [3.0, 2.0])
    # k = int(5 * 0.4) = 2: only the coordinate-wise median stays
    _exact(TrimmedMean(0.4).aggregate(0, None, updates), [3.0, 2.0])
    # k = int(5 * 0.1) = 0: a plain mean
    _exact(TrimmedMean(0.1).aggregate(0, None, updates), [3.0, 1.2])


def test_trimmed_mean_of_an_even_count() -> None:
    updates = [_c(1.0, -4.0), _c(10.0, 4.0), _c(2.0, 0.0), _c(3.0, 2.0)]
    # k = int(4 * 0.25) = 1: the middle two of each coordinate
    _exact(TrimmedMean(0.25).aggregate(0, None, updates), [2.5, 1.0])
    # k = int(4 * 0.49) = 1 as well
    _exact(TrimmedMean(0.49).aggregate(0, None, updates), [2.5, 1.0])


def test_trimmed_mean_of_one_update_is_that_update() -> None:
    _exact(TrimmedMean(0.4).aggregate(0, None, [_c(1.5, -2.0)]), [1.5, -2.0])


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.49])
def test_trim_fractions_accepted(fraction: float) -> None:
    strategy = TrimmedMean(fraction)
    assert strategy.fraction == fraction
    assert strategy.needs_individual_updates is True
    assert strategy.name == "trimmed_mean"


@pytest.mark.parametrize("fraction", [-0.01, 0.5, 0.51, 1.0])
def test_trim_fractions_rejected(fraction: float) -> None:
    message = f"trim fraction must be in [0, 0.5), got {fraction}"
    with pytest.raises(ValueError, match=_exactly(message)) as info:
        TrimmedMean(fraction)
    assert type(info.value) is ValueError


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (TrimmedMean(), "trimmed mean needs at least one contribution"),
        (Median(), "median needs at least one contribution"),
    ],
)
def test_robust_rules_need_a_contribution(strategy: TrimmedMean | Median, message: str) -> None:
    with pytest.raises(ValueError, match=_exactly(message)) as info:
        strategy.aggregate(0, None, [])
    assert type(info.value) is ValueError


def test_median_of_an_odd_count_is_coordinate_wise() -> None:
    updates = [_c(1.0, 30.0, -1.0), _c(50.0, 10.0, 5.0), _c(3.0, 20.0, 100.0)]
    _exact(Median().aggregate(0, None, updates), [3.0, 20.0, 5.0])


def test_median_of_an_even_count_averages_the_middle_two() -> None:
    updates = [_c(1.0, 8.0), _c(4.0, -2.0), _c(2.0, 6.0), _c(100.0, 0.0)]
    _exact(Median().aggregate(0, None, updates), [3.0, 3.0])
    median = Median()
    assert median.needs_individual_updates is True
    assert median.name == "median"


def test_make_strategy_builds_each_rule_with_its_settings() -> None:
    assert make_strategy("fedavg") == FedAvg(None)
    assert make_strategy("fedavg", norm_bound=2.0) == FedAvg(2.0)
    assert make_strategy("trimmed_mean") == TrimmedMean(0.1, None)
    assert make_strategy("trimmed_mean", norm_bound=3.0, trim_fraction=0.2) == TrimmedMean(0.2, 3.0)
    assert make_strategy("median", norm_bound=4.0) == Median(4.0)
    assert make_strategy("median") == Median(None)


def test_make_strategy_names_the_known_rules() -> None:
    message = "unknown strategy 'mean-ish': expected fedavg, fedavgm, trimmed_mean or median"
    with pytest.raises(ValueError, match=_exactly(message)) as info:
        make_strategy("mean-ish")
    assert type(info.value) is ValueError


SETTINGS = RoundSettings(epochs=3, batch_size=16, learning_rate=0.01, prox_mu=0.1)


@pytest.mark.parametrize(
    "strategy",
    [FedAvg(None, SETTINGS), TrimmedMean(0.1, None, SETTINGS), Median(None, SETTINGS)],
)
def test_each_rule_configures_rounds_with_its_training_settings(
    strategy: FedAvg | TrimmedMean | Median,
) -> None:
    assert strategy.configure_round(3) == SETTINGS
    assert strategy.configure_round(3, final=False).final is False
    assert strategy.configure_round(4, final=True) == replace(SETTINGS, final=True)


@pytest.mark.parametrize("name", ["fedavg", "trimmed_mean", "median"])
def test_make_strategy_passes_the_training_settings(name: str) -> None:
    assert make_strategy(name, training=SETTINGS).configure_round(1) == SETTINGS
    assert make_strategy(name).configure_round(1) == RoundSettings()
