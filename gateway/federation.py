"""The daemon's federated-learning component: global models in from the uplink, the energy
policy's decision, local training in a worker thread, sealed updates out through the spool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from gateway.config import GatewayConfig
from gateway.energy import (
    POWER_MODELS,
    Decision,
    EnergyPolicy,
    EnergyPolicyConfig,
    ScheduleDecision,
    read_energy,
)
from gateway.learning import (
    FederatedLearner,
    GlobalModelRejectedError,
    ReceivedGlobal,
    TrainedUpdate,
)
from gateway.spool import Spool
from gateway.store import VitalsStore
from gateway.tasks import TASKS
from gateway.trainer import make_trainer
from gateway.uplink import Uplink
from gateway.windows import WindowCache
from pqlink import Identity, PqlinkError, load_public_identity, load_registry
from servicekit.logs import EventLog
from servicekit.metrics import round_histogram
from wire.envelopes import envelope_codec
from wire.reasons import Event

if TYPE_CHECKING:
    from gateway.secure_link import SecureLink, SecureRoundResult

T = TypeVar("T")
_LAST_ROUND = "last_round"


class _Trained(NamedTuple):
    """What the trainer thread hands back for a round: its windows, how long they took to
    gather, and the spooled update (None when the round was not a plain training round)."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int32]
    window_seconds: float
    update: TrainedUpdate | None


