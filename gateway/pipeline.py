"""The commit pipeline: accepted records, session states and dropped sessions are batched,
committed to SQLite in the store thread, and only then acknowledged to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from gateway.counters import CommitCounters
from gateway.edge import Message, MqttEdge
from gateway.sessions import SessionTable
from gateway.store import RRBeatRow, StoredSession, VitalsRow, VitalsStore
from pqlink.record import export_session
from servicekit.logs import EventLog
from wire.reasons import Event

#: A message to acknowledge on the connection it arrived on, once its work is durable.
Ack = tuple[MqttEdge, Message]


@dataclass
class _Batch:
    rows: list[VitalsRow] = field(default_factory=list)
    beats: list[RRBeatRow] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.acks) + len(self.after_commit)


class CommitPipeline:
    """Durable before acknowledged: nothing is acked until its transaction returned."""

    def __init__(
        self,
        store: VitalsStore,
        store_pool: Executor,
        table: SessionTable,
        log: EventLog,
        *,
        batch_interval: float,
    ) -> None:
        self.store = store
        self.store_pool = store_pool
        self.table = table
        self.log = log
        self.batch_interval = batch_interval
        self.counters = CommitCounters()
        self._batch = _Batch()
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        # Set whenever the batch may hold something: an idle gateway's pipeline sleeps on it
        # instead of waking every batch_interval (set at start: sessions may be dropped then).
        self._work = asyncio.Event()
        self._work.set()

    def __len__(self) -> int:
        return len(self._batch)

    def record(self, row: VitalsRow | None, beats: tuple[RRBeatRow, ...], ack: Ack) -> None:
        """An accepted record: a vitals row or the beats of an RR batch."""
        if row is not None:
            self._batch.rows.append(row)
        self._batch.beats.extend(beats)
        self._batch.acks.append(ack)
        self._work.set()

    def acknowledge(self, ack: Ack) -> None:
        """A message whose handling needs no commit (a rejection) is acked with the batch."""
        self._batch.acks.append(ack)
        self._work.set()

    def drop_session(self, session_id: bytes) -> None:
        self._batch.dropped.append(session_id)
        self._work.set()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current batch is durable, and commit soon."""
        self._batch.after_commit.append(callback)
        self._work.set()
        self._wanted.set()

    async def run(self) -> None:
        """Commit `batch_interval` after the first change, or sooner when asked; runs until
        cancelled. Idle, it sleeps until something arrives."""
        while True:
            await self._work.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.batch_interval)
            self._wanted.clear()
            self._work.clear()  # before the flush takes the batch: later changes set it again
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._batch = self._batch, _Batch()
            dirty = [e for e in self.table.entries() if e.dirty]
            if not batch.acks and not batch.after_commit and not batch.dropped and not dirty:
                return
            states = []
            for entry in dirty:
                entry.dirty = False
                states.append(
                    StoredSession(
                        entry.session.session_id, entry.device_id, export_session(entry.session)
                    )
                )
            loop = asyncio.get_running_loop()
            try:
                inserted, inserted_beats = await loop.run_in_executor(
                    self.store_pool,
                    self.store.commit_all,
                    batch.rows,
                    batch.beats,
                    states,
                    batch.dropped,
                )
            except Exception as exc:
                # Nothing is acknowledged: the broker redelivers after our restart.
                self.log.event(Event.STORE_FAILED, level=logging.CRITICAL, reason=str(exc))
                raise
            self.counters.commits += 1
            self.counters.records_stored += inserted
            self.counters.records_duplicate += len(batch.rows) - inserted
            self.counters.rr_beats_stored += inserted_beats
            self.counters.rr_beats_duplicate += len(batch.beats) - inserted_beats
            for edge, message in batch.acks:
                edge.ack(message)
            for callback in batch.after_commit:
                callback()
