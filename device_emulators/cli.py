"""`iomt-emulate`: enroll emulated wearables with a gateway, then run N of them in one process,
or replay recorded patients (WFDB reference annotations) as RR-interval wearables.

Exit codes: 0 success; 1 runtime failure (e.g. broker unreachable past --connect-timeout);
2 bad usage; 3 key or registry problem."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from device_emulators.errors import HubClosedError
from device_emulators.hub import MqttHub
from device_emulators.profiles import COHORTS, dominant_mix, make_profiles
from device_emulators.replay import ReplayError, ReplayWearable, list_records, read_beats
from device_emulators.signals import VitalsGenerator
from device_emulators.wearable import Wearable
from pqlink import (
    Identity,
    RekeyPolicy,
    Role,
    SigAlg,
    load_identity,
    load_public_identity,
    load_registry,
    save_identity,
    save_public_identity,
    save_registry,
)
from servicekit.cli import ExitCode, run_main
from servicekit.mqtt_tls import MqttTls, MqttTlsError, client_context
from wire.topics import TopicLayout


def device_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def _positive(kind: type[int] | type[float]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    return parse


def _wearable_options() -> argparse.ArgumentParser:
    """The options `run` and `replay` share: keys, the gateway, the broker and its TLS, the
    session and acknowledgement timers, and the output."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keys-dir", type=Path, required=True, help="where wearable keys live")
    common.add_argument("--gateway-pub", type=Path, required=True, help="the gateway's .pub file")
    common.add_argument("--host", default="127.0.0.1", help="the broker (default 127.0.0.1)")
    common.add_argument("--port", type=int, default=1883, help="the broker's port (default 1883)")
    common.add_argument("--topic-prefix", default="iomt", help="topic prefix (default iomt)")
    common.add_argument(
        "--rekey-records",
        type=_positive(int),
        default=1 << 16,
        help="records sealed under one session key before a new handshake (default 65536)",
    )
    common.add_argument(
        "--resend-after",
        type=_positive(float),
        default=60.0,
        help="seconds without an acknowledgement before a record is sent again (default 60)",
    )
    common.add_argument(
        "--no-wait-acks",
        action="store_true",
        help="with a record count: exit once everything was sent, acknowledged or not",
    )
    common.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds to reach the broker before giving up (default 30)",
    )
    # The same TLS settings as the gateway's [mqtt] tls_* keys.
    common.add_argument("--tls-ca", type=Path, help="TLS to the broker, verified against this CA")
    common.add_argument("--tls-cert", type=Path, help="client certificate (PEM), with --tls-key")
    common.add_argument("--tls-key", type=Path, help="the client certificate's key (PEM)")
    common.add_argument(
        "--tls-groups", help="TLS 1.3 key-exchange groups offered, e.g. X25519MLKEM768"
    )
    common.add_argument("--summary", type=Path, help="write a JSON summary here")
    common.add_argument("--quiet", action="store_true", help="no progress lines")
    return common


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iomt-emulate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    en = sub.add_parser("enroll", help="create wearable identities and enroll them in a registry")
    en.add_argument("--registry", type=Path, required=True, help="the gateway's registry.json")
    en.add_argument("--keys-dir", type=Path, required=True, help="where wearable keys live")
    en.add_argument("--devices", type=_positive(int), help="how many numbered wearables")
    en.add_argument("--wfdb", type=Path, help="or one wearable per record in this directory")
    en.add_argument("--records", help="with --wfdb: comma-separated records (default all)")
    en.add_argument("--prefix", default="wearable", help="device id prefix (default wearable)")
    en.add_argument("--first", type=int, default=1, help="index of the first device")
    en.add_argument("--sig", choices=("ML-DSA-44", "ML-DSA-65"), default="ML-DSA-44")

    common = _wearable_options()
    run = sub.add_parser("run", parents=[common], help="run the wearables")
    run.add_argument("--devices", type=_positive(int), required=True)
    run.add_argument("--prefix", default="wearable")
    run.add_argument("--first", type=int, default=1)
    run.add_argument("--records", type=_positive(int), help="records per device, then exit")
    run.add_argument("--rate", type=_positive(float), default=1.0, help="records/s per device")
    run.add_argument(
        "--sample-interval-ms",
        type=_positive(int),
        default=1000,
        help="simulated time between samples (faster than --rate for demos)",
    )
    run.add_argument("--event-rate", type=float, default=2.0, help="clinical events per hour")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument(
        "--cohort",
        choices=COHORTS,
        default=None,
        help="patients mostly of this cohort (non-IID gateways); default: all cohorts",
    )
    run.add_argument(
        "--cohort-share",
        type=float,
        default=0.7,
        help="share of --cohort among the patients (default 0.7)",
    )
    run.add_argument("--devices-per-connection", type=_positive(int), default=50)
    run.add_argument(
        "--buffer-hours",
        type=_positive(float),
        default=24.0,
        help="unacknowledged samples each wearable keeps, in hours at --rate (default 24)",
    )
    run.add_argument(
        "--give-up-after",
        type=_positive(int),
        help="a wearable stops after this many unanswered handshakes in a row (default never)",
    )

    rp = sub.add_parser(
        "replay", parents=[common], help="replay WFDB records as RR-interval wearables"
    )
    rp.add_argument("--wfdb", type=Path, required=True, help="directory of NNN.atr/NNN.hea")
    rp.add_argument("--records", help="comma-separated record names (default: all in --wfdb)")
    rp.add_argument(
        "--speed", type=_positive(float), default=1.0, help="speed-up over recorded time"
    )
    rp.add_argument("--prefix", default="patient", help="device id = <prefix>-<record>")
    rp.add_argument("--batches", type=_positive(int), help="RR batches per record, then exit")
    return p


