"""The aggregator as real processes (coordinator, crypto workers) on a RabbitMQ virtual host:
configuration, enrolment, sealed updates published straight into the updates queue."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pika
import pika.exceptions

from aggregator.cli import main as aggregator_main
from aggregator.coordinator import initial_weights
from pqlink import ContentType, Identity, load_identity, seal_envelope
from wire.amqp import UPDATES_QUEUE, UPDATES_QUEUE_ARGUMENTS, broker_urls
from wire.fl import ModelUpdate
from wire.model import DEFAULT_INITIAL_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


class Aggregator:
    def __init__(
        self,
        root: Path,
        url: str,
        gateways: list[Identity],
        *,
        batch_wait: float = 0.01,
        extra: str = "",
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.config = root / "aggregator.toml"
        self.config.write_text(
            f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n[amqp]\nurl = "{url}"\n'
            f"[rounds]\nquorum_fraction = 1.0\nround_timeout = 120.0\n"
            f"[worker]\nbatch_wait = {batch_wait}\nbatch_max = 64\n[metrics]\nport = 0\n"
            f"{extra}"
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
        self.parameters = int(initial_weights(DEFAULT_INITIAL_WEIGHTS).size)

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

    def db(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
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


def sealed_update(
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


def publish_updates(url: str, frames: list[bytes], timeout: float = 30.0) -> None:
    """Publish with confirms to the first reachable node of `url` (comma-separated list).

    A quorum queue NACKs a publish it could not take (its leader not elected yet, e.g. right
    after the queue was declared on a busy machine): that frame was not enqueued, so it is
    published again, as a gateway's spool would, until `timeout` runs out."""
    conn = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(url)])
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(UPDATES_QUEUE, durable=True, arguments=UPDATES_QUEUE_ARGUMENTS)
        deadline = time.monotonic() + timeout
        for f in frames:
            while True:
                try:
                    ch.basic_publish("", UPDATES_QUEUE, f, pika.BasicProperties(delivery_mode=2))
                    break
                except pika.exceptions.NackError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # poll interval of a bounded retry
    finally:
        conn.close()
