"""The daemon's periodic chores: idle sessions expired, retention applied, the spool depth
read, the systemd watchdog fed and the status file rewritten, once a second."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.pipeline import CommitPipeline
from gateway.sessions import SessionTable
from gateway.store import VitalsStore
from servicekit.logs import EventLog
from servicekit.notify import Notifier
from wire.reasons import Event

if TYPE_CHECKING:
    from gateway.federation import FederationClient

_RETENTION_EVERY = 3600.0


class StatusFile:
    """`status.json`, replaced atomically: what `iomt-gateway status` reads."""

    def __init__(self, path: Path, status: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.status = status

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), indent=2) + "\n")
        os.replace(tmp, self.path)


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
        last_retention = -_RETENTION_EVERY
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            for entry in self.table.expire(now):
                self.pipeline.drop_session(entry.session.session_id)
                self.log.event(
                    Event.SESSION_EXPIRED,
                    device_id=entry.device_id,
                    session_id=entry.session.session_id.hex()[:8],
                )
            if now - last_retention > _RETENTION_EVERY:
                last_retention = now
                deleted = await loop.run_in_executor(self.store_pool, self.store.enforce_retention)
                if deleted:
                    self.log.event(Event.RETENTION_APPLIED, count=deleted)
            if self.federation is not None:
                await self.federation.refresh_spool_depth()
            self.notifier.watchdog()
            self.notifier.status(self.status_line())
            self.status_file.write()
            # A period, not a wait for a condition: the chores are due once a second.
            await asyncio.sleep(period)
