"""`make demo`: the whole system on one machine. Private mosquitto and RabbitMQ, the coordinator
and two crypto workers, three gateway daemons with twenty emulated wearables each (non-IID
patient mixes), several federated rounds; then a per-round table, a plot and a JSON summary.

Exit codes: 0 success; 1 a component failed or no round closed in time."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.report import evaluate_rounds, held_out_windows, plot, round_line, table
from testbed import Mosquitto, ServiceError

ROOT = Path(__file__).resolve().parents[1]
COHORTS = ("cardiac", "elderly-copd", "post-op", "athlete", "healthy-adult")

#: Energy-policy thresholds no host reading can trip (CPU load is capped at 1.0, free memory
#: and battery charge are never negative, AC power is not required): rounds train whatever
#: the machine is doing.
PINNED_ENERGY_POLICY = (
    "max_cpu_load = 1.0\nmax_temperature_c = 120.0\nmin_free_memory_mb = 0.0\n"
    "min_battery_percent = 0.0\nmin_battery_percent_when_deadline_near = 0.0\n"
)


class DemoError(Exception):
    """A component failed; the message says which and where its log is."""


@dataclass
class Clock:
    t0: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)


def _quiet(fn: Any, *args: Any) -> int:
    """Run one of our CLIs in-process without its chatter."""
    with contextlib.redirect_stdout(io.StringIO()):
        return int(fn(list(args)))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        code = self.popen.poll()
        if code is not None and code != 0:
            raise DemoError(f"{self.name} exited with {code}; see {self.log}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Fleet:
    """Starts our own processes and stops all of them, in reverse order, whatever happens."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[Proc] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), self.env.get("PYTHONPATH")])
        )

    def spawn(self, name: str, *args: str) -> Proc:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(  # noqa: S603 -- our own modules, fixed arguments
                [sys.executable, "-m", *args], stdout=fh, stderr=fh, env=self.env, cwd=ROOT
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@dataclass
class Gateway:
    gid: str
    root: Path
    config: Path
    cohort: str

    @property
    def state(self) -> Path:
        return self.root / "state"

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc


def _wait(what: str, predicate: Any, timeout: float, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        fleet.check()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _wait_progress(
    what: str, progress: Callable[[], int], target: int, stall: float, fleet: Fleet
) -> None:
    """Wait until `progress()` reaches `target`; fail when it has not grown for `stall`
    seconds. On a loaded machine streaming is slower, but it moves: only a stop is a failure."""
    best, last_growth = -1, time.monotonic()
    while (now_at := progress()) < target:
        fleet.check()
        if now_at > best:
            best, last_growth = now_at, time.monotonic()
        elif time.monotonic() - last_growth > stall:
            raise DemoError(f"no progress for {stall:.0f} s waiting for {what} ({best}/{target})")
        time.sleep(0.1)


def _setup(
    work: Path, args: argparse.Namespace, mqtt_port: int, amqp_url: str
) -> tuple[Path, list[Gateway]]:
    from aggregator.cli import main as aggregator_main  # noqa: PLC0415 -- after sys.path is set
    from device_emulators.cli import main as emulate_main  # noqa: PLC0415
    from gateway.cli import main as gateway_main  # noqa: PLC0415

    agg_dir = work / "aggregator"
    agg_dir.mkdir(parents=True)
    agg_conf = agg_dir / "aggregator.toml"
    agg_conf.write_text(
        f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n'
        f'[amqp]\nurl = "{amqp_url}"\n'
        f"[rounds]\nquorum_fraction = 1.0\nround_timeout = {args.round_timeout}\n"
        f"max_rounds = {args.rounds}\n"
        f"[training]\nepochs = {args.epochs}\nbatch_size = 32\nlearning_rate = 0.1\n"
        f"{_privacy_settings(args)}"
        f'[strategy]\nname = "{args.strategy}"\n[metrics]\nport = 0\n'
        f"[privacy]\ndelta = {args.delta}\nstage_timeout = {args.stage_timeout}\n"
    )
    _quiet(aggregator_main, "keygen", "--config", str(agg_conf))
    agg_pub = agg_dir / "state" / "identity.pub"
    gateways = []
    for i in range(args.gateways):
        gid = f"gw-{i + 1:02d}"
        root = work / gid
        (root / "state").mkdir(parents=True)
        conf = root / "gateway.toml"
        conf.write_text(
            f'[gateway]\nid = "{gid}"\nstate_dir = "state"\n[mqtt]\nport = {mqtt_port}\n'
            f'[uplink]\namqp_url = "{amqp_url}"\naggregator_public = "aggregator.pub"\n'
            "[sessions]\ndevice_records_per_second = 1000.0\ndevice_burst = 2000\n"
            '[log]\njournal = "no"\n'
            # Every gateway here shares one machine, so each would see the others' training as
            # its own CPU load and defer; on a Pi the defaults apply to that Pi alone. The
            # thresholds are pinned so that no host reading can defer or skip a round.
            f"[learning]\n{PINNED_ENERGY_POLICY}"
        )
        shutil.copy(agg_pub, root / "state" / "aggregator.pub")
        _quiet(gateway_main, "keygen", "--config", str(conf))
        _quiet(
            emulate_main,
            "enroll",
            "--registry",
            str(root / "state" / "registry.json"),
            "--keys-dir",
            str(root / "wearables"),
            "--devices",
            str(args.wearables),
            "--prefix",
            f"{gid}-wearable",
        )
        _quiet(
            aggregator_main,
            "enroll",
            "--config",
            str(agg_conf),
            str(root / "state" / "identity.pub"),
        )
        gateways.append(Gateway(gid, root, conf, COHORTS[i % len(COHORTS)]))
    # Enrolment hands each gateway the registry of gateway identities: in a secure round it
    # checks every participant against it instead of taking the coordinator's word.
    for gw in gateways:
        shutil.copy(agg_dir / "state" / "gateways.json", gw.state / "gateways.json")
    return agg_conf, gateways


def _privacy_settings(args: argparse.Namespace) -> str:
    """The [training] keys of secure aggregation and DP (each may be switched off)."""
    lines = []
    if args.secure_aggregation or args.dp:
        lines.append(f"clip_norm = {args.clip}")
    if args.dp:
        lines.append(f"noise_multiplier = {args.noise_multiplier}")
    if args.secure_aggregation:
        lines += ["secure_aggregation = true", "precision_bits = 16"]
    return "".join(line + "\n" for line in lines)


def _progress_lines(report: Path, seen: int) -> tuple[list[dict[str, Any]], int]:
    if not report.exists():
        return [], seen
    lines = report.read_text().splitlines()
    return [json.loads(line) for line in lines[seen:]], len(lines)


def run(args: argparse.Namespace) -> int:
    clock = Clock()
    out = Path(args.out).resolve() / time.strftime("demo-%Y%m%d-%H%M%S")
    work = out / "work"
    work.mkdir(parents=True)
    fleet = Fleet(work)
    from testbed import RabbitMQ  # noqa: PLC0415

    clock.say(f"output in {out}")
    with contextlib.ExitStack() as stack:
        mosquitto = Mosquitto(work / "mosquitto")
        mosquitto.start()
        stack.callback(mosquitto.stop)
        clock.say(f"mosquitto on 127.0.0.1:{mosquitto.port}")
        if args.amqp_url:
            amqp_url = args.amqp_url
            clock.say("using the RabbitMQ given by --amqp-url")
        else:
            rabbit = RabbitMQ(work / "rabbitmq")
            rabbit.start()
            stack.callback(rabbit.stop)
            amqp_url = rabbit.url
            clock.say(f"RabbitMQ on 127.0.0.1:{rabbit.amqp_port}")
        stack.callback(fleet.stop)

        agg_conf, gateways = _setup(work, args, mosquitto.port, amqp_url)
        clock.say(
            f"identities: aggregator + {len(gateways)} gateways + "
            f"{len(gateways) * args.wearables} wearables, all enrolled"
        )
        for gw in gateways:
            fleet.spawn(gw.gid, "gateway.cli", "run", "--config", str(gw.config))
        _wait(
            "the gateways to connect",
            lambda: all(g.status().get("connected") for g in gateways),
            60,
            fleet,
        )
        clock.say("gateway daemons up (MQTT connected)")
        for n, gw in enumerate(gateways):
            fleet.spawn(
                f"{gw.gid}-wearables",
                "device_emulators.cli",
                "run",
                "--keys-dir",
                str(gw.root / "wearables"),
                "--gateway-pub",
                str(gw.state / "identity.pub"),
                "--port",
                str(mosquitto.port),
                "--devices",
                str(args.wearables),
                "--prefix",
                f"{gw.gid}-wearable",
                "--rate",
                str(args.rate),
                "--seed",
                str(11 + n),
                "--cohort",
                gw.cohort,
                "--event-rate",
                str(args.event_rate),
                "--quiet",
            )
        clock.say(
            f"{args.wearables} wearables per gateway streaming sealed vitals "
            f"(cohorts: {', '.join(g.cohort for g in gateways)})"
        )
        need = args.wearables * args.warmup_samples
        _wait_progress(
            "the first vitals",
            lambda: sum(min(g.status().get("records_stored", 0), need) for g in gateways),
            need * len(gateways),
            30,
            fleet,
        )
        stored = sum(g.status().get("records_stored", 0) for g in gateways)
        clock.say(f"{stored} records stored; starting the aggregator")
        for w in range(args.workers):
            fleet.spawn(
                f"worker-{w + 1}",
                "aggregator.cli",
                "worker",
                "--config",
                str(agg_conf),
                "--name",
                f"worker-{w + 1}",
            )
        coordinator = fleet.spawn(
            "coordinator", "aggregator.cli", "coordinator", "--config", str(agg_conf)
        )
        report = agg_conf.parent / "state" / "rounds.jsonl"
        privacy: dict[int, dict[str, Any]] = {}
        seen = 0
        deadline = time.monotonic() + args.timeout
        while True:
            running = coordinator.popen.poll() is None
            fleet.check()
            closed, seen = _progress_lines(report, seen)
            if closed:
                # A stall is the failure, not a slow machine: each closed round renews it.
                deadline = time.monotonic() + args.timeout
            for r in closed:
                clock.say(round_line(r))
                privacy[int(r["round"])] = dict(r.get("privacy") or {})
            if not running:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"no round closed for {args.timeout} s; see {work / 'logs'}")
            time.sleep(0.1)
        _wait(
            "the final global model at every gateway",
            lambda: all(
                (g.status().get("federation") or {}).get("last_global_round", 0) > args.rounds
                for g in gateways
            ),
            30,
            fleet,
        )
        final_status = {g.gid: g.status() for g in gateways}
        clock.say("final global model applied by every gateway; stopping everything")
    clock.say("all processes stopped")

    x_test, y_test = held_out_windows(seed=999, event_rate=args.event_rate)
    rows = evaluate_rounds(
        state=agg_conf.parent / "state",
        report=report,
        x_test=x_test,
        y_test=y_test,
        stores=[g.state / "vitals.sqlite3" for g in gateways],
        central_epochs=args.epochs * args.rounds,
    )
    print()
    print(table(rows.rounds, rows.central_accuracy))
    png = out / "rounds.png"
    plot(rows.rounds, rows.central_accuracy, png)
    summary = out / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "gateways": args.gateways,
                "wearables_per_gateway": args.wearables,
                "rounds": args.rounds,
                "strategy": args.strategy,
                "workers": args.workers,
                "held_out_windows": len(y_test),
                "central_accuracy": rows.central_accuracy,
                "per_round": [
                    {**r.as_dict(), "privacy": _round_privacy(privacy.get(r.round), args)}
                    for r in rows.rounds
                ],
                "privacy": _total_privacy(privacy, args),
                "gateway_status": final_status,
                "elapsed_seconds": time.monotonic() - clock.t0,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"\nplot:    {png}\nsummary: {summary}")
    clock.say("demo finished")
    return 0


