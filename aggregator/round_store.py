"""The round coordinator's SQLite persistence: models, rounds, contributions, the running
partial sum and rejections; each change is one transaction, so a restart resumes exactly."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.strategies import Vector
from wire.reasons import Reason

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY, round INTEGER NOT NULL, weights BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, opened REAL NOT NULL, deadline REAL NOT NULL, closed REAL,
    participants INTEGER, samples INTEGER, reason TEXT, report TEXT
);
CREATE TABLE IF NOT EXISTS contributions (
    round INTEGER NOT NULL, gateway TEXT NOT NULL, samples INTEGER NOT NULL, delta BLOB,
    worker TEXT, received REAL NOT NULL, PRIMARY KEY (round, gateway)
);
CREATE TABLE IF NOT EXISTS accumulator (
    round INTEGER PRIMARY KEY, weighted_sum BLOB, total_weight REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    round INTEGER, gateway TEXT, reason TEXT NOT NULL, detail TEXT, at REAL NOT NULL
);
"""

Statement = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class OpenRound:
    round: int
    opened: float
    deadline: float


@dataclass(frozen=True, slots=True)
class LatestModel:
    version: int
    weights: Vector


@dataclass(frozen=True, slots=True)
class RejectionRow:
    round: int | None
    gateway: str | None
    reason: Reason
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class ContributionRow:
    round: int
    gateway: str
    samples: int
    delta: Vector | None  # kept only for rules that need each update
    worker: str
    received: float


@dataclass(frozen=True, slots=True)
class Accumulator:
    round: int
    weighted_sum: Vector
    total_weight: float


@dataclass(frozen=True, slots=True)
class Changes:
    """What one partial changes, written in one transaction."""

    rejections: tuple[RejectionRow, ...] = ()
    contributions: tuple[ContributionRow, ...] = ()
    accumulator: Accumulator | None = None


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """A closed round as stored, with the model it produced (None if unchanged)."""

    round: int
    closed: float
    participants: int
    samples: int
    outcome: str
    report: dict[str, Any] = field(default_factory=dict)
    model: LatestModel | None = None


