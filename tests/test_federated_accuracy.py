"""Federated learning on non-IID gateways reaches at least 90% of the accuracy of one model
trained centrally on the pooled data, both measured on the same held-out windows. The
simulation uses the real pieces: emulator signals, feature windows, the trainer, the update
codec and the aggregation strategy; only the brokers are left out (other tests cover them)."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.strategies import Contribution, FedAvg, Median
from demo.report import held_out_windows
from device_emulators.profiles import COHORTS, dominant_mix, make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.features import build_windows
from gateway.trainer import (
    NumpyTrainer,
    TrainOptions,
    evaluate,
    fit,
    flatten,
    load_initial_weights,
    unflatten,
)
from wire.model import DEFAULT_MODEL_PATH

ROUNDS = 8
EPOCHS = 2


def _gateway_data(cohort: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, profile in enumerate(make_profiles(20, seed, cohort_weights=dominant_mix(cohort, 0.8))):
        gen = VitalsGenerator(
            profile, seed=seed * 1000 + i, start_ms=1_790_000_000_000, event_rate_per_hour=6.0
        )
        x, y = build_windows(gen.samples(600))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def federation() -> list[tuple[np.ndarray, np.ndarray]]:
    return [_gateway_data(c, 100 + n) for n, c in enumerate(COHORTS[:3])]


@pytest.mark.parametrize("strategy", [FedAvg(), Median()], ids=["fedavg", "median"])
def test_federated_reaches_90_percent_of_central(
    federation: list[tuple[np.ndarray, np.ndarray]], strategy: FedAvg | Median
) -> None:
    x_test, y_test = held_out_windows(seed=999)
    initial = load_initial_weights(DEFAULT_MODEL_PATH)
    options = TrainOptions(epochs=EPOCHS, learning_rate=0.1)

    central = NumpyTrainer(initial)
    pooled_x = np.concatenate([x for x, _ in federation])
    pooled_y = np.concatenate([y for _, y in federation])
    fit(central, pooled_x, pooled_y, TrainOptions(epochs=EPOCHS * ROUNDS, learning_rate=0.1))
    central_acc = evaluate(central, x_test, y_test)[1]

    global_w = flatten(initial)
    for _ in range(ROUNDS):
        contributions = []
        for n, (x, y) in enumerate(federation):
            local = NumpyTrainer(unflatten(global_w))
            result = fit(local, x, y, options, unflatten(global_w))
            delta = flatten(list(result.weights)) - global_w
            contributions.append(Contribution(f"gw-{n}", len(y), delta.astype(np.float32)))
        weighted = sum(np.float32(c.samples) * c.delta for c in contributions)
        total = float(sum(c.samples for c in contributions))
        step = strategy.aggregate(total, weighted, contributions)  # type: ignore[arg-type]
        global_w = np.add(global_w, step, dtype=np.float32)
    federated = NumpyTrainer(unflatten(global_w))
    fed_acc = evaluate(federated, x_test, y_test)[1]
    majority = max(np.mean(y_test), 1 - np.mean(y_test))
    assert central_acc > majority, "the task must be learnable for the comparison to mean anything"
    assert fed_acc >= 0.9 * central_acc, (fed_acc, central_acc)
