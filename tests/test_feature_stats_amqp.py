"""A statistics round through the real system: rhythm gateway daemons, a private RabbitMQ, the
coordinator and a crypto worker, plain and secure; the pooled mean/std equals that of every
gateway's windows (float32 rounding in plain mode, the stated quantisation in secure mode)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from demo.__main__ import PINNED_ENERGY_POLICY
from gateway.learning import train_options
from gateway.rhythm import FEATURE_CLIP
from gateway.store import RRBeatRow, VitalsStore
from gateway.tasks import TASKS
from gateway.trainer import NumpyTrainer, fit, flatten, load_initial_weights
from pqlink import Registry, load_identity, save_registry
from testbed import Mosquitto
from wire.feature_scaling import (
    STATISTICS_PRECISION_BITS,
    FeatureScaling,
    pooled_of,
    secure_resolution,
)
from wire.fl import RoundSettings
from wire.model import RHYTHM_INITIAL_WEIGHTS, RHYTHM_LAYOUT, RHYTHM_MODEL_PATH
from wire.rr import Rhythm

from .fl_harness import Aggregator
from .harness import DaemonProcess, GatewaySetup, make_gateway, wait_until

LIMIT = 1_000_000  # max_samples_per_device: every stored beat becomes part of a window
CLIP, CAP = 1.0, 60  # the secure rounds' clip, and a weight cap above every ward's windows
SECURE = (
    f"[training]\nclip_norm = {CLIP}\nsecure_aggregation = true\nprecision_bits = 16\n"
    f"[privacy]\nweight_cap = {CAP}\nstage_timeout = 60.0\n"
)


def _beats(device: str, seed: int, mean_rr: float, af_from: int, n: int) -> list[RRBeatRow]:
    """`n` beats, sinus rhythm (small variability) then AF (irregular) from beat `af_from`."""
    rng = np.random.default_rng(seed)
    rr = np.where(
        np.arange(n) < af_from,
        rng.normal(mean_rr, 25.0, n),
        rng.uniform(0.45 * mean_rr, 1.3 * mean_rr, n),
    ).clip(300, 1800)
    rr_ms = np.round(rr).astype(int)
    start = int((time.time() - 3600) * 1000)  # recent: older beats fall to retention
    ts = start + np.cumsum(rr_ms)
    now = int(time.time() * 1000)
    return [
        (
            device,
            int(t),
            int(r),
            i // 32,
            int(Rhythm.NORMAL if i < af_from else Rhythm.AFIB),
            0,
            now,
        )
        for i, (t, r) in enumerate(zip(ts, rr_ms, strict=True))
    ]


def _gateway(root: Path, port: int, gid: str, url: str) -> GatewaySetup:
    setup = make_gateway(
        root,
        port,
        gid,
        extra=(
            f'[uplink]\namqp_url = "{url}"\naggregator_public = "aggregator.pub"\n'
            '[learning]\ntask = "rhythm"\nbackend = "numpy"\nbalanced_sampling = true\n'
            "restricted_softmax = true\nmin_windows = 1\n"
            f"max_samples_per_device = {LIMIT}\n{PINNED_ENERGY_POLICY}"
        ),
    )
    save_registry(Registry(), setup.config.registry)  # no wearable: beats are stored directly
    return setup


def _windows(setup: GatewaySetup) -> tuple[np.ndarray, np.ndarray]:
    with VitalsStore(setup.config.db_path) as store:
        return TASKS["rhythm"].windows(store, LIMIT)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_a_statistics_round_pools_every_gateways_windows_then_training_uses_them(
    tmp_path: Path, mosquitto: Mosquitto, vhost: str, secure: bool
) -> None:
    # wards with different rhythms and rates: pooled statistics differ from each one's
    wards = {
        "gw-01": [_beats("strap-1", 1, 650.0, 600, 900), _beats("strap-2", 2, 900.0, 900, 900)],
        "gw-02": [_beats("strap-3", 3, 1000.0, 200, 700)],
        "gw-03": [_beats("strap-4", 4, 800.0, 500, 500)],
    }
    setups = [_gateway(tmp_path / gid, mosquitto.port, gid, vhost) for gid in wards]
    for setup, devices in zip(setups, wards.values(), strict=True):
        with VitalsStore(setup.config.db_path) as store:
            store.commit_all([], [b for beats in devices for b in beats])
    agg = Aggregator(tmp_path / "agg", vhost, [load_identity(s.config.identity) for s in setups])
    agg.config.write_text(
        agg.config.read_text()
        .replace(
            'state_dir = "state"\n',
            f'state_dir = "state"\ninitial_weights = "{RHYTHM_INITIAL_WEIGHTS}"\n',
        )
        .replace("round_timeout = 120.0\n", "round_timeout = 120.0\nmax_rounds = 1\n")
        + f"[statistics]\nfeatures = {RHYTHM_LAYOUT.features}\nfeature_bound = {FEATURE_CLIP}\n"
        + (SECURE if secure else "")
    )
    for setup in setups:
        (setup.config.state_dir / "aggregator.pub").write_text(
            json.dumps(agg.identity.public.to_json())
        )
        # the registry of gateway identities a gateway checks a secure round's peers against
        shutil.copy(agg.root / "state" / "gateways.json", setup.config.gateway_registry_path)
    daemons = []
    try:
        agg.spawn("worker")
        coordinator = agg.spawn("coordinator")
        daemons = [DaemonProcess(s) for s in setups]
        # max_rounds counts training rounds: the coordinator exits after the statistics round
        # and one training round
        wait_until(lambda: coordinator.poll() is not None, 300, "the coordinator to finish")
        assert coordinator.returncode == 0
        wait_until(
            lambda: all(
                (d.status().get("federation") or {}).get("rounds_trained") == 1 for d in daemons
            ),
            60,
            "every gateway to report its training round",
        )
        # trained on standardised windows without blowing up (a deviation the round could
        # not resolve, divided by, would)
        losses = [d.status()["federation"]["last_update"]["loss_after"] for d in daemons]
        assert all(0.0 < loss < 5.0 for loss in losses), losses
        assert [d.status()["federation"]["statistics_rounds"] for d in daemons] == [1, 1, 1]
    finally:
        for d in daemons:
            d.stop_quietly()
        agg.stop()
    rows = agg.db("SELECT round, participants, samples, reason, report FROM rounds ORDER BY round")
    assert [r[:2] for r in rows[:2]] == [(1, 3), (2, 3)]
    windows = [_windows(s) for s in setups]
    counts = [len(y) for _, y in windows]
    report = json.loads(rows[0][4])
    doc = json.loads((agg.root / "state" / "feature_scaling.json").read_text())
    assert doc["round"] == 1
    scaling = FeatureScaling.from_json(doc["scaling"])
    extra = {"privacy", "resolution_mean_square"}
    assert {k: v for k, v in report["feature_stats"].items() if k not in extra} == {
        "features": RHYTHM_LAYOUT.features,
        **scaling.to_json(),
    }
    want = pooled_of([x for x, _ in windows], FEATURE_CLIP)
    got_sq = np.square(scaling.std) + np.square(scaling.mean)
    want_sq = np.square(want.std) + np.square(want.mean)
    mean_error = np.max(np.abs(np.subtract(scaling.mean, want.mean)))
    square_error = np.max(np.abs(got_sq - want_sq))
    for x, _ in windows:  # not any ward's own statistics (the test can fail)
        own = pooled_of([x], FEATURE_CLIP)
        assert np.max(np.abs(np.subtract(own.mean, want.mean))) > 0.05
    if secure:
        # the coordinator saw the weighted mean and its weight sum (the capped window total),
        # no per-gateway count
        assert max(counts) <= CAP
        assert rows[0][2] == 0
        assert abs(scaling.count - sum(counts)) <= 1
        # the stated resolution of a secure statistics round (24 bits, wire/feature_scaling.py)
        mean_bound, square_bound = secure_resolution(
            RHYTHM_LAYOUT.features,
            FEATURE_CLIP,
            precision_bits=STATISTICS_PRECISION_BITS,
            cap=CAP,
            windows=sum(counts),
            survivors=3,
        )
        assert report["feature_stats"]["resolution_mean_square"] == pytest.approx(
            square_bound, rel=0.05
        )
        assert mean_error < mean_bound
        floor = np.sqrt(report["feature_stats"]["resolution_mean_square"])
        assert min(scaling.std) >= floor  # what the round cannot resolve is not blown up
        resolved = np.array(want.std) > 2 * floor
        assert resolved.sum() >= RHYTHM_LAYOUT.features // 2
        assert np.max(np.abs(got_sq - want_sq)[resolved]) < square_bound
        models = agg.db("SELECT version, round FROM models ORDER BY version")
        assert models == [(0, 1), (1, 3)]  # the statistics round left the model alone
        return
    assert rows[0][2] == sum(counts) == rows[1][2]  # the window counts were the weights
    assert scaling.count == want.count == sum(counts)
    # the plain sum adds float32 moment vectors: equal up to float32 rounding
    assert mean_error < 1e-4
    assert square_error < 1e-3
    # the statistics round left the model alone; round 2 trained on standardised windows
    models = agg.db("SELECT version, round, weights FROM models ORDER BY version")
    # (version, the round it opens): v0 opened rounds 1 and 2, v1 came out of round 2
    assert [m[:2] for m in models] == [(0, 1), (1, 3)]
    initial = load_initial_weights(RHYTHM_MODEL_PATH)
    start = flatten(initial, RHYTHM_LAYOUT)
    options = train_options(RoundSettings(), 2, balanced=True, restricted=True)

    def fedavg(scale: bool) -> np.ndarray:
        total = np.zeros_like(start)
        for x, y in windows:
            inputs = scaling.apply(x) if scale else x
            result = fit(NumpyTrainer(initial), inputs, y, options, initial)
            total += np.float32(len(y)) * (flatten(list(result.weights), RHYTHM_LAYOUT) - start)
        return start + total / np.float32(sum(counts))

    stored = np.frombuffer(models[1][2], np.float32)
    assert np.max(np.abs(stored - fedavg(True))) < 1e-5
    assert np.max(np.abs(stored - fedavg(False))) > 1e-3
