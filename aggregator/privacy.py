"""Differential-privacy accounting of federated rounds with Google's dp-accounting (RDP), and a
ledger in the coordinator's SQLite database that refuses a round which would exceed the budget.

Each round is a Poisson-sampled Gaussian event: gateways take part with probability q and the
sum of their clipped updates carries Gaussian noise of z times the clip (gateway-level DP)."""

from __future__ import annotations

import enum
import math
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dp_accounting

from aggregator.errors import AggregatorError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    round INTEGER PRIMARY KEY,
    epsilon REAL NOT NULL,          -- cumulative, at `delta`, after this round
    delta REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    sampling_fraction REAL NOT NULL,
    recorded_at REAL NOT NULL
)
"""


class PrivacyLedgerError(AggregatorError):
    """Bad accounting parameters, or a round recorded twice or out of order."""


@dataclass(frozen=True, slots=True)
class PrivacyParameters:
    """The noise each round carries, the gateway sampling rate, the delta epsilon is stated
    at, and the epsilon budget (None: accounted, never refused)."""

    noise_multiplier: float
    sampling_fraction: float
    delta: float
    budget_epsilon: float | None = None

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0.0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyLedgerError(f"noise multiplier {self.noise_multiplier} must be > 0")
        if not 0.0 < self.sampling_fraction <= 1.0:
            raise PrivacyLedgerError(f"sampling fraction {self.sampling_fraction} not in (0, 1]")
        if not 0.0 < self.delta < 1.0:
            raise PrivacyLedgerError(f"delta {self.delta} not in (0, 1)")
        if self.budget_epsilon is not None and not self.budget_epsilon > 0.0:
            raise PrivacyLedgerError(f"epsilon budget {self.budget_epsilon} must be > 0")


def _round_event(noise_multiplier: float, sampling_fraction: float) -> dp_accounting.DpEvent:
    # Imported here: dp-accounting pulls in SciPy (seconds of start-up and tens of MB), which
    # a coordinator without a privacy budget and every crypto worker never need.
    import dp_accounting  # noqa: PLC0415

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_fraction == 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_fraction, gaussian)


def epsilon_after(
    noise_multiplier: float, sampling_fraction: float, rounds: int, delta: float
) -> float:
    """Epsilon at `delta` after `rounds` identical rounds (RDP accountant, default orders)."""
    PrivacyParameters(noise_multiplier, sampling_fraction, delta)  # validates
    if rounds < 0:
        raise PrivacyLedgerError(f"rounds {rounds} must be >= 0")
    if rounds == 0:
        return 0.0  # nothing released yet (the accountant refuses a count of 0)
    from dp_accounting import rdp  # noqa: PLC0415 -- see _round_event

    accountant = rdp.RdpAccountant()
    accountant.compose(_round_event(noise_multiplier, sampling_fraction), rounds)
    return float(accountant.get_epsilon(delta))


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """Whether the next round may start, with the epsilon before and after it."""

    verdict: Verdict
    round_id: int
    epsilon_spent: float
    epsilon_after: float
    budget_epsilon: float | None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    round_id: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_fraction: float


class PrivacyLedger:
    """Cumulative privacy loss over the rounds recorded in `privacy_ledger`.

    Rounds may differ in noise and sampling; epsilon is recomputed by composing every recorded
    round's event, so the figure is the accountant's, never a sum of per-round epsilons."""

    def __init__(self, db: sqlite3.Connection, params: PrivacyParameters) -> None:
        self._db = db
        self.params = params
        with db:
            db.execute(_SCHEMA)

    def entries(self) -> list[LedgerEntry]:
        rows = self._db.execute(
            "SELECT round, epsilon, delta, noise_multiplier, sampling_fraction "
            "FROM privacy_ledger ORDER BY round"
        ).fetchall()
        return [
            LedgerEntry(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows
        ]

    def epsilon_spent(self) -> float:
        row = self._db.execute(
            "SELECT epsilon FROM privacy_ledger ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return 0.0 if row is None else float(row[0])

    def _epsilon_with_next(self) -> float:
        # Composition is commutative: each distinct (noise, sampling) is composed once with its
        # count, so n identical rounds give exactly epsilon_after(..., n, ...).
        p = self.params
        counts = Counter((e.noise_multiplier, e.sampling_fraction) for e in self.entries())
        counts[(p.noise_multiplier, p.sampling_fraction)] += 1
        from dp_accounting import rdp  # noqa: PLC0415 -- see _round_event

        accountant = rdp.RdpAccountant()
        for (noise, fraction), count in sorted(counts.items()):
            accountant.compose(_round_event(noise, fraction), count)
        return float(accountant.get_epsilon(p.delta))

    def check(self, round_id: int) -> BudgetDecision:
        """May round `round_id` start? OVER_BUDGET if its noise would take the cumulative
        epsilon past the budget; a round that lands exactly on the budget is allowed."""
        spent = self.epsilon_spent()
        after = self._epsilon_with_next()
        budget = self.params.budget_epsilon
        verdict = Verdict.ALLOWED if budget is None or after <= budget else Verdict.OVER_BUDGET
        return BudgetDecision(verdict, round_id, spent, after, budget)

    def record(self, decision: BudgetDecision) -> LedgerEntry:
        """Record a round that `check` allowed and that then released its aggregate."""
        if not decision.allowed:
            raise PrivacyLedgerError(f"round {decision.round_id} was refused: not recorded")
        last = self._db.execute("SELECT MAX(round) FROM privacy_ledger").fetchone()[0]
        if last is not None and decision.round_id <= int(last):
            raise PrivacyLedgerError(f"round {decision.round_id} is not after round {last}")
        p = self.params
        entry = LedgerEntry(
            decision.round_id,
            decision.epsilon_after,
            p.delta,
            p.noise_multiplier,
            p.sampling_fraction,
        )
        with self._db:
            self._db.execute(
                "INSERT INTO privacy_ledger VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.round_id,
                    entry.epsilon,
                    entry.delta,
                    entry.noise_multiplier,
                    entry.sampling_fraction,
                    time.time(),
                ),
            )
        return entry
