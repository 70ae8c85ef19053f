"""The coordinator's privacy gate and the mean it applies after a secure round, without a
broker: no noise, no ledger (nothing checked, recorded or spent); the sampling fraction is
participants over enrolled, capped at 1 and safe with no gateway enrolled; what is checked
and recorded is logged with its figures; the gate works from any thread; the mean update is
the survivors' plain or sample-weighted mean, None when the round gave no sum."""

from __future__ import annotations

import logging
import math
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from aggregator.privacy import BudgetDecision, Verdict
from aggregator.secure_round import SecureRoundReport, plan_round
from aggregator.secure_rounds import PrivacyGate, mean_update
from pqlink.secagg import AggregateResult, RoundAborted
from wire.fl import RoundSettings
from wire.secagg import SecureRoundAnnouncement

Z, DELTA = 0.9, 1e-5


def _sampled(q: float, rounds: int) -> float:
    """dp-accounting's epsilon for `rounds` Poisson-sampled Gaussian rounds."""
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(Z))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(DELTA))


def _full(rounds: int) -> float:
    """dp-accounting's epsilon for `rounds` rounds asking every enrolled gateway."""
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(Z), rounds)
    return float(accountant.get_epsilon(DELTA))


def _rows(db: Path) -> list[tuple[int, float, float, float, float]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT round, epsilon, delta, noise_multiplier, sampling_fraction "
            "FROM privacy_ledger ORDER BY round"
        ).fetchall()
    con.close()
    return [tuple(r) for r in rows]


def _gate_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gate's own lines (the accountant logs too)."""
    return [r.getMessage() for r in caplog.records if r.name == "aggregator.secure_rounds"]


# --- PrivacyGate ----------------------------------------------------------------------------


