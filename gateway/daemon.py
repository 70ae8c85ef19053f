"""The gateway daemon's main loop: MQTT ingest with manual acknowledgements, batched commits
to SQLite then acknowledgements to wearables, handshakes in a worker thread, retention,
housekeeping, status, SIGTERM drain and SIGHUP reload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import GatewayConfig
from gateway.delivery import DeliveryLedger, HandshakeFloors, NoticeLimiter, OutboundMessage
from gateway.ingest import (
    Accepted,
    Duplicate,
    HandshakeRequest,
    IngestProcessor,
    Reason,
    Rejected,
    reason_for,
)
from gateway.logs import EventLog
from gateway.metrics import GatewayCollector, MetricsServer
from gateway.sessions import RateLimiter, SessionEntry, SessionTable
from gateway.store import (
    StoredSession,
    StoreFullError,
    StoreIOError,
    StoreUnusableError,
    VitalsRow,
    VitalsStore,
)
from gateway.systemd import Notifier
from pqlink import (
    HandshakeConfig,
    HandshakeResponder,
    Identity,
    KeyFileError,
    PqlinkError,
    RekeyPolicy,
    Suite,
    load_identity,
    load_registry,
    parse_init,
)
from pqlink.delivery import UnknownSessionNotice
from pqlink.record import export_session, restore_session
from pqlink.topics import TopicKind, TopicLayout

if TYPE_CHECKING:
    from gateway.federation import FederationClient

_LOG_ONCE_INTERVAL = 60.0
_LOG_RATE, _LOG_BURST = 5.0, 50  # rejection lines per second over all devices and reasons
_STORE_RETRY_SECONDS = 1.0  # while the disk is full: how often a commit is tried again
_RETENTION_INTERVAL = 60.0  # seconds between retention passes (the first runs at start)
_WAL_TRUNCATE_AFTER = 10_000  # rows deleted in one pass after which the WAL is truncated
_STATUS_PAGE = 4096

EXIT_STORE_UNUSABLE = 5
"""The store file is unusable: the unit's RestartPreventExitStatus= lists it (see cli)."""


@dataclass
class _Batch:
    rows: list[VitalsRow] = field(default_factory=list)
    acks: list[tuple[int, int, int]] = field(default_factory=list)  # (generation, mid, qos)
    dropped: list[bytes] = field(default_factory=list)
    after_commit: list[Callable[[], Any]] = field(default_factory=list)
    delivered: DeliveryLedger = field(default_factory=DeliveryLedger)

    def __len__(self) -> int:
        return len(self.acks) + len(self.after_commit)

    def prepend(self, older: _Batch) -> None:
        """Put a batch whose commit failed back in front of this one, in order."""
        self.rows[:0] = older.rows
        self.acks[:0] = older.acks
        self.dropped[:0] = older.dropped
        self.after_commit[:0] = older.after_commit
        self.delivered.merge(older.delivered)


