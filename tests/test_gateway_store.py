"""The SQLite store and the session table: dedupe, atomic session state, retention, bounds."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.sessions import RateLimiter, SessionEntry, SessionTable
from gateway.spool import Spool
from gateway.store import StoredSession, VitalsStore, vitals_row
from pqlink import HandshakeInitiator, HandshakeResponder, Session
from wire.vitals import Activity, EventLabel, VitalsSample

from .conftest import Parties


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
        deleted = store.enforce_retention(now)
        assert deleted == 100 + 200
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
    for opener in (VitalsStore, Spool):
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            opener(junk)
        assert _open_handles(junk) == 0


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
