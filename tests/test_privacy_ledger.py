"""The privacy ledger (aggregator.privacy) against dp-accounting's own figures, and its budget
stop at exactly the limit and just past it, over a real SQLite file."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from aggregator.privacy import (
    LedgerEntry,
    PrivacyLedger,
    PrivacyLedgerError,
    PrivacyParameters,
    Verdict,
    epsilon_after,
)

Z, Q, DELTA = 1.1, 0.2, 1e-5


def reference_rdp(z: float, q: float, rounds: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("z", "q", "rounds"), [(1.1, 0.2, 1), (1.1, 0.2, 50), (0.8, 0.5, 20)])
def test_epsilon_after_is_dp_accountings_figure(z: float, q: float, rounds: int) -> None:
    assert epsilon_after(z, q, rounds, DELTA) == reference_rdp(z, q, rounds, DELTA)


def test_rdp_figure_bounds_the_tighter_pld_figure() -> None:
    # The PLD accountant is tighter than RDP: ours (RDP) must not claim less than it.
    accountant = pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z))
    accountant.compose(event, 30)
    tight = float(accountant.get_epsilon(DELTA))
    ours = epsilon_after(Z, Q, 30, DELTA)
    assert tight <= ours < 1.5 * tight


def test_full_participation_is_the_plain_gaussian() -> None:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(2.0), 10)
    assert epsilon_after(2.0, 1.0, 10, DELTA) == float(accountant.get_epsilon(DELTA))
    assert epsilon_after(2.0, 1.0, 0, DELTA) == 0.0


LedgerAt = Callable[[Path, float | None], PrivacyLedger]


@pytest.fixture
def ledger_at() -> Iterator[LedgerAt]:
    """Ledgers on database files; their connections are closed when the test ends."""
    opened: list[sqlite3.Connection] = []

    def make(path: Path, budget: float | None) -> PrivacyLedger:
        opened.append(sqlite3.connect(path))
        return PrivacyLedger(opened[-1], PrivacyParameters(Z, Q, DELTA, budget))

    yield make
    for con in opened:
        con.close()


def test_ledger_records_cumulative_epsilon(tmp_path: Path, ledger_at: LedgerAt) -> None:
    ledger = ledger_at(tmp_path / "coordinator.sqlite3", None)
    for round_id in range(1, 6):
        decision = ledger.check(round_id)
        assert decision.allowed
        entry = ledger.record(decision)
        assert entry.epsilon == reference_rdp(Z, Q, round_id, DELTA)
    assert ledger.epsilon_spent() == reference_rdp(Z, Q, 5, DELTA)
    # durable: a new ledger on the same file continues where the last stopped
    again = ledger_at(tmp_path / "coordinator.sqlite3", None)
    assert [e.round_id for e in again.entries()] == [1, 2, 3, 4, 5]
    assert again.check(6).epsilon_after == reference_rdp(Z, Q, 6, DELTA)


def test_budget_exactly_at_the_limit_and_just_past_it(tmp_path: Path, ledger_at: LedgerAt) -> None:
    limit = reference_rdp(Z, Q, 3, DELTA)
    ledger = ledger_at(tmp_path / "a.sqlite3", limit)
    for round_id in (1, 2, 3):  # the third lands exactly on the budget: allowed
        ledger.record(ledger.check(round_id))
    assert ledger.epsilon_spent() == limit
    refused = ledger.check(4)
    assert refused.verdict is Verdict.OVER_BUDGET
    assert refused.epsilon_spent == limit
    assert refused.epsilon_after == reference_rdp(Z, Q, 4, DELTA)
    with pytest.raises(PrivacyLedgerError, match="round 4 was refused: not recorded"):
        ledger.record(refused)
    assert len(ledger.entries()) == 3
    # a budget one ulp below the third round's epsilon refuses the third round
    tight = ledger_at(tmp_path / "b.sqlite3", math.nextafter(limit, 0.0))
    tight.record(tight.check(1))
    tight.record(tight.check(2))
    assert tight.check(3).verdict is Verdict.OVER_BUDGET


def test_rounds_recorded_in_order_once(tmp_path: Path, ledger_at: LedgerAt) -> None:
    ledger = ledger_at(tmp_path / "c.sqlite3", None)
    ledger.record(ledger.check(5))
    with pytest.raises(PrivacyLedgerError, match="round 5 is not after round 5"):
        ledger.record(ledger.check(5))
    with pytest.raises(PrivacyLedgerError, match="round 4 is not after round 5"):
        ledger.record(ledger.check(4))


def test_parameter_limits() -> None:
    PrivacyParameters(1.0, 1.0, 0.5)
    with pytest.raises(
        PrivacyLedgerError, match=r"sampling fraction 1.0000000000000002 not in \(0, 1\]"
    ):
        PrivacyParameters(1.0, math.nextafter(1.0, 2.0), 0.5)
    with pytest.raises(PrivacyLedgerError, match=r"sampling fraction 0.0 not"):
        PrivacyParameters(1.0, 0.0, 0.5)
    with pytest.raises(PrivacyLedgerError, match=r"noise multiplier 0.0 must be > 0"):
        PrivacyParameters(0.0, 0.5, 0.5)
    with pytest.raises(PrivacyLedgerError, match=r"delta 1.0 not in \(0, 1\)"):
        PrivacyParameters(1.0, 0.5, 1.0)
    with pytest.raises(PrivacyLedgerError, match=r"epsilon budget 0.0 must be > 0"):
        PrivacyParameters(1.0, 0.5, 0.5, 0.0)
    with pytest.raises(PrivacyLedgerError, match="rounds -1 must be >= 0"):
        epsilon_after(1.0, 0.5, -1, 1e-5)


def test_a_fresh_ledger_has_spent_nothing(tmp_path: Path, ledger_at: LedgerAt) -> None:
    ledger = ledger_at(tmp_path / "d.sqlite3", 2.0)
    assert ledger.entries() == []
    assert ledger.epsilon_spent() == 0.0
    first = ledger.check(1)
    assert (first.epsilon_spent, first.budget_epsilon) == (0.0, 2.0)
    assert first.epsilon_after == reference_rdp(Z, Q, 1, DELTA)
    assert ledger_at(tmp_path / "e.sqlite3", None).check(1).budget_epsilon is None


def test_entries_read_back_exactly_what_was_recorded(tmp_path: Path, ledger_at: LedgerAt) -> None:
    ledger = ledger_at(tmp_path / "f.sqlite3", None)
    for round_id in (3, 7):
        ledger.record(ledger.check(round_id))
    again = ledger_at(tmp_path / "f.sqlite3", None)
    assert again.entries() == [
        LedgerEntry(3, reference_rdp(Z, Q, 1, DELTA), DELTA, Z, Q),
        LedgerEntry(7, reference_rdp(Z, Q, 2, DELTA), DELTA, Z, Q),
    ]


def test_delta_and_budget_just_inside_their_open_bounds() -> None:
    tiny = math.nextafter(0.0, 1.0)
    assert PrivacyParameters(1.0, 0.5, tiny).delta == tiny
    with pytest.raises(PrivacyLedgerError, match=r"^delta 0.0 not in \(0, 1\)$"):
        PrivacyParameters(1.0, 0.5, 0.0)
    assert PrivacyParameters(1.0, 0.5, 0.5, 0.5).budget_epsilon == 0.5
    assert PrivacyParameters(1.0, 0.5, 0.5, tiny).budget_epsilon == tiny
