"""The commit pipeline: accepted records, session states and dropped sessions are batched,
committed to SQLite in the store thread, and only then acknowledged to the broker and, sealed
per session, to the wearables; a full disk holds every acknowledgement until space returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from gateway.counters import CommitCounters
from gateway.delivery import DeliveryLedger, HandshakeFloors, OutboundMessage
from gateway.edge import Message, MqttEdge
from gateway.sessions import SessionTable
from gateway.store import (
    RRBeatRow,
    StoredSession,
    StoreFullError,
    StoreIOError,
    StoreUnusableError,
    VitalsRow,
    VitalsStore,
)
from pqlink.record import export_session
from servicekit.logs import EventLog
from wire.reasons import Event
from wire.topics import TopicLayout

#: A message to acknowledge on the connection it arrived on, once its work is durable.
Ack = tuple[MqttEdge, Message]

STORE_RETRY_SECONDS = 1.0  # while the disk is full: how often the same commit is tried again


@dataclass
class _Batch:
    rows: list[VitalsRow] = field(default_factory=list)
    beats: list[RRBeatRow] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    delivered: DeliveryLedger = field(default_factory=DeliveryLedger)

    def __len__(self) -> int:
        return len(self.acks) + len(self.after_commit)

    def prepend(self, older: _Batch) -> None:
        """Put a batch whose commit failed back in front of this one, in order."""
        self.rows[:0] = older.rows
        self.beats[:0] = older.beats
        self.acks[:0] = older.acks
        self.dropped[:0] = older.dropped
        self.after_commit[:0] = older.after_commit
        self.delivered.merge(older.delivered)


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
        layout: TopicLayout,
        floors: HandshakeFloors,
        publish: Callable[[list[OutboundMessage]], None],
    ) -> None:
        self.store = store
        self.store_pool = store_pool
        self.table = table
        self.log = log
        self.batch_interval = batch_interval
        self.layout = layout
        self.floors = floors
        self.publish = publish
        self.counters = CommitCounters()
        self._batch = _Batch()
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        # Cleared while the disk is full: the edge stops reading (nothing more is
        # acknowledged) until a commit succeeds again.
        self.store_ok = asyncio.Event()
        self.store_ok.set()
        self.store_state = "ok"
        # Set whenever the batch may hold something: an idle gateway's pipeline sleeps on it
        # instead of waking every batch_interval (set at start: sessions may be dropped then).
        self._work = asyncio.Event()
        self._work.set()

    def __len__(self) -> int:
        return len(self._batch)

    def record(
        self,
        row: VitalsRow | None,
        beats: tuple[RRBeatRow, ...],
        ack: Ack,
        session_id: bytes = b"",
        record_id: tuple[int, int] | None = None,
    ) -> None:
        """An accepted record: a vitals row or the beats of an RR batch, acknowledged to the
        wearable after the commit when `session_id` names its session. `record_id` is the
        record's (epoch, seq); a vitals row carries its own."""
        if row is not None:
            self._batch.rows.append(row)
            record_id = (row[1], row[2])
        if session_id and record_id is not None:
            self._batch.delivered.add(session_id, *record_id)
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
        """Commit `batch_interval` after the first change (every second while the disk is
        full), or sooner when asked; runs until cancelled. Idle, it sleeps until something
        arrives."""
        while True:
            await self._work.wait()
            wait = self.batch_interval if self.store_ok.is_set() else STORE_RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), wait)
            self._wanted.clear()
            self._work.clear()  # before the flush takes the batch: later changes set it again
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._batch = self._batch, _Batch()
            floors = self.floors.take_dirty()
            if (
                not batch.acks
                and not batch.after_commit
                and not batch.dropped
                and not floors
                and not any(e.dirty for e in self.table.entries())
            ):
                return
            # Sealed before the session states are exported: see DeliveryLedger.seal.
            outbound = batch.delivered.seal(self.table, self.layout)
            dirty = [e for e in self.table.entries() if e.dirty]
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
                    floors,
                )
            except (StoreFullError, StoreIOError) as exc:
                # Nothing is acknowledged, to the broker or to the wearables: both keep the
                # records. Keep the batch and try again until the medium takes it.
                self._batch.prepend(batch)
                self.floors.restore(floors)
                for entry in dirty:
                    entry.dirty = True
                self._work.set()  # the kept batch is tried again
                self._blocked(exc)
                return
            except StoreUnusableError as exc:
                self.log.event(
                    Event.STORE_FAILED,
                    level=logging.CRITICAL,
                    file=str(exc.path),
                    error=exc.reason,
                )
                raise
            if not self.store_ok.is_set():
                self.store_state = "ok"
                self.store_ok.set()
                self.log.event(Event.STORE_RESUMED, records=len(batch.rows))
            self.counters.commits += 1
            self.counters.records_stored += inserted
            self.counters.records_duplicate += len(batch.rows) - inserted
            self.counters.rr_beats_stored += inserted_beats
            self.counters.rr_beats_duplicate += len(batch.beats) - inserted_beats
            for edge, message in batch.acks:
                edge.ack(message)
            if outbound:
                self.counters.acks_sent += len(outbound)
                self.publish(outbound)
            for callback in batch.after_commit:
                callback()

    def _blocked(self, exc: StoreFullError | StoreIOError) -> None:
        self.counters.commit_failures += 1
        if self.store_ok.is_set():
            self.store_ok.clear()
            full = isinstance(exc, StoreFullError)
            self.store_state = "full" if full else "io_error"
            self.log.event(
                Event.STORE_FULL if full else Event.STORE_IO_FAILED,
                level=logging.CRITICAL,
                file=str(exc.path),
                error=exc.reason,
                action=f"acknowledgements stopped; retrying every {STORE_RETRY_SECONDS:g} s",
            )
