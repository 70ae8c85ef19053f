"""Privacy against utility: held-out accuracy after the demo's rounds for several noise
multipliers (epsilon at delta = 1e-5 from the ledger's accountant), 10 and 50 gateways.

Each private run is the secure protocol in-process with real crypto and no brokers: the
gateways' own SecureUpdateSession (clip, sample weight, quantise, distributed noise, masks)
against the pqlink server, the coordinator's weighted mean of the unmasked sum. The
non-private run is plain FedAvg (sample-weighted, no clip, no noise) on the same data."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.privacy import epsilon_after
from aggregator.secure_round import SecureRoundReport, plan_round
from aggregator.secure_rounds import mean_update
from bench._timing import RESULTS, write
from demo.report import held_out_windows
from device_emulators.profiles import COHORTS, dominant_mix, make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.features import build_windows
from gateway.secure_update import SecureUpdateSession
from gateway.trainer import NumpyTrainer, TrainOptions, evaluate, fit, flatten, unflatten
from gateway.trainer import load_initial_weights as load_weights
from pqlink import Identity, Registry, Role
from pqlink.secagg import AggregateResult, SecAggServer
from wire.fl import RoundSettings
from wire.model import DEFAULT_MODEL_PATH
from wire.secagg import SecAggFrame, SecAggKind

F32 = npt.NDArray[np.float32]
#: the demo's defaults: rounds, local epochs, learning rate, clip
ROUNDS = 5
EPOCHS = 5
LEARNING_RATE = 0.1
CLIP = 1.0
DELTA = 1e-5
NOISE_MULTIPLIERS = (0.0, 0.1, 0.3, 1.0)
EVENT_RATE = 30.0  # the demo's clinical events per hour, for training and test alike


@dataclass(frozen=True)
class GatewayData:
    name: str
    x: F32
    y: npt.NDArray[np.int32]


def fleet_data(gateways: int, wearables: int, samples: int) -> list[GatewayData]:
    """Non-IID gateways: each dominated by one cohort, as in the demo."""
    out = []
    for g in range(gateways):
        cohort = COHORTS[g % len(COHORTS)]
        xs, ys = [], []
        profiles = make_profiles(wearables, 500 + g, cohort_weights=dominant_mix(cohort, 0.8))
        for i, profile in enumerate(profiles):
            gen = VitalsGenerator(
                profile,
                seed=g * 1000 + i,
                start_ms=1_790_000_000_000,
                event_rate_per_hour=EVENT_RATE,
            )
            x, y = build_windows(gen.samples(samples))
            xs.append(x)
            ys.append(y)
        out.append(
            GatewayData(
                f"gw-{g:03d}",
                np.concatenate(xs).astype(np.float32),
                np.concatenate(ys).astype(np.int32),
            )
        )
    return out


def local_delta(global_w: F32, data: GatewayData, seed: int) -> F32:
    local = NumpyTrainer(unflatten(global_w))
    options = TrainOptions(epochs=EPOCHS, learning_rate=LEARNING_RATE, seed=seed)
    result = fit(local, data.x, data.y, options, unflatten(global_w))
    delta: F32 = (flatten(list(result.weights)) - global_w).astype(np.float32)
    return delta


def secure_mean(
    round_id: int,
    deltas: dict[str, F32],
    samples: dict[str, int],
    identities: dict[str, Identity],
    registry: Registry,
    noise_multiplier: float,
    weight_cap: int,
) -> F32:
    """One secure round in-process: the gateways' sessions against the pqlink server."""
    settings = RoundSettings(
        clip_norm=CLIP, noise_multiplier=noise_multiplier, secure_aggregation=True
    )
    names = sorted(deltas)
    dimension = next(iter(deltas.values())).size
    a = plan_round(
        round_id, names, settings, dimension, dropout_fraction=0.1, weight_cap=weight_cap
    )
    server = SecAggServer(
        a.round_config(), {u: registry.lookup(n).verify_key for n, u in a.participants.items()}
    )
    sessions = {n: SecureUpdateSession(a, identities[n], registry) for n in names}
    for n, s in sessions.items():
        s.set_update(deltas[n].astype(np.float64), samples[n])
        server.receive_advert(a.participants[n], s.start().body)

    def deliver(bundles: dict[int, bytes], kind: SecAggKind) -> None:
        for u, body in bundles.items():
            step = sessions[a.name_of(u)].handle(SecAggFrame(kind, round_id, body))
            if step.rejected:
                raise RuntimeError(f"{a.name_of(u)} refused: {step.rejected}")
            for frame in step.outgoing:
                receive = {
                    SecAggKind.SHARE_KEYS: server.receive_key_shares,
                    SecAggKind.MASKED_INPUT: server.receive_masked_input,
                    SecAggKind.UNMASK_RESPONSE: server.receive_unmask_response,
                }[frame.kind]
                receive(u, frame.body)

    adverts = server.close_adverts()
    assert isinstance(adverts, dict)
    deliver(adverts, SecAggKind.ADVERTS)
    shares = server.close_key_shares()
    assert isinstance(shares, dict)
    deliver(shares, SecAggKind.SHARES)
    request = server.close_inputs()
    assert isinstance(request, bytes)
    deliver(dict.fromkeys(server.survivors, request), SecAggKind.UNMASK_REQUEST)
    result = server.finish()
    assert isinstance(result, AggregateResult), result
    mean = mean_update(SecureRoundReport(a, outcome=result))
    assert mean is not None
    return mean


