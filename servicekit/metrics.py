"""The Prometheus endpoint every daemon process serves (prometheus-client in its own thread),
and the histogram buckets round timings share across gateways and the aggregator."""

from __future__ import annotations

from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

# Rounds last from tens of milliseconds (one gateway, small model) to minutes (a deferred round).
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def round_histogram(name: str, documentation: str) -> Histogram:
    """A histogram not bound to any registry: its owner exposes it through a collector."""
    return Histogram(name, documentation, buckets=ROUND_BUCKETS, registry=None)


class MetricsServer:
    """`/metrics` on host:port for the given collectors (plus process CPU and memory)."""

    def __init__(self, host: str, port: int, collectors: Iterable[Collector]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        for c in collectors:
            self.registry.register(c)
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics endpoint {host}:{port}: {exc.strerror}") from None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5)
