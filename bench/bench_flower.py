"""Side by side with Flower's deployment engine: the same 16-32-16-2 MLP, 100 windows per
client, one epoch, 10 nodes on loopback, Flower's rounds alternated with this project's.

Flower is installed once into bench/.flower-venv (its own virtual environment, reused later)
and runs as a SuperLink, ten SuperNodes and a ServerApp with FedAvg started by `flwr run`,
all with `--insecure` and telemetry off. Its rounds are timed inside the ServerApp (from the
strategy's configure_train to the end of its aggregate_train); this project's rounds are the
coordinator's open-to-close times of bench/bench_rounds.py's 10-gateway fleet, sealed and signed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import bench_rounds
from bench._timing import write
from device_emulators.profiles import make_profiles
from device_emulators.signals import VitalsGenerator
from gateway.features import WINDOW, build_windows
from testbed import Mosquitto, RabbitMQ
from wire.model import DEFAULT_INITIAL_WEIGHTS, WEIGHT_NAMES

HERE = Path(__file__).resolve().parent
FLOWER_VENV = HERE / ".flower-venv"
FLOWER_REQUIREMENT = "flwr==1.42.0"
NODES = 10
WINDOWS = 100
DEVICES = 4
SECURITY = {
    "flower": "insecure (no TLS, no auth)",
    "project": "sealed and signed: ML-KEM-768+X25519, ML-DSA-65, Ascon-AEAD128",
}

# The Flower app, written into a temporary directory: a NumPy copy of the gateway's SGD step
# (gateway/trainer.py's NumpyTrainer; Flower's environment cannot import this project).
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "iomtcompare"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "iomt"

[tool.flwr.app.components]
serverapp = "iomtcompare.server_app:app"
clientapp = "iomtcompare.client_app:app"

[tool.flwr.app.config]
num-server-rounds = {rounds}
data-dir = "{data}"
times-file = "{times}"
"""

# Flower >= 1.26 keeps SuperLink connections in $FLWR_HOME/config.toml, not in the app
FLOWER_CONFIG = """\
[superlink]
default = "bench"

[superlink.bench]
address = "127.0.0.1:{port}"
insecure = true
"""

APP_CLIENT = '''\
"""Flower ClientApp: one epoch of minibatch SGD on this node's 100 windows."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
BATCH, LR = 32, np.float32(0.05)


def _epoch(w, x, y, rng):
    order = rng.permutation(len(x))
    for s in range(0, len(x), BATCH):
        idx = order[s : s + BATCH]
        xb, yb = x[idx], y[idx]
        w1, b1, w2, b2, w3, b3 = w
        n = np.float32(len(xb))
        rows = np.arange(len(xb))
        z1 = xb @ w1 + b1
        h1 = np.maximum(z1, np.float32(0))
        z2 = h1 @ w2 + b2
        h2 = np.maximum(z2, np.float32(0))
        z3 = h2 @ w3 + b3
        z3 = z3 - z3.max(axis=1, keepdims=True)
        logp = z3 - np.log(np.exp(z3).sum(axis=1, keepdims=True))
        dz3 = np.exp(logp)
        dz3[rows, yb] -= np.float32(1)
        dz3 /= n
        dz2 = (dz3 @ w3.T) * (z2 > 0)
        dz1 = (dz2 @ w2.T) * (z1 > 0)
        grads = (xb.T @ dz1, dz1.sum(0), h1.T @ dz2, dz2.sum(0), h2.T @ dz3, dz3.sum(0))
        for a, g in zip(w, grads):
            np.subtract(a, LR * g, out=a)


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    data = np.load(f"{context.run_config['data-dir']}/client-{pid}.npz")
    x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    weights = [a.astype(np.float32).copy() for a in msg.content["arrays"].to_numpy_ndarrays()]
    _epoch(weights, x, y, np.random.default_rng(pid))
    content = RecordDict(
        {
            "arrays": ArrayRecord(weights),
            "metrics": MetricRecord({"num-examples": len(x)}),
        }
    )
    return Message(content=content, reply_to=msg)
'''

