"""Rhythm learning on real patients (MIT-BIH, WFDB reference annotations) through the real
system, against central training, local-only training and a clinical AF rule, on held-out patients.

Each split: the training records are grouped into wards (one gateway each, non-IID: records
sorted by their share of arrhythmic beats, then cut into contiguous groups, so that AF and
ventricular patients concentrate in some wards as they do in a hospital); every record is
replayed as a wearable (`iomt-emulate replay`) through a private mosquitto into its ward's
gateway daemon, which stores the RR beats and windows them; the coordinator and two crypto
workers run the federated rounds over a private RabbitMQ. Then, on the same windows (read
back from the gateways' stores), one model is trained on the pooled windows (`central`), one
per gateway on its own (`local_only`, averaged over gateways), and all are scored with the
Dash et al. (2009) AF rule (`rule`) on the windows of the held-out records, which no gateway
saw. Without --test: patient-wise K-fold cross-validation over --train (every record is held
out once; predictions are pooled over folds). With --test: train on all of --train, score on
--test.

    python -m bench.bench_mitdb --train ../shared/datasets/mitdb-ds1 --gateways 3 \\
        --choices bench/results/mitdb_sim_nested.json --json bench/results/mitdb.json

--choices takes each fold's aggregator settings (server momentum, learning-rate decay, and
whether a statistics round pools the feature mean/std first: --federated-scaling) from a
nested selection made on that fold's training records only by `bench.mitdb_sim --nested`.
With the statistics round, every method sees the features standardised with the pooled
statistics the coordinator published (the federated model as its gateways trained it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench._timing import write
from bench.bench_rounds import Procs, _rounds, _vhost, _wait
from demo.report import _models
from device_emulators.replay import list_records, read_beats
from gateway.af_rule import dash_af
from gateway.rhythm import (
    CLASS_NAMES,
    FEATURE_CLIP,
    RR_STRIDE,
    RR_WINDOW,
    RhythmClass,
    RhythmWindows,
    rhythm_windows,
)
from gateway.store import BeatRow, VitalsStore
from gateway.tasks import TASKS
from gateway.trainer import (
    NumpyTrainer,
    TrainOptions,
    fit,
    load_initial_weights,
    unflatten,
)
from testbed.mosquitto import Mosquitto
from testbed.rabbitmq import RabbitMQ
from wire.feature_scaling import FeatureScaling
from wire.model import RHYTHM_INITIAL_WEIGHTS, RHYTHM_LAYOUT, RHYTHM_MODEL_PATH

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
PLOT_DEFAULT = Path(__file__).resolve().parent / "results" / "mitdb.png"


@dataclass(frozen=True)
class Settings:
    gateways: int
    rounds: int
    epochs: int
    learning_rate: float
    batch_size: int
    speed: float
    seed: int
    restricted: bool = True
    # the aggregator's rule (aggregator/momentum.py): FedAvg at momentum 0, server rate 1, ratio 1
    server_momentum: float = 0.0
    server_learning_rate: float = 1.0
    lr_final_ratio: float = 1.0
    # a statistics round before the first training round pools the feature mean/std
    federated_scaling: bool = False


def _quiet(fn: Any, *args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        if fn(list(args)) != 0:
            raise RuntimeError(f"{args[0]} failed")


def record_rows(directory: Path, record: str) -> list[BeatRow]:
    """A record's reportable beats as the gateway stores them (ts_ms, rr_ms, rhythm, class)."""
    return [
        (round(b.time_ms), b.rr_ms, int(b.rhythm), int(b.beat_class))
        for b in read_beats(directory, record)
    ]


def record_windows(directory: Path, records: Sequence[str], stride: int) -> RhythmWindows:
    return RhythmWindows.concat(
        [rhythm_windows(record_rows(directory, r), RR_WINDOW, stride) for r in records]
    )


