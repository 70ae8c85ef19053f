"""Global-model fan-out through a private RabbitMQ: the sealed body is stored once, in the stream
every gateway reads, and each gateway's queue holds only its key entries, one per key epoch; the
coordinator starts an epoch at start, when the enrolled gateways change and after
`broadcast_epoch_rounds` broadcasts, and publishes its entries with the epoch's first body."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from aggregator.cli import main as aggregator_main
from aggregator.config import load_config
from aggregator.coordinator import CoordinatorService, publish_broadcast
from aggregator.key_epochs import EpochReason
from aggregator.worker import declare_topology
from gateway.spool import Spool
from gateway.uplink import Uplink
from pqlink import ContentType, Identity, Registry
from pqlink.broadcast import (
    BODY_TYPE,
    ENTRY_TYPE,
    BroadcastEpoch,
    EntryMismatchError,
    join_delivery,
    new_epoch,
    open_broadcast,
    open_delivery,
    peek_broadcast,
    peek_entry,
    seal_broadcast,
)
from servicekit.logs import StderrLog
from testbed import RabbitMQ
from wire.amqp import GLOBAL_STREAM, GLOBAL_STREAM_OFFSET, gateway_queue

from .conftest import Parties
from .fl_harness import Aggregator

ROUNDS = 3


@pytest.fixture
def channel(vhost: str) -> Iterator[BlockingChannel]:
    conn = pika.BlockingConnection(pika.URLParameters(vhost))
    try:
        yield conn.channel()
    finally:
        conn.close()


def _publish(
    channel: BlockingChannel,
    parties: Parties,
    epoch: BroadcastEpoch,
    round_: int,
    *,
    with_entries: bool,
) -> None:
    """Seal "global model `round_`" in `epoch` and publish it as the coordinator does."""
    sealed = seal_broadcast(
        parties.aggregator,
        epoch,
        b"global model %d" % round_,
        content_type=ContentType.GLOBAL_MODEL,
        round=round_,
        with_entries=with_entries,
    )
    publish_broadcast(channel, sealed)


def _announce(
    channel: BlockingChannel,
    parties: Parties,
    rounds: int = ROUNDS,
    epoch_starts: frozenset[int] = frozenset({1}),
) -> None:
    """Rounds 1..`rounds`, a new key epoch (its entries with its first body) at `epoch_starts`."""
    declare_topology(channel, [parties.gateway.name, parties.other_gateway.name])
    channel.tx_select()
    epoch = None
    for r in range(1, rounds + 1):
        if epoch is None or r in epoch_starts:
            epoch = new_epoch([parties.gateway.public, parties.other_gateway.public])
        _publish(channel, parties, epoch, r, with_entries=r in epoch_starts)


def _counts(rabbitmq: RabbitMQ, vhost: str) -> dict[str, int]:
    name = vhost.rsplit("/", 1)[1]
    out = rabbitmq.ctl("list_queues", "-q", "-p", name, "name", "messages")
    rows = (line.split() for line in out.splitlines())
    return {p[0]: int(p[1]) for p in rows if len(p) == 2 and p[1].isdigit()}


def _get(channel: BlockingChannel, queue: str) -> bytes | None:
    method, _props, frame = channel.basic_get(queue, auto_ack=True)
    # types-pika declares the body as str; pika hands over bytes.
    return None if method is None else cast("bytes", frame)


def _newest_body(channel: BlockingChannel) -> bytes:
    """What a gateway attaching to the stream (back from being offline) reads first."""
    got: list[bytes] = []
    channel.basic_qos(prefetch_count=4)  # streams need a prefetch
    channel.basic_consume(
        GLOBAL_STREAM,
        lambda ch, method, _props, body: got.append(body),
        arguments={"x-stream-offset": GLOBAL_STREAM_OFFSET},
    )
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=1)
    assert got, "nothing read from the stream within 30 s"
    return got[0]


def test_body_stored_once_and_entries_addressed(
    channel: BlockingChannel, parties: Parties, rabbitmq: RabbitMQ, vhost: str
) -> None:
    _announce(channel, parties)
    # Quorum-queue counters are refreshed by the broker every few seconds: poll them.
    want = {GLOBAL_STREAM: ROUNDS}
    # one key epoch: one entry per gateway, however many rounds
    want |= {gateway_queue(g.name): 1 for g in (parties.gateway, parties.other_gateway)}
    deadline = time.monotonic() + 30
    counts = _counts(rabbitmq, vhost)
    while any(counts.get(q) != n for q, n in want.items()) and time.monotonic() < deadline:
        channel.connection.process_data_events(time_limit=1)
        counts = _counts(rabbitmq, vhost)
    for queue, n in want.items():
        assert counts.get(queue) == n, (queue, counts)
    for gw in (parties.gateway, parties.other_gateway):
        frame = _get(channel, gateway_queue(gw.name))
        assert frame is not None
        assert frame[0] == ENTRY_TYPE  # no body copy in a gateway's own queue
        assert _get(channel, gateway_queue(gw.name)) is None


def test_gateway_offline_across_an_epoch_change_opens_the_newest_model(
    channel: BlockingChannel, parties: Parties, tmp_path: Path
) -> None:
    """Back online after rounds 1-4 with a new key epoch at round 3: its queue kept both
    epochs' entries, the stream gives the newest body, and its spool pairs them."""
    rounds = ROUNDS + 1
    _announce(channel, parties, rounds, epoch_starts=frozenset({1, 3}))
    body = _newest_body(channel)
    assert body[0] == BODY_TYPE
    assert peek_broadcast(body).round == rounds  # the newest, not the history
    senders = parties.aggregator_registry()
    for gw in (parties.gateway, parties.other_gateway):
        entries = []
        while True:
            frame = _get(channel, gateway_queue(gw.name))
            if frame is None:
                break
            entries.append(frame)
        assert len(entries) == 2  # one per epoch
        with Spool(tmp_path / f"{gw.name}.db") as spool:
            for entry in entries:  # as the uplink keeps them, in queue order
                spool.put_global_part(
                    peek_entry(entry).epoch_id, "entry", entry, None, join_delivery
                )
            meta = peek_broadcast(body)
            assert spool.put_global_part(
                meta.epoch_id, "body", body, meta.round, join_delivery, synced=False
            )
            taken = spool.take_global()
        assert taken is not None
        # Every gateway verifies the one signed body with its own entry of the body's epoch.
        opened = open_delivery(taken[1], gw, senders)
        assert opened.payload == b"global model %d" % rounds
        with pytest.raises(EntryMismatchError, match="another key epoch"):
            open_broadcast(body, entries[0], gw, senders)


