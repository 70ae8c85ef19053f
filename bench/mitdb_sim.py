"""In-process twin of bench_mitdb's federated rounds: the same windows, NumPy twin and FedAvg
update arithmetic without mosquitto, gateway daemons or RabbitMQ, to explore settings quickly.

Each ward's windows are built from the annotations exactly as its gateway builds them from the
stored beats (bench_mitdb.record_rows); every round each ward runs `gateway.trainer.fit` from
the global weights with the round's settings and the round number as seed (as
gateway/federation.py does), and the aggregator adds the sample-weighted mean of the deltas
(aggregator/strategies.FedAvg), optionally through server momentum (FedAvgM). Secure
aggregation and gateway-level DP are off in bench_mitdb's real run, so they are off here too.
With `federated_scaling` the real system runs a statistics round first, so its training rounds
are 2..41 (seeds one higher than here) and its pooled statistics pass a float32 sum: close to
this twin, not bit for bit.

    python -m bench.mitdb_sim --train ../shared/datasets/mitdb-ds1 --json /tmp/sim.json
    python -m bench.mitdb_sim --train ../shared/datasets/mitdb-ds1 --nested --json PATH
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.momentum import FedAvgM
from bench._timing import write
from bench.bench_mitdb import (
    F32,
    I32,
    Settings,
    _af_probability,
    _predict,
    _train,
    budgets,
    folds,
    record_rows,
    score,
    wards,
)
from device_emulators.replay import list_records
from gateway.af_rule import dash_af
from gateway.federated_stats import FeatureStats, standardise
from gateway.learning import train_options
from gateway.rhythm import CLASS_NAMES, RR_STRIDE, RR_WINDOW, RhythmWindows, rhythm_windows
from gateway.trainer import NumpyTrainer, fit, flatten, load_initial_weights, unflatten
from wire.fl import RoundSettings
from wire.model import RHYTHM_LAYOUT, RHYTHM_MODEL_PATH


@dataclass(frozen=True, slots=True)
class FedConfig:
    """One federated configuration: round settings, the gateway's own choices, the server rule.

    `server_momentum` > 0 is FedAvgM (Hsu, Qi and Brown 2019): the server keeps a velocity
    v <- momentum * v + mean_delta and moves the global model by server_lr * v.
    `federated_scaling` standardises the features with the pooled mean and standard deviation
    computed from the wards' sums (gateway/federated_stats.py) before training and scoring."""

    rounds: int = 40
    epochs: int = 2
    learning_rate: float = 0.05
    batch_size: int = 32
    restricted: bool = True
    balanced: bool = True
    prox_mu: float = 0.0
    server_momentum: float = 0.0
    server_lr: float = 1.0
    federated_scaling: bool = False
    lr_final_ratio: float = 1.0  # learning rate decays geometrically to this share of it
    seed_offset: int = 0  # round r trains with seed r + offset (the real gateways use r)


@functools.cache
def _record_windows(directory: str, record: str) -> RhythmWindows:
    return rhythm_windows(record_rows(Path(directory), record), RR_WINDOW, RR_STRIDE)


def ward_windows(directory: Path, groups: Sequence[Sequence[str]]) -> list[tuple[F32, I32]]:
    """Each ward's training windows, in the order its gateway concatenates its devices (by
    device id, patient-<record>: record name order)."""
    out = []
    for records in groups:
        w = RhythmWindows.concat([_record_windows(str(directory), r) for r in sorted(records)])
        out.append((w.features, w.labels))
    return out


def federate(wards_xy: Sequence[tuple[F32, I32]], cfg: FedConfig) -> F32:
    """The global model's flat weights after `cfg.rounds` rounds over the wards, through the
    aggregator's own FedAvgM (plain FedAvg at momentum 0 and server learning rate 1)."""
    trainer = NumpyTrainer(load_initial_weights(RHYTHM_MODEL_PATH))
    global_flat = trainer.get_flat()
    strategy = FedAvgM(
        cfg.server_momentum,
        cfg.server_lr,
        cfg.lr_final_ratio,
        cfg.rounds,
        training=RoundSettings(cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.prox_mu),
    )
    for round_ in range(1, cfg.rounds + 1):
        settings = strategy.configure_round(round_)
        total = np.zeros_like(global_flat)
        weight = 0
        start = unflatten(global_flat, RHYTHM_LAYOUT)
        for x, y in wards_xy:
            if not len(y):
                continue
            options = train_options(
                settings,
                round_ + cfg.seed_offset,
                balanced=cfg.balanced,
                restricted=cfg.restricted,
            )
            result = fit(trainer, x, y, options, start)
            # as the gateway computes it (gateway/learning.py) and a worker adds it
            delta = flatten(list(result.weights), RHYTHM_LAYOUT) - global_flat
            total += np.float32(len(y)) * delta
            weight += len(y)
        global_flat = (global_flat + strategy.aggregate(float(weight), total, ())).astype(
            np.float32
        )
    return global_flat


