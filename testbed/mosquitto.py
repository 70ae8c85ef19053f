"""A private mosquitto on a free loopback port, for the demo, tests and benchmarks: its own
config and persistence directory, stopped by its owner."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from testbed.process import free_port, require_binary, wait_for_port


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """PEM files for a TLS listener: the CA that signed the clients' certificates (and the
    server's), the server certificate and its key."""

    ca: Path
    cert: Path
    key: Path
    require_client_cert: bool = False


class Mosquitto:
    """A private mosquitto on a free port with persistence in `workdir`; with `tls`, also a
    TLS 1.3 listener on `tls_port`. mosquitto has no groups option: it offers OpenSSL's
    default groups, which include X25519MLKEM768 from OpenSSL 3.5 on."""

    def __init__(
        self, workdir: Path, port: int | None = None, tls: BrokerTls | None = None
    ) -> None:
        self.binary = require_binary("/usr/sbin/mosquitto", "mosquitto")
        self.workdir = workdir
        self.port = port or free_port()
        self.tls_port = free_port() if tls is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        tls_listener = ""
        if tls is not None:
            # Settings after a listener line belong to that listener.
            tls_listener = (
                f"listener {self.tls_port} 127.0.0.1\n"
                f"cafile {tls.ca}\ncertfile {tls.cert}\nkeyfile {tls.key}\n"
                "tls_version tlsv1.3\n"
                f"require_certificate {str(tls.require_client_cert).lower()}\n"
            )
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{tls_listener}"
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
        if self.tls_port is not None:
            wait_for_port(self.tls_port, timeout, self.proc)

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
