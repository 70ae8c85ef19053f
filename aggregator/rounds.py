"""The round coordinator's state and decisions: rounds, exactly-once contributions per
(gateway, round), closing at quorum or deadline, aggregation through the given strategy;
persistence is the RoundStore's, so a restart resumes where the last commit left off."""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from aggregator.partials import Partial
from aggregator.round_store import (
    Accumulator,
    Changes,
    ContributionRow,
    LatestModel,
    OpenRound,
    RejectionRow,
    RoundRecord,
    RoundStore,
)
from aggregator.strategies import Contribution, Strategy, Vector, bound_norm
from wire.reasons import Reason


class CloseReason(enum.StrEnum):
    """Why a round closed (the `reason` label of the rounds-closed counter)."""

    QUORUM = "quorum"
    DEADLINE = "deadline"


class RoundOutcome(enum.StrEnum):
    """How a round ended, as stored in its row: aggregated, or too few to change the model."""

    QUORUM = "quorum"
    DEADLINE = "deadline"
    QUORUM_TOO_FEW = "quorum_too_few"
    DEADLINE_TOO_FEW = "deadline_too_few"
    SECURE_ABORTED = "secure_aborted"  # too few survivors: nothing unmasked, model unchanged
    STATISTICS = "statistics"  # a statistics round: feature moments pooled, model unchanged

    @classmethod
    def of(cls, reason: CloseReason, aggregated: bool) -> RoundOutcome:
        if reason is CloseReason.QUORUM:
            return cls.QUORUM if aggregated else cls.QUORUM_TOO_FEW
        return cls.DEADLINE if aggregated else cls.DEADLINE_TOO_FEW


@dataclass(frozen=True, slots=True)
class RoundPolicy:
    quorum: int  # close as soon as this many gateways contributed
    round_timeout: float  # ...or this many seconds after the round opened
    min_participants: int = 1  # below this at the deadline, the model is not changed


@dataclass(frozen=True, slots=True)
class PartialOutcome:
    accepted: tuple[str, ...]
    duplicates: tuple[str, ...]
    rejected: tuple[tuple[str, Reason], ...]  # (gateway, reason)


@dataclass
class ClosedRound:
    round: int
    version: int
    participants: list[str]
    samples: int
    reason: CloseReason
    update_norm: float
    opened_at: float = 0.0
    closed_at: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    outcome: RoundOutcome = RoundOutcome.QUORUM
    privacy: dict[str, Any] = field(default_factory=dict)


