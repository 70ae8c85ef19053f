"""Structured logging and sd_notify in detail: logfmt quoting and escaping, the UTC timestamp
and lower-case level of each stderr line, the journald fields in its native protocol (the bool
spelling, the MESSAGE line, the count of dropped datagrams), the sink setup_logging picks, and
the watchdog environment rules and the RELOADING timestamp of the notifier. Sockets are real
AF_UNIX datagram sockets in tmp_path."""

from __future__ import annotations

import calendar
import io
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest

from servicekit import logs
from servicekit.logs import JournalLog, StderrLog, setup_logging
from servicekit.notify import Notifier

from .test_notify_and_logs import _parse_native

TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def _line(fields: dict[str, logs.FieldValue]) -> str:
    """The key=value part of the stderr line of one event with these fields."""
    stream = io.StringIO()
    log = StderrLog(stream=stream)
    log.event("e", **fields)  # type: ignore[arg-type]
    line = stream.getvalue()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    head = " event=e"
    return line[line.index(head) + len(head) :].rstrip("\n").lstrip(" ")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("wearable-0003", "wearable-0003"),
        ("XYZ", "XYZ"),  # upper case is neither quoted nor folded
        ("X", "X"),
        ("a\\b", "a\\b"),  # a backslash alone needs no quotes
        (7, "7"),
        (1, "1"),
        (0.5, "0.5"),
        (True, "true"),
        (False, "false"),
        ("", '""'),
        ("two words", '"two words"'),
        ("k=v", '"k=v"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a b\\c", '"a b\\\\c"'),
        ("line1\nline2", '"line1\\nline2"'),
    ],
)
def test_logfmt_values(value: logs.FieldValue, text: str) -> None:
    assert _line({"v": value}) == f"v={text}"


def test_none_fields_are_left_out() -> None:
    assert _line({"a": None, "b": "x"}) == "b=x"


def test_stderr_line_has_utc_timestamp_and_lower_case_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a zone far from UTC: the timestamp must still be UTC ("Z")
    monkeypatch.setenv("TZ", "XST-5:30")
    time.tzset()
    try:
        stream = io.StringIO()
        log = StderrLog(level=logging.DEBUG, stream=stream)
        before = int(time.time())
        log.event("started", level=logging.WARNING, port=1883)
        log.event("tick", level=logging.DEBUG)
        after = int(time.time())
    finally:
        monkeypatch.undo()
        time.tzset()
    first, second = stream.getvalue().splitlines()
    match = re.fullmatch(r"ts=(\S+) level=warning event=started port=1883", first)
    assert match is not None, first
    assert TS.fullmatch(match.group(1))
    stamp = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ"))
    assert before <= stamp <= after
    assert re.fullmatch(r"ts=\S+ level=debug event=tick", second)


def test_level_filter() -> None:
    stream = io.StringIO()
    log = setup_logging(journal=False, level="warning", stream=stream)
    assert log.level == logging.WARNING
    log.event("quiet", level=logging.INFO)
    assert stream.getvalue() == ""
    log.event("loud", level=logging.WARNING)
    assert "level=warning event=loud" in stream.getvalue()


def test_journal_fields_and_message(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.socket")
    sock = _listen(path)
    log = JournalLog(path=path)
    log.event("gateway_ready", ok=True, degraded=False, sessions=3, mode="SECURE", note=None)
    fields = _parse_native(sock.recv(65536))
    log.close()
    sock.close()
    assert fields == {
        "MESSAGE": "gateway_ready ok=true degraded=false sessions=3 mode=SECURE",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "iomt-gateway",
        "IOMT_EVENT": "gateway_ready",
        "OK": "true",
        "DEGRADED": "false",
        "SESSIONS": "3",
        "MODE": "SECURE",
    }


def test_journal_counts_each_dropped_datagram(tmp_path: Path) -> None:
    log = JournalLog(path=str(tmp_path / "absent.socket"))
    assert log.dropped == 0
    log.event("lost")
    assert log.dropped == 1
    log.event("lost")
    log.event("lost")
    assert log.dropped == 3
    log.close()


def test_native_protocol_on_the_journal_socket_without_systemd_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "journal.socket")
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", path)
    sock = _listen(path)
    log = JournalLog(path=path)
    log.event("up", level=logging.ERROR)
    fields = _parse_native(sock.recv(65536))
    log.close()
    sock.close()
    assert (fields["IOMT_EVENT"], fields["PRIORITY"]) == ("up", "3")
    assert log.dropped == 0


def test_setup_logging_picks_the_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "journal.socket")
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", path)
    # no journald socket: None means stderr, True still means the journal
    assert isinstance(setup_logging(journal=None), StderrLog)
    forced = setup_logging(journal=True, level="warning")
    assert isinstance(forced, JournalLog)
    assert forced.level == logging.WARNING
    forced.close()
    sock = _listen(path)
    found = setup_logging(journal=None, level="debug")
    assert isinstance(found, JournalLog)
    assert found.level == logging.DEBUG
    found.close()
    assert isinstance(setup_logging(journal=False), StderrLog)
    sock.close()


# -- sd_notify ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "interval"),
    [("0", None), ("1", 5e-7), ("2", 1e-6), ("-5", None), ("abc", None), ("", None)],
)
def test_watchdog_usec_limits(usec: str, interval: float | None) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": usec})
    assert n.watchdog_interval == interval


def test_watchdog_for_this_process() -> None:
    env = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(env).watchdog_interval == 1.5
    env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert Notifier.from_environ(env).watchdog_interval is None


def test_failures_are_counted(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "absent"))
    assert n.enabled
    assert n.failures == 0
    assert not n.ready()
    assert not n.watchdog()
    assert not n.status("x")
    assert n.failures == 3


def test_reloading_carries_monotonic_microseconds(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = _listen(path)
    n = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = sock.recv(256).decode()
    sock.close()
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match is not None, message
    assert before <= int(match.group(1)) <= after