APP_SERVER = '''\
"""Flower ServerApp: FedAvg over every connected node, each round timed by the strategy."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, times_file, **kw):
        super().__init__(**kw)
        self.times_file = times_file
        self.opened = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.opened[server_round] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        closed = time.time()
        with open(self.times_file, "a") as fh:
            fh.write(json.dumps({"round": server_round, "opened": self.opened[server_round],
                                 "closed": closed, "replies": len(replies)}) + "\\n")
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    init = np.load(f"{cfg['data-dir']}/init.npz")
    arrays = ArrayRecord([init[k].astype(np.float32) for k in init.files])
    strategy = TimedFedAvg(
        str(cfg["times-file"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=NODES,
        min_available_nodes=NODES,
    )
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(cfg["num-server-rounds"]))
'''


class FlowerError(RuntimeError):
    """Flower could not be installed, started or run."""


def flower_python() -> Path:
    """The Flower environment's interpreter, creating the environment on first use."""
    python = FLOWER_VENV / "bin" / "python"
    pinned = FLOWER_REQUIREMENT.split("==")[1]
    installed = (FLOWER_VENV / "bin" / "flower-superlink").exists()
    if not installed or flower_version(python) != pinned:  # a stale environment: the pin wins
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", FLOWER_REQUIREMENT], check=True)
    return python


