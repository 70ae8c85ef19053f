"""Federated learning over a real RabbitMQ (one node per test session, a vhost per test) and a
real mosquitto: full rounds end to end; a crypto worker SIGKILLed mid-update and the broker
restarted mid-round; a gateway SIGKILLed before its upload was confirmed; forged, replayed,
stale, wrong-shape, NaN-laden and oversized updates rejected without touching the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pika
import pytest

from aggregator.coordinator import initial_weights
from aggregator.privacy import epsilon_after
from demo.__main__ import PINNED_ENERGY_POLICY
from demo.__main__ import main as demo_main
from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.config import load_config
from gateway.spool import Spool
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
from wire.amqp import UPDATES_QUEUE
from wire.fl import GlobalModel, RoundSettings
from wire.model import DEFAULT_INITIAL_WEIGHTS

from .fl_harness import Aggregator, publish_updates, sealed_update
from .harness import DaemonProcess, make_gateway, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)  # two secure rounds of a whole demo on a machine that may be loaded
def test_full_rounds_through_both_brokers(tmp_path: Path, vhost: str) -> None:
    code = demo_main(
        [
            "--rounds",
            "2",
            "--gateways",
            "2",
            "--wearables",
            "4",
            "--workers",
            "2",
            "--warmup-samples",
            "120",
            "--out",
            str(tmp_path),
            "--amqp-url",
            vhost,
            # two gateways: the demo's default noise (sized for three) would drown their sum
            # and the accuracy check below with it; the accounting is the same at any z
            "--noise-multiplier",
            "0.02",
            # the rounds close at quorum: the deadlines only keep a stalled run bounded, and
            # must not close a round early when the machine is busy
            "--round-timeout",
            "240",
            "--stage-timeout",
            "120",
            "--timeout",
            "600",
        ]
    )
    assert code == 0
    (summary_path,) = tmp_path.glob("demo-*/summary.json")
    summary = json.loads(summary_path.read_text())
    # secure aggregation and DP on, as by default, accounted by the coordinator's ledger
    assert [r["participants"] for r in summary["per_round"]] == [2, 2]
    assert all(r["accuracy"] > 0.5 for r in summary["per_round"])
    privacy = [r["privacy"] for r in summary["per_round"]]
    assert [p["secure_aggregation"] for p in privacy] == [True, True]
    assert [p["dropouts_recovered"] for p in privacy] == [0, 0]
    assert [p["delta"] for p in privacy] == [1e-5, 1e-5]
    # every gateway asked each round: Gaussian events composed without sampling
    assert [p["epsilon"] for p in privacy] == [epsilon_after(0.02, 1.0, n, 1e-5) for n in (1, 2)]
    assert summary["privacy"] == {
        "secure_aggregation": True,
        "dropouts_recovered": 0,
        "epsilon": privacy[-1]["epsilon"],
        "delta": 1e-5,
    }
    for status in summary["gateway_status"].values():
        assert status["federation"]["rounds_trained"] == 2
        assert status["federation"]["secure_rounds"] == 2
        assert status["federation"]["updates_published"] == 0  # masked inputs, not updates


def test_plain_rounds_without_dp_when_switched_off(tmp_path: Path, vhost: str) -> None:
    code = demo_main(
        [
            "--rounds",
            "1",
            "--gateways",
            "2",
            "--wearables",
            "4",
            "--workers",
            "1",
            "--warmup-samples",
            "120",
            "--out",
            str(tmp_path),
            "--amqp-url",
            vhost,
            "--no-secure-aggregation",
            "--no-dp",
        ]
    )
    assert code == 0
    (summary_path,) = tmp_path.glob("demo-*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["privacy"] == {
        "secure_aggregation": False,
        "dropouts_recovered": 0,
        "epsilon": None,
        "delta": None,
    }
    for status in summary["gateway_status"].values():
        assert status["federation"]["updates_published"] == 1


# --- the aggregator under failures -----------------------------------------------------------


def _unacked(rabbitmq: RabbitMQ, url: str) -> int:
    vh = url.rsplit("/", 1)[1]
    for line in rabbitmq.ctl(
        "list_queues", "-p", vh, "name", "messages_unacknowledged"
    ).splitlines():
        parts = line.split()
        if parts and parts[0] == UPDATES_QUEUE:
            return int(parts[1])
    return 0


def test_worker_killed_and_broker_restarted_mid_round(
    tmp_path: Path, rabbitmq: RabbitMQ, vhost: str
) -> None:
    gateways = [Identity.generate(f"gw-{i}", Role.GATEWAY) for i in range(1, 4)]
    agg = Aggregator(tmp_path / "agg", vhost, gateways, batch_wait=30.0)
    try:
        agg.spawn("coordinator")
        slow = agg.spawn("worker", "--name", "slow")  # holds its deliveries up to 30 s
        wait_until(
            lambda: bool(agg.db("SELECT round FROM rounds")), 30, "the coordinator to open round 1"
        )
        deltas = {
            gw.name: np.full(agg.parameters, 0.01 * (i + 1), np.float32)
            for i, gw in enumerate(gateways)
        }
        frames = [sealed_update(gw, agg.identity, 1, deltas[gw.name]) for gw in gateways]
        publish_updates(vhost, frames)
        wait_until(
            lambda: _unacked(rabbitmq, vhost) == 3, 30, "the worker to hold all three updates"
        )
        slow.kill()  # mid-update: nothing was acknowledged
        slow.wait()
        rabbitmq.restart()  # and the broker goes down mid-round, too
        agg.spawn("worker", "--name", "fresh", "--batch-wait", "0.01")
        wait_until(lambda: agg.closed_rounds() >= 1, 60, "round 1 to close after the failures")
        rows = agg.db("SELECT gateway, samples FROM contributions WHERE round = 1 ORDER BY gateway")
        assert rows == [("gw-1", 100), ("gw-2", 100), ("gw-3", 100)]  # each counted once
        weights = np.frombuffer(
            agg.db("SELECT weights FROM models WHERE version = 1")[0][0], np.float32
        )
        base = initial_weights(DEFAULT_INITIAL_WEIGHTS)
        assert np.allclose(
            weights - base, 0.02, atol=1e-6
        )  # the mean of .01, .02, .03: no double count

        # Round 2: replays of round 1 are stale; forged, malformed and hostile updates rejected.
        before = agg.db("SELECT count(*) FROM models")[0][0]
        stranger = Identity.generate("gw-1", Role.GATEWAY)  # claims gw-1 with another key
        bad = {
            "stale": frames[0],
            "bad_signature": sealed_update(stranger, agg.identity, 2, deltas["gw-1"]),
            "wrong_shape": sealed_update(
                gateways[0], agg.identity, 2, np.zeros(agg.parameters + 1, np.float32)
            ),
            "non_finite": sealed_update(
                gateways[1], agg.identity, 2, np.full(agg.parameters, np.nan, np.float32)
            ),
            "norm_exceeded": sealed_update(
                gateways[2], agg.identity, 2, np.full(agg.parameters, 1e3, np.float32)
            ),
            "oversized": b"\x04" * (5 * 1024 * 1024),
        }
        publish_updates(vhost, list(bad.values()))
        wait_until(
            lambda: {r[0] for r in agg.db("SELECT reason FROM rejections")} >= set(bad),
            60,
            "every bad update to be rejected with its reason",
        )
        assert agg.db("SELECT count(*) FROM models")[0][0] == before
        assert agg.db("SELECT count(*) FROM contributions WHERE round = 2")[0][0] == 0
        # ...and the next round proceeds with honest updates.
        publish_updates(
            vhost, [sealed_update(gw, agg.identity, 2, deltas[gw.name]) for gw in gateways]
        )
        wait_until(lambda: agg.closed_rounds() >= 2, 60, "round 2 to close")
    finally:
        agg.stop()


def test_gateway_killed_before_upload_confirmed_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, rabbitmq: RabbitMQ, vhost: str
) -> None:
    dead_url = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens: uploads stay in the spool
    setup = make_gateway(
        tmp_path / "gw",
        mosquitto.port,
        extra=(
            f'[uplink]\namqp_url = "{dead_url}"\naggregator_public = "aggregator.pub"\n'
            "reconnect_max_delay = 0.5\n"
            # The energy policy reads the host; pinned so a busy machine cannot defer round 1.
            f"[learning]\n{PINNED_ENERGY_POLICY}"
        ),
    )
    gateway_id = setup.config.gateway_id
    # No wearable is enrolled: the daemon needs a registry all the same (an empty one).
    save_registry(Registry(), setup.config.registry)
    gw_identity = load_identity(setup.config.identity)
    agg = Aggregator(tmp_path / "agg", vhost, [gw_identity])
    (setup.config.state_dir / "aggregator.pub").write_text(
        json.dumps(agg.identity.public.to_json())
    )
    # Vitals already stored, and a signed global model waiting in the spool's inbox.
    start_ms = int((time.time() - 3600) * 1000)  # recent: older rows fall to the retention limit
    with VitalsStore(setup.config.db_path) as store:
        for n, profile in enumerate(make_profiles(4, 5)):
            gen = VitalsGenerator(profile, seed=n, start_ms=start_ms, event_rate_per_hour=30)
            store.commit([vitals_row(f"wearable-{n}", s, 0) for s in gen.samples(300)])
    weights = initial_weights(DEFAULT_INITIAL_WEIGHTS)
    model = GlobalModel(
        weights.astype("<f4").tobytes(),
        int(weights.size),
        1,
        2_000_000_000_000,
        RoundSettings(epochs=1),
    )
    envelope = seal_envelope(
        agg.identity,
        [gw_identity.public],
        model.encode(),
        content_type=ContentType.GLOBAL_MODEL,
        round=1,
    )
    with Spool(setup.config.spool_path) as spool:
        spool.put_global(1, envelope)

    daemon = DaemonProcess(setup)
    try:
        wait_until(
            lambda: (daemon.status().get("federation") or {}).get("rounds_trained") == 1,
            60,
            "the gateway to train round 1",
        )
        daemon.kill()  # SIGKILL with the sealed update not yet confirmed by any broker
        with Spool(setup.config.spool_path) as spool:
            assert [u.round for u in spool.pending_updates()] == [1]
        text = setup.config_path.read_text().replace(dead_url, vhost)
        setup.config_path.write_text(text)
        assert load_config(setup.config_path).uplink.amqp_url == vhost
        daemon = DaemonProcess(setup)
        wait_until(
            lambda: (daemon.status().get("federation") or {}).get("updates_published") == 1,
            60,
            "the spooled update to be published after the restart",
        )
        with Spool(setup.config.spool_path) as spool:
            assert spool.depth() == 0
        # The retrain did not happen twice: round 1 was already done before the kill.
        assert daemon.status()["federation"]["rounds_trained"] == 0
        conn = pika.BlockingConnection(pika.URLParameters(vhost))
        queued = (
            conn.channel()
            .queue_declare(UPDATES_QUEUE, durable=True, passive=True)
            .method.message_count
        )
        conn.close()
        assert queued == 1
        assert gateway_id == "gw-01"
    finally:
        daemon.stop_quietly()