def _drain(channel: BlockingChannel, gateway: str) -> list[bytes]:
    got = []
    while (frame := _get(channel, gateway_queue(gateway))) is not None:
        got.append(frame)
    return got


def _service(
    root: Path, url: str, gateways: list[Identity], epoch_rounds: int
) -> CoordinatorService:
    agg = Aggregator(root, url, gateways)
    text = agg.config.read_text().replace(
        "[rounds]\n", f"[rounds]\nbroadcast_epoch_rounds = {epoch_rounds}\n"
    )
    agg.config.write_text(text)
    config = load_config(agg.config)
    assert config.rounds.broadcast_epoch_rounds == epoch_rounds
    return CoordinatorService(config, agg.identity, threading.Event())


def test_coordinator_publishes_entries_once_per_epoch(
    channel: BlockingChannel,
    parties: Parties,
    tmp_path: Path,
    vhost: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Entries go with an epoch's first body only; after exactly `broadcast_epoch_rounds`
    broadcasts the next one starts a new epoch (counted in the gateways' queues)."""
    limit = 3
    gateways = [parties.gateway, parties.other_gateway]
    service = _service(tmp_path / "agg", vhost, gateways, limit)
    declare_topology(channel, [g.name for g in gateways])
    fanout = channel.connection.channel()
    fanout.tx_select()
    epochs = []
    caplog.set_level(logging.INFO, logger="aggregator.coordinator")
    for n in range(1, 2 * limit + 2):
        caplog.clear()
        service._publish_global(fanout)
        assert service.key_epochs.current is not None
        epochs.append(service.key_epochs.current.epoch_id)
        got = {g.name: _drain(channel, g.name) for g in gateways}
        # broadcasts 1 and limit + 1 and 2 * limit + 1 start epochs; the others add no entry
        expect = 1 if n % limit == 1 else 0
        assert [len(v) for v in got.values()] == [expect, expect], n
        for frames in got.values():
            assert all(peek_entry(f).epoch_id == epochs[-1] for f in frames)
        lines = [r.getMessage() for r in caplog.records]
        started = [m for m in lines if m.startswith("key_epoch_started")]
        (announced,) = [m for m in lines if m.startswith("round 1 announced")]
        assert f"key epoch {epochs[-1].hex()[:8]}{' new' if expect else ''}," in announced
        if expect:
            entry_bytes = sum(len(f) for v in got.values() for f in v)
            reason = "start" if n == 1 else "rotation"
            assert started == [
                f"key_epoch_started epoch={epochs[-1].hex()} reason={reason} gateways=2 round=1"
            ]
            assert f"{entry_bytes} bytes of key entries" in announced
        else:
            assert not started
            assert " 0 bytes of key entries" in announced
    assert epochs[0] == epochs[limit - 1] != epochs[limit]  # the limit, and the limit + 1
    assert epochs[limit] == epochs[2 * limit - 1] != epochs[2 * limit]
    assert service.epoch_started  # the last one started an epoch
    service.rounds.close()
    service.privacy.close()


def test_revoked_gateway_cannot_open_the_next_body(
    channel: BlockingChannel, parties: Parties, tmp_path: Path, vhost: str
) -> None:
    gateways = [parties.gateway, parties.other_gateway]
    service = _service(tmp_path / "agg", vhost, gateways, 100)
    declare_topology(channel, [g.name for g in gateways])
    fanout = channel.connection.channel()
    fanout.tx_select()
    service._publish_global(fanout)
    old = {g.name: _drain(channel, g.name) for g in gateways}
    assert [len(v) for v in old.values()] == [1, 1]
    first = service.key_epochs.current
    assert first is not None
    assert (
        aggregator_main(["revoke", "--config", str(tmp_path / "agg" / "aggregator.toml"), "gw-02"])
        == 0
    )
    service.reload()
    service._publish_global(fanout)
    second = service.key_epochs.current
    assert second is not None
    assert second.epoch_id != first.epoch_id
    assert second.recipient_count == 1
    assert service.epoch_started
    new = {g.name: _drain(channel, g.name) for g in gateways}
    assert [len(new["gw-01"]), len(new["gw-02"])] == [1, 0]  # no entry for the revoked one
    body = _newest_body(channel)
    assert peek_broadcast(body).epoch_id == second.epoch_id
    senders = Registry()
    senders.enroll(service.identity.public)
    assert open_broadcast(body, new["gw-01"][0], parties.gateway, senders).metadata.round == 1
    with pytest.raises(EntryMismatchError, match="another key epoch"):
        open_broadcast(body, old["gw-02"][0], parties.other_gateway, senders)
    service.rounds.close()
    service.privacy.close()


def test_epoch_reasons_are_stable_names() -> None:
    assert [r.value for r in EpochReason] == ["start", "recipients_changed", "rotation"]


@contextlib.asynccontextmanager
async def _running_uplink(
    url: str, gateway: str, path: Path, log: StderrLog
) -> AsyncIterator[tuple[Spool, ThreadPoolExecutor, asyncio.Event]]:
    """The gateway's real uplink running on the spool at `path`: yields the spool, the one
    thread it is used from, and an event set on each global model; stops it all on exit."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="spool")
    spool = Spool(path)
    stop, woken = asyncio.Event(), asyncio.Event()

    async def on_global() -> None:
        woken.set()

    uplink = Uplink(url, gateway, spool, pool, log, on_global, max_delay=1)
    task = asyncio.create_task(uplink.run(stop))
    try:
        yield spool, pool, woken
    finally:
        stop.set()
        await task
        await asyncio.get_running_loop().run_in_executor(pool, spool.close)
        pool.shutdown()


async def _uplink_until(url: str, gateway: str, path: Path, round_: int) -> bytes:
    """Run the gateway's real uplink on the spool at `path` until the inbox holds the global
    model of `round_`; return its delivery frame and stop the uplink."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + 30
    async with _running_uplink(url, gateway, path, StderrLog(logging.WARNING)) as (
        spool,
        pool,
        woken,
    ):
        while True:
            item = await loop.run_in_executor(pool, spool.take_global)
            if item is not None and item[0] == round_:
                return item[1]
            assert time.monotonic() < deadline, f"round {round_} not in the inbox within 30 s"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), 1.0)
            woken.clear()


