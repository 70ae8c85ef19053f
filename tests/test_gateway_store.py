"""The SQLite store and the session table: dedupe by boot epoch, atomic session state,
bounded retention, typed errors for broken files and full disks, recovery, bounds."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.sessions import RateLimiter, SessionEntry, SessionTable
from gateway.spool import Spool
from gateway.store import (
    SCHEMA_VERSION,
    RetentionStep,
    StoredSession,
    StoreFullError,
    StoreUnusableError,
    VitalsStore,
    recover_store,
    rr_beat_rows,
    vitals_row,
)
from pqlink import HandshakeInitiator, HandshakeResponder, Session
from wire.rr import BeatClass, Rhythm, RRBatch, RRBeat
from wire.vitals import Activity, EventLabel, VitalsSample

from .conftest import Parties
from .harness import small_tmpfs


def _sample(seq: int, ts: int = 1_700_000_000_000) -> VitalsSample:
    return VitalsSample(
        seq, ts + seq * 1000, 70.5, 97.25, 33.1, 1.02, Activity.WALK, EventLabel.NONE
    )


def test_rows_are_stored_once_and_read_back(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        rows = [vitals_row("dev-1", _sample(i), 1) for i in range(10)]
        assert store.commit(rows) == 10
        assert store.commit([*rows[5:], vitals_row("dev-1", _sample(10), 1)]) == 1
        assert store.count() == 11
        assert store.samples("dev-1")[3] == _sample(3)
        assert store.devices() == ["dev-1"]
        with closing(sqlite3.connect(tmp_path / "v.db")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newest_rows_in_time_order(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        # committed out of order and interleaved with another device
        store.commit([vitals_row("dev-1", _sample(i), 1) for i in (5, 1, 4, 0, 3, 2)])
        store.commit([vitals_row("dev-2", _sample(i + 100), 1) for i in range(3)])
        rows = store.sample_rows("dev-1")
        assert [r[0] for r in rows] == [0, 1, 2, 3, 4, 5]
        assert rows[2] == (2, _sample(2).timestamp_ms, 70.5, 97.25, 33.1, 1.02, Activity.WALK, 0)
        assert [r[0] for r in store.sample_rows("dev-1", limit=4)] == [2, 3, 4, 5]
        assert store.sample_rows("dev-1", limit=0) == []
        assert [s.seq for s in store.samples("dev-1", limit=2)] == [4, 5]
        assert store.samples("dev-1", limit=3) == [_sample(i) for i in (3, 4, 5)]
        assert store.sample_rows("nobody") == []
        with pytest.raises(ValueError, match="limit"):
            store.sample_rows("dev-1", limit=-1)


def test_session_state_commits_with_rows(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        store.commit([], [StoredSession(b"s" * 8, "dev-1", b"state-1")])
        store.commit([], [StoredSession(b"s" * 8, "dev-1", b"state-2")])
        assert store.load_sessions() == [StoredSession(b"s" * 8, "dev-1", b"state-2")]
        store.commit([], [], [b"s" * 8])
        assert store.load_sessions() == []
    with VitalsStore(tmp_path / "v.db") as reopened:
        assert reopened.load_sessions() == []


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db") as store:
        bad = [vitals_row("dev-1", _sample(0), 1), ("dev-1", 1, 2)]  # second row too short
        with pytest.raises(sqlite3.ProgrammingError):
            store.commit(bad, [StoredSession(b"x" * 8, "dev-1", b"s")])  # type: ignore[arg-type]
        assert store.count() == 0
        assert store.load_sessions() == []


def test_retention_by_age_and_row_limit(tmp_path: Path) -> None:
    with VitalsStore(tmp_path / "v.db", retention_days=1, max_rows=1000) as store:
        day = 86_400_000
        now = 10 * day
        old = [vitals_row("a", _sample(i, now - 3 * day), 1) for i in range(100)]
        new = [vitals_row("b", _sample(i, now - day // 2), 1) for i in range(1200)]
        store.commit(old + new)
        # one step does it all (well under its 5,000-row bound), and then nothing is left
        assert store.retention_step(now) == RetentionStep(100 + 200, done=True)
        assert store.enforce_retention(now) == 0
        assert store.count("a") == 0
        assert store.count("b") == 1000
        assert store.samples("b")[0].seq == 200  # the oldest went first


def _open_handles(path: Path) -> int:
    """How many of this process's file descriptors point at `path` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


def test_store_and_spool_close_their_file_on_exit_and_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with VitalsStore(path) as store:
        assert _open_handles(path) == 1
    assert _open_handles(path) == 0
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        store.count()
    with Spool(tmp_path / "spool.db") as spool:
        assert _open_handles(tmp_path / "spool.db") == 1
    assert _open_handles(tmp_path / "spool.db") == 0
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        spool.depth()
    # Not a database: the constructor fails, and its handle is closed, not left to the collector.
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, " * 256)
    # (the store names the file as unusable; the spool passes SQLite's own error on)
    openers: list[tuple[Callable[[Path], object], type[Exception]]] = [
        (VitalsStore, StoreUnusableError),
        (Spool, sqlite3.DatabaseError),
    ]
    for opener, error in openers:
        with pytest.raises(error, match="not a database"):
            opener(junk)
        assert _open_handles(junk) == 0