class GatewayDaemon:
    """One gateway: owns the MQTT connection, the store thread and the crypto thread."""

    def __init__(
        self,
        config: GatewayConfig,
        log: EventLog,
        notifier: Notifier,
        identity: Identity | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.notifier = notifier
        self.identity = identity or load_identity(config.identity)
        if self.identity.name != config.gateway_id:
            raise KeyFileError(
                f"identity {config.identity} is for {self.identity.name!r}, "
                f"but gateway.id is {config.gateway_id!r}"
            )
        if not config.registry.is_file():
            raise KeyFileError(
                f"registry {config.registry} does not exist: enroll the wearables first "
                "(iomt-gateway enroll, or iomt-emulate enroll)"
            )
        sc = config.sessions
        self.layout = TopicLayout(config.mqtt.topic_prefix, config.gateway_id)
        self.responder = HandshakeResponder(
            self.identity,
            load_registry(config.registry),
            HandshakeConfig(
                suites=(Suite.X25519MLKEM768_ASCON128_SHA256, Suite.MLKEM768_ASCON128_SHA256),
                max_clock_skew=sc.max_clock_skew,
                rekey=RekeyPolicy(sc.rekey_records, sc.rekey_seconds),
            ),
        )
        self.table = SessionTable(sc.max_sessions, sc.unconfirmed_timeout, sc.idle_timeout)
        self.processor = IngestProcessor(
            self.layout,
            self.table,
            max_record_bytes=sc.max_record_bytes,
            failure_limiter=RateLimiter(sc.device_records_per_second, sc.device_burst),
            handshake_limiter=RateLimiter(sc.device_handshakes_per_minute / 60.0, 3),
            plaintext=config.bench.plaintext_records,
        )
        self.store = VitalsStore(
            config.db_path,
            retention_days=config.store.retention_days,
            max_rows=config.store.max_rows,
        )
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.federation: FederationClient | None = None
        if config.uplink.amqp_url:
            # numpy and the trainer load only on gateways that take part in federated learning
            from gateway.federation import FederationClient  # noqa: PLC0415

            self.federation = FederationClient(
                config, self.identity, self.store, self._store_pool, log
            )
        self._crypto_pool = ThreadPoolExecutor(1, thread_name_prefix="crypto")
        self._batch = _Batch()
        self._flush_lock = asyncio.Lock()
        self._flush_wanted = asyncio.Event()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self._ready_sent = False
        self._logged: dict[tuple[str, str], float] = {}
        self._log_budget = RateLimiter(_LOG_RATE, _LOG_BURST, max_keys=1)
        self._pending_handshakes: set[asyncio.Task[None]] = set()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.floors = HandshakeFloors()
        self.notices = NoticeLimiter()
        # Cleared while the disk is full: ingest stops reading (nothing more is acknowledged)
        # until a commit succeeds again.
        self._store_ok = asyncio.Event()
        self._store_ok.set()
        self.store_state = "ok"
        self.counters: dict[str, int] = {
            "records_stored": 0,
            "records_duplicate": 0,
            "handshakes_ok": 0,
            "handshakes_failed": 0,
            "broker_connects": 0,
            "commits": 0,
            "commit_failures": 0,
            "acks_sent": 0,
            "notices_sent": 0,
            "rejections_unlogged": 0,
            "retention_deleted": 0,
        }
        self.started_at = time.time()

    # -- lifecycle ---------------------------------------------------------------------------

    def _restore_sessions(self) -> None:
        self.floors.load(self.store.handshake_floors())
        restored = dropped = 0
        for stored in self.store.load_sessions():
            try:
                peer = self.responder.registry.lookup(stored.device_id)
                session = restore_session(stored.state, peer)
            except PqlinkError:
                self._batch.dropped.append(stored.session_id)
                dropped += 1
                continue
            now = time.monotonic()
            self.table.add(SessionEntry(session, stored.device_id, now, now, dirty=False), now)
            restored += 1
        self.log.event("sessions_restored", count=restored, dropped=dropped)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.log.event("daemon_started", gateway=self.config.gateway_id, pid=os.getpid())
        if self.config.bench.plaintext_records:
            self.log.event(
                "insecure_benchmark_mode",
                level=logging.CRITICAL,
                reason="bench.plaintext_records: records are NOT authenticated",
            )
        await loop.run_in_executor(self._store_pool, self._restore_sessions)
        metrics = None
        if self.config.metrics.port:
            try:
                metrics = self._start_metrics()
            except OSError as bind_error:
                self.log.event("daemon_failed", level=logging.CRITICAL, reason=str(bind_error))
                await self._drain()
                return 1
        code = 0
        try:
            async with asyncio.TaskGroup() as tg:
                flusher = tg.create_task(self._flusher())
                housekeeping = tg.create_task(self._housekeeping())
                retention = tg.create_task(self._retention())
                if self.federation is not None:
                    tg.create_task(self.federation.run(self._stop))
                await self._mqtt_loop()
                flusher.cancel()
                housekeeping.cancel()
                retention.cancel()
        except* StoreUnusableError as group:
            unusable = group.exceptions[0]
            assert isinstance(unusable, StoreUnusableError)
            self.log.event(
                "daemon_failed",
                level=logging.CRITICAL,
                reason="store_unusable",
                file=str(unusable.path),
                error=unusable.reason,
                exit_code=EXIT_STORE_UNUSABLE,
            )
            code = EXIT_STORE_UNUSABLE
        except* Exception as group:
            for exc in group.exceptions:
                self.log.event(
                    "daemon_failed", level=logging.CRITICAL, reason=repr(exc), exit_code=1
                )
            code = 1
        for task in list(self._side_tasks):
            task.cancel()
        await self._drain()
        if metrics is not None:
            metrics.close()
        self.log.event("daemon_stopped", records=self.counters["records_stored"], exit_code=code)
        return code

    def _start_metrics(self) -> MetricsServer:
        hist = [self.federation.round_seconds] if self.federation is not None else []
        server = MetricsServer(
            self.config.metrics.host,
            self.config.metrics.port,
            [GatewayCollector(self.status, hist)],
        )
        self.log.event("metrics_listening", host=self.config.metrics.host, port=server.port)
        return server

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self.notifier.stopping()
            self.log.event("daemon_stopping")
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the registry; sessions of revoked or removed devices end now."""
        self.notifier.reloading()
        try:
            registry = load_registry(self.config.registry)
        except PqlinkError as exc:
            self.log.event("registry_reload_failed", level=logging.ERROR, reason=str(exc))
            self.notifier.ready()
            return
        self.responder.registry = registry
        ended = 0
        for device in self.table.devices():
            try:
                registry.lookup(device)
            except PqlinkError:
                for entry in self.table.drop_device(device):
                    self._batch.dropped.append(entry.session.session_id)
                    ended += 1
        self.log.event("registry_reloaded", count=len(registry), sessions_ended=ended)
        self.notifier.ready()

    async def _drain(self) -> None:
        """Commit whatever is left (unacknowledged: the broker redelivers it, and the store
        drops the duplicates) and close the store."""
        with contextlib.suppress(Exception):
            await self._flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._store_pool, self.store.close)
        self._store_pool.shutdown()
        self._crypto_pool.shutdown()
        self._write_status()

    # -- MQTT --------------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        mc = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = mc.session_expiry
        props.ReceiveMaximum = mc.receive_maximum
        client = aiomqtt.Client(
            mc.host,
            mc.port,
            username=mc.username,
            password=mc.password,
            identifier=self.config.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # resume our broker-side session: nothing queued is lost
            keepalive=mc.keepalive,
            properties=props,
            timeout=10,
        )
        # Acknowledgements and notices are published concurrently with ingest: without this,
        # aiomqtt writes plain-text "pending publish calls" warnings into the event stream.
        client.pending_calls_threshold = 1_000_000
        # aiomqtt has no public manual-ack API yet (empicano/aiomqtt#345); paho-mqtt >= 2.0 has
        # it. Acknowledge only after the records are committed to SQLite.
        client._client.manual_ack_set(True)
        return client

    async def _mqtt_loop(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            client = self._make_client()
            try:
                async with client:
                    self._generation += 1
                    self._client = client
                    await client.subscribe(
                        [
                            (self.layout.subscription(TopicKind.HANDSHAKE), 1),
                            (self.layout.subscription(TopicKind.RECORD), 1),
                        ]
                    )
                    self.counters["broker_connects"] += 1
                    self.log.event(
                        "broker_connected", host=self.config.mqtt.host, port=self.config.mqtt.port
                    )
                    if not self._ready_sent:
                        self._ready_sent = True
                        self.notifier.ready()
                        self.log.event("daemon_ready")
                    delay = 0.2
                    if await self._serve(client):
                        return
            except aiomqtt.MqttError as exc:
                self._client = None
                self.log.event("broker_disconnected", level=logging.WARNING, reason=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, self.config.mqtt.reconnect_max_delay)
            finally:
                self._client = None

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Consume until the connection fails (raises) or a stop is requested (returns True
        after committing and acknowledging everything received, while still connected)."""
        consume = asyncio.create_task(self._consume(client))
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({consume, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consume, stop):
                task.cancel()
        if consume in done:
            consume.result()  # raises MqttError
            return False
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await consume
        if self._pending_handshakes:
            await asyncio.wait(self._pending_handshakes, timeout=5)
        await self._flush()
        return True

    async def _consume(self, client: aiomqtt.Client) -> None:
        generation = self._generation
        batch_max = self.config.store.batch_max
        process = self.processor.handle
        async for message in client.messages:
            topic = message.topic.value
            now = time.monotonic()
            outcome = process(topic, bytes(message.payload), now, int(time.time() * 1000))
            ack = (generation, message.mid, message.qos)
            batch = self._batch
            if isinstance(outcome, Accepted):
                batch.rows.append(outcome.row)
                batch.acks.append(ack)
                if outcome.session_id:
                    batch.delivered.add(outcome.session_id, outcome.row[1], outcome.row[2])
            elif isinstance(outcome, HandshakeRequest):
                task = asyncio.create_task(self._handshake(outcome, ack, now))
                self._pending_handshakes.add(task)
                task.add_done_callback(self._pending_handshakes.discard)
            elif isinstance(outcome, Duplicate):
                batch.acks.append(ack)
                self.counters["records_duplicate"] += 1
            else:
                batch.acks.append(ack)
                if not outcome.quiet:
                    self._log_rejection(outcome)
                    if outcome.reason is Reason.UNKNOWN_SESSION and outcome.device_id:
                        self._answer_unknown_session(outcome.device_id, outcome.session_id, now)
            if len(self._batch) >= batch_max:
                # Back-pressure: stop reading until this batch is on disk.
                await self._flush()
            if not self._store_ok.is_set():
                # The disk is full: read nothing more (it stays queued at the broker and in
                # the wearables) until a commit succeeds again.
                await self._store_ok.wait()

    async def _handshake(
        self, request: HandshakeRequest, ack: tuple[int, int, int], now: float
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._crypto_pool, self.responder.respond, request.frame
            )
        except PqlinkError as exc:
            reason = reason_for(exc)
            self.counters["handshakes_failed"] += 1
            self.processor.rejected[reason.value] += 1
            self._batch.acks.append(ack)
            self._log_rejection(Rejected(request.device_id, reason, str(exc)), "session_rejected")
            return
        if result.initiator.name != request.device_id:
            self.counters["handshakes_failed"] += 1
            self.processor.rejected[Reason.WRONG_TOPIC.value] += 1
            self._batch.acks.append(ack)
            self._log_rejection(
                Rejected(request.device_id, Reason.WRONG_TOPIC, "init names another device"),
                "session_rejected",
            )
            return
        if not self.floors.admit(request.device_id, parse_init(request.frame).timestamp_ms):
            # Older than an init this device already used, maybe before our restart (the
            # in-memory replay cache is empty then): a replay must not evict a live session.
            self.counters["handshakes_failed"] += 1
            self.processor.rejected[Reason.REPLAY.value] += 1
            self._batch.acks.append(ack)
            self._log_rejection(
                Rejected(request.device_id, Reason.REPLAY, "init is not newer than the last"),
                "session_rejected",
            )
            return
        entry = SessionEntry(result.session, request.device_id, now, now, dirty=True)
        for old in self.table.add(entry, now):
            self._batch.dropped.append(old.session.session_id)
        topic = self.layout.topic(TopicKind.RESPONSE, request.device_id)
        response = result.response
        sid = result.session.session_id.hex()[:8]

        def established() -> None:
            # Published only once the session is durable, so records never outrun it.
            self.counters["handshakes_ok"] += 1
            self.log.event("session_established", device_id=request.device_id, session_id=sid)
            client = self._client
            if client is not None:
                asyncio.get_running_loop().create_task(self._publish(client, topic, response))

        self._batch.acks.append(ack)
        self._batch.after_commit.append(established)
        self._flush_wanted.set()

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, payload, qos=1)

    async def _publish_all(self, client: aiomqtt.Client, messages: list[OutboundMessage]) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1)
                self.counters["acks_sent"] += 1

    def _spawn(self, coro: Any) -> None:
        """A fire-and-forget publication owned by the daemon (cancelled at shutdown)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _answer_unknown_session(self, device_id: str, session_id: bytes, now: float) -> None:
        """Tell the wearable, signed, that we hold no such session, so it handshakes again at
        once instead of sealing records we must refuse; bounded per session id and overall."""
        if len(session_id) != 8 or not self.notices.allow(session_id, now):
            return
        notice = UnknownSessionNotice(
            self.config.gateway_id, device_id, session_id, int(time.time() * 1000)
        )
        topic = self.layout.topic(TopicKind.NOTICE, device_id)

        async def send() -> None:
            loop = asyncio.get_running_loop()
            frame = await loop.run_in_executor(self._crypto_pool, notice.sign, self.identity)
            client = self._client
            if client is not None:
                self.counters["notices_sent"] += 1
                await self._publish(client, topic, frame)

        self._spawn(send())

    def _log_rejection(self, rejected: Rejected, event: str = "record_rejected") -> None:
        key = (rejected.device_id or "-", rejected.reason.value)
        now = time.monotonic()
        if now - self._logged.get(key, -_LOG_ONCE_INTERVAL) < _LOG_ONCE_INTERVAL:
            return
        # Per key, then overall: rotating device ids in topics must not fill the journal.
        if not self._log_budget.allow("*", now):
            self.counters["rejections_unlogged"] += 1
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[key] = now
        self.log.event(
            event,
            level=logging.WARNING,
            device_id=rejected.device_id,
            reason=rejected.reason.value,
            detail=rejected.detail,
        )

    # -- commits -----------------------------------------------------------------------------

    async def _flusher(self) -> None:
        interval = self.config.store.batch_interval
        while True:
            wait = interval if self._store_ok.is_set() else _STORE_RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_wanted.wait(), wait)
            self._flush_wanted.clear()
            await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            batch, self._batch = self._batch, _Batch()
            floors = self.floors.take_dirty()
            dirty = [e for e in self.table.entries() if e.dirty]
            if (
                not batch.acks
                and not batch.after_commit
                and not batch.dropped
                and not dirty
                and not floors
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
                inserted = await loop.run_in_executor(
                    self._store_pool,
                    self.store.commit,
                    batch.rows,
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
                self._store_blocked(exc)
                return
            except StoreUnusableError as exc:
                self.log.event(
                    "store_failed", level=logging.CRITICAL, file=str(exc.path), error=exc.reason
                )
                raise
            if not self._store_ok.is_set():
                self.store_state = "ok"
                self._store_ok.set()
                self.log.event("store_resumed", records=len(batch.rows))
            self.counters["commits"] += 1
            self.counters["records_stored"] += inserted
            self.counters["records_duplicate"] += len(batch.rows) - inserted
            self._ack(batch.acks)
            client = self._client
            if outbound and client is not None:
                self._spawn(self._publish_all(client, outbound))
            for callback in batch.after_commit:
                callback()

    def _store_blocked(self, exc: StoreFullError | StoreIOError) -> None:
        self.counters["commit_failures"] += 1
        if self._store_ok.is_set():
            self._store_ok.clear()
            full = isinstance(exc, StoreFullError)
            self.store_state = "full" if full else "io_error"
            self.log.event(
                "store_full" if full else "store_io_failed",
                level=logging.CRITICAL,
                file=str(exc.path),
                error=exc.reason,
                action=f"acknowledgements stopped; retrying every {_STORE_RETRY_SECONDS:g} s",
            )

    def _ack(self, acks: list[tuple[int, int, int]]) -> None:
        client = self._client
        if client is None:
            return
        paho = client._client
        generation = self._generation
        for gen, mid, qos in acks:
            # Acks for a previous connection are void: the broker redelivers those messages.
            if gen == generation and qos > 0:
                paho.ack(mid, qos)

    # -- housekeeping ------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        watchdog = self.notifier.watchdog_interval
        period = min(1.0, watchdog) if watchdog else 1.0
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            for entry in self.table.expire(now):
                self._batch.dropped.append(entry.session.session_id)
                self.log.event(
                    "session_expired",
                    device_id=entry.device_id,
                    session_id=entry.session.session_id.hex()[:8],
                )
            if self.federation is not None:
                self.federation.counters["spool_depth"] = await loop.run_in_executor(
                    self._store_pool, self.federation.spool.depth
                )
            self.notifier.watchdog()
            self.notifier.status(self.status_line())
            self._write_status()
            await asyncio.sleep(period)

    async def _retention(self) -> None:
        """Keep the age limit and max_rows continuously, in bounded steps on the store thread
        (commits interleave; the watchdog loop never waits for a pass). The first pass runs
        at start."""
        loop = asyncio.get_running_loop()
        while True:
            deleted = 0
            try:
                while self._store_ok.is_set():
                    step = await loop.run_in_executor(self._store_pool, self.store.retention_step)
                    deleted += step.deleted
                    if step.done:
                        break
                if deleted >= _WAL_TRUNCATE_AFTER:
                    await loop.run_in_executor(self._store_pool, self.store.checkpoint)
            except (StoreFullError, StoreIOError) as exc:
                self.log.event("retention_failed", level=logging.WARNING, error=exc.reason)
            if deleted:
                self.counters["retention_deleted"] += deleted
                self.log.event("retention_applied", count=deleted)
            await asyncio.sleep(_RETENTION_INTERVAL)

    def status(self) -> dict[str, Any]:
        return {
            "gateway": self.config.gateway_id,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "connected": self._client is not None,
            "store": self.store_state,
            "sessions": len(self.table),
            "records_accepted": self.processor.accepted,
            **self.counters,
            "records_over_failure_budget": self.processor.over_budget,
            "notices_suppressed": self.notices.suppressed,
            "rejected": dict(sorted(self.processor.rejected.items())),
            "federation": self.federation.status() if self.federation is not None else None,
        }

    def status_line(self) -> str:
        rejected = sum(self.processor.rejected.values())
        state = "connected" if self._client is not None else "connecting"
        if self.store_state != "ok":
            state += f", store {self.store_state}: not acknowledging"
        return (
            f"{state}; {len(self.table)} sessions; {self.counters['records_stored']} records "
            f"stored; {rejected} rejected"
        )

    def _write_status(self) -> None:
        """Replace the status file atomically; on a full disk, overwrite it in place (it is
        padded to whole pages, so that needs no new blocks) so `status` keeps working."""
        path = self.config.status_path
        data = (json.dumps(self.status(), indent=2) + "\n").encode()
        data += b" " * (-len(data) % _STATUS_PAGE)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
                fd = os.open(path, os.O_WRONLY)
                try:
                    if os.fstat(fd).st_size >= len(data):
                        os.pwrite(fd, data.ljust(os.fstat(fd).st_size), 0)
                finally:
                    os.close(fd)


def read_status(config: GatewayConfig) -> Mapping[str, Any]:
    return dict(json.loads(config.status_path.read_text()))
