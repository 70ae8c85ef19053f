"""The spool's outbox as the uplink drains it: a confirmation removes exactly its update and
hands back what is still to publish, in order, durably."""

from __future__ import annotations

from pathlib import Path

from gateway.spool import Spool


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
