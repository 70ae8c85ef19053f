"""Secure against plain federated rounds through real brokers and the real coordinator and
crypto worker: round time, recovery after dropouts, and the bytes each gateway sends.

10 gateways run plain and secure rounds alternately in one run (DP off in both: the noise
costs the same in both modes, and the comparison is about the protocol). Then 50 gateways,
20% of which vanish right after sending their shares: the round completes through the
unmasking stage; its recovery step is timed. The gateways are in-process clients (one thread
and one AMQP connection each, real crypto) so that 50 of them fit on two cores; the
coordinator and the crypto worker are the real processes. Local training is left out of both
modes: it is the same work whether the update is masked or not."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pika

from aggregator.coordinator import initial_weights
from bench._timing import write
from bench.bench_rounds import (
    INIT,
    Procs,
    _aggregator,
    _rounds,
    _update,
    _vhost,
    _wait,
    wait_for_aggregator,
)
from gateway.secure_link import SecureLink, SecureRoundResult
from pqlink import Identity, Registry, Role, load_identity
from testbed import RabbitMQ
from wire.amqp import UPDATES_QUEUE
from wire.secagg import SecAggKind, SecureRoundAnnouncement

SAMPLES = 100  # each gateway's sample count (the secure rounds are sample-weighted)
CLIP = 1.0


class _Vanished(Exception):  # noqa: N818 -- not an error: the way a bench gateway dies
    """Raised out of a gateway's round to drop its connection without a word."""


def _fleet(root: Path, n: int) -> tuple[list[Identity], list[Path], Registry]:
    gateways = [Identity.generate(f"gw-{i:03d}", Role.GATEWAY) for i in range(n)]
    registry = Registry()
    pubs = []
    (root / "pubs").mkdir(parents=True)
    for gw in gateways:
        registry.enroll(gw.public)
        p = root / "pubs" / f"{gw.name}.pub"
        p.write_text(json.dumps(gw.public.to_json()))
        pubs.append(p)
    return gateways, pubs, registry


def _config(
    root: Path, url: str, pubs: list[Path], rounds: int, *, secure: bool, stage_timeout: float
) -> Path:
    training = f"clip_norm = {CLIP}\nnoise_multiplier = 0.0\n"
    if secure:
        training += "secure_aggregation = true\nprecision_bits = 16\n"
    extra = f"[privacy]\nstage_timeout = {stage_timeout}\ndropout_fraction = 0.2\n"
    return _aggregator(
        root / "aggregator",
        url,
        pubs,
        rounds,
        plaintext=False,
        training=training,
        extra=extra,
    )


def _start(conf: Path, procs: Procs) -> None:
    procs.spawn("worker", "aggregator.cli", "worker", "--config", str(conf))
    procs.spawn("coordinator", "aggregator.cli", "coordinator", "--config", str(conf))


def _reports(conf: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{conf.parent / 'state' / 'coordinator.sqlite3'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT report FROM rounds WHERE closed IS NOT NULL ORDER BY round"
        ).fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) if r[0] else {} for r in rows]


