"""`iomt-aggregator`: the round coordinator, the crypto workers, and identity/enrolment commands.

Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration; 3 key or registry
problem."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pika.exceptions import AMQPError
from prometheus_client.registry import Collector

from aggregator.config import AggregatorConfig, load_config
from aggregator.metrics import WorkerMetrics
from pqlink import Role, load_identity, load_registry
from servicekit.cli import ExitCode, enroll, keygen, revoke, run_main
from servicekit.metrics import MetricsServer
from wire.envelopes import envelope_codec

_METRICS_HELP = "override metrics.port (Prometheus /metrics; 0: none)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iomt-aggregator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", required=True, type=Path, help="aggregator TOML file")
        return sp

    co = add("coordinator", "run the round coordinator")
    co.add_argument(
        "--inline-worker",
        action="store_true",
        help="also run one crypto worker in this process (the sequential baseline)",
    )
    co.add_argument("--metrics-port", type=int, default=None, help=_METRICS_HELP)
    wk = add("worker", "run one crypto worker (run several for distributed processing)")
    wk.add_argument("--metrics-port", type=int, default=None, help=_METRICS_HELP)
    wk.add_argument("--name", default=None, help="worker name in reports (default: host-pid)")
    wk.add_argument(
        "--batch-wait",
        type=float,
        default=None,
        help="override worker.batch_wait (seconds an update may wait for batching)",
    )
    add("status", "print the open round, the model version and the privacy spent (JSON)")
    dl = add(
        "dead-letters",
        "list the updates in the dead-letter queue with their reasons (JSON; takes none out)",
    )
    dl.add_argument("--limit", type=int, default=100, help="list at most this many (default 100)")
    add("keygen", "create the aggregator identity if absent")
    en = add("enroll", "enroll gateways' public identity files")
    en.add_argument("public_files", nargs="+", type=Path)
    en.add_argument("--replace", action="store_true")
    rv = add("revoke", "revoke gateways")
    rv.add_argument("gateway_ids", nargs="+")
    return p


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _metrics_server(
    config: AggregatorConfig, port: int | None, collectors: list[Collector]
) -> MetricsServer | None:
    """Start /metrics when a port is configured; returns the server (or None)."""
    port = config.metrics.port if port is None else port
    if not 0 <= port <= 65535:
        raise ValueError(f"--metrics-port {port} must be a TCP port 0-65535")
    if not port:
        return None
    server = MetricsServer(config.metrics.host, port, collectors)
    logging.getLogger("aggregator").info(
        "metrics on http://%s:%d/metrics", config.metrics.host, server.port
    )
    return server


def _worker(
    config: AggregatorConfig,
    name: str,
    stop: threading.Event,
    batch_wait: float | None = None,
    metrics: WorkerMetrics | None = None,
) -> None:
    from aggregator.coordinator import initial_weights  # noqa: PLC0415
    from aggregator.masked import MaskedFolder  # noqa: PLC0415
    from aggregator.strategies import make_strategy  # noqa: PLC0415
    from aggregator.validation import ValidationLimits  # noqa: PLC0415
    from aggregator.worker import CryptoWorker, run_worker  # noqa: PLC0415

    strategy = make_strategy(
        config.strategy.name,
        norm_bound=config.strategy.norm_bound or None,
        trim_fraction=config.strategy.trim_fraction,
    )
    limits = ValidationLimits(
        parameter_count=int(initial_weights(config.initial_weights).size),
        max_update_norm=config.validation.max_update_norm,
        max_envelope_bytes=config.validation.max_envelope_bytes,
    )
    identity, gateways = load_identity(config.identity), load_registry(config.registry)
    worker = CryptoWorker(
        name,
        identity,
        gateways,
        limits,
        individual=strategy.needs_individual_updates,
        norm_bound=config.strategy.norm_bound or None,
        codec=envelope_codec(config.bench.plaintext_envelopes),
        metrics=metrics,
    )
    run_worker(
        worker,
        config.amqp.url,
        prefetch=config.amqp.prefetch,
        batch_max=config.worker.batch_max,
        batch_wait=config.worker.batch_wait if batch_wait is None else batch_wait,
        stop=stop,
        heartbeat=config.amqp.heartbeat,
        # secure rounds' masked inputs share the updates queue: every worker can sum them
        masked=MaskedFolder(
            name,
            identity,
            gateways,
            max_envelope_bytes=config.validation.max_envelope_bytes,
            codec=envelope_codec(config.bench.plaintext_envelopes),
        ),
    )


def _coordinator(config: AggregatorConfig, inline_worker: bool, metrics_port: int | None) -> int:
    from aggregator.coordinator import CoordinatorService  # noqa: PLC0415

    stop = _stop_event()
    service = CoordinatorService(config, load_identity(config.identity), stop)
    signal.signal(signal.SIGHUP, lambda *_: service.reload_requested.set())
    worker_metrics = WorkerMetrics() if inline_worker else None
    collectors = service.metrics.collectors()
    if worker_metrics is not None:
        collectors += worker_metrics.collectors()
    server = _metrics_server(config, metrics_port, collectors)
    thread = None
    if inline_worker:
        thread = threading.Thread(
            target=_worker, args=(config, "inline", stop, None, worker_metrics), daemon=True
        )
        thread.start()
    try:
        service.serve()
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=10)
        if server is not None:
            server.close()
    return ExitCode.OK


def _one(con: sqlite3.Connection, sql: str) -> tuple[Any, ...] | None:
    """One row, or None if the table is not there yet (a coordinator that never ran)."""
    try:
        row = con.execute(sql).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else tuple(row)


def status(config: AggregatorConfig) -> dict[str, object]:
    """Read the coordinator's database (read-only, safe while it runs)."""
    out: dict[str, object] = {"round": None, "model_version": None, "privacy": None}
    if not config.db_path.exists():
        return out
    con = sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True)
    try:
        out["round"] = (_one(con, "SELECT MAX(round) FROM rounds") or (None,))[0]
        out["model_version"] = (_one(con, "SELECT MAX(version) FROM models") or (None,))[0]
        last = _one(con, "SELECT epsilon FROM privacy_ledger ORDER BY round DESC LIMIT 1")
        count = _one(con, "SELECT COUNT(*) FROM privacy_ledger")
    finally:
        con.close()
    out["privacy"] = {
        "secure_aggregation": config.training.secure_aggregation,
        "noise_multiplier": config.training.noise_multiplier,
        "epsilon": float(last[0]) if last else 0.0,
        "delta": config.privacy.delta,
        "budget_epsilon": config.privacy.budget_epsilon or None,
        "rounds_accounted": int(count[0]) if count else 0,
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)  # its INFO is per-connection chatter

    def body() -> int:
        config = load_config(args.config)
        if args.command == "coordinator":
            return _coordinator(config, args.inline_worker, args.metrics_port)
        if args.command == "worker":
            stop = _stop_event()
            if args.batch_wait is not None and not 0 <= args.batch_wait <= 60:
                raise ValueError(f"--batch-wait {args.batch_wait} must be within 0-60 seconds")
            metrics = WorkerMetrics()
            server = _metrics_server(config, args.metrics_port, metrics.collectors())
            try:
                name = args.name or f"{os.uname().nodename}-{os.getpid()}"
                _worker(config, name, stop, args.batch_wait, metrics)
            finally:
                if server is not None:
                    server.close()
            return ExitCode.OK
        if args.command == "status":
            print(json.dumps(status(config), indent=2, sort_keys=True))
            return ExitCode.OK
        if args.command == "dead-letters":
            from aggregator.dead_letters import list_dead_letters  # noqa: PLC0415

            if args.limit < 0:
                raise ValueError(f"--limit {args.limit} must be >= 0")
            try:
                depth, letters = list_dead_letters(config.amqp.url, args.limit)
            except AMQPError as exc:
                print(f"iomt-aggregator: cannot reach the broker: {exc!r}", file=sys.stderr)
                return ExitCode.FAILURE
            print(
                json.dumps(
                    {"queued": depth, "listed": [d.as_json() for d in letters]},
                    indent=2,
                    sort_keys=True,
                )
            )
            return ExitCode.OK
        if args.command == "keygen":
            keygen(config.identity, config.aggregator_id, Role.AGGREGATOR)
        elif args.command == "enroll":
            enroll(config.registry, args.public_files, Role.GATEWAY, replace=args.replace)
        else:
            revoke(config.registry, args.gateway_ids)
        return ExitCode.OK

    return run_main("iomt-aggregator", body, os_errors_fail=True)


if __name__ == "__main__":
    sys.exit(main())
