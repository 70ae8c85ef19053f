"""The demo's report: per-round accuracy of the global model on held-out windows, the latency
split of each round, bytes and energy, as a table, a PNG plot and JSON."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.features import N_FEATURES, build_windows
from gateway.store import VitalsStore
from gateway.trainer import (
    NumpyTrainer,
    TrainOptions,
    evaluate,
    fit,
    load_initial_weights,
    unflatten,
)
from wire.model import DEFAULT_MODEL_PATH

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


@dataclass
class RoundRow:
    round: int
    participants: int
    windows: int
    accuracy: float
    loss: float
    redistribution_ms: float
    window_ms: float
    training_ms: float
    sealing_ms: float
    transport_ms: float
    opening_ms: float
    aggregation_ms: float
    other_ms: float
    round_ms: float
    update_bytes: int
    energy_j: float
    # The gateways' own figures (windows, timings, bytes, energy) reached the coordinator: in a
    # plain round they travel sealed with each update; a secure round's coordinator learns
    # only the sum, so its row has none of them.
    gateway_side: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    rounds: list[RoundRow]
    central_accuracy: float


def held_out_windows(
    seed: int, patients: int = 40, samples: int = 900, event_rate: float = 6.0
) -> tuple[F32, I32]:
    """Windows from patients no gateway has seen, all cohorts equally (the test population)."""
    xs, ys = [], []
    for i, profile in enumerate(make_profiles(patients, seed, id_prefix="holdout")):
        gen = VitalsGenerator(
            profile,
            seed=seed * 7919 + i,
            start_ms=1_790_000_000_000,
            event_rate_per_hour=event_rate,
        )
        x, y = build_windows(gen.samples(samples))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32)


def _models(state: Path) -> dict[int, F32]:
    db = sqlite3.connect(f"file:{state / 'coordinator.sqlite3'}?mode=ro", uri=True)
    try:
        return {
            int(r): np.frombuffer(w, dtype=np.float32).copy()
            for r, w in db.execute("SELECT round, weights FROM models")
        }
    finally:
        db.close()


def _central_accuracy(stores: list[Path], x_test: F32, y_test: I32, epochs: int) -> float:
    """One model trained on the pooled data of every gateway: the yardstick for FedAvg."""
    xs, ys = [np.zeros((0, N_FEATURES), np.float32)], [np.zeros(0, np.int32)]
    for path in stores:
        with VitalsStore(path) as store:
            for device in store.devices():
                x, y = build_windows(store.samples(device))
                xs.append(x)
                ys.append(y)
    trainer = NumpyTrainer(load_initial_weights(DEFAULT_MODEL_PATH))
    fit(
        trainer,
        np.concatenate(xs),
        np.concatenate(ys),
        TrainOptions(epochs=epochs, learning_rate=0.1),
    )
    return evaluate(trainer, x_test, y_test)[1]


_STAGES = (
    "redistribution_ms",
    "window_ms",
    "training_ms",
    "sealing_ms",
    "transport_ms",
    "opening_ms",
    "aggregation_ms",
)


def _critical_split(entry: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, float]:
    """The round's time along its critical path: the update that reached a worker last, from
    the round's opening to its close. `other_ms` is what no stage times (the gateway's queue
    and spool, the partial sum's trip, the coordinator's bookkeeping), so the split sums to
    `round_ms` exactly."""
    round_ms = 1000.0 * (entry.get("closed_at", 0.0) - entry.get("opened_at", 0.0))
    split = dict.fromkeys(_STAGES, 0.0)
    timed = [m for m in metrics if "worker_received_at" in m]
    if timed:
        last = max(timed, key=lambda m: float(m["worker_received_at"]))
        opened_at = float(entry.get("opened_at", 0.0))
        arrived = float(last["worker_received_at"]) - float(last.get("open_seconds", 0.0))
        split |= {
            "redistribution_ms": max(
                0.0, 1000.0 * (float(last.get("global_received_at", opened_at)) - opened_at)
            ),
            "window_ms": 1000.0 * float(last.get("window_seconds", 0.0)),
            "training_ms": 1000.0 * float(last.get("train_seconds", 0.0)),
            "sealing_ms": 1000.0 * float(last.get("uplink_seal_seconds", 0.0)),
            "transport_ms": max(
                0.0, 1000.0 * (arrived - float(last.get("uplink_published_at", arrived)))
            ),
            "opening_ms": 1000.0 * float(last.get("open_seconds", 0.0)),
        }
    split["aggregation_ms"] = 1000.0 * float(entry.get("aggregation_seconds", 0.0))
    split["other_ms"] = round_ms - sum(split[k] for k in _STAGES)
    split["round_ms"] = round_ms
    return split


def evaluate_rounds(
    *,
    state: Path,
    report: Path,
    x_test: F32,
    y_test: I32,
    stores: list[Path],
    central_epochs: int,
) -> Evaluation:
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    models = _models(state)
    trainer = NumpyTrainer(load_initial_weights(DEFAULT_MODEL_PATH))
    rows = []
    for e in entries:
        metrics: dict[str, dict[str, Any]] = e["metrics"]
        weights = models.get(e["round"] + 1)
        if weights is not None:
            trainer.set_weights(unflatten(weights))
        loss, acc = evaluate(trainer, x_test, y_test)
        split = _critical_split(e, list(metrics.values()))
        m = list(metrics.values())
        rows.append(
            RoundRow(
                round=e["round"],
                participants=len(e["participants"]),
                windows=e["samples"],
                accuracy=acc,
                loss=loss,
                **split,
                update_bytes=int(sum(x.get("update_bytes", 0) for x in m)),
                energy_j=float(sum(x.get("energy_joules", 0.0) for x in m)),
                gateway_side=any(m) or not e["participants"],
            )
        )
    return Evaluation(rows, _central_accuracy(stores, x_test, y_test, central_epochs))


_COLUMNS = (  # header, unit, width, format, attribute
    ("round", "", 5, "d", "round"),
    ("gw", "", 3, "d", "participants"),
    ("windows", "", 7, "d", "windows"),
    ("acc", "", 6, ".3f", "accuracy"),
    ("redist", "ms", 7, ".1f", "redistribution_ms"),
    ("window", "ms", 7, ".1f", "window_ms"),
    ("train", "ms", 7, ".1f", "training_ms"),
    ("seal", "ms", 6, ".1f", "sealing_ms"),
    ("transp", "ms", 7, ".1f", "transport_ms"),
    ("open", "ms", 6, ".1f", "opening_ms"),
    ("aggr", "ms", 6, ".1f", "aggregation_ms"),
    ("other", "ms", 7, ".1f", "other_ms"),
    ("round", "ms", 7, ".1f", "round_ms"),
    ("bytes", "", 8, "d", "update_bytes"),
    ("energy", "J", 8, ".3f", "energy_j"),
)


#: Columns only the gateways know: a secure round's row shows a dash there, not a zero. Every
#: latency stage but the coordinator's aggregation, and the per-gateway counts.
_GATEWAY_SIDE = (frozenset(_STAGES) - {"aggregation_ms"}) | {"windows", "update_bytes", "energy_j"}


def round_line(entry: dict[str, Any]) -> str:
    """A closed round from the coordinator's report, as the demo prints it. A secure round's
    coordinator does not learn how many windows its gateways trained on: that is said, not
    printed as 0."""
    p = entry.get("privacy") or {}
    secure = bool(p.get("secure_aggregation"))
    eps = p.get("epsilon")
    spent = "no DP" if eps is None else f"epsilon {eps:.3g} at delta {p.get('delta'):g}"
    windows = "windows not revealed" if secure else f"{entry['samples']} windows"
    return (
        f"round {entry['round']} closed ({entry['reason']}): "
        f"{len(entry['participants'])} gateways, {windows}, model v{entry['version']}; "
        f"{'secure' if secure else 'plain'}, {p.get('dropouts_recovered', 0)} dropouts "
        f"recovered, {spent}"
    )


def _cell(row: RoundRow, attribute: str, width: int, fmt: str) -> str:
    if not row.gateway_side and attribute in _GATEWAY_SIDE:
        return f"{'-':>{width}}"
    return f"{getattr(row, attribute):>{width}{fmt}}"


def table(rows: list[RoundRow], central: float) -> str:
    head = " ".join(f"{h:>{w}}" for h, _, w, _, _ in _COLUMNS)
    unit = " ".join(f"{u:>{w}}" for _, u, w, _, _ in _COLUMNS)
    lines = [head, unit, "-" * len(head)]
    lines += [" ".join(_cell(r, a, w, f) for _, _, w, f, a in _COLUMNS) for r in rows]
    if not all(r.gateway_side for r in rows):
        lines.append(
            "-: a secure round's coordinator learns only the sum, not each gateway's windows, "
            "timings, bytes or energy ('other' is the rest of the round)"
        )
    lines.append(f"centrally trained model on the pooled data: accuracy {central:.3f}")
    return "\n".join(lines)


def plot(rows: list[RoundRow], central: float, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 -- only the demo draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [r.round for r in rows]
    ax1.plot(rounds, [r.accuracy for r in rows], marker="o", label="global model (FedAvg)")
    ax1.axhline(central, color="grey", linestyle="--", label="central model, pooled data")
    ax1.set(xlabel="round", ylabel="accuracy on held-out windows", ylim=(0, 1), title="Accuracy")
    ax1.legend(loc="lower right")
    ax1.set_xticks(rounds)
    ax2.set_xticks(rounds)
    parts = [
        ("redistribution", "redistribution_ms"),
        ("windows", "window_ms"),
        ("training", "training_ms"),
        ("sealing", "sealing_ms"),
        ("transport", "transport_ms"),
        ("opening", "opening_ms"),
        ("aggregation", "aggregation_ms"),
        ("other", "other_ms"),
    ]
    bottom = np.zeros(len(rows))
    for label, attr in parts:
        values = np.array([getattr(r, attr) for r in rows])
        ax2.bar(rounds, values, bottom=bottom, label=label)
        bottom += values
    ax2.set(xlabel="round", ylabel="ms (critical path)", title="Latency split per round")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