def test_retention_prunes_old_rr_beats_in_bounded_steps(tmp_path: Path) -> None:
    store = VitalsStore(tmp_path / "v.db", retention_days=1)
    day = 86_400_000
    now = 10 * day
    old = RRBatch(
        0,
        now - 3 * day,
        tuple(RRBeat(i * 800, 800, Rhythm.NORMAL, BeatClass.NORMAL) for i in range(30)),
    )
    new = RRBatch(
        1,
        now - day // 2,
        tuple(RRBeat(i * 800, 800, Rhythm.NORMAL, BeatClass.NORMAL) for i in range(5)),
    )
    beats = [*rr_beat_rows("strap", old, 1), *rr_beat_rows("strap", new, 1)]
    assert store.commit_all([], beats) == (0, 35)
    steps = [store.retention_step(now, limit=20), store.retention_step(now, limit=20)]
    assert steps == [RetentionStep(20, done=False), RetentionStep(10, done=True)]
    assert [ts for ts, *_ in store.beat_rows("strap")] == [new.start_ms + i * 800 for i in range(5)]
    store.close()


def _session(parties: Parties) -> Session:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    return (
        HandshakeResponder(parties.gateway, parties.sensor_registry()).respond(init.start()).session
    )


def test_session_table_bounds_expiry_and_per_device_limit(parties: Parties) -> None:
    table = SessionTable(max_sessions=3, unconfirmed_timeout=10, idle_timeout=100)
    entries = [SessionEntry(_session(parties), f"dev-{i}", 0.0, 0.0) for i in range(3)]
    for e in entries:
        assert table.add(e, 0.0) == []
    extra = SessionEntry(_session(parties), "dev-9", 1.0, 1.0)
    evicted = table.add(extra, 1.0)
    assert evicted == [entries[0]]  # least recently used
    assert len(table) == 3
    # per device: a third session pushes out the first
    a = SessionEntry(_session(parties), "dev-9", 2.0, 2.0)
    b = SessionEntry(_session(parties), "dev-9", 3.0, 3.0)
    table.add(a, 2.0)
    removed = table.add(b, 3.0)
    assert extra in removed
    # unconfirmed sessions expire after 10 s
    expired = table.expire(20.0)
    assert len(expired) == 3
    assert len(table) == 0


def test_rate_limiter_isolates_devices() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert all(limiter.allow("flood", 0.0) for _ in range(5))
    assert not limiter.allow("flood", 0.0)
    assert limiter.allow("honest", 0.0)  # others are unaffected
    assert limiter.allow("flood", 0.11)  # refilled at 10/s
    bounded = RateLimiter(rate=1, burst=1, max_keys=2)
    for key in "abc":
        bounded.allow(key, 0.0)
    assert len(bounded._buckets) == 2


