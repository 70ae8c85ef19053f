"""An idle gateway's cost: CPU per second and resident memory of the daemon with federated
learning on (connected to MQTT and RabbitMQ, no wearable sending, no round running), for this
tree and for a baseline revision of the project, alternated, in the same run.

The baseline is `git archive`d from the repository (default: main) into a temporary directory,
with this tree's built Ascon extension when the C sources are the same."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._timing import write
from gateway.cli import main as gateway_main
from pqlink import Identity, Registry, Role, save_public_identity, save_registry
from testbed import Mosquitto, RabbitMQ

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _baseline(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir()
    tar_path = into.parent / "baseline.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    ours, theirs = ROOT / "pqlink" / "_ascon.c", into / "pqlink" / "_ascon.c"
    if ours.read_bytes() != theirs.read_bytes():
        raise SystemExit(f"{ref}'s Ascon extension differs from this tree's: build it first")
    for built in (ROOT / "pqlink").glob("_ascon*.so"):
        shutil.copy(built, into / "pqlink" / built.name)
    return into


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _memory(pid: int) -> dict[str, float]:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    values = {}
    for line in rollup[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            values[key] = int(parts[0]) / 1024
    return {
        "rss_mb": round(values.get("Rss", 0.0), 1),
        "anonymous_mb": round(values.get("Anonymous", 0.0), 1),
        "file_backed_mb": round(values.get("Rss", 0.0) - values.get("Anonymous", 0.0), 1),
        # unique to the process (what stopping it would free) and its proportional share
        "uss_mb": round(values.get("Private_Clean", 0.0) + values.get("Private_Dirty", 0.0), 1),
        "pss_mb": round(values.get("Pss", 0.0), 1),
    }


def _owner(path: str) -> str:
    """Who a mapping belongs to: the installed package, the Python runtime, or the path."""
    if not path or path.startswith("["):
        return path or "[anonymous]"
    parts = Path(path).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        top = rest[0] if rest else path
        return top.split(".")[0].removesuffix("_libs")
    if "lib-dynload" in parts or "/python3" in path:
        return "python"
    if str(ROOT) in path:
        return parts[-2] if len(parts) > 1 else path
    return Path(path).name


def _composition(pid: int, top: int = 14) -> list[dict[str, Any]]:
    """Resident memory by owner (smaps): the largest first, with the part private to it."""
    rss: dict[str, float] = {}
    private: dict[str, float] = {}
    owner = "[anonymous]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            owner = _owner(" ".join(head[5:]))  # the sixth field on is the path, if any
        elif head and head[0] == "Rss:":
            rss[owner] = rss.get(owner, 0.0) + int(head[1]) / 1024
        elif head and head[0] in {"Private_Clean:", "Private_Dirty:"}:
            private[owner] = private.get(owner, 0.0) + int(head[1]) / 1024
    ranked = sorted(rss.items(), key=lambda kv: -kv[1])[:top]
    return [
        {"owner": k, "rss_mb": round(v, 1), "private_mb": round(private.get(k, 0.0), 1)}
        for k, v in ranked
    ]


def _status(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc


def run_gateway(
    tree: Path, work: Path, mqtt_port: int, amqp_url: str, window: float
) -> dict[str, Any]:
    work.mkdir(parents=True)
    conf = work / "gateway.toml"
    conf.write_text(
        f'[gateway]\nid = "gw-idle"\nstate_dir = "state"\n[mqtt]\nport = {mqtt_port}\n'
        f'[log]\njournal = "no"\nlevel = "warning"\n'
        f'[uplink]\namqp_url = "{amqp_url}"\naggregator_public = "aggregator.pub"\n'
    )
    if gateway_main(["keygen", "--config", str(conf)]) != 0:
        raise RuntimeError("gateway keygen failed")
    save_public_identity(
        Identity.generate("aggregator", Role.AGGREGATOR).public, work / "state" / "aggregator.pub"
    )
    save_registry(Registry(), work / "state" / "registry.json")  # no wearable is enrolled
    env = dict(os.environ, PYTHONPATH=str(tree))
    with (work / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(conf)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=tree,
        )
    try:
        status = work / "state" / "status.json"
        deadline = time.monotonic() + 120
        while not (
            _status(status).get("connected")
            and (_status(status).get("federation") or {}).get("uplink_connected")
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway in {tree} did not connect: see {work / 'daemon.log'}")
            time.sleep(0.2)  # poll interval of a bounded wait
        time.sleep(2.0)  # settle: start-up work (imports, first status writes) is not idle cost
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)  # the measurement window itself
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
        return {
            "cpu_ms_per_s": 1000 * (cpu1 - cpu0) / (t1 - t0),
            **_memory(proc.pid),
            "composition": _composition(proc.pid),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", default="main", help="git revision to compare with")
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"baseline": _baseline(args.baseline, tmp / "baseline"), "this_tree": ROOT}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        with Mosquitto(tmp / "mosquitto") as mqtt, RabbitMQ(tmp / "rabbitmq") as rabbit:
            for r in range(args.repeats):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for name in order:
                    # A vhost each: the trees may declare the same queues with other arguments.
                    vhost = f"{name}-{r}".replace("_", "-")
                    rabbit.ctl("add_vhost", vhost)
                    rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
                    url = f"amqp://guest:guest@127.0.0.1:{rabbit.amqp_port}/{vhost}"
                    work = tmp / f"{name}-{r}"
                    runs[name].append(run_gateway(trees[name], work, mqtt.port, url, args.window))
    summary = {
        name: {
            "cpu_ms_per_s": round(statistics.median(x["cpu_ms_per_s"] for x in rs), 2),
            "rss_mb": statistics.median(x["rss_mb"] for x in rs),
            "uss_mb": statistics.median(x["uss_mb"] for x in rs),
            "pss_mb": statistics.median(x["pss_mb"] for x in rs),
            "composition": rs[-1]["composition"],
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    doc = {
        "baseline": args.baseline,
        "window_s": args.window,
        "what": "gateway daemon idle with federated learning on: MQTT and AMQP connected",
        "results": summary,
    }
    for name, s in summary.items():
        print(
            f"{name:>10}: {s['cpu_ms_per_s']:6.2f} ms CPU per s, RSS {s['rss_mb']:.1f} MB, "
            f"USS {s['uss_mb']:.1f} MB, PSS {s['pss_mb']:.1f} MB"
        )
    write("idle", doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
