"""Broker bytes of one global-model announcement per gateway, at 10 and 100 gateways: the
sealed broadcast (one body into the global-model stream, one key entry addressed to each
gateway) against the multi-recipient envelope it replaces (every key slot in the one copy each
gateway receives).

Both are published through a private RabbitMQ exactly as the coordinator does and read back as
each gateway reads them (the stream from its own consumer, the entry from its queue); the
figures are AMQP message-body bytes (framing excluded), into the broker, stored by it and out
of it, per gateway."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pika

from aggregator.coordinator import initial_weights, publish_broadcast
from aggregator.worker import PERSISTENT, declare_topology
from bench._timing import write
from pqlink import ContentType, Identity, PublicIdentity, Role, seal_envelope
from pqlink.broadcast import seal_broadcast
from testbed import RabbitMQ
from wire.amqp import GLOBAL_EXCHANGE, GLOBAL_STREAM, gateway_queue
from wire.fl import GlobalModel, RoundSettings
from wire.model import DEFAULT_INITIAL_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
#: Announcements timed per fleet size.
ANNOUNCE_REPEATS = 10


def _drain(channel: Any, queue: str) -> int:
    total = 0
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return total
        total += len(body)


def _read_stream(conn: Any, offset: int) -> int:
    """Bytes of the message at `offset` of the global-model stream, read as a gateway reads
    it (a consumer of its own with a prefetch, as streams require)."""
    channel = conn.channel()
    try:
        channel.basic_qos(prefetch_count=1)
        for method, _props, body in channel.consume(
            GLOBAL_STREAM, arguments={"x-stream-offset": offset}, inactivity_timeout=30
        ):
            if method is None:
                raise TimeoutError(f"nothing at offset {offset} of the stream within 30 s")
            return len(body)
        raise RuntimeError("the stream consumer ended")
    finally:
        channel.close()


def _stream_messages(rabbit: RabbitMQ, vhost: str) -> int:
    out = rabbit.ctl("list_queues", "-q", "-p", vhost, "name", "messages")
    rows = (line.split() for line in out.splitlines())
    return next(int(p[1]) for p in rows if p and p[0] == GLOBAL_STREAM)


def _announce_times(
    channel: Any,
    aggregator: Identity,
    recipients: list[PublicIdentity],
    model: bytes,
    repeats: int = ANNOUNCE_REPEATS,
) -> tuple[list[float], list[float]]:
    """Seconds to seal a broadcast for every recipient and to publish and commit it, per
    announcement (the queues keep their newest entries, the stream its bodies)."""
    seal_s, publish_s = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        sealed = seal_broadcast(
            aggregator, recipients, model, content_type=ContentType.GLOBAL_MODEL, round=2 + r
        )
        t1 = time.perf_counter()
        publish_broadcast(channel, sealed)
        publish_s.append(time.perf_counter() - t1)
        seal_s.append(t1 - t0)
    return seal_s, publish_s


def measure(
    rabbit: RabbitMQ, aggregator: Identity, fleet: list[Identity], model: bytes
) -> dict[str, Any]:
    vhost = f"fanout-{uuid.uuid4().hex[:8]}"
    rabbit.ctl("add_vhost", vhost)
    rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    conn = pika.BlockingConnection(
        pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{rabbit.amqp_port}/{vhost}")
    )
    try:
        channel = conn.channel()
        declare_topology(channel, [g.name for g in fleet])
        channel.tx_select()
        recipients = [g.public for g in fleet]
        sealed = seal_broadcast(
            aggregator, recipients, model, content_type=ContentType.GLOBAL_MODEL, round=1
        )
        publish_broadcast(channel, sealed)  # exactly as the coordinator publishes
        broadcast_in = len(sealed.body) + sum(map(len, sealed.entries.values()))
        bodies_stored = _stream_messages(rabbit, vhost)
        broadcast_out = [
            _read_stream(conn, 0) + _drain(channel, gateway_queue(g.name)) for g in fleet
        ]
        envelope = seal_envelope(
            aggregator, recipients, model, content_type=ContentType.GLOBAL_MODEL, round=1
        )
        channel.basic_publish(GLOBAL_EXCHANGE, "", envelope, PERSISTENT)
        channel.tx_commit()
        envelope_out = [_read_stream(conn, 1) for _ in fleet]
        seal_s, publish_s = _announce_times(channel, aggregator, recipients, model)
    finally:
        conn.close()
        rabbit.ctl("delete_vhost", vhost)
    n = len(fleet)
    entries = sum(map(len, sealed.entries.values()))
    return {
        "gateways": n,
        "broadcast": {
            "body_bytes": len(sealed.body),
            "entry_bytes_median": int(statistics.median(map(len, sealed.entries.values()))),
            "body_copies_stored": bodies_stored,
            # what the broker keeps: the body in the stream, each entry in its gateway's
            # queue; a fanout into per-gateway queues would keep n bodies
            "stored_per_gateway": (bodies_stored * len(sealed.body) + entries) / n,
            "stored_per_gateway_if_queued_per_gateway": len(sealed.body) + entries / n,
            "into_broker_per_gateway": broadcast_in / n,
            "out_of_broker_per_gateway": statistics.mean(broadcast_out),
            "total_per_round": broadcast_in + sum(broadcast_out),
            # the coordinator's announcement without the fleet running: sealing for every
            # gateway, then publishing body and entries in one committed transaction
            "seal_ms_median": round(statistics.median(seal_s) * 1000, 2),
            "publish_commit_ms_median": round(statistics.median(publish_s) * 1000, 2),
            "announce_repeats": len(seal_s),
        },
        "envelope": {
            "envelope_bytes": len(envelope),
            "into_broker_per_gateway": len(envelope) / n,
            "out_of_broker_per_gateway": statistics.mean(envelope_out),
            "total_per_round": len(envelope) + sum(envelope_out),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fleets", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/)")
    args = ap.parse_args(argv)
    weights = initial_weights(DEFAULT_INITIAL_WEIGHTS)
    model = GlobalModel(
        weights.astype("<f4").tobytes(), int(weights.size), 1, 0, RoundSettings(epochs=1)
    ).encode()
    aggregator = Identity.generate("aggregator", Role.AGGREGATOR)
    fleet = [Identity.generate(f"gw-{i:03d}", Role.GATEWAY) for i in range(max(args.fleets))]
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        rabbit = RabbitMQ(Path(tmp) / "rabbitmq")
        rabbit.start()
        try:
            results = {n: measure(rabbit, aggregator, fleet[:n], model) for n in args.fleets}
        finally:
            rabbit.stop()
    small, large = results[min(args.fleets)], results[max(args.fleets)]

    def per_gateway(r: dict[str, Any], kind: str) -> float:
        side = r[kind]
        return float(side["into_broker_per_gateway"] + side["out_of_broker_per_gateway"])

    ratio = per_gateway(large, "broadcast") / per_gateway(small, "broadcast")
    stored_ratio = (
        large["broadcast"]["stored_per_gateway"] / small["broadcast"]["stored_per_gateway"]
    )
    envelope_ratio = per_gateway(large, "envelope") / per_gateway(small, "envelope")
    doc = {
        "load_average": list(os.getloadavg()),
        "model_parameters": int(weights.size),
        "bytes": "AMQP message bodies into and out of the broker, framing excluded",
        "results": list(results.values()),
        "broadcast_per_gateway_ratio": round(ratio, 4),
        "broadcast_stored_per_gateway_ratio": round(stored_ratio, 4),
        "envelope_per_gateway_ratio": round(envelope_ratio, 4),
        "budget": "broker bytes per gateway at the largest fleet at most 1.2x the smallest",
        "within_budget": ratio <= 1.2 and stored_ratio <= 1.2,
    }
    for r in results.values():
        print(
            f"{r['gateways']:>4} gateways: broadcast {per_gateway(r, 'broadcast'):9.0f} B/gateway, "
            f"envelope {per_gateway(r, 'envelope'):9.0f} B/gateway; announcement: seal "
            f"{r['broadcast']['seal_ms_median']} ms, publish and commit "
            f"{r['broadcast']['publish_commit_ms_median']} ms"
        )
    print(f"per-gateway ratio {ratio:.3f} (envelope {envelope_ratio:.2f}; budget 1.2)")
    write("fanout", doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
