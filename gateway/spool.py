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
CREATE TABLE IF NOT EXISTS global_entries (
    epoch_id BLOB PRIMARY KEY, frame BLOB NOT NULL, received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS global_bodies (
    epoch_id BLOB NOT NULL, round INTEGER NOT NULL, frame BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (epoch_id, round)
);
"""
# The spool of the per-broadcast key entries kept the halves of each broadcast in one table;
# what it holds can no longer open (version-1 frames), so a spool of that version drops it.
_MIGRATE_PER_BROADCAST_PARTS = "DROP TABLE IF EXISTS global_parts"
#: Key entries kept at most, one per key epoch, the newest: as many as a gateway's queue keeps
#: (wire.amqp.GATEWAY_QUEUE_ARGUMENTS), so one back from offline keeps all it was sent.
MAX_GLOBAL_ENTRIES = 4
#: Bodies waiting for their epoch's entry kept at most, the newest: older ones were superseded.
MAX_WAITING_BODIES = 16


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
            self._db.execute(_MIGRATE_PER_BROADCAST_PARTS)
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
        power lost before the next synced commit (a key epoch's entry, or SQLite's checkpoint
        of the log) at worst publishes it again, which the coordinator counts once. A sync
        here came at the moment every gateway of a round finishes, each one queueing behind
        the others' and the broker's syncs on a shared disk."""
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
        epoch_id: bytes,
        kind: str,
        frame: bytes,
        round_: int | None,
        join: Callable[[bytes, bytes], bytes],
        *,
        synced: bool = True,
    ) -> bool:
        """Keep one half of a global-model broadcast: a "body" (with its round) or the key
        "entry" of its epoch. A body whose epoch's entry is here goes to the inbox at once, as
        `join(body, entry)` under the body's round; otherwise it waits. An entry is kept for
        every later body of its epoch, and completes the newest body of its epoch waiting (the
        older ones were superseded). True if a global model went to the inbox. `synced=False`
        for a half the broker keeps after delivering it (see transaction)."""
        db = self._db
        now = time.time()
        complete = False
        with self.transaction(synced=synced):
            if kind == "entry":
                db.execute(
                    "INSERT OR REPLACE INTO global_entries VALUES (?,?,?)", (epoch_id, frame, now)
                )
                waiting = db.execute(
                    "SELECT round, frame FROM global_bodies WHERE epoch_id = ? "
                    "ORDER BY round DESC LIMIT 1",
                    (epoch_id,),
                ).fetchone()
                if waiting is not None:
                    self.put_global(int(waiting[0]), join(bytes(waiting[1]), frame))
                    db.execute("DELETE FROM global_bodies WHERE epoch_id = ?", (epoch_id,))
                    complete = True
                # Bounded by epochs, never by bodies: many bodies cannot push out the entry
                # that opens them.
                db.execute(
                    "DELETE FROM global_entries WHERE rowid NOT IN (SELECT rowid FROM "
                    "global_entries ORDER BY rowid DESC LIMIT ?)",
                    (MAX_GLOBAL_ENTRIES,),
                )
            elif kind == "body":
                if round_ is None:
                    raise ValueError("a broadcast body is kept under its round")
                entry = db.execute(
                    "SELECT frame FROM global_entries WHERE epoch_id = ?", (epoch_id,)
                ).fetchone()
                if entry is not None:
                    self.put_global(round_, join(frame, bytes(entry[0])))
                    complete = True
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO global_bodies VALUES (?,?,?,?)",
                        (epoch_id, round_, frame, now),
                    )
                    db.execute(
                        "DELETE FROM global_bodies WHERE rowid NOT IN (SELECT rowid FROM "
                        "global_bodies ORDER BY rowid DESC LIMIT ?)",
                        (MAX_WAITING_BODIES,),
                    )
            else:
                raise ValueError(f"a global-model part is a body or an entry, not {kind!r}")
        return complete

    def waiting_bodies(self, epoch_id: bytes) -> int:
        """How many bodies of the key epoch `epoch_id` wait for its entry."""
        (n,) = self._db.execute(
            "SELECT count(*) FROM global_bodies WHERE epoch_id = ?", (epoch_id,)
        ).fetchone()
        return int(n)

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
