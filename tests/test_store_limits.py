"""The store at its limits: retention at the exact age and row limits and one past them, the
per-step bound shared by samples and RR beats, the row count kept across commits and steps,
typed errors naming the file and its reason, reads with a limit, the insertion cursor across a
reopen, RR beat reads, the schema migration script, and recovery of every file of a store."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.config import StoreConfig
from gateway.store import (
    SCHEMA_VERSION,
    RetentionStep,
    RRBeatRow,
    StoredSession,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreUnusableError,
    VitalsRow,
    VitalsStore,
    _migrate_script,
    classify,
    recover_store,
    rr_beat_rows,
    vitals_row,
)
from wire.rr import BeatClass, Rhythm, RRBatch, RRBeat
from wire.vitals import Activity, EventLabel, VitalsSample

DAY = 86_400_000
NOW = 1_800_000_000_000


def _row(device: str, seq: int, ts: int, epoch: int = 0) -> VitalsRow:
    sample = VitalsSample(seq, ts, 70.0, 98.0, 33.0, 1.0, Activity.REST, EventLabel.NONE, epoch)
    return vitals_row(device, sample, 1)


def _rows(device: str, n: int, ts: int) -> list[VitalsRow]:
    """`n` samples one second apart from `ts`, seq 0..n-1."""
    return [_row(device, i, ts + i * 1000) for i in range(n)]


def _beats(device: str, n: int, start_ms: int) -> list[RRBeatRow]:
    """`n` beats 800 ms apart from `start_ms`."""
    beats = tuple(RRBeat(i * 800, 800, Rhythm.NORMAL, BeatClass.NORMAL) for i in range(n))
    return list(rr_beat_rows(device, RRBatch(0, start_ms, beats), 1))


# --- retention: age limit ---------------------------------------------------------------------


def test_default_retention_keeps_a_sample_exactly_30_days_old(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        cutoff = NOW - 30 * DAY
        store.commit([_row("d", 0, cutoff - 1), _row("d", 1, cutoff), _row("d", 2, NOW)])
        assert store.retention_step(NOW) == RetentionStep(1, done=True)
        assert [r[1] for r in store.sample_rows("d")] == [cutoff, NOW]


def test_store_defaults_match_the_configuration_defaults(tmp_path: Path) -> None:
    defaults = StoreConfig()
    with VitalsStore(tmp_path / "v.db") as store:
        assert store.max_rows == defaults.max_rows
        assert store.retention_ms == defaults.retention_days * DAY


def test_retention_without_a_time_uses_the_clock(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=30) as store:
        now = int(time.time() * 1000)
        store.commit(
            [_row("d", 0, now - 31 * DAY), _row("d", 1, now - 29 * DAY), _row("d", 2, now)]
        )
        assert store.retention_step() == RetentionStep(1, done=True)
        assert [r[0] for r in store.sample_rows("d")] == [1, 2]


# --- retention: row limit ---------------------------------------------------------------------


def test_row_limit_at_its_value_and_one_past_it(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1000, max_rows=5) as store:
        store.commit(_rows("d", 5, NOW))
        assert store.retention_step(NOW) == RetentionStep(0, done=True)
        assert store.count() == 5
        store.commit([_row("d", 5, NOW + 5000)])
        assert store.retention_step(NOW) == RetentionStep(1, done=True)
        assert [r[0] for r in store.sample_rows("d")] == [1, 2, 3, 4, 5]  # the oldest went


def test_retention_under_both_limits_deletes_nothing(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1, max_rows=20) as store:
        store.commit(_rows("d", 10, NOW - DAY // 2))
        store.commit_all([], _beats("d", 4, NOW - DAY // 2))
        assert store.retention_step(NOW) == RetentionStep(0, done=True)
        assert store.enforce_retention(NOW) == 0
        assert store.count() == 10
        assert store.beat_count() == 4


def test_row_count_follows_every_commit_and_step(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with VitalsStore(path, retention_days=1000, max_rows=5) as store:
        store.commit(_rows("d", 8, NOW))
        assert store.retention_step(NOW) == RetentionStep(3, done=True)
        store.commit([_row("d", 8 + i, NOW + (8 + i) * 1000) for i in range(3)])
        assert store.retention_step(NOW) == RetentionStep(3, done=True)
        assert [r[0] for r in store.sample_rows("d")] == [6, 7, 8, 9, 10]
        store.commit([_row("e", 0, NOW + 20_000)])
    # reopened: the count is read from the file
    with VitalsStore(path, retention_days=1000, max_rows=5) as reopened:
        assert reopened.retention_step(NOW) == RetentionStep(1, done=True)
        assert reopened.count() == 5
        assert reopened.count("e") == 1


def test_one_step_never_deletes_more_than_its_limit(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1, max_rows=20) as store:
        # 4 too old, then 40 recent rows: 24 over the limit once the old ones are gone
        store.commit(_rows("old", 4, NOW - 3 * DAY) + _rows("new", 40, NOW - DAY // 2))
        assert store.retention_step(NOW, limit=10) == RetentionStep(10, done=False)
        assert store.count("old") == 0
        assert store.sample_rows("new")[0][0] == 6
        assert store.retention_step(NOW, limit=10) == RetentionStep(10, done=False)
        assert store.retention_step(NOW, limit=10) == RetentionStep(4, done=True)
        assert store.count() == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rows": 0}, r"^max_rows=0 must be >= 1$"),
        ({"max_rows": -5}, r"^max_rows=-5 must be >= 1$"),
        ({"retention_days": 0.0}, r"^retention_days=0\.0 must be > 0$"),
        ({"retention_days": float("nan")}, r"^retention_days=nan must be > 0$"),
    ],
)
def test_limits_a_retention_could_never_meet_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VitalsStore(tmp_path / "v.sqlite3", **kwargs)
    assert not (tmp_path / "v.sqlite3").exists()  # refused before anything is created


def test_the_smallest_limits_are_taken_and_a_step_of_zero_rows_is_refused(
    tmp_path: Path,
) -> None:
    with VitalsStore(tmp_path / "v.sqlite3", max_rows=1, retention_days=1e-9) as store:
        assert store.retention_step(limit=1).deleted == 0
        with pytest.raises(ValueError, match=r"^retention step limit=0 must be >= 1$"):
            store.retention_step(limit=0)


def test_a_step_filled_by_samples_leaves_old_beats_for_the_next(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1) as store:
        store.commit_all(_rows("d", 10, NOW - 3 * DAY), _beats("d", 3, NOW - 3 * DAY))
        assert store.retention_step(NOW, limit=10) == RetentionStep(10, done=False)
        assert store.beat_count() == 3
        assert store.retention_step(NOW, limit=10) == RetentionStep(3, done=True)
        assert store.beat_count() == 0


def test_old_beats_share_the_step_limit_with_samples(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1) as store:
        store.commit_all(_rows("d", 4, NOW - 3 * DAY), _beats("strap", 20, NOW - 3 * DAY))
        assert store.retention_step(NOW, limit=10) == RetentionStep(10, done=False)
        assert store.count() == 0
        assert store.beat_count() == 14
        # exactly as many old beats as the step allows: not known to be done yet
        assert store.retention_step(NOW, limit=14) == RetentionStep(14, done=False)
        assert store.retention_step(NOW, limit=14) == RetentionStep(0, done=True)


def test_enforce_retention_counts_every_step(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1) as store:
        store.commit(_rows("d", 5_001, NOW - 3 * DAY))
        assert store.enforce_retention(NOW) == 5_001
        assert store.count() == 0
        store.commit(_rows("e", 5_000, NOW - 3 * DAY))
        assert store.enforce_retention(NOW) == 5_000
        assert store.count() == 0


# --- commits ----------------------------------------------------------------------------------


def test_session_update_time_is_the_commit_time_in_ms(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with VitalsStore(path) as store:
        before = int(time.time() * 1000)
        store.commit([], [StoredSession(b"s" * 8, "d", b"state")])
        after = int(time.time() * 1000)
    with closing(sqlite3.connect(path)) as db:
        (updated,) = db.execute("SELECT updated_ms FROM sessions").fetchone()
    assert before <= updated <= after


def test_a_store_opened_in_one_thread_commits_from_another(tmp_path: Path) -> None:
    store = VitalsStore(tmp_path / "v.db")
    results: list[object] = []

    def work() -> None:
        try:
            results.append(store.commit(_rows("d", 3, NOW)))
        except Exception as exc:  # handed back to the test thread
            results.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert results == [3]
    assert store.count() == 3
    store.close()


class _RollbackFails:
    """A connection whose ROLLBACK fails, as it may when the medium is failing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.strip().upper() == "ROLLBACK":
            raise sqlite3.OperationalError("cannot rollback")
        return self._db.execute(sql, *args)


