"""The aggregator alone: sealed, signed updates from N enrolled gateways are put straight into
RabbitMQ's updates queue, then W crypto workers and the coordinator verify, open, fold and
close the round; no gateway runs. For N = 100, 1,000 (and 5,000 with --gateways) and W = 1, 2,
4: wall time from the first update taken to the round closed, updates per second per worker,
and the coordinator's CPU as a share of that time.

Every worker consumes before the updates are committed to the queue in one transaction. Each
fleet size has its own virtual host (its first run creates every gateway's queue: a cold
coordinator start-up; later runs are warm) and each run its own coordinator state; the
aggregator identity, registry and sealed updates are shared. Per fleet size, a first run
(with the fewest workers) pays the cold start and is reported apart; then every worker count
runs --repeats times, the order reversed at each repeat (1, 2, 4, then 4, 2, 1, ...), and each
count's median is compared. The coordinator's CPU is split into folding (until the round is
closed) and announcing the next round (sealing and publishing the broadcast to every
gateway)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
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


def _broker_cpu(rabbit: RabbitMQ) -> float:
    """CPU seconds of the broker's Erlang VM (the beam process of its process group)."""
    if rabbit.proc is None:
        raise RuntimeError("the broker is not running")
    group, total = rabbit.proc.pid, 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # its process group: the broker's own
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


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


