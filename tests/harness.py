"""Test harness for the gateway daemon and the emulators as real processes against a real
mosquitto: config files, identities, enrolment, start/stop/kill, and reading the store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_emulators.cli import main as emulate_main
from gateway.cli import main as gateway_main
from gateway.config import GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str, hint: str) -> str:
    """A console script of the test's environment, else `name` on PATH; fail (never skip) with
    `hint` saying how to install it."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {hint}")
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # poll interval of a bounded wait


@dataclass
class GatewaySetup:
    root: Path
    config_path: Path
    config: GatewayConfig
    keys_dir: Path

    @property
    def gateway_pub(self) -> Path:
        return self.config.identity.with_suffix(".pub")


def make_gateway(
    root: Path, broker_port: int, gateway_id: str = "gw-01", extra: str = ""
) -> GatewaySetup:
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "gateway.toml"
    config_path.write_text(
        f'[gateway]\nid = "{gateway_id}"\nstate_dir = "state"\n\n'
        f'[mqtt]\nport = {broker_port}\n\n[log]\njournal = "no"\nlevel = "info"\n{extra}'
    )
    assert gateway_main(["keygen", "--config", str(config_path)]) == 0
    return GatewaySetup(root, config_path, load_config(config_path), root / "wearable-keys")


def enroll(setup: GatewaySetup, devices: int, first: int = 1, prefix: str = "wearable") -> None:
    code = emulate_main(
        [
            "enroll",
            "--registry",
            str(setup.config.registry),
            "--keys-dir",
            str(setup.keys_dir),
            "--devices",
            str(devices),
            "--first",
            str(first),
            "--prefix",
            prefix,
        ]
    )
    assert code == 0


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class DaemonProcess:
    """`iomt-gateway run` in a subprocess; stderr (logfmt events) goes to a file."""

    def __init__(self, setup: GatewaySetup, env: dict[str, str] | None = None) -> None:
        self.setup = setup
        self.log_path = setup.root / "daemon.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(setup.config_path)],
            stdout=self._log,
            stderr=self._log,
            env=_env(env),
            cwd=ROOT,
        )

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.setup.config.status_path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if doc.get("pid") == self.proc.pid else {}

    def wait_connected(self, timeout: float = 20.0) -> None:
        def connected() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}: {self.log_tail()}"
                )
            return bool(self.status().get("connected"))

        wait_until(connected, timeout, "the daemon to connect to the broker")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self._wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self._wait(10)

    def _wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self._log.close()
        return code

    def stop_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class EmulatorProcess:
    """`iomt-emulate run` in a subprocess, writing a JSON summary when done."""

    def __init__(
        self,
        setup: GatewaySetup,
        broker_port: int,
        devices: int,
        records: int,
        rate: float,
        *extra: str,
        first: int = 1,
        seed: int = 7,
    ) -> None:
        self.summary_path = setup.root / f"emulator-{first}-{seed}.json"
        self.log_path = setup.root / f"emulator-{first}-{seed}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "device_emulators.cli",
                "run",
                "--keys-dir",
                str(setup.keys_dir),
                "--gateway-pub",
                str(setup.gateway_pub),
                "--port",
                str(broker_port),
                "--devices",
                str(devices),
                "--first",
                str(first),
                "--records",
                str(records),
                "--rate",
                str(rate),
                "--seed",
                str(seed),
                "--summary",
                str(self.summary_path),
                *extra,
            ],
            stdout=self._log,
            stderr=self._log,
            env=_env(),
            cwd=ROOT,
        )

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"emulator did not finish in {timeout} s: {self.log_tail()}"
            ) from None
        finally:
            self._log.close()
        assert code == 0, self.log_tail()
        summary: dict[str, Any] = json.loads(self.summary_path.read_text())
        return summary

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def stored_rows(setup: GatewaySetup) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{setup.config.db_path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT device_id, seq, ts_ms, heart_rate, spo2, skin_temp, accel, activity, label "
            "FROM vitals ORDER BY device_id, seq"
        ).fetchall()
    finally:
        db.close()


def stored_count(setup: GatewaySetup) -> int:
    if not setup.config.db_path.exists():
        return 0
    db = sqlite3.connect(f"file:{setup.config.db_path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM vitals").fetchone()[0])
    finally:
        db.close()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted on `path` (a real full disk: ENOSPC), owned by this user.
    Mounting needs root: as another user it goes through passwordless sudo, and without either
    the test fails saying so."""
    options = f"size={size},uid={os.geteuid()},gid={os.getegid()},mode=0700"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    mount = subprocess.run(
        [*sudo, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.fail(
            f"mounting a {size} tmpfs needs root or passwordless sudo (mount said: "
            f"{mount.stderr.strip() or mount.returncode})"
        )
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], check=True)