def test_a_failing_rollback_does_not_hide_the_real_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = VitalsStore(tmp_path / "v.db")
    real = store._db
    monkeypatch.setattr(store, "_db", _RollbackFails(real))
    with pytest.raises(sqlite3.ProgrammingError, match="bindings"):
        store.commit([("d", 0, 1)])  # type: ignore[list-item]
    real.rollback()
    real.close()


def test_full_database_names_the_file_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    store = VitalsStore(path)
    store._db.execute("PRAGMA max_page_count=10")
    rows = [_row("d", i, NOW + i) for i in range(5_000)]
    with pytest.raises(StoreFullError) as caught:
        store.commit(rows)
    assert caught.value.path == path
    assert caught.value.reason.startswith("SQLITE_FULL: ")
    assert store.count() == 0
    assert store.commit(rows[:1]) == 1  # small enough: the store still works
    store.close()


# --- typed errors -----------------------------------------------------------------------------


def test_store_error_keeps_path_and_reason(tmp_path: Path) -> None:
    err = StoreError(tmp_path / "v.db", "why")
    assert (err.path, err.reason) == (tmp_path / "v.db", "why")
    assert str(err) == f"{tmp_path / 'v.db'}: why"


def test_classify_by_primary_result_code(tmp_path: Path) -> None:
    path = tmp_path / "v.db"

    def error(code: int, name: str | None, message: str) -> sqlite3.Error:
        exc = sqlite3.OperationalError(message)
        exc.sqlite_errorcode = code
        if name is not None:
            exc.sqlite_errorname = name
        return exc

    # 522 = SQLITE_IOERR_SHORT_READ: the primary code is in the low byte
    io = classify(error(522, "SQLITE_IOERR_SHORT_READ", "disk I/O error"), path)
    assert type(io) is StoreIOError
    assert (io.path, io.reason) == (path, "SQLITE_IOERR_SHORT_READ: disk I/O error")
    # without a name, the generic one
    nameless = classify(error(10, None, "disk I/O error"), path)
    assert type(nameless) is StoreIOError
    assert nameless.reason == "SQLITE_ERROR: disk I/O error"
    full = classify(error(13, None, "database or disk is full"), path)
    assert type(full) is StoreFullError
    assert (full.path, full.reason) == (path, "SQLITE_ERROR: database or disk is full")
    corrupt = classify(error(779, "SQLITE_CORRUPT_INDEX", "malformed"), path)
    assert type(corrupt) is StoreUnusableError
    assert corrupt.path == path
    # programming errors surface as they are: a real syntax error and a real constraint error
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (1)")
    for sql in ("SELEC 1", "INSERT INTO t VALUES (1)"):
        with pytest.raises(sqlite3.Error) as caught:
            db.execute(sql)
        assert classify(caught.value, path) is None
    db.close()


