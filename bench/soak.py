"""A soak in minutes: many wearables at a high rate into a gateway daemon whose retention limit
is small (so it deletes as fast as it stores), beside federated rounds every few seconds with a
small round-retention setting, sampling memory and file sizes as it goes.

The sampled series go into the JSON with, per process and file, the slope of a least-squares
fit over the second half of the run: flat memory and bounded files read as slopes near 0."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.chaos import Emulator, Gateway
from bench.chaos_amqp import Federation, wait_for
from testbed.mosquitto import Mosquitto
from testbed.rabbitmq import RabbitMQ


@dataclass
class SoakResult:
    seconds: float
    devices: int
    rate: float
    max_rows: int
    keep_rounds: int
    rounds_closed: int = 0
    records_sent: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    slopes_per_minute: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "devices": self.devices,
            "rate": self.rate,
            "max_rows": self.max_rows,
            "keep_rounds": self.keep_rounds,
            "rounds_closed": self.rounds_closed,
            "records_sent": self.records_sent,
            "slopes_per_minute": self.slopes_per_minute,
            "maxima": self.maxima,
            "samples": self.samples,
        }


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def slope_per_minute(t: list[float], y: list[float]) -> float:
    """Least-squares slope of y over t (seconds), per minute, over the second half."""
    half = len(t) // 2
    ts, ys = np.asarray(t[half:]), np.asarray(y[half:], dtype=float)
    if len(ts) < 2 or float(np.ptp(ts)) == 0.0:
        return 0.0
    return float(np.polyfit(ts, ys, 1)[0] * 60.0)


def run_soak(
    work: Path,
    node: RabbitMQ,
    *,
    seconds: float,
    devices: int,
    rate: float,
    every: float,
    max_rows: int,
    keep_rounds: int,
    round_pace: float,
) -> SoakResult:
    result = SoakResult(seconds, devices, rate, max_rows, keep_rounds)
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    gw_root = work / "gw"
    gw_root.mkdir()
    gw = Gateway(gw_root, broker.port, devices, extra=f"[store]\nmax_rows = {max_rows}\n")
    fed = Federation(work / "federation", node, keep_rounds=keep_rounds)
    emulator: Emulator | None = None
    try:
        gw.start()
        fed.start(round_pace)
        emulator = Emulator(gw, int(rate * (seconds + 300)), rate)
        # Sampling starts once everything runs: start-up is not what a soak measures.
        wait_for(lambda: fed.closed_round() >= 1, 300, "the first round")
        wait_for(lambda: len(gw.keys_stored()) > 0, 300, "the first records")
        t0 = time.monotonic()
        files = {
            "store": gw.db,
            "store_wal": gw.db.with_name(gw.db.name + "-wal"),
            "coordinator_db": fed.db_path,
            "coordinator_wal": fed.db_path.with_name(fed.db_path.name + "-wal"),
            "rounds_jsonl": fed.state / "rounds.jsonl",
        }
        while (now := time.monotonic()) - t0 < seconds:
            sample: dict[str, Any] = {"t": round(now - t0, 1)}
            assert gw.proc is not None
            pids = {"daemon": gw.proc.pid, **fed.pids()}
            for name, pid in pids.items():
                sample[f"rss_{name}"] = rss_bytes(pid)
            for name, path in files.items():
                sample[f"bytes_{name}"] = _size(path)
            sample["rounds_closed"] = fed.closed_round()
            result.samples.append(sample)
            time.sleep(max(0.0, t0 + len(result.samples) * every - time.monotonic()))
        result.rounds_closed = fed.closed_round()
    finally:
        if emulator is not None:
            emulator.proc.terminate()
            summary = emulator.wait(60)
            result.records_sent = int(summary.get("records_sent", 0)) if summary else 0
        gw.stop()
        fed.stop()
        broker.stop()
    keys = sorted({k for s in result.samples for k in s if k.startswith(("rss_", "bytes_"))})
    for key in keys:
        points = [(s["t"], s[key]) for s in result.samples if s.get(key) is not None]
        if points:
            result.slopes_per_minute[key] = round(
                slope_per_minute([p[0] for p in points], [p[1] for p in points]), 1
            )
            result.maxima[key] = int(max(p[1] for p in points))
    return result
