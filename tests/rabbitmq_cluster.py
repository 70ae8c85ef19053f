"""A private three-node RabbitMQ cluster on one machine: three Debian rabbitmq-server nodes with
their own ports, node names and data, one shared Erlang cookie and epmd, joined by join_cluster."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from types import TracebackType

from testbed import RabbitMQ, ServiceError, free_port


class RabbitMQCluster:
    """Nodes are `RabbitMQ` instances re-pointed at a shared cookie and epmd; the first node
    is the seed the others join."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        self.epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        self.nodes: list[RabbitMQ] = []
        for i in range(size):
            node = RabbitMQ(workdir / f"node{i}")
            # Distribution finds peers through one epmd, and admits them with one cookie.
            node.epmd_port = self.epmd_port
            node.env["ERL_EPMD_PORT"] = str(self.epmd_port)
            cookie_file = workdir / f"node{i}" / "home" / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """Every node's AMQP URL, comma-separated: what clients are configured with."""
        return ",".join(n.url for n in self.nodes)

    def vhost_url(self, vhost: str, nodes: list[RabbitMQ] | None = None) -> str:
        return ",".join(
            f"amqp://guest:guest@127.0.0.1:{n.amqp_port}/{vhost}" for n in (nodes or self.nodes)
        )

    def start(self, timeout: float = 180.0) -> None:
        seed, *others = self.nodes
        seed.start(timeout)
        for node in others:
            node.start(timeout)
            node.ctl("stop_app")
            node.ctl("reset")
            node.ctl("join_cluster", seed.node)
            node.ctl("start_app")
        self.wait_members(len(self.nodes), timeout)

    def running_members(self, via: RabbitMQ | None = None) -> set[str]:
        node = via or next(n for n in self.nodes if n.proc is not None)
        out = node.ctl("eval", "rabbit_nodes:all_running().")
        return {
            name.strip(" '")
            for name in out.strip().strip("[]").replace("\n", "").split(",")
            if name.strip()
        }

    def wait_members(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                members = self.running_members()
            except subprocess.CalledProcessError:
                members = set()
            if len(members) >= count:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"cluster has {sorted(members)} running, wanted {count}")
            time.sleep(0.5)  # poll interval of a bounded wait (each probe costs a CLI VM)

    def stop(self) -> None:
        # The seed's epmd serves every node: stop it last.
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self) -> RabbitMQCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
