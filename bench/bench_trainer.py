"""Local trainer benchmarks: batch-32 SGD step, weight get/set and one local epoch over 2,000
windows, for the LiteRT runtime and the NumPy twin in the same run, with their loss agreement.

The raw signature-runner call is timed beside the trainer's call so that the cost of input
validation and dtype conversion is visible."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

from bench._timing import per_call_seconds, write
from gateway.trainer import (
    LiteRtTrainer,
    NumpyTrainer,
    RuntimeUnavailableError,
    Trainer,
    TrainOptions,
    fit,
    load_initial_weights,
)
from wire.model import DEFAULT_MODEL_PATH

WINDOWS = 2000
BATCH = 32


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x, (x[:, 0] * x[:, 1] > 0).astype(np.int32)


def _round(
    trainer: Trainer, x: np.ndarray, y: np.ndarray, options: TrainOptions
) -> Callable[[], object]:
    """One local epoch from the initial weights, as the daemon runs a round."""
    start = load_initial_weights(DEFAULT_MODEL_PATH)
    return lambda: fit(trainer, x, y, options, start)


def bench_backend(trainer: Trainer) -> dict[str, Any]:
    x, y = _data(WINDOWS)
    xb, yb = x[:BATCH], y[:BATCH]
    weights = trainer.get_weights()
    flat = trainer.get_flat()
    out: dict[str, Any] = {
        "train_step_batch32_us": per_call_seconds(lambda: trainer.train_step(xb, yb, 0.01)) * 1e6,
        "predict_batch32_us": per_call_seconds(lambda: trainer.predict_logits(xb)) * 1e6,
        "get_weights_us": per_call_seconds(trainer.get_weights) * 1e6,
        "set_weights_us": per_call_seconds(lambda: trainer.set_weights(weights)) * 1e6,
        "get_flat_us": per_call_seconds(trainer.get_flat) * 1e6,
        "set_flat_us": per_call_seconds(lambda: trainer.set_flat(flat)) * 1e6,
    }
    for name, options in (
        ("epoch_2000_ms", TrainOptions()),
        ("epoch_2000_fedprox_ms", TrainOptions(prox_mu=0.01)),
        ("epoch_2000_clip_noise_ms", TrainOptions(clip_norm=1.0, noise_multiplier=0.01)),
    ):
        out[name] = per_call_seconds(_round(trainer, x, y, options), min_time=0.3) * 1e3
    return out


def bench_raw_runner(trainer: LiteRtTrainer) -> dict[str, float]:
    """The signature runners called directly: the runtime's own floor."""
    x, y = _data(BATCH)
    lr = np.asarray(0.01, np.float32)
    runners = trainer._runners
    return {
        "train_runner_batch32_us": per_call_seconds(lambda: runners["train"](x=x, y=y, lr=lr))
        * 1e6,
        "get_weights_runner_us": per_call_seconds(runners["get_weights"]) * 1e6,
    }


def loss_agreement(a: Trainer, b: Trainer) -> dict[str, float]:
    """One epoch with identical batches on both backends: the largest loss and weight gaps."""
    x, y = _data(WINDOWS)
    start = load_initial_weights(DEFAULT_MODEL_PATH)
    a.set_weights(start)
    b.set_weights(start)
    losses = [
        (
            a.train_step(x[i : i + BATCH], y[i : i + BATCH], 0.05),
            b.train_step(x[i : i + BATCH], y[i : i + BATCH], 0.05),
        )
        for i in range(0, WINDOWS - BATCH + 1, BATCH)
    ]
    gap = max(
        float(np.abs(p - q).max()) for p, q in zip(a.get_weights(), b.get_weights(), strict=True)
    )
    return {
        "steps": len(losses),
        "max_loss_gap": max(abs(p - q) for p, q in losses),
        "max_weight_gap": gap,
        "first_loss": losses[0][0],
        "last_loss": losses[-1][0],
    }


def _limit(name: str, value: float, limit: float) -> dict[str, Any]:
    return {"name": name, "value": value, "limit": limit, "ok": value < limit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="JSON output path (default bench/results/trainer.json)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rss_before = psutil.Process().memory_info().rss
    numpy_trainer = NumpyTrainer(load_initial_weights(DEFAULT_MODEL_PATH))
    doc: dict[str, Any] = {
        "model": str(DEFAULT_MODEL_PATH.name),
        "model_bytes": DEFAULT_MODEL_PATH.stat().st_size,
        "windows": WINDOWS,
        "batch_size": BATCH,
        "numpy": bench_backend(numpy_trainer),
    }
    lite: LiteRtTrainer | None
    try:
        lite = LiteRtTrainer(DEFAULT_MODEL_PATH)
    except RuntimeUnavailableError as exc:
        doc["litert"] = {"unavailable": str(exc)}
        lite = None
    if lite is not None:
        doc["litert"] = {"backend": lite.backend, **bench_backend(lite), **bench_raw_runner(lite)}
        doc["agreement"] = loss_agreement(
            lite, NumpyTrainer(load_initial_weights(DEFAULT_MODEL_PATH))
        )
        doc["numpy_over_litert_step_ratio"] = (
            doc["numpy"]["train_step_batch32_us"] / doc["litert"]["train_step_batch32_us"]
        )
    doc["process_rss_mb"] = psutil.Process().memory_info().rss / 2**20
    doc["rss_growth_mb"] = (psutil.Process().memory_info().rss - rss_before) / 2**20

    for name in ("numpy", "litert"):
        r = doc[name]
        if "train_step_batch32_us" in r:
            print(
                f"{name}: step {r['train_step_batch32_us']:.1f} us, "
                f"get/set {r['get_weights_us']:.1f}/{r['set_weights_us']:.1f} us, "
                f"epoch of {WINDOWS} {r['epoch_2000_ms']:.2f} ms"
            )
    budgets = [_limit("numpy_epoch_2000_ms", doc["numpy"]["epoch_2000_ms"], 30.0)]
    if lite is not None:
        lt = doc["litert"]
        budgets += [
            _limit("litert_train_step_batch32_us", lt["train_step_batch32_us"], 100.0),
            _limit("litert_get_set_weights_us", lt["get_weights_us"] + lt["set_weights_us"], 100.0),
            _limit("litert_epoch_2000_ms", lt["epoch_2000_ms"], 10.0),
            _limit("numpy_litert_max_loss_gap", doc["agreement"]["max_loss_gap"], 1e-5),
        ]
    doc["budgets"] = budgets
    doc["seconds"] = time.perf_counter() - t0
    write("trainer", doc, args.out)
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
