"""RabbitMQ topology shared by gateways and the aggregator: exchange and queue names and their
arguments, declared the same way on both sides."""

from __future__ import annotations

from typing import Any, Final

#: Durable queue of sealed model updates; crypto workers consume it as competing consumers.
UPDATES_QUEUE: Final = "iomt.updates"
#: Durable queue of partial sums from the crypto workers to the coordinator.
PARTIALS_QUEUE: Final = "iomt.partials"
#: Fanout exchange of signed global models; each gateway has its own durable queue on it.
GLOBAL_EXCHANGE: Final = "iomt.global"
#: Only the newest global models matter to a gateway that was offline.
GATEWAY_QUEUE_ARGUMENTS: Final[dict[str, Any]] = {"x-max-length": 4, "x-overflow": "drop-head"}


def gateway_queue(gateway_id: str) -> str:
    """The durable queue bound to the global exchange for one gateway."""
    return f"iomt.gateway.{gateway_id}"
