"""Secure against plain federated rounds through real brokers and the real coordinator and
crypto worker: round time, recovery after dropouts, and the bytes each gateway sends.

10 gateways run plain and secure rounds alternately in one run (DP off in both: the noise
costs the same in both modes, and the comparison is about the protocol). Then 50 gateways: a
round with everyone, then one in which 20% vanish once their key shares are in: the round
completes through the unmasking stage; its recovery step is timed. In secure rounds each
gateway is a process of its own (`bench.secure_gateway`: the gateway's real secure-aggregation
link, its own AMQP connection and interpreter, as on its own device); in plain rounds the
benchmark seals and publishes every gateway's update from one thread. The coordinator and the
crypto worker are the real processes. Local training is left out of both modes: it is the same
work whether the update is masked or not.

Besides the round times it reads every party's CPU over the steady rounds (gateways, the
coordinator, the worker, the RabbitMQ node): their total over this machine's cores is a bound
no scheduling can beat, which says what a ratio on two shared cores can and cannot be."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pika

from aggregator.coordinator import initial_weights
from bench._timing import write
from bench.bench_rounds import (
    INIT,
    Procs,
    _aggregator,
    _broker_pid,
    _cpu,
    _rounds,
    _update,
    _vhost,
    _wait,
    wait_for_aggregator,
)
from bench.bench_secagg import secure_round as protocol_round
from pqlink import Identity, Registry, Role, load_identity, save_identity, save_registry
from pqlink.keys import HybridPrivateKey, SigAlg, SigningKey
from testbed import RabbitMQ
from wire.amqp import UPDATES_QUEUE

SAMPLES = 100  # each gateway's sample count (the secure rounds are sample-weighted)
FLEET = 10  # gateways in the plain-against-secure comparison (a complete neighbour graph)
CLIP = 1.0


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


class _ProcessCpu:
    """CPU seconds of the coordinator, the crypto worker and the RabbitMQ node, read from
    /proc between two marks (10 ms clock ticks: summed over several rounds)."""

    def __init__(self, procs: Procs, rabbit: RabbitMQ) -> None:
        worker, coordinator = procs.items[-2:]  # as `_start` spawns them
        broker = _broker_pid(rabbit.workdir / "rabbitmq.pid")
        self.pids = {"coordinator": coordinator.pid, "worker": worker.pid}
        if broker is not None:
            self.pids["broker"] = broker
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        return {name: _cpu(pid) for name, pid in self.pids.items()}

    def since_start(self) -> dict[str, float]:
        now = self._read()
        return {name: now[name] - self._start[name] for name in self.pids}


def primitive_cpu(repeats: int = 200) -> dict[str, float]:
    """Mean thread CPU seconds of each post-quantum primitive a secure round uses (ML-DSA-65
    over a key-and-share-sized message, hybrid ML-KEM-768 + X25519), the calls interleaved."""
    signer = SigningKey.generate(SigAlg.ML_DSA_65)
    verifier = signer.public_key()
    message = bytes(20_000)
    signature = signer.sign(message, b"bench")
    kem = HybridPrivateKey.generate()
    public = kem.public_key()
    ciphertext = public.encapsulate().ciphertext
    calls = {
        "sign": lambda: signer.sign(message, b"bench"),
        "verify": lambda: verifier.verify(signature, message, b"bench"),
        "encapsulate": public.encapsulate,
        "decapsulate": lambda: kem.decapsulate(ciphertext),
        "key_pair": HybridPrivateKey.generate,
    }
    spent = dict.fromkeys(calls, 0.0)
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.thread_time()
            call()
            spent[name] += time.thread_time() - t0
    return {name: total / repeats for name, total in spent.items()}


def _cpu_per_round(
    gateway_cpu: list[float], others: dict[str, float], rounds: int
) -> dict[str, Any]:
    """CPU seconds per steady round: the gateways' summed, and each other party's, their
    total, and that total spread over this machine's cores -- a round cannot be shorter than
    that, however the work were scheduled."""
    parts = {"gateways": sum(gateway_cpu) / rounds}
    parts.update({name: cpu / rounds for name, cpu in others.items()})
    total = sum(parts.values())
    cores = os.cpu_count() or 1
    return {
        **{f"{name}_s": v for name, v in parts.items()},
        "total_s": total,
        "cores": cores,
        "total_over_cores_s": total / cores,
    }


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
    gateway_cpu: list[float] = []  # this thread's sealing and publishing, per steady round
    try:
        _start(conf, procs)
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        wait_for_aggregator(ch, conf, 1)
        others = None
        for r in range(1, rounds + 1):
            t0 = time.time()
            c0 = time.thread_time()
            for gw in gateways:
                frame = _update(gw, agg, r, size)
                sent.append(len(frame))
                ch.basic_publish("", UPDATES_QUEUE, frame)
            if r > 1:
                gateway_cpu.append(time.thread_time() - c0)
            _wait(lambda r=r: len(_rounds(conf)) >= r, 120, f"plain round {r}")
            durations.append(_rounds(conf)[r - 1][1] - t0)
            if r == 1:  # the warm-up round is over: the steady rounds' CPU starts here
                others = _ProcessCpu(procs, rabbit)
        assert others is not None
        steady_cpu = others.since_start()
        conn.close()
    finally:
        procs.stop()
    return {
        "round_seconds": durations,
        "bytes_sent_per_gateway": statistics.median(sent),
        "cpu_per_round": _cpu_per_round(gateway_cpu, steady_cpu, rounds - 1),
    }


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
    """Secure rounds driven by the real coordinator; each gateway is a process of its own
    (`bench.secure_gateway`), as on its own device. A vanishing gateway's process ends in the
    last round once its key shares are in, its connection dropped without a word (the rounds
    before warm the processes up, as a long-running gateway is)."""
    tag = f"secure-{n}-{rep}" + ("-vanish" if vanish_fraction else "")
    url = _vhost(rabbit, tag)
    root = tmp / tag
    gateways, pubs, registry = _fleet(root, n)
    conf = _config(root, url, pubs, rounds, secure=True, stage_timeout=stage_timeout)
    vanishing = {g.name for g in gateways[: round(vanish_fraction * n)]}
    gw_root = root / "gateways"
    gw_root.mkdir()
    registry_path = gw_root / "registry.json"
    save_registry(registry, registry_path)
    size = int(initial_weights(INIT).size)
    procs = Procs(root / "logs")
    try:
        for i, gw in enumerate(gateways):
            save_identity(gw, gw_root / f"{gw.name}.key")
            procs.spawn(
                gw.name,
                "bench.secure_gateway",
                *("--identity", str(gw_root / f"{gw.name}.key")),
                *("--aggregator-pub", str(conf.parent / "state" / "identity.pub")),
                *("--registry", str(registry_path)),
                *("--url", url, "--rounds", str(rounds), "--parameters", str(size)),
                *("--samples", str(SAMPLES), "--seed", str(1000 * rep + i)),
                *("--ready", str(gw_root / f"{gw.name}.ready")),
                *("--out", str(gw_root / f"{gw.name}.json")),
                *(("--vanish-in-round", str(rounds)) if gw.name in vanishing else ()),
            )
        _wait(
            lambda: all((gw_root / f"{g.name}.ready").exists() for g in gateways),
            60 + 2 * n,
            "the gateways",
        )
        _start(conf, procs)
        _wait(lambda: len(_rounds(conf)) >= 1, 150, "the first secure round")
        others = _ProcessCpu(procs, rabbit)  # from the end of the warm-up round
        _wait(lambda: len(_rounds(conf)) >= rounds, 120 + 30 * rounds, "the secure rounds")
        steady_cpu = others.since_start()
        survivors = [g.name for g in gateways if g.name not in vanishing]
        _wait(
            lambda: all((gw_root / f"{name}.json").exists() for name in survivors),
            60,
            "the gateways' results",
        )
    finally:
        procs.stop()
    spans = _rounds(conf)
    reports = _reports(conf)
    stages = [_find(rep_, "stage_seconds") or {} for rep_ in reports]
    done = {
        name: json.loads((gw_root / f"{name}.json").read_text())["rounds"] for name in survivors
    }
    steady = [r for name in survivors for r in done[name][1:]]
    return {
        "round_seconds": [b - a for a, b in spans],
        "stage_seconds": stages,
        "exchanges": [_find(rep_, "exchanges") for rep_ in reports],
        "pipelined": [_find(rep_, "pipelined") for rep_ in reports],
        "recovery_seconds": [s.get("unmask", 0.0) + s.get("finish", 0.0) for s in stages],
        "dropouts_recovered": [_find(rep_, "dropouts_recovered") for rep_ in reports],
        "aggregated": [_find(rep_, "secure_aggregation") is not None for rep_ in reports],
        "vanished": len(vanishing),
        "bytes_sent_per_gateway": statistics.median(
            r["bytes_sent"] for name in survivors for r in done[name]
        ),
        "finished": sum(1 for name in survivors for r in done[name] if r["finished"]),
        "cpu_per_round": _cpu_per_round([r["cpu_s"] for r in steady], steady_cpu, rounds - 1)
        if rounds > 1
        else None,
        "gateway_cpu_per_round_s": statistics.median(r["cpu_s"] for r in steady)
        if rounds > 1
        else None,
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
    # The protocol's own computation per gateway and round (pqlink.secagg in this process, no
    # broker, no envelopes): what ten gateways must compute whatever carries their messages.
    signers = {u: SigningKey.generate(SigAlg.ML_DSA_65) for u in range(1, FLEET + 1)}
    protocol: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-secure-") as tmp,
        RabbitMQ(Path(tmp) / "rabbit") as rabbit,
    ):
        root = Path(tmp)
        for rep in range(args.repeats):  # alternated: drift falls on both modes alike
            plain.append(plain_run(root, rabbit, FLEET, args.rounds, rep))
            secure.append(secure_run(root, rabbit, FLEET, args.rounds, rep))
            protocol.append(protocol_round(FLEET, 100 + rep, signers, frozenset()))
            print(
                f"  run {rep + 1}/{args.repeats}: plain "
                f"{statistics.median(plain[-1]['round_seconds'][1:]) * 1000:.0f} ms, secure "
                f"{statistics.median(secure[-1]['round_seconds'][1:]) * 1000:.0f} ms; CPU per "
                f"round over the cores: plain "
                f"{plain[-1]['cpu_per_round']['total_over_cores_s'] * 1000:.0f} ms, secure "
                f"{secure[-1]['cpu_per_round']['total_over_cores_s'] * 1000:.0f} ms",
                flush=True,
            )
        # a warm-up round with everyone, then the round in which 20% vanish
        large = secure_run(root, rabbit, args.large, 2, 0, vanish_fraction=0.2, stage_timeout=15.0)
    plain_steady = [x for r in plain for x in r["round_seconds"][1:]]
    secure_steady = [x for r in secure for x in r["round_seconds"][1:]]
    pm, sm = statistics.median(plain_steady), statistics.median(secure_steady)
    recovery = large["recovery_seconds"][-1] if large["recovery_seconds"] else None
    cpu = {
        mode: {
            key: statistics.median(r["cpu_per_round"][key] for r in runs)
            for key in runs[0]["cpu_per_round"]
        }
        for mode, runs in (("plain", plain), ("secure", secure))
    }
    # The secure round's CPU, all parties, spread over the cores, against the plain round's
    # median: above 2 means no scheduling of that work could meet 2x on this machine.
    floor_ratio = cpu["secure"]["total_over_cores_s"] / pm
    protocol_cpu = statistics.median(r["client_cpu_s"] for r in protocol)
    cores = cpu["secure"]["cores"]
    # A secure round does all a plain round does (each gateway's input sealed and signed, the
    # worker opening and summing them, the coordinator closing the round) and the protocol's
    # computation besides: that CPU over the cores is a floor for its time on this machine.
    floor_s = (FLEET * protocol_cpu + cpu["plain"]["total_s"]) / cores
    # ... and of that computation, the post-quantum primitives alone, per gateway of the
    # complete graph: its advert and its key-and-share message signed, and per neighbour those
    # two verified, two hybrid encapsulations and two decapsulations; one hybrid key pair
    prim = primitive_cpu()
    per_gateway = (
        2 * prim["sign"]
        + 2 * (FLEET - 1) * (prim["verify"] + prim["encapsulate"] + prim["decapsulate"])
        + prim["key_pair"]
    )
    primitives_floor_s = (FLEET * per_gateway + cpu["plain"]["total_s"]) / cores
    doc: dict[str, Any] = {
        "setup": (
            "real RabbitMQ, real coordinator and crypto worker processes; in secure rounds each "
            "gateway a process of its own (bench.secure_gateway: the gateway's secure link, its "
            "own AMQP connection, real crypto), in plain rounds every gateway's update sealed and "
            "published from the benchmark's thread; training left out; DP off in both modes; the "
            "50-gateway run: one round with everyone, then one in which 20% of the gateway "
            "processes end (os._exit, no goodbye) once their key shares are in"
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
            # CPU seconds per steady round (medians over the runs): the gateways' summed,
            # the coordinator's, the worker's, the broker's, and their total over the cores
            "cpu_per_round": cpu,
            "secure_cpu_over_cores_per_plain_round": floor_ratio,
            # one gateway's SecAgg computation alone (signatures, verifications, hybrid KEM,
            # shares, masks), ten of them over the cores, against the plain round's median
            "protocol_cpu_per_gateway_s": protocol_cpu,
            "protocol_cpu_over_cores_per_plain_round": FLEET * protocol_cpu / cores / pm,
            "secure_floor_s": floor_s,
            "secure_floor_over_plain_round": floor_s / pm,
            "primitive_cpu_s": prim,
            "primitives_per_gateway_s": per_gateway,
            "primitives_floor_s": primitives_floor_s,
            "primitives_floor_over_plain_round": primitives_floor_s / pm,
            "gateway_cpu_per_round_s": {
                "plain": cpu["plain"]["gateways_s"] / FLEET,
                "secure": statistics.median(r["gateway_cpu_per_round_s"] for r in secure),
            },
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
    print(
        f"secure round CPU over {cpu['secure']['cores']} cores: "
        f"{cpu['secure']['total_over_cores_s'] * 1000:.0f} ms = {floor_ratio:.1f}x the plain "
        f"round's median ({pm * 1000:.0f} ms); the protocol's own computation, "
        f"{protocol_cpu * 1000:.1f} ms per gateway, with the plain round's CPU: a floor of "
        f"{floor_s * 1000:.0f} ms = {floor_s / pm:.1f}x; its post-quantum primitives alone, "
        f"{per_gateway * 1000:.1f} ms per gateway: {primitives_floor_s / pm:.1f}x"
    )
    print(json.dumps(doc["budgets"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
