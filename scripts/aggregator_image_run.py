"""One federated round with the aggregator from its image: coordinator and crypto worker as
podman containers, a private RabbitMQ and mosquitto, one gateway daemon from .venv.

Run by scripts/aggregator-image-check.sh after the build; prints a JSON report on stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_emulators.profiles import make_profiles  # noqa: E402
from device_emulators.signals import VitalsGenerator  # noqa: E402
from gateway.cli import main as gateway_main  # noqa: E402
from gateway.store import VitalsStore, vitals_row  # noqa: E402
from testbed.mosquitto import Mosquitto  # noqa: E402
from testbed.rabbitmq import RabbitMQ  # noqa: E402 -- after sys.path is set

UID = 10001  # the image's user


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 -- podman from PATH, our own arguments
        ["podman", "--runtime", os.environ.get("PODMAN_RUNTIME", "runc"), *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


def container(image: str, state: Path, name: str, *args: str, detach: bool = False) -> str:
    """`iomt-aggregator ARGS` in the image as in K3s: read-only root, state in a volume."""
    tmpfs = "/tmp"  # noqa: S108 -- a tmpfs of the container's own
    opts = ["--network", "host", "--read-only", "--tmpfs", tmpfs, "-v", f"{state}:/state"]
    opts += os.environ.get("IOMT_PODMAN_LIMITS", "").split()  # see aggregator-image-check.sh
    if detach:
        return podman("run", "-d", "--name", name, *opts, image, *args).stdout.strip()
    return podman("run", "--rm", "--name", name, *opts, image, *args).stdout


def wait_for(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # poll interval of a bounded wait


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", required=True)
    parser.add_argument("--logs", type=Path, required=True)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="iomt-image-run-"))
    report: dict[str, object] = {"image": args.image}
    names = [f"iomt-check-coordinator-{os.getpid()}", f"iomt-check-worker-{os.getpid()}"]
    gateway: subprocess.Popen[bytes] | None = None
    rabbit = RabbitMQ(work / "rabbitmq")
    mosquitto = Mosquitto(work / "mosquitto")
    try:
        rabbit.start()
        mosquitto.start()
        t0 = time.monotonic()
        state = work / "aggregator"
        state.mkdir()
        (state / "aggregator.toml").write_text(
            '[aggregator]\nid = "aggregator"\nstate_dir = "/state/state"\n'
            f'[amqp]\nurl = "{rabbit.url}"\n'
            "[rounds]\nquorum_fraction = 1.0\nround_timeout = 60.0\nmax_rounds = 1\n"
            "[training]\nepochs = 1\nbatch_size = 32\nlearning_rate = 0.1\n"
        )
        os.chown(state, UID, UID)
        (state / "aggregator.toml").chmod(0o644)
        print(
            container(
                args.image, state, "iomt-check-keygen", "keygen", "-c", "/state/aggregator.toml"
            ),
            file=sys.stderr,
        )

        gw = work / "gw-01"
        (gw / "state").mkdir(parents=True)
        gw_conf = gw / "gateway.toml"
        gw_conf.write_text(
            f'[gateway]\nid = "gw-01"\nstate_dir = "state"\n[mqtt]\nport = {mosquitto.port}\n'
            f'[uplink]\namqp_url = "{rabbit.url}"\naggregator_public = "aggregator.pub"\n'
            '[log]\njournal = "no"\n[learning]\nmax_cpu_load = 1.0\n'
        )
        shutil.copy(state / "state" / "identity.pub", gw / "state" / "aggregator.pub")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON report only
            assert gateway_main(["keygen", "--config", str(gw_conf)]) == 0
        shutil.copy(gw / "state" / "identity.pub", state / "gw-01.pub")
        os.chown(state / "gw-01.pub", UID, UID)
        print(
            container(
                args.image,
                state,
                "iomt-check-enroll",
                "enroll",
                "-c",
                "/state/aggregator.toml",
                "/state/gw-01.pub",
            ),
            file=sys.stderr,
        )
        start_ms = int((time.time() - 3600) * 1000)
        with VitalsStore(gw / "state" / "vitals.sqlite3") as store:
            for n, profile in enumerate(make_profiles(4, 5)):
                gen = VitalsGenerator(profile, seed=n, start_ms=start_ms, event_rate_per_hour=30)
                store.commit([vitals_row(f"wearable-{n}", s, 0) for s in gen.samples(300)])

        container(
            args.image,
            state,
            names[1],
            "worker",
            "-c",
            "/state/aggregator.toml",
            "--name",
            "worker-1",
            detach=True,
        )
        container(
            args.image, state, names[0], "coordinator", "-c", "/state/aggregator.toml", detach=True
        )
        with (args.logs / "gateway.log").open("wb") as log:
            gateway = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw_conf)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        rounds = state / "state" / "rounds.jsonl"

        def coordinator_exited() -> bool:
            out = podman("inspect", names[0], "--format", "{{.State.Status}}").stdout.strip()
            return out == "exited"

        wait_for("the coordinator to close its round and exit", coordinator_exited, 180)
        code = int(podman("inspect", names[0], "--format", "{{.State.ExitCode}}").stdout)
        closed = [json.loads(line) for line in rounds.read_text().splitlines()]
        report.update(
            coordinator_exit=code,
            seconds=round(time.monotonic() - t0, 1),
            rounds=[
                {k: r[k] for k in ("round", "reason", "participants", "samples", "version")}
                for r in closed
            ],
        )
        ok = code == 0 and len(closed) == 1 and closed[0]["participants"] == ["gw-01"]
        report["passed"] = ok
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    finally:
        for name in names:
            (args.logs / f"{name.rsplit('-', 1)[0]}.log").write_text(
                podman("logs", name, check=False).stdout + podman("logs", name, check=False).stderr
            )
            podman("rm", "-f", "-t", "5", name, check=False)
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(30)
        mosquitto.stop()
        rabbit.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
