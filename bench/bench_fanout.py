"""Broker bytes of global-model announcements per gateway, at 10 and 100 gateways: the sealed
broadcast (one body into the global-model stream per round, one key entry addressed to each
gateway per key epoch) against the multi-recipient envelope it replaces (every key slot in the
one copy each gateway receives).

Both are published through a private RabbitMQ exactly as the coordinator does and read back as
each gateway reads them (the stream from its own consumer, the entry from its queue); the
figures are AMQP message-body bytes (framing excluded), into the broker, stored by it and out
of it, per gateway: for a round that starts a key epoch, for one that does not, and amortised
over an epoch (the budget's figure)."""

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

from aggregator.config import RoundsConfig
from aggregator.coordinator import initial_weights, publish_broadcast
from aggregator.worker import PERSISTENT, declare_topology
from bench._timing import write
from pqlink import ContentType, Identity, PublicIdentity, Role, seal_envelope
from pqlink.broadcast import new_epoch, seal_broadcast
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
) -> dict[str, list[float]]:
    """Seconds to seal a broadcast and to publish and commit it, per announcement, for one
    that starts a key epoch (a key entry encapsulated for and published to every recipient)
    and one that does not (the body alone), alternated (the queues keep their newest entries,
    the stream its bodies)."""
    times: dict[str, list[float]] = {k: [] for k in ("seal", "publish", "seal_new", "publish_new")}
    for r in range(repeats):
        t0 = time.perf_counter()
        epoch = new_epoch(recipients)
        sealed = seal_broadcast(
            aggregator,
            epoch,
            model,
            content_type=ContentType.GLOBAL_MODEL,
            round=2 + 2 * r,
            with_entries=True,
        )
        t1 = time.perf_counter()
        publish_broadcast(channel, sealed)
        t2 = time.perf_counter()
        times["seal_new"].append(t1 - t0)
        times["publish_new"].append(t2 - t1)
        sealed = seal_broadcast(
            aggregator, epoch, model, content_type=ContentType.GLOBAL_MODEL, round=3 + 2 * r
        )
        t3 = time.perf_counter()
        publish_broadcast(channel, sealed)
        times["seal"].append(t3 - t2)
        times["publish"].append(time.perf_counter() - t3)
    return times


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


