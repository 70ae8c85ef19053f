"""The gateway's Prometheus collector: it reads the daemon's live counters at scrape time so
nothing is counted twice, and never the SQLite store or the sessions' keys."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class GatewayCollector(Collector):
    """Maps the daemon's status dictionary (the one `iomt-gateway status` shows) to metrics."""

    def __init__(
        self, status: Callable[[], Mapping[str, Any]], histograms: Iterable[Histogram] = ()
    ) -> None:
        self._status = status
        self._histograms = list(histograms)
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            s = self._status()
        yield _gauge("iomt_gateway_up", "1 while the daemon runs", 1)
        yield _gauge("iomt_gateway_broker_connected", "1 while connected to MQTT", s["connected"])
        yield _gauge("iomt_gateway_sessions", "live sensor sessions", s["sessions"])
        yield _counter(
            "iomt_gateway_records_accepted", "authentic records accepted", s["records_accepted"]
        )
        yield _counter(
            "iomt_gateway_records_stored", "records committed to SQLite", s["records_stored"]
        )
        yield _counter(
            "iomt_gateway_records_duplicate",
            "redelivered records already stored (stored once)",
            s["records_duplicate"],
        )
        rejected = CounterMetricFamily(
            "iomt_gateway_records_rejected",
            "records and handshakes rejected, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(s["rejected"].items()):
            rejected.add_metric([reason], count)
        yield rejected
        hs = CounterMetricFamily(
            "iomt_gateway_handshakes", "handshakes answered, by result", labels=["result"]
        )
        hs.add_metric(["ok"], s["handshakes_ok"])
        hs.add_metric(["failed"], s["handshakes_failed"])
        yield hs
        yield _counter("iomt_gateway_broker_connects", "MQTT (re)connections", s["broker_connects"])
        yield _counter("iomt_gateway_store_commits", "SQLite transactions", s["commits"])
        fed = s.get("federation")
        if fed:
            rounds = CounterMetricFamily(
                "iomt_gateway_rounds",
                "federated rounds by outcome (deferred counts each deferral)",
                labels=["outcome"],
            )
            for outcome in ("trained", "skipped", "deferred"):
                rounds.add_metric([outcome], fed[f"rounds_{outcome}"])
            yield rounds
            yield _counter(
                "iomt_gateway_globals_rejected",
                "global models refused (bad signature, stale, malformed)",
                fed["globals_rejected"],
            )
            yield _gauge("iomt_gateway_last_round", "last round answered", fed["last_round"])
            yield _gauge(
                "iomt_gateway_model_version",
                "version of the applied global model",
                fed["model_version"],
            )
            yield _gauge(
                "iomt_gateway_spool_depth",
                "sealed updates waiting for a publisher confirm",
                fed.get("spool_depth", 0),
            )
            yield _gauge(
                "iomt_gateway_uplink_connected",
                "1 while connected to RabbitMQ",
                fed["uplink_connected"],
            )
            yield _counter(
                "iomt_gateway_updates_published",
                "model updates confirmed by RabbitMQ",
                fed["updates_published"],
            )
            yield _counter(
                "iomt_gateway_energy_joules",
                "estimated energy of local training (power model x CPU time)",
                fed.get("energy_joules_total", 0.0),
            )
        for h in self._histograms:
            yield from h.collect()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))