def run(
    fleet: list[GatewayData],
    test: tuple[F32, npt.NDArray[np.int32]],
    noise_multiplier: float | None,
) -> dict[str, Any]:
    """The demo's rounds; None: the non-private run (plain FedAvg)."""
    global_w = flatten(load_weights(DEFAULT_MODEL_PATH)).astype(np.float32)
    identities = {d.name: Identity.generate(d.name, Role.GATEWAY) for d in fleet}
    registry = Registry()
    for ident in identities.values():
        registry.enroll(ident.public)
    samples = {d.name: len(d.y) for d in fleet}
    cap = max(samples.values())
    accuracy = []
    t0 = time.perf_counter()
    for r in range(1, ROUNDS + 1):
        deltas = {d.name: local_delta(global_w, d, seed=r * 7919 + i) for i, d in enumerate(fleet)}
        if noise_multiplier is None:
            total = sum(samples.values())
            step = sum(np.float32(samples[n]) * deltas[n] for n in deltas) / np.float32(total)
        else:
            step = secure_mean(r, deltas, samples, identities, registry, noise_multiplier, cap)
        global_w = np.add(global_w, step, dtype=np.float32)
        accuracy.append(float(evaluate(NumpyTrainer(unflatten(global_w)), *test)[1]))
    epsilon = None
    if noise_multiplier is not None and noise_multiplier > 0:
        epsilon = epsilon_after(noise_multiplier, 1.0, ROUNDS, DELTA)
    return {
        "noise_multiplier": noise_multiplier,
        "secure_aggregation": noise_multiplier is not None,
        "epsilon": epsilon,
        "accuracy_per_round": accuracy,
        "final_accuracy": accuracy[-1],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def plot(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 -- only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (label, runs), marker in zip(rows.items(), "os", strict=False):
        private = [r for r in runs if r["epsilon"] is not None]
        plain = next(r for r in runs if not r["secure_aggregation"])
        line = ax.plot(
            [r["epsilon"] for r in private],
            [r["final_accuracy"] for r in private],
            marker=marker,
            label=f"{label}: secure + DP",
        )[0]
        ax.axhline(plain["final_accuracy"], ls="--", color=line.get_color(), lw=1)
    ax.set_xscale("log")
    ticks = sorted({r["epsilon"] for runs in rows.values() for r in runs if r["epsilon"]})
    ax.set_xticks(ticks, [f"{e:.3g}" for e in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"epsilon after {ROUNDS} rounds (delta = {DELTA:g})")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Privacy against utility (dashed: non-private FedAvg)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gateways", type=int, nargs="+", default=[10, 50])
    p.add_argument("--wearables", type=int, default=2, help="per gateway")
    p.add_argument("--samples", type=int, default=600, help="per wearable")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting (fresh noise)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    test = held_out_windows(seed=999, event_rate=EVENT_RATE)
    rows: dict[str, list[dict[str, Any]]] = {}
    for n in args.gateways:
        fleet = fleet_data(n, args.wearables, args.samples)
        label = f"{n} gateways"
        rows[label] = []
        for z in (None, *NOISE_MULTIPLIERS):
            runs = [run(fleet, test, z) for _ in range(args.repeats)]
            finals = [r["final_accuracy"] for r in runs]
            rows[label].append(
                {
                    **{
                        k: runs[0][k] for k in ("noise_multiplier", "secure_aggregation", "epsilon")
                    },
                    "final_accuracy": float(np.mean(finals)),
                    "final_accuracy_runs": finals,
                    "accuracy_per_round_runs": [r["accuracy_per_round"] for r in runs],
                    "seconds": sum(r["seconds"] for r in runs),
                }
            )
            print(f"  {label}, z = {z}: accuracy {finals}, eps {runs[0]['epsilon']}", flush=True)
    png = RESULTS / "privacy.png" if args.out is None else Path(args.out).with_suffix(".png")
    plot(rows, png)
    doc = {
        "setup": (
            "secure protocol in-process with real crypto, no brokers (the gateways' "
            "SecureUpdateSession against pqlink's server, the coordinator's weighted mean); "
            f"the demo's rounds ({ROUNDS}), local epochs ({EPOCHS}), learning rate, clip "
            f"({CLIP}); sample weights capped at the largest gateway's count; non-IID "
            "gateways from the emulator; accuracy on held-out patients; epsilon from the "
            "ledger's RDP accountant (dp-accounting) with every gateway sampled each round"
        ),
        "delta": DELTA,
        "rounds": ROUNDS,
        "wearables_per_gateway": args.wearables,
        "samples_per_wearable": args.samples,
        "held_out_windows": len(test[1]),
        "majority_class_accuracy": float(max(np.mean(test[1] == c) for c in np.unique(test[1]))),
        "repeats": args.repeats,
        "runs": rows,
        "plot": png.name,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write("privacy", doc, args.out)
    print(
        json.dumps(
            {
                k: [(r["noise_multiplier"], r["epsilon"], r["final_accuracy"]) for r in v]
                for k, v in rows.items()
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
