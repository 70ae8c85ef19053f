"""Cut a valid frame at the start of each field of its documented layout and check that the
decoder names that very field and offset: what an operator reads in a log line."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pqlink import DecodeError, ErrorReason


def signed_header(sender_id_length: int) -> list[tuple[str, int]]:
    """The fields every signed pqlink frame opens with (docs/protocol.md), as (field, size):
    type, version, content type, signature algorithm, sender id and round."""
    return [
        ("type", 1),
        ("version", 1),
        ("content type", 1),
        ("signature algorithm", 1),
        ("sender id length", 1),
        ("sender id", sender_id_length),
        ("round", 8),
    ]


def field_starts(layout: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(field, start offset) for each field of a layout given as (field, size)."""
    out, pos = [], 0
    for name, size in layout:
        out.append((name, pos))
        pos += size
    return out


def check_cuts(
    parse: Callable[[bytes], object],
    frame: bytes,
    what: str,
    layout: list[tuple[str, int]],
    *,
    error: type[DecodeError] = DecodeError,
    reason: ErrorReason = ErrorReason.TRUNCATED,
) -> None:
    """`frame` cut at each field's start makes `parse` raise `error` with `reason`, naming the
    frame (`what`), the field and the offset."""
    assert sum(size for _, size in layout) == len(frame)
    for field, start in field_starts(layout):
        with pytest.raises(error) as err:
            parse(frame[:start])
        assert err.value.reason is reason
        message = str(err.value)
        assert message.startswith(f"{what}: truncated in {field} (need "), message
        assert f" at offset {start}, frame has {start})" in message, message
