"""The round coordinator's state, without any I/O of its own but its SQLite file: rounds,
exactly-once contributions per (gateway, round), closing at quorum or deadline, aggregation
through the given strategy, and versioned global models that survive a restart."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.partials import Partial
from aggregator.strategies import Contribution, Strategy, Vector, bound_norm

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


@dataclass(frozen=True, slots=True)
class RoundPolicy:
    quorum: int  # close as soon as this many gateways contributed
    round_timeout: float  # ...or this many seconds after the round opened
    min_participants: int = 1  # below this at the deadline, the model is not changed


@dataclass(frozen=True, slots=True)
class PartialOutcome:
    accepted: tuple[str, ...]
    duplicates: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]  # (gateway, reason)


@dataclass
class ClosedRound:
    round: int
    version: int
    participants: list[str]
    samples: int
    reason: str
    update_norm: float
    opened_at: float = 0.0
    closed_at: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


class RoundCoordinator:
    """One coordinator per deployment (the K3s Deployment uses the Recreate strategy)."""

    def __init__(
        self,
        db_path: Path,
        strategy: Strategy,
        policy: RoundPolicy,
        initial_weights: Vector,
        *,
        keep_rounds: int = 0,
    ) -> None:
        self.strategy = strategy
        self.policy = policy
        self.keep_rounds = keep_rounds  # closed rounds (and models) kept; 0 keeps all
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.rejections: Counter[str] = Counter()
        row = self._db.execute(
            "SELECT version, round, weights FROM models ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if row is None:
            self.version = 0
            self.weights = initial_weights.astype(np.float32)
            now = time.time()
            self._tx(
                ("INSERT INTO models VALUES (0, 1, ?, ?)", (self.weights.tobytes(), now)),
                (
                    "INSERT INTO rounds (round, opened, deadline) VALUES (1, ?, ?)",
                    (now, now + policy.round_timeout),
                ),
            )
        else:
            self.version = int(row[0])
            self.weights = np.frombuffer(row[2], dtype=np.float32).copy()
        self.round, self.opened, self.deadline = self._db.execute(
            "SELECT round, opened, deadline FROM rounds WHERE closed IS NULL "
            "ORDER BY round DESC LIMIT 1"
        ).fetchone()
        self.metrics_by_gateway: dict[str, dict[str, Any]] = {}

    def _tx(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    # -- contributions -----------------------------------------------------------------------

    def counted(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT gateway, samples FROM contributions WHERE round = ?", (self.round,)
            ).fetchall()
        )

    def accept(self, partial: Partial, now: float | None = None) -> PartialOutcome:
        """Apply a worker's partial exactly once; stale or duplicate contributions are refused."""
        now = time.time() if now is None else now
        statements: list[tuple[str, tuple[Any, ...]]] = []
        rejected: list[tuple[str, str]] = []
        for r in partial.rejections:
            self.rejections[r.reason] += 1
            rejected.append((r.gateway or "-", r.reason))
            statements.append(
                (
                    "INSERT INTO rejections VALUES (?,?,?,?,?)",
                    (r.round, r.gateway, r.reason, r.detail, now),
                )
            )
        names = [g for g, _ in partial.contributors]
        if partial.round != self.round:
            reason = "stale" if partial.round < self.round else "future_round"
            for g in names:
                self.rejections[reason] += 1
                rejected.append((g, reason))
                statements.append(
                    (
                        "INSERT INTO rejections VALUES (?,?,?,?,?)",
                        (partial.round, g, reason, "", now),
                    )
                )
            if statements:
                self._tx(*statements)
            return PartialOutcome((), (), tuple(rejected))
        counted = self.counted()
        new = [g for g in names if g not in counted]
        dups = tuple(g for g in names if g in counted)
        if new and dups and partial.weighted_sum is not None:
            # Cannot happen by construction (redelivered updates travel alone); refuse rather
            # than count anyone twice.
            for g in names:
                self.rejections["conflict"] += 1
                rejected.append((g, "conflict"))
            if statements:
                self._tx(*statements)
            return PartialOutcome((), dups, tuple(rejected))
        self.rejections["duplicate"] += len(dups)
        if new:
            samples = dict(partial.contributors)
            individual = {c.gateway: c for c in partial.individual}
            for g in new:
                delta = individual[g].delta.tobytes() if g in individual else None
                statements.append(
                    (
                        "INSERT INTO contributions VALUES (?,?,?,?,?,?)",
                        (self.round, g, samples[g], delta, partial.worker, now),
                    )
                )
                self.metrics_by_gateway[g] = (
                    dict(partial.metrics.get(g, {}))
                    if isinstance(partial.metrics.get(g), dict)
                    else {}
                )
            if partial.weighted_sum is not None:
                row = self._db.execute(
                    "SELECT weighted_sum, total_weight FROM accumulator WHERE round = ?",
                    (self.round,),
                ).fetchone()
                total = float(partial.total_weight)
                acc = partial.weighted_sum.astype(np.float32)
                if row is not None:
                    acc = acc + np.frombuffer(row[0], dtype=np.float32)
                    total += float(row[1])
                statements.append(
                    (
                        "INSERT OR REPLACE INTO accumulator VALUES (?,?,?)",
                        (self.round, acc.tobytes(), total),
                    )
                )
        if statements:
            self._tx(*statements)
        return PartialOutcome(tuple(new), dups, tuple(rejected))

    # -- closing -----------------------------------------------------------------------------

    def should_close(self, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        if len(self.counted()) >= self.policy.quorum:
            return "quorum"
        if now >= self.deadline:
            return "deadline"
        return None

    def close_round(self, reason: str, now: float | None = None) -> ClosedRound:
        """Aggregate, store the new global model, open the next round."""
        now = time.time() if now is None else now
        counted = self.counted()
        participants = sorted(counted)
        samples = sum(counted.values())
        norm = 0.0
        changed = len(participants) >= self.policy.min_participants
        if changed:
            delta = self._aggregate()  # updates were norm-bounded one by one, by the workers
            norm = float(np.linalg.norm(delta))
            self.weights = (self.weights + delta).astype(np.float32)
            self.version += 1
        closed, opened = self.round, self.opened
        report = {"metrics": {g: self.metrics_by_gateway.get(g, {}) for g in participants}}
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "UPDATE rounds SET closed=?, participants=?, samples=?, reason=?, report=? "
                "WHERE round=?",
                (
                    now,
                    len(participants),
                    samples,
                    reason if changed else f"{reason}_too_few",
                    json.dumps(report),
                    closed,
                ),
            ),
            (
                "INSERT INTO rounds (round, opened, deadline) VALUES (?,?,?)",
                (closed + 1, now, now + self.policy.round_timeout),
            ),
            ("DELETE FROM accumulator WHERE round = ?", (closed,)),
        ]
        if changed:
            statements.append(
                (
                    "INSERT INTO models VALUES (?,?,?,?)",
                    (self.version, closed + 1, self.weights.tobytes(), now),
                )
            )
        if self.keep_rounds:
            # Bounded history: the database would otherwise grow by every round's deltas.
            oldest = closed - self.keep_rounds
            statements += [
                ("DELETE FROM rounds WHERE round <= ?", (oldest,)),
                ("DELETE FROM contributions WHERE round <= ?", (oldest,)),
                ("DELETE FROM rejections WHERE round <= ?", (oldest,)),
                ("DELETE FROM models WHERE version <= ?", (self.version - self.keep_rounds,)),
            ]
        self._tx(*statements)
        self.round, self.opened, self.deadline = closed + 1, now, now + self.policy.round_timeout
        self.metrics_by_gateway = {}
        return ClosedRound(
            closed,
            self.version,
            participants,
            samples,
            reason,
            norm,
            opened_at=opened,
            closed_at=now,
            metrics=report["metrics"],
        )

    def _aggregate(self) -> Vector:
        if self.strategy.needs_individual_updates:
            rows = self._db.execute(
                "SELECT gateway, samples, delta FROM contributions WHERE round = ? "
                "ORDER BY gateway",
                (self.round,),
            ).fetchall()
            individual = [
                Contribution(
                    g,
                    n,
                    bound_norm(
                        np.frombuffer(d, dtype=np.float32),
                        getattr(self.strategy, "norm_bound", None),
                    ),
                )
                for g, n, d in rows
                if d is not None
            ]
            return self.strategy.combine(
                float(sum(c.samples for c in individual)), None, individual
            )
        row = self._db.execute(
            "SELECT weighted_sum, total_weight FROM accumulator WHERE round = ?", (self.round,)
        ).fetchone()
        return self.strategy.combine(float(row[1]), np.frombuffer(row[0], dtype=np.float32), ())

    def history(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT round, opened, closed, participants, samples, reason FROM rounds "
            "WHERE closed IS NOT NULL ORDER BY round"
        ).fetchall()
        return [
            dict(
                zip(
                    ("round", "opened", "closed", "participants", "samples", "reason"),
                    r,
                    strict=True,
                )
            )
            for r in rows
        ]


def quorum_for(enrolled: int, fraction: float, minimum: int) -> int:
    return max(minimum, math.ceil(enrolled * fraction), 1)
