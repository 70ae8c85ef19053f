"""Structured event logging: stable event names with fields, to journald (native protocol,
fields such as IOMT_EVENT, DEVICE_ID, REASON) when it is there, else logfmt lines on stderr."""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
import time
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "iomt-gateway"
FieldValue = str | int | float | bool | None
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# syslog priorities of the Python levels
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*")


def _check(fields: dict[str, FieldValue]) -> None:
    for key, value in fields.items():
        if isinstance(value, bytes | bytearray | memoryview):
            # Bytes are how keys and payloads look: they never go to a log.
            raise TypeError(f"log field {key!r} is bytes; log a short hex id or a count instead")


class EventLog:
    """`event(name, **fields)`; subclasses choose the sink."""

    def __init__(self, level: int = logging.INFO) -> None:
        self.level = level

    def event(self, name: str, *, level: int = logging.INFO, **fields: FieldValue) -> None:
        _check(fields)
        if level >= self.level:
            self._emit(name, level, {k: v for k, v in fields.items() if v is not None})

    def _emit(self, name: str, level: int, fields: dict[str, FieldValue]) -> None:
        raise NotImplementedError


def _logfmt(value: FieldValue) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class StderrLog(EventLog):
    """One logfmt line per event: `ts=… level=… event=… key=value …`."""

    def __init__(self, level: int = logging.INFO, stream: TextIO | None = None) -> None:
        super().__init__(level)
        self.stream = stream or sys.stderr

    def _emit(self, name: str, level: int, fields: dict[str, FieldValue]) -> None:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        parts = [f"ts={ts}", f"level={logging.getLevelName(level).lower()}", f"event={name}"]
        parts += [f"{key}={_logfmt(value)}" for key, value in fields.items()]
        self.stream.write(" ".join(parts) + "\n")
        self.stream.flush()


class JournalLog(EventLog):
    """Structured journal entries in journald's native protocol, written here (the same
    datagrams sd_journal_send produces), so a bare venv logs structured fields too."""

    def __init__(self, level: int = logging.INFO, path: str = JOURNAL_SOCKET) -> None:
        super().__init__(level)
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dropped = 0

    def close(self) -> None:
        self._sock.close()

    def _emit(self, name: str, level: int, fields: dict[str, FieldValue]) -> None:
        text = " ".join([name, *(f"{k}={_logfmt(v)}" for k, v in fields.items())])
        entries: dict[str, str] = {
            "MESSAGE": text,
            "PRIORITY": str(_PRIORITY.get(level, 6)),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "IOMT_EVENT": name,
        }
        for key, value in fields.items():
            upper = key.upper()
            if _FIELD.fullmatch(upper):
                entries[upper] = str(value).lower() if isinstance(value, bool) else str(value)
        packet = bytearray()
        for key, value in entries.items():
            raw = value.encode()
            if b"\n" in raw:
                packet += key.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
            else:
                packet += key.encode() + b"=" + raw + b"\n"
        try:
            self._sock.sendto(bytes(packet), self.path)
        except OSError:
            self.dropped += 1


def setup_logging(
    *, journal: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> EventLog:
    """journal None: journald when its socket exists (under systemd), else stderr."""
    lvl = _LEVELS.get(level)
    if lvl is None:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    use_journal = os.path.exists(JOURNAL_SOCKET) if journal is None else journal
    if use_journal:
        return JournalLog(lvl)
    return StderrLog(lvl, stream)
