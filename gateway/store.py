"""The gateway's local SQLite store (WAL): vitals, resumable session state, retention.

Used from one dedicated thread; a batch of records and the session states they advanced are
committed in one transaction, and only then acknowledged to the broker."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from wire.rr import RRBatch
from wire.vitals import Activity, EventLabel, VitalsSample

SampleRow = tuple[int, int, float | None, float | None, float | None, float | None, int, int]
"""A stored sample: (seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label)."""

_ALL_ROWS = (
    "SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
    "FROM vitals WHERE device_id = ? ORDER BY seq"
)
_ROWS_AFTER = (
    "SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
    "FROM vitals WHERE device_id = ? AND seq > ? ORDER BY seq"
)
_NEWEST_ROWS = (
    "SELECT * FROM (SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
    "FROM vitals WHERE device_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq"
)
_NEWEST_AFTER = (
    "SELECT * FROM (SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
    "FROM vitals WHERE device_id = ? AND seq > ? ORDER BY seq DESC LIMIT ?) ORDER BY seq"
)

# A skip-scan over the primary key: one index probe per device instead of a pass over every
# row, so listing devices costs the same however much history is stored.
_DEVICES = (
    "WITH RECURSIVE d(id) AS (SELECT min(device_id) FROM vitals UNION ALL "
    "SELECT (SELECT min(device_id) FROM vitals WHERE device_id > d.id) FROM d "
    "WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vitals (
    device_id   TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    heart_rate  REAL,
    spo2        REAL,
    skin_temp   REAL,
    accel       REAL,
    activity    INTEGER NOT NULL,
    label       INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vitals_ts ON vitals (ts_ms);
CREATE TABLE IF NOT EXISTS rr_beats (
    device_id   TEXT    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    rr_ms       INTEGER NOT NULL,
    record_seq  INTEGER NOT NULL,
    rhythm      INTEGER NOT NULL,
    beat_class  INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session_id BLOB PRIMARY KEY,
    device_id  TEXT NOT NULL,
    state      BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

VitalsRow = tuple[
    str, int, int, float | None, float | None, float | None, float | None, int, int, int
]


RRBeatRow = tuple[str, int, int, int, int, int, int]
"""A stored beat: (device_id, ts_ms, rr_ms, record_seq, rhythm, beat_class, received_ms)."""

BeatRow = tuple[int, int, int, int]
"""A beat as the rhythm windows read it: (ts_ms, rr_ms, rhythm, beat_class)."""

_BEAT_ROWS = (
    "SELECT ts_ms, rr_ms, rhythm, beat_class FROM rr_beats WHERE device_id = ? ORDER BY ts_ms"
)
_NEWEST_BEAT_ROWS = (
    "SELECT * FROM (SELECT ts_ms, rr_ms, rhythm, beat_class FROM rr_beats WHERE device_id = ? "
    "ORDER BY ts_ms DESC LIMIT ?) ORDER BY ts_ms"
)


def rr_beat_rows(device_id: str, batch: RRBatch, received_ms: int) -> tuple[RRBeatRow, ...]:
    """One row per beat, keyed by the beat's absolute time: a redelivered batch (or one resent
    after a reconnection) maps onto the same keys and is stored once."""
    return tuple(
        (
            device_id,
            batch.start_ms + b.offset_ms,
            b.rr_ms,
            batch.seq,
            int(b.rhythm),
            int(b.beat_class),
            received_ms,
        )
        for b in batch.beats
    )


def vitals_row(device_id: str, sample: VitalsSample, received_ms: int) -> VitalsRow:
    return (
        device_id,
        sample.seq,
        sample.timestamp_ms,
        sample.heart_rate,
        sample.spo2,
        sample.skin_temp,
        sample.accel,
        int(sample.activity),
        int(sample.label),
        received_ms,
    )


@dataclass(frozen=True, slots=True)
class StoredSession:
    session_id: bytes
    device_id: str
    state: bytes


class VitalsStore:
    """SQLite file in WAL mode. Not thread-safe: the daemon calls it from one thread."""

    def __init__(
        self, path: Path, *, retention_days: float = 30.0, max_rows: int = 5_000_000
    ) -> None:
        self.path = path
        self.retention_ms = int(retention_days * 86_400_000)
        self.max_rows = max_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we acknowledge to the broker, even across power
            # loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except BaseException:
            # A file that is not a database (or is locked) must not leave the handle open.
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def commit(
        self,
        rows: Sequence[VitalsRow],
        sessions: Iterable[StoredSession] = (),
        dropped_sessions: Iterable[bytes] = (),
    ) -> int:
        """Insert rows (a (device, seq) already stored is ignored) and session states in one
        transaction; return how many rows were new."""
        return self.commit_all(rows, (), sessions, dropped_sessions)[0]

    def commit_all(
        self,
        rows: Sequence[VitalsRow],
        beats: Sequence[RRBeatRow],
        sessions: Iterable[StoredSession] = (),
        dropped_sessions: Iterable[bytes] = (),
    ) -> tuple[int, int]:
        """`commit` for both record kinds: vitals rows and RR beats (a (device, ts_ms) already
        stored is ignored) in the same transaction; return (new rows, new beats)."""
        db = self._db
        now_ms = int(time.time() * 1000)
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO vitals VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            inserted = db.total_changes - before
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO rr_beats VALUES (?,?,?,?,?,?,?)", beats)
            inserted_beats = db.total_changes - before
            db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?)",
                [(s.session_id, s.device_id, s.state, now_ms) for s in sessions],
            )
            db.executemany(
                "DELETE FROM sessions WHERE session_id = ?", [(sid,) for sid in dropped_sessions]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return inserted, inserted_beats

    def load_sessions(self) -> list[StoredSession]:
        return [
            StoredSession(bytes(sid), dev, bytes(state))
            for sid, dev, state in self._db.execute(
                "SELECT session_id, device_id, state FROM sessions"
            )
        ]

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete rows older than the retention period, then the oldest beyond max_rows."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        db = self._db
        deleted = db.execute(
            "DELETE FROM vitals WHERE ts_ms < ?", (now_ms - self.retention_ms,)
        ).rowcount
        deleted += db.execute(
            "DELETE FROM rr_beats WHERE ts_ms < ?", (now_ms - self.retention_ms,)
        ).rowcount
        excess = self.count() - self.max_rows
        if excess > 0:
            deleted += db.execute(
                "DELETE FROM vitals WHERE (device_id, seq) IN "
                "(SELECT device_id, seq FROM vitals ORDER BY ts_ms LIMIT ?)",
                (excess,),
            ).rowcount
        return max(deleted, 0)

    def count(self, device_id: str | None = None) -> int:
        if device_id is None:
            row = self._db.execute("SELECT count(*) FROM vitals").fetchone()
        else:
            row = self._db.execute(
                "SELECT count(*) FROM vitals WHERE device_id = ?", (device_id,)
            ).fetchone()
        return int(row[0])

    def beat_count(self, device_id: str | None = None) -> int:
        if device_id is None:
            row = self._db.execute("SELECT count(*) FROM rr_beats").fetchone()
        else:
            row = self._db.execute(
                "SELECT count(*) FROM rr_beats WHERE device_id = ?", (device_id,)
            ).fetchone()
        return int(row[0])

    def beat_devices(self) -> list[str]:
        return [
            r[0] for r in self._db.execute("SELECT DISTINCT device_id FROM rr_beats ORDER BY 1")
        ]

    def beat_rows(self, device_id: str, limit: int | None = None) -> list[BeatRow]:
        """A device's RR beats (ts_ms, rr_ms, rhythm, beat_class) in time order, the newest
        `limit` if given: what rhythm windows are built from."""
        if limit is None:
            return self._db.execute(_BEAT_ROWS, (device_id,)).fetchall()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        return self._db.execute(_NEWEST_BEAT_ROWS, (device_id, limit)).fetchall()

    def devices(self) -> list[str]:
        return [r[0] for r in self._db.execute(_DEVICES)]

    def sample_rows(self, device_id: str, limit: int | None = None) -> list[SampleRow]:
        """A device's samples as plain rows in the store's column order (seq, ts_ms,
        heart_rate, spo2, skin_temp, accel, activity, label), in time order, the newest
        `limit` if given: what feature windows are built from, without an object per row."""
        if limit is None:
            return self._db.execute(_ALL_ROWS, (device_id,)).fetchall()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        return self._db.execute(_NEWEST_ROWS, (device_id, limit)).fetchall()

    def sample_rows_after(
        self, device_id: str, after_seq: int, limit: int | None = None
    ) -> list[SampleRow]:
        """A device's rows with seq > `after_seq`, in seq order; only the newest `limit` of them
        if given: what an incremental window builder reads instead of the whole history."""
        if limit is None:
            return self._db.execute(_ROWS_AFTER, (device_id, after_seq)).fetchall()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows: list[SampleRow] = self._db.execute(
            _NEWEST_AFTER, (device_id, after_seq, limit)
        ).fetchall()
        return rows

    def samples(self, device_id: str, limit: int | None = None) -> list[VitalsSample]:
        """A device's samples in time order (the newest `limit` if given)."""
        return [
            VitalsSample(seq, ts, hr, spo2, temp, accel, Activity(act), EventLabel(label))
            for seq, ts, hr, spo2, temp, accel, act, label in self.sample_rows(device_id, limit)
        ]
