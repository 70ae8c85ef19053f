"""The uplink's on-disk store-and-forward spool (SQLite): sealed updates wait here until
RabbitMQ confirms them, and received global models wait here until they are applied."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
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
CREATE TABLE IF NOT EXISTS global_parts (
    broadcast_id BLOB NOT NULL, kind TEXT NOT NULL, round INTEGER, frame BLOB NOT NULL,
    received REAL NOT NULL, PRIMARY KEY (broadcast_id, kind)
);
"""
#: Unpaired halves of global-model broadcasts kept at most: older ones were superseded.
MAX_GLOBAL_PARTS = 16


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

    def confirmed_then_pending(self, update_id: int, limit: int = 100) -> list[Outgoing]:
        """`confirmed`, then `pending_updates`: the uplink's one store-thread call per
        confirmation, where two would each cost the event loop a hand-off.

        The deletion is not synced to disk: the broker holds the update durably already, and
        power lost before the next synced commit (the next broadcast's key entry) at worst
        publishes it again, which the coordinator counts once. A sync here came at the moment
        every gateway of a round finishes, each one queueing behind the others' and the
        broker's syncs on a shared disk."""
        with self.transaction(synced=False):
            self.confirmed(update_id)
        return self.pending_updates(limit)

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def put_global(self, round_: int, envelope: bytes) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO inbox VALUES (?,?,?)", (round_, envelope, time.time())
        )

    @contextlib.contextmanager
    def transaction(self, *, synced: bool = True) -> Iterator[None]:
        """Writes inside commit together: one sync to disk instead of one per write. Unsynced,
        the commit survives the process but not the machine losing power, until the next
        synced commit (which syncs the log it follows) - for what a peer can give again."""
        if not synced:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            if not synced:
                self._db.execute("PRAGMA synchronous=FULL")

    def synchronous(self) -> int:
        """SQLite's synchronous level now (2 = FULL: every commit synced)."""
        return int(self._db.execute("PRAGMA synchronous").fetchone()[0])

    def put_global_part(
        self,
        broadcast_id: bytes,
        kind: str,
        frame: bytes,
        round_: int | None,
        join: Callable[[bytes, bytes], bytes],
        *,
        synced: bool = True,
    ) -> bool:
        """Keep one half ("body" or "entry") of a global-model broadcast; once both halves are
        here, put `join(body, entry)` in the inbox under the body's round. True if it did.
        `synced=False` for a half the broker keeps after delivering it (see transaction)."""
        db = self._db
        with self.transaction(synced=synced):
            db.execute(
                "INSERT OR REPLACE INTO global_parts VALUES (?,?,?,?,?)",
                (broadcast_id, kind, round_, frame, time.time()),
            )
            parts = dict(
                db.execute(
                    "SELECT kind, frame FROM global_parts WHERE broadcast_id = ?", (broadcast_id,)
                ).fetchall()
            )
            (round_row,) = db.execute(
                "SELECT max(round) FROM global_parts WHERE broadcast_id = ?", (broadcast_id,)
            ).fetchone()
            complete = "body" in parts and "entry" in parts
            if complete:
                db.execute(
                    "INSERT OR REPLACE INTO inbox VALUES (?,?,?)",
                    (
                        int(round_row),
                        join(bytes(parts["body"]), bytes(parts["entry"])),
                        time.time(),
                    ),
                )
                db.execute("DELETE FROM global_parts WHERE broadcast_id = ?", (broadcast_id,))
            db.execute(
                "DELETE FROM global_parts WHERE rowid NOT IN "
                "(SELECT rowid FROM global_parts ORDER BY received DESC LIMIT ?)",
                (MAX_GLOBAL_PARTS,),
            )
        return complete

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