def wards(directory: Path, records: Sequence[str], gateways: int) -> list[list[str]]:
    """Records grouped into `gateways` wards of near-equal size, by arrhythmia share."""
    share = {}
    for r in records:
        w = rhythm_windows(record_rows(directory, r))
        share[r] = float(np.mean(w.labels != RhythmClass.NORMAL)) if len(w) else 0.0
    ordered = sorted(records, key=lambda r: (share[r], r))
    return [[str(r) for r in part] for part in np.array_split(np.array(ordered), gateways)]


def folds(directory: Path, records: Sequence[str], k: int) -> list[list[str]]:
    """Patient-wise folds, each record in exactly one test fold, stratified: records ordered by
    their share of AF windows, then of other arrhythmia, are dealt round-robin, so that the
    few AF patients fall in different folds and every training part has some AF to learn."""
    shares = {}
    for r in records:
        w = rhythm_windows(record_rows(directory, r))
        counts = np.bincount(w.labels, minlength=3) / max(len(w), 1)
        shares[r] = (-counts[RhythmClass.AF], -counts[RhythmClass.OTHER], r)
    ordered = sorted(records, key=lambda r: shares[r])
    return [sorted(ordered[i::k]) for i in range(k)]


# --- scores -------------------------------------------------------------------------------------


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def class_scores(y_true: I32, y_pred: I32) -> dict[str, Any]:
    """Per-class sensitivity, PPV and F1, macro-F1, and AF sensitivity and specificity."""
    per_class: dict[str, Any] = {}
    f1s = []
    for c, name in enumerate(CLASS_NAMES):
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        sens, ppv = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        f1s.append(f1)
        per_class[name] = {"sensitivity": sens, "ppv": ppv, "f1": f1, "support": tp + fn}
    return {
        "per_class": per_class,
        "macro_f1": float(np.mean(f1s)),
        **af_scores(y_true, y_pred == RhythmClass.AF),
    }


def af_scores(y_true: I32, af_pred: npt.NDArray[np.bool_]) -> dict[str, Any]:
    af = y_true == RhythmClass.AF
    tp, fn = int(np.sum(af_pred & af)), int(np.sum(~af_pred & af))
    fp, tn = int(np.sum(af_pred & ~af)), int(np.sum(~af_pred & ~af))
    return {"af_sensitivity": _ratio(tp, tp + fn), "af_specificity": _ratio(tn, tn + fp)}


def rule_scores(y_true: I32, af_pred: npt.NDArray[np.bool_]) -> dict[str, Any]:
    tp = int(np.sum(af_pred & (y_true == RhythmClass.AF)))
    fp = int(np.sum(af_pred & (y_true != RhythmClass.AF)))
    fn = int(np.sum(~af_pred & (y_true == RhythmClass.AF)))
    return {
        "per_class": {
            "af": {
                "sensitivity": _ratio(tp, tp + fn),
                "ppv": _ratio(tp, tp + fp),
                "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                "support": tp + fn,
            }
        },
        "macro_f1": None,  # the rule detects AF only
        **af_scores(y_true, af_pred),
    }


# --- one split through the real system ------------------------------------------------------------


def _train(x: F32, y: I32, s: Settings, seed: int) -> NumpyTrainer:
    trainer = NumpyTrainer(load_initial_weights(RHYTHM_MODEL_PATH))
    fit(
        trainer,
        x,
        y,
        TrainOptions(
            epochs=s.rounds * s.epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            seed=seed,
            balanced=True,
        ),
    )
    return trainer


def _predict(trainer: NumpyTrainer, x: F32) -> I32:
    return np.asarray(trainer.predict_logits(x).argmax(axis=1), dtype=np.int32)


def _af_probability(trainer: NumpyTrainer, x: F32) -> npt.NDArray[np.float64]:
    logits = trainer.predict_logits(x).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    af: npt.NDArray[np.float64] = p[:, RhythmClass.AF] / p.sum(axis=1)
    return af