def _v1_store(path: Path, rows: int) -> None:
    """A store in the first schema: vitals keyed by (device, seq), no boot epoch."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE vitals (device_id TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER "
        "NOT NULL, heart_rate REAL, spo2 REAL, skin_temp REAL, accel REAL, activity INTEGER "
        "NOT NULL, label INTEGER NOT NULL, received_ms INTEGER NOT NULL, PRIMARY KEY "
        "(device_id, seq)) WITHOUT ROWID; CREATE INDEX vitals_ts ON vitals (ts_ms);"
        "CREATE TABLE sessions (session_id BLOB PRIMARY KEY, device_id TEXT NOT NULL, "
        "state BLOB NOT NULL, updated_ms INTEGER NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    )
    db.executemany(
        "INSERT INTO vitals VALUES ('dev-1', ?, ?, 70.5, 97.25, 33.1, 1.02, 1, 0, 1)",
        [(i, 1_700_000_000_000 + i * 1000) for i in range(rows)],
    )
    db.commit()
    db.close()


def test_old_store_migrates_and_a_rebooted_counter_is_new(tmp_path: Path) -> None:
    _v1_store(tmp_path / "v.db", 10)
    store = VitalsStore(tmp_path / "v.db")
    assert store.schema_version() == SCHEMA_VERSION == 3
    assert store.samples("dev-1") == [_sample(i) for i in range(10)]
    # the wearable rebooted: its counter starts at 0 again under a new epoch
    fresh = [
        vitals_row("dev-1", replace(_sample(i, 1_800_000_000_000), epoch=42), 1) for i in range(3)
    ]
    assert store.commit(fresh) == 3
    assert store.commit(fresh[:1]) == 0  # the same (device, epoch, seq) once only
    assert store.count("dev-1") == 13
    store.close()


def test_schema_2_store_migrates_and_the_cursor_counts_on(tmp_path: Path) -> None:
    """A store of the second schema (keyed by boot epoch, no insertion number) gets one
    number per row in time order; new rows are numbered after them."""
    db = sqlite3.connect(tmp_path / "v.db")
    db.executescript(
        "CREATE TABLE vitals (device_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT "
        "NULL, ts_ms INTEGER NOT NULL, heart_rate REAL, spo2 REAL, skin_temp REAL, accel REAL, "
        "activity INTEGER NOT NULL, label INTEGER NOT NULL, received_ms INTEGER NOT NULL, "
        "PRIMARY KEY (device_id, epoch, seq)) WITHOUT ROWID;"
        "CREATE INDEX vitals_ts ON vitals (ts_ms);"
        "CREATE INDEX vitals_device_ts ON vitals (device_id, ts_ms);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '2');"
    )
    db.executemany(
        "INSERT INTO vitals VALUES ('dev-1', 7, ?, ?, 70.5, 97.25, 33.1, 1.02, 1, 0, 1)",
        [(i, 1_700_000_000_000 + i * 1000) for i in range(5)],
    )
    db.commit()
    db.close()
    store = VitalsStore(tmp_path / "v.db")
    assert store.schema_version() == SCHEMA_VERSION
    assert [replace(s, epoch=0) for s in store.samples("dev-1")] == [_sample(i) for i in range(5)]
    assert store.insertion_cursor() == 5
    assert store.commit([vitals_row("dev-1", replace(_sample(0), epoch=8), 1)]) == 1
    assert [r[:2] for r in store.sample_rows_after("dev-1", 5)] == [(0, 1_700_000_000_000)]
    assert store.commit([vitals_row("dev-1", replace(_sample(1), epoch=7), 1)]) == 0
    store.close()


def test_unusable_files_raise_the_typed_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreUnusableError, match="SQLITE_NOTADB") as caught:
        VitalsStore(garbage)
    assert caught.value.path == garbage
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnusableError, match="is a directory"):
        VitalsStore(tmp_path / "dir.db")
    truncated = tmp_path / "truncated.db"
    store = VitalsStore(truncated)
    store.commit([vitals_row(f"dev-{i % 7}", _sample(i), 1) for i in range(20_000)])
    store.close()
    size = truncated.stat().st_size
    with truncated.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(StoreUnusableError, match="SQLITE_CORRUPT"):
        VitalsStore(truncated)


def test_recover_moves_the_broken_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    path.write_bytes(b"garbage" * 1000)
    (tmp_path / "v.db-wal").write_bytes(b"wal")
    aside = recover_store(path, now=0)
    assert aside.name == "v.db.broken-19700101T000000Z"
    assert aside.read_bytes() == b"garbage" * 1000
    assert (tmp_path / "v.db.broken-19700101T000000Z-wal").read_bytes() == b"wal"
    store = VitalsStore(path)
    assert store.count() == 0
    store.close()


def test_retention_runs_in_bounded_steps_and_truncates_the_wal(tmp_path: Path) -> None:
    day = 86_400_000
    now = 100 * day
    store = VitalsStore(tmp_path / "v.db", retention_days=1, max_rows=3_000)
    old = [vitals_row("a", _sample(i, now - 3 * day), 1) for i in range(12_000)]
    new = [vitals_row("b", _sample(i, now - day // 2), 1) for i in range(4_000)]
    store.commit(old + new)
    steps: list[RetentionStep] = []
    for _ in range(10):  # bounded: a step that never reports done fails below
        steps.append(store.retention_step(now, limit=5_000))
        if steps[-1].done:
            break
    # 12,000 too old, then 1,000 over max_rows: never more than 5,000 rows in one step
    assert [s.deleted for s in steps] == [5_000, 5_000, 3_000]
    assert store.count() == 3_000
    assert store.samples("b")[0].seq == 1_000  # the oldest went first
    assert (tmp_path / "v.db-wal").stat().st_size > 0
    store.checkpoint()
    assert (tmp_path / "v.db-wal").stat().st_size == 0
    assert store.retention_step(now) == RetentionStep(0, done=True)
    store.close()


def test_handshake_floors_commit_with_the_sessions(tmp_path: Path) -> None:
    store = VitalsStore(tmp_path / "v.db")
    store.commit([], handshake_floors={"dev-1": 5, "dev-2": 9})
    store.commit([], handshake_floors={"dev-1": 3})  # never lowered
    store.close()
    with VitalsStore(tmp_path / "v.db") as reopened:
        assert reopened.handshake_floors() == {"dev-1": 5, "dev-2": 9}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk (ENOSPC), not a simulated one."""
    mount = tmp_path / "small"
    mount.mkdir()
    with small_tmpfs(mount, "1m"):
        yield mount


def test_disk_full_is_reported_as_such_and_recovers(small_disk: Path) -> None:
    store = VitalsStore(small_disk / "v.db")
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    rows = [vitals_row("dev-1", _sample(i), 1) for i in range(5_000)]
    with pytest.raises(StoreFullError, match="database or disk is full") as caught:
        store.commit(rows)
    assert "cannot rollback" not in str(caught.value)
    assert store.count() == 0  # nothing half-committed
    filler.unlink()
    assert store.commit(rows) == 5_000
    store.close()