def _settings(cfg: FedConfig) -> Settings:
    return Settings(3, cfg.rounds, cfg.epochs, cfg.learning_rate, cfg.batch_size, 0.0, 1)


def _scaled(
    wards_xy: Sequence[tuple[F32, I32]], test_x: F32, cfg: FedConfig
) -> tuple[list[tuple[F32, I32]], F32]:
    if not cfg.federated_scaling:
        return list(wards_xy), test_x
    stats = FeatureStats.sum([FeatureStats.of(x) for x, _ in wards_xy])
    return [(standardise(x, stats), y) for x, y in wards_xy], standardise(test_x, stats)


def run_split(
    directory: Path, groups: Sequence[Sequence[str]], test: Sequence[str], cfg: FedConfig
) -> tuple[dict[str, Any], I32]:
    """Predictions of every method on the held-out records, as bench_mitdb.evaluate_split."""
    held = RhythmWindows.concat([_record_windows(str(directory), r) for r in test])
    wards_xy, test_x = _scaled(ward_windows(directory, groups), held.features, cfg)
    federated = NumpyTrainer(unflatten(federate(wards_xy, cfg), RHYTHM_LAYOUT))
    s = _settings(cfg)
    pooled_x = np.concatenate([x for x, _ in wards_xy])
    pooled_y = np.concatenate([y for _, y in wards_xy])
    central = _train(pooled_x, pooled_y, s, s.seed)
    local = [_train(x, y, s, s.seed + 1 + g) for g, (x, y) in enumerate(wards_xy) if len(y)]
    return {
        "federated": _predict(federated, test_x),
        "federated_af": _af_probability(federated, test_x),
        "central": _predict(central, test_x),
        "central_af": _af_probability(central, test_x),
        "local_only": [_predict(m, test_x) for m in local],
        "rule": dash_af(held.rr_ms),
    }, held.labels


def cross_validate(
    directory: Path, records: Sequence[str], k: int, gateways: int, cfg: FedConfig
) -> dict[str, Any]:
    """Patient-wise K-fold over `records` (bench_mitdb's folds and wards); pooled scores."""
    predictions, labels = [], []
    for held in folds(directory, records, k):
        train = [r for r in records if r not in held]
        p, y = run_split(directory, wards(directory, train, gateways), held, cfg)
        predictions.append(p)
        labels.append(y)
    y_all = np.concatenate(labels)
    methods = score(y_all, predictions, gateways)
    return {"methods": methods, "budgets": budgets(methods), "labels": y_all}


def federated_only_f1(
    directory: Path, records: Sequence[str], k: int, gateways: int, cfg: FedConfig
) -> float:
    """Macro-F1 of the federated model alone over a patient-wise K-fold of `records` (the inner
    criterion of the nested selection: central and local models are not needed for it)."""
    preds, labels = [], []
    for held in folds(directory, records, k):
        train = [r for r in records if r not in held]
        wards_xy = ward_windows(directory, wards(directory, train, gateways))
        test = RhythmWindows.concat([_record_windows(str(directory), r) for r in held])
        wards_xy, test_x = _scaled(wards_xy, test.features, cfg)
        model = NumpyTrainer(unflatten(federate(wards_xy, cfg), RHYTHM_LAYOUT))
        preds.append(_predict(model, test_x))
        labels.append(test.labels)
    return macro_f1(np.concatenate(labels), np.concatenate(preds))


def macro_f1(y: I32, pred: I32) -> float:
    f1s = []
    for c in range(len(CLASS_NAMES)):
        tp = int(np.sum((pred == c) & (y == c)))
        wrong = int(np.sum((pred == c) != (y == c)))
        f1s.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return float(np.mean(f1s))


def grid(spec: dict[str, Sequence[Any]], base: FedConfig) -> list[FedConfig]:
    """Every combination of the values; a key "a,b" varies fields a and b together."""
    keys = sorted(spec)
    out = []
    for values in itertools.product(*(spec[k] for k in keys)):
        fields: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            names = key.split(",")
            fields |= dict(zip(names, value if len(names) > 1 else [value], strict=True))
        out.append(replace(base, **fields))
    return out