class RoundCoordinator:
    """One coordinator per deployment (the K3s Deployment uses the Recreate strategy)."""

    def __init__(
        self,
        db_path: Path,
        strategy: Strategy,
        policy: RoundPolicy,
        initial_weights: Vector,
        *,
        keep_rounds: int = 0,
    ) -> None:
        self.strategy = strategy
        self.policy = policy
        self.rejections: Counter[str] = Counter()
        self.metrics_by_gateway: dict[str, dict[str, Any]] = {}
        self.store = RoundStore(db_path, keep_rounds=keep_rounds)
        try:
            latest = self.store.latest_model()
            if latest is None:
                now = time.time()
                latest = LatestModel(0, initial_weights.astype(np.float32))
                self.store.initialise(latest.weights, now, now + policy.round_timeout)
            self.version, self.weights = latest.version, latest.weights
            current = self.store.open_round()
            self.round, self.opened, self.deadline = (
                current.round,
                current.opened,
                current.deadline,
            )
        except BaseException:
            # A store that cannot be read must not leave its handle open.
            self.store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contributions -----------------------------------------------------------------------

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Partials accepted inside are committed together (one sync to disk for all); each
        still sees the ones before it, so none is counted twice."""
        return self.store.transaction()

    def counted(self) -> dict[str, int]:
        return self.store.counted(self.round)

    def accept(self, partial: Partial, now: float | None = None) -> PartialOutcome:
        """Apply a worker's partial exactly once; stale or duplicate contributions are refused."""
        now = time.time() if now is None else now
        rows = [
            RejectionRow(r.round, r.gateway, r.reason, r.detail, now) for r in partial.rejections
        ]
        rejected: list[tuple[str, Reason]] = [(r.gateway or "-", r.reason) for r in rows]
        names = [g for g, _ in partial.contributors]
        if partial.round != self.round:
            reason = Reason.STALE if partial.round < self.round else Reason.FUTURE_ROUND
            rows += [RejectionRow(partial.round, g, reason, "", now) for g in names]
            rejected += [(g, reason) for g in names]
            self._count(rejected)
            self.store.apply(Changes(rejections=tuple(rows)))
            return PartialOutcome((), (), tuple(rejected))
        counted = self.counted()
        new = [g for g in names if g not in counted]
        dups = tuple(g for g in names if g in counted)
        if new and dups and partial.weighted_sum is not None:
            # Cannot happen by construction (redelivered updates travel alone); refuse rather
            # than count anyone twice.
            conflicts = [(g, Reason.CONFLICT) for g in names]
            self._count(rejected + conflicts)
            self.store.apply(Changes(rejections=tuple(rows)))
            return PartialOutcome((), dups, tuple(rejected + conflicts))
        self._count(rejected)
        self.rejections[Reason.DUPLICATE] += len(dups)
        contributions: list[ContributionRow] = []
        accumulator: Accumulator | None = None
        if new:
            samples = dict(partial.contributors)
            individual = {c.gateway: c for c in partial.individual}
            for g in new:
                delta = individual[g].delta if g in individual else None
                contributions.append(
                    ContributionRow(self.round, g, samples[g], delta, partial.worker, now)
                )
                metrics = partial.metrics.get(g)
                self.metrics_by_gateway[g] = dict(metrics) if isinstance(metrics, dict) else {}
            if partial.weighted_sum is not None:
                acc = partial.weighted_sum.astype(np.float32)
                total = float(partial.total_weight)
                previous = self.store.accumulator(self.round)
                if previous is not None:
                    acc = acc + previous.weighted_sum
                    total += previous.total_weight
                accumulator = Accumulator(self.round, acc, total)
        self.store.apply(Changes(tuple(rows), tuple(contributions), accumulator))
        return PartialOutcome(tuple(new), dups, tuple(rejected))

    def _count(self, rejected: list[tuple[str, Reason]]) -> None:
        for _, reason in rejected:
            self.rejections[reason] += 1

    # -- closing -----------------------------------------------------------------------------

    def should_close(self, now: float | None = None) -> CloseReason | None:
        now = time.time() if now is None else now
        if len(self.counted()) >= self.policy.quorum:
            return CloseReason.QUORUM
        if now >= self.deadline:
            return CloseReason.DEADLINE
        return None

    def close_round(self, reason: CloseReason, now: float | None = None) -> ClosedRound:
        """Aggregate, store the new global model, open the next round."""
        counted = self.counted()
        # updates were norm-bounded one by one, by the workers
        return self._close(reason, now, sorted(counted), sum(counted.values()), self._aggregate)

    def close_secure_round(
        self,
        reason: CloseReason,
        mean_delta: Vector | None,
        participants: Sequence[str],
        privacy: dict[str, Any],
        now: float | None = None,
    ) -> ClosedRound:
        """Close a round whose mean update came out of secure aggregation (None: aborted, the
        model stays); the coordinator never saw the individual updates, so there is nothing to
        count one by one: the survivors are the participants, bounded by their own clip."""
        delta = mean_delta

        def given() -> Vector:
            if delta is None:
                raise ValueError("no secure sum to apply")
            return delta

        names = sorted(participants) if delta is not None else []
        aborted = RoundOutcome.SECURE_ABORTED if delta is None else None
        return self._close(reason, now, names, 0, given, {"privacy": privacy}, aborted)

    def pooled_moments(self) -> tuple[Vector, float] | None:
        """The open round's sample-weighted mean update and its total weight, without applying
        it (a statistics round's pooled moment vector); None if nobody contributed."""
        acc = self.store.accumulator(self.round)
        if acc is None or acc.total_weight <= 0:
            return None
        mean: Vector = (acc.weighted_sum / np.float32(acc.total_weight)).astype(np.float32)
        return mean, acc.total_weight

    def close_statistics_round(
        self,
        reason: CloseReason,
        participants: Sequence[str],
        samples: int,
        report: dict[str, Any],
        now: float | None = None,
    ) -> ClosedRound:
        """Close a statistics round: its sums went into the feature scaling, not the model."""

        def unused() -> Vector:
            raise ValueError("a statistics round changes no weights")

        return self._close(
            reason,
            now,
            sorted(participants),
            samples,
            unused,
            {"feature_stats": report},
            RoundOutcome.STATISTICS,
            keep_model=True,
        )

    def _close(  # noqa: PLR0917 -- the one place every kind of round is closed
        self,
        reason: CloseReason,
        now: float | None,
        participants: list[str],
        samples: int,
        aggregate: Callable[[], Vector],
        extra: dict[str, Any] | None = None,
        outcome_override: RoundOutcome | None = None,
        *,
        keep_model: bool = False,
    ) -> ClosedRound:
        now = time.time() if now is None else now
        norm = 0.0
        aggregated = bool(participants) and len(participants) >= self.policy.min_participants
        weights, version = self.weights, self.version
        if aggregated and not keep_model:
            delta = aggregate()
            norm = float(np.linalg.norm(delta))
            weights, version = (self.weights + delta).astype(np.float32), self.version + 1
        outcome = outcome_override or RoundOutcome.of(reason, aggregated)
        closed, opened = self.round, self.opened
        report: dict[str, Any] = {
            "metrics": {g: self.metrics_by_gateway.get(g, {}) for g in participants},
            **(extra or {}),
        }
        next_round = OpenRound(closed + 1, now, now + self.policy.round_timeout)
        record = RoundRecord(
            closed,
            now,
            len(participants),
            samples,
            outcome,
            report,
            LatestModel(version, weights) if aggregated and not keep_model else None,
        )
        self.store.close_round(record, next_round)
        self.weights, self.version = weights, version
        self.round, self.opened, self.deadline = next_round.round, now, next_round.deadline
        self.metrics_by_gateway = {}
        return ClosedRound(
            closed,
            self.version,
            participants,
            samples,
            reason,
            norm,
            opened_at=opened,
            closed_at=now,
            metrics=report["metrics"],
            outcome=outcome,
        )

    def _aggregate(self) -> Vector:
        if self.strategy.needs_individual_updates:
            individual = [
                Contribution(g, n, bound_norm(delta, self.strategy.norm_bound))
                for g, n, delta in self.store.individual(self.round)
            ]
            return self.strategy.aggregate(
                float(sum(c.samples for c in individual)), None, individual
            )
        acc = self.store.accumulator(self.round)
        if acc is None:
            raise ValueError(f"round {self.round} has no partial sum to aggregate")
        return self.strategy.aggregate(acc.total_weight, acc.weighted_sum, ())

    def history(self) -> list[dict[str, Any]]:
        return self.store.history()


def quorum_for(enrolled: int, fraction: float, minimum: int) -> int:
    return max(minimum, math.ceil(enrolled * fraction), 1)
