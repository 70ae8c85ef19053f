"""Gateway ingest benchmarks over a real mosquitto: sealed versus plaintext records end to end
(fleet -> mosquitto -> daemon -> SQLite) in the same run, a 500-wearable handshake storm, and
the daemon's resident memory with 500 live sessions."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench._timing import write
from bench.fleet import establish, publish_all, sample
from gateway.cli import main as gateway_main
from gateway.config import load_config
from pqlink import Identity, Registry, Role, SigAlg, load_public_identity, save_registry
from testbed import Mosquitto
from wire.topics import TopicKind, TopicLayout

ROOT = Path(__file__).resolve().parents[1]


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM vitals").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


class Gateway:
    def __init__(self, root: Path, port: int, plaintext: bool, identities: list[Identity]) -> None:
        root.mkdir(parents=True)
        self.config_path = root / "gateway.toml"
        self.config_path.write_text(
            f'[gateway]\nid = "gw-01"\nstate_dir = "state"\n[mqtt]\nport = {port}\n'
            "[sessions]\ndevice_records_per_second = 1000000.0\ndevice_burst = 1000000\n"
            "device_handshakes_per_minute = 600.0\n"
            f'[log]\njournal = "no"\nlevel = "warning"\n'
            f"[bench]\nplaintext_records = {str(plaintext).lower()}\n"
        )
        with open(os.devnull, "w") as null:
            sys_stdout, sys.stdout = sys.stdout, null
            try:
                gateway_main(["keygen", "--config", str(self.config_path)])
            finally:
                sys.stdout = sys_stdout
        self.config = load_config(self.config_path)
        reg = Registry()
        for ident in identities:
            reg.enroll(ident.public)
        save_registry(reg, self.config.registry)
        self.public = load_public_identity(self.config.identity.with_suffix(".pub"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)],
            env=env,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while (
            not self.config.status_path.exists()
            or '"connected": true' not in self.config.status_path.read_text()
        ):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("gateway did not connect")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.config.status_path.unlink(missing_ok=True)

    def rss_mb(self) -> float:
        assert self.proc is not None
        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20


def _wait_count(db: Path, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (n := _count(db)) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {n} of {target} records stored after {timeout} s")
        time.sleep(0.01)
    return time.perf_counter()


def run_ingest(
    tmp: Path, port: int, plaintext: bool, devices: int, per_device: int, identities: list[Identity]
) -> dict[str, Any]:
    gw = Gateway(tmp / ("plain" if plaintext else "sealed"), port, plaintext, identities)
    gw.start()
    layout = TopicLayout("iomt", "gw-01")
    try:
        frames: list[tuple[str, bytes]] = []
        if plaintext:
            for ident in identities:
                topic = layout.topic(TopicKind.RECORD, ident.name)
                frames += [(topic, sample(i).encode()) for i in range(per_device)]
        else:
            sessions, _ = asyncio.run(establish(port, layout, gw.public, identities))
            for ident in identities:
                topic = layout.topic(TopicKind.RECORD, ident.name)
                s = sessions[ident.name]
                frames += [
                    (topic, s.seal(sample(i).encode(), topic.encode())) for i in range(per_device)
                ]
        # Interleave devices, as a fleet would.
        frames = [frames[d * per_device + i] for i in range(per_device) for d in range(devices)]
        total = len(frames)
        t0 = time.perf_counter()
        publish_s = asyncio.run(publish_all(port, frames))
        t1 = _wait_count(gw.config.db_path, total, 120)
        return {
            "records": total,
            "record_bytes": len(frames[0][1]),
            "publish_seconds": publish_s,
            "end_to_end_seconds": t1 - t0,
            "records_per_second": total / (t1 - t0),
        }
    finally:
        gw.stop()


def run_storm(tmp: Path, port: int, n: int) -> dict[str, Any]:
    identities = [
        Identity.generate(f"storm-{i:04d}", Role.SENSOR, SigAlg.ML_DSA_44) for i in range(n)
    ]
    gw = Gateway(tmp / "storm", port, False, identities)
    gw.start()
    try:
        rss_idle = gw.rss_mb()
        sessions, seconds = asyncio.run(
            establish(port, TopicLayout("iomt", "gw-01"), gw.public, identities)
        )
        deadline = time.monotonic() + 10
        status = gw.config.status_path
        while f'"sessions": {n}' not in status.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        return {
            "wearables": n,
            "established": len(sessions),
            "all_established_seconds": seconds,
            "daemon_rss_mb_idle": rss_idle,
            "daemon_rss_mb_with_sessions": gw.rss_mb(),
        }
    finally:
        gw.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--records", type=int, default=1000, help="records per device")
    parser.add_argument("--storm", type=int, default=500)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="iomt-bench-") as d:
        tmp = Path(d)
        with Mosquitto(tmp / "mosquitto") as broker:
            identities = [
                Identity.generate(f"wearable-{i:04d}", Role.SENSOR, SigAlg.ML_DSA_44)
                for i in range(args.devices)
            ]
            plain = run_ingest(tmp, broker.port, True, args.devices, args.records, identities)
            print(f"plaintext: {plain['records_per_second']:.0f} records/s")
            sealed = run_ingest(tmp, broker.port, False, args.devices, args.records, identities)
            print(f"sealed:    {sealed['records_per_second']:.0f} records/s")
            storm = run_storm(tmp, broker.port, args.storm)
            print(
                f"storm: {storm['established']} sessions in "
                f"{storm['all_established_seconds']:.2f} s, "
                f"daemon RSS {storm['daemon_rss_mb_with_sessions']:.1f} MB"
            )
    ratio = sealed["records_per_second"] / plain["records_per_second"]
    budgets = [
        {
            "name": "sealed_vs_plaintext_ingest_ratio",
            "value": ratio,
            "minimum": 0.8,
            "ok": ratio >= 0.8,
        },
        {
            "name": "sealed_ingest_records_per_s",
            "value": sealed["records_per_second"],
            "minimum": 2500,
            "ok": sealed["records_per_second"] >= 2500,
        },
        {
            "name": "handshake_storm_500_seconds",
            "value": storm["all_established_seconds"],
            "limit": 5.0,
            "ok": storm["all_established_seconds"] < 5.0 and storm["established"] == args.storm,
        },
        {
            "name": "daemon_rss_mb_500_sessions",
            "value": storm["daemon_rss_mb_with_sessions"],
            "limit": 80.0,
            "ok": storm["daemon_rss_mb_with_sessions"] < 80.0,
        },
    ]
    write(
        "ingest",
        {"plaintext": plain, "sealed": sealed, "storm": storm, "budgets": budgets},
        args.out,
    )
    return 0 if all(b["ok"] for b in budgets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