def nested(
    directory: Path,
    records: Sequence[str],
    k: int,
    inner_k: int,
    gateways: int,
    candidates: Sequence[FedConfig],
    seeds: int = 2,
    workers: int = 2,
) -> dict[str, Any]:
    """Nested patient-wise cross-validation: for each outer fold, every candidate is scored by
    the federated macro-F1 of an inner K-fold over that fold's training records only; the best
    one is then trained on all of them and scored on the held-out records."""
    predictions, labels, chosen = [], [], []
    for held in folds(directory, records, k):
        train = [r for r in records if r not in held]
        jobs = [
            (directory, train, inner_k, gateways, replace(c, seed_offset=o))
            for c in candidates
            for o in range(seeds)
        ]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            f1 = pool.starmap(federated_only_f1, jobs)
        inner = [
            (float(np.mean(f1[i * seeds : (i + 1) * seeds])), i) for i in range(len(candidates))
        ]
        best = candidates[max(inner)[1]]
        chosen.append(
            {
                "held_out": held,
                "config": asdict(best),
                "inner_f1": max(inner)[0],
                "inner_f1_per_candidate": [f for f, _ in inner],
            }
        )
        print(f"outer fold {held}: chose {best} (inner macro-F1 {max(inner)[0]:.3f})", flush=True)
        p, y = run_split(directory, wards(directory, train, gateways), held, best)
        predictions.append(p)
        labels.append(y)
    y_all = np.concatenate(labels)
    methods = score(y_all, predictions, gateways)
    return {"methods": methods, "budgets": budgets(methods), "chosen": chosen}


def _summary(methods: dict[str, Any]) -> str:
    fed, cen, loc = (methods[k]["macro_f1"] for k in ("federated", "central", "local_only"))
    m = methods["federated"]["af_at_rule_specificity"]
    return (
        f"fed {fed:.3f} central {cen:.3f} ratio {fed / cen:.3f} local {loc:.3f} "
        f"AF@rule-spec {m['af_sensitivity']:.3f}/{m['af_specificity']:.3f} "
        f"rule {methods['rule']['af_sensitivity']:.3f}/{methods['rule']['af_specificity']:.3f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--inner-folds", type=int, default=4)
    parser.add_argument("--config", default="{}", help="FedConfig fields as JSON")
    parser.add_argument("--grid", default=None, help="JSON {field: [values]} for --nested")
    parser.add_argument("--seeds", type=int, default=1, help="inner runs per candidate")
    parser.add_argument("--workers", type=int, default=2, help="processes for the inner runs")
    parser.add_argument("--nested", action="store_true", help="nested selection over --grid")
    parser.add_argument(
        "--repeat", type=int, default=1, help="CV runs with round seeds offset by 0..N-1"
    )
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    base = replace(FedConfig(), **json.loads(args.config))
    records = list_records(args.train)
    t0 = time.monotonic()
    if args.nested:
        candidates = grid(json.loads(args.grid or "{}"), base)
        out = nested(
            args.train,
            records,
            args.folds,
            args.inner_folds,
            args.gateways,
            candidates,
            seeds=args.seeds,
            workers=args.workers,
        )
        doc: dict[str, Any] = {
            "protocol": f"nested patient-wise CV: {args.folds} outer folds, "
            f"{args.inner_folds} inner folds of each outer training part",
            "candidates": [asdict(c) for c in candidates],
            **out,
        }
    else:
        runs = []
        for offset in range(args.repeat):
            cfg = replace(base, seed_offset=base.seed_offset + offset)
            out = cross_validate(args.train, records, args.folds, args.gateways, cfg)
            out.pop("labels")
            print(f"seed offset {cfg.seed_offset}: {_summary(out['methods'])}", flush=True)
            runs.append(out)
        fed = [r["methods"]["federated"]["macro_f1"] for r in runs]
        doc = {
            "protocol": f"patient-wise {args.folds}-fold CV",
            "config": asdict(base),
            **runs[0],
            "repeats": {
                "seed_offsets": [base.seed_offset + o for o in range(args.repeat)],
                "federated_macro_f1": fed,
                "federated_af_sensitivity_at_rule_specificity": [
                    r["methods"]["federated"]["af_at_rule_specificity"]["af_sensitivity"]
                    for r in runs
                ],
                "mean": float(np.mean(fed)),
                "sd": float(np.std(fed, ddof=1)) if len(fed) > 1 else None,
            },
        }
    print(_summary(doc["methods"]), flush=True)
    doc["elapsed_seconds"] = round(time.monotonic() - t0, 1)
    write("mitdb_sim", doc, args.json_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
