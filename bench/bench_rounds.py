"""Federated rounds over real brokers: the paper's headline (a full round with 10 gateways:
local training, sealing, transport, aggregation, redistribution), the cost of the
post-quantum protection against the same rounds with crypto switched off, and distributed
versus sequential crypto processing on the aggregator with 50 gateways."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pika

from aggregator.cli import main as aggregator_main
from aggregator.coordinator import initial_weights
from bench._timing import write
from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.cli import main as gateway_main
from gateway.store import VitalsStore, vitals_row
from pqlink import (
    ContentType,
    Identity,
    Registry,
    Role,
    load_identity,
    save_registry,
    seal_envelope,
)
from testbed import Mosquitto, RabbitMQ
from wire.amqp import UPDATES_QUEUE, UPDATES_QUEUE_ARGUMENTS
from wire.fl import ModelUpdate
from wire.model import DEFAULT_INITIAL_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
INIT = DEFAULT_INITIAL_WEIGHTS
WARMUP_ROUNDS = 2
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _quiet(fn: Any, *args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        if fn(list(args)) != 0:
            raise RuntimeError(f"{args[0]} failed")


class Procs:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.items: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as fh:
            p = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=fh,
                stderr=fh,
                env=_env(),
                cwd=ROOT,
            )
        self.items.append(p)
        return p

    def stop(self) -> None:
        for p in self.items:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.items:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.items = []


def _aggregator(
    root: Path,
    url: str,
    gateways: list[Path],
    rounds: int,
    *,
    plaintext: bool,
    quorum: float = 1.0,
    training: str = "",
    extra: str = "",
) -> Path:
    """An aggregator config with its identity and enrolled gateways; `training` adds keys to
    [training], `extra` whole sections."""
    root.mkdir(parents=True)
    conf = root / "aggregator.toml"
    conf.write_text(
        f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n[amqp]\nurl = "{url}"\n'
        f"[rounds]\nquorum_fraction = {quorum}\nround_timeout = 60.0\nmax_rounds = {rounds}\n"
        f"[training]\nepochs = 1\n{training}[metrics]\nport = 0\n"
        f"[bench]\nplaintext_envelopes = {str(plaintext).lower()}\n{extra}"
    )
    _quiet(aggregator_main, "keygen", "--config", str(conf))
    if gateways:
        _quiet(aggregator_main, "enroll", "--config", str(conf), *map(str, gateways))
    return conf


def _rounds(conf: Path) -> list[tuple[float, float]]:
    db = conf.parent / "state" / "coordinator.sqlite3"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (float(a), float(b))
            for a, b in con.execute(
                "SELECT opened, closed FROM rounds WHERE closed IS NOT NULL ORDER BY round"
            )
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


PHASES = (
    ("announced", "global model aggregated, sealed and published (from round open)"),
    ("all_received", "last gateway has taken the global model off its queue"),
    ("all_uploaded", "last gateway has trained, sealed and published its update"),
    ("all_checked", "last update verified and opened by a worker"),
    ("closed", "partials summed by the coordinator, round closed"),
)


def _phases(conf: Path) -> dict[str, list[float]]:
    """Per steady round, when each phase ended (seconds after the round opened), from the
    coordinator's report; a round's announcement is the previous round's `published_at`."""
    report = conf.parent / "state" / "rounds.jsonl"
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    published = {r["round"] + 1: r["published_at"] for r in rows}
    out: dict[str, list[float]] = {name: [] for name, _ in PHASES}
    for r in rows[WARMUP_ROUNDS:]:
        gw = list(r["metrics"].values())
        if r["round"] not in published or not gw:
            continue
        t0 = r["opened_at"]
        out["announced"].append(published[r["round"]] - t0)
        out["all_received"].append(max(m["global_received_at"] for m in gw) - t0)
        out["all_uploaded"].append(max(m["uplink_published_at"] for m in gw) - t0)
        out["all_checked"].append(max(m["worker_received_at"] for m in gw) - t0)
        out["closed"].append(r["closed_at"] - t0)
    return out


