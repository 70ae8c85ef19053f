"""FedAvgM: the sample-weighted mean of the round's updates taken as a pseudo-gradient by a
server-side heavy-ball step, with a learning rate that decays geometrically over the rounds.

Hsu, Qi and Brown, "Measuring the effects of non-identical data distribution for federated
visual classification", 2019: the server keeps a velocity v <- momentum * v + mean_delta and
moves the global model by server_learning_rate * v. With momentum beta and server learning
rate 1 - beta the step is an exponential moving average of the mean updates: the long-run step
equals FedAvg's, while the round-to-round swing that label-skewed wards cause is damped.
The clients' learning rate of round r (1-based) of R is lr * ratio^((r - 1) / (R - 1)).
The velocity lives in memory: a restarted coordinator starts it again from zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from aggregator.strategies import Contribution, Vector
from wire.fl import RoundSettings


def decayed_learning_rate(learning_rate: float, ratio: float, round_: int, rounds: int) -> float:
    """lr x ratio^((r - 1) / (R - 1)) for round r of R, r clamped to 1..R (constant if R <= 1)."""
    if rounds <= 1 or ratio == 1.0:
        return learning_rate
    step = min(max(round_, 1), rounds) - 1
    return float(learning_rate * ratio ** (step / (rounds - 1)))


@dataclass(slots=True)
class FedAvgM:
    """Server momentum over FedAvg's weighted mean (module docstring). Not frozen: it holds
    the velocity between rounds."""

    momentum: float = 0.0
    server_learning_rate: float = 1.0
    lr_final_ratio: float = 1.0
    schedule_rounds: int = 0  # rounds the decay spans (the coordinator's max_rounds; 0: none)
    norm_bound: float | None = None
    training: RoundSettings = field(default_factory=RoundSettings)
    name: str = "fedavgm"
    velocity: Vector | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"server momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.server_learning_rate) and self.server_learning_rate > 0.0):
            raise ValueError(f"server learning rate must be > 0, got {self.server_learning_rate}")
        if not (math.isfinite(self.lr_final_ratio) and 0.0 < self.lr_final_ratio <= 1.0):
            raise ValueError(f"lr_final_ratio must be in (0, 1], got {self.lr_final_ratio}")
        if self.schedule_rounds < 0:
            raise ValueError(f"schedule_rounds must be >= 0, got {self.schedule_rounds}")

    @property
    def needs_individual_updates(self) -> bool:
        return False

    def configure_round(self, round_: int, *, final: bool = False) -> RoundSettings:
        lr = decayed_learning_rate(
            self.training.learning_rate, self.lr_final_ratio, round_, self.schedule_rounds
        )
        return replace(self.training, learning_rate=lr, final=final)

    def aggregate(
        self, total_weight: float, weighted_sum: Vector | None, individual: Sequence[Contribution]
    ) -> Vector:
        if weighted_sum is None or total_weight <= 0:
            raise ValueError("FedAvgM needs at least one contribution")
        mean = (weighted_sum / np.float32(total_weight)).astype(np.float32)
        previous = self.velocity if self.velocity is not None else np.zeros_like(mean)
        self.velocity = (np.float32(self.momentum) * previous + mean).astype(np.float32)
        step: Vector = (np.float32(self.server_learning_rate) * self.velocity).astype(np.float32)
        return step
