"""The coordinator's round store on its own: where the database file goes and its journal
mode; that a failed or interrupted change leaves every table as it was (nothing lost, nothing
counted twice); the running partial sum as read back; the closed-round history; and which
rounds, contributions, rejections and models `keep_rounds` keeps, at its edges."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
from aggregator.strategies import Vector
from wire.reasons import Reason

TIMEOUT = 30.0
START = 1000.0


def _vec(*values: float) -> Vector:
    return np.array(values, np.float32)


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()


def _started(path: Path, *, keep_rounds: int | None = None) -> RoundStore:
    """A store with model version 0 (all zeros) and round 1 open at START."""
    store = RoundStore(path) if keep_rounds is None else RoundStore(path, keep_rounds=keep_rounds)
    store.initialise(_vec(0.0, 0.0, 0.0), START, START + TIMEOUT)
    return store


def _contribute(store: RoundStore, round_: int, gateway: str, samples: int) -> None:
    store.apply(
        Changes(
            rejections=(RejectionRow(round_, "gw-bad", Reason.STALE, "late", START + round_),),
            contributions=(
                ContributionRow(round_, gateway, samples, None, "worker-1", START + round_),
            ),
        )
    )


def _close(store: RoundStore, round_: int, version: int | None) -> None:
    """Close `round_` at START + 10 * round_ (with model `version` holding all `version`s, or
    no new model) and open the next round at the same instant."""
    closed = START + 10.0 * round_
    model = None
    if version is not None:
        model = LatestModel(version, _vec(version, version, version))
    record = RoundRecord(round_, closed, 1, 10, "quorum", {"n": round_}, model)
    store.close_round(record, OpenRound(round_ + 1, closed, closed + TIMEOUT))


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "state" / "coordinator" / "rounds.db"
    store = _started(path)
    store.close()
    assert path.is_file()
    assert _rows(path, "SELECT version, round FROM models") == [(0, 1)]


def test_database_file_is_in_wal_mode(tmp_path: Path) -> None:
    store = RoundStore(tmp_path / "c.db")
    store.close()
    assert _rows(tmp_path / "c.db", "PRAGMA journal_mode") == [("wal",)]


def test_initialise_writes_model_zero_and_opens_round_one(tmp_path: Path) -> None:
    store = _started(tmp_path / "c.db")
    latest = store.latest_model()
    assert latest is not None
    assert latest.version == 0
    assert latest.weights.tolist() == [0.0, 0.0, 0.0]
    assert store.open_round() == OpenRound(1, START, START + TIMEOUT)
    assert store.history() == []
    store.close()


def test_second_initialise_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = _started(tmp_path / "c.db")
    with pytest.raises(sqlite3.IntegrityError):
        store.initialise(_vec(9.0, 9.0, 9.0), START + 5.0, START + 5.0 + TIMEOUT)
    assert store.open_round() == OpenRound(1, START, START + TIMEOUT)
    latest = store.latest_model()
    assert latest is not None
    assert latest.weights.tolist() == [0.0, 0.0, 0.0]
    # the failed attempt left no transaction open: the next change commits
    _contribute(store, 1, "gw-01", 7)
    store.close()
    assert _rows(tmp_path / "c.db", "SELECT gateway, samples FROM contributions") == [("gw-01", 7)]


def test_accumulator_reads_back_the_round_its_sum_and_its_weight(tmp_path: Path) -> None:
    store = _started(tmp_path / "c.db")
    assert store.accumulator(1) is None
    store.apply(Changes(accumulator=Accumulator(1, _vec(1.5, -2.0, 0.25), 12.0)))
    acc = store.accumulator(1)
    assert acc is not None
    assert acc.round == 1
    assert acc.weighted_sum.tolist() == [1.5, -2.0, 0.25]
    assert acc.total_weight == 12.0
    assert store.accumulator(2) is None
    # a later partial sum for the same round replaces the earlier one
    store.apply(Changes(accumulator=Accumulator(1, _vec(3.0, 3.0, 3.0), 20.0)))
    again = store.accumulator(1)
    assert again is not None
    assert (again.round, again.weighted_sum.tolist(), again.total_weight) == (
        1,
        [3.0, 3.0, 3.0],
        20.0,
    )
    # closing the round drops its partial sum
    _close(store, 1, 1)
    assert store.accumulator(1) is None
    store.close()


def test_failed_close_leaves_the_round_open_with_everything_counted(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path)
    _contribute(store, 1, "gw-01", 10)
    store.apply(Changes(accumulator=Accumulator(1, _vec(1.0, 2.0, 3.0), 10.0)))
    # model version 0 exists already: the last statement of the close fails
    with pytest.raises(sqlite3.IntegrityError):
        _close(store, 1, 0)
    assert store.open_round() == OpenRound(1, START, START + TIMEOUT)
    assert store.history() == []
    assert store.counted(1) == {"gw-01": 10}
    acc = store.accumulator(1)
    assert acc is not None
    assert (acc.weighted_sum.tolist(), acc.total_weight) == ([1.0, 2.0, 3.0], 10.0)
    assert _rows(path, "SELECT round, closed FROM rounds") == [(1, None)]
    assert _rows(path, "SELECT version FROM models") == [(0,)]
    # the same close with a new version goes through afterwards
    _close(store, 1, 1)
    assert store.open_round() == OpenRound(2, START + 10.0, START + 10.0 + TIMEOUT)
    assert [h["round"] for h in store.history()] == [1]
    store.close()


def test_close_into_an_existing_round_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = _started(tmp_path / "c.db")
    record = RoundRecord(1, START + 10.0, 0, 0, "deadline_empty")
    with pytest.raises(sqlite3.IntegrityError):
        store.close_round(record, OpenRound(1, START + 10.0, START + 40.0))
    assert store.open_round() == OpenRound(1, START, START + TIMEOUT)
    assert store.history() == []
    store.close()


def test_transaction_commits_its_changes_together_and_reads_see_them(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path)
    with store.transaction():
        _contribute(store, 1, "gw-01", 10)
        assert store.counted(1) == {"gw-01": 10}
        _contribute(store, 1, "gw-02", 20)
    store.close()
    assert _rows(path, "SELECT gateway, samples FROM contributions ORDER BY 1") == [
        ("gw-01", 10),
        ("gw-02", 20),
    ]
    assert _rows(path, "SELECT count(*) FROM rejections") == [(2,)]


def test_transaction_that_raises_keeps_none_of_its_changes(tmp_path: Path) -> None:
    store = _started(tmp_path / "c.db")
    _contribute(store, 1, "gw-01", 10)

    def lost_midway() -> None:
        with store.transaction():
            _contribute(store, 1, "gw-02", 20)
            store.apply(Changes(accumulator=Accumulator(1, _vec(1.0, 1.0, 1.0), 20.0)))
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        lost_midway()
    assert store.counted(1) == {"gw-01": 10}
    assert store.accumulator(1) is None
    store.close()
    assert _rows(tmp_path / "c.db", "SELECT count(*) FROM rejections") == [(1,)]


def test_a_duplicate_contribution_is_refused_with_its_rejections(tmp_path: Path) -> None:
    store = _started(tmp_path / "c.db")
    _contribute(store, 1, "gw-01", 10)
    with pytest.raises(sqlite3.IntegrityError):
        _contribute(store, 1, "gw-01", 99)
    assert store.counted(1) == {"gw-01": 10}
    store.close()
    assert _rows(tmp_path / "c.db", "SELECT count(*) FROM rejections") == [(1,)]


def test_history_lists_closed_rounds_in_order_with_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path)
    _close(store, 1, 1)
    store.close_round(
        RoundRecord(2, START + 25.0, 0, 0, "deadline_empty"),
        OpenRound(3, START + 25.0, START + 55.0),
    )
    assert store.history() == [
        {
            "round": 1,
            "opened": START,
            "closed": START + 10.0,
            "participants": 1,
            "samples": 10,
            "reason": "quorum",
        },
        {
            "round": 2,
            "opened": START + 10.0,
            "closed": START + 25.0,
            "participants": 0,
            "samples": 0,
            "reason": "deadline_empty",
        },
    ]
    store.close()
    reports = _rows(path, "SELECT report FROM rounds WHERE closed IS NOT NULL ORDER BY round")
    assert [json.loads(r) for (r,) in reports] == [{"n": 1}, {}]
    assert _rows(path, "SELECT version, round FROM models ORDER BY 1") == [(0, 1), (1, 2)]


def test_default_store_keeps_every_round_and_model(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path)
    for r in (1, 2, 3):
        _contribute(store, r, f"gw-{r}", r)
        _close(store, r, r)
    latest = store.latest_model()
    assert latest is not None
    assert (latest.version, latest.weights.tolist()) == (3, [3.0, 3.0, 3.0])
    assert [h["round"] for h in store.history()] == [1, 2, 3]
    store.close()
    assert _rows(path, "SELECT version FROM models ORDER BY 1") == [(0,), (1,), (2,), (3,)]
    assert _rows(path, "SELECT round FROM contributions ORDER BY 1") == [(1,), (2,), (3,)]
    assert _rows(path, "SELECT round FROM rejections ORDER BY 1") == [(1,), (2,), (3,)]


def test_keep_rounds_keeps_exactly_the_newest_rounds_and_models(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path, keep_rounds=2)
    expected = {
        # closed round: (closed rounds kept, models kept, rounds with contributions kept)
        1: ([1], [0, 1], [1]),
        2: ([1, 2], [1, 2], [1, 2]),
        3: ([2, 3], [2, 3], [2, 3]),
        4: ([3, 4], [3, 4], [3, 4]),
    }
    for r, (rounds, models, contributed) in expected.items():
        _contribute(store, r, f"gw-{r}", r)
        _close(store, r, r)
        assert [h["round"] for h in store.history()] == rounds
        assert [v for (v,) in _rows(path, "SELECT version FROM models ORDER BY 1")] == models
        kept = _rows(path, "SELECT round FROM contributions ORDER BY 1")
        assert [k for (k,) in kept] == contributed
        rejected = _rows(path, "SELECT round FROM rejections ORDER BY 1")
        assert [k for (k,) in rejected] == contributed
        assert store.open_round().round == r + 1
    store.close()


def test_rounds_closed_without_a_model_prune_rounds_but_keep_the_model(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path, keep_rounds=1)
    _contribute(store, 1, "gw-01", 10)
    _close(store, 1, None)
    _contribute(store, 2, "gw-02", 20)
    _close(store, 2, None)
    assert [h["round"] for h in store.history()] == [2]
    latest = store.latest_model()
    assert latest is not None
    assert (latest.version, latest.weights.tolist()) == (0, [0.0, 0.0, 0.0])
    assert store.open_round() == OpenRound(3, START + 20.0, START + 20.0 + TIMEOUT)
    assert store.counted(1) == {}
    assert store.counted(2) == {"gw-02": 20}
    store.close()
    assert _rows(path, "SELECT version FROM models") == [(0,)]


def _reject(store: RoundStore, round_: int | None, at: float) -> None:
    store.apply(Changes(rejections=(RejectionRow(round_, None, Reason.MALFORMED, "", at),)))


def test_refusals_of_no_round_or_a_future_round_expire_with_the_rounds_kept(
    tmp_path: Path,
) -> None:
    """An unreadable update has no round and a forged one may claim any future round: with
    keep_rounds their rows go once older than the oldest kept round's opening, so hostile
    traffic cannot grow the database without bound; refusals of kept rounds stay."""
    path = tmp_path / "c.db"
    store = _started(path, keep_rounds=2)  # round r opens at START + 10 (r - 1)
    _reject(store, None, START + 0.5)  # during round 1
    _reject(store, 2**62, START + 0.6)
    _reject(store, 3, START + 0.7)  # a refusal of round 3 made early: kept with round 3
    _reject(store, None, START + 25.0)  # during round 3

    def left() -> list[tuple[Any, ...]]:
        return _rows(path, "SELECT round, at FROM rejections ORDER BY at")

    _close(store, 1, 1)
    _close(store, 2, 2)  # oldest kept: round 1, opened at START
    assert left() == [
        (None, START + 0.5),
        (2**62, START + 0.6),
        (3, START + 0.7),
        (None, START + 25.0),
    ]
    _close(store, 3, 3)  # oldest kept: round 2, opened at START + 10
    assert left() == [(3, START + 0.7), (None, START + 25.0)]
    _close(store, 4, 4)  # rounds 3 and 4 kept: round 3 opened at START + 20
    assert left() == [(3, START + 0.7), (None, START + 25.0)]
    _close(store, 5, 5)  # round 3 goes with its refusals; round 4 opened at START + 30
    assert left() == []
    store.close()


def test_a_refusal_at_the_oldest_kept_opening_exactly_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = _started(path, keep_rounds=1)
    _reject(store, None, START + 10.0)  # round 2 opens at START + 10
    _reject(store, None, START + 9.999)
    _close(store, 1, 1)
    _close(store, 2, 2)  # oldest kept: round 2
    assert _rows(path, "SELECT at FROM rejections") == [(START + 10.0,)]
    store.close()