def _announce_seconds(conf: Path) -> dict[str, float]:
    """Median wall seconds of the steady rounds' announcements: sealing, then publishing and
    committing (the coordinator's report)."""
    report = conf.parent / "state" / "rounds.jsonl"
    rows = [json.loads(line) for line in report.read_text().splitlines()][WARMUP_ROUNDS:]
    return {
        part: statistics.median(r[f"announce_{part}_seconds"] for r in rows)
        for part in ("seal", "publish")
    }


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _cpu_total(pids: list[int]) -> float:
    return sum(_cpu(pid) for pid in pids)


def _broker_pid(pidfile: Path | None) -> int | None:
    """The RabbitMQ node's process, for its CPU per round (None if it cannot be read)."""
    try:
        return int(pidfile.read_text().strip()) if pidfile is not None else None
    except (OSError, ValueError):
        return None


def _wait_rounds(
    conf: Path, coordinator: subprocess.Popen[bytes], rounds: int, timeout: float
) -> None:
    """Until `rounds` rounds are in the coordinator's report (or it exited)."""
    report = conf.parent / "state" / "rounds.jsonl"

    def reported() -> int:
        return len(report.read_text().splitlines()) if report.exists() else 0

    _wait(lambda: coordinator.poll() is not None or reported() >= rounds, timeout, "the rounds")


def _federation_status(d: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((d / "state" / "status.json").read_text())["federation"]
    return status


def _pq_share(
    conf: Path,
    worker_cpu: float,
    gw_dirs: list[Path],
    gateway_cpu: dict[str, float],
) -> dict[str, Any]:
    """The post-quantum CPU on the round's critical path as a share of each party's own
    round CPU: per gateway (opening the global model, sealing its update, against its CPU
    from model received to update spooled) and for the aggregator (workers verifying and
    opening every update, the coordinator sealing the next broadcast, against the workers'
    and the coordinator's CPU over the steady rounds). `worker_cpu`: both workers' CPU over
    the steady rounds; `gateway_cpu`: each gateway process's CPU over them, every thread.
    A gateway's warm-up rounds are left out (the first also builds every window and imports
    lazily): its update in the first steady round carries its totals up to then."""
    report = conf.parent / "state" / "rounds.jsonl"
    rows = [json.loads(line) for line in report.read_text().splitlines()][WARMUP_ROUNDS:]
    rows = [r for r in rows if r["metrics"]]
    opened = [m["worker_open_cpu_seconds"] for r in rows for m in r["metrics"].values()]
    seal = [r["announce_seal_cpu_seconds"] for r in rows]
    coordinator = [r["coordinator_cpu_seconds"] for r in rows]
    crypto = sum(opened) + sum(seal)
    total = worker_cpu + sum(coordinator)
    gateways = {}
    first = rows[0]["metrics"] if rows else {}
    for d in gw_dirs:
        status = _federation_status(d)
        before = {
            key: first.get(d.name, {}).get(f"{key}_before", 0)
            for key in ("rounds_trained", "crypto_cpu_seconds", "round_cpu_seconds")
        }
        crypto_gw = status["crypto_cpu_seconds_total"] - before["crypto_cpu_seconds"]
        total_gw = status["round_cpu_seconds_total"] - before["round_cpu_seconds"]
        all_rounds = status["crypto_cpu_seconds_total"] / status["round_cpu_seconds_total"]
        gateways[d.name] = {
            # warm-up rounds included, as this benchmark counted it before: the first round
            # builds every window from the store, which dilutes the share
            "share_all_rounds": all_rounds,
            "rounds": status["rounds_trained"] - before["rounds_trained"],
            "crypto_cpu_s": crypto_gw,
            "round_cpu_s": total_gw,
            "share": crypto_gw / total_gw if total_gw else None,
        }
    shares = [g["share"] for g in gateways.values() if g["share"] is not None]
    steady = [r["closed_at"] - r["opened_at"] for r in rows]
    per_round = [g["crypto_cpu_s"] / g["rounds"] for g in gateways.values() if g["rounds"]]
    path_cpu = [g["round_cpu_s"] / g["rounds"] for g in gateways.values() if g["rounds"]]
    n = len(rows)
    process_cpu = [c / n for c in gateway_cpu.values()] if n else []
    trained = [m for r in rows for m in r["metrics"].values()]
    return {
        # shares of each party's own round CPU (independent of how many share the cores)
        "gateway_median_share": statistics.median(shares) if shares else None,
        "gateway_max_share": max(shares) if shares else None,
        "gateway_median_share_all_rounds": statistics.median(
            g["share_all_rounds"] for g in gateways.values()
        )
        if gateways
        else None,
        "aggregator_share": crypto / total if total else None,
        # the same crypto CPU against the round's wall time on this machine
        "gateway_median_share_of_round_time": (
            statistics.median(per_round) / statistics.median(steady)
            if per_round and steady
            else None
        ),
        "steady_rounds": n,
        "gateway_cpu_per_round_s": {
            "crypto_median": statistics.median(per_round) if per_round else None,
            # model received to update spooled, every thread (the share's denominator)
            "received_to_spooled_median": statistics.median(path_cpu) if path_cpu else None,
            # the whole process over the steady rounds: also taking both halves of the
            # broadcast off the broker and publishing the update
            "process_median": statistics.median(process_cpu) if process_cpu else None,
            "training_median": statistics.median(m["cpu_seconds"] for m in trained)
            if trained
            else None,
            "windows_median": statistics.median(m["window_cpu_seconds"] for m in trained)
            if trained
            else None,
        },
        "aggregator_cpu": {
            "updates": len(opened),
            "crypto_per_update_s": sum(opened) / len(opened) if opened else None,
            "non_crypto_per_update_s": (worker_cpu - sum(opened)) / len(opened) if opened else None,
            "coordinator_seal_per_round_s": sum(seal) / n if n else None,
            "coordinator_other_per_round_s": (sum(coordinator) - sum(seal)) / n if n else None,
            "workers_per_round_s": worker_cpu / n if n else None,
        },
        "gateways": gateways,
    }


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_for_aggregator(ch: Any, conf: Path, workers: int) -> None:
    """The coordinator's database exists and `workers` crypto workers consume the updates
    queue (declared here first, with its arguments, so the passive checks can find it)."""
    ch.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)
    _wait((conf.parent / "state" / "coordinator.sqlite3").exists, 60, "the coordinator")
    _wait(
        lambda: (
            (ch.queue_declare(UPDATES_QUEUE, durable=True, passive=True).method.consumer_count or 0)
            >= workers
        ),
        60,
        "the crypto workers to consume",
    )