class FederationClient:
    """Owns the uplink and the learner loop; store and spool calls go to the store thread."""

    def __init__(
        self,
        config: GatewayConfig,
        identity: Identity,
        store: VitalsStore,
        store_pool: Executor,
        log: EventLog,
    ) -> None:
        lc = config.learning
        self.config = config
        self.identity = identity
        self.store = store
        self.store_pool = store_pool
        self.log = log
        self.spool = Spool(config.spool_path)
        self.task = TASKS[lc.task]
        trainer = make_trainer(lc.model or self.task.model_path, lc.backend)  # type: ignore[arg-type]
        if (trainer.layout.features, trainer.layout.classes) != (
            self.task.features,
            self.task.classes,
        ):
            raise ValueError(
                f"model {lc.model} has {trainer.layout.features} features and "
                f"{trainer.layout.classes} classes; task {lc.task} needs "
                f"{self.task.features} and {self.task.classes}"
            )
        policy = EnergyPolicy(
            EnergyPolicyConfig(
                min_battery_percent=lc.min_battery_percent,
                min_battery_percent_when_deadline_near=lc.min_battery_percent_when_deadline_near,
                max_cpu_load=lc.max_cpu_load,
                max_temperature_c=lc.max_temperature_c,
                min_free_memory_mb=lc.min_free_memory_mb,
                require_ac_power=lc.require_ac_power,
                defer_check_interval_s=lc.defer_check_interval,
            )
        )
        codec = envelope_codec(config.bench.plaintext_envelopes)
        self.learner = FederatedLearner(
            identity,
            load_public_identity(config.aggregator_public_path),
            trainer,
            policy,
            POWER_MODELS[lc.power_model],
            codec=codec,
            balanced=lc.balanced_sampling,
            restricted=lc.restricted_softmax,
        )
        self.windows = (
            WindowCache(
                store,
                max_samples_per_device=lc.max_samples_per_device,
                max_windows=lc.max_windows,
            )
            if self.task.name == "vitals"
            else None
        )
        self._wake = asyncio.Event()
        self.uplink = Uplink(
            config.uplink.amqp_url or "",
            config.gateway_id,
            self.spool,
            store_pool,
            log,
            self._wake_learner,
            max_delay=config.uplink.reconnect_max_delay,
            codec=codec,
        )
        self._train_pool = ThreadPoolExecutor(1, thread_name_prefix="trainer")
        # a secure round blocks on its stages: it gets its own thread and stop flag
        self._secure_pool = ThreadPoolExecutor(1, thread_name_prefix="secagg")
        self._secure_stop = threading.Event()
        # one link for all secure rounds: it keeps the keys it made ahead for the next one
        self._secure_link: SecureLink | None = None
        self.counters: dict[str, Any] = {
            "rounds_trained": 0,
            "rounds_skipped": 0,
            "rounds_deferred": 0,
            "globals_rejected": 0,
            "last_round": 0,
            "model_version": 0,
            "backend": trainer.backend,
            "last_update": {},
            "last_global_round": 0,
            "last_global_received_at": None,
            "energy_joules_total": 0.0,
            "crypto_cpu_seconds_total": 0.0,
            "round_cpu_seconds_total": 0.0,
            "spool_depth": 0,
            "secure_rounds": 0,
            "secure_rounds_aborted": 0,
            "statistics_rounds": 0,  # window moments sent instead of an update
        }
        # training + sealing of each answered round, for the metrics endpoint
        self.round_seconds = round_histogram(
            "iomt_gateway_round_seconds",
            "local round latency: global model received to sealed update spooled",
        )

    async def _wake_learner(self) -> None:
        self._wake.set()

    async def _in(self, pool: Executor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def status(self) -> dict[str, Any]:
        return {
            **self.counters,
            "uplink_connected": self.uplink.connected,
            "updates_published": self.uplink.published,
        }

    async def refresh_spool_depth(self) -> None:
        """Sealed updates not yet confirmed by RabbitMQ (read in the store thread)."""
        self.counters["spool_depth"] = await self._in(self.store_pool, self.spool.depth)

    async def run(self, stop: asyncio.Event) -> None:
        self.counters["last_round"] = await self._in(
            self.store_pool, self.spool.get_state, _LAST_ROUND
        )
        self._wake.set()  # a global model may be waiting in the spool from before a restart
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.uplink.run(stop))
                learner = tg.create_task(self._learn(stop))
                await stop.wait()
                self._secure_stop.set()
                learner.cancel()
        finally:
            # Also when the uplink or the learner failed: the spool's handle is closed.
            self._train_pool.shutdown()
            self._secure_pool.shutdown()
            if self._secure_link is not None:  # its pool thread is done with it
                self._secure_link.close()
            await self._in(self.store_pool, self.spool.close)

    async def _learn(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            item = await self._in(self.store_pool, self.spool.take_global)
            if item is None:
                continue
            round_, envelope = item
            if round_ <= self.counters["last_round"]:
                await self._in(self.store_pool, self.spool.done_global, round_)
                continue
            await self._round(round_, envelope, stop)

    async def _finish(self, round_: int) -> None:
        def commit() -> None:
            with self.spool.transaction():  # one sync to disk for both
                self.spool.set_state(_LAST_ROUND, round_)
                self.spool.done_global(round_)

        await self._in(self.store_pool, commit)
        self.counters["last_round"] = round_

    def _open(self, envelope: bytes) -> tuple[ReceivedGlobal, ScheduleDecision | None]:
        """Trainer thread: open and apply the global model, and the energy policy's first
        decision on it (psutil reads files: not on the event loop). One hand-off for all
        three, where each used to cost the event loop a round trip of its own."""
        received = self.learner.open_global(envelope)
        self.learner.apply(received)
        if received.model.settings.final:
            return received, None
        return received, self.learner.decide(read_energy(), received, time.time())

    async def _round(self, round_: int, envelope: bytes, stop: asyncio.Event) -> None:
        cpu0 = time.process_time()  # the round's CPU on this gateway, every thread
        try:
            received, decision = await self._in(self._train_pool, self._open, envelope)
        except (PqlinkError, GlobalModelRejectedError) as exc:
            self.counters["globals_rejected"] += 1
            self.log.event(
                Event.GLOBAL_REJECTED, level=logging.WARNING, round=round_, reason=str(exc)
            )
            await self._in(self.store_pool, self.spool.done_global, round_)
            return
        self.counters["model_version"] = received.version
        self.counters["last_global_round"] = round_
        self.counters["last_global_received_at"] = received.received_at
        self.log.event(Event.GLOBAL_APPLIED, round=round_, version=received.version)
        if decision is None:  # the final model: applied, nothing to train
            await self._finish(round_)
            return
        while True:
            if decision.decision is Decision.TRAIN_NOW:
                break
            if decision.decision is Decision.SKIP:
                self.counters["rounds_skipped"] += 1
                self.log.event(
                    Event.ROUND_SKIPPED,
                    round=round_,
                    reason=decision.reason,
                    detail=decision.detail,
                )
                await self._finish(round_)
                return
            self.counters["rounds_deferred"] += 1
            self.log.event(
                Event.ROUND_DEFERRED, round=round_, reason=decision.reason, detail=decision.detail
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.learning.defer_check_interval)
            if stop.is_set():
                return
            decision = await self._in(
                self._train_pool,
                lambda: self.learner.decide(read_energy(), received, time.time()),
            )
        await self._train(round_, received, cpu0)

    def _windows(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], float]:
        """The round's training windows (store thread) and the thread CPU seconds they took:
        vitals windows come from the incremental cache (only rows stored since the last round
        are read); another task rebuilds its windows."""
        cpu0 = time.thread_time()
        if self.windows is not None:
            self.windows.refresh()
            x, y = self.windows.training_set()
        else:
            x, y = self.task.windows(self.store, self.config.learning.max_samples_per_device)
        return x, y, time.thread_time() - cpu0

    def _spool_update(self, round_: int, update: TrainedUpdate) -> None:
        """Store thread. Never half of it, and not synced to disk on the round's path: the
        process dying loses nothing; power lost before the next synced commit (a key epoch's
        entry, or SQLite's checkpoint of the log) rolls the spool back to that commit: the
        gateway takes the newest global model from the stream again and trains on it, and an
        update that reached the broker twice is counted once by the coordinator (an older
        round's, rejected as stale)."""
        with self.spool.transaction(synced=False):
            self.spool.put_update(round_, update.envelope, update.metrics["seal_seconds"])
            self.spool.set_state(_LAST_ROUND, round_)
            self.spool.done_global(round_)

    def _train_and_spool(self, round_: int, received: ReceivedGlobal) -> _Trained:
        """Trainer thread: the windows (from the store thread), local training, the sealed
        update, and the update spooled (store thread again). The store work is handed to the
        store thread from here and waited for, so a plain round costs the event loop one
        hand-off instead of three. Returns without training when the round is not a plain
        training round (too few windows, a statistics or a secure round)."""
        t0 = time.monotonic()
        x, y, window_cpu = self.store_pool.submit(self._windows).result()
        window_seconds = time.monotonic() - t0
        settings = received.model.settings
        if (
            len(y) < self.config.learning.min_windows
            or settings.feature_stats
            or settings.secure_aggregation
        ):
            return _Trained(x, y, window_seconds, None)
        update = self.learner.train_and_seal(
            received,
            x,
            y,
            round_,
            {
                "window_seconds": window_seconds,
                "window_cpu_seconds": window_cpu,
                # This gateway's totals before this round, for the aggregator's report: a
                # benchmark takes the post-quantum share of the rounds it measures from them.
                "rounds_trained_before": self.counters["rounds_trained"],
                "crypto_cpu_seconds_before": self.counters["crypto_cpu_seconds_total"],
                "round_cpu_seconds_before": self.counters["round_cpu_seconds_total"],
            },
        )
        self.store_pool.submit(self._spool_update, round_, update).result()
        return _Trained(x, y, window_seconds, update)

    async def _train(self, round_: int, received: ReceivedGlobal, cpu0: float) -> None:
        t0 = time.monotonic()
        trained = await self._in(self._train_pool, self._train_and_spool, round_, received)
        x, y, window_seconds, update = trained
        if update is None:
            if len(y) < self.config.learning.min_windows:
                self.counters["rounds_skipped"] += 1
                self.log.event(Event.ROUND_SKIPPED, round=round_, reason="no_data", count=len(y))
                await self._finish(round_)
                return
            if received.model.settings.feature_stats:
                await self._statistics(round_, received, x)
                return
            delta, metrics = await self._in(
                self._train_pool, self.learner.train_delta, received, x, y, round_
            )
            await self._secure(round_, delta, len(y), metrics)
            return
        self.uplink.wake()  # spooled: publish it before the bookkeeping below
        self.counters["last_round"] = round_
        self.counters["rounds_trained"] += 1
        self.counters["last_update"] = update.metrics
        self.counters["energy_joules_total"] += update.metrics["energy_joules"]
        # The post-quantum share of this gateway's rounds: opening the global model and
        # sealing the update, against all the CPU from model received to update spooled.
        self.counters["crypto_cpu_seconds_total"] += (
            update.metrics["global_open_cpu_seconds"] + update.metrics["seal_cpu_seconds"]
        )
        self.counters["round_cpu_seconds_total"] += time.process_time() - cpu0
        self.round_seconds.observe(time.monotonic() - t0)
        m = update.metrics
        self.log.event(
            Event.ROUND_TRAINED,
            round=round_,
            windows=m["windows"],
            window_ms=round(window_seconds * 1000, 1),
            loss_before=round(m["loss_before"], 4),
            loss_after=round(m["loss_after"], 4),
            train_ms=round(m["train_seconds"] * 1000, 1),
            energy_j=round(m["energy_joules"], 3),
            backend=m["backend"],
        )

    async def _statistics(
        self, round_: int, received: ReceivedGlobal, x: npt.NDArray[np.float32]
    ) -> None:
        """A statistics round: the moments of the windows instead of an update, through the
        same sum (secure or plain) with the window count as weight; no training."""
        self.log.event(Event.FEATURE_STATS_SENT, round=round_, windows=len(x))
        self.counters["statistics_rounds"] += 1
        if received.model.settings.secure_aggregation:
            vector = self.learner.statistics_update(received, x)
            await self._secure(
                round_, vector, len(x), {"windows": len(x), "energy_joules": 0.0}, trained=False
            )
            return
        update = await self._in(self._train_pool, self.learner.seal_statistics, received, x)

        def spool_it() -> None:
            with self.spool.transaction():
                self.spool.put_update(round_, update.envelope, update.metrics["seal_seconds"])
                self.spool.set_state(_LAST_ROUND, round_)
                self.spool.done_global(round_)

        await self._in(self.store_pool, spool_it)
        self.counters["last_round"] = round_
        self.uplink.wake()

    async def _secure(
        self,
        round_: int,
        delta: npt.NDArray[np.float32],
        samples: int,
        metrics: dict[str, Any],
        *,
        trained: bool = True,
    ) -> None:
        """Take part in the round's secure aggregation with the update: it leaves this
        gateway clipped, quantised, noised and masked (nothing goes through the spool: a
        masked input is worthless once its round is over)."""
        registry_path = self.config.gateway_registry_path
        if not registry_path.exists():
            self.log.event(
                Event.SECURE_ROUND_REFUSED,
                level=logging.WARNING,
                round=round_,
                reason="no_gateway_registry",
            )
            await self._finish(round_)
            return
        # Imported on the first secure round: its blocking AMQP client and the SecAgg
        # arithmetic are memory a gateway in plain rounds never needs.
        from gateway.secure_link import SecureLink  # noqa: PLC0415

        def update(_announcement: object) -> tuple[npt.NDArray[np.float64], int]:
            return delta.astype(np.float64), samples

        link = self._secure_link
        if link is None:
            link = self._secure_link = SecureLink(
                self.config.uplink.amqp_url or "",
                self.identity,
                self.learner.aggregator,
                load_registry(registry_path),
                update,
                codec=self.learner.codec,
            )
        else:
            link.peers = load_registry(registry_path)  # enrolments change between rounds
            link.update = update
        result: SecureRoundResult = await self._in(
            self._secure_pool,
            lambda: link.run_round(self._secure_stop, after_round=round_ - 1),
        )
        await self._finish(round_)
        self.counters["rounds_trained"] += int(trained)  # a statistics round trains nothing
        self.counters["secure_rounds"] += 1
        self.counters["secure_rounds_aborted"] += int(result.aborted)
        self.counters["last_update"] = metrics
        self.counters["energy_joules_total"] += metrics["energy_joules"]
        self.log.event(
            Event.SECURE_ROUND_FINISHED,
            round=round_,
            finished=result.finished,
            aborted=result.aborted,
            sent=",".join(k.name.lower() for k in result.sent),
            refused=len(result.refused),
            loss_after=round(metrics.get("loss_after", 0.0), 4),
        )
