"""The daemon's periodic chores: idle sessions expired, the spool depth read, the systemd
watchdog fed and the status file rewritten once a second; retention in bounded steps beside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.pipeline import CommitPipeline
from gateway.sessions import SessionTable
from gateway.store import StoreFullError, StoreIOError, VitalsStore
from servicekit.logs import EventLog
from servicekit.notify import Notifier
from wire.reasons import Event

if TYPE_CHECKING:
    from gateway.federation import FederationClient

RETENTION_EVERY = 60.0  # seconds between retention passes (the first runs at start)
WAL_TRUNCATE_AFTER = 10_000  # rows deleted in one pass after which the WAL is truncated
_STATUS_PAGE = 4096


class StatusFile:
    """`status.json`, replaced atomically: what `iomt-gateway status` reads. On a full disk
    it is overwritten in place instead (it is padded to whole pages, so that needs no new
    block), so `status` keeps working while the store cannot commit."""

    def __init__(self, path: Path, status: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.status = status

    def write(self) -> None:
        data = (json.dumps(self.status(), indent=2) + "\n").encode()
        data += b" " * (-len(data) % _STATUS_PAGE)
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
                fd = os.open(self.path, os.O_WRONLY)
                try:
                    size = os.fstat(fd).st_size
                    if size >= len(data):
                        os.pwrite(fd, data.ljust(size), 0)
                finally:
                    os.close(fd)


class Housekeeping:
    def __init__(
        self,
        table: SessionTable,
        pipeline: CommitPipeline,
        store: VitalsStore,
        store_pool: Executor,
        *,
        notifier: Notifier,
        log: EventLog,
        status_file: StatusFile,
        status_line: Callable[[], str],
        federation: FederationClient | None,
    ) -> None:
        self.table = table
        self.pipeline = pipeline
        self.store = store
        self.store_pool = store_pool
        self.notifier = notifier
        self.log = log
        self.status_file = status_file
        self.status_line = status_line
        self.federation = federation

    async def run(self) -> None:
        """Runs until cancelled."""
        watchdog = self.notifier.watchdog_interval
        period = min(1.0, watchdog) if watchdog else 1.0
        while True:
            now = time.monotonic()
            for entry in self.table.expire(now):
                self.pipeline.drop_session(entry.session.session_id)
                self.log.event(
                    Event.SESSION_EXPIRED,
                    device_id=entry.device_id,
                    session_id=entry.session.session_id.hex()[:8],
                )
            if self.federation is not None:
                await self.federation.refresh_spool_depth()
            self.notifier.watchdog()
            self.notifier.status(self.status_line())
            self.status_file.write()
            # A period, not a wait for a condition: the chores are due once a second.
            await asyncio.sleep(period)

    async def retention(self) -> None:
        """Keep the age limit and max_rows continuously, in bounded steps on the store thread
        (commits interleave; the watchdog loop above never waits for a pass); the first pass
        runs at start. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            deleted = 0
            try:
                while self.pipeline.store_ok.is_set():
                    step = await loop.run_in_executor(self.store_pool, self.store.retention_step)
                    deleted += step.deleted
                    if step.done:
                        break
                if deleted >= WAL_TRUNCATE_AFTER:
                    await loop.run_in_executor(self.store_pool, self.store.checkpoint)
            except (StoreFullError, StoreIOError) as exc:
                self.log.event(Event.RETENTION_FAILED, level=logging.WARNING, error=exc.reason)
            if deleted:
                self.pipeline.counters.retention_deleted += deleted
                self.log.event(Event.RETENTION_APPLIED, count=deleted)
            # A period: retention is due once a minute, whatever else happens.
            await asyncio.sleep(RETENTION_EVERY)