def flower_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import flwr; print(flwr.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def client_windows(client: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The windows bench_rounds stores on gateway `client`: four wearables' vitals from the
    device emulator, cut by the gateway's own feature code."""
    samples = WINDOWS * WINDOW // DEVICES
    start_ms = int((time.time() - 3 * 3600) * 1000)
    xs, ys = [], []
    for n, profile in enumerate(make_profiles(DEVICES, 100 + client)):
        gen = VitalsGenerator(
            profile, seed=client * 10 + n, start_ms=start_ms, event_rate_per_hour=30
        )
        x, y = build_windows(list(gen.samples(samples)))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_HOME"] = str(home)
    env.pop("PYTHONPATH", None)
    # SuperLink and SuperNodes start flower-superexec and the apps by name
    env["PATH"] = os.pathsep.join([str(FLOWER_VENV / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(FLOWER_VENV)
    return env


class FlowerFederation:
    """A SuperLink and `nodes` SuperNodes on loopback, insecure; stopped on exit."""

    def __init__(self, python: Path, root: Path, nodes: int) -> None:
        self.bin = python.parent
        self.root = root
        self.nodes = nodes
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _free_port()

    def _spawn(self, name: str, *args: str) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as fh:
            self.procs.append(
                subprocess.Popen(
                    args,
                    stdout=fh,
                    stderr=fh,
                    cwd=self.root,
                    env=_flower_env(self.root / "home"),
                    start_new_session=True,
                )
            )

    def __enter__(self) -> FlowerFederation:
        # one HTTP port carries the Fleet, Control and runtime APIs in Flower 1.42; state in
        # memory, as a SQLite file on this loaded machine failed rounds with "database is locked"
        self._spawn(
            "superlink",
            str(self.bin / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        )
        self._wait_port(self.port)
        for i in range(self.nodes):
            self._spawn(
                f"supernode-{i}",
                str(self.bin / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={i} num-partitions={self.nodes}",
            )
        return self

    def _wait_port(self, port: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if any(p.poll() is not None for p in self.procs):
                raise FlowerError(f"a Flower process exited; see {self.root / 'logs'}")
            if time.monotonic() > deadline:
                raise FlowerError(f"port {port} not listening after {timeout:.0f} s")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []


def flower_rounds(python: Path, tmp: Path, rounds: int, run: int) -> list[float]:
    """One Flower run of `rounds` rounds on a fresh federation; each round's seconds."""
    root = tmp / f"flower-{run}"
    data = root / "data"
    data.mkdir(parents=True)
    for c in range(NODES):
        x, y = client_windows(c)
        np.savez(data / f"client-{c}.npz", x=x, y=y)
    init = np.load(DEFAULT_INITIAL_WEIGHTS)
    np.savez(data / "init.npz", **{k: init[k] for k in WEIGHT_NAMES})
    times = root / "times.jsonl"
    app = root / "app"
    (app / "iomtcompare").mkdir(parents=True)
    (app / "iomtcompare" / "__init__.py").write_text("")
    (app / "iomtcompare" / "client_app.py").write_text(APP_CLIENT)
    (app / "iomtcompare" / "server_app.py").write_text(APP_SERVER.replace("NODES", str(NODES)))
    with FlowerFederation(python, root, NODES) as fed:
        (app / "pyproject.toml").write_text(
            APP_PYPROJECT.format(rounds=rounds, data=data, times=times)
        )
        (root / "home").mkdir(exist_ok=True)
        (root / "home" / "config.toml").write_text(FLOWER_CONFIG.format(port=fed.port))
        with (root / "logs" / "flwr-run.log").open("ab") as fh:
            subprocess.run(
                [str(python.parent / "flwr"), "run", str(app), "bench", "--stream"],
                stdout=fh,
                stderr=fh,
                env=_flower_env(root / "home"),
                cwd=app,
                check=True,
                timeout=60 * rounds + 300,
            )
        # `flwr run` may stop streaming before the run ends: the ServerApp's file is the truth
        deadline = time.monotonic() + 120 * rounds + 120
        while _count(times) < rounds:
            if time.monotonic() > deadline:
                raise FlowerError(f"{_count(times)} of {rounds} Flower rounds; see {root}/logs")
            time.sleep(0.1)
    rows = [json.loads(line) for line in times.read_text().splitlines()]
    if any(r["replies"] != NODES for r in rows):
        raise FlowerError(f"a Flower round had fewer than {NODES} replies: {rows}")
    return [r["closed"] - r["opened"] for r in rows]


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def spread(xs: list[float]) -> dict[str, float | int]:
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {
        "rounds_counted": len(xs),
        "median_round_seconds": statistics.median(xs),
        "p25_round_seconds": q[0],
        "p75_round_seconds": q[2],
        "min_round_seconds": min(xs),
        "max_round_seconds": max(xs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory for flower.json")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run")
    parser.add_argument("--repeats", type=int, default=2, help="Flower/project run pairs")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    python = flower_python()
    version = flower_version(python)
    print(f"flwr {version} in {FLOWER_VENV}", flush=True)
    flower: list[float] = []
    project: list[float] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="iomt-flower-") as d:
        tmp = Path(d)
        with Mosquitto(tmp / "mosquitto") as mq, RabbitMQ(tmp / "rabbitmq") as rabbit:
            for rep in range(args.repeats):
                f = flower_rounds(python, tmp, args.rounds, rep)
                # Flower's first round also pays for starting each node's ClientApp process
                flower += f[1:]
                print(f"  run {rep + 1}: Flower median {statistics.median(f[1:]):.2f} s")
                url = bench_rounds._vhost(rabbit, f"flower-cmp-{rep}")
                r = bench_rounds.full_rounds(
                    tmp,
                    mq.port,
                    url,
                    NODES,
                    args.rounds + bench_rounds.WARMUP_ROUNDS,
                    plaintext=False,
                    windows_per_gateway=WINDOWS,
                    run=rep,
                )
                project += r["steady_round_seconds"]
                print(
                    f"  run {rep + 1}: project median "
                    f"{statistics.median(r['steady_round_seconds']) * 1000:.0f} ms",
                    flush=True,
                )
                runs.append(
                    {"flower_round_seconds": f, "project_round_seconds": r["round_seconds"]}
                )
    speedup = statistics.median(flower) / statistics.median(project)
    print(f"speedup (Flower median round / project's): {speedup:.1f}x")
    write(
        "flower",
        {
            "nodes": NODES,
            "windows_per_client": WINDOWS,
            "epochs": 1,
            "model": "16-32-16-2 MLP, NumPy float32 SGD, batch 32, lr 0.05",
            "versions": {"flwr": version, "python": sys.version.split()[0]},
            "security": SECURITY,
            "flower": {
                **spread(flower),
                "security": SECURITY["flower"],
                "timed": "ServerApp: FedAvg configure_train start to aggregate_train end",
                "note": "first round of each run left out (ClientApp process start)",
            },
            "project": {
                **spread(project),
                "security": SECURITY["project"],
                "timed": "coordinator: round opened to round closed",
                "note": f"first {bench_rounds.WARMUP_ROUNDS} rounds of each run left out",
            },
            "runs": runs,
            "speedup": speedup,
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        },
        str(Path(args.out) / "flower.json"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
