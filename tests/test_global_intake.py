"""A gateway's intake of global-model broadcasts: the body and its key entry arrive apart, in
either order, are kept durably until both are there, then open together; unpaired halves are
bounded."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.spool import MAX_GLOBAL_PARTS, Spool
from pqlink import ContentType, DecodeError, Registry
from pqlink.broadcast import (
    SealedBroadcast,
    join_delivery,
    open_delivery,
    peek_broadcast,
    peek_entry,
    seal_broadcast,
    split_delivery,
)

from .conftest import Parties


def _sealed(parties: Parties, round_: int) -> SealedBroadcast:
    return seal_broadcast(
        parties.aggregator,
        [parties.gateway.public, parties.other_gateway.public],
        b"global model %d" % round_,
        content_type=ContentType.GLOBAL_MODEL,
        round=round_,
    )


def _senders(parties: Parties) -> Registry:
    reg = Registry()
    reg.enroll(parties.aggregator.public)
    return reg


@pytest.mark.parametrize("body_first", [True, False], ids=["body_first", "entry_first"])
def test_halves_pair_in_either_order(parties: Parties, tmp_path: Path, body_first: bool) -> None:
    sealed = _sealed(parties, 3)
    body, entry = sealed.body, sealed.entries["gw-01"]
    bid = peek_broadcast(body).broadcast_id
    halves = [(bid, "body", body, 3), (peek_entry(entry).broadcast_id, "entry", entry, None)]
    if not body_first:
        halves.reverse()
    spool = Spool(tmp_path / "s.db")
    # As the uplink keeps them: the body unsynced (the broker's stream keeps it), the entry
    # synced.
    synced = [h[1] != "body" for h in halves]
    assert spool.put_global_part(*halves[0], join_delivery, synced=synced[0]) is False
    assert spool.take_global() is None  # half a broadcast is not a global model yet
    spool.close()
    spool = Spool(tmp_path / "s.db")  # a process restart in between loses nothing
    assert spool.put_global_part(*halves[1], join_delivery, synced=synced[1]) is True
    taken = spool.take_global()
    assert taken is not None
    round_, frame = taken
    assert round_ == 3
    assert split_delivery(frame) == (body, entry)
    opened = open_delivery(frame, parties.gateway, _senders(parties))
    assert opened.payload == b"global model 3"
    with closing(sqlite3.connect(tmp_path / "s.db")) as con:
        assert con.execute("SELECT count(*) FROM global_parts").fetchone()[0] == 0
    spool.close()


def test_unpaired_halves_are_bounded(parties: Parties, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for i in range(MAX_GLOBAL_PARTS):
        spool.put_global_part(os.urandom(16), "entry", b"e%d" % i, None, join_delivery)

    def held() -> int:
        con = sqlite3.connect(tmp_path / "s.db")
        try:
            return int(con.execute("SELECT count(*) FROM global_parts").fetchone()[0])
        finally:
            con.close()

    assert held() == MAX_GLOBAL_PARTS
    spool.put_global_part(os.urandom(16), "entry", b"newest", None, join_delivery)
    assert held() == MAX_GLOBAL_PARTS  # the oldest went
    spool.close()


def test_batched_writes_commit_together(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")

    def crash_between_writes() -> None:
        with spool.transaction():
            spool.put_update(1, b"update")
            spool.set_state("last_round", 1)
            raise RuntimeError("crash between the writes")

    with pytest.raises(RuntimeError, match="crash between the writes"):
        crash_between_writes()
    assert spool.depth() == 0
    assert spool.get_state("last_round") == 0
    with spool.transaction():
        spool.put_update(1, b"update")
        spool.set_state("last_round", 1)
    assert (spool.depth(), spool.get_state("last_round")) == (1, 1)
    spool.close()


def test_delivery_frame_is_checked() -> None:
    with pytest.raises(DecodeError, match="not a broadcast delivery"):
        split_delivery(b"\x05\x01")
    with pytest.raises(DecodeError, match="truncated in body"):
        split_delivery(join_delivery(b"body", b"entry")[:7])
    with pytest.raises(DecodeError, match="version 2"):
        split_delivery(b"\x07\x02" + join_delivery(b"b", b"e")[2:])


def test_unsynced_transaction_leaves_commits_synced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    assert spool.synchronous() == 2  # FULL
    with spool.transaction(synced=False):
        spool.put_global(1, b"global")
    assert spool.synchronous() == 2  # the next commit is synced again

    def fails() -> None:
        with spool.transaction(synced=False):
            spool.put_global(2, b"global")
            raise RuntimeError("failed inside")

    with pytest.raises(RuntimeError, match="failed inside"):
        fails()
    assert spool.synchronous() == 2
    assert spool.take_global() == (1, b"global")  # the failed one rolled back
    spool.close()
