"""The gateway daemon: wires its parts (MQTT edge, ingest, handshake dispatch, commit pipeline
with acknowledgements to wearables, housekeeping, retention, federated learning) and runs them
as owned tasks; SIGTERM drains, SIGHUP reloads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, GatewayConfig
from gateway.counters import ConnectionCounters
from gateway.delivery import HandshakeFloors, NoticeLimiter, OutboundMessage
from gateway.edge import EdgeError, EdgeSettings, Message, MqttEdge
from gateway.housekeeping import Housekeeping, StatusFile
from gateway.ingest import (
    Accepted,
    BareRecords,
    Duplicate,
    HandshakeRequest,
    IngestProcessor,
    Rejected,
)
from gateway.metrics import GatewayCollector
from gateway.pipeline import CommitPipeline
from gateway.sessions import RateLimiter, SessionEntry, SessionTable
from gateway.store import StoreUnusableError, VitalsStore
from pqlink import (
    HandshakeConfig,
    HandshakeResponder,
    Identity,
    KeyFileError,
    PqlinkError,
    RekeyPolicy,
    load_identity,
    load_registry,
    parse_init,
)
from pqlink.delivery import UnknownSessionNotice
from pqlink.record import restore_session
from servicekit.backoff import Backoff
from servicekit.logs import EventLog
from servicekit.metrics import MetricsServer
from servicekit.mqtt_tls import MqttTlsError, client_context
from servicekit.notify import Notifier
from wire.reasons import Event, Reason, reason_for
from wire.topics import TopicKind, TopicLayout

if TYPE_CHECKING:
    from gateway.federation import FederationClient

_LOG_ONCE_INTERVAL = 60.0
_LOG_RATE, _LOG_BURST = 5.0, 50  # rejection lines per second over all devices and reasons

EXIT_STORE_UNUSABLE = 5
"""The store file is unusable: the unit's RestartPreventExitStatus= lists it (see cli)."""