def test_a_file_in_place_of_the_directory_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(b"a file")
    path = tmp_path / "state" / "v.db"
    with pytest.raises(StoreUnusableError) as caught:
        VitalsStore(path)
    assert caught.value.path == path
    assert caught.value.reason == "FileExistsError: File exists"
    assert isinstance(caught.value.__cause__, FileExistsError)


def test_a_directory_in_place_of_the_file_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    path.mkdir()
    with pytest.raises(StoreUnusableError) as caught:
        VitalsStore(path)
    assert caught.value.path == path
    assert caught.value.reason == "is a directory, not a database file"


def test_the_store_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "v.db"
    with VitalsStore(path) as store:
        assert store.path == path
        assert store.commit(_rows("d", 2, NOW)) == 2
    assert path.is_file()


def test_a_foreign_vitals_table_is_unusable_and_left_intact(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE vitals (device_id TEXT, seq INTEGER, ts_ms INTEGER)")
        db.execute("INSERT INTO vitals VALUES ('d', 1, 2)")
        db.commit()
    with pytest.raises(StoreUnusableError) as caught:
        VitalsStore(path)
    assert caught.value.path == path
    assert caught.value.reason == "OperationalError: no such column: heart_rate"
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT * FROM vitals").fetchall() == [("d", 1, 2)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"vitals"}


def test_programming_errors_on_a_closed_store_surface_as_they_are(tmp_path: Path) -> None:
    store = VitalsStore(tmp_path / "v.db")
    store.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.checkpoint()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.retention_step(NOW)


# --- schema -----------------------------------------------------------------------------------


def test_a_fresh_store_records_its_schema_version(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        assert store.schema_version() == SCHEMA_VERSION == 3
    with closing(sqlite3.connect(tmp_path / "v.db")) as db:
        assert db.execute("SELECT key, value FROM meta").fetchall() == [("schema", "3")]


def test_migration_script_numbers_schema_1_rows_in_time_order(tmp_path: Path) -> None:
    with closing(sqlite3.connect(tmp_path / "v.db", isolation_level=None)) as db:
        db.executescript(
            "CREATE TABLE vitals (device_id TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER "
            "NOT NULL, heart_rate REAL, spo2 REAL, skin_temp REAL, accel REAL, activity "
            "INTEGER NOT NULL, label INTEGER NOT NULL, received_ms INTEGER NOT NULL, PRIMARY "
            "KEY (device_id, seq)) WITHOUT ROWID;"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )
        # stored out of time order
        for seq, ts in ((2, 300), (0, 100), (1, 200)):
            db.execute("INSERT INTO vitals VALUES ('d', ?, ?, 70, 98, 33, 1, 0, 0, 1)", (seq, ts))
        db.executescript(_migrate_script("0", "ts_ms, seq"))
        rows = db.execute("SELECT ins, epoch, seq, ts_ms FROM vitals ORDER BY ins").fetchall()
        assert rows == [(1, 0, 0, 100), (2, 0, 1, 200), (3, 0, 2, 300)]
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
        assert not db.in_transaction


# --- reads ------------------------------------------------------------------------------------


def test_reopening_keeps_every_insertion_number(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with VitalsStore(path, retention_days=1000, max_rows=3) as store:
        # inserted out of time order: seq 2 (newest) first
        store.commit([_row("d", 2, NOW + 2000)])
        store.commit([_row("d", 0, NOW), _row("d", 1, NOW + 1000)])
        store.commit([_row("d", 3, NOW + 3000)])
        assert store.retention_step(NOW) == RetentionStep(1, done=True)  # seq 0 goes
        assert store.insertion_cursor() == 4
    with VitalsStore(path, retention_days=1000, max_rows=3) as reopened:
        assert reopened.insertion_cursor() == 4
        # rows 2 and 3 (seq 1 and seq 3) arrived after cursor 1
        assert [r[0] for r in reopened.sample_rows_after("d", 1)] == [1, 3]
        assert reopened.sample_rows_after("d", 4) == []
        reopened.commit([_row("d", 4, NOW + 4000)])
        assert reopened.insertion_cursor() == 5


def test_rows_after_a_cursor_with_a_limit(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        store.commit(_rows("d", 3, NOW))
        cursor = store.insertion_cursor()
        store.commit([_row("d", 3 + i, NOW + (3 + i) * 1000) for i in range(4)])
        assert [r[0] for r in store.sample_rows_after("d", cursor, limit=2)] == [5, 6]
        assert [r[0] for r in store.sample_rows_after("d", cursor, limit=1)] == [6]
        assert store.sample_rows_after("d", cursor, limit=0) == []
        with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
            store.sample_rows_after("d", cursor, limit=-1)


def test_beats_are_counted_listed_and_read_per_device(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        assert store.beat_count() == 0
        assert store.beat_devices() == []
        strap = _beats("strap", 5, NOW)
        store.commit_all([], [*_beats("watch", 2, NOW), *strap])
        assert store.beat_count() == 7
        assert store.beat_count("strap") == 5
        assert store.beat_count("watch") == 2
        assert store.beat_count("nobody") == 0
        assert store.beat_devices() == ["strap", "watch"]
        newest = [(r[1], r[2], r[4], r[5]) for r in strap[3:]]
        assert store.beat_rows("strap", limit=2) == newest
        assert store.beat_rows("strap", limit=0) == []
        assert len(store.beat_rows("strap", limit=9)) == 5
        with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
            store.beat_rows("strap", limit=-1)


# --- recovery ---------------------------------------------------------------------------------


def test_recover_moves_the_database_wal_and_shared_memory_aside(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    path.write_bytes(b"garbage" * 100)
    (tmp_path / "v.db-wal").write_bytes(b"wal")
    (tmp_path / "v.db-shm").write_bytes(b"shm")
    aside = recover_store(path, now=86_400 + 3_661)
    assert aside == tmp_path / "v.db.broken-19700102T010101Z"
    assert aside.read_bytes() == b"garbage" * 100
    assert (tmp_path / "v.db.broken-19700102T010101Z-wal").read_bytes() == b"wal"
    assert (tmp_path / "v.db.broken-19700102T010101Z-shm").read_bytes() == b"shm"
    with VitalsStore(path) as fresh:
        assert fresh.count() == 0
