"""A gateway's intake of global-model broadcasts: bodies and their key epoch's entry arrive apart,
in either order; the entry is kept durably for every body of its epoch, a body waits for it,
and what waits is bounded without ever evicting the entry that opens the newest body."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.spool import MAX_GLOBAL_ENTRIES, MAX_WAITING_BODIES, Spool
from pqlink import ContentType, DecodeError
from pqlink.broadcast import (
    BroadcastEpoch,
    join_delivery,
    new_epoch,
    open_delivery,
    peek_broadcast,
    peek_entry,
    seal_broadcast,
    split_delivery,
)

from .conftest import Parties


def _epoch(parties: Parties) -> BroadcastEpoch:
    return new_epoch([parties.gateway.public, parties.other_gateway.public])


def _body(parties: Parties, epoch: BroadcastEpoch, round_: int) -> bytes:
    return seal_broadcast(
        parties.aggregator,
        epoch,
        b"global model %d" % round_,
        content_type=ContentType.GLOBAL_MODEL,
        round=round_,
    ).body


def _put_body(spool: Spool, body: bytes) -> bool:
    """As the uplink keeps a body: under its epoch and round, unsynced (the stream keeps it)."""
    meta = peek_broadcast(body)
    return spool.put_global_part(
        meta.epoch_id, "body", body, meta.round, join_delivery, synced=False
    )


def _put_entry(spool: Spool, entry: bytes) -> bool:
    """As the uplink keeps an entry: synced (it leaves its queue with the ack)."""
    return spool.put_global_part(peek_entry(entry).epoch_id, "entry", entry, None, join_delivery)


def _count(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as con:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _opens(parties: Parties, spool: Spool, round_: int) -> None:
    taken = spool.take_global()
    assert taken is not None
    assert taken[0] == round_
    opened = open_delivery(taken[1], parties.gateway, parties.aggregator_registry())
    assert opened.payload == b"global model %d" % round_
    spool.done_global(round_)


@pytest.mark.parametrize("body_first", [True, False], ids=["body_first", "entry_first"])
def test_halves_pair_in_either_order(parties: Parties, tmp_path: Path, body_first: bool) -> None:
    epoch = _epoch(parties)
    body, entry = _body(parties, epoch, 3), epoch.entries["gw-01"]
    spool = Spool(tmp_path / "s.db")
    assert (_put_body if body_first else _put_entry)(spool, body if body_first else entry) is False
    assert spool.take_global() is None  # half a broadcast is not a global model yet
    spool.close()
    spool = Spool(tmp_path / "s.db")  # a process restart in between loses nothing
    assert (_put_entry if body_first else _put_body)(spool, entry if body_first else body) is True
    taken = spool.take_global()
    assert taken is not None
    assert split_delivery(taken[1]) == (body, entry)
    _opens(parties, spool, 3)
    # the entry stays for the epoch's later bodies; no body waits
    assert _count(tmp_path / "s.db", "global_entries") == 1
    assert _count(tmp_path / "s.db", "global_bodies") == 0
    spool.close()


def test_later_bodies_of_the_epoch_open_with_the_kept_entry(
    parties: Parties, tmp_path: Path
) -> None:
    epoch = _epoch(parties)
    spool = Spool(tmp_path / "s.db")
    assert _put_entry(spool, epoch.entries["gw-01"]) is False
    for round_ in (1, 2, 3):
        assert _put_body(spool, _body(parties, epoch, round_)) is True  # no new entry needed
        _opens(parties, spool, round_)
    spool.close()


def test_restart_with_the_entry_in_the_spool(parties: Parties, tmp_path: Path) -> None:
    """The entry left its queue when it was acknowledged: the spool has it, so the newest
    body the stream gives again after a restart opens."""
    epoch = _epoch(parties)
    with Spool(tmp_path / "s.db") as spool:
        assert _put_body(spool, _body(parties, epoch, 1)) is False
        assert _put_entry(spool, epoch.entries["gw-01"]) is True
        _opens(parties, spool, 1)
    with Spool(tmp_path / "s.db") as spool:
        assert _put_body(spool, _body(parties, epoch, 2)) is True
        _opens(parties, spool, 2)


def test_an_entry_completes_the_newest_waiting_body(parties: Parties, tmp_path: Path) -> None:
    epoch, other = _epoch(parties), _epoch(parties)
    spool = Spool(tmp_path / "s.db")
    for round_ in (4, 6, 5):
        assert _put_body(spool, _body(parties, epoch, round_)) is False
    assert _put_body(spool, _body(parties, other, 7)) is False  # another epoch's: it waits on
    assert _put_entry(spool, epoch.entries["gw-01"]) is True
    _opens(parties, spool, 6)
    assert spool.take_global() is None  # the superseded bodies went with it
    assert _count(tmp_path / "s.db", "global_bodies") == 1  # round 7's
    spool.close()


def test_many_bodies_never_evict_the_current_entry(parties: Parties, tmp_path: Path) -> None:
    current, foreign = _epoch(parties), _epoch(parties)
    spool = Spool(tmp_path / "s.db")
    _put_entry(spool, current.entries["gw-01"])
    for round_ in range(1, 3 * MAX_WAITING_BODIES):  # bodies of an epoch never entered here
        _put_body(spool, _body(parties, foreign, round_))
    for round_ in range(100, 100 + 2 * MAX_WAITING_BODIES):  # and of the current one
        assert _put_body(spool, _body(parties, current, round_)) is True
    _opens(parties, spool, 100 + 2 * MAX_WAITING_BODIES - 1)
    assert _count(tmp_path / "s.db", "global_entries") == 1
    assert _count(tmp_path / "s.db", "global_bodies") == MAX_WAITING_BODIES
    spool.close()


def test_waiting_bodies_are_bounded(parties: Parties, tmp_path: Path) -> None:
    epoch = _epoch(parties)
    spool = Spool(tmp_path / "s.db")
    for round_ in range(1, MAX_WAITING_BODIES + 1):
        _put_body(spool, _body(parties, epoch, round_))
    assert _count(tmp_path / "s.db", "global_bodies") == MAX_WAITING_BODIES
    _put_body(spool, _body(parties, epoch, MAX_WAITING_BODIES + 1))
    assert _count(tmp_path / "s.db", "global_bodies") == MAX_WAITING_BODIES  # the oldest went
    with closing(sqlite3.connect(tmp_path / "s.db")) as con:
        assert con.execute("SELECT min(round) FROM global_bodies").fetchone()[0] == 2
    spool.close()


def test_entries_are_bounded_by_epochs(parties: Parties, tmp_path: Path) -> None:
    epochs = [_epoch(parties) for _ in range(MAX_GLOBAL_ENTRIES + 1)]
    spool = Spool(tmp_path / "s.db")
    for epoch in epochs[:MAX_GLOBAL_ENTRIES]:
        _put_entry(spool, epoch.entries["gw-01"])
    assert _count(tmp_path / "s.db", "global_entries") == MAX_GLOBAL_ENTRIES
    _put_entry(spool, epochs[-1].entries["gw-01"])
    assert _count(tmp_path / "s.db", "global_entries") == MAX_GLOBAL_ENTRIES  # the oldest went
    assert _put_body(spool, _body(parties, epochs[0], 1)) is False
    for round_, epoch in enumerate(epochs[1:], start=2):
        assert _put_body(spool, _body(parties, epoch, round_)) is True
    spool.close()


def test_a_spool_of_the_per_broadcast_entries_is_migrated(tmp_path: Path) -> None:
    """A spool file of the previous version: its unpaired halves (version-1 frames, which no
    longer open) are dropped, everything else is kept."""
    path = tmp_path / "s.db"
    with closing(sqlite3.connect(path)) as con:
        con.executescript(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER NOT NULL,"
            " envelope BLOB NOT NULL, created REAL NOT NULL, seal_seconds REAL NOT NULL"
            " DEFAULT 0);"
            "CREATE TABLE global_parts (broadcast_id BLOB NOT NULL, kind TEXT NOT NULL,"
            " round INTEGER, frame BLOB NOT NULL, received REAL NOT NULL,"
            " PRIMARY KEY (broadcast_id, kind));"
            "INSERT INTO outbox (round, envelope, created) VALUES (4, x'00', 0);"
            "INSERT INTO global_parts VALUES (x'01', 'entry', NULL, x'0601', 0);"
        )
    with Spool(path) as spool:
        assert [o.round for o in spool.pending_updates()] == [4]
        assert spool.put_global_part(b"e" * 16, "entry", b"entry", None, join_delivery) is False
    with closing(sqlite3.connect(path)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "global_parts" not in tables
    assert {"global_entries", "global_bodies"} <= tables


def test_a_part_is_a_body_or_an_entry(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        with pytest.raises(ValueError, match="body or an entry, not 'model'"):
            spool.put_global_part(b"e" * 16, "model", b"x", 1, join_delivery)
        with pytest.raises(ValueError, match="under its round"):
            spool.put_global_part(b"e" * 16, "body", b"x", None, join_delivery)


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
