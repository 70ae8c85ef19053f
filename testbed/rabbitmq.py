"""A private RabbitMQ node on free loopback ports with its own data directory and its own
epmd, for the demo, tests and benchmarks; started and stopped by its owner."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from testbed.process import ServiceError, free_port, require_binary

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def _amqp_ready(port: int) -> bool:
    """True once the node answers the AMQP 0-9-1 header with a Connection.Start frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(_AMQP_HEADER)
            first = sock.recv(1)
    except OSError:
        return False
    return first == b"\x01"  # frame type METHOD


class RabbitMQ:
    """Call the real server script directly (never the /usr/sbin wrappers, which switch user)."""

    def __init__(
        self,
        workdir: Path,
        *,
        amqp_port: int | None = None,
        plugins: tuple[str, ...] = (),
        memory_mib: int = 512,
    ) -> None:
        self.server = require_binary(SERVER, "rabbitmq-server")
        self.epmd_binary = require_binary("epmd", "erlang-base")
        self.workdir = workdir
        self.amqp_port = amqp_port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"iomt{self.amqp_port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        for sub in ("home", "mnesia", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "rabbitmq.conf").write_text(
            # The memory alarm blocks publishers: a test broker stays small unless a benchmark
            # of thousands of queues asks for more.
            f"vm_memory_high_watermark.absolute = {memory_mib}MiB\n"
            "disk_free_limit.absolute = 50MB\n"
            "log.console = false\n"
        )
        (workdir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (workdir / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(workdir / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    def _log_tail(self, n: int = 15) -> str:
        logs = sorted((self.workdir / "log").glob("*.log"))
        if not logs:
            return "(no log)"
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-n:])

    def start(self, timeout: float = 90.0) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            # Our own epmd in the foreground, so we know its PID and can stop it: an epmd
            # started by the node would outlive the broker.
            self.epmd = subprocess.Popen(  # noqa: S603 -- fixed binary
                [self.epmd_binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        with (self.workdir / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 -- fixed binary
                [self.server], env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not _amqp_ready(self.amqp_port):
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"RabbitMQ exited with {self.proc.returncode}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"RabbitMQ not ready after {timeout} s:\n{self._log_tail()}")
            time.sleep(0.1)  # poll interval of a bounded wait

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: SIGTERM to the node's process group, then its epmd."""
        proc = self.proc
        if proc is not None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait()
            self.proc = None
        if self.epmd is not None:
            self.epmd.terminate()
            self.epmd.wait(10)
            self.epmd = None

    def kill(self) -> None:
        """A crash: SIGKILL the node (epmd stays, as it would on a host)."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Same ports and data: durable queues and persistent messages survive."""
        if self.proc is not None:
            self._signal_group(signal.SIGTERM)
            self.proc.wait(30)
            self.proc = None
        self.start()

    def ctl(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603 -- fixed binary
            [CTL, "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def __enter__(self) -> RabbitMQ:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
