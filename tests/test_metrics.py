"""Prometheus endpoints scraped over HTTP: the gateway daemon (real mosquitto, real wearables,
bad input) and the aggregator's coordinator and crypto worker (real RabbitMQ)."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path

import aiomqtt
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from device_emulators.cli import device_name
from pqlink import Identity, Role
from testbed import Mosquitto, free_port

from .fl_harness import Aggregator, publish_updates, sealed_update
from .harness import DaemonProcess, EmulatorProcess, enroll, make_gateway, stored_count, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exposed; have {sorted(k[0] for k in samples)}"
    return samples[key]


def current(samples: Samples, name: str, **labels: str) -> float:
    """The value, or 0 while the series is not exposed yet (labelled series appear on use)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_when(port: int, ready: object, timeout: float, what: str) -> Samples:
    """Scrape until `ready(samples)` holds (counters are read live, so they may lag a moment)."""
    got: list[Samples] = []

    def check() -> bool:
        try:
            got.append(scrape(port))
        except OSError:
            return False
        return bool(ready(got[-1]))  # type: ignore[operator]

    wait_until(check, timeout, what)
    return got[-1]


async def _garbage(port: int, topic: str, frames: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="metrics-attacker") as client:
        for n in range(frames):
            await client.publish(topic, b"\x00garbage" * (n + 1), qos=1)


def test_gateway_metrics_over_http(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    setup = make_gateway(tmp_path / "gw", mosquitto.port, extra=f"[metrics]\nport = {port}\n")
    enroll(setup, 3)
    daemon = DaemonProcess(setup)
    emulator = None
    try:
        daemon.wait_connected()
        emulator = EmulatorProcess(setup, mosquitto.port, 3, 40, 50.0)
        emulator.wait(180)
        wait_until(lambda: stored_count(setup) == 120, 30, "all 120 records stored")
        asyncio.run(_garbage(mosquitto.port, f"iomt/gw-01/rec/{device_name('wearable', 1)}", 3))
        wait_until(
            lambda: sum(daemon.status()["rejected"].values()) >= 3, 30, "the garbage rejected"
        )

        def settled(s: Samples) -> bool:
            return current(s, "iomt_gateway_records_stored_total") == 120 and sum(
                v for (n, _), v in s.items() if n == "iomt_gateway_records_rejected_total"
            ) == sum(daemon.status()["rejected"].values())

        s = scrape_when(port, settled, 10, "metrics to match the daemon's status")
        status = daemon.status()
        assert value(s, "iomt_gateway_up") == 1
        assert value(s, "iomt_gateway_broker_connected") == 1
        assert value(s, "iomt_gateway_sessions") == status["sessions"] == 3
        assert value(s, "iomt_gateway_records_accepted_total") == 120
        assert value(s, "iomt_gateway_handshakes_total", result="ok") == 3
        for reason, count in status["rejected"].items():
            assert value(s, "iomt_gateway_records_rejected_total", reason=reason) == count
        assert value(s, "process_resident_memory_bytes") > 10e6
        # gateways without federated learning expose no round metrics
        assert not any(n.startswith("iomt_gateway_rounds") for n, _ in s)
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
        if emulator:
            emulator.stop_quietly()
    assert f"event=metrics_listening host=127.0.0.1 port={port}" in daemon.log_path.read_text()


def test_gateway_refuses_to_start_on_a_taken_metrics_port(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        setup = make_gateway(tmp_path / "gw", mosquitto.port, extra=f"[metrics]\nport = {port}\n")
        enroll(setup, 1)
        daemon = DaemonProcess(setup)
        try:
            code = daemon.proc.wait(30)
        finally:
            daemon.stop_quietly()
    assert code == 1
    log = daemon.log_path.read_text()
    assert "event=daemon_failed" in log
    assert f"metrics endpoint 127.0.0.1:{port}" in log


def test_aggregator_metrics_over_http(tmp_path: Path, vhost: str) -> None:
    gateways = [Identity.generate(f"gw-{i}", Role.GATEWAY) for i in (1, 2)]
    stranger = Identity.generate("gw-2", Role.GATEWAY)  # not the enrolled gw-2: a forgery
    agg = Aggregator(tmp_path / "agg", vhost, gateways)
    coordinator_port, worker_port = free_port(), free_port()
    try:
        agg.spawn("coordinator", "--metrics-port", str(coordinator_port))
        agg.spawn("worker", "--name", "w1", "--metrics-port", str(worker_port))
        s = scrape_when(
            coordinator_port,
            lambda s: current(s, "iomt_aggregator_round") == 1,
            30,
            "the coordinator to open round 1",
        )
        assert value(s, "iomt_aggregator_gateways_enrolled") == 2
        delta = np.full(agg.parameters, 0.01, np.float32)
        nan = delta.copy()
        nan[3] = np.nan
        publish_updates(
            vhost,
            [
                sealed_update(stranger, agg.identity, 1, delta),  # forged signature
                sealed_update(gateways[0], agg.identity, 1, nan),  # NaN-laden
                sealed_update(gateways[0], agg.identity, 1, delta),
                sealed_update(gateways[1], agg.identity, 1, delta),
            ],
        )
        c = scrape_when(
            coordinator_port,
            lambda s: current(s, "iomt_aggregator_rounds_closed_total", reason="quorum") == 1,
            60,
            "round 1 to close at quorum",
        )
        assert value(c, "iomt_aggregator_round_seconds_count") == 1
        assert value(c, "iomt_aggregator_round_participants") == 2
        assert value(c, "iomt_aggregator_updates_total", outcome="accepted") == 2
        assert value(c, "iomt_aggregator_updates_total", outcome="rejected") == 2
        assert value(c, "iomt_aggregator_model_version") >= 1
        assert value(c, "iomt_aggregator_round") == 2
        w = scrape(worker_port)
        assert value(w, "iomt_aggregator_worker_updates_total", outcome="valid") == 2
        assert value(w, "iomt_aggregator_worker_updates_total", outcome="rejected") == 2
        assert value(w, "iomt_aggregator_worker_rejected_total", reason="non_finite") == 1
        reasons = {
            dict(labels)["reason"]
            for (n, labels), v in w.items()
            if n == "iomt_aggregator_worker_rejected_total" and v
        }
        assert len(reasons) == 2, reasons  # the forgery under its own reason
        assert value(w, "iomt_aggregator_worker_open_seconds_count") == 2
        lines = (agg.root / "state/rounds.jsonl").read_text().splitlines()
        rounds = [json.loads(line) for line in lines]
        assert [r["participants"] for r in rounds] == [["gw-1", "gw-2"]]
    finally:
        agg.stop()