def full_rounds(
    tmp: Path,
    mqtt_port: int,
    url: str,
    gateways: int,
    rounds: int,
    *,
    plaintext: bool,
    windows_per_gateway: int,
    run: int = 0,
    wearables: int = 4,
    broker_pidfile: Path | None = None,
) -> dict[str, Any]:
    """Real gateway daemons with stored vitals from `wearables` devices each, the
    coordinator and two workers."""
    root = tmp / f"{'plain' if plaintext else 'sealed'}-{run}"
    procs = Procs(root / "logs")
    gw_dirs = []
    samples = windows_per_gateway * 30 // wearables
    start_ms = int((time.time() - 3 * 3600) * 1000)
    for g in range(gateways):
        d = root / f"gw-{g:02d}"
        (d / "state").mkdir(parents=True)
        conf = d / "gateway.toml"
        conf.write_text(
            f'[gateway]\nid = "gw-{g:02d}"\nstate_dir = "state"\n[mqtt]\nport = {mqtt_port}\n'
            f'[uplink]\namqp_url = "{url}"\n[log]\njournal = "no"\nlevel = "warning"\n'
            f"[bench]\nplaintext_envelopes = {str(plaintext).lower()}\n"
            # ten gateways share two cores: each would take the others' load for its own and
            # defer (the energy policy is tested in tests/test_energy.py, not measured here)
            "[learning]\nmax_cpu_load = 1.0\n"
        )
        _quiet(gateway_main, "keygen", "--config", str(conf))
        save_registry(Registry(), d / "state" / "registry.json")  # no wearable is enrolled
        with VitalsStore(d / "state" / "vitals.sqlite3") as store:
            for n, profile in enumerate(make_profiles(wearables, 100 + g)):
                gen = VitalsGenerator(
                    profile, seed=g * 10 + n, start_ms=start_ms, event_rate_per_hour=30
                )
                store.commit([vitals_row(f"w{n}", s, 0) for s in gen.samples(samples)])
        gw_dirs.append(d)
    conf = _aggregator(
        root / "aggregator",
        url,
        [d / "state" / "identity.pub" for d in gw_dirs],
        rounds,
        plaintext=plaintext,
    )
    for d in gw_dirs:
        (d / "state" / "aggregator.pub").write_bytes(
            (root / "aggregator/state/identity.pub").read_bytes()
        )
    try:
        for d in gw_dirs:
            procs.spawn(d.name, "gateway.cli", "run", "--config", str(d / "gateway.toml"))
        for d in gw_dirs:
            _wait(
                lambda d=d: (
                    '"uplink_connected": true' in (d / "state/status.json").read_text()
                    if (d / "state/status.json").exists()
                    else False
                ),
                # fifty or a hundred daemons starting at once on two cores take their time
                max(180.0, 6.0 * gateways),
                f"{d.name} uplink",
            )
        workers = [
            procs.spawn(f"worker-{w}", "aggregator.cli", "worker", "--config", str(conf))
            for w in range(2)
        ]
        coordinator = procs.spawn(
            "coordinator", "aggregator.cli", "coordinator", "--config", str(conf)
        )
        gw_pids = {d.name: p.pid for d, p in zip(gw_dirs, procs.items, strict=False)}
        worker_pids = [w.pid for w in workers]
        broker = _broker_pid(broker_pidfile)
        # CPU read once the warm-up rounds are reported and again once the coordinator is
        # done: no reads while the steady rounds run, the machine's cores are all theirs.
        _wait_rounds(conf, coordinator, WARMUP_ROUNDS, 300)
        gw0 = {name: _cpu(pid) for name, pid in gw_pids.items()}
        w0 = _cpu_total(worker_pids)
        b0 = _cpu(broker) if broker else 0.0
        if coordinator.wait(300) != 0:
            raise RuntimeError(f"the coordinator failed; see {root / 'logs'}")
        gateway_cpu = {name: _cpu(pid) - gw0[name] for name, pid in gw_pids.items()}
        worker_cpu = _cpu_total(worker_pids) - w0
        broker_cpu = (_cpu(broker) - b0) if broker else None
    finally:
        procs.stop()
    closed = _rounds(conf)
    latencies = [b - a for a, b in closed]
    if len(latencies) <= WARMUP_ROUNDS:
        raise RuntimeError(f"only {len(latencies)} rounds closed; see {root / 'logs'}")
    return {
        "gateways": gateways,
        "rounds": len(closed),
        "crypto": not plaintext,
        "round_seconds": latencies,
        # the first rounds also pay for connections, imports and cold caches
        "steady_round_seconds": latencies[WARMUP_ROUNDS:],
        "phase_seconds": _phases(conf),
        "pq_share": _pq_share(conf, worker_cpu, gw_dirs, gateway_cpu),
        "broker_cpu_per_round_s": (
            broker_cpu / (len(latencies) - WARMUP_ROUNDS) if broker_cpu is not None else None
        ),
        "announce_seconds": _announce_seconds(conf),
        "samples_per_gateway": samples * wearables,
        "wearables_per_gateway": wearables,
        "windows_per_gateway": windows_per_gateway,
    }


