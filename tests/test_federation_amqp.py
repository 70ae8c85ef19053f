"""Federated learning over a real RabbitMQ (one node per test session, a vhost per test) and a
real mosquitto: full rounds end to end; a crypto worker SIGKILLed mid-update and the broker
restarted mid-round; a gateway SIGKILLed before its upload was confirmed; forged, replayed,
stale, wrong-shape, NaN-laden and oversized updates rejected without touching the model."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pika
import pytest

from aggregator.cli import main as aggregator_main
from aggregator.coordinator import initial_weights
from demo.__main__ import main as demo_main
from demo.rabbitmq import RabbitMQ
from demo.services import Mosquitto
from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.config import load_config
from gateway.spool import Spool
from gateway.store import VitalsStore, vitals_row
from pqlink import ContentType, Identity, Role, load_identity, seal_envelope
from pqlink.fl import UPDATES_QUEUE, GlobalModel, ModelUpdate

from .harness import DaemonProcess, make_gateway, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def vhost(rabbitmq: RabbitMQ) -> Iterator[str]:
    """A fresh virtual host: each test gets its own queues on the session's node."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    rabbitmq.ctl("add_vhost", name)
    rabbitmq.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:{rabbitmq.amqp_port}/{name}"
    rabbitmq.ctl("delete_vhost", name)


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
        ]
    )
    assert code == 0
    (summary_path,) = tmp_path.glob("demo-*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert [r["participants"] for r in summary["per_round"]] == [2, 2]
    assert all(r["accuracy"] > 0.5 for r in summary["per_round"])
    for status in summary["gateway_status"].values():
        assert status["federation"]["rounds_trained"] == 2
        assert status["federation"]["updates_published"] == 2


# --- the aggregator under failures -----------------------------------------------------------


class Aggregator:
    def __init__(
        self, root: Path, url: str, gateways: list[Identity], *, batch_wait: float = 0.01
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.config = root / "aggregator.toml"
        self.config.write_text(
            f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n[amqp]\nurl = "{url}"\n'
            f"[rounds]\nquorum_fraction = 1.0\nround_timeout = 120.0\n"
            f"[worker]\nbatch_wait = {batch_wait}\nbatch_max = 64\n[metrics]\nport = 0\n"
        )
        assert aggregator_main(["keygen", "--config", str(self.config)]) == 0
        self.identity = load_identity(root / "state" / "identity.key")
        pubs = []
        for gw in gateways:
            pub = root / f"{gw.name}.pub"
            pub.write_text(json.dumps(gw.public.to_json()))
            pubs.append(str(pub))
        assert aggregator_main(["enroll", "--config", str(self.config), *pubs]) == 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.parameters = int(initial_weights(ROOT / "gateway/assets/vitals_mlp_init.npz").size)

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        with (self.root / f"{args[0]}-{len(self.procs)}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator.cli", *args, "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
        self.procs.append(proc)
        return proc

    def db(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        path = self.root / "state" / "coordinator.sqlite3"
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def closed_rounds(self) -> int:
        return len(self.db("SELECT round FROM rounds WHERE closed IS NOT NULL"))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _update(
    gw: Identity, agg: Identity, round_: int, delta: np.ndarray, samples: int = 100
) -> bytes:
    payload = ModelUpdate(
        delta.astype("<f4").tobytes(), int(delta.size), {"train_seconds": 0.0}
    ).encode()
    return seal_envelope(
        gw,
        [agg.public],
        payload,
        content_type=ContentType.MODEL_UPDATE,
        round=round_,
        sample_count=samples,
    )


def _publish(url: str, frames: list[bytes]) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(UPDATES_QUEUE, durable=True)
    for f in frames:
        ch.basic_publish("", UPDATES_QUEUE, f, pika.BasicProperties(delivery_mode=2))
    conn.close()


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
            lambda: agg.db("SELECT round FROM rounds"), 30, "the coordinator to open round 1"
        )
        deltas = {
            gw.name: np.full(agg.parameters, 0.01 * (i + 1), np.float32)
            for i, gw in enumerate(gateways)
        }
        frames = [_update(gw, agg.identity, 1, deltas[gw.name]) for gw in gateways]
        _publish(vhost, frames)
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
        )  # type: ignore[arg-type]
        base = initial_weights(ROOT / "gateway/assets/vitals_mlp_init.npz")
        assert np.allclose(
            weights - base, 0.02, atol=1e-6
        )  # the mean of .01, .02, .03: no double count

        # Round 2: replays of round 1 are stale; forged, malformed and hostile updates rejected.
        before = agg.db("SELECT count(*) FROM models")[0][0]
        stranger = Identity.generate("gw-1", Role.GATEWAY)  # claims gw-1 with another key
        bad = {
            "stale": frames[0],
            "forged": _update(stranger, agg.identity, 2, deltas["gw-1"]),
            "wrong_shape": _update(
                gateways[0], agg.identity, 2, np.zeros(agg.parameters + 1, np.float32)
            ),
            "non_finite": _update(
                gateways[1], agg.identity, 2, np.full(agg.parameters, np.nan, np.float32)
            ),
            "norm_exceeded": _update(
                gateways[2], agg.identity, 2, np.full(agg.parameters, 1e3, np.float32)
            ),
            "oversized": b"\x04" * (5 * 1024 * 1024),
        }
        _publish(vhost, list(bad.values()))
        wait_until(
            lambda: {r[0] for r in agg.db("SELECT reason FROM rejections")} >= set(bad),
            60,
            "every bad update to be rejected with its reason",
        )
        assert agg.db("SELECT count(*) FROM models")[0][0] == before
        assert agg.db("SELECT count(*) FROM contributions WHERE round = 2")[0][0] == 0
        # ...and the next round proceeds with honest updates.
        _publish(vhost, [_update(gw, agg.identity, 2, deltas[gw.name]) for gw in gateways])
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
        ),
    )
    gateway_id = setup.config.gateway_id
    gw_identity = load_identity(setup.config.identity)
    agg = Aggregator(tmp_path / "agg", vhost, [gw_identity])
    (setup.config.state_dir / "aggregator.pub").write_text(
        json.dumps(agg.identity.public.to_json())
    )
    # Vitals already stored, and a signed global model waiting in the spool's inbox.
    store = VitalsStore(setup.config.db_path)
    start_ms = int((time.time() - 3600) * 1000)  # recent: older rows fall to the retention limit
    for n, profile in enumerate(make_profiles(4, 5)):
        gen = VitalsGenerator(profile, seed=n, start_ms=start_ms, event_rate_per_hour=30)
        store.commit([vitals_row(f"wearable-{n}", s, 0) for s in gen.samples(300)])
    store.close()
    weights = initial_weights(ROOT / "gateway/assets/vitals_mlp_init.npz")
    model = GlobalModel(
        weights.astype("<f4").tobytes(), int(weights.size), 1, 2_000_000_000_000, {"epochs": 1}
    )
    envelope = seal_envelope(
        agg.identity,
        [gw_identity.public],
        model.encode(),
        content_type=ContentType.GLOBAL_MODEL,
        round=1,
    )
    spool = Spool(setup.config.spool_path)
    spool.put_global(1, envelope)
    spool.close()

    daemon = DaemonProcess(setup)
    try:
        wait_until(
            lambda: (daemon.status().get("federation") or {}).get("rounds_trained") == 1,
            60,
            "the gateway to train round 1",
        )
        daemon.kill()  # SIGKILL with the sealed update not yet confirmed by any broker
        spool = Spool(setup.config.spool_path)
        assert [u.round for u in spool.pending_updates()] == [1]
        spool.close()
        text = setup.config_path.read_text().replace(dead_url, vhost)
        setup.config_path.write_text(text)
        assert load_config(setup.config_path).uplink.amqp_url == vhost
        daemon = DaemonProcess(setup)
        wait_until(
            lambda: (daemon.status().get("federation") or {}).get("updates_published") == 1,
            60,
            "the spooled update to be published after the restart",
        )
        spool = Spool(setup.config.spool_path)
        assert spool.depth() == 0
        spool.close()
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