def af_at_specificity(
    y_true: I32, af_score: npt.NDArray[np.float64], specificity: float
) -> dict[str, Any]:
    """The model's AF sensitivity at the most sensitive threshold on its AF probability whose
    specificity is at least `specificity`: a point read off its ROC curve to compare with a
    detector at equal specificity (chosen on the scored windows, so not a deployable setting)."""
    af = y_true == RhythmClass.AF
    best: dict[str, Any] = {"threshold": None, "af_sensitivity": 0.0, "af_specificity": 1.0}
    for threshold in np.unique(af_score):
        flagged = af_score >= threshold
        spec = float(np.mean(~flagged[~af])) if (~af).any() else 1.0
        sens = float(np.mean(flagged[af])) if af.any() else 0.0
        if spec >= specificity and sens > best["af_sensitivity"]:
            best = {"threshold": float(threshold), "af_sensitivity": sens, "af_specificity": spec}
    return best


def _gateway_conf(root: Path, gid: str, mqtt_port: int, url: str, *, restricted: bool) -> Path:
    conf = root / "gateway.toml"
    conf.write_text(
        f'[gateway]\nid = "{gid}"\nstate_dir = "state"\n[mqtt]\nport = {mqtt_port}\n'
        f'[uplink]\namqp_url = "{url}"\n[log]\njournal = "no"\nlevel = "warning"\n'
        "[sessions]\ndevice_records_per_second = 1000.0\ndevice_burst = 4000\n"
        # the gateways share this machine's cores: each would take the others' training for
        # its own load and defer (the energy policy is tested in tests/test_energy.py)
        '[learning]\ntask = "rhythm"\nbalanced_sampling = true\n'
        f"restricted_softmax = {str(restricted).lower()}\n"
        "max_cpu_load = 1.0\n"
        "max_samples_per_device = 1000000\nmin_windows = 1\n"
    )
    return conf


