"""A private mosquitto on a free loopback port, for the demo, tests and benchmarks: its own
config and persistence directory, stopped by its owner."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from testbed.process import free_port, require_binary, wait_for_port


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
