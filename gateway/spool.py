"""The uplink's on-disk store-and-forward spool (SQLite): sealed updates wait here until
RabbitMQ confirms them, and received global models wait here until they are applied."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER NOT NULL, envelope BLOB NOT NULL,
    created REAL NOT NULL, seal_seconds REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inbox (
    round INTEGER PRIMARY KEY, envelope BLOB NOT NULL, received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Outgoing:
    id: int
    round: int
    envelope: bytes
    seal_seconds: float = 0.0


class Spool:
    """Thread-confined SQLite file: the daemon uses it from its store thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
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

    def put_update(self, round_: int, envelope: bytes, seal_seconds: float = 0.0) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (round, envelope, created, seal_seconds) VALUES (?,?,?,?)",
            (round_, envelope, time.time(), seal_seconds),
        )
        return int(cur.lastrowid or 0)

    def pending_updates(self, limit: int = 100) -> list[Outgoing]:
        rows = self._db.execute(
            "SELECT id, round, envelope, seal_seconds FROM outbox ORDER BY id LIMIT ?", (limit,)
        )
        return [Outgoing(i, r, bytes(e), s) for i, r, e, s in rows]

    def confirmed(self, update_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (update_id,))

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def put_global(self, round_: int, envelope: bytes) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO inbox VALUES (?,?,?)", (round_, envelope, time.time())
        )

    def take_global(self) -> tuple[int, bytes] | None:
        """The newest unapplied global model (older ones are superseded and dropped)."""
        row = self._db.execute(
            "SELECT round, envelope FROM inbox ORDER BY round DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), bytes(row[1])

    def done_global(self, round_: int) -> None:
        self._db.execute("DELETE FROM inbox WHERE round <= ?", (round_,))

    def get_state(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    def set_state(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?,?)", (key, value))