def test_gateway_restart_opens_the_newest_body_with_its_kept_entry(
    channel: BlockingChannel, parties: Parties, tmp_path: Path, vhost: str
) -> None:
    """The entry left the gateway's queue with its acknowledgement: after a restart, the spool
    still has it, and the stream's newest body (of the same epoch, published while the gateway
    was down, without an entry) opens."""
    gw = parties.gateway
    declare_topology(channel, [gw.name])
    channel.tx_select()
    epoch = new_epoch([gw.public])

    def announce(round_: int, with_entries: bool) -> None:
        _publish(channel, parties, epoch, round_, with_entries=with_entries)

    senders = parties.aggregator_registry()
    path = tmp_path / "spool.sqlite3"
    announce(1, True)
    first = asyncio.run(_uplink_until(vhost, gw.name, path, 1))
    assert open_delivery(first, gw, senders).payload == b"global model 1"
    announce(2, False)  # while the gateway is down
    assert _get(channel, gateway_queue(gw.name)) is None  # no entry waits in its queue
    second = asyncio.run(_uplink_until(vhost, gw.name, path, 2))
    assert open_delivery(second, gw, senders).payload == b"global model 2"


def test_a_lost_entry_is_reported_once_a_second_body_waits_and_the_next_epoch_opens(
    channel: BlockingChannel, parties: Parties, tmp_path: Path, vhost: str
) -> None:
    """A spool deleted while the gateway kept its key loses the epoch's entry: the first body
    that waits is not reported (its entry may be a moment behind it), the second is
    (`global_waiting_for_key`, warning), and the next epoch's first body opens."""
    gw = parties.gateway
    declare_topology(channel, [gw.name])
    channel.tx_select()
    epochs = [new_epoch([gw.public]), new_epoch([gw.public])]

    def announce(round_: int, epoch: int, with_entries: bool) -> None:
        _publish(channel, parties, epochs[epoch], round_, with_entries=with_entries)

    announce(1, 0, True)
    assert _get(channel, gateway_queue(gw.name)) is not None  # taken, then the spool is lost
    log = io.StringIO()
    path = tmp_path / "spool.sqlite3"

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        async with _running_uplink(vhost, gw.name, path, StderrLog(logging.INFO, log)) as (
            spool,
            pool,
            _,
        ):

            async def until(predicate: Callable[[], bool], what: str) -> None:
                deadline = time.monotonic() + 30
                while not await loop.run_in_executor(pool, predicate):
                    assert time.monotonic() < deadline, f"no {what} within 30 s"
                    await asyncio.sleep(0.02)  # poll interval of a bounded wait

            epoch = epochs[0].epoch_id
            await until(lambda: spool.waiting_bodies(epoch) == 1, "first waiting body")
            assert "global_waiting_for_key" not in log.getvalue()
            announce(2, 0, False)
            await until(lambda: spool.waiting_bodies(epoch) == 2, "second waiting body")
            await until(lambda: "global_waiting_for_key" in log.getvalue(), "warning")
            announce(3, 1, True)  # the next epoch
            await until(lambda: (spool.take_global() or (0, b""))[0] == 3, "round 3 in the inbox")
            item = await loop.run_in_executor(pool, spool.take_global)
            assert item is not None
            return item[1]

    frame = asyncio.run(scenario())
    senders = parties.aggregator_registry()
    assert open_delivery(frame, gw, senders).payload == b"global model 3"
    lines = [line for line in log.getvalue().splitlines() if "global_waiting_for_key" in line]
    assert len(lines) == 1, lines
    assert "level=warning" in lines[0]
    assert f"epoch={epochs[0].epoch_id.hex()[:16]}" in lines[0]
    assert "round=2" in lines[0]
    assert "waiting=2" in lines[0]