def run_split(
    work: Path,
    mq: Mosquitto,
    rabbit: RabbitMQ,
    train_dir: Path,
    groups: list[list[str]],
    s: Settings,
    split: int,
) -> tuple[F32, list[tuple[F32, I32]], dict[str, Any], FeatureScaling | None]:
    """Federated rounds over the wards; returns the global model's flat weights, each ward's
    stored windows, the split's facts and the pooled feature scaling (if the run pooled one)."""
    from aggregator.cli import main as aggregator_main  # noqa: PLC0415
    from device_emulators.cli import main as emulate_main  # noqa: PLC0415
    from gateway.cli import main as gateway_main  # noqa: PLC0415

    root = work / f"split-{split}"
    url = _vhost(rabbit, f"mitdb-{split}")
    procs = Procs(root / "logs")
    agg = root / "aggregator"
    agg.mkdir(parents=True)
    agg_conf = agg / "aggregator.toml"
    agg_conf.write_text(
        f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n'
        f'initial_weights = "{RHYTHM_INITIAL_WEIGHTS}"\n[amqp]\nurl = "{url}"\n'
        f"[rounds]\nquorum_fraction = 1.0\nround_timeout = 120.0\nmax_rounds = {s.rounds}\n"
        f"[training]\nepochs = {s.epochs}\nbatch_size = {s.batch_size}\n"
        f"learning_rate = {s.learning_rate}\n[metrics]\nport = 0\n"
        f'[strategy]\nname = "fedavgm"\nserver_momentum = {s.server_momentum}\n'
        f"server_learning_rate = {s.server_learning_rate}\n"
        f"lr_final_ratio = {s.lr_final_ratio}\n"
        f"[statistics]\nfeatures = {RHYTHM_LAYOUT.features if s.federated_scaling else 0}\n"
        f"feature_bound = {FEATURE_CLIP}\n"
    )
    _quiet(aggregator_main, "keygen", "--config", str(agg_conf))
    gw_roots: list[Path] = []
    for g, records in enumerate(groups):
        gid = f"ward-{g + 1:02d}"
        gw = root / gid
        (gw / "state").mkdir(parents=True)
        conf = _gateway_conf(gw, gid, mq.port, url, restricted=s.restricted)
        _quiet(gateway_main, "keygen", "--config", str(conf))
        (gw / "state" / "aggregator.pub").write_bytes((agg / "state/identity.pub").read_bytes())
        _quiet(
            emulate_main,
            *("enroll", "--registry", str(gw / "state/registry.json")),
            *("--keys-dir", str(gw / "wearables"), "--wfdb", str(train_dir)),
            *("--records", ",".join(records), "--prefix", "patient"),
        )
        _quiet(aggregator_main, "enroll", "--config", str(agg_conf), str(gw / "state/identity.pub"))
        gw_roots.append(gw)
    t0 = time.monotonic()
    try:
        for gw in gw_roots:
            procs.spawn(gw.name, "gateway.cli", "run", "--config", str(gw / "gateway.toml"))
        daemons = list(procs.items)
        for gw in gw_roots:
            _wait(
                lambda gw=gw: _alive(daemons, root) and _status(gw).get("connected") is True,
                60,
                f"{gw.name} mqtt",
            )
        replays = []
        for gw, records in zip(gw_roots, groups, strict=True):
            replays.append(
                procs.spawn(
                    f"replay-{gw.name}",
                    *("device_emulators.cli", "replay", "--wfdb", str(train_dir)),
                    *("--records", ",".join(records), "--speed", str(s.speed)),
                    *("--keys-dir", str(gw / "wearables"), "--port", str(mq.port)),
                    *("--gateway-pub", str(gw / "state/identity.pub"), "--prefix", "patient"),
                    *("--summary", str(gw / "replay.json"), "--quiet"),
                )
            )
        for p in replays:
            if p.wait(1800 / s.speed + 300) != 0:
                raise RuntimeError(f"a replay failed; see {root / 'logs'}")
        beats = {}
        for gw in gw_roots:
            sent = sum(json.loads((gw / "replay.json").read_text())["beats"].values())
            beats[gw.name] = sent
            _wait(
                lambda gw=gw, sent=sent: (
                    _alive(daemons, root) and _status(gw).get("rr_beats_stored", 0) >= sent
                ),
                120,
                f"{gw.name} to store {sent} beats",
            )
        replay_seconds = time.monotonic() - t0
        t1 = time.monotonic()
        for w in range(2):
            procs.spawn(f"worker-{w}", "aggregator.cli", "worker", "--config", str(agg_conf))
        coordinator = procs.spawn(
            "coordinator", "aggregator.cli", "coordinator", "--config", str(agg_conf)
        )
        if coordinator.wait(60 * s.rounds + 300) != 0:
            raise RuntimeError(f"the coordinator failed; see {root / 'logs'}")
        rounds_seconds = time.monotonic() - t1
    finally:
        procs.stop()
    models = _models(agg / "state")
    closed = _rounds(agg_conf)
    statistics_rounds = int(s.federated_scaling)
    if not models or len(closed) < s.rounds + statistics_rounds:
        raise RuntimeError(f"{len(closed)} of {s.rounds} rounds closed; see {root / 'logs'}")
    weights = models[max(models)]
    scaling = _scaling(agg / "state") if s.federated_scaling else None
    task = TASKS["rhythm"]
    ward_windows = []
    for gw in gw_roots:
        store = VitalsStore(gw / "state" / "vitals.sqlite3")
        try:
            ward_windows.append(task.windows(store, 1_000_000))
        finally:
            store.close()
    facts = {
        "wards": {gw.name: records for gw, records in zip(gw_roots, groups, strict=True)},
        "beats_stored": beats,
        "ward_windows": {
            gw.name: np.bincount(y, minlength=3).tolist()
            for gw, (_, y) in zip(gw_roots, ward_windows, strict=True)
        },
        "rounds_closed": len(closed),
        "statistics_rounds": statistics_rounds,
        "feature_scaling": None if scaling is None else scaling.to_json(),
        "replay_seconds": round(replay_seconds, 1),
        "rounds_seconds": round(rounds_seconds, 1),
    }
    return weights, ward_windows, facts, scaling


def _scaling(state: Path) -> FeatureScaling:
    """The pooled mean/std the coordinator published with its global models."""
    doc = json.loads((state / "feature_scaling.json").read_text())
    return FeatureScaling.from_json(doc["scaling"])