def _find(doc: object, key: str) -> Any:
    """The first value of `key` anywhere in a JSON document (the report nests it)."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        for v in doc.values():
            found = _find(v, key)
            if found is not None:
                return found
    if isinstance(doc, list):
        for v in doc:
            found = _find(v, key)
            if found is not None:
                return found
    return None


def plain_run(tmp: Path, rabbit: RabbitMQ, n: int, rounds: int, rep: int) -> dict[str, Any]:
    """Each round: every gateway seals its update and publishes it; timed until the
    coordinator has closed the round (the crypto worker opened and summed them)."""
    url = _vhost(rabbit, f"plain-{n}-{rep}")
    root = tmp / f"plain-{n}-{rep}"
    gateways, pubs, _ = _fleet(root, n)
    conf = _config(root, url, pubs, rounds, secure=False, stage_timeout=20.0)
    agg = load_identity(conf.parent / "state" / "identity.key")
    size = int(initial_weights(INIT).size)
    procs = Procs(root / "logs")
    durations, sent = [], []
    try:
        _start(conf, procs)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        wait_for_aggregator(ch, conf, 1)
        for r in range(1, rounds + 1):
            t0 = time.time()
            for gw in gateways:
                frame = _update(gw, agg, r, size)
                sent.append(len(frame))
                ch.basic_publish("", UPDATES_QUEUE, frame)
            _wait(lambda r=r: len(_rounds(conf)) >= r, 120, f"plain round {r}")
            durations.append(_rounds(conf)[r - 1][1] - t0)
        conn.close()
    finally:
        procs.stop()
    return {"round_seconds": durations, "bytes_sent_per_gateway": statistics.median(sent)}


def secure_run(
    tmp: Path,
    rabbit: RabbitMQ,
    n: int,
    rounds: int,
    rep: int,
    *,
    vanish_fraction: float = 0.0,
    stage_timeout: float = 20.0,
) -> dict[str, Any]:
    """Secure rounds driven by the real coordinator; gateways answer each stage from their
    threads. A vanishing gateway drops its connection right after sending its shares."""
    tag = f"secure-{n}-{rep}" + ("-vanish" if vanish_fraction else "")
    url = _vhost(rabbit, tag)
    root = tmp / tag
    gateways, pubs, registry = _fleet(root, n)
    conf = _config(root, url, pubs, rounds, secure=True, stage_timeout=stage_timeout)
    agg = load_identity(conf.parent / "state" / "identity.key")
    vanishing = {g.name for g in gateways[: round(vanish_fraction * n)]}
    stop = threading.Event()
    links: dict[str, SecureLink] = {}
    ready = {g.name: threading.Event() for g in gateways}
    results: dict[str, list[SecureRoundResult]] = {g.name: [] for g in gateways}
    rng = np.random.default_rng(rep)

    def gateway(gw: Identity) -> None:
        def sent(kind: SecAggKind) -> None:
            if kind is SecAggKind.SHARE_KEYS and gw.name in vanishing:
                raise _Vanished

        x = rng.normal(0.0, 0.01, int(initial_weights(INIT).size))

        def update(_a: SecureRoundAnnouncement) -> tuple[np.ndarray, int]:
            return x, SAMPLES

        link = SecureLink(url, gw, agg.public, registry, update, on_sent=sent)
        links[gw.name] = link  # counts the bytes it publishes, envelopes and bare frames
        try:
            for r in range(1, rounds + 1):
                try:
                    res = link.run_round(
                        stop, after_round=r - 1, timeout=300.0, on_ready=ready[gw.name].set
                    )
                except _Vanished:
                    return
                results[gw.name].append(res)
                if stop.is_set():
                    return
        finally:
            link.close()

    threads = [threading.Thread(target=gateway, args=(g,), daemon=True) for g in gateways]
    procs = Procs(root / "logs")
    try:
        for t in threads:
            t.start()
        _wait(lambda: all(e.is_set() for e in ready.values()), 120, "the gateways")
        _start(conf, procs)
        _wait(lambda: len(_rounds(conf)) >= rounds, 120 + 30 * rounds, "the secure rounds")
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        procs.stop()
    spans = _rounds(conf)
    reports = _reports(conf)
    stages = [_find(rep_, "stage_seconds") or {} for rep_ in reports]
    survivors = [g.name for g in gateways if g.name not in vanishing]
    per_round_bytes = [
        links[name].bytes_sent.get(r, 0) for name in survivors for r in range(1, rounds + 1)
    ]
    return {
        "round_seconds": [b - a for a, b in spans],
        "stage_seconds": stages,
        "exchanges": [_find(rep_, "exchanges") for rep_ in reports],
        "pipelined": [_find(rep_, "pipelined") for rep_ in reports],
        "recovery_seconds": [s.get("unmask", 0.0) + s.get("finish", 0.0) for s in stages],
        "dropouts_recovered": [_find(rep_, "dropouts_recovered") for rep_ in reports],
        "aggregated": [_find(rep_, "secure_aggregation") is not None for rep_ in reports],
        "vanished": len(vanishing),
        "bytes_sent_per_gateway": statistics.median(per_round_bytes),
        "finished": sum(1 for name in survivors for res in results[name] if res.finished),
    }


def _spread(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {
        "median_s": statistics.median(xs),
        "p25_s": q[0],
        "p75_s": q[2],
        "min_s": min(xs),
        "max_s": max(xs),
        "rounds_counted": len(xs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=6, help="per run; the first is warm-up")
    p.add_argument("--large", type=int, default=50)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t_start = time.time()
    load_start = os.getloadavg()
    plain: list[dict[str, Any]] = []
    secure: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-secure-") as tmp,
        RabbitMQ(Path(tmp) / "rabbit") as rabbit,
    ):
        root = Path(tmp)
        for rep in range(args.repeats):  # alternated: drift falls on both modes alike
            plain.append(plain_run(root, rabbit, 10, args.rounds, rep))
            secure.append(secure_run(root, rabbit, 10, args.rounds, rep))
            print(
                f"  run {rep + 1}/{args.repeats}: plain "
                f"{statistics.median(plain[-1]['round_seconds'][1:]) * 1000:.0f} ms, secure "
                f"{statistics.median(secure[-1]['round_seconds'][1:]) * 1000:.0f} ms",
                flush=True,
            )
        large = secure_run(root, rabbit, args.large, 1, 0, vanish_fraction=0.2, stage_timeout=15.0)
    plain_steady = [x for r in plain for x in r["round_seconds"][1:]]
    secure_steady = [x for r in secure for x in r["round_seconds"][1:]]
    pm, sm = statistics.median(plain_steady), statistics.median(secure_steady)
    recovery = large["recovery_seconds"][0] if large["recovery_seconds"] else None
    doc: dict[str, Any] = {
        "setup": (
            "real RabbitMQ, real coordinator and crypto worker processes; gateways as in-process "
            "clients (a thread and an AMQP connection each, real crypto); training left out; "
            "DP off in both modes; the 50-gateway run's 20% vanish (connection dropped without "
            "a word, in-process rather than SIGKILL) right after sending their shares"
        ),
        "ten_gateways": {
            "plain": _spread(plain_steady),
            "secure": _spread(secure_steady),
            "ratio": sm / pm,
            "bytes_sent_per_gateway_per_round": {
                "plain": statistics.median(r["bytes_sent_per_gateway"] for r in plain),
                "secure": statistics.median(r["bytes_sent_per_gateway"] for r in secure),
            },
            "secure_stage_seconds": secure[-1]["stage_seconds"][-1],
            # gateway <-> coordinator exchanges on a steady-state round's critical path
            "secure_exchanges_per_round": statistics.median(
                x for r in secure for x in r["exchanges"][1:] if x is not None
            ),
            "runs": {"plain": plain, "secure": secure},
        },
        "fifty_gateways": {"gateways": args.large, **large, "recovery_step_s": recovery},
        "budgets": {
            "secure_over_plain_at_most_2": {"value": sm / pm, "ok": sm / pm <= 2.0},
            "secure_median_under_0_5_s": {"value": sm, "ok": sm < 0.5},
            "recovery_50_gateways_under_0_5_s": {
                "value": recovery,
                "ok": recovery is not None and recovery < 0.5,
            },
        },
        # the host is shared: how busy it was says how far the absolute figures travel
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "seconds": round(time.time() - t_start, 1),
    }
    write("secure_rounds", doc, args.out)
    print(json.dumps(doc["budgets"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
