"""The spool's halves of global-model broadcasts with a plain join: bodies waiting per key epoch
until its entry comes, and how durably each half is committed (synced unless told otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.spool import Spool

FULL, NORMAL = 2, 1  # SQLite's synchronous levels
E1, E2 = b"\x01" * 16, b"\x02" * 16


def _join(body: bytes, entry: bytes) -> bytes:
    return body + b"|" + entry


def test_bodies_wait_per_epoch_until_its_entry(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite3") as spool:
        assert spool.waiting_bodies(E1) == 0
        assert spool.put_global_part(E1, "body", b"b1", 1, _join) is False
        assert spool.waiting_bodies(E1) == 1
        assert spool.put_global_part(E1, "body", b"b2", 2, _join) is False
        assert spool.put_global_part(E2, "body", b"c1", 1, _join) is False
        assert (spool.waiting_bodies(E1), spool.waiting_bodies(E2)) == (2, 1)
        assert spool.put_global_part(E1, "entry", b"k1", None, _join) is True
        assert (spool.waiting_bodies(E1), spool.waiting_bodies(E2)) == (0, 1)
        assert spool.take_global() == (2, b"b2|k1")  # the newest body of the epoch
        spool.done_global(2)
        assert spool.take_global() is None
        # the entry stays for the epoch's later bodies: nothing waits for it any more
        assert spool.put_global_part(E1, "body", b"b3", 3, _join) is True
        assert spool.waiting_bodies(E1) == 0
        assert spool.take_global() == (3, b"b3|k1")


@pytest.mark.parametrize("kind", ["entry", "body"])
@pytest.mark.parametrize(("synced", "level"), [(None, FULL), (True, FULL), (False, NORMAL)])
def test_a_part_commits_at_its_sync_level_and_full_is_restored(
    tmp_path: Path, kind: str, synced: bool | None, level: int
) -> None:
    """Synced by default; `synced=False` commits at NORMAL, and FULL is back afterwards."""
    levels: list[int] = []
    with Spool(tmp_path / "spool.sqlite3") as spool:

        def join(body: bytes, entry: bytes) -> bytes:
            levels.append(spool.synchronous())
            return _join(body, entry)

        first, second = ("body", "entry") if kind == "entry" else ("entry", "body")
        spool.put_global_part(E1, first, b"first", 4, join)
        options = {} if synced is None else {"synced": synced}
        assert spool.put_global_part(E1, second, b"second", 4, join, **options) is True
        assert levels == [level]
        assert spool.synchronous() == FULL
