"""The in-process twin of the MIT-BIH rounds against the real aggregator: the same gateway
training and the coordinator's own FedAvg(M) arithmetic give bit-identical global weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator.momentum import FedAvgM
from aggregator.partials import make_partial
from aggregator.rounds import CloseReason, RoundCoordinator, RoundPolicy
from aggregator.strategies import Contribution
from bench.mitdb_sim import FedConfig, federate, grid
from gateway.learning import train_options
from gateway.trainer import NumpyTrainer, fit, flatten, load_initial_weights, unflatten
from wire.fl import RoundSettings
from wire.model import RHYTHM_LAYOUT, RHYTHM_MODEL_PATH


def _ward(seed: int, n: int, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n).astype(np.int32)
    x = (rng.normal(0, 1, (n, RHYTHM_LAYOUT.features)) + y[:, None]).astype(np.float32)
    return x, y


@pytest.mark.parametrize(
    "cfg",
    [
        FedConfig(rounds=3, epochs=1),
        FedConfig(rounds=3, epochs=2, server_momentum=0.5, server_lr=0.5, lr_final_ratio=0.1),
    ],
)
def test_federate_equals_the_coordinator_fed_by_gateway_training(
    tmp_path: Path, cfg: FedConfig
) -> None:
    wards = [_ward(1, 50, [0, 2]), _ward(2, 70, [0, 1, 2]), _ward(3, 20, [0])]
    initial = load_initial_weights(RHYTHM_MODEL_PATH)
    rule = FedAvgM(
        cfg.server_momentum,
        cfg.server_lr,
        cfg.lr_final_ratio,
        cfg.rounds,
        training=RoundSettings(cfg.epochs, cfg.batch_size, cfg.learning_rate),
    )
    trainer = NumpyTrainer(initial)
    with RoundCoordinator(
        tmp_path / "c.db", rule, RoundPolicy(len(wards), 30.0), flatten(initial, RHYTHM_LAYOUT)
    ) as coord:
        for round_ in range(1, cfg.rounds + 1):
            settings = rule.configure_round(round_)
            start = unflatten(coord.weights, RHYTHM_LAYOUT)
            for g, (x, y) in enumerate(wards):
                options = train_options(settings, round_, balanced=True, restricted=True)
                result = fit(trainer, x, y, options, start)
                delta = flatten(list(result.weights), RHYTHM_LAYOUT) - coord.weights
                coord.accept(
                    make_partial("w", round_, [Contribution(f"g{g}", len(y), delta)], False)
                )
            coord.close_round(CloseReason.QUORUM)
        expected = coord.weights.copy()
    got = federate(wards, cfg)
    assert got.dtype == np.float32
    assert got.tolist() == expected.tolist()
    assert not np.array_equal(got, flatten(initial, RHYTHM_LAYOUT))


def test_grid_varies_joined_fields_together() -> None:
    # keys in sorted order, the last varying fastest
    configs = grid(
        {"server_momentum,server_lr": [[0.0, 1.0], [0.8, 0.2]], "epochs": [2, 4]}, FedConfig()
    )
    assert [(c.server_momentum, c.server_lr, c.epochs) for c in configs] == [
        (0.0, 1.0, 2),
        (0.8, 0.2, 2),
        (0.0, 1.0, 4),
        (0.8, 0.2, 4),
    ]
