"""The coordinator's round loop in secure mode, and the privacy ledger's gate on every round:
announce the global model, run the SecAgg stages, apply the mean of the survivors' sum."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pika.adapters.blocking_connection import BlockingChannel

from aggregator.adverts_ahead import AdvertsAhead
from aggregator.privacy import BudgetDecision, PrivacyLedger, PrivacyParameters
from aggregator.secure_round import (
    SecureRound,
    SecureRoundReport,
    SecureRoundRunner,
    StageDeadlines,
    plan_round,
)
from pqlink import Identity, Registry
from pqlink.secagg import AggregateResult
from wire.fl import RoundSettings

_LOG = logging.getLogger("aggregator.secure_rounds")


@dataclass(frozen=True, slots=True)
class RoundPrivacySummary:
    """The report's "privacy" object of one round."""

    secure_aggregation: bool
    dropouts_recovered: int
    epsilon: float | None  # cumulative, None without noise
    delta: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "secure_aggregation": self.secure_aggregation,
            "dropouts_recovered": self.dropouts_recovered,
            "epsilon": self.epsilon,
            "delta": self.delta,
        }


class PrivacyGate:
    """The ledger in the coordinator's database: is the next round within the budget, and
    what did the closed one cost. Sampling fraction: gateways asked / gateways enrolled."""

    def __init__(
        self, db_path: Path, noise_multiplier: float, delta: float, budget: float | None
    ) -> None:
        self.enabled = noise_multiplier > 0.0
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.budget = budget
        self._db = sqlite3.connect(db_path, check_same_thread=False)
        self._ledger: PrivacyLedger | None = None
        if self.enabled:
            self._ledger = PrivacyLedger(self._db, self._params(1.0))

    def _params(self, fraction: float) -> PrivacyParameters:
        return PrivacyParameters(self.noise_multiplier, fraction, self.delta, self.budget)

    def check(self, round_id: int, participants: int, enrolled: int) -> BudgetDecision | None:
        if self._ledger is None:
            return None
        self._ledger.params = self._params(min(1.0, participants / max(1, enrolled)))
        decision = self._ledger.check(round_id)
        if not decision.allowed:
            _LOG.warning(
                "privacy_budget_exhausted round=%d epsilon_spent=%.6g epsilon_after=%.6g "
                "budget=%s delta=%g",
                round_id,
                decision.epsilon_spent,
                decision.epsilon_after,
                decision.budget_epsilon,
                self.delta,
            )
        return decision

    def record(self, decision: BudgetDecision | None) -> float | None:
        if self._ledger is None or decision is None:
            return None
        entry = self._ledger.record(decision)
        _LOG.info(
            "privacy_spent round=%d epsilon=%.6g delta=%g fraction=%.3g",
            entry.round_id,
            entry.epsilon,
            entry.delta,
            entry.sampling_fraction,
        )
        return entry.epsilon

    def epsilon(self) -> float:
        return 0.0 if self._ledger is None else self._ledger.epsilon_spent()

    def close(self) -> None:
        self._db.close()


def run_secure_round(  # noqa: PLR0917 -- the round's parts, each needed once
    channel: BlockingChannel,
    round_id: int,
    gateways: list[str],
    settings: RoundSettings,
    dimension: int,
    identity: Identity,
    registry: Registry,
    *,
    dropout_fraction: float,
    deadlines: StageDeadlines,
    weight_cap: int,
    ahead: AdvertsAhead | None = None,
) -> SecureRoundReport:
    announcement = plan_round(
        round_id,
        gateways,
        settings,
        dimension,
        dropout_fraction=dropout_fraction,
        weight_cap=weight_cap,
    )
    secure = SecureRound(announcement, identity, registry, ahead=ahead)
    return SecureRoundRunner(channel, secure, deadlines).run()


def mean_update(report: SecureRoundReport) -> np.ndarray[Any, np.dtype[np.float32]] | None:
    """The survivors' mean update, decoded from the exact sum; None if the round aborted.
    Sample-weighted (FedAvg with counts capped) when the round carried weights: the sum of
    w x over the sum of w, neither known per gateway; otherwise the plain mean."""
    outcome = report.outcome
    if not isinstance(outcome, AggregateResult) or not outcome.survivors:
        return None
    a = report.announcement
    weighting = a.weighting
    if weighting is None:
        return (outcome.decoded_sum() / len(outcome.survivors)).astype(np.float32)
    mean = weighting.mean(outcome.signed_sum(), a.clip, len(outcome.survivors), a.precision_bits)
    return mean.astype(np.float32)
