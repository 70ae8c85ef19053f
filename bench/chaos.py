"""Fault injection against real brokers, gateway daemons, the aggregator and emulated wearables:
per MQTT fault, records sent, stored, lost and duplicated; per AMQP fault (bench/chaos_amqp.py),
updates sent, counted, lost and double-counted; the time to recover; then a soak (bench/soak.py).

`make chaos` (minutes, not part of `make test`). Each fault gets a fresh gateway and fresh
wearables (or a fresh federation) working while the fault lasts, beside a no-fault baseline
row of each kind; the run fails unless every row reads 0 lost and 0 duplicated."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "chaos.json"


@dataclass(frozen=True)
class Row:
    fault: str
    fault_seconds: float
    devices: int
    rate: float
    records_sent: int
    records_stored: int
    records_lost: int
    records_duplicated: int
    records_resent: int
    recover_seconds: float | None
    notes: str


def _run(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", *argv], check=True, cwd=ROOT, capture_output=True)


class Gateway:
    """A gateway directory with keys, enrolled wearables, and its daemon as a process."""

    def __init__(self, root: Path, port: int, devices: int, extra: str = "") -> None:
        self.root = root
        self.state = root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config = root / "gateway.toml"
        self.config.write_text(
            f'[gateway]\nid = "gw-01"\nstate_dir = "{self.state}"\n\n'
            f'[mqtt]\nport = {port}\n\n[log]\njournal = "no"\nlevel = "info"\n{extra}'
        )
        self.db = self.state / "vitals.sqlite3"
        self.keys = root / "wearable-keys"
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port
        self.devices = devices
        # (device, epoch, seq) the gateway had stored (and acknowledged) in a file a fault
        # destroyed: gone with the medium, not lost by the protocol
        self.destroyed: set[tuple[str, int, int]] = set()
        _run("gateway.cli", "keygen", "--config", str(self.config))
        _run(
            "device_emulators.cli",
            "enroll",
            "--registry",
            str(self.state / "registry.json"),
            "--keys-dir",
            str(self.keys),
            "--devices",
            str(devices),
        )

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        _wait(lambda: self.status().get("connected") is True, 30, "the daemon to connect")

    def status(self) -> dict[str, object]:
        try:
            doc: dict[str, object] = json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc if self.proc is not None and doc.get("pid") == self.proc.pid else {}

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        proc.send_signal(sig)
        return proc.wait(60)

    def keys_stored(self, db: Path | None = None) -> list[tuple[str, int, int, int]]:
        path = db or self.db
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return con.execute("SELECT device_id, epoch, seq, ts_ms FROM vitals").fetchall()
        finally:
            con.close()


class Emulator:
    def __init__(self, gw: Gateway, records: int, rate: float) -> None:
        self.summary = gw.root / "emulator.json"
        self.log = gw.root / "emulator.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "device_emulators.cli",
                    "run",
                    "--keys-dir",
                    str(gw.keys),
                    "--gateway-pub",
                    str(gw.state / "identity.pub"),
                    "--port",
                    str(gw.port),
                    "--devices",
                    str(gw.devices),
                    "--records",
                    str(records),
                    "--rate",
                    str(rate),
                    "--resend-after",
                    "20",
                    "--summary",
                    str(self.summary),
                    "--quiet",
                ],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {}
        return dict(json.loads(self.summary.read_text()))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # poll interval of a bounded wait


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 65536)
    os.close(fd)


Fault = Callable[[Gateway, Mosquitto, float], str]


def no_fault(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    time.sleep(seconds)  # the baseline: streaming as long as a fault would last
    return "streaming without a fault"


def stop_daemon(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    code = gw.stop()
    time.sleep(seconds)  # the fault itself: the daemon stays down this long
    gw.start()
    return f"SIGTERM exit {code}, down {seconds:.0f} s"


def kill_daemon(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    gw.stop(signal.SIGKILL)
    time.sleep(seconds)  # the fault itself
    gw.start()
    return "SIGKILL, then restarted"


def freeze_daemon(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    gw.send(signal.SIGSTOP)
    time.sleep(seconds)  # the fault itself: the process is frozen this long
    gw.send(signal.SIGCONT)
    return "SIGSTOP, then SIGCONT"


def restart_broker(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    broker.stop(signal.SIGKILL)
    time.sleep(seconds)  # the fault itself: no broker this long
    broker.start()
    return "mosquitto SIGKILLed, restarted"


def corrupt_store(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    gw.stop(signal.SIGKILL)
    gw.destroyed = {(d, e, s) for d, e, s, _ in gw.keys_stored()}
    # A torn write over the first pages of the file and of its WAL (which would otherwise
    # still hold a good copy of page 1): not a database any more.
    for path in (gw.db, gw.db.with_name(gw.db.name + "-wal")):
        with path.open("r+b") as f:
            f.write(b"garbage!" * 512)
    with gw.log.open("ab") as log:
        code = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw.config)],
            stdout=log,
            stderr=log,
            cwd=ROOT,
            check=False,
            timeout=60,
        ).returncode
    time.sleep(seconds)  # the fault itself: until the operator comes
    _run("gateway.cli", "store", "recover", "--config", str(gw.config))
    gw.start()
    return (
        f"header overwritten, daemon exit {code}, store recover; "
        f"{len(gw.destroyed)} records were in the destroyed file"
    )


def fill_disk(gw: Gateway, broker: Mosquitto, seconds: float) -> str:
    filler = gw.state / "filler"
    _fill(filler)
    _wait(lambda: gw.status().get("store") == "full", 60, "store_full")
    time.sleep(seconds)  # the fault itself: the disk stays full this long
    filler.unlink()
    return "state dir tmpfs filled, then freed"


FAULTS: dict[str, Fault] = {
    "mqtt_baseline": no_fault,
    "daemon_stopped": stop_daemon,
    "daemon_killed": kill_daemon,
    "daemon_frozen": freeze_daemon,
    "broker_killed": restart_broker,
    "store_corrupted": corrupt_store,
    "disk_full": fill_disk,
}


def run_fault(name: str, seconds: float, devices: int, rate: float, work: Path) -> Row:
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    gw_root = work / "gw"
    gw_root.mkdir()
    mounted = name == "disk_full"
    stack = contextlib.ExitStack()
    try:
        if mounted:
            (gw_root / "state").mkdir()
            stack.enter_context(_small_disk(gw_root / "state", "24m"))
        gw = Gateway(gw_root, broker.port, devices)
        gw.start()
        warmup, after = 10.0, 30.0
        records = int(rate * (warmup + seconds + after))
        emulator = Emulator(gw, records, rate)
        _wait(lambda: len(gw.keys_stored()) > 0, 60, "the first records")
        t_start = time.monotonic()
        time.sleep(warmup)  # streaming normally before the fault
        notes = FAULTS[name](gw, broker, seconds)
        t_end = time.monotonic()
        # every sample taken before the fault ended, stored (one second of start-up slack)
        taken = min(records, int(rate * (t_end - t_start)) - int(rate))

        def caught_up() -> bool:
            keys = {(d, s) for d, _, s, _ in gw.keys_stored()}
            keys |= {(d, s) for d, _, s in gw.destroyed}
            return all(
                (f"wearable-{i:04d}", s) in keys
                for i in range(1, devices + 1)
                for s in range(taken)
            )

        recover: float | None
        try:
            _wait(caught_up, 300, "recovery")
            recover = round(time.monotonic() - t_end, 1)
        except TimeoutError:
            recover = None
        if name == "mqtt_baseline":
            seconds = 0.0  # no fault: its "recovery" is the ordinary commit-to-store delay
        summary = emulator.wait(600)
        gw.stop()
        rows = gw.keys_stored()
        identities = {(d, e, s) for d, e, s, _ in rows} | gw.destroyed
        samples = {(d, ts) for d, _, _, ts in rows}
        sent = int(summary.get("records_sent", 0)) if summary else devices * records
        expected = {(f"wearable-{i:04d}", s) for i in range(1, devices + 1) for s in range(records)}
        stored_keys = {(d, s) for d, _, s in identities}
        return Row(
            fault=name,
            fault_seconds=seconds,
            devices=devices,
            rate=rate,
            records_sent=sent,
            records_stored=len(identities),  # including any in a destroyed file
            records_lost=len(expected - stored_keys),
            # the same sample stored under two identities (or twice across files)
            records_duplicated=len(rows) - len(samples),
            records_resent=int(summary.get("records_resent", 0)) if summary else 0,
            recover_seconds=recover,
            notes=notes,
        )
    finally:
        with contextlib.suppress(Exception):
            gw.stop(signal.SIGKILL)
        stack.close()
        broker.stop()


def _print_row(row: Row) -> None:
    print(
        f"{row.fault:26} {row.fault_seconds:4.0f} s  sent {row.records_sent:6}  "
        f"stored {row.records_stored:6}  lost {row.records_lost}  "
        f"duplicated {row.records_duplicated}  resent {row.records_resent:5}  "
        f"recovered in {row.recover_seconds} s  ({row.notes})",
        flush=True,
    )


def _print_amqp_row(row: Any) -> None:
    print(
        f"{row.fault:26} {row.fault_seconds:4.0f} s  rounds {row.rounds_closed:4}  "
        f"updates sent {row.updates_sent:4}  counted {row.updates_counted:4}  "
        f"lost {row.updates_lost}  double-counted {row.updates_double_counted}  "
        f"recovered in {row.recover_seconds} s  ({row.notes})",
        flush=True,
    )


def _workdir(name: str, keep: bool) -> contextlib.AbstractContextManager[str]:
    if keep:
        tmp = tempfile.mkdtemp(prefix=f"chaos-{name}-")
        print(f"{name}: {tmp}", flush=True)
        return contextlib.nullcontext(tmp)
    return tempfile.TemporaryDirectory(prefix=f"chaos-{name}-")


def main(argv: list[str] | None = None) -> int:
    from bench.chaos_amqp import FAULTS as AMQP_FAULTS  # noqa: PLC0415
    from bench.chaos_amqp import run_amqp_fault  # noqa: PLC0415
    from bench.soak import run_soak  # noqa: PLC0415
    from testbed.rabbitmq import RabbitMQ  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="bench.chaos", description=__doc__)
    p.add_argument("--faults", default=",".join(FAULTS), help="MQTT faults (comma-separated)")
    p.add_argument("--amqp-faults", default=",".join(AMQP_FAULTS), help="AMQP faults ('' for none)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long each MQTT fault lasts")
    p.add_argument("--cut-seconds", type=float, default=60.0, help="gateway cut from RabbitMQ")
    p.add_argument(
        "--kill-seconds", type=float, default=10.0, help="a killed worker/coordinator stays down"
    )
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="records/s per wearable")
    p.add_argument("--soak-seconds", type=float, default=600.0, help="0: no soak")
    p.add_argument("--soak-devices", type=int, default=20)
    p.add_argument("--soak-rate", type=float, default=10.0)
    p.add_argument("--soak-every", type=float, default=10.0, help="sampling period, seconds")
    p.add_argument("--soak-max-rows", type=int, default=20_000)
    p.add_argument("--soak-keep-rounds", type=int, default=50)
    p.add_argument("--soak-round-pace", type=float, default=2.0, help="seconds per round")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep each fault's directory and logs")
    args = p.parse_args(argv)
    rows: list[Row] = []
    amqp_rows: list[Any] = []
    soak: dict[str, Any] | None = None

    def write() -> None:
        """After every row: a run cut short keeps what it measured."""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "what": "records and updates through real brokers, daemons and the aggregator "
            "under faults, and a soak",
            "rows": [asdict(r) for r in rows],
            "amqp_rows": [asdict(r) for r in amqp_rows],
            "soak": soak,
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n")

    for name in filter(None, args.faults.split(",")):
        with _workdir(name, args.keep) as tmp:
            row = run_fault(name, args.seconds, args.devices, args.rate, Path(tmp))
        rows.append(row)
        _print_row(row)
        write()
    amqp_faults = [f for f in args.amqp_faults.split(",") if f]
    if amqp_faults or args.soak_seconds > 0:
        with _workdir("rabbitmq", args.keep) as tmp, RabbitMQ(Path(tmp) / "node") as node:
            for name in amqp_faults:
                seconds = args.cut_seconds if name.startswith("gateway_cut") else args.kill_seconds
                if name == "amqp_baseline":
                    seconds = args.cut_seconds
                amqp_row = run_amqp_fault(name, seconds, Path(tmp), node)
                amqp_rows.append(amqp_row)
                _print_amqp_row(amqp_row)
                write()
            if args.soak_seconds > 0:
                result = run_soak(
                    Path(tmp) / "soak",
                    node,
                    seconds=args.soak_seconds,
                    devices=args.soak_devices,
                    rate=args.soak_rate,
                    every=args.soak_every,
                    max_rows=args.soak_max_rows,
                    keep_rounds=args.soak_keep_rounds,
                    round_pace=args.soak_round_pace,
                )
                soak = result.as_json()
                print(
                    f"soak {result.seconds:.0f} s: {result.records_sent} records, "
                    f"{result.rounds_closed} rounds; slopes/min {result.slopes_per_minute}; "
                    f"maxima {result.maxima}",
                    flush=True,
                )
    write()
    ok = all(r.records_lost == 0 and r.records_duplicated == 0 for r in rows) and all(
        r.updates_lost == 0 and r.updates_double_counted == 0 for r in amqp_rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
