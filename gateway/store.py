"""The gateway's local SQLite store (WAL): vitals, resumable session state, retention.

Used from one dedicated thread; a batch of records and the session states they advanced are
committed in one transaction, and only then acknowledged to the broker and to the wearable."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from gateway.errors import GatewayError
from wire.rr import RRBatch
from wire.vitals import Activity, EventLabel, VitalsSample

SampleRow = tuple[int, int, float | None, float | None, float | None, float | None, int, int]
"""A stored sample: (seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label)."""

SCHEMA_VERSION = 3
"""1: vitals keyed by (device, seq); 2: by (device, boot epoch, seq), handshake floors;
3: an insertion number on every vitals row (the window cache's cursor), RR beats."""

RETENTION_STEP_ROWS = 5_000
"""Rows one retention step deletes: a few tens of milliseconds on a Pi's SD card, so the
store thread is never held long and commits of fresh records interleave with a large pass."""

_ALL_ROWS = (
    "SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
    "FROM vitals WHERE device_id = ? ORDER BY ts_ms, epoch, seq"
)
_ROWS_AFTER = (
    "SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
    "FROM vitals WHERE device_id = ? AND ins > ? ORDER BY ts_ms, epoch, seq"
)
_NEWEST_ROWS = (
    "SELECT * FROM (SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label, "
    "epoch FROM vitals WHERE device_id = ? ORDER BY ts_ms DESC, epoch DESC, seq DESC LIMIT ?) "
    "ORDER BY ts_ms, epoch, seq"
)
_NEWEST_AFTER = (
    "SELECT * FROM (SELECT seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label, "
    "epoch FROM vitals WHERE device_id = ? AND ins > ? "
    "ORDER BY ts_ms DESC, epoch DESC, seq DESC LIMIT ?) ORDER BY ts_ms, epoch, seq"
)

# A skip-scan over the (device, epoch, seq) index: one index probe per device instead of a
# pass over every row, so listing devices costs the same however much history is stored.
_DEVICES = (
    "WITH RECURSIVE d(id) AS (SELECT min(device_id) FROM vitals UNION ALL "
    "SELECT (SELECT min(device_id) FROM vitals WHERE device_id > d.id) FROM d "
    "WHERE d.id IS NOT NULL) SELECT id FROM d WHERE id IS NOT NULL"
)

# `ins` numbers rows in insertion order and AUTOINCREMENT never reuses a number, even after
# retention deleted the newest row: unlike `seq`, which restarts at 0 when a wearable reboots,
# it tells which rows arrived since a given moment.
_VITALS_TABLE = """
CREATE TABLE IF NOT EXISTS vitals (
    ins         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    heart_rate  REAL,
    spo2        REAL,
    skin_temp   REAL,
    accel       REAL,
    activity    INTEGER NOT NULL,
    label       INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (device_id, epoch, seq)
);
CREATE INDEX IF NOT EXISTS vitals_ts ON vitals (ts_ms);
CREATE INDEX IF NOT EXISTS vitals_device_ts ON vitals (device_id, ts_ms);
CREATE INDEX IF NOT EXISTS vitals_device_ins ON vitals (device_id, ins);
"""

_OTHER_TABLES = """
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
CREATE INDEX IF NOT EXISTS rr_beats_ts ON rr_beats (ts_ms);
CREATE TABLE IF NOT EXISTS sessions (
    session_id BLOB PRIMARY KEY,
    device_id  TEXT NOT NULL,
    state      BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS handshake_floor (
    device_id TEXT PRIMARY KEY,
    ts_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_VITALS_COLUMNS = (
    "device_id, epoch, seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label, received_ms"
)

# Old rows get their insertion numbers in time order; a schema-1 row is of boot epoch 0.
_MIGRATE = """
DROP INDEX IF EXISTS vitals_ts;
DROP INDEX IF EXISTS vitals_device_ts;
ALTER TABLE vitals RENAME TO vitals_old;
{table}
INSERT INTO vitals ({columns}) SELECT device_id, {epoch}, seq, ts_ms, heart_rate, spo2,
    skin_temp, accel, activity, label, received_ms FROM vitals_old ORDER BY {order};
DROP TABLE vitals_old;
"""


def _migrate_script(epoch: str, order: str) -> str:
    # Built from this module's constants only (no input reaches it).
    return "".join(
        (
            "BEGIN IMMEDIATE;",
            _MIGRATE.format(table=_VITALS_TABLE, columns=_VITALS_COLUMNS, epoch=epoch, order=order),
            _OTHER_TABLES,
            f"INSERT OR REPLACE INTO meta VALUES ('schema', '{SCHEMA_VERSION}');",  # noqa: S608
            "COMMIT;",
        )
    )


_MIGRATE_V1_SCRIPT = _migrate_script("0", "ts_ms, seq")
_MIGRATE_V2_SCRIPT = _migrate_script("epoch", "ts_ms, epoch, seq")
_INSERT_VITALS = (
    f"INSERT OR IGNORE INTO vitals ({_VITALS_COLUMNS}) "  # noqa: S608 -- constants only
    "VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)

VitalsRow = tuple[
    str, int, int, int, float | None, float | None, float | None, float | None, int, int, int
]
"""(device_id, epoch, seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label,
received_ms): one row of the vitals table."""

# SQLite primary result codes (extended codes carry them in the low byte).
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 3, 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26
_UNUSABLE = {_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_NOTADB}


class StoreError(GatewayError):
    """The store cannot do what was asked; `path` is the database file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StoreUnusableError(StoreError):
    """The file is not a usable SQLite database (corrupt, truncated, a directory, unreadable):
    the operator must move it aside (`iomt-gateway store recover`); restarting cannot help."""


class StoreFullError(StoreError):
    """The disk (or the database) is full: nothing was committed; retry when space returns."""


class StoreIOError(StoreError):
    """Another I/O failure of the medium during a commit; nothing was committed."""


def classify(exc: sqlite3.Error | OSError, path: Path) -> StoreError | None:
    """The typed store error for a low-level failure, or None for a programming error that
    must surface as it is."""
    if isinstance(exc, OSError):
        return StoreUnusableError(path, f"{type(exc).__name__}: {exc.strerror or exc}")
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    reason = f"{getattr(exc, 'sqlite_errorname', 'SQLITE_ERROR')}: {exc}"
    if primary == _SQLITE_FULL:
        return StoreFullError(path, reason)
    if primary in _UNUSABLE:
        return StoreUnusableError(path, reason)
    if primary == _SQLITE_IOERR:
        return StoreIOError(path, reason)
    return None


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
        sample.epoch,
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


@dataclass(frozen=True, slots=True)
class RetentionStep:
    """What one bounded retention step did; `done` when nothing is over the limits."""

    deleted: int
    done: bool


class VitalsStore:
    """SQLite file in WAL mode. Not thread-safe: the daemon calls it from one thread.

    Raises StoreUnusableError when the file cannot be opened as our database."""

    def __init__(
        self, path: Path, *, retention_days: float = 30.0, max_rows: int = 5_000_000
    ) -> None:
        # the configuration checks these for an operator; a caller passing its own values
        # gets the same bounds (a negative row limit would make retention spin forever)
        if not retention_days > 0:
            raise ValueError(f"retention_days={retention_days} must be > 0")
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be >= 1")
        self.path = path
        self.retention_ms = int(retention_days * 86_400_000)
        self.max_rows = max_rows
        if path.is_dir():
            raise StoreUnusableError(path, "is a directory, not a database file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise self._typed(exc) from exc
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:
            self._db.close()
            typed = classify(exc, path)
            if isinstance(typed, StoreFullError | StoreUnusableError):
                raise typed from exc
            # Any other failure to read our own schema means the file is not ours to use.
            raise StoreUnusableError(path, f"{type(exc).__name__}: {exc}") from exc

    def _typed(self, exc: sqlite3.Error | OSError) -> Exception:
        return classify(exc, self.path) or exc

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we acknowledge to the broker, even across power loss.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        columns = {row[1] for row in db.execute("PRAGMA table_info(vitals)")}
        # One transaction: an interrupted migration leaves the old schema, intact.
        if columns and "epoch" not in columns:
            db.executescript(_MIGRATE_V1_SCRIPT)
        elif columns and "ins" not in columns:
            db.executescript(_MIGRATE_V2_SCRIPT)
        else:
            db.executescript(_VITALS_TABLE + _OTHER_TABLES)
            self._set_schema()
        # Reading every row once at start finds a truncated or corrupt table now, with a clear
        # error, rather than in the middle of ingest; the count keeps retention O(1) after.
        self._rows = int(db.execute("SELECT count(*) FROM vitals").fetchone()[0])

    def _set_schema(self) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return int(row[0])

    def commit(
        self,
        rows: Sequence[VitalsRow],
        sessions: Iterable[StoredSession] = (),
        dropped_sessions: Iterable[bytes] = (),
        handshake_floors: Mapping[str, int] | None = None,
    ) -> int:
        """Insert rows (a (device, epoch, seq) already stored is ignored), session states and
        handshake floors in one transaction; return how many rows were new.

        Raises StoreFullError, StoreIOError or StoreUnusableError with nothing committed."""
        return self.commit_all(rows, (), sessions, dropped_sessions, handshake_floors)[0]

    def commit_all(
        self,
        rows: Sequence[VitalsRow],
        beats: Sequence[RRBeatRow],
        sessions: Iterable[StoredSession] = (),
        dropped_sessions: Iterable[bytes] = (),
        handshake_floors: Mapping[str, int] | None = None,
    ) -> tuple[int, int]:
        """`commit` for both record kinds: vitals rows and RR beats (a (device, ts_ms) already
        stored is ignored) in the same transaction; return (new rows, new beats).

        Raises StoreFullError, StoreIOError or StoreUnusableError with nothing committed."""
        db = self._db
        now_ms = int(time.time() * 1000)
        try:
            db.execute("BEGIN IMMEDIATE")
            before = db.total_changes
            db.executemany(_INSERT_VITALS, rows)
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
            if handshake_floors:
                db.executemany(
                    "INSERT INTO handshake_floor VALUES (?, ?) ON CONFLICT (device_id) "
                    "DO UPDATE SET ts_ms = max(ts_ms, excluded.ts_ms)",
                    list(handshake_floors.items()),
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # SQLite may already have rolled back (a full disk does): a second ROLLBACK would
            # replace the real cause with "cannot rollback - no transaction is active".
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise self._typed(exc) from exc
        self._rows += inserted
        return inserted, inserted_beats

    def load_sessions(self) -> list[StoredSession]:
        return [
            StoredSession(bytes(sid), dev, bytes(state))
            for sid, dev, state in self._db.execute(
                "SELECT session_id, device_id, state FROM sessions"
            )
        ]

    def handshake_floors(self) -> dict[str, int]:
        """Per device, the newest handshake init timestamp (ms) ever accepted."""
        return dict(self._db.execute("SELECT device_id, ts_ms FROM handshake_floor"))

    def retention_step(
        self, now_ms: int | None = None, limit: int = RETENTION_STEP_ROWS
    ) -> RetentionStep:
        """Delete at most `limit` rows: first samples older than the retention period, then the
        oldest samples beyond max_rows, then RR beats older than the retention period."""
        if limit < 1:
            raise ValueError(f"retention step limit={limit} must be >= 1")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        db = self._db
        cutoff = now_ms - self.retention_ms
        try:
            deleted = db.execute(
                "DELETE FROM vitals WHERE ins IN (SELECT ins FROM vitals WHERE ts_ms < ? LIMIT ?)",
                (cutoff, limit),
            ).rowcount
            deleted = max(deleted, 0)
            self._rows -= deleted
            excess = self._rows - self.max_rows
            if deleted < limit and excess > 0:
                more = db.execute(
                    "DELETE FROM vitals WHERE ins IN "
                    "(SELECT ins FROM vitals ORDER BY ts_ms LIMIT ?)",
                    (min(excess, limit - deleted),),
                ).rowcount
                deleted += max(more, 0)
                self._rows -= max(more, 0)
            if deleted < limit:
                beats = db.execute(
                    "DELETE FROM rr_beats WHERE (device_id, ts_ms) IN "
                    "(SELECT device_id, ts_ms FROM rr_beats WHERE ts_ms < ? LIMIT ?)",
                    (cutoff, limit - deleted),
                ).rowcount
                beats_done = beats < limit - deleted
                deleted += max(beats, 0)
            else:
                beats_done = False
        except sqlite3.Error as exc:
            raise self._typed(exc) from exc
        return RetentionStep(
            deleted, beats_done and deleted < limit and self._rows <= self.max_rows
        )

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (after a large delete the WAL would
        otherwise keep its peak size on disk)."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise self._typed(exc) from exc

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Run retention steps until both limits hold, then truncate the WAL."""
        total = 0
        while True:
            step = self.retention_step(now_ms)
            total += step.deleted
            if step.done:
                break
        if total:
            self.checkpoint()
        return total

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
        return [r[:8] for r in self._db.execute(_NEWEST_ROWS, (device_id, limit))]

    def insertion_cursor(self) -> int:
        """The insertion number of the newest sample ever stored (0 for none): rows stored
        later have greater numbers, whatever their boot epoch and seq."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vitals'").fetchone()
        return 0 if row is None else int(row[0])

    def sample_rows_after(
        self, device_id: str, cursor: int, limit: int | None = None
    ) -> list[SampleRow]:
        """A device's rows stored after `insertion_cursor()` returned `cursor`, in time order;
        only the newest `limit` of them if given: what an incremental window builder reads
        instead of the whole history."""
        if limit is None:
            return self._db.execute(_ROWS_AFTER, (device_id, cursor)).fetchall()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        return [r[:8] for r in self._db.execute(_NEWEST_AFTER, (device_id, cursor, limit))]

    def samples(self, device_id: str, limit: int | None = None) -> list[VitalsSample]:
        """A device's samples in time order (the newest `limit` if given)."""
        return [
            VitalsSample(seq, ts, hr, spo2, temp, accel, Activity(act), EventLabel(label))
            for seq, ts, hr, spo2, temp, accel, act, label in self.sample_rows(device_id, limit)
        ]


def recover_store(path: Path, now: float | None = None) -> Path:
    """Move a broken store (and its WAL and shared-memory files) aside as
    `<name>.broken-<UTC time>` and create a fresh empty store; return where the old one went.
    The wearables resend what this gateway never acknowledged; sessions start afresh."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    aside = path.with_name(f"{path.name}.broken-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists() or source.is_symlink():
            source.rename(aside.with_name(aside.name + suffix))
    VitalsStore(path).close()
    return aside