def _spawn(
    logs: Path, conf: Path, *args: str, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tag = f"{args[0]}-{uuid.uuid4().hex[:6]}"
    # cProfile writes its statistics when the process exits (SIGTERM ends it cleanly)
    prof = [] if profile is None else ["-m", "cProfile", "-o", str(profile / f"{tag}.prof")]
    with (logs / f"{tag}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, *prof, "-m", "aggregator.cli", *args, "--config", str(conf)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=ROOT,
        )


def _vhost(rabbit: RabbitMQ) -> str:
    vhost = f"agg-{uuid.uuid4().hex[:8]}"
    rabbit.ctl("add_vhost", vhost)
    rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def one_run(
    rabbit: RabbitMQ,
    vhost: str,
    root: Path,
    shared: Path,
    frames: list[bytes],
    workers: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One round of `frames` with `workers` workers on `vhost`; the first run on a virtual
    host also creates every gateway's queue (a cold coordinator start)."""
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
        started = time.monotonic()
        coordinator = _spawn(root, conf, "coordinator", profile=profile)
        procs.append(coordinator)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare(PARTIALS_QUEUE, durable=True, arguments=PARTIALS_QUEUE_ARGUMENTS)
        ch.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)

        def consumers(queue: str) -> int:
            return ch.queue_declare(queue, passive=True).method.consumer_count or 0

        # It consumes partials once its topology is declared and round 1 announced: its
        # start-up (a queue per enrolled gateway) is timed apart from the round.
        _wait(lambda: consumers(PARTIALS_QUEUE) > 0, 1800, "the coordinator to announce round 1")
        startup = time.monotonic() - started
        coordinator_cpu0 = _cpu(coordinator.pid)
        for w in range(workers):
            procs.append(_spawn(root, conf, "worker", "--name", f"w{w}", profile=profile))
        # Every worker consumes before the first update is visible, so that none starts
        # late and the round's time is the workers' and the coordinator's alone.
        _wait(lambda: consumers(UPDATES_QUEUE) >= workers, 300, "the workers to consume")
        worker_pids = [p.pid for p in procs[1:]]
        workers_cpu0 = sum(_cpu(pid) for pid in worker_pids)
        broker_cpu0 = _broker_cpu(rabbit)
        ch.tx_select()
        for frame in frames:
            ch.basic_publish("", UPDATES_QUEUE, frame, pika.BasicProperties(delivery_mode=2))
        committed_at = time.time()
        ch.tx_commit()  # all updates become visible at once
        conn.close()
        closed_sql = "SELECT closed FROM rounds WHERE round = 1 AND closed IS NOT NULL"
        deadline = time.monotonic() + 900
        while not _db(state, closed_sql):
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for round 1 to close")
            time.sleep(0.005)  # poll interval: the coordinator's CPU is read as it closes
        fold_cpu = _cpu(coordinator.pid) - coordinator_cpu0
        workers_cpu = sum(_cpu(pid) for pid in worker_pids) - workers_cpu0
        broker_cpu = _broker_cpu(rabbit) - broker_cpu0
        report_path = state / "rounds.jsonl"
        # The report line is written after the next round is announced to every gateway.
        _wait(
            lambda: report_path.exists() and report_path.read_text().strip(),
            900,
            "round 2 to be announced",
        )
        coordinator_cpu = _cpu(coordinator.pid) - coordinator_cpu0
        report = [json.loads(x) for x in report_path.read_text().splitlines()]
        entry = report[0]
        metrics = list(entry["metrics"].values())
        first = min(m["worker_received_at"] - m["open_seconds"] for m in metrics)
        seconds = entry["closed_at"] - first
        by_worker: dict[str, int] = {}
        checking: dict[str, float] = {}
        for m in metrics:
            by_worker[m["worker"]] = by_worker.get(m["worker"], 0) + 1
            checking[m["worker"]] = checking.get(m["worker"], 0.0) + m["open_seconds"]
        return {
            "workers": workers,
            "updates": len(frames),
            "accepted": len(entry["participants"]),
            "seconds": round(seconds, 4),
            "seconds_from_commit": round(entry["closed_at"] - committed_at, 4),
            "updates_per_s": round(len(frames) / seconds, 1),
            "updates_per_s_per_worker": round(len(frames) / seconds / workers, 1),
            "updates_by_worker": by_worker,
            "median_open_ms": round(
                1000 * float(np.median([m["open_seconds"] for m in metrics])), 3
            ),
            # the part of the round each worker spent verifying, opening and validating
            "worker_checking_share": {w: round(t / seconds, 3) for w, t in checking.items()},
            "coordinator_fold_cpu_s": round(fold_cpu, 3),
            "coordinator_share": round(fold_cpu / seconds, 4),
            "coordinator_announce_cpu_s": round(coordinator_cpu - fold_cpu, 3),
            # CPU seconds of every worker and of the broker from the updates' commit to the
            # round closed (the broker's from the commit on); against 2 cores x wall time
            "workers_cpu_s": round(workers_cpu, 3),
            "broker_cpu_s": round(broker_cpu, 3),
            "cpu_used_of_all_cores": round(
                (workers_cpu + broker_cpu + fold_cpu) / ((os.cpu_count() or 1) * seconds), 3
            ),
            "coordinator_startup_s": round(startup, 3),
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


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fleet size and worker count, the warm runs' median, spread and throughput (the
    cold start is left out: it is the broker creating queues, not the round)."""
    groups: dict[tuple[int, int], list[float]] = {}
    for r in results:
        if r["coordinator_start"] == "warm":
            groups.setdefault((r["gateways"], r["workers"]), []).append(r["seconds"])
    out = []
    for (n, w), seconds in sorted(groups.items()):
        median = statistics.median(seconds)
        out.append(
            {
                "gateways": n,
                "workers": w,
                "runs": len(seconds),
                "median_seconds": round(median, 4),
                "min_seconds": round(min(seconds), 4),
                "max_seconds": round(max(seconds), 4),
                "updates_per_s_per_worker": round(n / median / w, 1),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gateways", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs per worker count after the cold start"
    )
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/)")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile every process into DIR")
    ap.add_argument(
        "--broker-memory-mib",
        type=int,
        default=512,
        help="the private broker's memory watermark: each gateway has a quorum queue of its "
        "own (a Raft member each), so 5,000 gateways need a few GiB",
    )
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
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
        with RabbitMQ(tmp / "rabbitmq", memory_mib=args.broker_memory_mib) as rabbit:
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
                vhost = _vhost(rabbit)
                runs = [(0, min(args.workers))]  # the cold start: creates every queue
                order = list(args.workers)
                for rep in range(1, args.repeats + 1):
                    runs += [(rep, w) for w in order]
                    order = order[::-1]
                for rep, w in runs:
                    where = tmp / f"n{n}-w{w}-r{rep}"
                    r = one_run(rabbit, vhost, where, shared, frames, w, args.profile)
                    r["coordinator_start"] = "cold" if rep == 0 else "warm"
                    r["repeat"] = rep
                    print(
                        f"N={n:>5} workers={w} run {rep}: {r['seconds']:.2f} s, "
                        f"{r['updates_per_s_per_worker']:.0f} updates/s/worker, "
                        f"coordinator share {r['coordinator_share']}, "
                        f"checking share {r['worker_checking_share']}, "
                        f"{r['coordinator_start']} start-up {r['coordinator_startup_s']:.1f} s",
                        flush=True,
                    )
                    results.append({"gateways": n, **r})
                rabbit.ctl("delete_vhost", vhost)
    summary = summarise(results)
    by = {(m["gateways"], m["workers"]): m["median_seconds"] for m in summary}
    budgets = []
    if (1000, 2) in by:
        budgets.append(
            {
                "name": "1000_updates_2_workers_s",
                "value": by[1000, 2],
                "limit": 2.0,
                "ok": by[1000, 2] < 2.0,
            }
        )
    if (1000, 2) in by and (1000, 4) in by:
        budgets.append(
            {
                "name": "1000_updates_4_over_2_workers_time_ratio",
                "value": round(by[1000, 4] / by[1000, 2], 3),
                "limit": 1.0,
                "ok": by[1000, 4] < by[1000, 2],
            }
        )
    autogroup = Path("/proc/self/autogroup")
    doc = {
        "cpus": os.cpu_count(),
        "priority": {
            "nice": os.nice(0),
            "autogroup": autogroup.read_text().strip() if autogroup.exists() else None,
        },
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "broker_memory_mib": args.broker_memory_mib,
        "repeats": args.repeats,
        "summary": summary,
        "results": results,
        "budgets": budgets,
        "within_budget": all(b["ok"] for b in budgets) if budgets else None,
    }
    write("aggregator", doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