class GatewayDaemon:
    """One gateway. Owns the store and crypto threads; per broker connection, one TaskGroup
    owns the consumer and every handshake started on it."""

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
            records=BareRecords() if config.bench.plaintext_records else None,
        )
        tls = config.mqtt.tls
        try:
            # Built once: a missing or unreadable CA is a configuration error at start,
            # before the store is opened.
            tls_context = client_context(tls) if tls is not None else None
        except MqttTlsError as exc:
            raise ConfigError(f"[mqtt] tls_ca/tls_cert/tls_key: {exc}", key="mqtt.tls_ca") from None
        self.store = VitalsStore(
            config.db_path,
            retention_days=config.store.retention_days,
            max_rows=config.store.max_rows,
        )
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._crypto_pool = ThreadPoolExecutor(1, thread_name_prefix="crypto")
        self.floors = HandshakeFloors()
        self.notices = NoticeLimiter()
        self.pipeline = CommitPipeline(
            self.store,
            self._store_pool,
            self.table,
            log,
            batch_interval=config.store.batch_interval,
            layout=self.layout,
            floors=self.floors,
            publish=self._publish_all,
        )
        self.federation: FederationClient | None = None
        if config.uplink.amqp_url:
            # numpy and the trainer load only on gateways that take part in federated learning
            from gateway.federation import FederationClient  # noqa: PLC0415

            self.federation = FederationClient(
                config, self.identity, self.store, self._store_pool, log
            )
        self.status_file = StatusFile(config.status_path, self.status)
        self.housekeeping = Housekeeping(
            self.table,
            self.pipeline,
            self.store,
            self._store_pool,
            notifier=notifier,
            log=log,
            status_file=self.status_file,
            status_line=self.status_line,
            federation=self.federation,
        )
        mc = config.mqtt
        self.edge_settings = EdgeSettings(
            host=mc.host,
            port=mc.port,
            client_id=config.client_id,
            username=mc.username,
            password=mc.password,
            keepalive=mc.keepalive,
            receive_maximum=mc.receive_maximum,
            session_expiry=mc.session_expiry,
            tls_context=tls_context,
        )
        self.counters = ConnectionCounters()
        self._stop = asyncio.Event()
        self._edge: MqttEdge | None = None
        self._ready_sent = False
        self._logged: dict[tuple[str, str], float] = {}
        self._log_budget = RateLimiter(_LOG_RATE, _LOG_BURST, max_keys=1)
        self.rejections_unlogged = 0
        self.notices_sent = 0
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
                self.pipeline.drop_session(stored.session_id)
                dropped += 1
                continue
            now = time.monotonic()
            self.table.add(SessionEntry(session, stored.device_id, now, now, dirty=False), now)
            restored += 1
        self.log.event(Event.SESSIONS_RESTORED, count=restored, dropped=dropped)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.log.event(Event.DAEMON_STARTED, gateway=self.config.gateway_id, pid=os.getpid())
        if self.config.bench.plaintext_records:
            self.log.event(
                Event.INSECURE_BENCHMARK_MODE,
                level=logging.CRITICAL,
                reason="bench.plaintext_records: records are NOT authenticated",
            )
        await loop.run_in_executor(self._store_pool, self._restore_sessions)
        metrics = None
        if self.config.metrics.port:
            try:
                metrics = self._start_metrics()
            except OSError as bind_error:
                self.log.event(Event.DAEMON_FAILED, level=logging.CRITICAL, reason=str(bind_error))
                await self._drain()
                return 1
        code = 0
        try:
            async with asyncio.TaskGroup() as tg:
                committer = tg.create_task(self.pipeline.run())
                chores = tg.create_task(self.housekeeping.run())
                retention = tg.create_task(self.housekeeping.retention())
                if self.federation is not None:
                    tg.create_task(self.federation.run(self._stop))
                await self._connections()
                committer.cancel()
                chores.cancel()
                retention.cancel()
        except* StoreUnusableError as group:
            unusable = group.exceptions[0]
            assert isinstance(unusable, StoreUnusableError)
            self.log.event(
                Event.DAEMON_FAILED,
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
                    Event.DAEMON_FAILED, level=logging.CRITICAL, reason=repr(exc), exit_code=1
                )
            code = 1
        await self._drain()
        if metrics is not None:
            metrics.close()
        self.log.event(
            Event.DAEMON_STOPPED,
            records=self.pipeline.counters.records_stored,
            exit_code=code,
        )
        return code

    def _start_metrics(self) -> MetricsServer:
        hist = [self.federation.round_seconds] if self.federation is not None else []
        server = MetricsServer(
            self.config.metrics.host,
            self.config.metrics.port,
            [GatewayCollector(self.status, hist)],
        )
        self.log.event(Event.METRICS_LISTENING, host=self.config.metrics.host, port=server.port)
        return server

    def request_stop(self) -> None:
        if not self._stop.is_set():
            self.notifier.stopping()
            self.log.event(Event.DAEMON_STOPPING)
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the registry; sessions of revoked or removed devices end now."""
        self.notifier.reloading()
        try:
            registry = load_registry(self.config.registry)
        except PqlinkError as exc:
            self.log.event(Event.REGISTRY_RELOAD_FAILED, level=logging.ERROR, reason=str(exc))
            self.notifier.ready()
            return
        self.responder.registry = registry
        ended = 0
        for device in self.table.devices():
            try:
                registry.lookup(device)
            except PqlinkError:
                for entry in self.table.drop_device(device):
                    self.pipeline.drop_session(entry.session.session_id)
                    ended += 1
        self.log.event(Event.REGISTRY_RELOADED, count=len(registry), sessions_ended=ended)
        self.notifier.ready()

    async def _drain(self) -> None:
        """Commit whatever is left (unacknowledged: the broker redelivers it, and the store
        drops the duplicates) and close the store."""
        with contextlib.suppress(Exception):
            await self.pipeline.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._store_pool, self.store.close)
        self._store_pool.shutdown()
        self._crypto_pool.shutdown()
        self.status_file.write()

    # -- connections -------------------------------------------------------------------------

    async def _connections(self) -> None:
        """One edge per connection, reconnecting with backoff until asked to stop."""
        backoff = Backoff(0.2, self.config.mqtt.reconnect_max_delay)
        subscriptions = (
            self.layout.subscription(TopicKind.HANDSHAKE),
            self.layout.subscription(TopicKind.RECORD),
        )
        while not self._stop.is_set():
            try:
                async with MqttEdge(self.edge_settings, subscriptions) as edge:
                    self._edge = edge
                    self.counters.broker_connects += 1
                    self.log.event(
                        Event.BROKER_CONNECTED,
                        host=self.config.mqtt.host,
                        port=self.config.mqtt.port,
                    )
                    if not self._ready_sent:
                        self._ready_sent = True
                        self.notifier.ready()
                        self.log.event(Event.DAEMON_READY)
                    backoff.succeeded()
                    await self._serve(edge)
                    return
            except EdgeError as exc:
                self._edge = None
                self.log.event(Event.BROKER_DISCONNECTED, level=logging.WARNING, reason=str(exc))
                await backoff.wait(self._stop)
            finally:
                self._edge = None

    async def _serve(self, edge: MqttEdge) -> None:
        """Consume until the connection fails (EdgeError) or a stop is requested; then commit
        and acknowledge everything received, while still connected."""
        try:
            async with asyncio.TaskGroup() as tg:
                consumer = tg.create_task(self._consume(edge, tg))
                await self._stop.wait()
                consumer.cancel()
                # Leaving the group waits for the handshakes already started on this edge.
        except* EdgeError as group:
            raise group.exceptions[0] from None
        await self.pipeline.flush()

    async def _consume(self, edge: MqttEdge, tg: asyncio.TaskGroup) -> None:
        batch_max = self.config.store.batch_max
        process = self.processor.handle
        async for message in edge.messages():
            now = time.monotonic()
            outcome = process(message.topic, message.payload, now, int(time.time() * 1000))
            if isinstance(outcome, Accepted):
                self.pipeline.record(
                    outcome.row,
                    outcome.beats,
                    (edge, message),
                    outcome.session_id,
                    outcome.record_id,
                )
            elif isinstance(outcome, HandshakeRequest):
                tg.create_task(self._handshake(edge, message, outcome, now))
            elif isinstance(outcome, Duplicate):
                self.pipeline.acknowledge((edge, message))
                self.pipeline.counters.records_duplicate += 1
            else:
                self.pipeline.acknowledge((edge, message))
                if not outcome.quiet:
                    self._log_rejection(outcome)
                    if outcome.reason is Reason.UNKNOWN_SESSION and outcome.device_id:
                        self._answer_unknown_session(
                            tg, edge, outcome.device_id, outcome.session_id, now
                        )
            if len(self.pipeline) >= batch_max:
                # Back-pressure: stop reading until this batch is on disk.
                await self.pipeline.flush()
            if not self.pipeline.store_ok.is_set():
                # The disk is full: read nothing more (it stays queued at the broker and in
                # the wearables) until a commit succeeds again.
                await self.pipeline.store_ok.wait()

    async def _handshake(
        self, edge: MqttEdge, message: Message, request: HandshakeRequest, now: float
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._crypto_pool, self.responder.respond, request.frame
            )
        except PqlinkError as exc:
            self._handshake_failed(
                edge, message, Rejected(request.device_id, reason_for(exc), str(exc))
            )
            return
        if result.initiator.name != request.device_id:
            self._handshake_failed(
                edge,
                message,
                Rejected(request.device_id, Reason.WRONG_TOPIC, "init names another device"),
            )
            return
        if not self.floors.admit(request.device_id, parse_init(request.frame).timestamp_ms):
            # Older than an init this device already used, maybe before our restart (the
            # in-memory replay cache is empty then): a replay must not evict a live session.
            self._handshake_failed(
                edge,
                message,
                Rejected(request.device_id, Reason.REPLAY, "init is not newer than the last"),
            )
            return
        entry = SessionEntry(result.session, request.device_id, now, now, dirty=True)
        for old in self.table.add(entry, now):
            self.pipeline.drop_session(old.session.session_id)
        topic = self.layout.topic(TopicKind.RESPONSE, request.device_id)
        response = result.response
        sid = result.session.session_id.hex()[:8]

        def established() -> None:
            # Published only once the session is durable, so records never outrun it.
            self.counters.handshakes_ok += 1
            self.log.event(Event.SESSION_ESTABLISHED, device_id=request.device_id, session_id=sid)
            edge.publish(topic, response)

        self.pipeline.acknowledge((edge, message))
        self.pipeline.after_commit(established)

    def _handshake_failed(self, edge: MqttEdge, message: Message, rejected: Rejected) -> None:
        self.counters.handshakes_failed += 1
        self.counters.rejected[rejected.reason.value] += 1
        self.pipeline.acknowledge((edge, message))
        self._log_rejection(rejected, Event.SESSION_REJECTED)

    def _publish_all(self, messages: list[OutboundMessage]) -> None:
        """Acknowledgements to wearables, on the current connection (a lost one is resent)."""
        edge = self._edge
        if edge is not None:
            for topic, payload in messages:
                edge.publish(topic, payload)

    def _answer_unknown_session(
        self,
        tg: asyncio.TaskGroup,
        edge: MqttEdge,
        device_id: str,
        session_id: bytes,
        now: float,
    ) -> None:
        """Tell the wearable, signed, that we hold no such session, so it handshakes again at
        once instead of sealing records we must refuse; bounded per session id and overall.
        The notice belongs to the connection it answers on, like a handshake."""
        if len(session_id) != 8 or not self.notices.allow(session_id, now):
            return
        notice = UnknownSessionNotice(
            self.config.gateway_id, device_id, session_id, int(time.time() * 1000)
        )
        topic = self.layout.topic(TopicKind.NOTICE, device_id)

        async def send() -> None:
            loop = asyncio.get_running_loop()
            frame = await loop.run_in_executor(self._crypto_pool, notice.sign, self.identity)
            self.notices_sent += 1
            edge.publish(topic, frame)

        tg.create_task(send())

    def _log_rejection(self, rejected: Rejected, event: Event = Event.RECORD_REJECTED) -> None:
        key = (rejected.device_id or "-", rejected.reason.value)
        now = time.monotonic()
        if now - self._logged.get(key, -_LOG_ONCE_INTERVAL) < _LOG_ONCE_INTERVAL:
            return
        # Per key, then overall: rotating device ids in topics must not fill the journal.
        if not self._log_budget.allow("*", now):
            self.rejections_unlogged += 1
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

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        rejected = self.processor.rejected + self.counters.rejected
        commits = self.pipeline.counters
        return {
            "gateway": self.config.gateway_id,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "connected": self._edge is not None,
            "store": self.pipeline.store_state,
            "sessions": len(self.table),
            "records_accepted": self.processor.accepted,
            "records_stored": commits.records_stored,
            "records_duplicate": commits.records_duplicate,
            "rr_beats_stored": commits.rr_beats_stored,
            "rr_beats_duplicate": commits.rr_beats_duplicate,
            **self.counters.status(),
            "commits": commits.commits,
            "commit_failures": commits.commit_failures,
            "acks_sent": commits.acks_sent,
            "retention_deleted": commits.retention_deleted,
            "notices_sent": self.notices_sent,
            "notices_suppressed": self.notices.suppressed,
            "rejections_unlogged": self.rejections_unlogged,
            "records_over_failure_budget": self.processor.over_budget,
            "rejected": dict(sorted(rejected.items())),
            "federation": self.federation.status() if self.federation is not None else None,
        }

    def status_line(self) -> str:
        rejected = sum(self.processor.rejected.values()) + sum(self.counters.rejected.values())
        state = "connected" if self._edge is not None else "connecting"
        if self.pipeline.store_state != "ok":
            state += f", store {self.pipeline.store_state}: not acknowledging"
        return (
            f"{state}; {len(self.table)} sessions; {self.pipeline.counters.records_stored} "
            f"records stored; {rejected} rejected"
        )


def read_status(config: GatewayConfig) -> Mapping[str, Any]:
    return dict(json.loads(config.status_path.read_text()))