def record_device(prefix: str, record: str) -> str:
    return f"{prefix}-{record}"


def _records(directory: Path, chosen: str | None) -> list[str]:
    available = list_records(directory)
    if chosen is None:
        if not available:
            raise ReplayError(f"no .atr annotation files in {directory}")
        return available
    names = [r.strip() for r in chosen.split(",") if r.strip()]
    missing = [r for r in names if r not in available]
    if missing or not names:
        raise ReplayError(f"records {missing or chosen!r} not found in {directory}")
    return names


def _enroll(args: argparse.Namespace) -> int:
    if (args.devices is None) == (args.wfdb is None):
        raise ValueError("enroll needs exactly one of --devices and --wfdb")
    if args.wfdb is not None:
        names = [record_device(args.prefix, r) for r in _records(args.wfdb, args.records)]
    else:
        names = [device_name(args.prefix, i) for i in range(args.first, args.first + args.devices)]
    registry = load_registry(args.registry, missing_ok=True)
    alg = SigAlg.from_label(args.sig)
    created = 0
    for name in names:
        key = args.keys_dir / f"{name}.key"
        if key.exists():
            identity = load_identity(key)
        else:
            identity = Identity.generate(name, Role.SENSOR, alg)
            save_identity(identity, key)
            save_public_identity(identity.public, args.keys_dir / f"{name}.pub")
            created += 1
        registry.enroll(identity.public, replace=True)
    save_registry(registry, args.registry)
    print(f"enrolled {len(names)} wearables ({created} new keys) in {args.registry}")
    return ExitCode.OK


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_ca is None:
        if args.tls_cert or args.tls_key or args.tls_groups:
            raise ValueError("--tls-cert, --tls-key and --tls-groups need --tls-ca")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")
    try:
        return client_context(MqttTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_groups))
    except MqttTlsError as exc:
        raise ValueError(str(exc)) from None


