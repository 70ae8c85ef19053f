"""sd_notify datagrams on a real socket (path and abstract), and the structured logs on stderr
and in journald's native protocol (read from a socket bound by the test)."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from servicekit.logs import JournalLog, StderrLog, setup_logging
from servicekit.notify import Notifier

ROOT = Path(__file__).resolve().parents[1]


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def test_notifier_sends_each_message(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = _listen(path)
    n = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.watchdog_interval == 2.0
    for call, expected in (
        (n.ready, b"READY=1"),
        (n.watchdog, b"WATCHDOG=1"),
        (n.stopping, b"STOPPING=1"),
    ):
        assert call()
        assert sock.recv(256) == expected
    assert n.status("3 sessions\nok")
    assert sock.recv(256) == b"STATUS=3 sessions ok"
    assert n.reloading()
    assert sock.recv(256).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    sock.close()
    os.unlink(path)
    assert not n.ready()  # systemd gone: no exception, just counted
    assert n.failures == 1


def test_abstract_socket_and_no_socket() -> None:
    name = f"@iomt-test-{os.getpid()}"
    sock = _listen("\0" + name[1:])
    assert Notifier.from_environ({"NOTIFY_SOCKET": name}).ready()
    assert sock.recv(64) == b"READY=1"
    sock.close()
    silent = Notifier.from_environ({})
    assert not silent.enabled
    assert not silent.ready()
    # a watchdog meant for another process is not ours to serve
    assert (
        Notifier.from_environ(
            {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
        ).watchdog_interval
        is None
    )


def test_notify_from_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = _listen(path)
    code = (
        "import os; from servicekit.notify import Notifier; "
        "Notifier.from_environ(os.environ).ready()"
    )
    env = dict(os.environ, NOTIFY_SOCKET=path, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert sock.recv(64) == b"READY=1"
    sock.close()


def test_stderr_log_is_logfmt() -> None:
    stream = io.StringIO()
    log = setup_logging(journal=False, stream=stream)
    assert isinstance(log, StderrLog)
    log.event(
        "record_rejected",
        device_id="wearable-0003",
        reason="replay",
        detail="counter 5 seen",
        count=2,
    )
    log.event("debug_noise", level=10)  # below the level: dropped
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert "event=record_rejected device_id=wearable-0003 reason=replay" in line
    assert 'detail="counter 5 seen" count=2' in line
    with pytest.raises(TypeError, match="bytes"):
        log.event("leak", key=b"\x00secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        setup_logging(journal=False, level="loud")


def _parse_native(packet: bytes) -> dict[str, str]:
    fields, pos = {}, 0
    while pos < len(packet):
        nl = packet.index(b"\n", pos)
        line = packet[pos:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            pos = nl + 1
        else:  # binary-safe form: KEY\n<u64 le length><value>\n
            (size,) = struct.unpack_from("<Q", packet, nl + 1)
            start = nl + 9
            fields[line.decode()] = packet[start : start + size].decode()
            pos = start + size + 1
    return fields


def test_journal_native_protocol(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.socket")
    sock = _listen(path)
    log = JournalLog(path=path)
    log.event(
        "session_rejected",
        level=30,
        device_id="wearable-9",
        reason="revoked",
        detail="line1\nline2",
    )
    fields = _parse_native(sock.recv(65536))
    log.close()
    sock.close()
    assert fields["IOMT_EVENT"] == "session_rejected"
    assert fields["DEVICE_ID"] == "wearable-9"
    assert fields["REASON"] == "revoked"
    assert fields["DETAIL"] == "line1\nline2"
    assert fields["SYSLOG_IDENTIFIER"] == "iomt-gateway"
    assert fields["PRIORITY"] == "4"
    assert fields["MESSAGE"].startswith("session_rejected ")
