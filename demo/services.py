"""Private instances of the real brokers on free loopback ports, for the demo, tests and
benchmarks: each gets its own config and data directory, and is stopped by its owner."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


class ServiceError(Exception):
    """A broker could not be found, started or stopped."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll a TCP connect until it succeeds; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
        time.sleep(0.01)  # a poll interval, not a readiness guess: the loop has a deadline


def require_binary(path: str, package: str) -> str:
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if not found:
        raise ServiceError(
            f"{path} not found: install the Debian package '{package}' "
            f"(apt-get install {package}; `make test` does this for you)"
        )
    return found


class Mosquitto:
    """A private mosquitto on a free port with persistence in `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = require_binary("/usr/sbin/mosquitto", "mosquitto")
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            # queues of offline persistent sessions: generous, the gateway may be down a while
            "max_queued_messages 1000000\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 1000\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\n"
            f"{user}"
        )

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 -- fixed binary, our own config
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