async def _run(args: argparse.Namespace) -> int:
    tls_context = _tls_context(args)
    gateway = load_public_identity(args.gateway_pub)
    layout = TopicLayout(args.topic_prefix, gateway.name)
    mix = dominant_mix(args.cohort, args.cohort_share) if args.cohort else None
    profiles = make_profiles(args.devices, args.seed, cohort_weights=mix)
    start_ms = int(time.time() * 1000)
    wearables = []
    for n, profile in enumerate(profiles):
        name = device_name(args.prefix, args.first + n)
        identity = load_identity(args.keys_dir / f"{name}.key")
        generator = VitalsGenerator(
            profile,
            seed=args.seed * 100_003 + n,
            start_ms=start_ms,
            interval_ms=args.sample_interval_ms,
            event_rate_per_hour=args.event_rate,
        )
        wearables.append(
            Wearable(
                identity,
                gateway,
                layout,
                generator,
                rate=args.rate,
                rekey=RekeyPolicy(max_records=args.rekey_records),
                buffer_seconds=args.buffer_hours * 3600.0,
                resend_after=args.resend_after,
                give_up_after=args.give_up_after,
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    per = args.devices_per_connection
    hubs = [
        # The gateway is part of the id: hubs of emulators for two gateways on one broker
        # must not take over each other's connection.
        MqttHub(
            args.host,
            args.port,
            f"iomt-emulate-{gateway.name}-{args.prefix}-{args.first + i}-{args.seed}",
            tls_context=tls_context,
        )
        for i in range(0, len(wearables), per)
    ]
    groups = [(hubs[i // per], w) for i, w in enumerate(wearables)]
    for hub, w in groups:
        w.subscribe(hub)
    wait_acks = not args.no_wait_acks
    # One group owns every connection, the wearables and the progress line: leaving it (the
    # run done, a signal, an error in any task) ends them all; no task outlives the command.
    async with asyncio.TaskGroup() as tg:
        for h in hubs:
            tg.create_task(h.run(stop))
        if not await _connected(hubs, args, stop):
            return ExitCode.FAILURE
        t0 = time.perf_counter()
        progress = tg.create_task(_progress(wearables, t0, args.quiet))
        async with asyncio.TaskGroup() as streams:
            for hub, w in groups:
                streams.create_task(w.run(hub, stop, args.records, wait_acks=wait_acks))
        elapsed = time.perf_counter() - t0
        progress.cancel()
        stop.set()
    hs = [s for w in wearables for s in w.stats.handshake_seconds]
    summary = {
        "devices": len(wearables),
        "records_sent": sum(w.stats.records_sent for w in wearables),
        "records_acked": sum(w.stats.records_acked for w in wearables),
        "records_resent": sum(w.stats.records_resent for w in wearables),
        "records_unacked": sum(w.unacknowledged for w in wearables),
        "buffer_overflow": sum(w.stats.buffer_overflow for w in wearables),
        "notices": sum(w.stats.notices for w in wearables),
        "gave_up": sorted(w.identity.name for w in wearables if w.stats.gave_up),
        "elapsed_s": round(elapsed, 3),
        "handshakes": sum(w.stats.handshakes for w in wearables),
        "handshake_failures": sum(w.stats.handshake_failures for w in wearables),
        "handshake_median_ms": round(statistics.median(hs) * 1000, 2) if hs else None,
        "hub_reconnects": sum(h.reconnects for h in hubs),
        "publish_retries": sum(h.publish_retries for h in hubs),
    }
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.quiet:
        print(json.dumps(summary))
    return ExitCode.OK


async def _replay(args: argparse.Namespace) -> int:
    tls_context = _tls_context(args)
    gateway = load_public_identity(args.gateway_pub)
    layout = TopicLayout(args.topic_prefix, gateway.name)
    # recorded time is anchored at the start of the replay: beat times stay those of the record
    origin_ms = int(time.time() * 1000)
    wearables: list[ReplayWearable] = []
    for record in _records(args.wfdb, args.records):
        name = record_device(args.prefix, record)
        wearables.append(
            ReplayWearable(
                load_identity(args.keys_dir / f"{name}.key"),
                gateway,
                layout,
                read_beats(args.wfdb, record),
                speed=args.speed,
                origin_ms=origin_ms,
                rekey=RekeyPolicy(max_records=args.rekey_records),
                resend_after=args.resend_after,
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hub = MqttHub(
        args.host, args.port, f"iomt-replay-{args.prefix}-{origin_ms}", tls_context=tls_context
    )
    for w in wearables:
        w.subscribe(hub)  # handshake responses, acknowledgements, unknown-session notices
    wait_acks = not args.no_wait_acks
    async with asyncio.TaskGroup() as tg:
        tg.create_task(hub.run(stop))
        if not await _connected([hub], args, stop):
            return ExitCode.FAILURE
        t0 = time.perf_counter()
        progress = tg.create_task(_progress(list(wearables), t0, args.quiet))
        async with asyncio.TaskGroup() as streams:
            for w in wearables:
                streams.create_task(w.run(hub, stop, args.batches, wait_acks=wait_acks))
        elapsed = time.perf_counter() - t0
        progress.cancel()
        stop.set()
    summary = {
        "devices": len(wearables),
        "records_sent": sum(w.stats.records_sent for w in wearables),
        "records_resent": sum(w.stats.records_resent for w in wearables),
        "records_acked": sum(w.stats.records_acked for w in wearables),
        "unacknowledged": sum(w.unacknowledged for w in wearables),
        "notices": sum(w.stats.notices for w in wearables),
        "beats": {w.identity.name: len(w.beats) for w in wearables},
        "elapsed_s": round(elapsed, 3),
        "speed": args.speed,
        "handshakes": sum(w.stats.handshakes for w in wearables),
        "publish_retries": hub.publish_retries,
    }
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "beats"}))
    return ExitCode.OK


async def _connected(
    hubs: Sequence[MqttHub], args: argparse.Namespace, stop: asyncio.Event
) -> bool:
    """Every hub connected within `--connect-timeout`; otherwise say so and stop them all.
    True also when a stop request (a signal) came first: the run then ends at once, with its
    summary, as a stopped run does."""
    try:
        async with asyncio.timeout(args.connect_timeout):
            for hub in hubs:
                await hub.wait_connected()
    except HubClosedError:  # the hubs stop only on a stop request
        return True
    except TimeoutError:
        print(
            f"iomt-emulate: broker {args.host}:{args.port} unreachable for "
            f"{args.connect_timeout:.0f} s",
            file=sys.stderr,
        )
        stop.set()
        return False
    return True


async def _progress(wearables: list[Wearable], t0: float, quiet: bool) -> None:
    while not quiet:
        await asyncio.sleep(2.0)
        sent = sum(w.stats.records_sent for w in wearables)
        acked = sum(w.stats.records_acked for w in wearables)
        sessions = sum(1 for w in wearables if w.session is not None)
        print(
            f"[{time.perf_counter() - t0:6.1f}s] {sessions}/{len(wearables)} sessions, "
            f"{sent} records sent, {acked} acknowledged",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        if args.command == "enroll":
            return _enroll(args)
        if args.command == "replay":
            return asyncio.run(_replay(args))
        return asyncio.run(_run(args))

    return run_main("iomt-emulate", body)


if __name__ == "__main__":
    sys.exit(main())
