"""The coordinator's privacy gate on its real SQLite database: epsilon per round equals
dp-accounting's for the same noise, sampling and rounds; the budget refuses the round that
would pass it (logged, not raised); `iomt-aggregator status` reports the epsilon spent."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp

from aggregator.secure_rounds import PrivacyGate

Z, DELTA = 0.9, 1e-5


def reference(z: float, q: float, rounds: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def test_gate_epsilon_is_dp_accountings_for_participants_over_enrolled(tmp_path: Path) -> None:
    gate = PrivacyGate(tmp_path / "coordinator.sqlite3", Z, DELTA, None)
    spent = []
    for round_id in range(1, 4):
        decision = gate.check(round_id, 3, 5)  # sampling fraction 3 / 5
        assert decision is not None
        assert decision.allowed
        spent.append(gate.record(decision))
    assert spent == [reference(Z, 0.6, n, DELTA) for n in (1, 2, 3)]
    assert gate.epsilon() == reference(Z, 0.6, 3, DELTA)
    gate.close()


def test_budget_refuses_the_round_past_it_and_status_shows_epsilon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    two_rounds = _full(Z, 2)
    gate = PrivacyGate(state / "coordinator.sqlite3", Z, DELTA, two_rounds)  # exactly 2 rounds
    for round_id in (1, 2):
        decision = gate.check(round_id, 4, 4)
        assert decision is not None
        assert decision.allowed  # the second lands exactly on the budget: allowed
        gate.record(decision)
    with caplog.at_level(logging.WARNING, logger="aggregator.secure_rounds"):
        refused = gate.check(3, 4, 4)
    assert refused is not None
    assert not refused.allowed
    assert refused.epsilon_after == _full(Z, 3)
    assert [r.getMessage().split()[0] for r in caplog.records] == ["privacy_budget_exhausted"]
    gate.close()

    config = tmp_path / "aggregator.toml"
    config.write_text(
        '[aggregator]\nid = "aggregator"\nstate_dir = "state"\n'
        f"[training]\nclip_norm = 1.0\nnoise_multiplier = {Z}\nsecure_aggregation = true\n"
        f"[privacy]\ndelta = {DELTA}\nbudget_epsilon = {two_rounds}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "aggregator.cli", "status", "--config", str(config)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    privacy = json.loads(out.stdout)["privacy"]
    assert privacy["epsilon"] == two_rounds
    assert privacy["rounds_accounted"] == 2
    assert privacy["delta"] == DELTA
    assert privacy["secure_aggregation"] is True


def _full(z: float, rounds: int) -> float:
    """Every enrolled gateway asked: no sampling amplification (dp-accounting's own figure)."""
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return float(accountant.get_epsilon(DELTA))
