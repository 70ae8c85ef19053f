"""The coordinator process: announces each round with a signed global-model broadcast,
applies the workers' partial sums, closes rounds at quorum or deadline, and repeats."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

from aggregator.adverts_ahead import AdvertsAhead
from aggregator.config import AggregatorConfig
from aggregator.key_epochs import KeyEpochs
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
from aggregator.secure_round import SecureRoundReport, StageDeadlines, declare_secagg_topology
from aggregator.secure_rounds import (
    PrivacyGate,
    RoundPrivacySummary,
    mean_update,
    run_secure_round,
)
from aggregator.strategies import make_strategy
from aggregator.worker import (
    PERSISTENT,
    STOP_CHECK_SECONDS,
    Received,
    broker_parameters,
    collect_into,
    declare_gateway_queues,
    declare_topology,
)
from pqlink import ContentType, Identity, Registry, Role, load_registry
from pqlink.broadcast import SealedBroadcast, seal_broadcast
from pqlink.secagg import AggregateResult
from servicekit.backoff import Backoff
from wire.amqp import GLOBAL_EXCHANGE, GLOBAL_KEYS_EXCHANGE, PARTIALS_QUEUE
from wire.envelopes import envelope_codec
from wire.feature_scaling import (
    STATISTICS_PRECISION_BITS,
    FeatureScaling,
    pooled_scaling,
    secure_resolution,
)
from wire.fl import GlobalModel, RoundSettings
from wire.model import WEIGHT_NAMES
from wire.weighting import NORM_FACTOR

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
    global-model stream every gateway reads, and each key entry it carries (the first
    broadcast of a key epoch carries them all, the others none) to its gateway's queue."""
    # One transaction for the body and every entry: one round trip to the broker for the
    # whole fan-out, where a confirm per message would cost one per gateway. The body goes
    # first: a gateway holding an entry can always find its body in the stream. (Transactions
    # of a few entries each, so that the first gateways could start while the rest commit,
    # gained nothing measurable: the commits' latencies added up.)
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
        self._check_statistics(strategy.norm_bound)
        self.scaling_path = config.state_dir / "feature_scaling.json"
        self.scaling, self.statistics_round = self._load_scaling()
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
        self.last_announce = (0.0, 0.0)
        self.key_epochs = KeyEpochs(config.rounds.broadcast_epoch_rounds)
        self.epoch_started = False  # did the last broadcast start a key epoch?
        self._cpu_at_record = time.process_time()
        self.metrics = CoordinatorMetrics()
        self._update_gauges()

    def _check_statistics(self, norm_bound: float | None) -> None:
        """Refuse the settings under which a statistics round would not pool what it says."""
        d, cfg = self.config.statistics.features, self.config
        if d == 0:
            return
        if 2 * d > self.parameter_count:
            raise ValueError(f"{d} features need {2 * d} coordinates; the model has fewer")
        if norm_bound is not None and norm_bound < 1.0:
            # the moment vector's norm is up to 1: a lower bound would rescale it
            raise ValueError(
                f"statistics rounds need strategy.norm_bound 0 or >= 1, not {norm_bound}"
            )
        if self.secure and cfg.privacy.weight_cap == 0:
            raise ValueError(
                "a secure statistics round needs privacy.weight_cap > 0 (a weighted mean)"
            )
        if not self.secure and cfg.training.noise_multiplier > 0:
            # plain mode noises each gateway's training, not its moments: refuse, not leak
            raise ValueError("statistics rounds with noise need secure aggregation")

    def _load_scaling(self) -> tuple[FeatureScaling | None, int]:
        if self.config.statistics.features == 0 or not self.scaling_path.exists():
            return None, 0
        doc = json.loads(self.scaling_path.read_text())
        return FeatureScaling.from_json(doc["scaling"]), int(doc["round"])

    def _save_scaling(self, scaling: FeatureScaling, round_: int) -> None:
        tmp = self.scaling_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"round": round_, "scaling": scaling.to_json()}))
        os.replace(tmp, self.scaling_path)
        self.scaling, self.statistics_round = scaling, round_

    @property
    def statistics_pending(self) -> bool:
        """Is the open round a statistics round (enabled, and no scaling pooled yet)?"""
        return self.config.statistics.features > 0 and self.scaling is None

    def round_settings(self, *, final: bool = False) -> RoundSettings:
        """The open round's settings. Training rounds are numbered from the first one after
        the statistics round, so that a learning-rate schedule spans the training rounds."""
        r, st = self.rounds, self.config.statistics
        if self.statistics_pending and not final:
            training = r.strategy.configure_round(1)
            return replace(
                training,
                feature_stats=st.features,
                feature_bound=st.feature_bound,
                precision_bits=max(training.precision_bits, STATISTICS_PRECISION_BITS),
            )
        return r.strategy.configure_round(r.round - self.statistics_round, final=final)

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
            settings=self.round_settings(final=final),
            feature_scaling=self.scaling,
        )

    def global_broadcast(self, *, final: bool = False) -> SealedBroadcast:
        """The signed global model as one sealed body for every gateway, under the current key
        epoch (a new one when the enrolled gateways changed or the epoch served its
        broadcasts), with each gateway's key entry if the broker does not have them yet;
        `final` tells gateways to apply it and stop training."""
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
        epoch, reason = self.key_epochs.for_broadcast(recipients)
        self.epoch_started = reason is not None
        if reason is not None:
            _LOG.info(
                "key_epoch_started epoch=%s reason=%s gateways=%d round=%d",
                epoch.epoch_id.hex(),
                reason,
                epoch.recipient_count,
                r.round,
            )
        return seal_broadcast(
            self.identity,
            epoch,
            model.encode(),
            content_type=ContentType.GLOBAL_MODEL,
            round=r.round,
            model_version=r.version,
            with_entries=self.key_epochs.entries_due,
        )

    def _publish_global(self, channel: BlockingChannel, *, final: bool = False) -> None:
        if not self.registry.active(Role.GATEWAY):
            _LOG.warning("no gateway enrolled: nothing to announce")
            return
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        sealed = self.global_broadcast(final=final)
        self.last_seal_cpu = time.thread_time() - cpu0
        t1 = time.perf_counter()
        publish_broadcast(channel, sealed)
        if not self.config.bench.plaintext_envelopes:
            # counted only once committed: a failed commit sends the entries again
            self.key_epochs.published(with_entries=bool(sealed.entries))
        self.last_published_at = time.time()
        # wall times of the announcement, for the round's report
        self.last_announce = (t1 - t0, time.perf_counter() - t1)
        entry_bytes = sum(map(len, sealed.entries.values()))
        epoch = self.key_epochs.current
        _LOG.info(
            "round %d announced (model v%d, key epoch %s%s, %d bytes body, %d bytes of key "
            "entries, %.1f ms)",
            self.rounds.round,
            self.rounds.version,
            "-" if epoch is None else epoch.epoch_id.hex()[:8],
            " new" if self.epoch_started else "",
            len(sealed.body),
            entry_bytes,
            (time.perf_counter() - t0) * 1000,
        )

    def _observe(self, closed: ClosedRound, seconds: float) -> None:
        # After the round's report is written: a scrape that sees the round closed finds its
        # line in rounds.jsonl.
        self.metrics.rounds_closed.labels(closed.reason).inc()
        self.metrics.aggregation_seconds.observe(seconds)
        self.metrics.round_seconds.observe(max(0.0, closed.closed_at - closed.opened_at))
        self.metrics.participants.set(len(closed.participants))
        self._update_gauges()

    def _record(self, closed: ClosedRound, seconds: float) -> None:
        cpu = time.process_time()
        # The fields as they are: asdict() would deep-copy every gateway's metrics first, for
        # a line that is only serialised.
        entry = {
            **{f.name: getattr(closed, f.name) for f in fields(closed)},
            "aggregation_seconds": seconds,
            "published_at": self.last_published_at,
            # CPU since the previous round's report (folding this round, closing it and
            # announcing the next), and the post-quantum part of it: sealing that broadcast
            "coordinator_cpu_seconds": cpu - self._cpu_at_record,
            "announce_seal_cpu_seconds": self.last_seal_cpu,
            # sealing the broadcast, and publishing and committing it (wall seconds)
            "announce_seal_seconds": self.last_announce[0],
            "announce_publish_seconds": self.last_announce[1],
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
        self.key_epochs.republish()
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
        # Woken by a partial, by the round's deadline or, at the latest, to look at the stop
        # and reload flags: no polling interval while a round waits for its partials.
        inbox: deque[Received] = deque()
        tag = channel.basic_consume(PARTIALS_QUEUE, collect_into(inbox), auto_ack=False)
        while True:
            wait = 0.0 if inbox else self._wait_seconds()
            # types-pika says int; pika takes any non-negative number of seconds.
            connection.process_data_events(time_limit=wait)  # type: ignore[arg-type]
            # What pika holds already joins this batch: one commit and one ack for all of it.
            batch: list[tuple[int, bytes]] = []
            while inbox and len(batch) < _BATCH_MAX:
                method, _props, body = inbox.popleft()
                if method.delivery_tag is not None:
                    batch.append((method.delivery_tag, body))
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
        channel.basic_cancel(tag)
        connection.close()

    def _wait_seconds(self) -> float:
        """How long the consumer may block: until the open round's deadline, and at most
        STOP_CHECK_SECONDS (the stop and reload flags are looked at in between). A
        millisecond at least: a deadline just passed is closed on the next pass, not spun on."""
        return max(0.001, min(STOP_CHECK_SECONDS, self.rounds.deadline - time.time()))

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
        if self.statistics_pending:
            closed = self._close_plain_statistics(reason)
        else:
            closed = self.rounds.close_round(reason)
            self.closed_rounds += 1
        seconds = time.perf_counter() - t0
        summary = self._privacy_summary(bool(closed.participants), 0)
        closed.privacy = summary.to_json()
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
        self._observe(closed, seconds)

    def _close_plain_statistics(self, reason: CloseReason) -> ClosedRound:
        """Pool the statistics round's moments from the plain weighted sum; with nobody in it
        the next round asks again."""
        counted = self.rounds.counted()
        pooled = self.rounds.pooled_moments()
        report: dict[str, Any] = {"features": self.config.statistics.features}
        scaling = None
        if pooled is not None:
            mean, total = pooled
            scaling = self._pool(mean, 0.0, int(total), report)
        closed = self.rounds.close_statistics_round(
            reason, sorted(counted) if pooled else [], sum(counted.values()), report
        )
        self._keep_scaling(scaling, closed.round)
        return closed

    def _pool(
        self,
        mean: Any,
        clip: float,
        count: int,
        report: dict[str, Any],
        std_floor: float = 0.0,
    ) -> FeatureScaling:
        st = self.config.statistics
        scaling = pooled_scaling(
            mean, st.features, st.feature_bound, clip, count, std_floor=std_floor
        )
        report.update(scaling.to_json())
        _LOG.info(
            "feature_scaling_pooled round=%d features=%d windows=%d",
            self.rounds.round,
            st.features,
            count,
        )
        return scaling

    def _pool_secure(
        self,
        report: SecureRoundReport,
        outcome: AggregateResult,
        mean: Any,
        stats: dict[str, Any],
    ) -> FeatureScaling:
        """The pooled scaling of a secure statistics round, its deviations floored at what
        the round's quantisation resolves. The capped window total is the weight sum the
        weighted mean divides by: the coordinator learns it in any weighted round."""
        a, st = report.announcement, self.config.statistics
        unit = ((1 << a.precision_bits) - 1) / NORM_FACTOR / a.weight_cap
        windows = max(float(outcome.signed_sum()[-1]) / unit, 1.0)
        _, square_error = secure_resolution(
            st.features,
            st.feature_bound,
            precision_bits=a.precision_bits,
            cap=a.weight_cap,
            windows=windows,
            survivors=len(outcome.survivors),
        )
        stats["resolution_mean_square"] = square_error
        return self._pool(mean, a.clip, round(windows), stats, math.sqrt(square_error))

    def _keep_scaling(self, scaling: FeatureScaling | None, round_: int) -> None:
        # Saved only once the round's close is committed: a crash in between leaves the next
        # round a statistics round again, never late moment vectors taken for model updates.
        if scaling is not None:
            self._save_scaling(scaling, round_)

    def _serve_secure(
        self, connection: pika.BlockingConnection, channel: BlockingChannel, fanout: BlockingChannel
    ) -> None:
        """Secure mode: each round announces the model, runs the SecAgg stages with bounded
        deadlines (adverts wait a round timeout: gateways train first) and applies the mean."""
        r, pc = self.rounds, self.config.privacy
        # Declared once per connection, then only for newly enrolled gateways: a declaration
        # is a broker round trip per queue and binding, and it used to open every round.
        declared: set[str] = set()
        # adverts the gateways send for the next round with their answers; a new connection
        # (or process) starts without any, so its first round opens with the full setup
        ahead = AdvertsAhead()
        while not self.stop.is_set() and not self.done():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            names = [g.name for g in self.registry.active(Role.GATEWAY)]
            if not declared or set(names) - declared:
                declare_secagg_topology(channel, sorted(set(names) - declared))
                # their key-entry queues too: the next broadcast starts an epoch for them
                declare_gateway_queues(channel, sorted(set(names) - declared))
                declared.update(names)
            if not self._gate(fanout):
                break
            self._publish_global(fanout)
            if len(names) < 2:
                _LOG.warning("secure aggregation needs two gateways, %d enrolled", len(names))
                self.stop.wait(self.config.rounds.round_timeout)
                continue
            statistics = self.statistics_pending
            deadlines = StageDeadlines(
                adverts=self.config.rounds.round_timeout,
                key_shares=pc.stage_timeout,
                inputs=pc.stage_timeout,
                unmask=pc.stage_timeout,
            )
            report = run_secure_round(
                channel,
                r.round,
                names,
                self.round_settings(),
                self.parameter_count,
                self.identity,
                self.registry,
                dropout_fraction=pc.dropout_fraction,
                deadlines=deadlines,
                weight_cap=pc.weight_cap,
                ahead=ahead,
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
            closing = CloseReason.QUORUM if mean is not None else CloseReason.DEADLINE
            if statistics:
                # the coordinator sees only the survivors' weighted mean of the moments
                stats: dict[str, Any] = {"features": self.config.statistics.features}
                scaling = None
                if mean is not None and isinstance(outcome, AggregateResult):
                    scaling = self._pool_secure(report, outcome, mean, stats)
                stats["privacy"] = summary.to_json()
                closed = r.close_statistics_round(closing, survivors, 0, stats)
                self._keep_scaling(scaling, closed.round)
            else:
                closed = r.close_secure_round(
                    closing,
                    mean,
                    survivors,
                    {
                        **summary.to_json(),
                        "stage_seconds": report.stage_seconds,
                        "exchanges": report.exchanges,
                        "pipelined": report.pipelined,
                    },
                )
            closed.privacy = summary.to_json()
            self._closed(fanout, closed, time.perf_counter() - t0, counts=not statistics)
        channel.cancel()
        connection.close()

    def _closed(
        self, channel: BlockingChannel, closed: ClosedRound, seconds: float, *, counts: bool = True
    ) -> None:
        # max_rounds counts training rounds: a statistics round is not one
        self.closed_rounds += int(counts)
        _LOG.info(
            "round %d closed (%s, %s): %d gateways, model v%d",
            closed.round,
            closed.reason,
            closed.outcome,
            len(closed.participants),
            closed.version,
        )
        self._record(closed, seconds)
        self._observe(closed, seconds)
        if self.done():
            self._publish_global(channel, final=True)
