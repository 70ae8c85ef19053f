"""The coordinator process: announces each round with a signed global-model broadcast,
applies the workers' partial sums, closes rounds at quorum or deadline, and repeats."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

from aggregator.config import AggregatorConfig
from aggregator.metrics import CoordinatorMetrics
from aggregator.partials import Partial, PartialError
from aggregator.privacy import BudgetDecision
from aggregator.rounds import (
    ClosedRound,
    CloseReason,
    RoundCoordinator,
    RoundPolicy,
    quorum_for,
)
from aggregator.secure_round import StageDeadlines, declare_secagg_topology
from aggregator.secure_rounds import (
    PrivacyGate,
    RoundPrivacySummary,
    mean_update,
    run_secure_round,
)
from aggregator.strategies import make_strategy
from aggregator.worker import PERSISTENT, broker_parameters, declare_topology
from pqlink import ContentType, Identity, Registry, Role, load_registry
from pqlink.broadcast import SealedBroadcast, seal_broadcast
from pqlink.secagg import AggregateResult
from servicekit.backoff import Backoff
from wire.amqp import GLOBAL_EXCHANGE, GLOBAL_KEYS_EXCHANGE, PARTIALS_QUEUE
from wire.envelopes import envelope_codec
from wire.fl import GlobalModel, RoundSettings
from wire.model import WEIGHT_NAMES

_LOG = logging.getLogger("aggregator.coordinator")

#: Partials applied in one transaction at most (a bound on what one commit holds).
_BATCH_MAX = 256


def initial_weights(path: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The flat float32 vector of the initial model, in the layout wire.model defines."""
    with np.load(path) as npz:
        missing = [name for name in WEIGHT_NAMES if name not in npz.files]
        if missing:
            raise ValueError(f"{path} lacks the weights {missing}")
        parts = [np.asarray(npz[name], dtype=np.float32).ravel() for name in WEIGHT_NAMES]
    return np.concatenate(parts).astype(np.float32)


def publish_broadcast(channel: BlockingChannel, sealed: SealedBroadcast) -> None:
    """Publish a sealed broadcast on a channel in transaction mode: the body once, into the
    global-model stream every gateway reads, and each key entry to its gateway's queue."""
    # One transaction for the body and every entry: one round trip to the broker for the
    # whole fan-out, where a confirm per message would cost one per gateway. The body goes
    # first: a gateway holding an entry can always find its body in the stream.
    channel.basic_publish(GLOBAL_EXCHANGE, "", sealed.body, PERSISTENT)
    for gateway, entry in sealed.entries.items():
        channel.basic_publish(GLOBAL_KEYS_EXCHANGE, gateway, entry, PERSISTENT)
    channel.tx_commit()


