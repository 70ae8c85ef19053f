"""The dead-letter queue over a real RabbitMQ: poison updates end there with their reasons
while the workers keep serving honest ones, and an update that keeps killing workers is moved
there by the broker after exactly its delivery limit."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pika
import pytest

from aggregator.cli import main as aggregator_main
from aggregator.dead_letters import DeadLetter, list_dead_letters
from aggregator.worker import declare_topology
from pqlink import ContentType, Identity, Role, seal_envelope
from wire.amqp import (
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_QUEUE_ARGUMENTS,
    UPDATE_DELIVERY_LIMIT,
    UPDATES_QUEUE,
    UPDATES_QUEUE_ARGUMENTS,
)

from .fl_harness import Aggregator, publish_updates, sealed_update
from .harness import wait_until


def _nested_update(gw: Identity, agg: Identity, round_: int, depth: int) -> bytes:
    """An update from an enrolled gateway whose metadata nests `depth` JSON lists (it used to
    raise RecursionError in every worker in turn)."""
    blob = b"[" * depth + b"]" * depth
    payload = struct.pack(">4sII", b"IMU1", 0, len(blob)) + blob
    return seal_envelope(
        gw,
        [agg.public],
        payload,
        content_type=ContentType.MODEL_UPDATE,
        round=round_,
        sample_count=100,
    )


def _depth(url: str, queue: str, arguments: dict[str, object]) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ok = conn.channel().queue_declare(queue, durable=True, arguments=arguments)
        return int(ok.method.message_count or 0)
    finally:
        conn.close()


def test_poison_updates_are_dead_lettered_and_the_worker_keeps_serving(
    tmp_path: Path, vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    gateways = [Identity.generate(f"gw-{i}", Role.GATEWAY) for i in range(1, 3)]
    agg = Aggregator(tmp_path / "agg", vhost, gateways)
    try:
        agg.spawn("coordinator")
        worker = agg.spawn("worker", "--name", "w1")
        wait_until(lambda: bool(agg.db("SELECT round FROM rounds")), 30, "round 1 to open")
        stranger = Identity.generate("gw-1", Role.GATEWAY)  # claims gw-1 with another key
        unknown = Identity.generate("gw-9", Role.GATEWAY)  # never enrolled
        delta = np.full(agg.parameters, 0.01, np.float32)
        poison = {
            "nested": _nested_update(gateways[0], agg.identity, 1, 30_000),
            "bad_signature": sealed_update(stranger, agg.identity, 1, delta),
            "unenrolled": sealed_update(unknown, agg.identity, 1, delta),
            "garbage": b"\x00garbage",
        }
        publish_updates(vhost, list(poison.values()))
        # The poison first, then the honest updates: the same worker must count them.
        publish_updates(vhost, [sealed_update(gw, agg.identity, 1, delta) for gw in gateways])
        wait_until(lambda: agg.closed_rounds() >= 1, 60, "round 1 to close")
        assert worker.poll() is None  # never crashed
        rows = agg.db("SELECT gateway FROM contributions WHERE round = 1 ORDER BY gateway")
        assert rows == [("gw-1",), ("gw-2",)]

        depth, letters = list_dead_letters(vhost, 10)
        assert depth == len(poison)
        by_digest = {d.sha256: d for d in letters}
        assert set(by_digest) == {hashlib.sha256(f).hexdigest() for f in poison.values()}

        def letter(name: str) -> DeadLetter:
            return by_digest[hashlib.sha256(poison[name]).hexdigest()]

        assert letter("nested").reason == "malformed"
        assert "not JSON" in letter("nested").detail
        assert letter("nested").gateway == "gw-1"
        assert letter("nested").round == 1
        assert letter("bad_signature").reason == "bad_signature"
        assert letter("unenrolled").reason == "unenrolled"
        assert letter("garbage").reason == "malformed"
        assert all(d.source == "worker" and d.worker == "w1" for d in letters)
        # Listing takes nothing out; the updates queue holds nothing to redeliver.
        assert list_dead_letters(vhost, 10)[0] == len(poison)
        assert _depth(vhost, UPDATES_QUEUE, UPDATES_QUEUE_ARGUMENTS) == 0

        capsys.readouterr()
        assert aggregator_main(["dead-letters", "--config", str(agg.config), "--limit", "1"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["queued"] == len(poison)
        assert len(shown["listed"]) == 1
        assert shown["listed"][0]["reason"] in {"malformed", "bad_signature", "unenrolled"}
        assert aggregator_main(["dead-letters", "--config", str(agg.config), "--limit", "-1"]) == 2
    finally:
        agg.stop()


def test_update_killing_its_workers_is_dead_lettered_after_its_delivery_limit(
    vhost: str,
) -> None:
    setup = pika.BlockingConnection(pika.URLParameters(vhost))
    declare_topology(setup.channel())
    setup.close()
    publish_updates(vhost, [b"kills every worker that takes it"])

    def crash_holding_it() -> None:
        # A worker that takes the update and dies before acknowledging it: the connection
        # goes, the broker returns the update and counts the delivery.
        conn = pika.BlockingConnection(pika.URLParameters(vhost))
        method, _, _ = conn.channel().basic_get(UPDATES_QUEUE, auto_ack=False)
        assert method is not None
        conn.close()

    for _ in range(UPDATE_DELIVERY_LIMIT):
        crash_holding_it()
    # At the limit: still queued for the next worker.
    assert _depth(vhost, UPDATES_QUEUE, UPDATES_QUEUE_ARGUMENTS) == 1
    assert _depth(vhost, DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_ARGUMENTS) == 0
    crash_holding_it()  # one more: the broker gives up on it
    wait_until(
        lambda: _depth(vhost, DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_ARGUMENTS) == 1,
        10,
        "the broker to dead-letter the update",
    )
    assert _depth(vhost, UPDATES_QUEUE, UPDATES_QUEUE_ARGUMENTS) == 0
    depth, letters = list_dead_letters(vhost, 5)
    assert depth == 1
    (letter,) = letters
    assert (letter.source, letter.reason) == ("broker", "delivery_limit")
    assert letter.detail == f"from queue {UPDATES_QUEUE}"
    assert letter.size == len(b"kills every worker that takes it")