def test_without_noise_the_gate_keeps_no_ledger(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.sqlite3"
    gate = PrivacyGate(db, 0.0, DELTA, 1.0)
    assert not gate.enabled
    assert gate.check(1, 3, 5) is None
    assert gate.record(None) is None
    anyway = BudgetDecision(Verdict.ALLOWED, 1, 0.0, 0.5, None)
    assert gate.record(anyway) is None
    assert gate.epsilon() == 0.0
    gate.close()
    with sqlite3.connect(db) as con:
        tables = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    con.close()
    assert tables == []


def test_any_noise_at_all_turns_the_ledger_on(tmp_path: Path) -> None:
    gate = PrivacyGate(tmp_path / "coordinator.sqlite3", 1e-3, DELTA, None)
    assert gate.enabled
    decision = gate.check(1, 2, 2)
    assert decision is not None
    assert decision.allowed
    gate.close()


def test_the_sampling_fraction_is_participants_over_enrolled_at_most_one(
    tmp_path: Path,
) -> None:
    gate = PrivacyGate(tmp_path / "coordinator.sqlite3", Z, DELTA, None)
    for participants, enrolled, want in (
        (1, 2, _sampled(0.5, 1)),
        (1, 1, _full(1)),
        (5, 4, _full(1)),  # more asked than enrolled: every one of them, no more
        (1, 0, _full(1)),  # nobody enrolled yet: taken as one
    ):
        decision = gate.check(1, participants, enrolled)
        assert decision is not None
        assert decision.epsilon_after == want, (participants, enrolled)
    gate.close()


def test_a_recorded_round_is_logged_and_kept_with_its_figures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "coordinator.sqlite3"
    gate = PrivacyGate(db, Z, DELTA, None)
    decision = gate.check(1, 3, 5)
    with caplog.at_level(logging.INFO, logger="aggregator.secure_rounds"):
        spent = gate.record(decision)
    want = _sampled(0.6, 1)
    assert spent == want
    assert _gate_log(caplog) == [
        f"privacy_spent round=1 epsilon={want:.6g} delta=1e-05 fraction=0.6"
    ]
    assert _rows(db) == [(1, want, DELTA, Z, 0.6)]
    assert gate.epsilon() == want
    gate.close()


def test_recording_no_decision_spends_nothing(tmp_path: Path) -> None:
    gate = PrivacyGate(tmp_path / "coordinator.sqlite3", Z, DELTA, None)
    assert gate.record(None) is None
    assert gate.epsilon() == 0.0
    gate.close()


def test_a_decision_recorded_before_any_check_counts_every_gateway(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.sqlite3"
    gate = PrivacyGate(db, Z, DELTA, None)
    assert gate.record(BudgetDecision(Verdict.ALLOWED, 1, 0.0, 0.25, None)) == 0.25
    assert _rows(db) == [(1, 0.25, DELTA, Z, 1.0)]
    gate.close()


def test_a_refused_round_is_logged_with_its_figures_and_the_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budget = _full(2)
    gate = PrivacyGate(tmp_path / "coordinator.sqlite3", Z, DELTA, budget)
    for round_id in (1, 2):
        gate.record(gate.check(round_id, 4, 4))
    with caplog.at_level(logging.WARNING, logger="aggregator.secure_rounds"):
        refused = gate.check(3, 4, 4)
    assert refused is not None
    assert not refused.allowed
    assert _gate_log(caplog) == [
        f"privacy_budget_exhausted round=3 epsilon_spent={_full(2):.6g} "
        f"epsilon_after={_full(3):.6g} budget={budget} delta=1e-05"
    ]
    gate.close()


def test_the_gate_answers_from_a_thread_other_than_its_opener(tmp_path: Path) -> None:
    gate = PrivacyGate(tmp_path / "coordinator.sqlite3", Z, DELTA, None)

    def one_round() -> tuple[float | None, float]:
        return gate.record(gate.check(1, 4, 4)), gate.epsilon()

    with ThreadPoolExecutor(max_workers=1) as pool:
        spent, total = pool.submit(one_round).result(timeout=60)
    assert (spent, total) == (_full(1), _full(1))
    gate.close()


# --- mean_update ----------------------------------------------------------------------------

SETTINGS = RoundSettings(clip_norm=1.0, secure_aggregation=True, precision_bits=12)


def _report(
    a: SecureRoundAnnouncement, signed: list[int], survivors: tuple[int, ...]
) -> SecureRoundReport:
    enc = a.round_config().encoding
    total = enc.to_ring(np.array(signed, dtype=np.int64))
    dropped = tuple(u for u in a.participants.values() if u not in survivors)
    return SecureRoundReport(a, AggregateResult(a.round, total, survivors, dropped, enc))


def test_no_mean_without_a_sum() -> None:
    a = plan_round(1, ["gw0", "gw1", "gw2"], SETTINGS, 3)
    assert mean_update(SecureRoundReport(a)) is None
    aborted = RoundAborted(1, "inputs", "too_few_survivors", "1 inputs")
    assert mean_update(SecureRoundReport(a, aborted)) is None
    assert mean_update(_report(a, [0, 0, 0], ())) is None


def test_the_plain_mean_divides_the_decoded_sum_by_the_survivors() -> None:
    a = plan_round(1, ["gw0", "gw1", "gw2"], SETTINGS, 3)
    # one quantisation unit is 1 / 4095: three survivors summing to 3, -2 and 1
    mean = mean_update(_report(a, [3 * 4095, -2 * 4095, 4095], (1, 2, 3)))
    assert mean is not None
    assert mean.dtype == np.float32
    assert np.array_equal(mean, np.array([1.0, -2.0 / 3.0, 1.0 / 3.0], dtype=np.float32))
    # two survivors, one dropped: the mean is over the two
    mean = mean_update(_report(a, [2 * 4095, -4095, 0], (1, 3)))
    assert mean is not None
    assert np.array_equal(mean, np.array([1.0, -0.5, 0.0], dtype=np.float32))


def test_the_weighted_mean_divides_by_the_summed_weights() -> None:
    settings = RoundSettings(clip_norm=2.0, secure_aggregation=True, precision_bits=12)
    a = plan_round(1, ["gw0", "gw1", "gw2"], settings, 2, weight_cap=4)
    # sum of w x and of w C, on the same scale: the mean is C * sum(w x) / sum(w C)
    mean = mean_update(_report(a, [2500, -1250, 5000], (1, 2)))
    assert mean is not None
    assert mean.dtype == np.float32
    assert np.array_equal(mean, np.array([1.0, -0.5], dtype=np.float32))


def test_the_weighted_mean_floors_the_weights_at_one_sample_per_survivor() -> None:
    settings = RoundSettings(clip_norm=2.0, secure_aggregation=True, precision_bits=12)
    a = plan_round(1, ["gw0", "gw1", "gw2"], settings, 2, weight_cap=4)
    # one sample each weighs 1/4: w C quantises to (2^12 - 1) / sqrt(2) / 4, so two survivors
    # weigh at least 4095 / (2 sqrt(2)); a noisy weight sum of 10 is raised to that
    mean = mean_update(_report(a, [4095, 0, 10], (1, 2)))
    assert mean is not None
    # 2 * 4095 / (4095 / (2 sqrt(2))) = 4 sqrt(2)
    assert mean.tolist() == pytest.approx([4 * math.sqrt(2.0), 0.0], rel=1e-6)