class RoundStore:
    """One SQLite file in WAL mode with synchronous=FULL: a commit is on disk when it returns."""

    def __init__(self, db_path: Path, *, keep_rounds: int = 0) -> None:
        self.keep_rounds = keep_rounds  # closed rounds (and models) kept; 0 keeps all
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            # A file that is not a database (or is locked) must not leave the handle open.
            self._db.close()
            raise

    def _tx(self, *statements: Statement) -> None:
        db = self._db
        if db.in_transaction:  # inside `transaction()`: its commit covers these statements
            for sql, args in statements:
                db.execute(sql, args)
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes made inside commit together, with one sync to disk; reads inside see
        them. All or nothing: an exception rolls every one of them back."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def initialise(self, weights: Vector, now: float, deadline: float) -> None:
        """Model version 0 and round 1, on first start only."""
        self._tx(
            ("INSERT INTO models VALUES (0, 1, ?, ?)", (weights.tobytes(), now)),
            ("INSERT INTO rounds (round, opened, deadline) VALUES (1, ?, ?)", (now, deadline)),
        )

    def latest_model(self) -> LatestModel | None:
        row = self._db.execute(
            "SELECT version, weights FROM models ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return LatestModel(int(row[0]), np.frombuffer(row[1], dtype=np.float32).copy())

    def open_round(self) -> OpenRound:
        r, opened, deadline = self._db.execute(
            "SELECT round, opened, deadline FROM rounds WHERE closed IS NULL "
            "ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return OpenRound(int(r), float(opened), float(deadline))

    def counted(self, round_: int) -> dict[str, int]:
        """Gateways counted in `round_` and their sample counts."""
        return dict(
            self._db.execute(
                "SELECT gateway, samples FROM contributions WHERE round = ?", (round_,)
            ).fetchall()
        )

    def accumulator(self, round_: int) -> Accumulator | None:
        row = self._db.execute(
            "SELECT weighted_sum, total_weight FROM accumulator WHERE round = ?", (round_,)
        ).fetchone()
        if row is None:
            return None
        return Accumulator(round_, np.frombuffer(row[0], dtype=np.float32), float(row[1]))

    def individual(self, round_: int) -> list[tuple[str, int, Vector]]:
        """(gateway, samples, delta) of the round's kept updates, in gateway order."""
        rows = self._db.execute(
            "SELECT gateway, samples, delta FROM contributions WHERE round = ? ORDER BY gateway",
            (round_,),
        ).fetchall()
        return [(g, n, np.frombuffer(d, dtype=np.float32)) for g, n, d in rows if d is not None]

    def apply(self, changes: Changes) -> None:
        statements: list[Statement] = [
            (
                "INSERT INTO rejections VALUES (?,?,?,?,?)",
                (r.round, r.gateway, r.reason, r.detail, r.at),
            )
            for r in changes.rejections
        ]
        statements += [
            (
                "INSERT INTO contributions VALUES (?,?,?,?,?,?)",
                (
                    c.round,
                    c.gateway,
                    c.samples,
                    None if c.delta is None else c.delta.tobytes(),
                    c.worker,
                    c.received,
                ),
            )
            for c in changes.contributions
        ]
        acc = changes.accumulator
        if acc is not None:
            statements.append(
                (
                    "INSERT OR REPLACE INTO accumulator VALUES (?,?,?)",
                    (acc.round, acc.weighted_sum.tobytes(), acc.total_weight),
                )
            )
        if statements:
            self._tx(*statements)

    def close_round(self, record: RoundRecord, next_round: OpenRound) -> None:
        """Close `record.round`, store its model if any, open the next: all or nothing."""
        statements: list[Statement] = [
            (
                "UPDATE rounds SET closed=?, participants=?, samples=?, reason=?, report=? "
                "WHERE round=?",
                (
                    record.closed,
                    record.participants,
                    record.samples,
                    record.outcome,
                    json.dumps(record.report),
                    record.round,
                ),
            ),
            (
                "INSERT INTO rounds (round, opened, deadline) VALUES (?,?,?)",
                (next_round.round, next_round.opened, next_round.deadline),
            ),
            ("DELETE FROM accumulator WHERE round = ?", (record.round,)),
        ]
        if record.model is not None:
            statements.append(
                (
                    "INSERT INTO models VALUES (?,?,?,?)",
                    (
                        record.model.version,
                        next_round.round,
                        record.model.weights.tobytes(),
                        record.closed,
                    ),
                )
            )
        if self.keep_rounds:
            # Bounded history: the database would otherwise grow by every round's deltas.
            oldest = record.round - self.keep_rounds
            newest_model = record.model.version if record.model is not None else None
            statements += [
                ("DELETE FROM rounds WHERE round <= ?", (oldest,)),
                ("DELETE FROM contributions WHERE round <= ?", (oldest,)),
                ("DELETE FROM rejections WHERE round <= ?", (oldest,)),
                # refusals of no round (an unreadable update) or of a round not yet open (a
                # claim from the future) go once older than the oldest round kept
                (
                    "DELETE FROM rejections WHERE (round IS NULL OR round > ?) AND at < "
                    "(SELECT MIN(opened) FROM rounds WHERE round > ?)",
                    (next_round.round, oldest),
                ),
            ]
            if newest_model is not None:
                statements.append(
                    ("DELETE FROM models WHERE version <= ?", (newest_model - self.keep_rounds,))
                )
        self._tx(*statements)

    def history(self) -> list[dict[str, Any]]:
        names = ("round", "opened", "closed", "participants", "samples", "reason")
        rows = self._db.execute(
            f"SELECT {', '.join(names)} FROM rounds WHERE closed IS NOT NULL ORDER BY round"  # noqa: S608 -- fixed column names
        ).fetchall()
        return [dict(zip(names, r, strict=True)) for r in rows]
