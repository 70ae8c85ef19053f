"""Bounds-checked reading and writing of the big-endian wire fields every pqlink frame uses.

Every short read or bad value raises DecodeError, so decoders never raise anything else."""

from __future__ import annotations

import re
import struct

from pqlink._errors import DecodeError, ErrorReason

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

#: Identifiers (device, gateway, aggregator ids) are short printable ASCII names.
ID_PATTERN = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_ID_LEN = 64


def check_identifier(name: str) -> bytes:
    """Return the wire form of an identifier, or raise ValueError naming the bad value."""
    raw = name.encode("ascii", errors="replace")
    if not ID_PATTERN.fullmatch(raw):
        raise ValueError(
            f"identifier {name!r} is invalid: expected 1-64 characters of A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit"
        )
    return raw


class Reader:
    """Consumes a frame from the front; every method raises DecodeError on short input."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def _take(self, n: int, field: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(
                f"{self._what}: truncated in {field} (need {n} bytes at offset {self._pos}, "
                f"frame has {len(self._data)})",
                reason=ErrorReason.TRUNCATED,
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    @property
    def offset(self) -> int:
        return self._pos

    def u8(self, field: str) -> int:
        return self._take(1, field)[0]

    def u16(self, field: str) -> int:
        return int(_U16.unpack(self._take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(_U32.unpack(self._take(4, field))[0])

    def u64(self, field: str) -> int:
        return int(_U64.unpack(self._take(8, field))[0])

    def raw(self, n: int, field: str) -> bytes:
        return self._take(n, field)

    def identifier(self, field: str) -> str:
        n = self.u8(field + " length")
        raw = self._take(n, field)
        if not ID_PATTERN.fullmatch(raw):
            raise DecodeError(
                f"{self._what}: {field} is not a valid identifier",
                reason=ErrorReason.BAD_IDENTIFIER,
            )
        return raw.decode("ascii")

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def end(self) -> None:
        if self._pos != len(self._data):
            raise DecodeError(
                f"{self._what}: {len(self._data) - self._pos} unexpected trailing bytes",
                reason=ErrorReason.TRAILING_BYTES,
            )


class Writer:
    """Builds a frame by appending fields."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(bytes((value,)))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(_U64.pack(value))
        return self

    def raw(self, value: bytes) -> Writer:
        self._parts.append(bytes(value))
        return self

    def identifier(self, name: str) -> Writer:
        raw = check_identifier(name)
        self._parts.append(bytes((len(raw),)) + raw)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