def measure(
    rabbit: RabbitMQ,
    aggregator: Identity,
    fleet: list[Identity],
    model: bytes,
    epoch_rounds: int,
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
        epoch = new_epoch(recipients)
        # The epoch's first broadcast carries every entry, the next ones the body alone:
        # published exactly as the coordinator publishes them.
        first = seal_broadcast(
            aggregator,
            epoch,
            model,
            content_type=ContentType.GLOBAL_MODEL,
            round=1,
            with_entries=True,
        )
        publish_broadcast(channel, first)
        first_in = len(first.body) + sum(map(len, first.entries.values()))
        first_out = [_read_stream(conn, 0) + _drain(channel, gateway_queue(g.name)) for g in fleet]
        later = seal_broadcast(
            aggregator, epoch, model, content_type=ContentType.GLOBAL_MODEL, round=2
        )
        publish_broadcast(channel, later)
        later_in = len(later.body) + sum(map(len, later.entries.values()))
        later_out = [_read_stream(conn, 1) + _drain(channel, gateway_queue(g.name)) for g in fleet]
        bodies_stored = _stream_messages(rabbit, vhost)
        envelope = seal_envelope(
            aggregator, recipients, model, content_type=ContentType.GLOBAL_MODEL, round=1
        )
        channel.basic_publish(GLOBAL_EXCHANGE, "", envelope, PERSISTENT)
        channel.tx_commit()
        envelope_out = [_read_stream(conn, 2) for _ in fleet]
        times = _announce_times(channel, aggregator, recipients, model)
    finally:
        conn.close()
        rabbit.ctl("delete_vhost", vhost)
    n = len(fleet)
    entries = sum(map(len, first.entries.values()))

    def per_gateway(into: int, out: list[int]) -> float:
        return into / n + statistics.mean(out)

    starting = per_gateway(first_in, first_out)
    steady = per_gateway(later_in, later_out)
    return {
        "gateways": n,
        "broadcast": {
            "body_bytes": len(first.body),
            "entry_bytes_median": int(statistics.median(map(len, first.entries.values()))),
            "body_copies_stored": bodies_stored,
            "epoch_rounds": epoch_rounds,
            # what the broker keeps of an epoch's first round: its body in the stream, each
            # entry in its gateway's queue; a fanout into per-gateway queues would keep n bodies
            "stored_per_gateway": (len(first.body) + entries) / n,
            # into and out of the broker per gateway: a round that starts a key epoch, one
            # that does not, and their mean over an epoch of `epoch_rounds` rounds
            "per_gateway_epoch_start": starting,
            "per_gateway_within_epoch": steady,
            "per_gateway_amortised": (starting + (epoch_rounds - 1) * steady) / epoch_rounds,
            "into_broker_per_gateway_epoch_start": first_in / n,
            "out_of_broker_per_gateway_epoch_start": statistics.mean(first_out),
            "into_broker_per_gateway_within_epoch": later_in / n,
            "out_of_broker_per_gateway_within_epoch": statistics.mean(later_out),
            # the coordinator's announcement without the fleet running: sealing (with a new
            # epoch's encapsulation for every gateway, or not), then publishing and committing
            "seal_ms_median": _ms(times["seal"]),
            "publish_commit_ms_median": _ms(times["publish"]),
            "epoch_start_seal_ms_median": _ms(times["seal_new"]),
            "epoch_start_publish_commit_ms_median": _ms(times["publish_new"]),
            "announce_repeats": len(times["seal"]),
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
    ap.add_argument(
        "--epoch-rounds",
        type=int,
        default=RoundsConfig().broadcast_epoch_rounds,
        help="broadcasts per key epoch the entries are amortised over (the default config's)",
    )
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
            results = {
                n: measure(rabbit, aggregator, fleet[:n], model, args.epoch_rounds)
                for n in args.fleets
            }
        finally:
            rabbit.stop()
    small, large = results[min(args.fleets)], results[max(args.fleets)]

    def per_gateway(r: dict[str, Any], kind: str, key: str = "amortised") -> float:
        side = r[kind]
        if kind == "broadcast":
            return float(side[f"per_gateway_{key}"])
        return float(side["into_broker_per_gateway"] + side["out_of_broker_per_gateway"])

    ratio = per_gateway(large, "broadcast") / per_gateway(small, "broadcast")
    start_ratio = per_gateway(large, "broadcast", "epoch_start") / per_gateway(
        small, "broadcast", "epoch_start"
    )
    steady_ratio = per_gateway(large, "broadcast", "within_epoch") / per_gateway(
        small, "broadcast", "within_epoch"
    )
    stored_ratio = (
        large["broadcast"]["stored_per_gateway"] / small["broadcast"]["stored_per_gateway"]
    )
    envelope_ratio = per_gateway(large, "envelope") / per_gateway(small, "envelope")
    doc = {
        "load_average": list(os.getloadavg()),
        "model_parameters": int(weights.size),
        "bytes": "AMQP message bodies into and out of the broker, framing excluded",
        "results": list(results.values()),
        # per gateway, largest fleet over smallest: amortised over an epoch (the budget's
        # figure), for a round that starts an epoch, and for one that does not
        "broadcast_per_gateway_ratio": round(ratio, 4),
        "broadcast_epoch_start_per_gateway_ratio": round(start_ratio, 4),
        "broadcast_within_epoch_per_gateway_ratio": round(steady_ratio, 4),
        "broadcast_stored_per_gateway_ratio": round(stored_ratio, 4),
        "envelope_per_gateway_ratio": round(envelope_ratio, 4),
        "budget": "broker bytes per gateway at the largest fleet at most 1.2x the smallest",
        "within_budget": ratio <= 1.2 and start_ratio <= 1.2 and stored_ratio <= 1.2,
    }
    for r in results.values():
        print(
            f"{r['gateways']:>4} gateways: broadcast {per_gateway(r, 'broadcast'):9.0f} B/gateway "
            f"(epoch start {per_gateway(r, 'broadcast', 'epoch_start'):.0f}, within "
            f"{per_gateway(r, 'broadcast', 'within_epoch'):.0f}), envelope "
            f"{per_gateway(r, 'envelope'):9.0f} B/gateway; announcement: seal "
            f"{r['broadcast']['seal_ms_median']} ms, publish and commit "
            f"{r['broadcast']['publish_commit_ms_median']} ms (epoch start: "
            f"{r['broadcast']['epoch_start_seal_ms_median']} / "
            f"{r['broadcast']['epoch_start_publish_commit_ms_median']} ms)"
        )
    print(
        f"per-gateway ratio {ratio:.3f} amortised, {start_ratio:.3f} at an epoch start, "
        f"{steady_ratio:.3f} within (envelope {envelope_ratio:.2f}; budget 1.2)"
    )
    write("fanout", doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
