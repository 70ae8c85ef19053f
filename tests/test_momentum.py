"""FedAvgM's server step and learning-rate decay on known answers, its limits at their edges,
and its [strategy] settings reaching the coordinator's rule through the config."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.config import parse_config
from aggregator.momentum import FedAvgM, decayed_learning_rate
from aggregator.partials import make_partial
from aggregator.rounds import CloseReason, RoundCoordinator, RoundPolicy
from aggregator.strategies import Contribution, FedAvg, make_strategy
from servicekit.config import ConfigError
from wire.fl import RoundSettings


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def _v(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def test_without_momentum_it_is_fedavg_round_after_round() -> None:
    plain, momentum = FedAvg(None), FedAvgM()
    for weighted_sum, weight in ((_v(2.0, -4.0), 2.0), (_v(3.0, 9.0), 3.0), (_v(1.0, 1.0), 4.0)):
        expected = plain.aggregate(weight, weighted_sum, ())
        got = momentum.aggregate(weight, weighted_sum, ())
        assert got.dtype == np.float32
        assert got.tolist() == expected.tolist()


def test_the_velocity_carries_the_previous_rounds() -> None:
    rule = FedAvgM(momentum=0.5, server_learning_rate=0.5)
    # mean [1, 2]: v = [1, 2], step 0.5 v
    assert rule.aggregate(2.0, _v(2.0, 4.0), ()).tolist() == [0.5, 1.0]
    # mean [0, 0]: v = 0.5 [1, 2], so the model keeps moving
    assert rule.aggregate(1.0, _v(0.0, 0.0), ()).tolist() == [0.25, 0.5]
    # mean [-1, 4]: v = 0.5 [0.5, 1] + [-1, 4] = [-0.75, 4.5]
    assert rule.aggregate(1.0, _v(-1.0, 4.0), ()).tolist() == [-0.375, 2.25]
    assert rule.velocity is not None
    assert rule.velocity.tolist() == [-0.75, 4.5]


def test_a_constant_update_is_reached_at_server_rate_one_minus_momentum() -> None:
    # the exponential moving average: the steady step equals FedAvg's
    rule = FedAvgM(momentum=0.75, server_learning_rate=0.25)
    steps = [float(rule.aggregate(1.0, _v(8.0), ())[0]) for _ in range(60)]
    assert steps[0] == 2.0
    assert steps[1] == 3.5
    assert steps[-1] == pytest.approx(8.0, rel=1e-5)


def test_no_contribution_is_an_error() -> None:
    with pytest.raises(ValueError, match=_exactly("FedAvgM needs at least one contribution")):
        FedAvgM().aggregate(0.0, _v(1.0), ())
    with pytest.raises(ValueError, match=_exactly("FedAvgM needs at least one contribution")):
        FedAvgM().aggregate(1.0, None, ())


@pytest.mark.parametrize(
    ("round_", "expected"),
    [(1, 0.08), (2, 0.04), (3, 0.02), (4, 0.01), (5, 0.01), (0, 0.08)],
)
def test_learning_rate_decays_geometrically_to_the_ratio(round_: int, expected: float) -> None:
    # 0.08 x 0.125^((r - 1) / 3): halves each round, reaches 0.01 at the last round and stays
    assert decayed_learning_rate(0.08, 0.125, round_, 4) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("rounds", [0, 1])
def test_learning_rate_is_constant_without_a_span(rounds: int) -> None:
    assert decayed_learning_rate(0.05, 0.1, 7, rounds) == 0.05


def test_rounds_are_configured_with_the_decayed_rate() -> None:
    training = RoundSettings(epochs=3, batch_size=16, learning_rate=0.1, prox_mu=0.01)
    rule = FedAvgM(lr_final_ratio=0.01, schedule_rounds=3, training=training)
    assert rule.configure_round(1) == training
    assert rule.configure_round(2).learning_rate == pytest.approx(0.01)
    assert rule.configure_round(3).learning_rate == pytest.approx(0.001)
    assert rule.configure_round(3).epochs == 3
    assert rule.configure_round(4, final=True).final is True
    assert rule.needs_individual_updates is False
    assert rule.name == "fedavgm"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.0}, "server momentum must be in [0, 1), got 1.0"),
        ({"momentum": -1e-9}, "server momentum must be in [0, 1), got -1e-09"),
        ({"server_learning_rate": 0.0}, "server learning rate must be > 0, got 0.0"),
        ({"lr_final_ratio": 0.0}, "lr_final_ratio must be in (0, 1], got 0.0"),
        (
            {"lr_final_ratio": math.nextafter(1.0, 2.0)},
            f"lr_final_ratio must be in (0, 1], got {math.nextafter(1.0, 2.0)}",
        ),
        ({"schedule_rounds": -1}, "schedule_rounds must be >= 0, got -1"),
    ],
)
def test_settings_out_of_range_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exactly(message)) as info:
        FedAvgM(**kwargs)
    assert type(info.value) is ValueError


def test_settings_at_their_edges_are_accepted() -> None:
    rule = FedAvgM(math.nextafter(1.0, 0.0), 1e-9, 1.0, 0)
    assert rule.momentum < 1.0


def _config(strategy: dict[str, Any]) -> dict[str, Any]:
    return {
        "aggregator": {"id": "agg", "state_dir": "state"},
        "rounds": {"max_rounds": 40},
        "strategy": strategy,
    }


def test_config_builds_fedavgm_with_its_settings(tmp_path: Path) -> None:
    config = parse_config(
        _config(
            {
                "name": "fedavgm",
                "server_momentum": 0.99,
                "server_learning_rate": 0.2,
                "lr_final_ratio": 0.001,
            }
        ),
        tmp_path,
    )
    s = config.strategy
    rule = make_strategy(
        s.name,
        server_momentum=s.server_momentum,
        server_learning_rate=s.server_learning_rate,
        lr_final_ratio=s.lr_final_ratio,
        schedule_rounds=config.rounds.max_rounds,
    )
    assert rule == FedAvgM(0.99, 0.2, 0.001, 40)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server_momentum", math.nextafter(0.99, 1.0)),
        ("server_momentum", -1e-9),
        ("server_learning_rate", math.nextafter(1e-3, 0.0)),
        ("server_learning_rate", math.nextafter(10.0, 11.0)),
        ("lr_final_ratio", math.nextafter(1e-3, 0.0)),
        ("lr_final_ratio", math.nextafter(1.0, 2.0)),
    ],
)
def test_config_refuses_settings_past_their_edges(tmp_path: Path, key: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config({"name": "fedavgm", key: value}), tmp_path)
    assert type(info.value) is ConfigError
    assert info.value.key == f"strategy.{key}"


def test_the_coordinator_moves_the_model_by_the_momentum_step(tmp_path: Path) -> None:
    rule = FedAvgM(momentum=0.5, server_learning_rate=1.0)
    with RoundCoordinator(
        tmp_path / "c.db", rule, RoundPolicy(1, 30.0), np.zeros(3, np.float32)
    ) as coord:
        # v: 2 -> 0.5*2 + 2 = 3 -> 0.5*3 - 4 = -2.5, so the weights go 2 -> 5 -> 2.5
        for round_, value, expected in ((1, 2.0, 2.0), (2, 2.0, 5.0), (3, -4.0, 2.5)):
            partial = make_partial(
                "w", round_, [Contribution("gw-01", 4, np.full(3, value, np.float32))], False
            )
            coord.accept(partial)
            coord.close_round(CloseReason.QUORUM)
            assert coord.weights.tolist() == [expected] * 3
