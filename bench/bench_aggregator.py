"""The aggregator alone: sealed, signed updates from N enrolled gateways are put straight into
RabbitMQ's updates queue, then W crypto workers and the coordinator verify, open, fold and
close the round; no gateway runs. For N = 100, 1,000 (and 5,000 with --gateways) and W = 1, 2,
4: wall time from the first update taken to the round closed, updates per second per worker,
and the coordinator's CPU as a share of that time.

Each run has its own virtual host and coordinator state; the aggregator identity, registry and
sealed updates are shared. Worker counts are alternated within each N."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pika

from aggregator.cli import main as aggregator_main
from aggregator.coordinator import initial_weights
from bench._timing import write
from pqlink import ContentType, Identity, Role, load_identity, seal_envelope
from testbed import RabbitMQ
from wire.amqp import (
    PARTIALS_QUEUE,
    PARTIALS_QUEUE_ARGUMENTS,
    UPDATES_QUEUE,
    UPDATES_QUEUE_ARGUMENTS,
)
from wire.fl import ModelUpdate
from wire.model import DEFAULT_INITIAL_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _quiet(*args: str) -> None:
    with open(os.devnull, "w") as sink:
        saved = sys.stdout
        sys.stdout = sink
        try:
            if aggregator_main(list(args)) != 0:
                raise RuntimeError(f"aggregator {args[0]} failed")
        finally:
            sys.stdout = saved


def _db(state: Path, sql: str) -> list[tuple[Any, ...]]:
    path = state / "coordinator.sqlite3"
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)  # poll interval of a bounded wait


def _spawn(logs: Path, conf: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with (logs / f"{args[0]}-{uuid.uuid4().hex[:6]}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator.cli", *args, "--config", str(conf)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=ROOT,
        )


def one_run(
    rabbit: RabbitMQ, root: Path, shared: Path, frames: list[bytes], workers: int
) -> dict[str, Any]:
    vhost = f"agg-{uuid.uuid4().hex[:8]}"
    rabbit.ctl("add_vhost", vhost)
    rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = f"amqp://guest:guest@127.0.0.1:{rabbit.amqp_port}/{vhost}"
    root.mkdir(parents=True)
    conf = root / "aggregator.toml"
    conf.write_text(
        f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n'
        f'identity = "{shared / "identity.key"}"\nregistry = "{shared / "gateways.json"}"\n'
        f'[amqp]\nurl = "{url}"\nprefetch = 256\n'
        "[rounds]\nquorum_fraction = 1.0\nround_timeout = 600.0\nmax_rounds = 0\n"
        "[worker]\nbatch_max = 256\nbatch_wait = 0.0\n[metrics]\nport = 0\n"
    )
    state = root / "state"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        coordinator = _spawn(root, conf, "coordinator")
        procs.append(coordinator)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare(PARTIALS_QUEUE, durable=True, arguments=PARTIALS_QUEUE_ARGUMENTS)

        def coordinator_ready() -> bool:
            # It consumes partials once its topology is declared and round 1 announced: its
            # start-up (a queue per enrolled gateway) is not the aggregator's round time.
            consumers = ch.queue_declare(PARTIALS_QUEUE, passive=True).method.consumer_count
            return bool(consumers)

        _wait(coordinator_ready, 900, "the coordinator to announce round 1")
        ch.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)
        ch.tx_select()
        for frame in frames:
            ch.basic_publish("", UPDATES_QUEUE, frame, pika.BasicProperties(delivery_mode=2))
        ch.tx_commit()
        conn.close()
        coordinator_cpu0 = _cpu(coordinator.pid)
        for w in range(workers):
            procs.append(_spawn(root, conf, "worker", "--name", f"w{w}"))
        report_path = state / "rounds.jsonl"
        # The report line is written after the round is closed and the next one announced.
        _wait(
            lambda: report_path.exists() and report_path.read_text().strip(),
            900,
            "round 1 to close",
        )
        # includes sealing and publishing the next round's global model for every gateway
        coordinator_cpu = (
            _cpu(coordinator.pid) - coordinator_cpu0 if coordinator.poll() is None else None
        )
        report = [json.loads(x) for x in report_path.read_text().splitlines()]
        entry = report[0]
        metrics = list(entry["metrics"].values())
        first = min(m["worker_received_at"] - m["open_seconds"] for m in metrics)
        seconds = entry["closed_at"] - first
        by_worker: dict[str, int] = {}
        for m in metrics:
            by_worker[m["worker"]] = by_worker.get(m["worker"], 0) + 1
        return {
            "workers": workers,
            "updates": len(frames),
            "accepted": len(entry["participants"]),
            "seconds": round(seconds, 4),
            "updates_per_s": round(len(frames) / seconds, 1),
            "updates_per_s_per_worker": round(len(frames) / seconds / workers, 1),
            "updates_by_worker": by_worker,
            "median_open_ms": round(
                1000 * float(np.median([m["open_seconds"] for m in metrics])), 3
            ),
            "coordinator_cpu_s": None if coordinator_cpu is None else round(coordinator_cpu, 3),
            "coordinator_share": None
            if coordinator_cpu is None
            else round(coordinator_cpu / seconds, 4),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        rabbit.ctl("delete_vhost", vhost)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gateways", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/)")
    args = ap.parse_args(argv)
    weights = initial_weights(DEFAULT_INITIAL_WEIGHTS)
    rng = np.random.default_rng(7)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-aggregator-") as tmp_name:
        tmp = Path(tmp_name)
        shared = tmp / "shared"
        shared.mkdir()
        conf = shared / "aggregator.toml"
        conf.write_text(
            f'[aggregator]\nid = "aggregator"\nstate_dir = "."\n'
            f'identity = "{shared / "identity.key"}"\nregistry = "{shared / "gateways.json"}"\n'
        )
        _quiet("keygen", "--config", str(conf))
        aggregator = load_identity(shared / "identity.key")
        with RabbitMQ(tmp / "rabbitmq") as rabbit:
            for n in args.gateways:
                t0 = time.perf_counter()
                fleet = [Identity.generate(f"gw-{i:05d}", Role.GATEWAY) for i in range(n)]
                pubs = []
                for gw in fleet:
                    pub = shared / f"{gw.name}.pub"
                    pub.write_text(json.dumps(gw.public.to_json()))
                    pubs.append(str(pub))
                (shared / "gateways.json").unlink(missing_ok=True)
                _quiet("enroll", "--config", str(conf), *pubs)
                frames = []
                for gw in fleet:
                    delta = rng.normal(0, 0.01, weights.size).astype("<f4")
                    payload = ModelUpdate(delta.tobytes(), int(weights.size), {}).encode()
                    frames.append(
                        seal_envelope(
                            gw,
                            [aggregator.public],
                            payload,
                            content_type=ContentType.MODEL_UPDATE,
                            round=1,
                            sample_count=100,
                        )
                    )
                print(f"{n} gateways enrolled and sealed in {time.perf_counter() - t0:.1f} s")
                order = args.workers
                for w in order:
                    r = one_run(rabbit, tmp / f"n{n}-w{w}", shared, frames, w)
                    print(
                        f"N={n:>5} workers={w}: {r['seconds']:.2f} s, "
                        f"{r['updates_per_s_per_worker']:.0f} updates/s/worker, "
                        f"coordinator share {r['coordinator_share']}"
                    )
                    results.append({"gateways": n, **r})
                args.workers = order[::-1]  # alternate the order between fleet sizes
    budget = next((r for r in results if r["gateways"] == 1000 and r["workers"] == 2), None)
    doc = {
        "cpus": os.cpu_count(),
        "results": results,
        "budget": "1,000 updates folded in under 2 s with 2 workers",
        "within_budget": None if budget is None else budget["seconds"] < 2.0,
    }
    write("aggregator", doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
