"""Prometheus metrics of the coordinator and the crypto workers (served by
`servicekit.metrics.MetricsServer`, one endpoint per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from servicekit.metrics import ROUND_BUCKETS

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.rounds_closed = Counter(
            "iomt_aggregator_rounds_closed",
            "rounds closed, by reason (quorum or deadline)",
            ["reason"],
            registry=None,
        )
        self.round_seconds = Histogram(
            "iomt_aggregator_round_seconds",
            "round latency: announced to closed",
            buckets=ROUND_BUCKETS,
            registry=None,
        )
        self.aggregation_seconds = Histogram(
            "iomt_aggregator_aggregation_seconds",
            "closing a round: averaging, versioning and persisting the global model",
            buckets=_FAST_BUCKETS,
            registry=None,
        )
        self.round = Gauge("iomt_aggregator_round", "the open round", registry=None)
        self.model_version = Gauge(
            "iomt_aggregator_model_version", "version of the latest global model", registry=None
        )
        self.participants = Gauge(
            "iomt_aggregator_round_participants",
            "gateways counted in the last closed round",
            registry=None,
        )
        self.gateways_enrolled = Gauge(
            "iomt_aggregator_gateways_enrolled", "enrolled, unrevoked gateways", registry=None
        )
        self.updates = Counter(
            "iomt_aggregator_updates",
            "updates reaching the coordinator, by outcome (accepted, duplicate, rejected)",
            ["outcome"],
            registry=None,
        )
        self.rejected = Counter(
            "iomt_aggregator_updates_rejected",
            "updates rejected, by reason",
            ["reason"],
            registry=None,
        )
        self.epsilon = Gauge(
            "iomt_aggregator_privacy_epsilon",
            "cumulative epsilon spent (gateway-level DP) at the configured delta",
            registry=None,
        )
        self.secure_rounds = Counter(
            "iomt_aggregator_secure_rounds",
            "secure-aggregation rounds, by outcome (aggregated, aborted, refused)",
            ["outcome"],
            registry=None,
        )
        self.dropouts_recovered = Counter(
            "iomt_aggregator_secure_dropouts_recovered",
            "gateways that dropped after sharing keys and whose masks were removed",
            registry=None,
        )

    def collectors(self) -> list[Collector]:
        return [
            self.epsilon,
            self.secure_rounds,
            self.dropouts_recovered,
            self.rounds_closed,
            self.round_seconds,
            self.aggregation_seconds,
            self.round,
            self.model_version,
            self.participants,
            self.gateways_enrolled,
            self.updates,
            self.rejected,
        ]


class WorkerMetrics:
    def __init__(self) -> None:
        self.updates = Counter(
            "iomt_aggregator_worker_updates",
            "updates verified and opened by this worker, by outcome (valid, rejected)",
            ["outcome"],
            registry=None,
        )
        self.rejected = Counter(
            "iomt_aggregator_worker_rejected",
            "updates this worker rejected, by reason",
            ["reason"],
            registry=None,
        )
        self.open_seconds = Histogram(
            "iomt_aggregator_worker_open_seconds",
            "verify, open and validate one update",
            buckets=_FAST_BUCKETS,
            registry=None,
        )
        self.batches = Counter("iomt_aggregator_worker_batches", "batches processed", registry=None)
        self.dead_lettered = Counter(
            "iomt_aggregator_worker_dead_lettered",
            "updates this worker put in the dead-letter queue, by reason",
            ["reason"],
            registry=None,
        )

    def collectors(self) -> list[Collector]:
        return [self.updates, self.rejected, self.open_seconds, self.batches, self.dead_lettered]
