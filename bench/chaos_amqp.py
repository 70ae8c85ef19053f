"""The AMQP half of the fault suite: federated rounds through a real RabbitMQ, coordinator and
crypto workers, with gateways (their own spool and uplink) behind pausable TCP proxies.

Per fault: updates sent, counted, lost, double-counted, and the time to recover. Every gateway
sends a known delta, so a double-counted update shows in the global model's step; rounds need
every gateway (quorum 1.0), so a lost update would stall a round past its long deadline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.cli import main as aggregator_main
from aggregator.coordinator import initial_weights
from pqlink import Identity, Role, save_identity, save_public_identity
from testbed.rabbitmq import RabbitMQ
from testbed.tcp_proxy import PausableProxy
from wire.amqp import UPDATES_QUEUE
from wire.model import DEFAULT_INITIAL_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
GATEWAYS = 3
#: Every weight of gateway i (from 1) moves by i * DELTA: the mean step of a round is
#: DELTA * (n + 1) / 2, and any update counted twice shifts it.
DELTA = 1e-4


@dataclass(frozen=True)
class AmqpRow:
    fault: str
    fault_seconds: float
    gateways: int
    rounds_closed: int
    updates_sent: int
    updates_counted: int
    updates_lost: int
    updates_double_counted: int
    recover_seconds: float | None
    notes: str


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # poll interval of a bounded wait


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )


class Federation:
    """An aggregator (coordinator, workers) and gateways on one virtual host of `node`."""

    def __init__(
        self,
        root: Path,
        node: RabbitMQ,
        *,
        workers: int = 2,
        batch_wait: float = 0.5,
        keep_rounds: int = 1000,
    ) -> None:
        self.root = root
        self.node = node
        self.vhost = f"chaos-{root.name}"
        node.ctl("add_vhost", self.vhost)
        node.ctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.url = f"amqp://guest:guest@127.0.0.1:{node.amqp_port}/{self.vhost}"
        agg = root / "aggregator"
        agg.mkdir(parents=True)
        self.config = agg / "aggregator.toml"
        self.config.write_text(
            f'[aggregator]\nid = "aggregator"\nstate_dir = "state"\n[amqp]\nurl = "{self.url}"\n'
            "[rounds]\nquorum_fraction = 1.0\nround_timeout = 900.0\n"
            f"keep_rounds = {keep_rounds}\n"
            f"[worker]\nbatch_wait = {batch_wait}\nbatch_max = 64\n[metrics]\nport = 0\n"
        )
        self.state = agg / "state"
        self.db_path = self.state / "coordinator.sqlite3"
        with contextlib.redirect_stdout(None):
            assert aggregator_main(["keygen", "--config", str(self.config)]) == 0
        self.parameters = int(initial_weights(DEFAULT_INITIAL_WEIGHTS).size)
        self.gateway_dirs: list[Path] = []
        pubs = []
        for i in range(1, GATEWAYS + 1):
            gw = Identity.generate(f"gw-{i}", Role.GATEWAY)
            d = root / gw.name
            d.mkdir()
            save_identity(gw, d / "identity.key")
            save_public_identity(gw.public, d / "identity.pub")
            pubs.append(str(d / "identity.pub"))
            self.gateway_dirs.append(d)
        with contextlib.redirect_stdout(None):
            assert aggregator_main(["enroll", "--config", str(self.config), *pubs]) == 0
        self.proxies = [PausableProxy(node.amqp_port) for _ in self.gateway_dirs]
        for proxy in self.proxies:
            proxy.start()
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.gateways: list[subprocess.Popen[bytes] | None] = [None] * GATEWAYS
        self.batch_wait = batch_wait

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", *argv], stdout=log, stderr=log, env=_env(), cwd=ROOT
            )

    def start_coordinator(self) -> None:
        self.coordinator = self._spawn(
            "coordinator", ["aggregator.cli", "coordinator", "--config", str(self.config)]
        )

    def start_worker(self, i: int) -> None:
        self.workers[i] = self._spawn(
            f"worker-{i}",
            ["aggregator.cli", "worker", "--config", str(self.config), "--name", f"w{i}"],
        )

    def start_gateway(self, i: int, pace: float) -> None:
        d = self.gateway_dirs[i]
        proxy_url = f"amqp://guest:guest@127.0.0.1:{self.proxies[i].port}/{self.vhost}"
        self.gateways[i] = self._spawn(
            d.name,
            [
                "bench.amqp_gateway",
                *("--identity", str(d / "identity.key")),
                *("--aggregator-pub", str(self.state / "identity.pub")),
                *("--url", proxy_url, "--dir", str(d)),
                *("--delta", repr((i + 1) * DELTA), "--parameters", str(self.parameters)),
                *("--pace", str(pace)),
            ],
        )

    def start(self, pace: float) -> None:
        self.start_coordinator()
        for i in range(len(self.workers)):
            self.start_worker(i)
        for i in range(GATEWAYS):
            self.start_gateway(i, pace)

    def pids(self) -> dict[str, int]:
        out = {}
        procs = [("coordinator", self.coordinator)]
        procs += [(f"worker-{i}", w) for i, w in enumerate(self.workers)]
        for name, proc in procs:
            if proc is not None and proc.poll() is None:
                out[name] = proc.pid
        return out

    def db(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if not self.db_path.exists():
            return []
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def closed_round(self) -> int:
        rows = self.db("SELECT MAX(round) FROM rounds WHERE closed IS NOT NULL")
        return int(rows[0][0] or 0) if rows else 0

    def unacked_updates(self) -> int:
        out = self.node.ctl(
            "list_queues", "-p", self.vhost, "name", "messages_unacknowledged", "--quiet"
        )
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == UPDATES_QUEUE:
                return int(parts[1])
        return 0

    def sent(self) -> set[tuple[int, str]]:
        out = set()
        for d in self.gateway_dirs:
            path = d / "sent.jsonl"
            if path.exists():
                for line in path.read_text().splitlines():
                    out.add((int(json.loads(line)["round"]), d.name))
        return out

    def stop(self) -> None:
        procs = [*self.gateways, *self.workers, self.coordinator]
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            if p is None:
                continue
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for proxy in self.proxies:
            proxy.stop()
        with contextlib.suppress(Exception):
            self.node.ctl("delete_vhost", self.vhost)

    def tally(self, last_round: int) -> tuple[int, int, int, int]:
        """(sent, counted, lost, double-counted) over rounds 1..last_round."""
        sent = {s for s in self.sent() if s[0] <= last_round}
        counted = {
            (int(r), str(g))
            for r, g in self.db(
                "SELECT round, gateway FROM contributions WHERE round <= ?", last_round
            )
        }
        double = 0
        models = self.db("SELECT version, round, weights FROM models ORDER BY version")
        previous: np.ndarray[Any, np.dtype[np.float32]] | None = None
        for _, rnd, blob in models:
            weights = np.frombuffer(blob, np.float32)
            if previous is not None and 0 < rnd <= last_round:
                who = [g for r, g in counted if r == rnd]
                expected = np.mean([int(g.split("-")[1]) * DELTA for g in who]) if who else 0.0
                # float32 steps: a tolerance far below one gateway's share of the mean
                if not np.allclose(weights - previous, expected, atol=DELTA / 20):
                    double += 1
            previous = weights
        return len(sent), len(sent & counted), len(sent - counted), double


Fault = Callable[[Federation, float, float], str]


def no_fault(fed: Federation, seconds: float, pace: float) -> str:
    time.sleep(seconds)  # the run itself: rounds proceed this long
    return f"rounds without a fault for {seconds:.0f} s"


def cut_gateway(fed: Federation, seconds: float, pace: float) -> str:
    proxy = fed.proxies[0]
    proxy.cut()
    time.sleep(seconds)  # the fault itself: gw-1 cannot reach RabbitMQ this long
    stalled = fed.closed_round()
    proxy.heal()
    return (
        f"gw-1 cut from RabbitMQ {seconds:.0f} s ({proxy.refused} reconnects refused); "
        f"rounds stalled at {stalled}"
    )


def kill_worker(fed: Federation, seconds: float, pace: float) -> str:
    held = [0]

    def holding() -> bool:
        held[0] = fed.unacked_updates()
        return held[0] > 0

    wait_for(holding, 60, "a worker to hold updates")
    proc = fed.workers[0]
    assert proc is not None
    proc.kill()  # SIGKILL while the workers hold unacknowledged updates
    proc.wait()
    time.sleep(seconds)  # the fault itself: the worker stays down this long
    fed.start_worker(0)
    return (
        f"worker w0 SIGKILLed while the workers held {held[0]} unacknowledged updates, "
        f"restarted after {seconds:.0f} s"
    )


def kill_coordinator(fed: Federation, seconds: float, pace: float) -> str:
    proc = fed.coordinator
    assert proc is not None
    opened = fed.closed_round() + 1
    proc.kill()  # SIGKILL mid-round
    proc.wait()
    time.sleep(seconds)  # the fault itself
    fed.start_coordinator()
    return f"coordinator SIGKILLed in round {opened}, restarted after {seconds:.0f} s"


FAULTS: dict[str, Fault] = {
    "amqp_baseline": no_fault,
    "gateway_cut_from_rabbitmq": cut_gateway,
    "worker_killed": kill_worker,
    "coordinator_killed": kill_coordinator,
}


def run_amqp_fault(
    name: str,
    seconds: float,
    work: Path,
    node: RabbitMQ,
    *,
    pace: float = 0.5,
    workers: int = 2,
    rounds_around: int = 3,
) -> AmqpRow:
    """Run `rounds_around` rounds, the fault, the round it stalled, `rounds_around` more."""
    # Killing a worker: batches wait longer, so that it dies holding updates.
    batch_wait = 2.0 if name == "worker_killed" else 0.5
    fed = Federation(work / name, node, workers=workers, batch_wait=batch_wait)
    try:
        fed.start(pace)
        wait_for(lambda: fed.closed_round() >= rounds_around, 120, "rounds before the fault")
        notes = FAULTS[name](fed, seconds, pace)
        t_end = time.monotonic()
        open_at_end = fed.closed_round() + 1
        recover: float | None
        try:
            # Recovered once the round open when the fault ended has closed, with everyone.
            wait_for(lambda: fed.closed_round() >= open_at_end, 300, "the round to close")
            recover = round(time.monotonic() - t_end, 1)
        except TimeoutError:
            recover = None
        last = fed.closed_round()
        # Rounds after the recovery, so that what the fault delayed had time to arrive.
        wait_for(lambda: fed.closed_round() >= last + rounds_around, 120, "rounds after it")
        last = fed.closed_round()
        fed.stop()
        sent, counted, lost, double = fed.tally(last)
        return AmqpRow(
            fault=name,
            fault_seconds=seconds if name != "amqp_baseline" else 0.0,
            gateways=GATEWAYS,
            rounds_closed=last,
            updates_sent=sent,
            updates_counted=counted,
            updates_lost=lost,
            updates_double_counted=double,
            recover_seconds=recover if name != "amqp_baseline" else None,
            notes=notes,
        )
    finally:
        fed.stop()
