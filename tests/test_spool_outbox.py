"""The spool's outbox as the uplink drains it: a confirmation removes exactly its update and
hands back what is still to publish, in order, durably; the spool file itself (created with its
directories, used from a thread other than the one that opened it)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.spool import Outgoing, Spool

DEFAULT_BATCH = 100  # updates handed back at most unless a limit is given


def test_confirmation_hands_back_the_rest_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        first = spool.put_update(1, b"update one", 0.001)
        second = spool.put_update(2, b"update two", 0.002)
        rest = spool.confirmed_then_pending(first)
        assert [(u.id, u.round, u.envelope) for u in rest] == [(second, 2, b"update two")]
        assert spool.confirmed_then_pending(second) == []
        assert spool.depth() == 0
        assert spool.synchronous() == 2  # FULL again for the commits that need a sync


def test_confirming_an_unknown_id_removes_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        only = spool.put_update(7, b"update", 0.0)
        assert [u.id for u in spool.confirmed_then_pending(only + 1)] == [only]
        assert spool.depth() == 1


def test_confirmation_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    with Spool(path) as spool:
        first = spool.put_update(1, b"a", 0.0)
        spool.put_update(2, b"b", 0.0)
        spool.confirmed_then_pending(first)
    with Spool(path) as reopened:
        assert [u.round for u in reopened.pending_updates()] == [2]


def test_updates_keep_their_seal_seconds(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        timed = spool.put_update(3, b"timed", 0.25)
        untimed = spool.put_update(4, b"untimed")
        assert spool.pending_updates() == [
            Outgoing(timed, 3, b"timed", 0.25),
            Outgoing(untimed, 4, b"untimed", 0.0),
        ]


def _fill(spool: Spool, n: int) -> list[int]:
    with spool.transaction():
        return [spool.put_update(r, b"u%d" % r) for r in range(n)]


def test_pending_updates_hands_back_a_hundred_by_default(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        ids = _fill(spool, DEFAULT_BATCH + 1)
        assert [u.id for u in spool.pending_updates()] == ids[:DEFAULT_BATCH]
        assert [u.id for u in spool.pending_updates(DEFAULT_BATCH + 1)] == ids


def test_confirmation_hands_back_a_hundred_by_default(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        ids = _fill(spool, DEFAULT_BATCH + 2)
        rest = spool.confirmed_then_pending(ids[0])
        assert [u.id for u in rest] == ids[1 : DEFAULT_BATCH + 1]
        assert spool.depth() == DEFAULT_BATCH + 1


def test_the_deletion_is_committed_without_a_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        first = spool.put_update(1, b"a")
        levels: list[int] = []
        confirmed = spool.confirmed

        def observed(update_id: int) -> None:
            levels.append(spool.synchronous())
            confirmed(update_id)

        monkeypatch.setattr(spool, "confirmed", observed)
        assert spool.confirmed_then_pending(first) == []
        assert levels == [1]  # NORMAL while deleting
        assert spool.synchronous() == 2  # FULL again afterwards


def test_spool_creates_its_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "spool.sqlite3"
    with Spool(path) as spool:
        spool.put_update(1, b"a")
    assert path.is_file()


def test_spool_opened_in_one_thread_is_used_from_another(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        opener = threading.get_ident()

        def store_thread() -> list[Outgoing]:
            assert threading.get_ident() != opener
            spool.put_update(5, b"from the store thread")
            return spool.pending_updates()

        with ThreadPoolExecutor(max_workers=1) as pool:
            done = pool.submit(store_thread).result()
        assert [(u.round, u.envelope) for u in done] == [(5, b"from the store thread")]
