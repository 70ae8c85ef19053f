"""Aggregation rules as small interchangeable objects in Flower's shape: a strategy configures
each round (the settings gateways train with) and aggregates it; the coordinator never
branches on which one it holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from wire.fl import RoundSettings

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Contribution:
    """One gateway's validated update: its weight delta and sample count."""

    gateway: str
    samples: int
    delta: Vector


class Strategy(Protocol):
    """Everything the coordinator and the workers read of a strategy."""

    @property
    def name(self) -> str: ...

    @property
    def norm_bound(self) -> float | None:
        """L2 bound each update is scaled down to before aggregation (None: no bound)."""
        ...

    @property
    def needs_individual_updates(self) -> bool:
        """True if workers must forward each update rather than partial sums."""
        ...

    def configure_round(self, round_: int, *, final: bool = False) -> RoundSettings:
        """The settings gateways train round `round_` with (sent with the global model)."""
        ...

    def aggregate(
        self, total_weight: float, weighted_sum: Vector | None, individual: Sequence[Contribution]
    ) -> Vector:
        """The aggregated delta of a round."""
        ...


def _configure(training: RoundSettings, final: bool) -> RoundSettings:
    # Every rule here trains every round the same way; a rule that varies settings per round
    # (a learning-rate schedule, say) overrides this in its own configure_round.
    return replace(training, final=final)


def bound_norm(delta: Vector, bound: float | None) -> Vector:
    """Scale `delta` down to L2 norm `bound` (norm bounding against oversized updates)."""
    if bound is None:
        return delta
    norm = float(np.linalg.norm(delta))
    if norm <= bound or norm == 0.0:
        return delta
    return (delta * (bound / norm)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class FedAvg:
    """Sample-weighted mean (McMahan et al. 2017); with partial sums, workers pre-add."""

    norm_bound: float | None = None
    training: RoundSettings = field(default_factory=RoundSettings)
    name: str = "fedavg"

    @property
    def needs_individual_updates(self) -> bool:
        return False

    def configure_round(self, round_: int, *, final: bool = False) -> RoundSettings:
        return _configure(self.training, final)

    def aggregate(
        self, total_weight: float, weighted_sum: Vector | None, individual: Sequence[Contribution]
    ) -> Vector:
        if weighted_sum is None or total_weight <= 0:
            raise ValueError("FedAvg needs at least one contribution")
        return (weighted_sum / np.float32(total_weight)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class TrimmedMean:
    """Coordinate-wise mean after dropping the `fraction` largest and smallest values
    (Yin et al. 2018): robust to a minority of wild updates."""

    fraction: float = 0.1
    norm_bound: float | None = None
    training: RoundSettings = field(default_factory=RoundSettings)
    name: str = "trimmed_mean"

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), got {self.fraction}")

    @property
    def needs_individual_updates(self) -> bool:
        return True

    def configure_round(self, round_: int, *, final: bool = False) -> RoundSettings:
        return _configure(self.training, final)

    def aggregate(
        self, total_weight: float, weighted_sum: Vector | None, individual: Sequence[Contribution]
    ) -> Vector:
        if not individual:
            raise ValueError("trimmed mean needs at least one contribution")
        stacked = np.sort(np.stack([c.delta for c in individual]), axis=0)
        k = int(len(individual) * self.fraction)
        kept = stacked[k : len(individual) - k] if len(individual) - 2 * k > 0 else stacked
        return np.asarray(kept.mean(axis=0), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Median:
    """Coordinate-wise median: tolerates up to half the updates being arbitrary."""

    norm_bound: float | None = None
    training: RoundSettings = field(default_factory=RoundSettings)
    name: str = "median"

    @property
    def needs_individual_updates(self) -> bool:
        return True

    def configure_round(self, round_: int, *, final: bool = False) -> RoundSettings:
        return _configure(self.training, final)

    def aggregate(
        self, total_weight: float, weighted_sum: Vector | None, individual: Sequence[Contribution]
    ) -> Vector:
        if not individual:
            raise ValueError("median needs at least one contribution")
        return np.asarray(
            np.median(np.stack([c.delta for c in individual]), axis=0), dtype=np.float32
        )


def make_strategy(
    name: str,
    *,
    norm_bound: float | None = None,
    trim_fraction: float = 0.1,
    training: RoundSettings | None = None,
    server_momentum: float = 0.0,
    server_learning_rate: float = 1.0,
    lr_final_ratio: float = 1.0,
    schedule_rounds: int = 0,
) -> Strategy:
    settings = training or RoundSettings()
    if name == "fedavg":
        return FedAvg(norm_bound, settings)
    if name == "fedavgm":
        from aggregator.momentum import FedAvgM  # noqa: PLC0415 -- it builds on this module

        return FedAvgM(
            server_momentum,
            server_learning_rate,
            lr_final_ratio,
            schedule_rounds,
            norm_bound,
            settings,
        )
    if name == "trimmed_mean":
        return TrimmedMean(trim_fraction, norm_bound, settings)
    if name == "median":
        return Median(norm_bound, settings)
    raise ValueError(f"unknown strategy {name!r}: expected fedavg, fedavgm, trimmed_mean or median")