def _vhost(rabbit: RabbitMQ, name: str) -> str:
    rabbit.ctl("add_vhost", name)
    rabbit.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@127.0.0.1:{rabbit.amqp_port}/{name}"


def compare_rounds(
    tmp: Path,
    mq: Mosquitto,
    rabbit: RabbitMQ,
    gateways: int,
    rounds: int,
    repeats: int,
    windows: int = 100,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sealed and crypto-off fleets run alternately (sealed, off, sealed, off, ...), each on a
    fresh virtual host, so that drift of a noisy machine falls on both sides alike."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for rep in range(repeats):
        for plaintext in (False, True):
            mode = "off" if plaintext else "sealed"
            url = _vhost(rabbit, f"rounds-{mode}-{rep}")
            result = full_rounds(
                tmp,
                mq.port,
                url,
                gateways,
                rounds,
                plaintext=plaintext,
                windows_per_gateway=windows,
                run=rep,
            )
            runs[plaintext].append(result)
            steady = result["steady_round_seconds"]
            print(
                f"  run {rep + 1}/{repeats}, crypto {mode}: median of {len(steady)} rounds "
                f"{statistics.median(steady) * 1000:.0f} ms",
                flush=True,
            )

    def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
        steady = [x for r in results for x in r["steady_round_seconds"]]
        return {
            "gateways": gateways,
            "crypto": results[0]["crypto"],
            "samples_per_gateway": results[0]["samples_per_gateway"],
            "windows_per_gateway": results[0]["windows_per_gateway"],
            "runs": results,
            "rounds_counted": len(steady),
            "median_round_seconds": statistics.median(steady),
            "median_phase_seconds": {
                name: statistics.median(x for r in results for x in r["phase_seconds"][name])
                for name, _ in PHASES
            },
            "pq_share": {
                key: statistics.median(r["pq_share"][key] for r in results)
                for key in ("gateway_median_share", "aggregator_share")
                if all(r["pq_share"][key] is not None for r in results)
            },
        }

    return pooled(runs[False]), pooled(runs[True])


def _update(gw: Identity, agg: Identity, round_: int, size: int) -> bytes:
    delta = np.full(size, 0.001, np.float32)
    payload = ModelUpdate(delta.tobytes(), size, {}).encode()
    return seal_envelope(
        gw,
        [agg.public],
        payload,
        content_type=ContentType.MODEL_UPDATE,
        round=round_,
        sample_count=100,
    )


def crypto_processing(
    tmp: Path, rabbit: RabbitMQ, n_gateways: int, rounds: int, workers: int, run: int = 0
) -> dict[str, Any]:
    """Updates of `n_gateways` published at once; time until the round closes, with `workers`
    crypto worker processes."""
    url = _vhost(rabbit, f"bench{workers}-{run}")
    root = tmp / f"crypto-{workers}-{run}"
    gateways = [Identity.generate(f"gw-{i:03d}", Role.GATEWAY) for i in range(n_gateways)]
    pubs = []
    (root / "pubs").mkdir(parents=True)
    for gw in gateways:
        p = root / "pubs" / f"{gw.name}.pub"
        p.write_text(json.dumps(gw.public.to_json()))
        pubs.append(p)
    conf = _aggregator(root / "aggregator", url, pubs, rounds, plaintext=False)
    agg = load_identity(conf.parent / "state" / "identity.key")
    size = int(initial_weights(INIT).size)
    frames = {r: [_update(gw, agg, r, size) for gw in gateways] for r in range(1, rounds + 1)}
    procs = Procs(root / "logs")
    try:
        for w in range(workers):
            procs.spawn(f"worker-{w}", "aggregator.cli", "worker", "--config", str(conf))
        procs.spawn("coordinator", "aggregator.cli", "coordinator", "--config", str(conf))
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        wait_for_aggregator(ch, conf, workers)
        durations = []
        for r in range(1, rounds + 1):
            t0 = time.time()
            for f in frames[r]:
                ch.basic_publish("", UPDATES_QUEUE, f)
            _wait(lambda r=r: len(_rounds(conf)) >= r, 120, f"round {r}")
            durations.append(_rounds(conf)[r - 1][1] - t0)
        conn.close()
    finally:
        procs.stop()
    return {
        "workers": workers,
        "gateways": n_gateways,
        "round_seconds": durations,
        "median_seconds": statistics.median(durations),
    }


def compare_workers(
    tmp: Path, rabbit: RabbitMQ, n_gateways: int, rounds: int, repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One worker (sequential) against two, alternately, each run on a fresh virtual host; the
    first round of each run (connections, cold caches) is left out of the median."""
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for rep in range(repeats):
        for workers in (1, 2):
            result = crypto_processing(tmp, rabbit, n_gateways, rounds, workers, rep)
            runs[workers].append(result)
            print(
                f"  run {rep + 1}/{repeats}, {workers} worker(s): median of {rounds} rounds "
                f"{result['median_seconds'] * 1000:.0f} ms",
                flush=True,
            )

    def pooled(workers: int) -> dict[str, Any]:
        steady = [x for r in runs[workers] for x in r["round_seconds"][1:]]
        return {
            "workers": workers,
            "gateways": n_gateways,
            "runs": runs[workers],
            "rounds_counted": len(steady),
            "median_seconds": statistics.median(steady),
        }

    return pooled(1), pooled(2)


def _quartiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {
        "median_round_seconds": statistics.median(xs),
        "p25_round_seconds": q[0],
        "p75_round_seconds": q[2],
        "min_round_seconds": min(xs),
        "max_round_seconds": max(xs),
    }


def _fleet_entry(r: dict[str, Any]) -> dict[str, Any]:
    steady = r["steady_round_seconds"]
    pq = r["pq_share"]
    process = pq["gateway_cpu_per_round_s"]["process_median"]
    return {
        "gateways": r["gateways"],
        "wearables_per_gateway": r["wearables_per_gateway"],
        "windows_per_gateway": r["windows_per_gateway"],
        "rounds_counted": len(steady),
        **_quartiles(steady),
        "median_phase_seconds": {
            name: statistics.median(r["phase_seconds"][name]) for name, _ in PHASES
        },
        # inside the announcement: sealing the broadcast, then publishing and committing it
        "median_announce_seconds": r["announce_seconds"],
        # all gateways share this machine's two cores: their CPU alone bounds the round
        "gateway_process_cpu_per_round_s": process,
        "gateways_cpu_over_2_cores_s": process * r["gateways"] / CORES if process else None,
        "broker_cpu_per_round_s": r["broker_cpu_per_round_s"],
        "round_seconds": r["round_seconds"],
        "pq_share": pq,
    }


def fleet_sizes(
    sizes: list[int],
    rounds: int,
    windows: int,
    out: str | None,
    *,
    reference: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Sealed rounds at each fleet size in turn, each on a fresh virtual host of one broker
    pair; all gateways share this machine's cores, so the medians include that contention.
    `reference` (wearables, windows): one more fleet of the smallest size whose gateways
    each hold that many wearables and train that many windows, for its post-quantum share."""
    load_start = os.getloadavg()
    fleets = []
    ref: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="iomt-fleet-") as d:
        tmp = Path(d)
        with Mosquitto(tmp / "mosquitto") as mq, RabbitMQ(tmp / "rabbitmq") as rabbit:
            runs: list[tuple[str, int, int, int]] = [("fleet", n, 4, windows) for n in sizes]
            if reference is not None:
                runs.append(("reference", min(sizes), *reference))
            for kind, n, wearables, win in runs:
                url = _vhost(rabbit, f"{kind}-{n}")
                r = full_rounds(
                    tmp,
                    mq.port,
                    url,
                    n,
                    rounds,
                    plaintext=False,
                    windows_per_gateway=win,
                    run=n if kind == "fleet" else 10_000 + n,
                    wearables=wearables,
                    broker_pidfile=rabbit.workdir / "rabbitmq.pid",
                )
                entry = _fleet_entry(r)
                if kind == "fleet":
                    fleets.append(entry)
                else:
                    ref = entry
                pq = r["pq_share"]
                print(
                    f"  {kind}: {n} gateways, {wearables} wearables and {win} windows each: "
                    f"median of {entry['rounds_counted']} rounds "
                    f"{entry['median_round_seconds'] * 1000:.0f} ms; post-quantum share of the "
                    f"round CPU: gateway median {pq['gateway_median_share']:.3f}, aggregator "
                    f"{pq['aggregator_share']:.3f}",
                    flush=True,
                )
    medians = {f["gateways"]: f["median_round_seconds"] for f in fleets}
    budgets = [
        {"name": f"round_median_{n}_gateways_s", "value": medians[n], "limit": limit}
        for n, limit in ((10, 0.1), (100, 0.8))
        if n in medians
    ]
    labelled = [(f"{f['gateways']}_gateways", f) for f in fleets]
    if ref is not None:
        labelled.append(
            (
                f"reference_gateway_{ref['wearables_per_gateway']}_wearables_"
                f"{ref['windows_per_gateway']}_windows",
                ref,
            )
        )
    budgets += [
        {
            "name": f"pq_share_{label}_{who}",
            "value": f["pq_share"][key],
            "limit": 0.10,
        }
        for label, f in labelled
        for who, key in (("gateway", "gateway_median_share"), ("aggregator", "aggregator_share"))
    ]
    for b in budgets:
        b["ok"] = b["value"] is not None and b["value"] < b["limit"]
    doc = {
        "crypto": "sealed and signed: ML-KEM-768+X25519, ML-DSA-65, Ascon-AEAD128",
        "model_parameters": int(initial_weights(INIT).size),
        "budgets": budgets,
        "windows_per_gateway": windows,
        "warmup_rounds_left_out": WARMUP_ROUNDS,
        "fleets": fleets,
        "reference_gateway": ref,
        "median_round_seconds": {str(f["gateways"]): f["median_round_seconds"] for f in fleets},
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
    }
    write("rounds_fleet", doc, out)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument(
        "--gateways",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10],
        help="fleet size; a list (10,50,100) runs sealed rounds at each size and writes "
        "rounds_fleet.json instead",
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds per run")
    parser.add_argument("--repeats", type=int, default=3, help="sealed/off run pairs")
    parser.add_argument(
        "--windows", type=int, default=100, help="training windows stored per gateway"
    )
    parser.add_argument("--crypto-gateways", type=int, default=50)
    parser.add_argument("--crypto-rounds", type=int, default=6, help="rounds per worker run")
    parser.add_argument(
        "--reference",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=None,
        help="WEARABLES,WINDOWS: with a list of fleet sizes, also a fleet of the smallest size "
        "whose gateways hold that many wearables and train that many windows (e.g. 20,500)",
    )
    args = parser.parse_args(argv)
    if len(args.gateways) > 1:
        fleet_sizes(args.gateways, args.rounds, args.windows, args.out, reference=args.reference)
        return 0
    args.gateways = args.gateways[0]
    with tempfile.TemporaryDirectory(prefix="iomt-rounds-") as d:
        tmp = Path(d)
        with Mosquitto(tmp / "mosquitto") as mq, RabbitMQ(tmp / "rabbitmq") as rabbit:
            print(f"full rounds, {args.gateways} gateways, sealed vs crypto off:", flush=True)
            sealed, plain = compare_rounds(
                tmp, mq, rabbit, args.gateways, args.rounds, args.repeats, args.windows
            )
            print(
                f"full round median: sealed {sealed['median_round_seconds'] * 1000:.0f} ms, "
                f"crypto off {plain['median_round_seconds'] * 1000:.0f} ms",
                flush=True,
            )
            print("phase ends, median ms after the round opened (sealed / crypto off):")
            for name, what in PHASES:
                a = sealed["median_phase_seconds"][name] * 1000
                b = plain["median_phase_seconds"][name] * 1000
                print(f"  {name:<13} {a:6.1f} / {b:6.1f}   {what}")
            print(f"crypto processing, {args.crypto_gateways} updates, 1 worker vs 2:", flush=True)
            seq, dist = compare_workers(
                tmp, rabbit, args.crypto_gateways, args.crypto_rounds, args.repeats
            )
    overhead = sealed["median_round_seconds"] / plain["median_round_seconds"] - 1
    reduction = 1 - dist["median_seconds"] / seq["median_seconds"]
    print(
        f"crypto overhead {overhead * 100:.1f}%; {args.crypto_gateways} updates: 1 worker "
        f"{seq['median_seconds'] * 1000:.0f} ms, 2 workers {dist['median_seconds'] * 1000:.0f} ms "
        f"({reduction * 100:.0f}% less)"
    )
    model = {
        "parameters": int(initial_weights(INIT).size),
        "bytes_float32": int(initial_weights(INIT).size) * 4,
    }
    budgets = [
        {
            "name": "full_round_10_gateways_median_s",
            "value": sealed["median_round_seconds"],
            "limit": 0.5,
            "ok": sealed["median_round_seconds"] < 0.5,
        },
        {
            "name": "pq_crypto_overhead_fraction",
            "value": overhead,
            "limit": 0.10,
            "ok": overhead < 0.10,
        },
        {
            "name": "distributed_vs_sequential_reduction",
            "value": reduction,
            "paper": 0.35,
            "ok": reduction > 0,
        },
    ]
    write(
        "rounds",
        {
            "model": model,
            "sealed": sealed,
            "plaintext": plain,
            "sequential": seq,
            "distributed": dist,
            "budgets": budgets,
        },
        args.out,
    )
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