def _alive(daemons: list[Any], root: Path) -> bool:
    """True, or an error naming the logs if a gateway daemon has exited."""
    if any(p.poll() is not None for p in daemons):
        raise RuntimeError(f"a gateway daemon exited; see {root / 'logs'}")
    return True


def _status(gw: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((gw / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc


# --- the benchmark ------------------------------------------------------------------------------


def evaluate_split(
    weights: F32,
    ward_windows: list[tuple[F32, I32]],
    test: RhythmWindows,
    s: Settings,
    scaling: FeatureScaling | None = None,
) -> dict[str, Any]:
    """Predictions of every method on the held-out windows. With a pooled feature scaling,
    every model sees features standardised with it (as bench.mitdb_sim does): the federated
    one as its gateways do, central and local-only trained the same way."""
    federated = NumpyTrainer(unflatten(weights, RHYTHM_LAYOUT))
    if scaling is not None:
        ward_windows = [(scaling.apply(x), y) for x, y in ward_windows]
    test_x = test.features if scaling is None else scaling.apply(test.features)
    pooled_x = np.concatenate([x for x, _ in ward_windows])
    pooled_y = np.concatenate([y for _, y in ward_windows])
    central = _train(pooled_x, pooled_y, s, s.seed)
    local = [_train(x, y, s, s.seed + 1 + g) for g, (x, y) in enumerate(ward_windows)]
    return {
        "federated": _predict(federated, test_x),
        "federated_af": _af_probability(federated, test_x),
        "central": _predict(central, test_x),
        "central_af": _af_probability(central, test_x),
        "local_only": [_predict(m, test_x) for m in local],
        "rule": dash_af(test.rr_ms),
    }


def _mean_scores(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The average of several score dicts, key by key (None where any is None)."""
    first = items[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = _mean_scores([i[key] for i in items])
        elif value is None or any(i[key] is None for i in items):
            out[key] = None
        else:
            out[key] = float(np.mean([i[key] for i in items]))
    return out


def score(y: I32, predictions: list[dict[str, Any]], gateways: int) -> dict[str, Any]:
    fed = np.concatenate([p["federated"] for p in predictions])
    cen = np.concatenate([p["central"] for p in predictions])
    rule = np.concatenate([p["rule"] for p in predictions])
    local = [
        class_scores(y, np.concatenate([p["local_only"][g] for p in predictions]))
        for g in range(gateways)
    ]
    rule_scores_ = rule_scores(y, rule)
    rule_spec = rule_scores_["af_specificity"] or 0.0
    matched = {
        name: af_at_specificity(
            y, np.concatenate([p[f"{name}_af"] for p in predictions]), rule_spec
        )
        for name in ("federated", "central")
    }
    return {
        "federated": {**class_scores(y, fed), "af_at_rule_specificity": matched["federated"]},
        "central": {**class_scores(y, cen), "af_at_rule_specificity": matched["central"]},
        "local_only": {
            **_mean_scores(local),
            "per_gateway_macro_f1": [m["macro_f1"] for m in local],
        },
        "rule": rule_scores_,
    }


def budgets(methods: dict[str, Any]) -> list[dict[str, Any]]:
    fed, cen, loc, rule = (methods[k] for k in ("federated", "central", "local_only", "rule"))
    # at the decision rule (argmax) the model trades sensitivity for specificity differently
    # from the rule; compare at the rule's specificity, read off the model's ROC curve
    matched = fed["af_at_rule_specificity"]
    fed_sens, rule_sens = matched["af_sensitivity"], rule["af_sensitivity"] or 0.0
    fed_spec, rule_spec = matched["af_specificity"], rule["af_specificity"] or 0.0
    return [
        {
            "name": "federated_macro_f1_vs_central",
            "value": fed["macro_f1"] / cen["macro_f1"] if cen["macro_f1"] else None,
            "limit": 0.95,
            "ok": fed["macro_f1"] >= 0.95 * cen["macro_f1"],
        },
        {
            "name": "federated_macro_f1_above_local_only",
            "value": fed["macro_f1"] - loc["macro_f1"],
            "limit": 0.0,
            "ok": fed["macro_f1"] > loc["macro_f1"],
        },
        {
            "name": "federated_af_sensitivity_vs_rule_at_equal_or_better_specificity",
            "value": {"federated": [fed_sens, fed_spec], "rule": [rule_sens, rule_spec]},
            "how": "[sensitivity, specificity]; federated at the threshold on its AF "
            "probability with the highest sensitivity whose specificity is >= the rule's",
            "ok": fed_sens >= rule_sens and fed_spec >= rule_spec,
        },
    ]


def plot(methods: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 -- the plot is optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = ["federated", "central", "local_only", "rule"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(CLASS_NAMES))
    for i, name in enumerate(names[:3]):
        f1 = [methods[name]["per_class"][c]["f1"] for c in CLASS_NAMES]
        axes[0].bar(
            x + (i - 1) * 0.27, f1, 0.27, label=f"{name} (macro {methods[name]['macro_f1']:.2f})"
        )
    axes[0].set_xticks(x, [c.upper() if c == "af" else c for c in CLASS_NAMES])
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("F1 on held-out patients")
    axes[0].legend(fontsize=8, loc="lower left")
    for name in ("federated", "central"):
        roc = methods[name]["af_at_rule_specificity"]
        axes[1].scatter(
            1 - roc["af_specificity"],
            roc["af_sensitivity"],
            marker="x",
            s=60,
            label=f"{name} at the rule's specificity",
        )
    for name, marker in zip(names, "osD^", strict=True):
        m = methods[name]
        axes[1].scatter(
            1 - (m["af_specificity"] or 0),
            m["af_sensitivity"] or 0,
            marker=marker,
            s=60,
            label=name,
        )
    axes[1].set_xlabel("1 - AF specificity")
    axes[1].set_ylabel("AF sensitivity")
    axes[1].set_xlim(0, max(0.3, *[1 - (methods[n]["af_specificity"] or 0) for n in names]) + 0.02)
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("MIT-BIH DS1, patient-wise: rhythm windows of 64 RR intervals")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_CHOSEN_FIELDS = {
    "server_momentum": "server_momentum",
    "server_lr": "server_learning_rate",
    "lr_final_ratio": "lr_final_ratio",
    "epochs": "epochs",
    "rounds": "rounds",
    "learning_rate": "learning_rate",
    "federated_scaling": "federated_scaling",
}


def _load_choices(path: Path | None) -> dict[tuple[str, ...], dict[str, Any]]:
    """Held-out records -> the settings nested selection chose on that fold's training part."""
    if path is None:
        return {}
    doc = json.loads(path.read_text())
    return {tuple(sorted(c["held_out"])): c["config"] for c in doc["chosen"]}


def chosen_settings(
    s: Settings, choices: dict[tuple[str, ...], dict[str, Any]], held_out: Sequence[str]
) -> Settings:
    """`s` with the fold's chosen settings, if nested selection chose any for this fold."""
    config = choices.get(tuple(sorted(held_out)))
    if config is None:
        if choices:
            raise ValueError(f"no nested choice for the fold holding out {list(held_out)}")
        return s
    return replace(
        s,
        **{ours: config[theirs] for theirs, ours in _CHOSEN_FIELDS.items() if theirs in config},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="WFDB directory (NNN.atr)")
    parser.add_argument("--test", type=Path, help="held-out WFDB directory (default: K-fold CV)")
    parser.add_argument("--gateways", type=int, default=3, help="wards, one gateway each")
    parser.add_argument("--folds", type=int, default=5, help="patient-wise folds without --test")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--speed", type=float, default=400.0, help="replay speed-up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server-momentum", type=float, default=0.0, help="FedAvgM's (0: FedAvg)")
    parser.add_argument("--server-learning-rate", type=float, default=1.0)
    parser.add_argument(
        "--lr-final-ratio",
        type=float,
        default=1.0,
        help="the gateways' learning rate decays to this share of it by the last round",
    )
    parser.add_argument(
        "--federated-scaling",
        action="store_true",
        help="a statistics round pools the feature mean/std before the first training round",
    )
    parser.add_argument(
        "--choices",
        type=Path,
        help="per held-out fold settings chosen by nested selection (bench.mitdb_sim --nested)",
    )
    parser.add_argument(
        "--plain-fedavg",
        action="store_true",
        help="gateways train without the restricted softmax (shows what label skew does)",
    )
    parser.add_argument(
        "--json", dest="json_path", help="output (default bench/results/mitdb.json)"
    )
    parser.add_argument("--plot", type=Path, default=PLOT_DEFAULT)
    args = parser.parse_args(argv)
    s = Settings(
        args.gateways,
        args.rounds,
        args.epochs,
        args.learning_rate,
        args.batch_size,
        args.speed,
        args.seed,
        restricted=not args.plain_fedavg,
        server_momentum=args.server_momentum,
        server_learning_rate=args.server_learning_rate,
        lr_final_ratio=args.lr_final_ratio,
        federated_scaling=args.federated_scaling,
    )
    choices = _load_choices(args.choices)
    t0 = time.monotonic()
    train_records = list_records(args.train)
    if args.test is not None:
        splits = [(train_records, args.test, list_records(args.test))]
        protocol = "train on --train, test on --test"
    else:
        splits = [
            ([r for r in train_records if r not in held], args.train, held)
            for held in folds(args.train, train_records, args.folds)
        ]
        protocol = f"patient-wise {args.folds}-fold cross-validation over --train"
    predictions, labels, split_facts = [], [], []
    with tempfile.TemporaryDirectory(prefix="iomt-mitdb-") as d:
        work = Path(d)
        with Mosquitto(work / "mosquitto") as mq, RabbitMQ(work / "rabbitmq") as rabbit:
            for n, (train, test_dir, test) in enumerate(splits):
                groups = wards(args.train, train, args.gateways)
                print(f"split {n + 1}/{len(splits)}: wards {groups}, held out {test}", flush=True)
                split_s = chosen_settings(s, choices, test)
                weights, ward_windows, facts, scaling = run_split(
                    work, mq, rabbit, args.train, groups, split_s, n
                )
                facts["strategy"] = {
                    "server_momentum": split_s.server_momentum,
                    "server_learning_rate": split_s.server_learning_rate,
                    "lr_final_ratio": split_s.lr_final_ratio,
                    "federated_scaling": split_s.federated_scaling,
                }
                test_windows = record_windows(test_dir, test, RR_STRIDE)
                predictions.append(
                    evaluate_split(weights, ward_windows, test_windows, split_s, scaling)
                )
                labels.append(test_windows.labels)
                split_facts.append({"test": test, **facts})
                print(f"  {json.dumps(facts['ward_windows'])} windows/class per ward", flush=True)
    y = np.concatenate(labels)
    methods = score(y, predictions, args.gateways)
    checks = budgets(methods)
    for name in ("federated", "central", "local_only", "rule"):
        m = methods[name]
        mf1 = "  -  " if m["macro_f1"] is None else f"{m['macro_f1']:.3f}"
        print(
            f"{name:<11} macro-F1 {mf1}  AF sens {m['af_sensitivity'] or 0:.3f} "
            f"spec {m['af_specificity'] or 0:.3f}"
        )
    plot(methods, args.plot)
    write(
        "mitdb",
        {
            "data": str(args.train),
            "protocol": protocol,
            "window": {"beats": RR_WINDOW, "stride": RR_STRIDE},
            "settings": vars(args)
            | {
                "train": str(args.train),
                "test": str(args.test),
                "plot": str(args.plot),
                "choices": str(args.choices),
            },
            "test_windows_per_class": dict(
                zip(CLASS_NAMES, np.bincount(y, minlength=3).tolist(), strict=True)
            ),
            "splits": split_facts,
            "methods": methods,
            "budgets": checks,
            "elapsed_seconds": round(time.monotonic() - t0, 1),
        },
        args.json_path,
    )
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