class CoordinatorService:
    """Couples a RoundCoordinator to RabbitMQ (pika, one blocking connection)."""

    def __init__(self, config: AggregatorConfig, identity: Identity, stop: threading.Event) -> None:
        self.config = config
        self.identity = identity
        self.stop = stop
        self.registry: Registry = load_registry(config.registry)
        self.reload_requested = threading.Event()
        self.codec = envelope_codec(config.bench.plaintext_envelopes)
        strategy = make_strategy(
            config.strategy.name,
            norm_bound=config.strategy.norm_bound or None,
            trim_fraction=config.strategy.trim_fraction,
            training=RoundSettings(**asdict(config.training)),
            server_momentum=config.strategy.server_momentum,
            server_learning_rate=config.strategy.server_learning_rate,
            lr_final_ratio=config.strategy.lr_final_ratio,
            schedule_rounds=config.rounds.max_rounds,
        )
        self.secure = config.training.secure_aggregation
        if self.secure and strategy.needs_individual_updates:
            raise ValueError(
                f"strategy {strategy.name} needs each update: it cannot run on masked sums"
            )
        weights = initial_weights(config.initial_weights)
        self.parameter_count = int(weights.size)
        self.rounds = RoundCoordinator(
            config.db_path,
            strategy,
            self._policy(),
            weights,
            keep_rounds=config.rounds.keep_rounds,
        )
        self._report_lines = 0
        pc = config.privacy
        self.privacy = PrivacyGate(
            config.db_path,
            config.training.noise_multiplier,
            pc.delta,
            pc.budget_epsilon or None,
        )
        self.budget_exhausted = False
        self._decision: BudgetDecision | None = None
        self.report_path = config.state_dir / "rounds.jsonl"
        # A count, not a list: a coordinator runs for months of rounds (rounds.jsonl and the
        # database keep the history).
        self.closed_rounds = 0
        self.last_published_at = 0.0
        self.last_seal_cpu = 0.0
        self._cpu_at_record = time.process_time()
        self.metrics = CoordinatorMetrics()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.round.set(self.rounds.round)
        self.metrics.model_version.set(self.rounds.version)
        self.metrics.gateways_enrolled.set(len(self.registry.active(Role.GATEWAY)))
        if hasattr(self, "privacy"):
            self.metrics.epsilon.set(self.privacy.epsilon())

    def _policy(self) -> RoundPolicy:
        rc = self.config.rounds
        enrolled = len(self.registry.active(Role.GATEWAY))
        return RoundPolicy(
            quorum_for(enrolled, rc.quorum_fraction, rc.min_participants),
            rc.round_timeout,
            rc.min_participants,
        )

    def reload(self) -> None:
        self.registry = load_registry(self.config.registry)
        self.rounds.policy = self._policy()
        self._update_gauges()
        _LOG.info("registry reloaded: %d gateways", len(self.registry.active(Role.GATEWAY)))

    def _global_model(self, *, final: bool) -> GlobalModel:
        r = self.rounds
        return GlobalModel(
            weights=r.weights.astype("<f4").tobytes(),
            parameter_count=self.parameter_count,
            round=r.round,
            deadline_ms=int(r.deadline * 1000),
            settings=r.strategy.configure_round(r.round, final=final),
        )

    def global_broadcast(self, *, final: bool = False) -> SealedBroadcast:
        """The signed global model as one sealed body for every gateway plus each enrolled
        gateway's key entry; `final` tells gateways to apply it and stop training."""
        r = self.rounds
        model = self._global_model(final=final)
        recipients = self.registry.active(Role.GATEWAY)
        if self.config.bench.plaintext_envelopes:  # benchmark baseline: crypto off
            frame = self.codec.seal(
                self.identity,
                recipients,
                model.encode(),
                content_type=ContentType.GLOBAL_MODEL,
                round=r.round,
                model_version=r.version,
            )
            return SealedBroadcast(frame, {})
        return seal_broadcast(
            self.identity,
            recipients,
            model.encode(),
            content_type=ContentType.GLOBAL_MODEL,
            round=r.round,
            model_version=r.version,
        )

    def _publish_global(self, channel: BlockingChannel, *, final: bool = False) -> None:
        if not self.registry.active(Role.GATEWAY):
            _LOG.warning("no gateway enrolled: nothing to announce")
            return
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        sealed = self.global_broadcast(final=final)
        self.last_seal_cpu = time.thread_time() - cpu0
        publish_broadcast(channel, sealed)
        self.last_published_at = time.time()
        entry_bytes = sum(map(len, sealed.entries.values()))
        _LOG.info(
            "round %d announced (model v%d, %d bytes body, %d bytes of key entries, %.1f ms)",
            self.rounds.round,
            self.rounds.version,
            len(sealed.body),
            entry_bytes,
            (time.perf_counter() - t0) * 1000,
        )

    def _record(self, closed: ClosedRound, seconds: float) -> None:
        cpu = time.process_time()
        entry = {
            **asdict(closed),
            "aggregation_seconds": seconds,
            "published_at": self.last_published_at,
            # CPU since the previous round's report (folding this round, closing it and
            # announcing the next), and the post-quantum part of it: sealing that broadcast
            "coordinator_cpu_seconds": cpu - self._cpu_at_record,
            "announce_seal_cpu_seconds": self.last_seal_cpu,
        }
        self._cpu_at_record = cpu
        with self.report_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        self._report_lines += 1
        keep = self.config.rounds.keep_rounds
        if keep and self._report_lines >= 2 * keep:
            # Rewritten once per `keep` rounds, so appending stays O(1) per round on average.
            lines = self.report_path.read_text().splitlines(keepends=True)[-keep:]
            tmp = self.report_path.with_suffix(".tmp")
            tmp.write_text("".join(lines))
            os.replace(tmp, self.report_path)
            self._report_lines = len(lines)

    def done(self) -> bool:
        max_rounds = self.config.rounds.max_rounds
        return self.budget_exhausted or (bool(max_rounds) and self.closed_rounds >= max_rounds)

    def _gate(self, channel: BlockingChannel) -> bool:
        """May the open round start under the privacy budget? If not, say so once, announce
        the current model as final and stop running rounds (the process stays up)."""
        enrolled = len(self.registry.active(Role.GATEWAY))
        decision = self.privacy.check(self.rounds.round, enrolled, enrolled)
        if decision is not None and not decision.allowed:
            self.budget_exhausted = True
            self.metrics.secure_rounds.labels("refused").inc()
            self._publish_global(channel, final=True)
            return False
        self._decision = decision
        return True

    def _privacy_summary(self, released: bool, dropouts: int) -> RoundPrivacySummary:
        epsilon = self.privacy.record(self._decision) if released else None
        self._decision = None
        if self.privacy.enabled and epsilon is None:
            epsilon = self.privacy.epsilon()
        self.metrics.epsilon.set(self.privacy.epsilon())
        return RoundPrivacySummary(
            self.secure,
            dropouts,
            epsilon,
            self.config.privacy.delta if self.privacy.enabled else None,
        )

    def serve(self) -> None:
        """Run rounds until stopped (or max_rounds closed); reconnect on broker failures."""
        params = broker_parameters(self.config.amqp.url, self.config.amqp.heartbeat)
        backoff = Backoff(0.2, 10.0)
        try:
            while not self.stop.is_set() and not self.done():
                try:
                    connection = pika.BlockingConnection(params)
                except AMQPError as exc:
                    _LOG.warning("coordinator cannot connect: %r", exc)
                    backoff.wait_blocking(self.stop)
                    continue
                backoff.succeeded()
                try:
                    self._serve_connection(connection)
                except AMQPError as exc:
                    _LOG.warning("coordinator lost the broker: %s", exc)
                    self.stop.wait(backoff.delay)
        finally:
            self.rounds.close()
            self.privacy.close()

    def _serve_connection(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, [g.name for g in self.registry.active(Role.GATEWAY)])
        channel.basic_qos(prefetch_count=self.config.amqp.prefetch)
        fanout = connection.channel()
        fanout.tx_select()
        if self.secure:
            self._serve_secure(connection, channel, fanout)
            return
        if not self._gate(fanout):
            return
        # (Re-)announce the open round: gateways ignore rounds they already answered.
        self._publish_global(fanout)
        partials = channel.consume(PARTIALS_QUEUE, inactivity_timeout=0.02)
        for method, _props, body in partials:
            batch: list[tuple[int, bytes]] = []
            if method is not None and body is not None and method.delivery_tag is not None:
                batch.append((method.delivery_tag, body))
            # What pika holds already joins this batch: one commit and one ack for all of it.
            while batch and channel.get_waiting_message_count() and len(batch) < _BATCH_MAX:
                more, _more_props, more_body = next(partials)
                if more is None or more_body is None or more.delivery_tag is None:
                    break
                batch.append((more.delivery_tag, more_body))
            while batch and not self.done():
                batch = self._accept_batch(channel, batch)
                self._maybe_close(fanout)
            if not self.done():
                self._maybe_close(fanout)  # the deadline, when nothing arrived
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
                declare_topology(channel, [g.name for g in self.registry.active(Role.GATEWAY)])
            if self.stop.is_set() or self.done():
                break
        channel.cancel()
        connection.close()

    def _accept_batch(
        self, channel: BlockingChannel, batch: list[tuple[int, bytes]]
    ) -> list[tuple[int, bytes]]:
        """Apply partials in one transaction, then acknowledge them with one ack; stops after
        a partial that reaches the quorum, so that the round closes where it would have one
        partial at a time. Returns the partials not yet applied."""
        last = None
        taken = 0
        with self.rounds.batch():
            for tag, body in batch:
                taken += 1
                last = tag
                try:
                    partial = Partial.decode(body, self.parameter_count)
                except PartialError as exc:
                    _LOG.error("dropping a malformed partial: %s", exc)
                    continue
                outcome = self.rounds.accept(partial)
                m = self.metrics
                m.updates.labels("accepted").inc(len(outcome.accepted))
                m.updates.labels("duplicate").inc(len(outcome.duplicates))
                m.updates.labels("rejected").inc(len(outcome.rejected))
                for gateway, why in outcome.rejected:
                    m.rejected.labels(why).inc()
                    _LOG.warning("update rejected: gateway=%s reason=%s", gateway, why)
                if outcome.accepted and self.rounds.should_close() is not None:
                    break
        if last is not None:
            channel.basic_ack(last, multiple=True)  # after the SQLite commit
        return batch[taken:]

    def _maybe_close(self, fanout: BlockingChannel) -> None:
        """Close the open round at quorum or deadline and announce the next one."""
        reason = self.rounds.should_close()
        if reason is None:
            return
        t0 = time.perf_counter()
        closed = self.rounds.close_round(reason)
        seconds = time.perf_counter() - t0
        summary = self._privacy_summary(bool(closed.participants), 0)
        closed.privacy = summary.to_json()
        self.closed_rounds += 1
        self.metrics.rounds_closed.labels(reason).inc()
        self.metrics.aggregation_seconds.observe(seconds)
        self.metrics.round_seconds.observe(max(0.0, closed.closed_at - closed.opened_at))
        self.metrics.participants.set(len(closed.participants))
        self._update_gauges()
        _LOG.info(
            "round %d closed (%s): %d gateways, %d samples, model v%d",
            closed.round,
            reason,
            len(closed.participants),
            closed.samples,
            closed.version,
        )
        if self.done() or self._gate(fanout):
            self._publish_global(fanout, final=self.done())
        self._record(closed, seconds)

    def _serve_secure(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, fanout: BlockingChannel
    ) -> None:
        """Secure mode: each round announces the model, runs the SecAgg stages with bounded
        deadlines (adverts wait a round timeout: gateways train first) and applies the mean."""
        r, pc = self.rounds, self.config.privacy
        while not self.stop.is_set() and not self.done():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            names = [g.name for g in self.registry.active(Role.GATEWAY)]
            declare_secagg_topology(channel, names)
            if not self._gate(fanout):
                break
            self._publish_global(fanout)
            if len(names) < 2:
                _LOG.warning("secure aggregation needs two gateways, %d enrolled", len(names))
                self.stop.wait(self.config.rounds.round_timeout)
                continue
            deadlines = StageDeadlines(
                self.config.rounds.round_timeout,
                pc.stage_timeout,
                pc.stage_timeout,
                pc.stage_timeout,
                pc.stage_timeout,
            )
            report = run_secure_round(
                channel,
                r.round,
                names,
                r.strategy.configure_round(r.round),
                self.parameter_count,
                self.identity,
                self.registry,
                dropout_fraction=pc.dropout_fraction,
                deadlines=deadlines,
                weight_cap=pc.weight_cap,
            )
            t0 = time.perf_counter()
            mean = mean_update(report)
            survivors: list[str] = []
            outcome = report.outcome
            if mean is not None and isinstance(outcome, AggregateResult):
                survivors = [report.announcement.name_of(u) for u in outcome.survivors]
            summary = self._privacy_summary(mean is not None, report.dropouts_recovered)
            self.metrics.secure_rounds.labels("aggregated" if mean is not None else "aborted").inc()
            self.metrics.dropouts_recovered.inc(report.dropouts_recovered)
            for _gateway, why, _detail in report.rejections:
                self.metrics.rejected.labels(why).inc()
            closed = r.close_secure_round(
                CloseReason.QUORUM if mean is not None else CloseReason.DEADLINE,
                mean,
                survivors,
                {**summary.to_json(), "stage_seconds": report.stage_seconds},
            )
            closed.privacy = summary.to_json()
            self._closed(fanout, closed, time.perf_counter() - t0)
        channel.cancel()
        connection.close()

    def _closed(self, channel: BlockingChannel, closed: ClosedRound, seconds: float) -> None:
        self.closed_rounds += 1
        self.metrics.rounds_closed.labels(closed.reason).inc()
        self.metrics.aggregation_seconds.observe(seconds)
        self.metrics.round_seconds.observe(max(0.0, closed.closed_at - closed.opened_at))
        self.metrics.participants.set(len(closed.participants))
        self._update_gauges()
        _LOG.info(
            "round %d closed (%s, %s): %d gateways, model v%d",
            closed.round,
            closed.reason,
            closed.outcome,
            len(closed.participants),
            closed.version,
        )
        self._record(closed, seconds)
        if self.done():
            self._publish_global(channel, final=True)