def _round_privacy(p: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    p = p or {}
    return {
        "secure_aggregation": bool(p.get("secure_aggregation", args.secure_aggregation)),
        "dropouts_recovered": int(p.get("dropouts_recovered", 0)),
        "epsilon": p.get("epsilon"),
        "delta": p.get("delta"),
    }


def _total_privacy(rounds: dict[int, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Epsilon is cumulative already (the ledger composes every round): the last one's."""
    last = rounds[max(rounds)] if rounds else {}
    return {
        "secure_aggregation": args.secure_aggregation,
        "dropouts_recovered": sum(int(p.get("dropouts_recovered", 0)) for p in rounds.values()),
        "epsilon": last.get("epsilon"),
        "delta": args.delta if args.dp else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--wearables", type=int, default=20, help="per gateway")
    parser.add_argument("--workers", type=int, default=2, help="crypto workers")
    parser.add_argument(
        "--strategy", choices=("fedavg", "trimmed_mean", "median"), default="fedavg"
    )
    parser.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    parser.add_argument("--rate", type=float, default=40.0, help="records/s per wearable")
    parser.add_argument("--event-rate", type=float, default=30.0, help="clinical events per hour")
    parser.add_argument(
        "--warmup-samples",
        type=int,
        default=600,
        help="samples per wearable before the first round",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds allowed without a round closing"
    )
    # Rounds close at quorum (every gateway) the moment the last update is in: the deadlines
    # only bound a round whose gateways stall, so they are generous for a loaded machine.
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=120.0,
        help="seconds a round may wait for every gateway before it closes at its deadline",
    )
    parser.add_argument(
        "--stage-timeout",
        type=float,
        default=60.0,
        help="seconds a secure-aggregation stage waits for the gateways' messages",
    )
    parser.add_argument("--out", default=str(ROOT / "out"), help="output directory")
    parser.add_argument("--amqp-url", help="use this RabbitMQ instead of starting a private one")
    parser.add_argument(
        "--no-secure-aggregation",
        dest="secure_aggregation",
        action="store_false",
        help="plain rounds: workers open each update (robust rules possible)",
    )
    parser.add_argument(
        "--no-dp", dest="dp", action="store_false", help="no noise and no privacy accounting"
    )
    parser.add_argument("--clip", type=float, default=1.0, help="L2 clip of each update")
    # Gateway-level DP with three gateways: z = 1.0 (epsilon 12.3 after five rounds) drowned
    # the sum (accuracy 0.50); z = 0.5 (epsilon 30.1) kept 0.86 against 0.89 without noise,
    # where z = 0.02 spent an epsilon in the thousands (README, "Federated learning, and the demo").
    parser.add_argument(
        "--noise-multiplier", type=float, default=0.5, help="DP noise std / clip on the sum"
    )
    parser.add_argument("--delta", type=float, default=1e-5, help="delta epsilon is stated at")
    args = parser.parse_args(argv)
    if args.secure_aggregation and args.strategy != "fedavg":
        parser.error("robust rules need each update: use --no-secure-aggregation with them")
    if min(args.rounds, args.gateways, args.wearables, args.workers, args.epochs) < 1:
        parser.error("--rounds, --gateways, --wearables, --workers and --epochs must be >= 1")
    try:
        return run(args)
    except (DemoError, ServiceError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
