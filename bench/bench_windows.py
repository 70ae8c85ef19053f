"""A gateway's CPU per round as its store grows: 20 wearables, a 500-window budget, stores of
1,000 to 20,000 samples per device, incremental windows against the full rebuild they replace.

Each round appends a round's worth of samples per device, then times, in process CPU, what
the gateway does for a round: open the global model, build the windows, train, seal the
update. Store sizes are alternated round by round so drift hits them all alike."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._timing import write
from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.energy import POWER_MODELS, EnergyPolicy, EnergyPolicyConfig
from gateway.features import N_FEATURES, build_windows
from gateway.learning import FederatedLearner
from gateway.store import VitalsStore, vitals_row
from gateway.trainer import (
    NumpyTrainer,
    flatten,
    load_initial_weights,
)
from gateway.windows import WindowCache
from pqlink import ContentType, Identity, Role
from pqlink.broadcast import join_delivery, new_epoch, seal_broadcast
from wire.fl import GlobalModel, RoundSettings
from wire.model import DEFAULT_MODEL_PATH, PARAMETER_COUNT

DEVICES = 20
BUDGET = 500
NEW_PER_ROUND = 60  # samples per device between rounds: a minute at 1 Hz


class Gateway:
    """One store of `size` samples per device and the two ways to get its windows."""

    def __init__(self, root: Path, size: int, seed: int) -> None:
        self.size = size
        self.store = VitalsStore(root / f"store-{size}.sqlite3", retention_days=36500)
        self.generators = [
            VitalsGenerator(p, seed=seed + i, start_ms=1_790_000_000_000, event_rate_per_hour=6.0)
            for i, p in enumerate(make_profiles(DEVICES, seed, id_prefix=f"s{size}"))
        ]
        self.ids = [f"dev-{i:02d}" for i in range(DEVICES)]
        self.append(size)
        self.cache = WindowCache(self.store, max_samples_per_device=20_000, max_windows=BUDGET)
        self.cache.refresh()  # the first read of the history happens once, at start

    def append(self, n: int) -> None:
        rows = []
        for device, gen in zip(self.ids, self.generators, strict=True):
            rows += [vitals_row(device, s, 0) for s in gen.samples(n)]
        for i in range(0, len(rows), 5000):
            self.store.commit(rows[i : i + 5000])

    def incremental(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        self.cache.refresh()
        return self.cache.training_set()

    def rebuild(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """What the gateway did before: every stored row re-read, every window rebuilt, and
        the same budget applied afterwards so training costs the same."""
        xs, ys = [np.zeros((0, N_FEATURES), np.float32)], [np.zeros(0, np.int32)]
        for device in self.store.devices():
            x, y = build_windows(self.store.sample_rows(device, limit=20_000))
            xs.append(x[-(BUDGET // DEVICES) :])
            ys.append(y[-(BUDGET // DEVICES) :])
        return np.concatenate(xs), np.concatenate(ys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/)")
    args = ap.parse_args(argv)

    aggregator = Identity.generate("aggregator", Role.AGGREGATOR)
    me = Identity.generate("gw-bench", Role.GATEWAY)
    learner = FederatedLearner(
        me,
        aggregator.public,
        NumpyTrainer(load_initial_weights(DEFAULT_MODEL_PATH)),
        EnergyPolicy(EnergyPolicyConfig()),
        POWER_MODELS["raspberry-pi-4"],
    )
    weights = flatten(load_initial_weights(DEFAULT_MODEL_PATH))
    model = GlobalModel(
        weights.astype("<f4").tobytes(), PARAMETER_COUNT, 1, 0, RoundSettings(epochs=1)
    )
    sealed = seal_broadcast(
        aggregator,
        new_epoch([me.public]),
        model.encode(),
        content_type=ContentType.GLOBAL_MODEL,
        round=1,
        with_entries=True,
    )
    envelope = join_delivery(sealed.body, sealed.entries[me.name])  # as the gateway keeps it

    def round_cpu(windows: Any) -> tuple[float, float, int, float]:
        """CPU of the round, of its windows, windows trained, CPU of its crypto (opening the
        global model, signing and sealing the update: one thread, so wall time is CPU)."""
        c0 = time.process_time()
        received = learner.open_global(envelope)
        c1 = time.process_time()
        x, y = windows()
        c2 = time.process_time()
        update = learner.train_and_seal(received, x, y, 1)
        total = time.process_time() - c0
        return total, c2 - c1, len(y), (c1 - c0) + update.metrics["seal_seconds"]

    with tempfile.TemporaryDirectory(prefix="bench-windows-") as tmp:
        t0 = time.perf_counter()
        gateways = [Gateway(Path(tmp), size, 100 + n) for n, size in enumerate(args.sizes)]
        print(f"stores built in {time.perf_counter() - t0:.1f} s")
        samples: dict[int, dict[str, list[float]]] = {
            g.size: {
                "round": [],
                "windows": [],
                "crypto": [],
                "rebuild_round": [],
                "rebuild_windows": [],
            }
            for g in gateways
        }
        trained: dict[int, int] = {}
        for r in range(args.rounds):
            order = gateways if r % 2 == 0 else gateways[::-1]
            for g in order:
                g.append(NEW_PER_ROUND)
                total, win, n, crypto = round_cpu(g.incremental)
                trained[g.size] = n
                s = samples[g.size]
                s["round"].append(total)
                s["windows"].append(win)
                s["crypto"].append(crypto)
                total, win, _, _ = round_cpu(g.rebuild)
                s["rebuild_round"].append(total)
                s["rebuild_windows"].append(win)
        for g in gateways:
            g.store.close()

    def med_ms(values: list[float]) -> float:
        return round(1000 * statistics.median(values[1:] or values), 3)

    results: list[dict[str, Any]] = [
        {
            "samples_per_device": size,
            "windows_trained": trained[size],
            "round_cpu_ms": med_ms(s["round"]),
            "window_cpu_ms": med_ms(s["windows"]),
            "crypto_cpu_ms": med_ms(s["crypto"]),
            "crypto_share": round(
                statistics.median(s["crypto"]) / statistics.median(s["round"]), 4
            ),
            "round_cpu_ms_spread": [
                round(1000 * min(s["round"]), 3),
                round(1000 * max(s["round"]), 3),
            ],
            "rebuild_round_cpu_ms": med_ms(s["rebuild_round"]),
            "rebuild_window_cpu_ms": med_ms(s["rebuild_windows"]),
        }
        for size, s in samples.items()
    ]
    small, large = results[0], results[-1]
    growth = large["round_cpu_ms"] / small["round_cpu_ms"]
    doc = {
        "devices": DEVICES,
        "window_budget": BUDGET,
        "new_samples_per_device_per_round": NEW_PER_ROUND,
        "rounds": args.rounds,
        "cpu": "process CPU time (time.process_time) of open global + windows + train + seal",
        "crypto": "opening the global-model broadcast, signing and sealing the update",
        "results": results,
        "round_cpu_growth": round(growth, 3),
        "rebuild_round_cpu_growth": round(
            large["rebuild_round_cpu_ms"] / small["rebuild_round_cpu_ms"], 3
        ),
        "budget": "round CPU at the largest store within 10% of the smallest",
        "within_budget": growth <= 1.10,
    }
    for row in results:
        print(
            f"{row['samples_per_device']:>6} samples/device: "
            f"round {row['round_cpu_ms']:7.1f} ms CPU (windows {row['window_cpu_ms']:6.1f}), "
            f"rebuild {row['rebuild_round_cpu_ms']:7.1f} ms "
            f"(windows {row['rebuild_window_cpu_ms']:6.1f})"
        )
    print(f"growth {growth:.3f} (budget 1.10); crypto share {large['crypto_share']:.3f}")
    write("windows", doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
