"""The round coordinator on known answers: which partials count and which are refused, with
what reason and where it is recorded; what a plain, a secure and a statistics round report
and store when they close; the pooled moments of a statistics round; the round outcome of
each close; and the quorum and deadline at their edges."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.partials import Rejection, make_partial
from aggregator.rounds import (
    ClosedRound,
    CloseReason,
    RoundCoordinator,
    RoundOutcome,
    RoundPolicy,
    quorum_for,
)
from aggregator.strategies import Contribution, FedAvg, Strategy, Vector
from wire.fl import RoundSettings
from wire.reasons import Reason

from .test_aggregator_logic import N, _partial

TIMEOUT = 30.0


def _coordinator(
    tmp_path: Path,
    strategy: Strategy | None = None,
    *,
    quorum: int = 2,
    min_participants: int = 1,
    keep_rounds: int | None = None,
) -> RoundCoordinator:
    policy = RoundPolicy(quorum, TIMEOUT, min_participants)
    initial = np.zeros(N, np.float32)
    if keep_rounds is None:
        return RoundCoordinator(tmp_path / "c.db", strategy or FedAvg(), policy, initial)
    return RoundCoordinator(
        tmp_path / "c.db", strategy or FedAvg(), policy, initial, keep_rounds=keep_rounds
    )


def _rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "c.db")
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()


def _report(tmp_path: Path, round_: int) -> Any:
    (text,) = _rows(tmp_path, f"SELECT report FROM rounds WHERE round = {round_}")[0]
    return json.loads(text)


def _full(value: float) -> Vector:
    return np.full(N, value, np.float32)


@dataclass
class _Recorder:
    """A rule that keeps what the coordinator hands it and moves every weight by 0.5."""

    individual_updates: bool
    norm_bound: float | None = None
    name: str = "recorder"
    calls: list[tuple[float, Vector | None, tuple[Contribution, ...] | None]] = field(
        default_factory=list
    )

    @property
    def needs_individual_updates(self) -> bool:
        return self.individual_updates

    def configure_round(self, round_: int, *, final: bool = False) -> RoundSettings:
        return RoundSettings(final=final)

    def aggregate(
        self, total_weight: float, weighted_sum: Vector | None, individual: Sequence[Contribution]
    ) -> Vector:
        self.calls.append(
            (total_weight, weighted_sum, None if individual is None else tuple(individual))
        )
        return _full(0.5)


def _assert_pooled(coord: RoundCoordinator, value: float, total: float) -> None:
    pooled = coord.pooled_moments()
    assert pooled is not None
    mean, weight = pooled
    assert mean.dtype == np.float32
    assert (mean.tolist(), weight) == ([value] * N, total)


# -- outcomes, quorum and deadline -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "aggregated", "outcome"),
    [
        (CloseReason.QUORUM, True, RoundOutcome.QUORUM),
        (CloseReason.QUORUM, False, RoundOutcome.QUORUM_TOO_FEW),
        (CloseReason.DEADLINE, True, RoundOutcome.DEADLINE),
        (CloseReason.DEADLINE, False, RoundOutcome.DEADLINE_TOO_FEW),
    ],
)
def test_outcome_names_the_close_reason_and_whether_the_model_changed(
    reason: CloseReason, aggregated: bool, outcome: RoundOutcome
) -> None:
    assert RoundOutcome.of(reason, aggregated) is outcome


@pytest.mark.parametrize(
    ("enrolled", "fraction", "minimum", "quorum"),
    [(0, 0.5, 0, 1), (5, 0.0, 0, 1), (1, 0.5, 0, 1), (3, 0.5, 0, 2), (2, 0.5, 3, 3)],
)
def test_quorum_is_at_least_one_gateway(
    enrolled: int, fraction: float, minimum: int, quorum: int
) -> None:
    assert quorum_for(enrolled, fraction, minimum) == quorum


def test_deadline_closes_at_exactly_the_timeout_after_opening(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        coord.close_round(CloseReason.DEADLINE, now=1000.0)
        assert (coord.round, coord.opened, coord.deadline) == (2, 1000.0, 1000.0 + TIMEOUT)
        assert _rows(tmp_path, "SELECT opened, deadline FROM rounds WHERE round = 2") == [
            (1000.0, 1030.0)
        ]
        assert coord.should_close(now=math.nextafter(1030.0, 0.0)) is None
        assert coord.should_close(now=1030.0) is CloseReason.DEADLINE
        assert coord.should_close(now=1031.0) is CloseReason.DEADLINE


def test_quorum_closes_at_exactly_the_quorum(tmp_path: Path) -> None:
    with _coordinator(tmp_path, quorum=2) as coord:
        early = coord.opened
        coord.accept(_partial(1, ("gw-01", 10, 1.0)), now=early)
        assert coord.should_close(now=early) is None
        coord.accept(_partial(1, ("gw-02", 10, 1.0)), now=early)
        assert coord.should_close(now=early) is CloseReason.QUORUM


def test_every_closed_round_is_kept_by_default(tmp_path: Path) -> None:
    with _coordinator(tmp_path, quorum=1) as coord:
        for r, at in ((1, 1000.0), (2, 1100.0), (3, 1200.0)):
            coord.accept(_partial(r, ("gw-01", 10, 0.5)), now=at)
            coord.close_round(CloseReason.QUORUM, now=at + 1)
        assert [h["round"] for h in coord.history()] == [1, 2, 3]
        assert _rows(tmp_path, "SELECT version FROM models ORDER BY 1") == [(0,), (1,), (2,), (3,)]


# -- accepting partials ------------------------------------------------------------------------


def test_a_partials_own_rejections_are_recorded_with_its_contributions(tmp_path: Path) -> None:
    rejections = [
        Rejection(Reason.WRONG_SHAPE, "gw-05", 1, "13 values"),
        Rejection(Reason.WRONG_SHAPE, "gw-06", 1, "11 values"),
        Rejection(Reason.MALFORMED, None, None),
    ]
    contributions = [Contribution("gw-01", 10, _full(1.0))]
    partial = make_partial("w7", 1, contributions, False, rejections)
    with _coordinator(tmp_path) as coord:
        out = coord.accept(partial, now=1000.0)
        assert out.accepted == ("gw-01",)
        assert out.duplicates == ()
        assert out.rejected == (
            ("gw-05", Reason.WRONG_SHAPE),
            ("gw-06", Reason.WRONG_SHAPE),
            ("-", Reason.MALFORMED),
        )
        assert coord.rejections == Counter({"wrong_shape": 2, "malformed": 1})
        assert coord.counted() == {"gw-01": 10}
    assert _rows(tmp_path, "SELECT * FROM rejections") == [
        (1, "gw-05", "wrong_shape", "13 values", 1000.0),
        (1, "gw-06", "wrong_shape", "11 values", 1000.0),
        (None, None, "malformed", "", 1000.0),
    ]
    assert _rows(
        tmp_path, "SELECT round, gateway, samples, delta, worker, received FROM contributions"
    ) == [(1, "gw-01", 10, None, "w7", 1000.0)]


def test_a_clean_partial_is_refused_nothing(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        out = coord.accept(_partial(1, ("gw-01", 10, 1.0)), now=1000.0)
        assert (out.accepted, out.duplicates, out.rejected) == (("gw-01",), (), ())
        assert coord.rejections == Counter()
    assert _rows(tmp_path, "SELECT count(*) FROM rejections") == [(0,)]


@pytest.mark.parametrize(("round_", "reason"), [(1, Reason.STALE), (3, Reason.FUTURE_ROUND)])
def test_a_partial_for_another_round_is_refused_whole(
    tmp_path: Path, round_: int, reason: Reason
) -> None:
    own = Rejection(Reason.NON_FINITE, "gw-04", round_, "nan at 3")
    partial = make_partial(
        "w",
        round_,
        [Contribution("gw-03", 5, _full(1.0)), Contribution("gw-07", 5, _full(2.0))],
        False,
        [own],
    )
    with _coordinator(tmp_path) as coord:
        coord.close_round(CloseReason.DEADLINE, now=1000.0)  # round 2 is open
        out = coord.accept(partial, now=1005.0)
        assert (out.accepted, out.duplicates) == ((), ())
        assert out.rejected == (
            ("gw-04", Reason.NON_FINITE),
            ("gw-03", reason),
            ("gw-07", reason),
        )
        assert coord.rejections == Counter({"non_finite": 1, str(reason): 2})
        assert coord.counted() == {}
        assert coord.pooled_moments() is None
    assert _rows(tmp_path, "SELECT * FROM rejections") == [
        (round_, "gw-04", "non_finite", "nan at 3", 1005.0),
        (round_, "gw-03", str(reason), "", 1005.0),
        (round_, "gw-07", str(reason), "", 1005.0),
    ]


def test_each_redelivery_counts_as_one_more_duplicate(tmp_path: Path) -> None:
    with _coordinator(tmp_path, quorum=3) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0)))
        for _ in range(2):
            out = coord.accept(_partial(1, ("gw-01", 10, 1.0)))
            assert (out.accepted, out.duplicates, out.rejected) == ((), ("gw-01",), ())
        assert coord.rejections == Counter({"duplicate": 2})
        assert coord.counted() == {"gw-01": 10}
        _assert_pooled(coord, 1.0, 10.0)


def test_a_partial_sum_mixing_new_and_counted_gateways_is_refused(tmp_path: Path) -> None:
    own = Rejection(Reason.WRONG_SHAPE, "gw-09", 1, "3 values")
    mixed = make_partial(
        "w",
        1,
        [Contribution("gw-01", 10, _full(1.0)), Contribution("gw-02", 30, _full(3.0))],
        False,
        [own],
    )
    with _coordinator(tmp_path, quorum=3) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0)), now=1000.0)
        out = coord.accept(mixed, now=1001.0)
        assert out.accepted == ()
        assert out.duplicates == ("gw-01",)
        assert out.rejected == (
            ("gw-09", Reason.WRONG_SHAPE),
            ("gw-01", Reason.CONFLICT),
            ("gw-02", Reason.CONFLICT),
        )
        assert coord.rejections == Counter({"wrong_shape": 1, "conflict": 2})
        assert coord.counted() == {"gw-01": 10}  # gw-02's share of the sum cannot be told apart
        _assert_pooled(coord, 1.0, 10.0)
    assert (1, "gw-09", "wrong_shape", "3 values", 1001.0) in _rows(
        tmp_path, "SELECT * FROM rejections"
    )


def test_individual_updates_mixing_new_and_counted_gateways_count_the_new(
    tmp_path: Path,
) -> None:
    with _coordinator(tmp_path, quorum=3) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0), individual=True))
        out = coord.accept(_partial(1, ("gw-01", 10, 1.0), ("gw-02", 30, 3.0), individual=True))
        assert (out.accepted, out.duplicates, out.rejected) == (("gw-02",), ("gw-01",), ())
        assert coord.rejections == Counter({"duplicate": 1})
        assert coord.counted() == {"gw-01": 10, "gw-02": 30}


# -- closing a plain round ---------------------------------------------------------------------


def test_a_closed_round_reports_and_stores_its_result(tmp_path: Path) -> None:
    metrics = {"gw-02": {"loss": 0.5, "windows": 7}, "gw-01": "not a mapping"}
    partial = make_partial(
        "w",
        1,
        [Contribution("gw-02", 30, _full(3.0)), Contribution("gw-01", 10, _full(1.0))],
        False,
        metrics=metrics,
    )
    with _coordinator(tmp_path) as coord:
        opened = coord.opened
        coord.accept(partial, now=1000.0)
        closed = coord.close_round(CloseReason.QUORUM, now=1020.0)
        expected_metrics = {"gw-01": {}, "gw-02": {"loss": 0.5, "windows": 7}}
        assert closed == ClosedRound(
            1,
            1,
            ["gw-01", "gw-02"],
            40,
            CloseReason.QUORUM,
            closed.update_norm,
            opened_at=opened,
            closed_at=1020.0,
            metrics=expected_metrics,
            outcome=RoundOutcome.QUORUM,
        )
        # the mean update (10 * 1 + 30 * 3) / 40 = 2.5 on each of the N weights
        assert closed.update_norm == pytest.approx(2.5 * math.sqrt(N), rel=1e-6)
        assert coord.weights.tolist() == [2.5] * N
        assert (coord.version, coord.round) == (1, 2)
        assert coord.history() == [
            {
                "round": 1,
                "opened": opened,
                "closed": 1020.0,
                "participants": 2,
                "samples": 40,
                "reason": "quorum",
            }
        ]
        assert _report(tmp_path, 1) == {"metrics": expected_metrics}
        # the next round starts without the previous round's metrics
        coord.accept(_partial(2, ("gw-02", 10, 0.0)), now=1021.0)
        after = coord.close_round(CloseReason.DEADLINE, now=1050.0)
        assert after.metrics == {"gw-02": {}}
        assert (after.opened_at, after.outcome) == (1020.0, RoundOutcome.DEADLINE)


def test_a_round_with_too_few_keeps_the_model_and_reports_no_update(tmp_path: Path) -> None:
    with _coordinator(tmp_path, min_participants=2) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0)), now=1000.0)
        closed = coord.close_round(CloseReason.DEADLINE, now=1030.0)
        assert (closed.version, closed.update_norm) == (0, 0.0)
        assert (closed.participants, closed.samples) == (["gw-01"], 10)
        assert closed.outcome is RoundOutcome.DEADLINE_TOO_FEW
        assert coord.weights.tolist() == [0.0] * N
        assert [h["reason"] for h in coord.history()] == ["deadline_too_few"]


def test_a_summing_rule_gets_the_rounds_sum_and_no_individual_updates(tmp_path: Path) -> None:
    rule = _Recorder(individual_updates=False)
    with _coordinator(tmp_path, rule) as coord:
        coord.accept(_partial(1, ("gw-01", 10, 1.0), ("gw-02", 30, 3.0)))
        closed = coord.close_round(CloseReason.QUORUM, now=1000.0)
    ((total, weighted_sum, individual),) = rule.calls
    assert total == 40.0
    assert weighted_sum is not None
    assert weighted_sum.tolist() == [100.0] * N
    assert individual == ()
    assert closed.update_norm == pytest.approx(0.5 * math.sqrt(N), rel=1e-6)


def test_a_robust_rule_gets_each_update_bounded_in_gateway_order(tmp_path: Path) -> None:
    # gw-02's update has norm 3 sqrt(N): scaled to the bound 2 sqrt(N), it is 2 everywhere
    rule = _Recorder(individual_updates=True, norm_bound=2.0 * math.sqrt(N))
    with _coordinator(tmp_path, rule) as coord:
        coord.accept(_partial(1, ("gw-02", 30, 3.0), ("gw-01", 10, 1.0), individual=True))
        coord.close_round(CloseReason.QUORUM, now=1000.0)
        assert coord.weights.tolist() == [0.5] * N
    ((total, weighted_sum, individual),) = rule.calls
    assert (total, weighted_sum) == (40.0, None)
    assert individual is not None
    assert [(c.gateway, c.samples) for c in individual] == [("gw-01", 10), ("gw-02", 30)]
    assert individual[0].delta.tolist() == [1.0] * N
    assert individual[1].delta == pytest.approx(_full(2.0), rel=1e-6)


# -- secure and statistics rounds --------------------------------------------------------------


def test_a_secure_round_applies_the_given_mean(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        opened = coord.opened
        closed = coord.close_secure_round(
            CloseReason.QUORUM, _full(0.25), ["gw-02", "gw-01"], {"epsilon": 1.5}, now=1000.0
        )
        assert closed == ClosedRound(
            1,
            1,
            ["gw-01", "gw-02"],
            0,
            CloseReason.QUORUM,
            closed.update_norm,
            opened_at=opened,
            closed_at=1000.0,
            metrics={"gw-01": {}, "gw-02": {}},
            outcome=RoundOutcome.QUORUM,
        )
        assert closed.update_norm == pytest.approx(0.25 * math.sqrt(N), rel=1e-6)
        assert coord.weights.tolist() == [0.25] * N
        assert (coord.round, coord.opened, coord.deadline) == (2, 1000.0, 1000.0 + TIMEOUT)
        assert [(h["participants"], h["samples"], h["reason"]) for h in coord.history()] == [
            (2, 0, "quorum")
        ]
    assert _report(tmp_path, 1) == {
        "metrics": {"gw-01": {}, "gw-02": {}},
        "privacy": {"epsilon": 1.5},
    }


def test_an_aborted_secure_round_keeps_the_model(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        opened = coord.opened
        closed = coord.close_secure_round(
            CloseReason.DEADLINE, None, ["gw-01", "gw-02"], {"epsilon": 0.0}, now=1000.0
        )
        assert closed == ClosedRound(
            1,
            0,
            [],
            0,
            CloseReason.DEADLINE,
            0.0,
            opened_at=opened,
            closed_at=1000.0,
            metrics={},
            outcome=RoundOutcome.SECURE_ABORTED,
        )
        assert coord.weights.tolist() == [0.0] * N
        assert (coord.round, coord.version) == (2, 0)
        assert [(h["participants"], h["reason"]) for h in coord.history()] == [
            (0, "secure_aborted")
        ]
    assert _report(tmp_path, 1) == {"metrics": {}, "privacy": {"epsilon": 0.0}}


def test_a_statistics_round_pools_the_moments_and_keeps_the_model(tmp_path: Path) -> None:
    partial = make_partial(
        "w",
        1,
        [Contribution("gw-02", 30, _full(3.0)), Contribution("gw-01", 10, _full(1.0))],
        False,
        metrics={"gw-01": {"windows": 10}},
    )
    with _coordinator(tmp_path) as coord:
        opened = coord.opened
        coord.accept(partial, now=1000.0)
        pooled = coord.pooled_moments()
        assert pooled is not None
        mean, total = pooled
        assert mean.dtype == np.float32
        assert mean.tolist() == [2.5] * N  # (10 * 1 + 30 * 3) / 40
        assert total == 40.0
        closed = coord.close_statistics_round(
            CloseReason.QUORUM, ["gw-02", "gw-01"], 40, {"features": N}, now=1010.0
        )
        assert closed == ClosedRound(
            1,
            0,
            ["gw-01", "gw-02"],
            40,
            CloseReason.QUORUM,
            0.0,
            opened_at=opened,
            closed_at=1010.0,
            metrics={"gw-01": {"windows": 10}, "gw-02": {}},
            outcome=RoundOutcome.STATISTICS,
        )
        assert coord.weights.tolist() == [0.0] * N
        assert (coord.round, coord.version, coord.deadline) == (2, 0, 1010.0 + TIMEOUT)
        assert coord.pooled_moments() is None  # the next round has pooled nothing yet
        assert [(h["participants"], h["samples"], h["reason"]) for h in coord.history()] == [
            (2, 40, "statistics")
        ]
    assert _report(tmp_path, 1) == {
        "metrics": {"gw-01": {"windows": 10}, "gw-02": {}},
        "feature_stats": {"features": N},
    }
    assert _rows(tmp_path, "SELECT version FROM models") == [(0,)]


def test_no_moments_are_pooled_before_anyone_contributes(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        assert coord.pooled_moments() is None


def test_no_moments_are_pooled_from_a_total_weight_of_zero(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        coord.accept(_partial(1, ("gw-01", 0, 0.75)))
        assert coord.counted() == {"gw-01": 0}
        assert coord.pooled_moments() is None


def test_moments_are_pooled_from_a_total_weight_of_one(tmp_path: Path) -> None:
    with _coordinator(tmp_path) as coord:
        coord.accept(_partial(1, ("gw-01", 1, 0.75)))
        _assert_pooled(coord, 0.75, 1.0)
